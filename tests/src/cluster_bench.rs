//! The cluster bench behind `cluster-bench`: the object-store cases of the experiment that
//! motivated the project, on emulated hosts (network namespaces with tbf-shaped links, see
//! [`crate::netns`]) running real scheduler and daemon processes ([`crate::cluster`]).
//!
//! Cases:
//! - `one`: one receiver on another host (node-0 -> node-1), repeated.
//! - `local`: one and two consumers on the source's host mapping the object that is already
//!   there (time from `get` to a readable mapping, and to having touched every page).
//! - `broadcast`: N = 1..max_n receivers each on its own host, all at once, with relaying
//!   (the swarm, our default) and without (every receiver pulls only from complete holders,
//!   as Ray does); every copy checked by hashing its mapped bytes, receivers emptied between
//!   rounds.
//! - `unshaped`: an unshaped link between two hosts: replication against a bare quinn stream
//!   (same TLS and transport settings as the daemons, [`quinn_source`] / [`quinn_sink`] run
//!   in the hosts) and a plain TCP stream (`netprobe`), all in the same run.
//!
//! - `s3` (and `s3-coop`, the cooperative fetch's extension point): S3 downloads from an
//!   endpoint on its own fast-linked host; see [`s3`].
//!
//! Bounds: S/B is the object size over the configured link rate. tbf counts whole Ethernet
//! frames, so no payload ever reaches S/B: a TCP stream (what `netprobe` or iperf3 measures) carries
//! `R * (MTU - 52) / (MTU + 14)` of payload, QUIC a little less.
//!
//! "digest ok" everywhere means: the BLAKE3 of the bytes a consumer maps (`get`, after the
//! clock stopped) or holds (an S3 download's buffer) equals the BLAKE3 of the payload the
//! bench generated, never a daemon's reported digest ([`crate::verify`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use store_client::StoreClient;
use store_client::tls::{CertPaths, Identity};

use crate::cluster::{ClusterSpec, TestCluster, node_id};
use crate::netns::{LinkSpec, NsChild, run_checked};
use crate::payload;
use crate::verify;
use crate::workspace_bin;

pub mod s3;

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

/// A target of the issue and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub met: bool,
    pub detail: String,
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
    pub s3: Option<s3::S3Report>,
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

const RECEIVER_HEADER: &str =
    "case       relay   N round node       seconds     MB/s  %link   S/B(s)  xS/B  digest  from (MiB)";

