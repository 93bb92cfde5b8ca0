//! The S3 cases of the cluster bench (`--cases s3`): the embedded S3 endpoint (`store-s3`)
//! on its own emulated host with a fast link (host 0, `--s3-rate-mbit`, 2 Gbit/s by default),
//! receivers on hosts 1.. with the shaped links of the other cases (`--rate-mbit`).
//!
//! - (a) `direct`: N = min_n..=max_n hosts each have their daemon ingest the object from S3
//!   at once (`storectl pull s3://...`); N = 1 is repeated (`--repeat`) for the one-node
//!   figure. Bound: the receiver's link (S/B) or the endpoint's link (N x S / B_s3),
//!   whichever is slower.
//! - (b) `k consumers on one host`: k = 1..=max_k processes on host 1 each download the object
//!   into their own memory (`s3-get`, the library's `download_to_vec`), against one daemon
//!   pull followed by k consumers mapping that one copy (`get`, every page touched).
//! - (c) `coop`: cooperative fetch to N hosts (`--cases s3-coop`): one request has each of
//!   hosts 1..=N read a disjoint share of the object from S3 and take the rest from the
//!   others. Bound: S/B (every host still receives the whole object).
//!
//! "S3 bytes served" is what the endpoint counted as GET body bytes (its `--stats-file`);
//! "wire" is the endpoint host's `eth0` transmit counter (headers, TCP/IP and Ethernet
//! framing included). All traffic is plain HTTP with SigV4, as to a MinIO on a private
//! network; the two cores of the machine run the endpoint, every daemon and the hashing.
//!
//! "digest ok" is the BLAKE3 of the bytes a consumer maps (a daemon's copy, through `get`)
//! or holds (`s3-get`'s buffer), computed after the clock stopped, against the BLAKE3 of the
//! payload the bench uploaded ([`store_tests::verify`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;
use store_client::client::PullS3Options;

use super::config::{BenchConfig, Target, capacity_for, median};
use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{LinkSpec, NsChild};
use store_tests::verify;
use store_tests::workspace_bin;

mod rows;

use rows::{ROW_HEADER, round_line, row, row_line};
pub use rows::{S3Kind, S3Report, S3Round, S3Row};

/// TCP port of the endpoint on host 0.
pub const S3_PORT: u16 = 9000;
pub const BUCKET: &str = "bench";
pub const KEY: &str = "object.bin";
/// Store name of the ingested object.
pub const OBJECT: &str = "bench/s3-object.bin";
const ACCESS_KEY: &str = "bench-access";
const SECRET_KEY: &str = "bench-secret-key";

/// The endpoint on host 0 and what it has served.
struct Endpoint {
    _child: NsChild,
    url: String,
    stats_file: PathBuf,
    _root: tempfile::TempDir,
}

impl Endpoint {
    fn body_bytes(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(&self.stats_file).context("reading the endpoint's stats")?;
        let v: serde_json::Value = serde_json::from_str(&text).context("parsing the endpoint's stats")?;
        v["body_bytes"].as_u64().context("no body_bytes in the endpoint's stats")
    }
}

/// Bytes host `i` has sent on its link so far.
fn tx_bytes(cluster: &TestCluster, i: usize) -> anyhow::Result<u64> {
    let out = cluster.net().host(i).run("cat", &["/sys/class/net/eth0/statistics/tx_bytes"], Duration::from_secs(5))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The endpoint's counters at a moment.
#[derive(Clone, Copy)]
struct Served {
    body: u64,
    wire: u64,
}

fn served(cluster: &TestCluster, endpoint: &Endpoint) -> anyhow::Result<Served> {
    Ok(Served { body: endpoint.body_bytes()?, wire: tx_bytes(cluster, 0)? })
}

/// Counters after a round: the stats file is rewritten every 100 ms.
fn served_after(cluster: &TestCluster, endpoint: &Endpoint) -> anyhow::Result<Served> {
    std::thread::sleep(Duration::from_millis(350));
    served(cluster, endpoint)
}

/// The endpoint's credentials, as the standard AWS chain reads them.
fn credentials_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    let mut env = credentials_env();
    env.push((store_client::s3::ENDPOINT_ENV.into(), endpoint.into()));
    env
}

