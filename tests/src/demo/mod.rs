//! The experiment behind `store-demo`: the published comparison (loading a speech model on
//! several nodes from an object store vs. from S3) rerun on this machine, with this system's
//! answer to each case beside it.
//!
//! It starts a cluster ([`fabric`]): a scheduler, `receivers + 1` daemons whose NICs are
//! emulated at `rate_mbit` (loopback rate limits, or shaped network namespaces with
//! `--netns`), and an S3 endpoint holding the model. node-0 already holds the model (put from
//! its directory, untimed). Then, all timed, with the object `S` = the model's weights and
//! `B` = one node's link rate:
//!
//! 1. one consumer on another node: store replication vs. one S3 download;
//! 2. k consumers on one node: k S3 downloads (sharing the node's NIC) vs. k gets of one
//!    store object (one transfer, one copy mapped k times);
//! 3. N nodes: single-source fan-out (relay off: every receiver pulls from node-0 only, what
//!    Ray does) vs. swarm broadcast vs. N S3 downloads vs. cooperative S3 fetch;
//! 4. `s2t-runner` on a speech sample on node-N, the model through the store and through S3,
//!    both transcripts printed.
//!
//! Case 1 is the N = 1 point of case 3 (with one receiver, relay on and off are the same
//! transfer, measured once). Every copy is checked on its bytes: the BLAKE3 of what its
//! consumer maps (a store copy, through `get`) or holds (an S3 download, the runner's
//! weights) against the BLAKE3 of the model's weights file, never a daemon's reported
//! digest ([`crate::verify`]). The result is a [`DemoReport`]: a table with S/B per row,
//! JSON, and a report directory with a markdown summary and PNG charts ([`report`]).

pub mod fabric;
pub mod pace;
pub mod report;
pub mod roles;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use store_client::sys;

use crate::cluster::node_id;
use crate::cluster_bench::Machine;
use crate::netns::NsChild;
use crate::verify;
use fabric::{BUCKET, Fabric, FabricSpec};
use roles::{S3GetResult, unix_ms};

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

    fn ns(&self) -> Vec<usize> {
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
    fn of_pull(
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

/// Progress on stderr (drawn only when it is a terminal): one bar counting the steps, and
/// one for the step under way measured against its expected time (mostly multiples of S/B),
/// moved by a ticker thread since the transfers happen in other processes.
struct Progress<'a> {
    steps: indicatif::ProgressBar,
    current: indicatif::ProgressBar,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
    say: Box<dyn FnMut(String) + 'a>,
}

impl<'a> Progress<'a> {
    fn new(enabled: bool, steps: usize, say: Box<dyn FnMut(String) + 'a>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !enabled {
            let hidden = indicatif::ProgressBar::hidden();
            return Self { steps: hidden.clone(), current: hidden, stop, ticker: None, say };
        }
        let multi = indicatif::MultiProgress::new();
        let steps = multi.add(indicatif::ProgressBar::new(steps as u64));
        let current = multi.add(indicatif::ProgressBar::new(1));
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] step {pos}/{len}")
        {
            steps.set_style(style.progress_chars("=> "));
        }
        if let Ok(style) = indicatif::ProgressStyle::with_template("  {elapsed:>4} [{bar:30}] {wide_msg}") {
            current.set_style(style.progress_chars("-> "));
        }
        steps.enable_steady_tick(Duration::from_millis(120));
        let (bar, flag) = (current.clone(), stop.clone());
        let ticker = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let len = bar.length().unwrap_or(1);
                let ms = bar.elapsed().as_millis() as u64;
                // Never full before the step is: a transfer slower than expected waits at 99 %.
                bar.set_position(ms.min(len.saturating_sub(len / 100 + 1)));
            }
        });
        Self { steps, current, stop, ticker: Some(ticker), say }
    }

    fn line(&mut self, line: String) {
        let say = &mut self.say;
        self.steps.suspend(|| say(line));
    }

    /// A new step, expected to take about `expected` seconds.
    fn step(&mut self, what: String, expected: f64) {
        self.current.reset();
        self.current.set_length(((expected * 1000.0) as u64).max(100));
        self.current.set_message(if expected >= 1.0 { format!("{what} (~{expected:.0} s)") } else { what });
    }

    fn done(&mut self) {
        self.steps.inc(1);
    }

    fn finish(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.current.finish_and_clear();
        self.steps.finish_and_clear();
    }
}