fn receiver_line(r: &ReceiverRow) -> String {
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

fn capacity_for(size: u64) -> String {
    format!("{}MiB", (size * 3).div_ceil(1 << 20) + 1024)
}

fn shaped_spec(cfg: &BenchConfig, hosts: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(hosts, LinkSpec::shaped(cfg.rate_mbit, cfg.mtu));
    spec.capacity = capacity_for(cfg.size);
    spec.log = cfg.log.clone();
    spec
}

/// Puts the benchmark object on node-0 and waits until the scheduler lists it there;
/// returns the BLAKE3 of `data`, what every copy's bytes must hash to.
fn put_source(cluster: &TestCluster, data: &[u8]) -> anyhow::Result<String> {
    cluster.client(0)?.put(OBJECT, data).context("putting the object on node-0")?;
    let digest = verify::blake3_hex(data);
    let listed = cluster.wait_until(Duration::from_secs(15), || {
        cluster.client(0).and_then(|c| Ok(c.locate(OBJECT)?)).is_ok_and(|l| l.iter().any(|l| l.is_complete()))
    });
    if !listed {
        bail!("the scheduler did not list {OBJECT} on node-0 within 15 s");
    }
    Ok(digest)
}

/// Deletes the object on `receivers` and waits until the scheduler lists only node-0.
fn clear_receivers(cluster: &TestCluster, receivers: &[usize]) -> anyhow::Result<()> {
    for &i in receivers {
        match cluster.client(i)?.delete(OBJECT) {
            Ok(()) => {}
            Err(e) if e.code() == Some(store_client::wire::object::ErrorCode::NotFound) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {OBJECT} on {}", node_id(i))),
        }
    }
    let only_source = cluster.wait_until(Duration::from_secs(15), || {
        cluster
            .client(0)
            .and_then(|c| Ok(c.locate(OBJECT)?))
            .is_ok_and(|l| l.len() == 1 && l.iter().all(|l| l.node == node_id(0)))
    });
    if !only_source {
        bail!("receivers still listed as holders of {OBJECT} 15 s after deleting it");
    }
    // Let the links drain and the token buckets refill.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Context of one replication round.
struct Round<'a> {
    cfg: &'a BenchConfig,
    cluster: &'a TestCluster,
    digest: &'a str,
    case: Case,
    relay: Option<bool>,
    round: usize,
}

impl Round<'_> {
    /// Replicates the object from node-0 to `targets` at once; one row per target, in node
    /// order, plus the wall time.
    fn replicate(&self, targets: &[usize]) -> anyhow::Result<(Vec<ReceiverRow>, f64)> {
        let cfg = self.cfg;
        let bound = cfg.s_over_b();
        let timeout = Duration::from_secs_f64(targets.len() as f64 * bound * 4.0 + 60.0);
        let ids: Vec<String> = targets.iter().map(|&i| node_id(i)).collect();
        let start = Instant::now();
        let outcomes = self
            .cluster
            .client(0)?
            .replicate(OBJECT, Some(ids.clone()), timeout, self.relay.unwrap_or(true))
            .context("replicate request")?;
        let wall = start.elapsed().as_secs_f64();
        let mut rows = Vec::new();
        for (&i, id) in targets.iter().zip(&ids) {
            let mut row = ReceiverRow {
                case: self.case,
                relay: self.relay,
                n: targets.len(),
                round: self.round,
                node: id.clone(),
                error: None,
                seconds: f64::NAN,
                mb_per_s: f64::NAN,
                link_pct: f64::NAN,
                s_over_b: bound,
                x_bound: f64::NAN,
                digest_ok: false,
                from: BTreeMap::new(),
                retries: 0,
            };
            match outcomes.iter().find(|o| &o.node == id).map(|o| &o.result) {
                None => row.error = Some("no outcome reported".into()),
                Some(Err(e)) => row.error = Some(e.clone()),
                Some(Ok(report)) => {
                    row.seconds = report.seconds;
                    row.mb_per_s = report.bytes as f64 / report.seconds / 1e6;
                    row.link_pct =
                        report.bytes as f64 * 8.0 / report.seconds / (f64::from(cfg.rate_mbit) * 1e6) * 100.0;
                    row.x_bound = report.seconds / bound;
                    row.from = report.from.clone();
                    row.retries = report.retries;
                    if report.already_present {
                        row.error = Some("already present: nothing was transferred".into());
                    }
                    row.digest_ok = verify::held_matches(&self.cluster.socket(i), OBJECT, self.digest);
                }
            }
            rows.push(row);
        }
        Ok((rows, wall))
    }
}