fn start_endpoint(cluster: &TestCluster, data: &[u8]) -> anyhow::Result<Endpoint> {
    let root = tempfile::Builder::new().prefix("store-bench-s3").tempdir()?;
    std::fs::create_dir(root.path().join(BUCKET))?;
    std::fs::write(root.path().join(BUCKET).join(KEY), data)?;
    let stats_file = root.path().join("stats.json");
    let host = cluster.net().host(0);
    let url = format!("http://{}:{S3_PORT}", host.addr());
    let mut cmd = host.command(workspace_bin("store-s3")?);
    cmd.arg("--root")
        .arg(root.path())
        .arg("--listen")
        .arg(format!("{}:{S3_PORT}", host.addr()))
        .arg("--stats-file")
        .arg(&stats_file)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let child = NsChild::spawn(&mut cmd)?;
    let start = Instant::now();
    // The stats file appears once the listener is bound.
    while !stats_file.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("store-s3 did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Endpoint { _child: child, url, stats_file, _root: root })
}

fn s3_url() -> String {
    format!("s3://{BUCKET}/{KEY}")
}

fn receiver_bound(cfg: &BenchConfig) -> f64 {
    cfg.s_over_b()
}

fn endpoint_bound(cfg: &BenchConfig, copies: usize) -> f64 {
    copies as f64 * cfg.size as f64 * 8.0 / (f64::from(cfg.s3_rate_mbit) * 1e6)
}

#[allow(clippy::too_many_arguments)]
fn finish_round(
    cfg: &BenchConfig,
    kind: S3Kind,
    n: usize,
    round: usize,
    rows: &[S3Row],
    wall: f64,
    before: Served,
    after: Served,
    bound: f64,
    endpoint: f64,
) -> S3Round {
    let body = after.body.saturating_sub(before.body);
    S3Round {
        kind,
        n,
        round,
        wall_seconds: wall,
        slowest_seconds: rows.iter().map(|r| r.seconds).fold(f64::NAN, f64::max),
        s3_body_bytes: body,
        s3_wire_bytes: after.wire.saturating_sub(before.wire),
        s3_factor: body as f64 / cfg.size as f64,
        receiver_bound: receiver_bound(cfg),
        endpoint_bound: endpoint,
        bound,
        x_bound: wall / bound,
        all_ok: rows.iter().all(|r| r.error.is_none() && r.digest_ok),
    }
}

fn delete_everywhere(cluster: &TestCluster, hosts: impl IntoIterator<Item = usize>) -> anyhow::Result<()> {
    for i in hosts {
        match cluster.client(i)?.delete(OBJECT) {
            Ok(()) => {}
            Err(e) if e.code() == Some(store_client::wire::object::ErrorCode::NotFound) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {OBJECT} on {}", node_id(i))),
        }
    }
    // Let the links drain and the token buckets refill.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// (a) hosts `1..=n` pull the object from S3 at once.
fn direct_round(
    cfg: &BenchConfig,
    cluster: &TestCluster,
    endpoint: &Endpoint,
    digest: &str,
    n: usize,
    round: usize,
) -> anyhow::Result<(Vec<S3Row>, S3Round)> {
    let before = served(cluster, endpoint)?;
    let barrier = Arc::new(Barrier::new(n + 1));
    let url = s3_url();
    let (rows, wall) = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=n)
            .map(|i| {
                let barrier = barrier.clone();
                let url = &url;
                scope.spawn(move || {
                    let mut r = row(cfg, S3Kind::Direct, n, round, node_id(i), 1);
                    let client = cluster.client(i);
                    barrier.wait();
                    match client.and_then(|c| Ok(c.pull_s3(url, OBJECT, PullS3Options::default())?)) {
                        Ok(p) => {
                            r.seconds = p.total_seconds;
                            r.download_seconds = p.download_seconds;
                        }
                        Err(e) => r.error = Some(format!("{e:#}")),
                    }
                    r.with_rates(cfg)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let rows: Vec<S3Row> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    let mut r = row(cfg, S3Kind::Direct, n, round, "?".into(), 1);
                    r.error = Some("thread panicked".into());
                    r
                })
            })
            .collect();
        (rows, start.elapsed().as_secs_f64())
    });
    let mut rows = rows;
    // Every host's copy, hashed as its consumers map it, once all the clocks have stopped.
    for (i, r) in (1..=n).zip(rows.iter_mut()) {
        r.digest_ok = r.error.is_none() && verify::held_matches(&cluster.socket(i), OBJECT, digest);
    }
    let after = served_after(cluster, endpoint)?;
    let endpoint_bound = endpoint_bound(cfg, n);
    let bound = receiver_bound(cfg).max(endpoint_bound);
    let summary = finish_round(cfg, S3Kind::Direct, n, round, &rows, wall, before, after, bound, endpoint_bound);
    delete_everywhere(cluster, 1..=n)?;
    Ok((rows, summary))
}