/// Runs the experiment; `say` receives the human-readable lines as they come.
pub fn run(cfg: &DemoConfig, say: impl FnMut(String)) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    if cfg.receivers < 1 || cfg.k < 1 || cfg.rate_mbit == 0 {
        bail!("--nodes, -k and --rate-mbit must be positive");
    }
    if cfg.netns && !crate::netns::requires_root() {
        bail!("--netns needs root and iproute2 (network namespaces, tc)");
    }
    let ns = cfg.ns();
    // Model and cluster; k S3 and k store; per N fan-out, S3, cooperative and (N > 1)
    // swarm; the runner twice; the report.
    let steps = 1 + 2 + ns.len() * 3 + ns.iter().filter(|&&n| n > 1).count() + 2 + 1;
    let mut p = Progress::new(cfg.progress, steps, Box::new(say));
    let result = run_inner(cfg, &ns, &mut p, started);
    p.finish();
    result
}

fn run_inner(cfg: &DemoConfig, ns: &[usize], p: &mut Progress<'_>, started: Instant) -> anyhow::Result<DemoReport> {
    let machine = Machine::probe();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    std::fs::create_dir_all(&cfg.report_dir)
        .with_context(|| format!("creating the report directory {}", cfg.report_dir.display()))?;
    let logs = cfg.report_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);

    // The cluster.
    let nodes = cfg.receivers + 1;
    p.step(format!("starting the scheduler, {nodes} daemons and S3"), 1.0);
    let spec = FabricSpec {
        nodes,
        rate_mbit: cfg.rate_mbit,
        netns: cfg.netns,
        mtu: cfg.mtu,
        capacity: 0,
        exe: cfg.exe.clone(),
        log: cfg.log.clone(),
    };

    // The model: a real directory or a generated random one.
    let model_tmp = tempfile::Builder::new().prefix("store-demo-model").tempdir()?;
    let (model_dir, model_source) = match &cfg.model_dir {
        Some(dir) => (dir.clone(), dir.display().to_string()),
        None => {
            let preset: s2t_runner::Preset = cfg.preset.parse().map_err(anyhow::Error::msg)?;
            let dir = model_tmp.path().join(&cfg.preset);
            s2t_runner::random::generate(&s2t_runner::Speech2TextConfig::preset(preset), &dir, 1)?;
            (dir, format!("generated random {} model (s2t-runner gen-random)", cfg.preset))
        }
    };
    let files = [s2t_runner::source::CONFIG_FILE, s2t_runner::source::WEIGHTS_FILE, s2t_runner::source::VOCAB_FILE];
    let mut total_bytes = 0;
    for f in files {
        let path = model_dir.join(f);
        total_bytes += std::fs::metadata(&path)
            .with_context(|| format!("the model directory needs {f}: {} is missing", path.display()))?
            .len();
    }
    let weights_bytes = std::fs::metadata(model_dir.join(s2t_runner::source::WEIGHTS_FILE))?.len();
    let random_weights = std::fs::read(model_dir.join(s2t_runner::source::CONFIG_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("_s2t_runner_random_weights").and_then(|r| r.as_bool()))
        .unwrap_or(false);

    let fabric = Fabric::start_with_retries(FabricSpec { capacity: capacity_for(weights_bytes), ..spec }, &logs)?;
    let network = if cfg.netns { "netns" } else { "loopback" };
    let network_detail = if cfg.netns {
        format!(
            "network namespaces: every node a host on one switch, its link shaped with tbf to {} Mbit/s each way (MTU {}); S3 on its own unshaped host",
            cfg.rate_mbit, cfg.mtu
        )
    } else {
        format!(
            "loopback: every daemon's peer egress limited to {} Mbit/s (--max-egress-rate), S3 paced to {} Mbit/s per node (one listener per node shared by all of its connections)",
            cfg.rate_mbit, cfg.rate_mbit
        )
    };
    p.line(format!(
        "store-demo: {} nodes ({network}), {} Mbit/s per node; machine: {} cores, {}",
        nodes, cfg.rate_mbit, machine.nproc, machine.cpu_model
    ));

    // node-0 holds the model; S3 holds it too.
    p.step("putting the model on node-0 and into S3".into(), 1.0);
    let s3_dir = fabric.s3_root().join(BUCKET).join(MODEL_PREFIX);
    std::fs::create_dir_all(&s3_dir)?;
    for f in files {
        let (from, to) = (model_dir.join(f), s3_dir.join(f));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {} into the S3 root", from.display()))?;
        }
    }
    let source = fabric.client(0)?;
    source.put_dir(&model_dir, MODEL_PREFIX, Default::default()).context("putting the model on node-0")?;
    // The source's digest over the file's bytes, and node-0's copy checked against it the
    // way every other copy will be: by hashing what a consumer maps.
    let digest = verify::file_blake3(&model_dir.join(s2t_runner::source::WEIGHTS_FILE))?;
    let on_source = verify::held_blake3(&source, WEIGHTS).context("hashing node-0's copy of the weights")?;
    if on_source != digest {
        bail!("node-0's copy of the weights hashes to {on_source}, the file to {digest}");
    }
    wait_holders(&fabric, WEIGHTS, &[0])?;
    drop(model_tmp);

    let s_over_b = weights_bytes as f64 * 8.0 / (f64::from(cfg.rate_mbit) * 1e6);
    p.line(format!(
        "model: {model_source}, weights {} ({}), blake3 {}..; S/B = {:.2} s at {} Mbit/s{}",
        bytesize::ByteSize(weights_bytes),
        weights_bytes,
        &digest[..16],
        s_over_b,
        cfg.rate_mbit,
        if random_weights { "; random weights: the transcript will be noise" } else { "" }
    ));
    p.done();

    let ctx = Ctx { fabric: &fabric, digest: &digest, weights_bytes, s_over_b, logs: &logs };
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let weights_url = format!("s3://{BUCKET}/{WEIGHTS}");

    // Case 2: k consumers on node-1.
    p.step(format!("k={}: {} S3 downloads on node-1 sharing its NIC", cfg.k, cfg.k), s_over_b * cfg.k as f64);
    let placement = vec![1; cfg.k];
    let consumers = ctx.s3_downloads(&placement, &weights_url)?;
    rows.push(ctx.row(Case::Local, Method::S3KDownloads, cfg.k, consumers, Some(weights_bytes * cfg.k as u64), None));
    p.line(report::row_line(rows.last().context("row")?));
    p.done();

    p.step(format!("k={}: {} consumers get the object on node-1, which pulls it once", cfg.k, cfg.k), s_over_b);
    let (consumers, shared) = ctx.local_gets(1, cfg.k)?;
    let note = format!(
        "one pull, one memfd: all {} mappings {} the same pages",
        cfg.k,
        if shared { "share" } else { "do NOT share" }
    );
    let mut row = ctx.row(Case::Local, Method::StoreSharedCopy, cfg.k, consumers, Some(0), Some(note));
    row.all_ok &= shared;
    rows.push(row);
    p.line(report::row_line(rows.last().context("row")?));
    ctx.clear(WEIGHTS, &[1])?;
    p.done();

    // Case 3 (and case 1 at N = 1).
    let max_n = ns.iter().copied().max().unwrap_or(1);
    for &n in ns {
        let targets: Vec<usize> = (1..=n).collect();
        let case = if n == 1 { Case::One } else { Case::Nodes };

        p.step(format!("N={n}: {}", Method::FanOut.label()), s_over_b * n as f64);
        let consumers = ctx.replicate(&targets, false)?;
        let (method, note) = if n == 1 {
            (Method::StoreReplication, Some("one receiver: relay on and off are the same transfer".to_string()))
        } else {
            (Method::FanOut, None)
        };
        rows.push(ctx.row(case, method, n, consumers, Some(0), note));
        p.line(report::row_line(rows.last().context("row")?));
        ctx.clear(WEIGHTS, &targets)?;
        p.done();

        if n > 1 {
            p.step(format!("N={n}: {}", Method::Swarm.label()), s_over_b);
            let consumers = ctx.replicate(&targets, true)?;
            rows.push(ctx.row(case, Method::Swarm, n, consumers, Some(0), None));
            p.line(report::row_line(rows.last().context("row")?));
            // The largest broadcast leaves the model on its receivers for the runner.
            if n != max_n {
                ctx.clear(WEIGHTS, &targets)?;
            }
            p.done();
        }

        p.step(format!("N={n}: {}", Method::S3NDownloads.label()), s_over_b);
        let consumers = ctx.s3_downloads(&targets, &weights_url)?;
        let method = if n == 1 { Method::S3Download } else { Method::S3NDownloads };
        rows.push(ctx.row(case, method, n, consumers, Some(weights_bytes * n as u64), None));
        p.line(report::row_line(rows.last().context("row")?));
        p.done();

        {
            p.step(format!("N={n}: {}", Method::CooperativeS3.label()), s_over_b);
            match ctx.cooperative(&targets, &weights_url) {
                Ok((consumers, seconds, s3_bytes)) => {
                    let mut row = ctx.row(Case::Nodes, Method::CooperativeS3, n, consumers, Some(s3_bytes), None);
                    if n == 1 {
                        row.case = Case::One;
                        row.note = Some("one node: its share is the whole object".into());
                    }
                    // The request's own time: from asking to the last node's sealed copy.
                    row.seconds = row.seconds.max(seconds);
                    row.x_bound = row.seconds / s_over_b;
                    row.mb_per_s = weights_bytes as f64 / row.seconds / 1e6;
                    rows.push(row);
                    p.line(report::row_line(rows.last().context("row")?));
                    ctx.clear(COOP_NAME, &targets)?;
                }
                Err(e) => {
                    // Reported, not fatal: the other cases still tell their story.
                    missing.push(format!("cooperative S3 fetch at N={n} failed: {e:#}"));
                    p.line(format!("cooperative S3 fetch at N={n} FAILED: {e:#}"));
                    let _ = ctx.clear(COOP_NAME, &targets);
                }
            }
            p.done();
        }
    }

    // Case 4: the runner on node-max_n, whose store got the weights from the broadcast.
    let audio = prepare_audio(&cfg.audio, fabric.scratch())?;
    let max_length = cfg.max_length.or(if random_weights { Some(20) } else { None });
    let mut runner = Vec::new();
    let runner_node = max_n;
    for (method, model) in [
        (Method::RunnerStore, format!("store://{MODEL_PREFIX}")),
        (Method::RunnerS3, format!("s3://{BUCKET}/{MODEL_PREFIX}")),
    ] {
        let eta = if method == Method::RunnerS3 { s_over_b + 2.0 } else { 2.0 };
        p.step(format!("{} on {}", method.label(), node_id(runner_node)), eta);
        let run = ctx.transcribe(runner_node, method, &model, &audio.0, max_length)?;
        let transfer = run.report.get("transfer_seconds").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        // The BLAKE3 of the weight bytes the runner held and ran on (its store mapping, or
        // the buffer it downloaded from S3), hashed by the runner itself after inference.
        let ok = run.report.get("weight_bytes").and_then(|v| v.as_u64()) == Some(weights_bytes)
            && run.report.get("weights_blake3").and_then(|v| v.as_str()) == Some(digest.as_str());
        let note = if method == Method::RunnerStore {
            format!("weights already on {} from the broadcast: mapped in place", node_id(runner_node))
        } else {
            "config, weights and vocab downloaded into the runner's memory".to_string()
        };
        let consumer = Consumer {
            who: node_id(runner_node),
            seconds: transfer,
            digest_ok: ok,
            error: None,
            from: Default::default(),
        };
        let s3 = if method == Method::RunnerS3 { Some(total_bytes) } else { Some(0) };
        rows.push(ctx.row(Case::Runner, method, 1, vec![consumer], s3, Some(note)));
        p.line(report::row_line(rows.last().context("row")?));
        runner.push(run);
        p.done();
    }
    // Tokens too: a random model's transcript may be empty, its tokens still have to agree.
    let transcripts_equal = runner
        .windows(2)
        .all(|w| w[0].transcript == w[1].transcript && w[0].report.get("tokens") == w[1].report.get("tokens"));

    // Measured in the order that needs the fewest clean-ups; shown in the order.
    rows.sort_by_key(|r| r.case);
    let mut report = DemoReport {
        machine,
        started_unix,
        network: network.into(),
        network_detail,
        rate_mbit: cfg.rate_mbit,
        receivers: cfg.receivers,
        k: cfg.k,
        model: ModelInfo { source: model_source, random_weights, weights_bytes, total_bytes, digest: digest.clone() },
        s_over_b,
        rows,
        runner,
        transcripts_equal,
        audio: audio.1,
        targets: Vec::new(),
        missing,
        total_seconds: 0.0,
        report_dir: cfg.report_dir.clone(),
    };
    drop(fabric);
    report.targets = report::evaluate(&report);
    report.total_seconds = started.elapsed().as_secs_f64();
    p.step("writing the report".into(), 1.0);
    let notes = report::write_dir(&report, &cfg.report_dir)?;
    for n in notes {
        p.line(n);
    }
    p.done();
    Ok(report)
}

