//! Soak of the local store (issue 13 item 7): many concurrent local clients mixing put,
//! create+fill+seal, get, delete, stat and list against one real `store-daemon` process,
//! while other client processes are SIGKILLed at random moments mid-operation. At the end
//! nothing may be left behind.
//!
//! What is checked:
//! - every byte a get maps hashes (BLAKE3) to the digest its *writer* computed over what it
//!   wrote (kept in a map by object id, never taken from the daemon's stat), and the
//!   daemon's root digest for the object equals it too; a guard held for a while (across
//!   deletes and evictions of its object) is hashed again before it is dropped;
//! - any error other than the expected outcomes of a race (`NotFound` after a concurrent
//!   delete, `AlreadyExists`, `Pending`, `StoreFull`, `Timeout` of a get with a timeout) is a
//!   failure;
//! - the killed processes (the test or bench binary re-executed as a "victim", see
//!   [`victim_from_env`]) create, fill and seal, put, get and hold, wait in a get, delete;
//!   each one that exits by itself (an error, a digest mismatch, a panic) is a failure;
//! - after the run every object is deleted; within [`SoakConfig::settle`] the daemon's
//!   leases, objects, used bytes and client connections (its Prometheus gauges, and its
//!   own listing) must be back to zero / the baseline, its descriptor count back to the
//!   baseline and its RSS within [`SoakConfig::rss_slack`] of the baseline; the daemon must
//!   still run and a final put/get round trip must verify.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::{ErrorCode, ObjectState, StoreClient};

use store_tests::DaemonProcess;
use store_tests::rng::Rng;

mod config;
mod report;
mod tools;
mod victim;
mod worker;

use config::MIB;
pub use config::{
    SoakConfig, VICTIM_MAX_SIZE_ENV, VICTIM_NAMES_ENV, VICTIM_SEED_ENV, VICTIM_SOCKET_ENV, VictimCommand,
};
pub use report::{DaemonSample, SoakReport, VictimStats};
use tools::{Ctx, Expected, Failures, content, digest, fd_count, free_port, gauge, proc_status, scrape};
use victim::run_victims;
pub use victim::victim_from_env;
use worker::{Tally, Worker};

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// Everything the daemon looks like now, seen through `ctl` and the metrics endpoint.
fn sample(pid: u32, ctl: &StoreClient, metrics: SocketAddr) -> anyhow::Result<DaemonSample> {
    let (rss_kib, rss_anon_kib, rss_shmem_kib, threads) = proc_status(pid).context("the daemon is gone")?;
    let text = scrape(metrics)?;
    let list = ctl.list().context("listing")?;
    Ok(DaemonSample {
        rss_kib,
        rss_anon_kib,
        rss_shmem_kib,
        threads,
        fds: fd_count(pid),
        leases: gauge(&text, "store_leases")?,
        listed_leases: list.iter().map(|o| u64::from(o.leases)).sum(),
        objects: gauge(&text, "store_objects")?,
        listed: list.len() as u64,
        used_bytes: gauge(&text, "store_used_bytes")?,
        client_connections: gauge(&text, "store_client_connections")?,
    })
}

fn settled(s: &DaemonSample, baseline: &DaemonSample, slack_kib: u64) -> bool {
    s.leases == 0
        && s.listed_leases == 0
        && s.objects == 0
        && s.listed == 0
        && s.used_bytes == 0
        && s.client_connections == baseline.client_connections
        && s.fds == baseline.fds
        && s.rss_kib <= baseline.rss_kib + slack_kib
}

/// Peaks seen by the monitor.
#[derive(Debug, Default)]
struct Peaks {
    rss_kib: u64,
    fds: u64,
    leases: i64,
    objects: i64,
}

