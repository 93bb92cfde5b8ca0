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
//! digest ([`store_tests::verify`]). The result is a [`DemoReport`]: a table with S/B per row,
//! JSON, and a report directory with a markdown summary and PNG charts ([`report`]).

pub mod fabric;
pub mod pace;
pub mod report;
pub mod roles;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster_bench::Machine;
use fabric::{BUCKET, Fabric, FabricSpec};
use store_tests::cluster::node_id;
use store_tests::verify;

mod measure;
mod results;
mod setup;

use measure::{Ctx, wait_holders};
pub use results::{DemoReport, ModelInfo, Row, RunnerRun, Target};
pub use setup::{
    Audio, BUNDLED_WAV, COOP_NAME, Case, Consumer, DemoConfig, MODEL_PREFIX, Method, SPEECH_TEXT, WEIGHTS,
};

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
    if cfg.netns && !store_tests::netns::requires_root() {
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