fn capacity_for(weights: u64) -> u64 {
    // Weights twice (the broadcast copy and the cooperative copy may meet), plus room.
    (weights * 3).max(1 << 30)
}

/// The speech sample and a description of where it came from.
fn prepare_audio(choice: &Audio, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let bundled = |dir: &Path| -> anyhow::Result<(PathBuf, String)> {
        let path = dir.join("speech.wav");
        std::fs::write(&path, BUNDLED_WAV)?;
        Ok((path, format!("bundled sample (espeak-ng: \"{SPEECH_TEXT}\")")))
    };
    match choice {
        Audio::File(p) => Ok((p.clone(), p.display().to_string())),
        Audio::Bundled => bundled(dir),
        Audio::Auto => {
            let path = dir.join("espeak.wav");
            let made = Command::new("espeak-ng")
                .arg("-w")
                .arg(&path)
                .arg(SPEECH_TEXT)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if made { Ok((path, format!("espeak-ng: \"{SPEECH_TEXT}\""))) } else { bundled(dir) }
        }
    }
}

/// Waits until the scheduler lists exactly `nodes` as complete holders of `name`.
fn wait_holders(fabric: &Fabric, name: &str, nodes: &[usize]) -> anyhow::Result<()> {
    let want: Vec<String> = nodes.iter().map(|&i| node_id(i)).collect();
    let listed = fabric.wait_until(Duration::from_secs(15), || {
        fabric.client(0).and_then(|c| Ok(c.locate(name)?)).is_ok_and(|l| {
            let mut have: Vec<String> = l.iter().filter(|l| l.is_complete()).map(|l| l.node.clone()).collect();
            have.sort();
            l.len() == want.len() && have == want
        })
    });
    if !listed {
        bail!("the scheduler did not list {name} on exactly {want:?} within 15 s");
    }
    Ok(())
}

