//! What the S3 cases measured: kinds, rows, rounds and the report, and their table lines.

use serde::Serialize;

use crate::cluster_bench::config::BenchConfig;

/// Which measurement a row or round belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Kind {
    /// (a) N hosts, each daemon downloading the whole object.
    Direct,
    /// (b) k processes on one host, each downloading into its own memory.
    ConsumersDirect,
    /// (b) one daemon download on the host, then k consumers mapping it.
    ConsumersStore,
    /// (c) cooperative fetch to N hosts.
    Cooperative,
}

impl S3Kind {
    pub(super) fn label(self) -> &'static str {
        match self {
            S3Kind::Direct => "direct",
            S3Kind::ConsumersDirect => "k-direct",
            S3Kind::ConsumersStore => "k-store",
            S3Kind::Cooperative => "coop",
        }
    }
}

/// One host (a) or one consumer (b).
#[derive(Clone, Debug, Serialize)]
pub struct S3Row {
    pub kind: S3Kind,
    /// Hosts (a) or consumers (b) in the round.
    pub n: usize,
    pub round: usize,
    pub node: String,
    /// 1-based consumer on the host (b); 1 in (a).
    pub consumer: usize,
    pub error: Option<String>,
    /// This host's or consumer's time: (a) request to sealed object, (b-direct) the
    /// process's download, (b-store) round start to its mapping fully touched.
    pub seconds: f64,
    /// (a) the download alone (HEAD + ranged GETs), before the seal.
    pub download_seconds: f64,
    pub mb_per_s: f64,
    /// Payload bits per second as a percentage of the receiver's link rate.
    pub link_pct: f64,
    /// The BLAKE3 of the bytes it maps or holds equals the payload's.
    pub digest_ok: bool,
}

/// One round: all hosts or consumers at once.
#[derive(Clone, Debug, Serialize)]
pub struct S3Round {
    pub kind: S3Kind,
    pub n: usize,
    pub round: usize,
    /// From the start of the round to the last host or consumer done.
    pub wall_seconds: f64,
    pub slowest_seconds: f64,
    /// GET body bytes the endpoint served in the round.
    pub s3_body_bytes: u64,
    /// Bytes the endpoint host sent on its link in the round.
    pub s3_wire_bytes: u64,
    /// `s3_body_bytes / object size`.
    pub s3_factor: f64,
    /// S / B of one receiver's link.
    pub receiver_bound: f64,
    /// What the endpoint's link needs for the round's S3 bytes: n x S / B_s3 (a), k x S /
    /// B_s3 (b).
    pub endpoint_bound: f64,
    /// The slower of the two, and of k x S/B when k downloads share one receiver link.
    pub bound: f64,
    /// `wall_seconds / bound`.
    pub x_bound: f64,
    pub all_ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct S3Report {
    pub endpoint_rate_mbit: u32,
    pub receiver_rate_mbit: u32,
    pub rows: Vec<S3Row>,
    pub rounds: Vec<S3Round>,
    /// Why the cooperative case was not measured, if it was asked for.
    pub cooperative: Option<String>,
}

pub(super) fn row(cfg: &BenchConfig, kind: S3Kind, n: usize, round: usize, node: String, consumer: usize) -> S3Row {
    S3Row {
        kind,
        n,
        round,
        node,
        consumer,
        error: None,
        seconds: f64::NAN,
        download_seconds: f64::NAN,
        mb_per_s: f64::NAN,
        link_pct: f64::NAN,
        digest_ok: false,
    }
    .with_rates(cfg)
}

impl S3Row {
    pub(super) fn with_rates(mut self, cfg: &BenchConfig) -> Self {
        if self.seconds.is_finite() && self.seconds > 0.0 {
            self.mb_per_s = cfg.size as f64 / self.seconds / 1e6;
            self.link_pct = cfg.size as f64 * 8.0 / self.seconds / (f64::from(cfg.rate_mbit) * 1e6) * 100.0;
        }
        self
    }
}

pub(super) const ROW_HEADER: &str = "case      n round node     cons   seconds  download     MB/s  %link  digest";

pub(super) fn row_line(r: &S3Row) -> String {
    if let Some(e) = &r.error {
        return format!("{:<8} {:>2} {:>5} {:<8} {:>4}  FAILED: {e}", r.kind.label(), r.n, r.round, r.node, r.consumer);
    }
    format!(
        "{:<8} {:>2} {:>5} {:<8} {:>4} {:>9.3} {:>9.3} {:>8.2} {:>6.1}  {}",
        r.kind.label(),
        r.n,
        r.round,
        r.node,
        r.consumer,
        r.seconds,
        r.download_seconds,
        r.mb_per_s,
        r.link_pct,
        if r.digest_ok { "ok" } else { "BAD" }
    )
}

pub(super) fn round_line(r: &S3Round, size: u64) -> String {
    format!(
        "  {} n={}: wall {:.3} s ({:.2} MB/s per copy), bound {:.3} s (receiver {:.3}, endpoint link {:.3}) = {:.2} x; S3 served {:.1} MiB = {:.2} x S (wire {:.1} MiB){}",
        r.kind.label(),
        r.n,
        r.wall_seconds,
        size as f64 / r.slowest_seconds / 1e6,
        r.bound,
        r.receiver_bound,
        r.endpoint_bound,
        r.x_bound,
        r.s3_body_bytes as f64 / f64::from(1 << 20),
        r.s3_factor,
        r.s3_wire_bytes as f64 / f64::from(1 << 20),
        if r.all_ok { "" } else { "  SOME FAILED OR DIFFER" }
    )
}