/// Runs the configured cases; `say` receives the table's lines as they come.
pub fn run(cfg: &BenchConfig, mut say: impl FnMut(String)) -> anyhow::Result<BenchReport> {
    if cfg.size == 0 || cfg.rate_mbit == 0 || cfg.max_n == 0 || cfg.repeat == 0 {
        bail!("--size, --rate-mbit, --max-n and --repeat must be positive");
    }
    let machine = Machine::probe();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let bounds =
        Bounds { s_over_b: cfg.s_over_b(), tcp_payload_mbit: cfg.tcp_payload_bps() / 1e6, tcp_bound: cfg.tcp_bound() };
    say(format!(
        "cluster-bench: {} object, links {} Mbit/s at MTU {}: S/B = {:.3} s; TCP payload rate {:.1} Mbit/s -> {:.3} s",
        bytesize::ByteSize(cfg.size),
        cfg.rate_mbit,
        cfg.mtu,
        bounds.s_over_b,
        bounds.tcp_payload_mbit,
        bounds.tcp_bound
    ));
    say(format!("machine: {} cores, {}, kernel {}", machine.nproc, machine.cpu_model, machine.kernel));
    let size = usize::try_from(cfg.size).context("--size does not fit in memory")?;
    let data = payload(size, 0x5EED);
    let mut report = BenchReport {
        config: cfg.clone(),
        machine,
        started_unix,
        bounds,
        one: Vec::new(),
        local: Vec::new(),
        broadcast: Vec::new(),
        broadcast_rounds: Vec::new(),
        unshaped: Vec::new(),
        targets: Vec::new(),
        s3: None,
    };
    let wants = |c: Case| cfg.cases.contains(&c);

    if wants(Case::One) || wants(Case::Local) {
        let hosts = if wants(Case::One) { 2 } else { 1 };
        say(format!("\nstarting {hosts} host(s), {} Mbit/s links", cfg.rate_mbit));
        let cluster = TestCluster::start(shaped_spec(cfg, hosts))?;
        let digest = put_source(&cluster, &data)?;
        if wants(Case::One) {
            say(format!("\n(a) one receiver on another host, {} rounds", cfg.repeat));
            say(RECEIVER_HEADER.into());
            for round in 1..=cfg.repeat {
                let ctx = Round { cfg, cluster: &cluster, digest: &digest, case: Case::One, relay: None, round };
                let (rows, _) = ctx.replicate(&[1])?;
                for row in rows {
                    say(receiver_line(&row));
                    report.one.push(row);
                }
                clear_receivers(&cluster, &[1])?;
            }
            let secs: Vec<f64> = report.one.iter().map(|r| r.seconds).collect();
            let median_s = median(&secs);
            say(format!(
                "median {:.3} s = {:.1} % of {} Mbit/s ({:.1} % of the TCP payload rate)",
                median_s,
                bounds_pct(cfg, median_s),
                cfg.rate_mbit,
                cfg.tcp_bound() / median_s * 100.0
            ));
        }
        if wants(Case::Local) {
            let rounds = cfg.repeat.max(5);
            say(format!("\n(b) consumers on the source's host mapping the object, {rounds} rounds"));
            say("k round consumer   map (ms)  all pages (ms)  digest".into());
            let socket = cluster.socket(0);
            for k in [1usize, 2] {
                for round in 1..=rounds {
                    let rows = local_round(&socket, k, round, &digest)?;
                    for row in rows {
                        say(format!(
                            "{} {:>5} {:>8} {:>10.3} {:>15.3}  {}",
                            row.k,
                            row.round,
                            row.consumer,
                            row.map_seconds * 1e3,
                            row.touch_seconds * 1e3,
                            if row.digest_ok { "ok" } else { "BAD" }
                        ));
                        report.local.push(row);
                    }
                }
            }
        }
        drop(cluster);
    }

    if wants(Case::Broadcast) {
        let hosts = cfg.max_n + 1;
        say(format!("\nstarting {hosts} hosts, {} Mbit/s links", cfg.rate_mbit));
        let cluster = TestCluster::start(shaped_spec(cfg, hosts))?;
        let digest = put_source(&cluster, &data)?;
        say(format!("\n(c) broadcast from node-0 to N hosts, relay on and off (S/B = {:.3} s)", cfg.s_over_b()));
        say(RECEIVER_HEADER.into());
        for n in cfg.min_n.max(1)..=cfg.max_n {
            let targets: Vec<usize> = (1..=n).collect();
            for &relay in &cfg.relay_modes {
                let ctx = Round {
                    cfg,
                    cluster: &cluster,
                    digest: &digest,
                    case: Case::Broadcast,
                    relay: Some(relay),
                    round: 1,
                };
                let (rows, wall) = ctx.replicate(&targets)?;
                let max_seconds = rows.iter().map(|r| r.seconds).fold(f64::NAN, f64::max);
                let all_ok = rows.iter().all(|r| r.error.is_none() && r.digest_ok);
                for row in rows {
                    say(receiver_line(&row));
                    report.broadcast.push(row);
                }
                say(format!(
                    "  N={n} relay {}: slowest {:.3} s = {:.2} x S/B (replicate call {:.3} s){}",
                    if relay { "on" } else { "off" },
                    max_seconds,
                    max_seconds / cfg.s_over_b(),
                    wall,
                    if all_ok { "" } else { "  SOME RECEIVER FAILED OR DIFFERS" }
                ));
                report.broadcast_rounds.push(BroadcastRound {
                    n,
                    relay,
                    max_seconds,
                    max_x_bound: max_seconds / cfg.s_over_b(),
                    wall_seconds: wall,
                    all_ok,
                });
                clear_receivers(&cluster, &targets)?;
            }
        }
        say("\n  N   relay on: slowest (xS/B)   relay off: slowest (xS/B)".into());
        for n in cfg.min_n.max(1)..=cfg.max_n {
            let get = |relay: bool| report.broadcast_rounds.iter().find(|r| r.n == n && r.relay == relay);
            if let (Some(on), Some(off)) = (get(true), get(false)) {
                say(format!(
                    "{n:>3}   {:>9.3} s ({:>4.2})        {:>9.3} s ({:>4.2})",
                    on.max_seconds, on.max_x_bound, off.max_seconds, off.max_x_bound
                ));
            }
        }
        drop(cluster);
    }
    if wants(Case::S3) || wants(Case::S3Coop) {
        report.s3 = Some(s3::run(cfg, &data, wants(Case::S3), wants(Case::S3Coop), &mut say)?);
    }
    drop(data);

    if wants(Case::Unshaped) {
        for &mtu in &cfg.unshaped_mtus {
            let result = unshaped(cfg, mtu, &mut say)?;
            report.unshaped.push(result);
        }
    }

    report.targets = evaluate(cfg, &report);
    if let Some(s3) = &report.s3 {
        report.targets.extend(s3::targets(cfg, s3));
    }
    say("\ntargets:".into());
    for t in &report.targets {
        say(format!("  [{}] {}: {}", if t.met { "met" } else { "NOT met" }, t.target, t.detail));
    }
    Ok(report)
}