/// (b) k `s3-get` processes on host 1, each downloading into its own memory.
fn consumers_direct(
    cfg: &BenchConfig,
    cluster: &TestCluster,
    endpoint: &Endpoint,
    digest: &str,
    k: usize,
) -> anyhow::Result<(Vec<S3Row>, S3Round)> {
    let before = served(cluster, endpoint)?;
    let host = cluster.net().host(1);
    let start = Instant::now();
    let mut children = Vec::with_capacity(k);
    for _ in 0..k {
        let mut cmd = host.command(workspace_bin("s3-get")?);
        cmd.arg(s3_url())
            .args(["--repeats", "1", "--json", "--hash"])
            .envs(s3_env(&endpoint.url))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        children.push(NsChild::spawn(&mut cmd)?);
    }
    let mut rows = Vec::with_capacity(k);
    for (c, child) in children.into_iter().enumerate() {
        let mut r = row(cfg, S3Kind::ConsumersDirect, k, 1, node_id(1), c + 1);
        let mut child = child;
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout).context("reading s3-get's output")?;
        }
        let status = child.wait()?;
        match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
            Ok(v) if status.success() => {
                r.seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
                r.download_seconds = r.seconds;
                // `--hash`: s3-get hashed the buffer it downloaded, after its clock stopped.
                r.digest_ok = v["blake3"].as_str() == Some(digest);
            }
            _ => r.error = Some(format!("s3-get exited with {status}: {}", stdout.trim())),
        }
        rows.push(r.with_rates(cfg));
    }
    let wall = start.elapsed().as_secs_f64();
    let after = served_after(cluster, endpoint)?;
    let endpoint_bound = endpoint_bound(cfg, k);
    // k whole downloads share one receiver link.
    let bound = (k as f64 * receiver_bound(cfg)).max(endpoint_bound);
    let summary = finish_round(cfg, S3Kind::ConsumersDirect, k, 1, &rows, wall, before, after, bound, endpoint_bound);
    Ok((rows, summary))
}

