//! The cluster bench behind `cluster-bench`: the object-store cases of the experiment that
//! motivated the project, on emulated hosts (network namespaces with tbf-shaped links, see
//! [`store_tests::netns`]) running real scheduler and daemon processes ([`store_tests::cluster`]).
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
//! bench generated, never a daemon's reported digest ([`store_tests::verify`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{LinkSpec, NsChild, run_checked};
use store_tests::payload;
use store_tests::verify;
use store_tests::workspace_bin;

pub mod s3;

mod config;
mod quinn;
mod report;

use config::capacity_for;
pub use config::{BenchConfig, Case, Machine, OBJECT, QUINN_ALPN, QUINN_PORT, QUINN_SLICE, Target, median};
pub use quinn::{QuinnResult, quinn_sink, quinn_source};
pub use report::{BenchReport, Bounds, BroadcastRound, LocalRow, ReceiverRow, UnshapedReport};
use report::{RECEIVER_HEADER, receiver_line};

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