fn bounds_pct(cfg: &BenchConfig, seconds: f64) -> f64 {
    cfg.s_over_b() / seconds * 100.0
}

/// `k` consumers on the source's host, each with its own connection, `get` the object at
/// the same moment; each mapping is hashed once every consumer's clock has stopped.
fn local_round(socket: &Path, k: usize, round: usize, digest: &str) -> anyhow::Result<Vec<LocalRow>> {
    let barrier = Arc::new(Barrier::new(k));
    type Mapped = anyhow::Result<(LocalRow, store_client::ObjectGuard)>;
    let results: Vec<Mapped> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..k)
            .map(|consumer| {
                let barrier = barrier.clone();
                scope.spawn(move || -> Mapped {
                    let client = StoreClient::connect(socket).context("connecting a local consumer")?;
                    barrier.wait();
                    let start = Instant::now();
                    let guard = client.get(OBJECT, Duration::ZERO).context("local get")?;
                    std::hint::black_box(guard.first());
                    let map_seconds = start.elapsed().as_secs_f64();
                    let mut sum = 0u8;
                    for page in guard.chunks(4096) {
                        sum = sum.wrapping_add(page[0]);
                    }
                    std::hint::black_box(sum);
                    let touch_seconds = start.elapsed().as_secs_f64();
                    let row =
                        LocalRow { k, round, consumer: consumer + 1, map_seconds, touch_seconds, digest_ok: false };
                    Ok((row, guard))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("consumer panicked")))).collect()
    });
    results
        .into_iter()
        .map(|r| {
            let (mut row, guard) = r?;
            row.digest_ok = verify::mapped_blake3(&guard) == digest;
            Ok(row)
        })
        .collect()
}