/// Samples the daemon every half second; reports progress; stops the run if it died.
fn monitor(
    ctx: &Ctx,
    pid: u32,
    metrics: SocketAddr,
    start: Instant,
    every: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Peaks {
    let mut peaks = Peaks::default();
    let mut next_report = start + every;
    let mut failures_said = 0;
    let mut known_said = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        // Failures as they happen, not only in the report at the end.
        let kept = ctx.failures.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for f in kept.iter().skip(failures_said) {
            say(&format!("{:>5.0} s: FAILURE {f}", start.elapsed().as_secs_f64()));
        }
        failures_said = kept.len();
        let known = ctx.known.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for f in known.iter().skip(known_said) {
            say(&format!("{:>5.0} s: KNOWN ISSUE {f}", start.elapsed().as_secs_f64()));
        }
        known_said = known.len();
        let Some((rss, _, _, _)) = proc_status(pid) else {
            ctx.failures.add("the daemon process died during the run".into());
            ctx.stop.store(true, Ordering::Relaxed);
            break;
        };
        let fds = fd_count(pid);
        peaks.rss_kib = peaks.rss_kib.max(rss);
        peaks.fds = peaks.fds.max(fds);
        let (mut leases, mut objects) = (-1, -1);
        if let Ok(text) = scrape(metrics) {
            leases = gauge(&text, "store_leases").unwrap_or(-1);
            objects = gauge(&text, "store_objects").unwrap_or(-1);
            peaks.leases = peaks.leases.max(leases);
            peaks.objects = peaks.objects.max(objects);
        }
        if Instant::now() >= next_report {
            next_report += every;
            say(&format!(
                "{:>5.0} s: {} ops, {} digest checks, {} failures; daemon RSS {} MiB, {fds} fds, {leases} leases, {objects} objects",
                start.elapsed().as_secs_f64(),
                ctx.ops.load(Ordering::Relaxed),
                ctx.digest_checks.load(Ordering::Relaxed),
                ctx.failures.count.load(Ordering::Relaxed),
                rss / 1024,
            ));
        }
    }
    peaks
}

