//! What the demo found: the table's rows, the runner's runs, the targets and the report.

use std::path::PathBuf;

use serde::Serialize;

use super::setup::{Case, Consumer, Method};
use crate::cluster_bench::Machine;

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub case: Case,
    pub method: Method,
    /// Receivers (nodes) or consumers on the node.
    pub n: usize,
    /// Until the slowest consumer had the whole object.
    pub seconds: f64,
    /// Object bytes over `seconds`, per consumer (10^6 B/s).
    pub mb_per_s: f64,
    pub s_over_b: f64,
    /// `seconds / s_over_b`.
    pub x_bound: f64,
    /// Bytes S3 served for the row, where it took part.
    pub s3_bytes: Option<u64>,
    /// Every consumer completed and the BLAKE3 of the bytes it maps or holds equals the
    /// source's.
    pub all_ok: bool,
    pub consumers: Vec<Consumer>,
    pub note: Option<String>,
}

/// One s2t-runner run.
#[derive(Clone, Debug, Serialize)]
pub struct RunnerRun {
    pub method: Method,
    pub node: String,
    pub model: String,
    pub transcript: String,
    /// The runner's own report (s2t_runner::Report).
    pub report: serde_json::Value,
}

/// A target of the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub met: bool,
    pub detail: String,
}

/// Everything the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub machine: Machine,
    pub started_unix: u64,
    /// `loopback` or `netns`.
    pub network: String,
    /// How the NICs were emulated.
    pub network_detail: String,
    pub rate_mbit: u32,
    pub receivers: usize,
    pub k: usize,
    pub model: ModelInfo,
    /// S over B, seconds.
    pub s_over_b: f64,
    pub rows: Vec<Row>,
    pub runner: Vec<RunnerRun>,
    pub transcripts_equal: bool,
    pub audio: String,
    pub targets: Vec<Target>,
    /// Cases that could not run, and why.
    pub missing: Vec<String>,
    pub total_seconds: f64,
    pub report_dir: PathBuf,
}

/// The model the cases move.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub source: String,
    pub random_weights: bool,
    pub weights_bytes: u64,
    pub total_bytes: u64,
    /// BLAKE3 (hex) of the weights file's bytes: what every copy's bytes must hash to.
    pub digest: String,
}

impl DemoReport {
    pub fn row(&self, case: Case, method: Method, n: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.case == case && r.method == method && r.n == n)
    }
}