/// A running `cluster-bench quinn-sink` in a host.
struct Sink {
    child: NsChild,
    addr: SocketAddr,
}

fn start_sink(cluster: &TestCluster, host: usize) -> anyhow::Result<Sink> {
    let addr = SocketAddr::new(cluster.net().host(host).addr().into(), QUINN_PORT);
    let mut cmd = cluster.net().host(host).command(workspace_bin("cluster-bench")?);
    cmd.arg("quinn-sink")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--cert-dir")
        .arg(cluster.certs_dir())
        .arg("--name")
        .arg(node_id(host))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = NsChild::spawn(&mut cmd)?;
    let stdout = child.stdout.take().context("quinn-sink has no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("listening") => return Ok(Sink { child, addr }),
            Ok(_) => {}
            Err(_) => bail!("`{}` did not report listening within 10 s", child.description()),
        }
    }
}

/// Result of one bare quinn transfer, printed by `quinn-source` as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuinnResult {
    pub bytes: u64,
    pub seconds: f64,
}

fn run_source(cluster: &TestCluster, host: usize, sink: &Sink, sink_host: usize, bytes: u64) -> anyhow::Result<f64> {
    let mut cmd = cluster.net().host(host).command(workspace_bin("cluster-bench")?);
    cmd.arg("quinn-source")
        .arg("--to")
        .arg(sink.addr.to_string())
        .arg("--server-name")
        .arg(node_id(sink_host))
        .arg("--cert-dir")
        .arg(cluster.certs_dir())
        .arg("--name")
        .arg(node_id(host))
        .arg("--bytes")
        .arg(bytes.to_string());
    let output = run_checked(&mut cmd, Duration::from_secs(120))?;
    let result: QuinnResult = serde_json::from_slice(&output.stdout).context("quinn-source printed no result")?;
    if result.bytes != bytes {
        bail!("quinn-source moved {} of {bytes} bytes", result.bytes);
    }
    Ok(result.bytes as f64 * 8.0 / result.seconds / 1e9)
}

fn unshaped(cfg: &BenchConfig, mtu: u32, say: &mut impl FnMut(String)) -> anyhow::Result<UnshapedReport> {
    say(format!(
        "\n(d) unshaped link, MTU {mtu}: replication vs bare quinn stream vs plain TCP, {} rounds",
        cfg.repeat
    ));
    let mut spec = ClusterSpec::new(2, LinkSpec::unshaped(mtu));
    spec.capacity = capacity_for(cfg.size);
    spec.log = cfg.log.clone();
    let cluster = TestCluster::start(spec)?;
    let size = usize::try_from(cfg.size).context("--size does not fit in memory")?;
    let digest = put_source(&cluster, &payload(size, 0x5EED))?;
    let sink = start_sink(&cluster, 1)?;
    let mut replication_gbit = Vec::new();
    let mut quinn_gbit = Vec::new();
    say("round  replication (Gbit/s)  bare quinn (Gbit/s)".into());
    for round in 1..=cfg.repeat {
        let ctx = Round { cfg, cluster: &cluster, digest: &digest, case: Case::Unshaped, relay: None, round };
        let (rows, _) = ctx.replicate(&[1])?;
        let repl = match rows.first() {
            Some(r) if r.error.is_none() && r.digest_ok => cfg.size as f64 * 8.0 / r.seconds / 1e9,
            Some(r) => bail!("unshaped replication failed: {:?} (digest ok: {})", r.error, r.digest_ok),
            None => bail!("unshaped replication reported nothing"),
        };
        clear_receivers(&cluster, &[1])?;
        let quinn = run_source(&cluster, 0, &sink, 1, cfg.size)?;
        say(format!("{round:>5}  {repl:>20.3}  {quinn:>19.3}"));
        replication_gbit.push(repl);
        quinn_gbit.push(quinn);
    }
    drop(sink.child);
    let tcp = cluster.net().tcp_stream(0, 1, 3.0)?;
    let replication_median = median(&replication_gbit);
    let quinn_median = median(&quinn_gbit);
    let report = UnshapedReport {
        mtu,
        tcp_gbit: tcp.received_bps / 1e9,
        tcp_retransmits: tcp.retransmits,
        ratio: replication_median / quinn_median,
        replication_gbit,
        quinn_gbit,
        replication_median,
        quinn_median,
    };
    say(format!(
        "MTU {mtu}: replication {:.3} Gbit/s, bare quinn {:.3} Gbit/s (ratio {:.0} %), plain TCP {:.2} Gbit/s ({} retransmits)",
        report.replication_median,
        report.quinn_median,
        report.ratio * 100.0,
        report.tcp_gbit,
        report.tcp_retransmits
    ));
    Ok(report)
}