/// Deletes every object left, until the daemon is back to the baseline or `limit` passed;
/// returns the last sample.
fn clean_up(
    pid: u32,
    ctl: &StoreClient,
    metrics: SocketAddr,
    baseline: &DaemonSample,
    config: &SoakConfig,
) -> anyhow::Result<DaemonSample> {
    let start = Instant::now();
    loop {
        for info in ctl.list()? {
            if info.state == ObjectState::Sealed {
                match ctl.delete(&info.name) {
                    Ok(()) => {}
                    Err(e) if matches!(e.code(), Some(ErrorCode::NotFound | ErrorCode::Pending)) => {}
                    Err(e) => return Err(e).with_context(|| format!("deleting {}", info.name)),
                }
            }
        }
        let s = sample(pid, ctl, metrics)?;
        if settled(&s, baseline, config.rss_slack / 1024) || start.elapsed() > config.settle {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A put and a get of 1 MiB by a fresh client, verified byte for byte.
fn round_trip(daemon: &DaemonProcess, seed: u64) -> anyhow::Result<()> {
    let client = daemon.client()?;
    let data = content(MIB, seed);
    let name = "soak/final-round-trip";
    let info = client.put(name, &data)?;
    if info.digest.map(|d| d.0) != Some(digest(&data)) {
        bail!("put answered root {:?}", info.digest);
    }
    let guard = client.get(name, Duration::from_secs(5))?;
    if guard[..] != data[..] {
        bail!("the bytes read back differ from the bytes put");
    }
    drop(guard);
    client.delete(name)?;
    Ok(())
}

/// Runs the soak: starts a daemon, the workers, the victims and a monitor, then cleans up
/// and compares with the baseline. `say` gets progress lines.
pub fn run(config: &SoakConfig, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<SoakReport> {
    let port = free_port()?;
    let metrics: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let mut daemon = DaemonProcess::start(&config.capacity.to_string(), &["--metrics-addr", &metrics.to_string()])?;
    let pid = daemon.pid();
    let ctl = daemon.client()?;
    // One scrape first, so that whatever the first one sets up is in the baseline too.
    scrape(metrics).context("the daemon's metrics endpoint")?;
    std::thread::sleep(Duration::from_millis(200));
    let baseline = sample(pid, &ctl, metrics)?;
    say(&format!(
        "daemon {pid}: baseline RSS {} KiB, {} fds, {} leases, {} objects; {} clients for {:?}, seed {}",
        baseline.rss_kib, baseline.fds, baseline.leases, baseline.objects, config.clients, config.duration, config.seed
    ));

    let ctx = Ctx {
        socket: daemon.socket().to_owned(),
        names: config.names.max(1),
        max_size: config.max_size,
        stop: AtomicBool::new(false),
        expected: Expected::default(),
        failures: Failures::default(),
        known: Failures::default(),
        tolerate_transient_busy: config.tolerate_transient_busy,
        ops: AtomicU64::new(0),
        digest_checks: AtomicU64::new(0),
    };
    let mut clients = Vec::with_capacity(config.clients);
    for _ in 0..config.clients {
        clients.push(StoreClient::connect(&ctx.socket)?);
    }
    let start = Instant::now();
    let (tally, victims, peaks, seconds) = std::thread::scope(|s| {
        let ctx = &ctx;
        let workers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(index, client)| {
                let rng = Rng::new(config.seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                let w = Worker { ctx, index, rng, client, held: Vec::new(), tally: Tally::default() };
                s.spawn(move || w.run())
            })
            .collect();
        let spawner = s.spawn(|| run_victims(ctx, config));
        let watcher = s.spawn(|| monitor(ctx, pid, metrics, start, config.progress_every, say));
        while start.elapsed() < config.duration && !ctx.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        ctx.stop.store(true, Ordering::Relaxed);
        let seconds = start.elapsed().as_secs_f64();
        let mut tally = Tally::default();
        for w in workers {
            match w.join() {
                Ok(t) => tally.merge(t),
                Err(_) => ctx.failures.add("a worker thread panicked".into()),
            }
        }
        let victims = spawner.join().unwrap_or_else(|_| {
            ctx.failures.add("the victim spawner panicked".into());
            VictimStats::default()
        });
        let peaks = watcher.join().unwrap_or_default();
        (tally, victims, peaks, seconds)
    });
    say(&format!("run over after {seconds:.1} s; deleting everything and waiting for the daemon to settle"));

    let settle_start = Instant::now();
    let end = clean_up(pid, &ctl, metrics, &baseline, config)?;
    let settle_seconds = settle_start.elapsed().as_secs_f64();
    let final_round_trip = match round_trip(&daemon, config.seed) {
        Ok(()) => true,
        Err(e) => {
            ctx.failures.add(format!("final round trip: {e:#}"));
            false
        }
    };
    let daemon_alive = daemon.is_running();
    drop(ctl);
    let failures = ctx.failures.kept.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut report = SoakReport {
        seed: config.seed,
        clients: config.clients,
        capacity: config.capacity,
        names: config.names,
        max_size: config.max_size,
        seconds,
        ops: tally.ops.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        outcomes: tally.outcomes,
        digest_checks: tally.digest_checks,
        root_checks: tally.root_checks,
        held_rechecks: tally.held_rechecks,
        bytes_written: tally.bytes_written,
        bytes_verified: tally.bytes_verified,
        victims,
        peak_rss_kib: peaks.rss_kib.max(end.rss_kib),
        peak_fds: peaks.fds.max(end.fds),
        peak_leases: peaks.leases,
        peak_objects: peaks.objects,
        baseline,
        end,
        rss_slack_kib: config.rss_slack / 1024,
        settle_seconds,
        daemon_alive,
        final_round_trip,
        failure_count: ctx.failures.count.load(Ordering::Relaxed),
        failures,
        transient_busy_tolerated: ctx.known.count.load(Ordering::Relaxed),
        known_issues: ctx.known.kept.into_inner().unwrap_or_else(|p| p.into_inner()),
        violations: Vec::new(),
    };
    report.check_invariants();
    Ok(report)
}
