//! What the demo runs: the model's names, the settings, and the cases it times with the
//! methods it compares.

use std::path::PathBuf;

use serde::Serialize;

/// Store prefix and S3 key prefix of the model's files.
pub const MODEL_PREFIX: &str = "models/s2t";
/// The model's weights: the object every transfer case moves.
pub const WEIGHTS: &str = "models/s2t/model.safetensors";
/// Name the cooperative fetch loads the weights under (node-0's copy must not take part).
pub const COOP_NAME: &str = "demo/s3-cooperative/model.safetensors";
/// What the bundled sample says (espeak-ng, voice en, 22.05 kHz mono).
pub const SPEECH_TEXT: &str = "the object store moves model weights to every node";
/// The bundled sample, for machines without espeak-ng.
pub const BUNDLED_WAV: &[u8] = include_bytes!("../../assets/demo-speech.wav");

/// Where the speech sample comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audio {
    /// espeak-ng if installed, else the bundled sample.
    Auto,
    Bundled,
    File(PathBuf),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// A real model directory (config.json, model.safetensors, vocab.json); `None` generates
    /// a random model of `preset`.
    pub model_dir: Option<PathBuf>,
    /// `medium` (285 MB), `small` or `tiny`.
    pub preset: String,
    /// Nodes besides node-0: the largest N.
    pub receivers: usize,
    /// Broadcast sizes to measure (1 is always measured: it is case 1).
    pub n_values: Vec<usize>,
    /// Consumers on one node.
    pub k: usize,
    /// Each node's NIC, Mbit/s.
    pub rate_mbit: u32,
    pub netns: bool,
    pub mtu: u32,
    /// Where the markdown summary, the JSON, the charts and the processes' logs go.
    pub report_dir: PathBuf,
    pub audio: Audio,
    /// Decoder length cap of the runner; `None`: the config's, or 20 tokens for random
    /// weights (their transcript is noise; decoding it to the full length only costs time).
    pub max_length: Option<usize>,
    /// The executable playing every process (`store-demo` itself, see [`roles`]).
    pub exe: PathBuf,
    /// Progress bars on stderr (drawn only when it is a terminal).
    pub progress: bool,
    /// Log filter of the daemons and the scheduler.
    pub log: String,
}

impl DemoConfig {
    /// The default run for `exe`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            model_dir: None,
            preset: "medium".into(),
            receivers: 3,
            n_values: vec![1, 3],
            k: 2,
            rate_mbit: 200,
            netns: false,
            mtu: 1500,
            report_dir: PathBuf::from("target/store-demo"),
            audio: Audio::Auto,
            max_length: None,
            exe,
            progress: true,
            log: "warn".into(),
        }
    }

    pub(super) fn ns(&self) -> Vec<usize> {
        let mut ns: Vec<usize> = self.n_values.iter().copied().filter(|&n| n >= 1 && n <= self.receivers).collect();
        ns.push(1);
        ns.sort_unstable();
        ns.dedup();
        ns
    }
}

/// The case a row belongs to, in the table's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// One consumer on another node.
    One,
    /// k consumers on one node.
    Local,
    /// N nodes.
    Nodes,
    /// s2t-runner.
    Runner,
}

/// How the object got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Store replication from node-0 (one receiver).
    StoreReplication,
    /// One application process downloading from S3.
    S3Download,
    /// k application processes on one node, each downloading from S3.
    S3KDownloads,
    /// k consumers `get` the object on a node without it: one pull, one copy, k mappings.
    StoreSharedCopy,
    /// Every receiver pulls from node-0 only (relay off): what Ray does.
    FanOut,
    /// Receivers also pull from each other (relay on).
    Swarm,
    /// Every node downloads the whole object from S3.
    S3NDownloads,
    /// Every node reads a disjoint share from S3 and the rest from the others.
    CooperativeS3,
    /// s2t-runner with store://PREFIX.
    RunnerStore,
    /// s2t-runner with s3://BUCKET/PREFIX.
    RunnerS3,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::StoreReplication => "store replication",
            Method::S3Download => "S3 download",
            Method::S3KDownloads => "k S3 downloads",
            Method::StoreSharedCopy => "store: 1 copy mapped k times",
            Method::FanOut => "single-source fan-out (Ray)",
            Method::Swarm => "store swarm broadcast",
            Method::S3NDownloads => "N S3 downloads",
            Method::CooperativeS3 => "cooperative S3 fetch",
            Method::RunnerStore => "s2t-runner via store",
            Method::RunnerS3 => "s2t-runner via S3",
        }
    }

    /// Whether the method is this system's answer (as opposed to the baseline).
    pub fn is_store(self) -> bool {
        !matches!(
            self,
            Method::S3Download | Method::S3KDownloads | Method::FanOut | Method::S3NDownloads | Method::RunnerS3
        )
    }
}

/// One consumer or receiver of a row.
#[derive(Clone, Debug, Serialize)]
pub struct Consumer {
    /// `node-1`, or `node-1#2` for the second consumer on node-1.
    pub who: String,
    /// Its own time to have the whole object; NaN if it failed.
    pub seconds: f64,
    /// The BLAKE3 of the bytes it maps or holds equals the source's (computed after the
    /// clock stopped).
    pub digest_ok: bool,
    pub error: Option<String>,
    /// Bytes from each source (`s3` or a node), where known.
    pub from: std::collections::BTreeMap<String, u64>,
}

impl Consumer {
    /// A node's consumer from its pull outcome (`None`: none reported): time and sources
    /// from the report, then `more` for what the case checks besides.
    pub(super) fn of_pull(
        who: &str,
        outcome: Option<&Result<store_client::wire::node::PullReport, String>>,
        more: impl FnOnce(&mut Consumer, &store_client::wire::node::PullReport),
    ) -> Consumer {
        let mut c = Consumer {
            who: who.to_owned(),
            seconds: f64::NAN,
            digest_ok: false,
            error: None,
            from: Default::default(),
        };
        match outcome {
            None => c.error = Some("no outcome reported".into()),
            Some(Err(e)) => c.error = Some(e.clone()),
            Some(Ok(r)) => {
                c.seconds = r.seconds;
                c.from = r.from.clone();
                more(&mut c, r);
            }
        }
        c
    }
}
