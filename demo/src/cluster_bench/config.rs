//! What the bench is given and where it runs: the cases, the settings, the machine, the
//! targets and the sizes derived from them.

use serde::{Deserialize, Serialize};

/// Name of the benchmark object.
pub const OBJECT: &str = "bench/object.bin";
/// UDP port of the bare quinn sink.
pub const QUINN_PORT: u16 = 7800;
/// ALPN of the bare quinn stream (not the daemons', so it can never reach one by mistake).
pub const QUINN_ALPN: &[u8] = b"cluster-bench/1";
/// Largest piece written to the bare stream at once: the same as the daemons' chunk server.
pub const QUINN_SLICE: usize = store_daemon::cluster::SEND_SLICE;

/// A bench case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    One,
    Local,
    Broadcast,
    Unshaped,
    /// S3 downloads: N hosts each directly, k consumers on one host direct vs one store copy.
    S3,
    /// Cooperative S3 fetch to N hosts: each reads a disjoint share from S3, the rest from the others.
    S3Coop,
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// Rate of every shaped link, Mbit/s (10^6 bit/s), each direction.
    pub rate_mbit: u32,
    /// Object size in bytes.
    pub size: u64,
    /// Smallest and largest number of receivers of the broadcast case.
    pub min_n: usize,
    pub max_n: usize,
    /// Relay settings of the broadcast case (on = swarm, off = single source).
    pub relay_modes: Vec<bool>,
    /// MTU of the shaped links.
    pub mtu: u32,
    pub cases: Vec<Case>,
    /// Rounds of the cheap cases (`one`, `local`, `unshaped`); medians are reported.
    pub repeat: usize,
    /// MTUs of the unshaped case.
    pub unshaped_mtus: Vec<u32>,
    /// Log filter of the daemons and the scheduler (`STORE_LOG`).
    pub log: String,
    /// Rate of the S3 endpoint host's link, Mbit/s (the S3 cases).
    pub s3_rate_mbit: u32,
    /// Largest number of consumers on one host (the S3 cases).
    pub max_k: usize,
}

impl BenchConfig {
    /// Seconds to move the object at the configured link rate: S/B.
    pub fn s_over_b(&self) -> f64 {
        self.size as f64 * 8.0 / (f64::from(self.rate_mbit) * 1e6)
    }

    /// TCP payload rate a tbf-shaped link carries (what a plain TCP stream reaches), bit/s.
    pub fn tcp_payload_bps(&self) -> f64 {
        f64::from(self.rate_mbit) * 1e6 * f64::from(self.mtu.saturating_sub(52)) / f64::from(self.mtu + 14)
    }

    /// Seconds to move the object at the TCP payload rate.
    pub fn tcp_bound(&self) -> f64 {
        self.size as f64 * 8.0 / self.tcp_payload_bps()
    }
}

/// The machine the bench ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Self {
        let nproc = std::thread::available_parallelism().map_or(0, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self { nproc, cpu_model, kernel }
    }
}
/// A target of the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub met: bool,
    pub detail: String,
}

/// Median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

pub(super) fn capacity_for(size: u64) -> String {
    format!("{}MiB", (size * 3).div_ceil(1 << 20) + 1024)
}
