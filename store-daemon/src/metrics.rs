//! The daemon's Prometheus metrics: one registry per daemon (so several daemons in one
//! process, as in tests, do not collide), fed where the events happen. Names, labels, units
//! and the cardinality rule are in [`store_client::metrics`].
//!
//! Store figures (objects, bytes used, capacity, evictions) are read from the store at
//! scrape time ([`DaemonMetrics::render`]) rather than updated on every change: they are one
//! lock away and always right.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use store_client::metrics as names;

use crate::store::Store;

/// Where the bytes of a transfer come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Peer,
    S3,
    Local,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Peer => names::SOURCE_PEER,
            Source::S3 => names::SOURCE_S3,
            Source::Local => names::SOURCE_LOCAL,
        }
    }
}

/// Into or out of this node's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => names::DIRECTION_IN,
            Direction::Out => names::DIRECTION_OUT,
        }
    }
}

/// Decrements its gauge when dropped: for things that are "under way" or "open".
#[derive(Debug)]
#[must_use = "the gauge goes back down when the guard drops"]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug)]
pub struct DaemonMetrics {
    registry: Registry,
    transfer_bytes: IntCounterVec,
    transfers: IntCounterVec,
    transfer_failures: IntCounterVec,
    transfer_duration: HistogramVec,
    transfer_throughput: HistogramVec,
    chunk_verify_failures: IntCounter,
    chunk_retries: IntCounter,
    chunks_in_flight: IntGaugeVec,
    peer_connections: IntGaugeVec,
    objects: IntGauge,
    used_bytes: IntGauge,
    capacity_bytes: IntGauge,
    evictions: IntCounter,
    client_connections: IntGauge,
    leases: IntGauge,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Names and options are constants checked by the tests below, so registration
        // cannot fail at run time.
        fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
            #[allow(clippy::expect_used)]
            registry.register(Box::new(c.clone())).expect("metric names are unique and valid");
            c
        }
        #[allow(clippy::expect_used)]
        let m = {
            let counter_vec = |name: &str, help: &str, labels: &[&str]| {
                reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
            };
            let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
                reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
            };
            let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).expect("valid counter"));
            let gauge = |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).expect("valid gauge"));
            let histogram = |name: &str, help: &str, buckets: &[f64]| {
                let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
                reg(&registry, HistogramVec::new(opts, &[names::LABEL_SOURCE]).expect("valid histogram"))
            };
            Self {
                transfer_bytes: counter_vec(
                    names::TRANSFER_BYTES,
                    "Bytes moved into or out of this node's store, by source and direction.",
                    &[names::LABEL_SOURCE, names::LABEL_DIRECTION],
                ),
                transfers: counter_vec(
                    names::TRANSFERS,
                    "Objects that arrived complete and sealed, by source.",
                    &[names::LABEL_SOURCE],
                ),
                transfer_failures: counter_vec(
                    names::TRANSFER_FAILURES,
                    "Transfers that ended without a sealed object, by source.",
                    &[names::LABEL_SOURCE],
                ),
                transfer_duration: histogram(
                    names::TRANSFER_DURATION,
                    "Seconds from the start of a transfer to the sealed object.",
                    &names::DURATION_BUCKETS,
                ),
                transfer_throughput: histogram(
                    names::TRANSFER_THROUGHPUT,
                    "Object size over transfer time of each completed transfer.",
                    &names::THROUGHPUT_BUCKETS,
                ),
                chunk_verify_failures: counter(
                    names::CHUNK_VERIFY_FAILURES,
                    "Chunks from peers whose hash did not match the manifest.",
                ),
                chunk_retries: counter(names::CHUNK_RETRIES, "Chunk requests that failed and were asked again."),
                chunks_in_flight: gauge_vec(
                    names::CHUNKS_IN_FLIGHT,
                    "Chunk fetches (in) and uploads (out) under way.",
                    &[names::LABEL_DIRECTION],
                ),
                peer_connections: gauge_vec(
                    names::PEER_CONNECTIONS,
                    "Open QUIC connections to peers, opened by this node (out) or by them (in).",
                    &[names::LABEL_DIRECTION],
                ),
                objects: gauge(names::OBJECTS, "Objects in the store, sealed or under way."),
                used_bytes: gauge(names::USED_BYTES, "Bytes of the capacity budget in use."),
                capacity_bytes: gauge(names::CAPACITY_BYTES, "The capacity budget in bytes."),
                evictions: counter(names::EVICTIONS, "Objects evicted to make room."),
                client_connections: gauge(names::CLIENT_CONNECTIONS, "Connected local clients."),
                leases: gauge(names::LEASES, "Leases held by local clients."),
                registry: registry.clone(),
            }
        };
        // Every series exists from the start (at zero), so rates and absent() behave.
        for source in names::SOURCES {
            for direction in names::DIRECTIONS {
                m.transfer_bytes.with_label_values(&[source, direction]);
            }
            m.transfers.with_label_values(&[source]);
            m.transfer_failures.with_label_values(&[source]);
            m.transfer_duration.with_label_values(&[source]);
            m.transfer_throughput.with_label_values(&[source]);
        }
        for direction in names::DIRECTIONS {
            m.chunks_in_flight.with_label_values(&[direction]);
            m.peer_connections.with_label_values(&[direction]);
        }
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Bytes that moved (a verified chunk, a piece sent, a whole local put).
    pub fn transfer_bytes(&self, source: Source, direction: Direction, bytes: u64) {
        self.transfer_bytes.with_label_values(&[source.label(), direction.label()]).inc_by(bytes);
    }

    /// An object of `bytes` arrived and was sealed after `took`.
    pub fn transfer_completed(&self, source: Source, bytes: u64, took: Duration) {
        self.transfers.with_label_values(&[source.label()]).inc();
        let seconds = took.as_secs_f64();
        self.transfer_duration.with_label_values(&[source.label()]).observe(seconds);
        if bytes > 0 && seconds > 0.0 {
            self.transfer_throughput.with_label_values(&[source.label()]).observe(bytes as f64 / seconds);
        }
    }

    /// A transfer ended without a sealed object.
    pub fn transfer_failed(&self, source: Source) {
        self.transfer_failures.with_label_values(&[source.label()]).inc();
    }

    pub fn chunk_verify_failed(&self) {
        self.chunk_verify_failures.inc();
    }

    pub fn chunk_retried(&self) {
        self.chunk_retries.inc();
    }

    /// A chunk fetch or upload under way until the guard drops.
    pub fn chunk_in_flight(&self, direction: Direction) -> GaugeGuard {
        GaugeGuard::new(self.chunks_in_flight.with_label_values(&[direction.label()]))
    }

    /// An open peer connection until the guard drops.
    pub fn peer_connection(&self, direction: Direction) -> GaugeGuard {
        GaugeGuard::new(self.peer_connections.with_label_values(&[direction.label()]))
    }

    /// A connected local client until the guard drops.
    pub fn client_connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.client_connections.clone())
    }

    pub fn lease_taken(&self) {
        self.leases.inc();
    }

    pub fn leases_returned(&self, n: u32) {
        self.leases.sub(i64::from(n));
    }

    /// Copies the store's figures into the registry.
    pub fn refresh_store(&self, store: &Store) {
        self.objects.set(store.object_count() as i64);
        self.used_bytes.set(store.used() as i64);
        self.capacity_bytes.set(store.capacity() as i64);
        let evictions = store.evictions();
        let counted = self.evictions.get();
        if evictions > counted {
            self.evictions.inc_by(evictions - counted);
        }
    }

    /// The exposition for one scrape.
    pub fn render(&self) -> Vec<u8> {
        store_client::metrics::server::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(m: &DaemonMetrics) -> String {
        String::from_utf8(m.render()).expect("utf-8")
    }

    #[test]
    fn every_series_exists_at_zero_from_the_start() {
        let m = DaemonMetrics::new();
        let text = exposition(&m);
        for source in names::SOURCES {
            for direction in names::DIRECTIONS {
                let line = format!("{}{{direction=\"{direction}\",source=\"{source}\"}} 0", names::TRANSFER_BYTES);
                assert!(text.contains(&line), "missing {line} in\n{text}");
            }
        }
        for name in [names::CHUNK_VERIFY_FAILURES, names::CHUNK_RETRIES, names::EVICTIONS, names::LEASES] {
            assert!(text.contains(&format!("{name} 0")), "missing {name}");
        }
        assert!(
            text.contains(&format!("{}_bucket{{source=\"peer\",le=\"10000000000\"}} 0", names::TRANSFER_THROUGHPUT))
        );
    }

    #[test]
    fn a_completed_transfer_counts_bytes_and_lands_in_the_right_buckets() {
        let m = DaemonMetrics::new();
        m.transfer_bytes(Source::Peer, Direction::In, 300_000_000);
        m.transfer_completed(Source::Peer, 300_000_000, Duration::from_secs(2));
        m.transfer_failed(Source::S3);
        let text = exposition(&m);
        assert!(text.contains("store_transfer_bytes_total{direction=\"in\",source=\"peer\"} 300000000"), "{text}");
        assert!(text.contains("store_transfers_total{source=\"peer\"} 1"));
        assert!(text.contains("store_transfer_failures_total{source=\"s3\"} 1"));
        // 150 MB/s: above the 100 MB/s bucket, within 200 MB/s.
        assert!(text.contains("store_transfer_throughput_bytes_per_second_bucket{source=\"peer\",le=\"100000000\"} 0"));
        assert!(text.contains("store_transfer_throughput_bytes_per_second_bucket{source=\"peer\",le=\"200000000\"} 1"));
        assert!(text.contains("store_transfer_duration_seconds_bucket{source=\"peer\",le=\"2.5\"} 1"));
    }

    #[test]
    fn guards_bring_gauges_back_down_and_evictions_follow_the_store() {
        let m = DaemonMetrics::new();
        let a = m.chunk_in_flight(Direction::Out);
        let b = m.chunk_in_flight(Direction::Out);
        let c = m.client_connection();
        assert_eq!(m.chunks_in_flight.with_label_values(&["out"]).get(), 2);
        drop((a, b, c));
        assert_eq!(m.chunks_in_flight.with_label_values(&["out"]).get(), 0);
        assert_eq!(m.client_connections.get(), 0);
        let store = Store::new(1 << 20, 1 << 16);
        m.refresh_store(&store);
        assert_eq!(m.capacity_bytes.get(), 1 << 20);
        assert_eq!(m.evictions.get(), 0);
    }
}