/// (b) one daemon pull on host 1, then k consumers map the one copy and touch every page.
fn consumers_store(
    cfg: &BenchConfig,
    cluster: &TestCluster,
    endpoint: &Endpoint,
    digest: &str,
    k: usize,
) -> anyhow::Result<(Vec<S3Row>, S3Round)> {
    let before = served(cluster, endpoint)?;
    let socket = cluster.socket(1);
    let start = Instant::now();
    let pulled = cluster.client(1)?.pull_s3(&s3_url(), OBJECT, PullS3Options::default());
    let download_seconds = pulled.as_ref().map_or(f64::NAN, |p| p.download_seconds);
    let pull_error = pulled.as_ref().err().map(|e| format!("pull: {e}"));
    let consumed: Vec<(S3Row, Option<StoreGuard>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..k)
            .map(|c| {
                let socket = &socket;
                let pull_error = pull_error.clone();
                scope.spawn(move || {
                    let mut r = row(cfg, S3Kind::ConsumersStore, k, 1, node_id(1), c + 1);
                    r.download_seconds = download_seconds;
                    if let Some(e) = pull_error {
                        r.error = Some(e);
                        return (r, None);
                    }
                    match consume(socket) {
                        Ok(guard) => {
                            r.seconds = start.elapsed().as_secs_f64();
                            (r.with_rates(cfg), Some(guard))
                        }
                        Err(e) => {
                            r.error = Some(format!("{e:#}"));
                            (r, None)
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    let mut r = row(cfg, S3Kind::ConsumersStore, k, 1, node_id(1), 0);
                    r.error = Some("consumer panicked".into());
                    (r, None)
                })
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    // Each consumer's mapping, hashed once every clock has stopped.
    let rows: Vec<S3Row> = consumed
        .into_iter()
        .map(|(mut r, guard)| {
            r.digest_ok = guard.is_some_and(|g| verify::mapped_blake3(&g) == digest);
            r
        })
        .collect();
    let after = served_after(cluster, endpoint)?;
    let endpoint_bound = endpoint_bound(cfg, 1);
    let bound = receiver_bound(cfg).max(endpoint_bound);
    let summary = finish_round(cfg, S3Kind::ConsumersStore, k, 1, &rows, wall, before, after, bound, endpoint_bound);
    delete_everywhere(cluster, [1])?;
    Ok((rows, summary))
}

type StoreGuard = store_client::ObjectGuard;

/// A consumer: maps the object read-only and reads one byte of every page; its mapping.
fn consume(socket: &Path) -> anyhow::Result<StoreGuard> {
    let client = StoreClient::connect(socket)?;
    let guard = client.get(OBJECT, Duration::ZERO)?;
    let mut sum = 0u8;
    for page in guard.chunks(4096) {
        sum = sum.wrapping_add(page[0]);
    }
    std::hint::black_box(sum);
    Ok(guard)
}

/// (c) Cooperative fetch to hosts `1..=n`: one `pull_s3_cooperative` request (to node-1)
/// has each node read a disjoint share from S3 and take the rest from the others. Bound: S/B
/// of one receiver link (each node must still receive the whole object), or the endpoint's
/// link for one copy, whichever is slower.
fn coop_round(
    cfg: &BenchConfig,
    cluster: &TestCluster,
    endpoint: &Endpoint,
    digest: &str,
    n: usize,
) -> anyhow::Result<(Vec<S3Row>, S3Round)> {
    let before = served(cluster, endpoint)?;
    let nodes: Vec<String> = (1..=n).map(node_id).collect();
    let start = Instant::now();
    let pulled = cluster.client(1)?.pull_s3_cooperative(&s3_url(), OBJECT, Some(nodes), Duration::from_secs(600));
    let wall = start.elapsed().as_secs_f64();
    let mut rows = Vec::with_capacity(n);
    match pulled {
        Ok(p) => {
            for o in &p.nodes {
                let mut r = row(cfg, S3Kind::Cooperative, n, 1, o.node.clone(), 1);
                match &o.result {
                    Ok(report) => {
                        r.seconds = report.seconds + p.share_seconds;
                        r.download_seconds = p.share_seconds;
                    }
                    Err(e) => r.error = Some(e.clone()),
                }
                rows.push(r.with_rates(cfg));
            }
        }
        Err(e) => {
            let mut r = row(cfg, S3Kind::Cooperative, n, 1, node_id(1), 1);
            r.error = Some(format!("{e:#}"));
            rows.push(r);
        }
    }
    // Every receiver holds the object with the right content: its mapped bytes hashed.
    for r in &mut rows {
        let host = (1..=n).find(|&i| node_id(i) == r.node);
        r.digest_ok =
            r.error.is_none() && host.is_some_and(|i| verify::held_matches(&cluster.socket(i), OBJECT, digest));
    }
    let after = served_after(cluster, endpoint)?;
    let endpoint_bound = endpoint_bound(cfg, 1);
    let bound = receiver_bound(cfg).max(endpoint_bound);
    let summary = finish_round(cfg, S3Kind::Cooperative, n, 1, &rows, wall, before, after, bound, endpoint_bound);
    delete_everywhere(cluster, 1..=n)?;
    Ok((rows, summary))
}

/// Runs (a) and (b) when `direct` is set, and (c) when `coop` is.
pub fn run(
    cfg: &BenchConfig,
    data: &[u8],
    direct: bool,
    coop: bool,
    say: &mut impl FnMut(String),
) -> anyhow::Result<S3Report> {
    let receivers = cfg.max_n.max(1);
    let mut spec = ClusterSpec::new(receivers + 1, LinkSpec::shaped(cfg.rate_mbit, cfg.mtu));
    spec.links[0] = LinkSpec::shaped(cfg.s3_rate_mbit, cfg.mtu);
    spec.capacity = capacity_for(cfg.size);
    spec.log = cfg.log.clone();
    spec.daemon_env = credentials_env();
    say(format!(
        "\nS3: endpoint on node-0 ({} Mbit/s), receivers node-1..node-{receivers} ({} Mbit/s); S/B = {:.3} s, endpoint link S/B_s3 = {:.3} s",
        cfg.s3_rate_mbit,
        cfg.rate_mbit,
        cfg.s_over_b(),
        endpoint_bound(cfg, 1)
    ));
    let mut cluster = TestCluster::start(spec)?;
    let endpoint = start_endpoint(&cluster, data)?;
    // The endpoint's address is known once the hosts exist: restart the receivers' daemons
    // with it (the --s3-endpoint flag).
    for i in 1..=receivers {
        cluster.restart_daemon(i, &["--s3-endpoint", &endpoint.url])?;
    }
    cluster.wait_registered(receivers + 1, Duration::from_secs(20))?;
    let digest = blake3::hash(data).to_hex().to_string();
    let mut report = S3Report {
        endpoint_rate_mbit: cfg.s3_rate_mbit,
        receiver_rate_mbit: cfg.rate_mbit,
        rows: Vec::new(),
        rounds: Vec::new(),
        cooperative: None,
    };

    if direct {
        say(format!("\n(s3-a) N hosts each downloading the object from S3 at once (N=1: {} rounds)", cfg.repeat));
        say(ROW_HEADER.into());
        for n in cfg.min_n.max(1)..=receivers {
            let rounds = if n == 1 { cfg.repeat } else { 1 };
            for round in 1..=rounds {
                let (rows, summary) = direct_round(cfg, &cluster, &endpoint, &digest, n, round)?;
                for r in &rows {
                    say(row_line(r));
                }
                say(round_line(&summary, cfg.size));
                report.rows.extend(rows);
                report.rounds.push(summary);
            }
        }

        say("\n(s3-b) k consumers on node-1: each downloading into its own memory vs one store copy mapped k times"
            .into());
        say(ROW_HEADER.into());
        for k in 1..=cfg.max_k.max(1) {
            for kind in [S3Kind::ConsumersDirect, S3Kind::ConsumersStore] {
                let (rows, summary) = if kind == S3Kind::ConsumersDirect {
                    consumers_direct(cfg, &cluster, &endpoint, &digest, k)?
                } else {
                    consumers_store(cfg, &cluster, &endpoint, &digest, k)?
                };
                for r in &rows {
                    say(row_line(r));
                }
                say(round_line(&summary, cfg.size));
                report.rows.extend(rows);
                report.rounds.push(summary);
            }
        }
        say("\n  k   direct: wall (s)  S3 x S    store copy: wall (s)  S3 x S".into());
        for k in 1..=cfg.max_k.max(1) {
            let get = |kind| report.rounds.iter().find(|r| r.kind == kind && r.n == k);
            if let (Some(d), Some(s)) = (get(S3Kind::ConsumersDirect), get(S3Kind::ConsumersStore)) {
                say(format!(
                    "{k:>3}   {:>15.3}  {:>7.2}    {:>19.3}  {:>7.2}",
                    d.wall_seconds, d.s3_factor, s.wall_seconds, s.s3_factor
                ));
            }
        }
    }

    if coop {
        say("\n(s3-c) cooperative fetch to N hosts".into());
        for n in cfg.min_n.max(1)..=receivers {
            match coop_round(cfg, &cluster, &endpoint, &digest, n) {
                Ok((rows, summary)) => {
                    for r in &rows {
                        say(row_line(r));
                    }
                    say(round_line(&summary, cfg.size));
                    report.rows.extend(rows);
                    report.rounds.push(summary);
                }
                Err(e) => {
                    say(format!("  {e:#}"));
                    report.cooperative = Some(format!("{e:#}"));
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// The S3 targets this run can judge.
pub fn targets(cfg: &BenchConfig, report: &S3Report) -> Vec<Target> {
    let mut targets = Vec::new();
    let one: Vec<&S3Row> = report.rows.iter().filter(|r| r.kind == S3Kind::Direct && r.n == 1).collect();
    if !one.is_empty() {
        let pcts: Vec<f64> = one.iter().map(|r| if r.error.is_none() { r.link_pct } else { 0.0 }).collect();
        let download: Vec<f64> = one
            .iter()
            .map(|r| cfg.size as f64 * 8.0 / r.download_seconds / (f64::from(cfg.rate_mbit) * 1e6) * 100.0)
            .collect();
        let m = median(&pcts);
        targets.push(Target {
            target: format!("one node on a shaped link: S3 ingest >= 90 % of {} Mbit/s", cfg.rate_mbit),
            met: m >= 90.0 && one.iter().all(|r| r.digest_ok),
            detail: format!(
                "median {m:.1} % request to sealed object (rounds: {}), download alone {:.1} %; TCP payload ceiling {:.1} %",
                pcts.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(", "),
                median(&download),
                cfg.tcp_payload_bps() / (f64::from(cfg.rate_mbit) * 1e6) * 100.0
            ),
        });
    }
    let round = |kind, n| report.rounds.iter().find(|r| r.kind == kind && r.n == n);
    let k = cfg.max_k.max(1);
    if let (Some(one), Some(store), Some(direct)) =
        (round(S3Kind::ConsumersDirect, 1), round(S3Kind::ConsumersStore, k), round(S3Kind::ConsumersDirect, k))
    {
        targets.push(Target {
            target: format!("{k} store-mapped consumers on one host: total <= 1.1 x one download"),
            met: store.wall_seconds <= 1.1 * one.wall_seconds && store.all_ok,
            detail: format!(
                "{:.3} s = {:.2} x one direct download ({:.3} s); S3 served {:.2} x S",
                store.wall_seconds,
                store.wall_seconds / one.wall_seconds,
                one.wall_seconds,
                store.s3_factor
            ),
        });
        targets.push(Target {
            target: format!("{k} direct consumers on one host grow ~{k} x"),
            met: direct.wall_seconds >= 0.75 * k as f64 * one.wall_seconds,
            detail: format!(
                "{:.3} s = {:.2} x one download; S3 served {:.2} x S",
                direct.wall_seconds,
                direct.wall_seconds / one.wall_seconds,
                direct.s3_factor
            ),
        });
    }
    if let Some(coop) = report.rounds.iter().filter(|r| r.kind == S3Kind::Cooperative).max_by_key(|r| r.n) {
        let n = coop.n;
        targets.push(Target {
            target: format!("cooperative fetch to {n} hosts: S3 serves <= 1.1 x S"),
            met: coop.s3_factor <= 1.1 && coop.all_ok,
            detail: format!("{:.3} x S ({:.1} MiB)", coop.s3_factor, coop.s3_body_bytes as f64 / f64::from(1 << 20)),
        });
        targets.push(Target {
            target: format!("cooperative fetch to {n} hosts: time <= 1.3 x S/B"),
            met: coop.wall_seconds <= 1.3 * receiver_bound(cfg) && coop.all_ok,
            detail: format!(
                "{:.3} s = {:.2} x S/B ({:.3} s)",
                coop.wall_seconds,
                coop.wall_seconds / receiver_bound(cfg),
                receiver_bound(cfg)
            ),
        });
    }
    targets
}