/// What every measurement needs.
struct Ctx<'a> {
    fabric: &'a Fabric,
    digest: &'a str,
    weights_bytes: u64,
    s_over_b: f64,
    logs: &'a Path,
}

impl Ctx<'_> {
    fn timeout(&self, n: usize) -> Duration {
        Duration::from_secs_f64(self.s_over_b * n as f64 * 4.0 + 60.0)
    }

    fn row(
        &self,
        case: Case,
        method: Method,
        n: usize,
        consumers: Vec<Consumer>,
        s3_bytes: Option<u64>,
        note: Option<String>,
    ) -> Row {
        let all_ok = !consumers.is_empty() && consumers.iter().all(|c| c.error.is_none() && c.digest_ok);
        let seconds = if all_ok { consumers.iter().map(|c| c.seconds).fold(0.0, f64::max) } else { f64::NAN };
        Row {
            case,
            method,
            n,
            seconds,
            mb_per_s: self.weights_bytes as f64 / seconds / 1e6,
            s_over_b: self.s_over_b,
            x_bound: seconds / self.s_over_b,
            s3_bytes,
            all_ok,
            consumers,
            note,
        }
    }

    /// Deletes `name` on `nodes` and waits until the scheduler no longer lists them.
    fn clear(&self, name: &str, nodes: &[usize]) -> anyhow::Result<()> {
        for &i in nodes {
            match self.fabric.client(i)?.delete(name) {
                Ok(()) => {}
                Err(e) if e.code() == Some(store_client::wire::object::ErrorCode::NotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {name} on {}", node_id(i))),
            }
        }
        let ids: Vec<String> = nodes.iter().map(|&i| node_id(i)).collect();
        let gone = self.fabric.wait_until(Duration::from_secs(15), || {
            self.fabric
                .client(0)
                .and_then(|c| Ok(c.locate(name)?))
                .is_ok_and(|l| !l.iter().any(|l| ids.contains(&l.node)))
        });
        if !gone {
            bail!("{ids:?} still listed as holders of {name} 15 s after deleting it");
        }
        // Let the token buckets refill and the links drain before the next measurement.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Whether the bytes of `name` a consumer on `node` maps hash to the source's digest
    /// (through the node's socket, also for a network-namespace host).
    fn held_ok(&self, node: usize, name: &str) -> bool {
        verify::held_matches(&self.fabric.socket(node), name, self.digest)
    }

    /// node-0 replicates the weights to `targets` at once.
    fn replicate(&self, targets: &[usize], relay: bool) -> anyhow::Result<Vec<Consumer>> {
        let ids: Vec<String> = targets.iter().map(|&i| node_id(i)).collect();
        let outcomes = self
            .fabric
            .client(0)?
            .replicate(WEIGHTS, Some(ids.clone()), self.timeout(targets.len()), relay)
            .context("replicate request")?;
        Ok(targets
            .iter()
            .zip(&ids)
            .map(|(&i, id)| {
                let outcome = outcomes.iter().find(|o| &o.node == id).map(|o| &o.result);
                Consumer::of_pull(id, outcome, |c, r| {
                    if r.already_present {
                        c.error = Some("already present: nothing was transferred".into());
                    }
                    c.digest_ok = self.held_ok(i, WEIGHTS);
                })
            })
            .collect())
    }

    /// `k` consumers on `node` get the weights at the same moment; the node lacks them and
    /// pulls once. Returns the consumers and whether they all mapped the same memfd.
    fn local_gets(&self, node: usize, k: usize) -> anyhow::Result<(Vec<Consumer>, bool)> {
        let socket = self.fabric.socket(node);
        let barrier = Arc::new(Barrier::new(k));
        let timeout = self.timeout(1);
        type Got = anyhow::Result<(Consumer, store_client::ObjectGuard)>;
        let results: Vec<Got> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..k)
                .map(|c| {
                    let barrier = barrier.clone();
                    let socket = &socket;
                    scope.spawn(move || -> Got {
                        let client = store_client::StoreClient::connect(socket).context("connecting a consumer")?;
                        barrier.wait();
                        let start = Instant::now();
                        let guard = client.get(WEIGHTS, timeout).context("get")?;
                        std::hint::black_box(guard.first());
                        let seconds = start.elapsed().as_secs_f64();
                        let who = format!("{}#{}", node_id(node), c + 1);
                        // Hashed below, once every consumer's clock has stopped.
                        Ok((Consumer { who, seconds, digest_ok: false, error: None, from: Default::default() }, guard))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("consumer panicked"))))
                .collect()
        });
        let mut consumers = Vec::new();
        let mut identities = Vec::new();
        for (c, r) in results.into_iter().enumerate() {
            match r {
                Ok((mut consumer, guard)) => {
                    identities.push(sys::file_identity(std::os::fd::AsFd::as_fd(guard.fd()))?);
                    consumer.digest_ok = verify::mapped_blake3(&guard) == self.digest;
                    consumers.push(consumer);
                }
                Err(e) => consumers.push(Consumer {
                    who: format!("{}#{}", node_id(node), c + 1),
                    seconds: f64::NAN,
                    digest_ok: false,
                    error: Some(format!("{e:#}")),
                    from: Default::default(),
                }),
            }
        }
        let shared = identities.len() == k && identities.windows(2).all(|w| w[0] == w[1]);
        Ok((consumers, shared))
    }

    /// One application process per entry of `nodes` downloads `url` from S3 through its
    /// node's link, all starting at the same moment.
    fn s3_downloads(&self, nodes: &[usize], url: &str) -> anyhow::Result<Vec<Consumer>> {
        let start_at = unix_ms() + 700;
        let mut cmds = Vec::new();
        let mut names = Vec::new();
        for (c, &i) in nodes.iter().enumerate() {
            let who = if nodes.iter().filter(|&&j| j == i).count() > 1 {
                format!("{}#{}", node_id(i), c + 1)
            } else {
                node_id(i)
            };
            let mut cmd = self.fabric.command(i, "s3-get", self.logs)?;
            cmd.arg("role-s3-get")
                .arg("--url")
                .arg(url)
                .arg("--start-at-ms")
                .arg(start_at.to_string())
                .envs(self.fabric.s3_env(i));
            cmds.push(cmd);
            names.push(who);
        }
        let outputs = run_all(cmds, self.timeout(nodes.len()), self.logs);
        Ok(names
            .into_iter()
            .zip(outputs)
            .map(|(who, out)| {
                match out.and_then(|s| serde_json::from_str::<S3GetResult>(&s).context("parsing role-s3-get's result"))
                {
                    // role-s3-get hashed the buffer it downloaded, after its clock stopped.
                    Ok(r) => Consumer {
                        who,
                        seconds: r.seconds,
                        digest_ok: r.blake3 == self.digest && r.bytes == self.weights_bytes,
                        error: None,
                        from: [("s3".to_string(), r.bytes)].into(),
                    },
                    Err(e) => Consumer {
                        who,
                        seconds: f64::NAN,
                        digest_ok: false,
                        error: Some(format!("{e:#}")),
                        from: Default::default(),
                    },
                }
            })
            .collect())
    }

    /// Cooperative fetch of the weights into [`COOP_NAME`] on `targets`: the consumers, the
    /// request's seconds, and the bytes S3 served.
    fn cooperative(&self, targets: &[usize], url: &str) -> anyhow::Result<(Vec<Consumer>, f64, u64)> {
        let ids: Vec<String> = targets.iter().map(|&i| node_id(i)).collect();
        let client = self.fabric.client(targets[0])?;
        let pull = client.pull_s3_cooperative(url, COOP_NAME, Some(ids.clone()), self.timeout(targets.len()))?;
        let consumers = targets
            .iter()
            .zip(&ids)
            .map(|(&i, id)| {
                let outcome = pull.nodes.iter().find(|o| &o.node == id).map(|o| &o.result);
                Consumer::of_pull(id, outcome, |c, r| {
                    if r.s3_bytes > 0 {
                        c.from.insert("s3".into(), r.s3_bytes);
                    }
                    c.digest_ok = self.held_ok(i, COOP_NAME);
                })
            })
            .collect();
        Ok((consumers, pull.total_seconds, pull.s3_bytes))
    }

    fn transcribe(
        &self,
        node: usize,
        method: Method,
        model: &str,
        audio: &Path,
        max_length: Option<usize>,
    ) -> anyhow::Result<RunnerRun> {
        let mut cmd = self.fabric.command(node, "s2t-runner", self.logs)?;
        cmd.arg("role-transcribe")
            .arg("--model")
            .arg(model)
            .arg("--audio")
            .arg(audio)
            .env(store_client::SOCKET_ENV, self.fabric.socket(node))
            .envs(self.fabric.s3_env(node));
        if let Some(m) = max_length {
            cmd.arg("--max-length").arg(m.to_string());
        }
        let out = run_all(vec![cmd], self.timeout(1), self.logs)
            .pop()
            .context("no runner output")?
            .with_context(|| format!("{} on {}", method.label(), node_id(node)))?;
        let report: serde_json::Value = serde_json::from_str(&out).context("parsing the runner's report")?;
        let transcript = report.get("transcript").and_then(|t| t.as_str()).unwrap_or_default().to_string();
        Ok(RunnerRun { method, node: node_id(node), model: model.into(), transcript, report })
    }
}

/// Runs `cmds` at once and returns each one's stdout, or why it failed (non-zero exit,
/// or still running after `timeout`, then killed).
fn run_all(cmds: Vec<Command>, timeout: Duration, logs: &Path) -> Vec<anyhow::Result<String>> {
    let deadline = Instant::now() + timeout;
    let mut running = Vec::new();
    for mut cmd in cmds {
        cmd.stdout(Stdio::piped());
        match NsChild::spawn(&mut cmd) {
            Ok(mut child) => {
                let (tx, rx) = mpsc::channel();
                if let Some(mut stdout) = child.stdout.take() {
                    std::thread::spawn(move || {
                        let mut s = String::new();
                        let _ = tx.send(stdout.read_to_string(&mut s).map(|_| s));
                    });
                }
                running.push(Ok((child, rx)));
            }
            Err(e) => running.push(Err(e)),
        }
    }
    running
        .into_iter()
        .map(|r| {
            let (mut child, rx) = r?;
            let out = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| anyhow::anyhow!("`{}` did not finish within {timeout:?}", child.description()))??;
            let status = child.wait()?;
            if !status.success() {
                bail!("`{}` failed ({status}); see its log in {}", child.description(), logs.display());
            }
            Ok(out)
        })
        .collect()
}
