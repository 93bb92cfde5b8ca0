//! Names of every Prometheus metric the daemon and the scheduler export, in one place, so
//! that dashboards, alerts and tests have one list to agree on.
//!
//! Conventions: the `store_` prefix (the scheduler's own metrics `store_scheduler_`), base
//! units in the name (`_bytes`, `_seconds`, `_bytes_per_second`), `_total` on counters and
//! only on counters.
//!
//! # Labels and cardinality
//! Transfer metrics carry `source` ([`SOURCE_PEER`], [`SOURCE_S3`], [`SOURCE_LOCAL`]) and,
//! for bytes, `direction` ([`DIRECTION_IN`], [`DIRECTION_OUT`]). Both sets are closed, so a
//! daemon exports a fixed number of series whatever the size of the cluster.
//!
//! There is deliberately **no per-peer label**: on a cluster of N nodes a `peer` label makes
//! every transfer series N-fold on every node (N² across the cluster), and the series of
//! departed nodes linger until the daemon restarts. Who sent how much to whom is a question
//! for the per-pull report (`storectl replicate --json` lists bytes per source node) and the
//! logs; Prometheus gets the node's totals, and the scrape target's own `instance` label
//! already says which node it is.
//!
//! # Transfers
//! A *transfer* is one object arriving in this node's store: a local put, a pull from peers,
//! an S3 ingest. [`TRANSFERS`] and [`TRANSFER_FAILURES`] count them by `source`, and
//! [`TRANSFER_DURATION`] and [`TRANSFER_THROUGHPUT`] observe each completed one (throughput
//! is the object's size over the whole transfer time). [`TRANSFER_BYTES`] counts bytes as
//! they move (each verified chunk on the way in, each written piece on the way out to
//! peers), so `rate(store_transfer_bytes_total[..])` shows the bandwidth during a transfer,
//! not only after it.

// ---- daemon: transfers --------------------------------------------------------------------

/// Counter, labels `source`, `direction`: bytes moved into or out of this node's store.
pub const TRANSFER_BYTES: &str = "store_transfer_bytes_total";
/// Counter, label `source`: objects that arrived complete and sealed.
pub const TRANSFERS: &str = "store_transfers_total";
/// Counter, label `source`: transfers that ended without a sealed object.
pub const TRANSFER_FAILURES: &str = "store_transfer_failures_total";
/// Histogram, label `source`: seconds from the start of a transfer to the sealed object.
pub const TRANSFER_DURATION: &str = "store_transfer_duration_seconds";
/// Histogram, label `source`: achieved throughput of each completed transfer.
pub const TRANSFER_THROUGHPUT: &str = "store_transfer_throughput_bytes_per_second";

// ---- daemon: chunks and peers -------------------------------------------------------------

/// Counter: chunks from peers whose BLAKE3 hash did not match the manifest.
pub const CHUNK_VERIFY_FAILURES: &str = "store_chunk_verify_failures_total";
/// Counter: chunk requests that failed (corrupt, not held, transport) and were asked again.
pub const CHUNK_RETRIES: &str = "store_chunk_retries_total";
/// Gauge, label `direction`: chunk fetches (`in`) and uploads (`out`) under way.
pub const CHUNKS_IN_FLIGHT: &str = "store_chunks_in_flight";
/// Gauge, label `direction`: open QUIC connections to peers, opened by us (`out`) or them (`in`).
pub const PEER_CONNECTIONS: &str = "store_peer_connections";

// ---- daemon: the store --------------------------------------------------------------------

/// Gauge: objects in the store (sealed, being filled or being received).
pub const OBJECTS: &str = "store_objects";
/// Gauge: bytes of the capacity budget in use.
pub const USED_BYTES: &str = "store_used_bytes";
/// Gauge: the capacity budget.
pub const CAPACITY_BYTES: &str = "store_capacity_bytes";
/// Counter: objects evicted to make room.
pub const EVICTIONS: &str = "store_evictions_total";
/// Gauge: connected local clients.
pub const CLIENT_CONNECTIONS: &str = "store_client_connections";
/// Gauge: leases held by local clients (one per `get` not yet released).
pub const LEASES: &str = "store_leases";

// ---- scheduler ----------------------------------------------------------------------------

/// Gauge: nodes whose lease is current.
pub const SCHEDULER_NODES_ALIVE: &str = "store_scheduler_nodes_alive";
/// Gauge: object names with at least one holder in the location table.
pub const SCHEDULER_OBJECTS_TRACKED: &str = "store_scheduler_objects_tracked";
/// Counter: location lookups answered (`locate` and `wait`).
pub const SCHEDULER_LOOKUPS: &str = "store_scheduler_lookups_total";
/// Counter: placement decisions made.
pub const SCHEDULER_PLACEMENTS: &str = "store_scheduler_placements_total";

// ---- labels -------------------------------------------------------------------------------

pub const LABEL_SOURCE: &str = "source";
pub const LABEL_DIRECTION: &str = "direction";

/// Bytes from or to another daemon over QUIC.
pub const SOURCE_PEER: &str = "peer";
/// Bytes read from S3 (or an S3-compatible server).
pub const SOURCE_S3: &str = "s3";
/// Bytes put by a local client over the unix socket.
pub const SOURCE_LOCAL: &str = "local";
/// Every `source` value, so exporters can create all series up front (at zero).
pub const SOURCES: [&str; 3] = [SOURCE_PEER, SOURCE_S3, SOURCE_LOCAL];

/// Into this node's store.
pub const DIRECTION_IN: &str = "in";
/// Out of this node's store (served to peers).
pub const DIRECTION_OUT: &str = "out";
pub const DIRECTIONS: [&str; 2] = [DIRECTION_IN, DIRECTION_OUT];

// ---- buckets ------------------------------------------------------------------------------

/// Throughput buckets: 10 MB/s to 10 GB/s in 1-2-5 steps (decimal bytes per second, like
/// link speeds: 125e6 B/s is 1 Gbit/s).
pub const THROUGHPUT_BUCKETS: [f64; 10] = [10e6, 20e6, 50e6, 100e6, 200e6, 500e6, 1e9, 2e9, 5e9, 10e9];

/// Duration buckets: 1 ms (a small local put) to 10 minutes (a large object on a slow link).
pub const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];

#[cfg(feature = "metrics-server")]
pub mod server;