fn evaluate(cfg: &BenchConfig, report: &BenchReport) -> Vec<Target> {
    let mut targets = Vec::new();
    if !report.one.is_empty() {
        let pcts: Vec<f64> = report.one.iter().map(|r| if r.error.is_none() { r.link_pct } else { 0.0 }).collect();
        let m = median(&pcts);
        targets.push(Target {
            target: "one transfer >= 90 % of the link rate".into(),
            met: m >= 90.0,
            detail: format!(
                "median {m:.1} % of {} Mbit/s (rounds: {}); TCP payload ceiling {:.1} %",
                cfg.rate_mbit,
                pcts.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(", "),
                cfg.tcp_payload_bps() / (f64::from(cfg.rate_mbit) * 1e6) * 100.0
            ),
        });
    }
    let max_n = cfg.max_n;
    let rows_at = |relay: bool| -> Vec<&ReceiverRow> {
        report.broadcast.iter().filter(|r| r.n == max_n && r.relay == Some(relay)).collect()
    };
    let on = rows_at(true);
    if !on.is_empty() {
        let worst = on.iter().map(|r| r.x_bound).fold(f64::NAN, f64::max);
        let ok = on.iter().all(|r| r.error.is_none() && r.digest_ok && r.x_bound <= 1.3);
        targets.push(Target {
            target: format!("broadcast to {max_n} hosts: every host within 1.3 x S/B"),
            met: ok,
            detail: format!(
                "slowest {:.3} s = {worst:.2} x S/B ({:.3} s); all digests equal: {}",
                worst * cfg.s_over_b(),
                cfg.s_over_b(),
                on.iter().all(|r| r.digest_ok)
            ),
        });
    }
    let slowest = |n: usize, relay: bool| {
        report.broadcast_rounds.iter().find(|r| r.n == n && r.relay == relay).map(|r| r.max_seconds)
    };
    if let (Some(one), Some(all)) = (slowest(1, false), slowest(max_n, false)) {
        let growth = all / one;
        targets.push(Target {
            target: format!("relay off grows ~N x (N = {max_n})"),
            met: growth >= 0.75 * max_n as f64,
            detail: format!("slowest {all:.3} s at N={max_n} vs {one:.3} s at N=1: {growth:.2} x"),
        });
    }
    let two: Vec<&LocalRow> = report.local.iter().filter(|r| r.k == 2).collect();
    if !two.is_empty() {
        let maps: Vec<f64> = two.iter().map(|r| r.map_seconds).collect();
        let touches: Vec<f64> = two.iter().map(|r| r.touch_seconds).collect();
        let worst = maps.iter().copied().fold(0.0, f64::max);
        targets.push(Target {
            target: "two receivers on the source's host done in milliseconds".into(),
            met: worst < 0.010 && two.iter().all(|r| r.digest_ok),
            detail: format!(
                "get -> readable mapping: median {:.3} ms, worst {:.3} ms; every page touched: median {:.1} ms",
                median(&maps) * 1e3,
                worst * 1e3,
                median(&touches) * 1e3
            ),
        });
    }
    for u in &report.unshaped {
        targets.push(Target {
            target: format!("unshaped (MTU {}): replication >= 80 % of a bare quinn stream", u.mtu),
            met: u.ratio >= 0.8,
            detail: format!(
                "replication {:.3} Gbit/s, bare quinn {:.3} Gbit/s ({:.0} %), plain TCP {:.2} Gbit/s",
                u.replication_median,
                u.quinn_median,
                u.ratio * 100.0,
                u.tcp_gbit
            ),
        });
    }
    targets
}

