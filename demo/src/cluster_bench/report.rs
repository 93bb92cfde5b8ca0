//! What the bench measured: rows per receiver and round, the report and its table lines.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{BenchConfig, Case, Machine, Target};

/// Bounds of the shaped cases.
#[derive(Clone, Debug, Serialize)]
pub struct Bounds {
    /// S/B at the configured rate, seconds.
    pub s_over_b: f64,
    /// TCP payload rate of the shaped link, Mbit/s.
    pub tcp_payload_mbit: f64,
    /// S over the TCP payload rate, seconds.
    pub tcp_bound: f64,
}

/// One receiver of a replication round.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiverRow {
    pub case: Case,
    /// Relaying on (swarm) or off (single source); `None` where it does not matter.
    pub relay: Option<bool>,
    /// Receivers in the round.
    pub n: usize,
    pub round: usize,
    pub node: String,
    pub error: Option<String>,
    /// The receiver's own pull time (from its request to the sealed object).
    pub seconds: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
    /// Payload bits per second as a percentage of the configured link rate.
    pub link_pct: f64,
    pub s_over_b: f64,
    /// `seconds / s_over_b`.
    pub x_bound: f64,
    /// The BLAKE3 of its mapped bytes equals the payload's.
    pub digest_ok: bool,
    /// Bytes received from each holder.
    pub from: BTreeMap<String, u64>,
    pub retries: u64,
}

/// One round of the broadcast case.
#[derive(Clone, Debug, Serialize)]
pub struct BroadcastRound {
    pub n: usize,
    pub relay: bool,
    /// The slowest receiver's seconds.
    pub max_seconds: f64,
    pub max_x_bound: f64,
    /// Wall time of the replicate call as the bench saw it.
    pub wall_seconds: f64,
    pub all_ok: bool,
}

/// One consumer of the local case.
#[derive(Clone, Debug, Serialize)]
pub struct LocalRow {
    /// Consumers mapping at once.
    pub k: usize,
    pub round: usize,
    pub consumer: usize,
    /// From `get` to a readable mapping (first byte read).
    pub map_seconds: f64,
    /// From `get` to having read one byte of every page (all 4 KiB pages faulted in).
    pub touch_seconds: f64,
    /// The BLAKE3 of its mapping equals the payload's: the daemon handed over the object put
    /// on this host (no copy, no transfer).
    pub digest_ok: bool,
}

/// The unshaped case for one MTU.
#[derive(Clone, Debug, Serialize)]
pub struct UnshapedReport {
    pub mtu: u32,
    /// Replication node-0 -> node-1 per round, Gbit/s.
    pub replication_gbit: Vec<f64>,
    /// A bare quinn stream host 0 -> host 1 per round, Gbit/s.
    pub quinn_gbit: Vec<f64>,
    pub tcp_gbit: f64,
    pub tcp_retransmits: u64,
    pub replication_median: f64,
    pub quinn_median: f64,
    /// `replication_median / quinn_median`.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub config: BenchConfig,
    pub machine: Machine,
    pub started_unix: u64,
    pub bounds: Bounds,
    pub one: Vec<ReceiverRow>,
    pub local: Vec<LocalRow>,
    pub broadcast: Vec<ReceiverRow>,
    pub broadcast_rounds: Vec<BroadcastRound>,
    pub unshaped: Vec<UnshapedReport>,
    pub targets: Vec<Target>,
    /// The S3 cases.
    pub s3: Option<super::s3::S3Report>,
}
pub(super) const RECEIVER_HEADER: &str =
    "case       relay   N round node       seconds     MB/s  %link   S/B(s)  xS/B  digest  from (MiB)";

pub(super) fn receiver_line(r: &ReceiverRow) -> String {
    let relay = match r.relay {
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    };
    let case = match r.case {
        Case::One => "one",
        Case::Broadcast => "broadcast",
        Case::Local => "local",
        Case::Unshaped => "unshaped",
        Case::S3 => "s3",
        Case::S3Coop => "s3-coop",
    };
    if let Some(e) = &r.error {
        return format!("{case:<10} {relay:<5} {:>3} {:>5} {:<8} FAILED: {e}", r.n, r.round, r.node);
    }
    let from: Vec<String> =
        r.from.iter().map(|(node, bytes)| format!("{node}:{:.0}", *bytes as f64 / f64::from(1 << 20))).collect();
    format!(
        "{case:<10} {relay:<5} {:>3} {:>5} {:<8} {:>9.3} {:>8.2} {:>6.1} {:>8.3} {:>5.2}  {:<6}  {}",
        r.n,
        r.round,
        r.node,
        r.seconds,
        r.mb_per_s,
        r.link_pct,
        r.s_over_b,
        r.x_bound,
        if r.digest_ok { "ok" } else { "BAD" },
        from.join(" ")
    )
}