// ---------------------------------------------------------------------------------------
// The bare quinn stream (hidden subcommands of cluster-bench, run inside the hosts)
// ---------------------------------------------------------------------------------------

fn identity(cert_dir: &Path, name: &str) -> anyhow::Result<Identity> {
    Identity::load(&CertPaths::in_dir(cert_dir, name)).with_context(|| format!("loading {name}'s certificate"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // The daemons' runtime: multi-threaded, one worker per core.
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Accepts connections on `listen` (TLS as a daemon's peer server, `bulk_transport`) and
/// reads every bidirectional stream to its end, answering the byte count (8 bytes LE).
/// Prints `listening ADDR` once ready; runs until killed.
pub fn quinn_sink(listen: SocketAddr, cert_dir: &Path, name: &str) -> anyhow::Result<()> {
    let id = identity(cert_dir, name)?;
    let server = id.quic_server(QUINN_ALPN, store_client::tls::bulk_transport())?;
    runtime()?.block_on(async move {
        let endpoint = quinn::Endpoint::server(server, listen).with_context(|| format!("binding {listen}"))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {}", endpoint.local_addr()?)?;
            out.flush()?;
        }
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0u64;
                        loop {
                            match recv.read_chunk(usize::MAX, true).await {
                                Ok(Some(chunk)) => total += chunk.bytes.len() as u64,
                                Ok(None) => break,
                                Err(_) => return,
                            }
                        }
                        if send.write_all(&total.to_le_bytes()).await.is_ok() {
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    });
                }
            });
        }
        anyhow::Ok(())
    })
}

/// Sends `bytes` on one stream to a [`quinn_sink`] at `to` (TLS as a daemon's peer client,
/// `bulk_transport`), written in [`QUINN_SLICE`] pieces like the daemons' chunk server;
/// the time runs from opening the stream to the sink's count.
pub fn quinn_source(
    to: SocketAddr,
    server_name: &str,
    cert_dir: &Path,
    name: &str,
    bytes: u64,
) -> anyhow::Result<QuinnResult> {
    let id = identity(cert_dir, name)?;
    let client = id.quic_client(QUINN_ALPN, store_client::tls::bulk_transport())?;
    let buffer = payload(4 << 20, 7);
    let limit = Duration::from_secs(110);
    runtime()?.block_on(async move {
        let bind = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let endpoint = quinn::Endpoint::client(bind).context("binding the client endpoint")?;
        let work = async {
            let conn = endpoint.connect_with(client, to, server_name)?.await.context("connecting to the sink")?;
            let start = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut left = bytes;
            while left > 0 {
                for piece in buffer.chunks(QUINN_SLICE) {
                    let n = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    send.write_all(&piece[..n]).await?;
                    left -= n as u64;
                    if left == 0 {
                        break;
                    }
                }
            }
            send.finish()?;
            let answer = recv.read_to_end(8).await.context("reading the sink's count")?;
            let seconds = start.elapsed().as_secs_f64();
            let count = <[u8; 8]>::try_from(answer.as_slice()).map(u64::from_le_bytes).unwrap_or(0);
            conn.close(quinn::VarInt::from_u32(0), b"done");
            anyhow::Ok(QuinnResult { bytes: count, seconds })
        };
        let result =
            tokio::time::timeout(limit, work).await.map_err(|_| anyhow::anyhow!("timed out after {limit:?}"))?;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        result
    })
}
