//! One round of the chaos: the broadcast, the fault injected meanwhile, the receivers' pulls
//! and what each saw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::{ClientError, ErrorCode, ObjectState, StoreClient};

use super::config::{CORRUPT_LOG_LINE, ChaosConfig, FaultKind, KEPT_FAILURES, MIN_ATTEMPT, RETRY_PAUSE};
use super::report::{ChaosReport, FaultRecord, PullRecord, RoundReport};
use store_tests::cluster::{TestCluster, node_id};
use store_tests::rng::Rng;
use store_tests::verify::{blake3_hex, held_blake3, mapped_blake3};

pub(super) struct RunState {
    pub(super) rng: Rng,
    /// Fault kinds still to come in the current cycle.
    pub(super) cycle: Vec<FaultKind>,
    pub(super) report: ChaosReport,
    pub(super) ok_times: Vec<f64>,
    pub(super) log_dir: PathBuf,
    /// "corrupt chunk rejected" lines counted so far.
    pub(super) corrupt_seen: u64,
}

/// A fault to inject during the pulls.
#[derive(Clone, Debug)]
pub(super) struct PlannedFault {
    pub(super) kind: FaultKind,
    pub(super) host: usize,
    /// Pause before it, after the previous fault (or the start of the gets).
    pub(super) delay: Duration,
    pub(super) outage: Duration,
}

pub(super) enum Event {
    Attempt { host: usize, record: PullRecord, ok_seconds: Option<f64> },
    ReceiverDone { host: usize, got_copy: bool },
    ConnectRefused,
    Restarted(usize),
    Fault(FaultRecord),
    FaultsDone,
}

/// What a receiver thread is doing, for the watchdog: when its get began and its deadline.
#[derive(Default)]
pub(super) struct AttemptClock(pub(super) Mutex<Option<(Instant, Duration)>>);

impl AttemptClock {
    pub(super) fn set(&self, value: Option<(Instant, Duration)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    pub(super) fn get(&self) -> Option<(Instant, Duration)> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct Receiver {
    pub(super) clock: Arc<AttemptClock>,
    pub(super) finished: bool,
    pub(super) abandoned: bool,
}

/// Everything a receiver thread needs.
#[derive(Clone)]
pub(super) struct PullJob {
    pub(super) round: u64,
    pub(super) host: usize,
    pub(super) socket: PathBuf,
    pub(super) name: String,
    pub(super) digest: String,
    pub(super) size: usize,
    pub(super) gets_start: Instant,
    pub(super) window_end: Instant,
    pub(super) get_timeout: Duration,
    pub(super) grace: Duration,
}

pub(super) fn next_kind(state: &mut RunState, enabled: &[FaultKind]) -> FaultKind {
    if state.cycle.is_empty() {
        let mut kinds = enabled.to_vec();
        // Fisher-Yates.
        for i in (1..kinds.len()).rev() {
            let j = state.rng.below(i as u64 + 1) as usize;
            kinds.swap(i, j);
        }
        state.cycle = kinds;
    }
    state.cycle.pop().unwrap_or(FaultKind::DaemonKill)
}

pub(super) fn pick_host(rng: &mut Rng, hosts: usize, exclude: &[usize]) -> usize {
    let candidates: Vec<usize> = (0..hosts).filter(|h| !exclude.contains(h)).collect();
    candidates.get(rng.below(candidates.len() as u64) as usize).copied().unwrap_or(0)
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(super) fn run_round(
    cluster: &mut TestCluster,
    config: &ChaosConfig,
    state: &mut RunState,
    round: u64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<String> {
    let round_start = Instant::now();
    let n = cluster.len();
    let rng = &mut state.rng;
    let source = rng.below(n as u64) as usize;
    let mut kinds = vec![];
    let first = next_kind(state, &config.faults);
    kinds.push(first);
    if config.faults.len() > 1 && state.rng.percent(config.extra_fault_percent) {
        // The next kind of the cycle too, so that every kind comes up within `kinds` rounds.
        for _ in 0..config.faults.len() {
            let next = next_kind(state, &config.faults);
            if next != first {
                kinds.push(next);
                break;
            }
        }
    }
    let rng = &mut state.rng;
    let corrupt_host = kinds.contains(&FaultKind::CorruptChunks).then(|| pick_host(rng, n, &[source]));
    let mut planned = Vec::new();
    for &kind in &kinds {
        let (host, outage) = match kind {
            FaultKind::CorruptChunks => continue,
            FaultKind::DaemonKill => {
                let exclude: Vec<usize> = std::iter::once(source).chain(corrupt_host).collect();
                (pick_host(rng, n, &exclude), rng.millis(200, 2000))
            }
            FaultKind::LinkDown => (rng.below(n as u64) as usize, rng.millis(500, 3000)),
            FaultKind::SchedulerRestart => (0, rng.millis(200, 1500)),
        };
        planned.push(PlannedFault { kind, host, delay: rng.millis(300, 3000), outage });
    }
    let content_seed = rng.next_u64();
    let name = format!("chaos/{:x}/round-{round}", config.seed);
    let sockets: Vec<PathBuf> = (0..n).map(|i| cluster.socket(i)).collect();
    let mut fault_names: Vec<String> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let mut round_report = RoundReport {
        round,
        source: node_id(source),
        faults: Vec::new(),
        seconds: 0.0,
        put_seconds: 0.0,
        pulls_seconds: 0.0,
        recovery_seconds: 0.0,
        verify_seconds: 0.0,
        attempts: 0,
        ok: 0,
        failed: 0,
        past_deadline: 0,
        receivers_with_copy: 0,
        receivers_without: 0,
        copies_verified: 0,
        wrong_copies: 0,
        max_pull_seconds: 0.0,
        corrupt_chunks_rejected: 0,
    };

    // The corrupting daemon, for this round.
    if let Some(c) = corrupt_host {
        let restarted = cluster.restart_daemon(c, &["--fault-corrupt-chunks"]);
        let error = restarted.as_ref().err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            violations
                .push(format!("round {round}: restarting {} with --fault-corrupt-chunks failed: {e}", node_id(c)));
        }
        fault_names.push(format!("corrupt@{c}"));
        state.report.fault_detail.push(FaultRecord {
            round,
            kind: FaultKind::CorruptChunks,
            host: node_id(c),
            at_seconds: -secs(round_start.elapsed()),
            outage_seconds: 0.0,
            reregistered_seconds: None,
            error,
        });
        *state.report.faults.entry(FaultKind::CorruptChunks.name().into()).or_default() += 1;
    }

    // The object.
    let data = store_tests::payload(config.object_size, content_seed);
    let digest = blake3_hex(&data);
    let put_started = Instant::now();
    let put = cluster.client(source).and_then(|c| Ok(c.put(&name, &data)?));
    drop(data);
    round_report.put_seconds = secs(put_started.elapsed());
    if let Err(e) = put {
        violations.push(format!("round {round}: the source {} could not put {name}: {e:#}", node_id(source)));
    }

    let (tx, rx) = mpsc::channel::<Event>();
    let job = |host: usize, gets_start: Instant| PullJob {
        round,
        host,
        socket: sockets[host].clone(),
        name: name.clone(),
        digest: digest.clone(),
        size: config.object_size,
        gets_start,
        window_end: gets_start + config.pull_window,
        get_timeout: config.get_timeout,
        grace: config.deadline_grace,
    };
    let mut receivers: HashMap<usize, Receiver> = HashMap::new();
    let spawn = |receivers: &mut HashMap<usize, Receiver>, job: PullJob| {
        let clock = Arc::new(AttemptClock::default());
        let host = job.host;
        let (tx, thread_clock) = (tx.clone(), clock.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("chaos-get-{}", node_id(host)))
            .spawn(move || receive(&job, &thread_clock, &tx));
        if let Err(e) = spawned {
            return Err(anyhow::Error::from(e).context("spawning a receiver thread"));
        }
        receivers.insert(host, Receiver { clock, finished: false, abandoned: false });
        Ok(())
    };

    // The corrupting host becomes a complete holder first.
    let gets_start = Instant::now();
    if let Some(c) = corrupt_host {
        spawn(&mut receivers, job(c, gets_start))?;
    }
    let mut records: Vec<(usize, PullRecord, Option<f64>)> = Vec::new();
    let mut finals: Vec<(usize, bool)> = Vec::new();
    let mut connect_refused = 0u64;
    let mut fault_records: Vec<FaultRecord> = Vec::new();
    let mut hung: Vec<usize> = Vec::new();
    let mut handle = |event: Event,
                      receivers: &mut HashMap<usize, Receiver>,
                      restarted: &mut Vec<usize>,
                      faults_done: &mut bool| match event {
        Event::Attempt { host, record, ok_seconds } => records.push((host, record, ok_seconds)),
        Event::ReceiverDone { host, got_copy } => {
            finals.push((host, got_copy));
            if let Some(r) = receivers.get_mut(&host) {
                r.finished = true;
            }
        }
        Event::ConnectRefused => connect_refused += 1,
        Event::Restarted(host) => restarted.push(host),
        Event::Fault(record) => fault_records.push(record),
        Event::FaultsDone => *faults_done = true,
    };
    let deadline = config.pull_deadline();
    let mut watchdog = |receivers: &mut HashMap<usize, Receiver>, violations: &mut Vec<String>| {
        for (&host, r) in receivers.iter_mut() {
            if r.finished || r.abandoned {
                continue;
            }
            if let Some((began, limit)) = r.clock.get()
                && began.elapsed() > limit + Duration::from_secs(1)
            {
                r.abandoned = true;
                hung.push(host);
                violations.push(format!(
                    "round {round}: a get of {name} on {} began {:.1} s into the round and had not returned {:.1} s later (deadline {:.0} s): abandoned",
                    node_id(host),
                    secs(began.duration_since(round_start)),
                    secs(began.elapsed()),
                    secs(limit)
                ));
            }
        }
    };
    if let Some(c) = corrupt_host {
        // Until the corrupting host has its copy (or gave up).
        let mut ignored = (Vec::new(), false);
        while receivers.get(&c).is_some_and(|r| !r.finished && !r.abandoned) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(event) => handle(event, &mut receivers, &mut ignored.0, &mut ignored.1),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            watchdog(&mut receivers, &mut violations);
        }
    }

    // Everyone else at once, with the faults.
    let gets_start = Instant::now();
    for host in (0..n).filter(|h| *h != source && Some(*h) != corrupt_host) {
        spawn(&mut receivers, job(host, gets_start))?;
    }
    let fault_tx = tx.clone();
    let recovery_limit = config.recovery_limit;
    let verify_link = config.rate_mbit;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let faults = scope.spawn(|| {
            inject(cluster, &planned, round, source, gets_start, recovery_limit, verify_link, &fault_tx);
        });
        let mut restarted = Vec::new();
        let mut faults_done = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(event) => handle(event, &mut receivers, &mut restarted, &mut faults_done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // A daemon restarted after its receiver finished pulls again (the restart lost
            // its copy); one still trying reconnects by itself.
            for host in restarted.drain(..) {
                let done = receivers.get(&host).is_none_or(|r| r.finished);
                if host != source && done && Instant::now() + MIN_ATTEMPT < gets_start + config.pull_window {
                    spawn(&mut receivers, job(host, gets_start))?;
                }
            }
            watchdog(&mut receivers, &mut violations);
            if faults_done && receivers.values().all(|r| r.finished || r.abandoned) {
                break;
            }
        }
        if faults.join().is_err() {
            violations.push(format!("round {round}: the fault thread panicked"));
        }
        Ok(())
    })?;
    round_report.pulls_seconds = secs(gets_start.elapsed());

    // Recovery: daemons with an abandoned get, daemons that exited and a restart the fault
    // thread could not do start afresh; then every daemon must be registered again. (The
    // corrupting daemon keeps its copy until it is checked.)
    let recovery_started = Instant::now();
    let mut restart: Vec<usize> = hung.clone();
    for exited in cluster.exited_by_themselves() {
        violations.push(format!("round {round}: {exited}"));
    }
    restart.extend((0..n).filter(|i| !cluster.daemon_running(*i)));
    if !cluster.scheduler_running()
        && let Err(e) = cluster.start_scheduler()
    {
        violations.push(format!("round {round}: starting the scheduler again failed: {e:#}"));
    }
    restart.sort_unstable();
    restart.dedup();
    for host in restart {
        if let Err(e) = cluster.restart_daemon(host, &[]) {
            violations.push(format!("round {round}: restarting {} failed: {e:#}", node_id(host)));
        }
    }
    if !registered_within(cluster, source, recovery_limit) {
        let nodes = cluster.client(source).and_then(|c| Ok(c.nodes()?));
        let listed = match nodes {
            Ok(nodes) => nodes.iter().map(|s| s.info.id.clone()).collect::<Vec<_>>().join(", "),
            Err(e) => format!("(nodes failed: {e:#})"),
        };
        violations.push(format!(
            "round {round}: not every daemon was registered {:.0} s after the faults; the scheduler lists: {listed}",
            secs(recovery_limit)
        ));
    }
    round_report.recovery_seconds = secs(recovery_started.elapsed());

    // Every sealed copy, through get.
    let verify_started = Instant::now();
    for host in 0..n {
        let client = match cluster.client(host) {
            Ok(c) => c,
            Err(e) => {
                violations.push(format!("round {round}: cannot connect to {} to check its copy: {e:#}", node_id(host)));
                continue;
            }
        };
        match client.stat(&name) {
            Ok(info) if info.state == ObjectState::Sealed => match held_blake3(&client, &name) {
                Ok(got) if got == digest => round_report.copies_verified += 1,
                Ok(got) => {
                    round_report.wrong_copies += 1;
                    violations.push(format!(
                        "round {round}: the copy of {name} on {} hashes to {got}, the generated bytes to {digest}",
                        node_id(host)
                    ));
                }
                Err(e) => violations.push(format!(
                    "round {round}: {} holds {name} sealed but it cannot be mapped: {e:#}",
                    node_id(host)
                )),
            },
            Ok(_) => state.report.unsealed_at_check += 1,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
            Err(e) => violations.push(format!("round {round}: stat of {name} on {} failed: {e}", node_id(host))),
        }
    }
    round_report.verify_seconds = secs(verify_started.elapsed());
    for host in 0..n {
        if let Ok(client) = cluster.client(host) {
            match client.delete(&name) {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                Err(e) => progress(&format!("round {round}: deleting {name} on {}: {e}", node_id(host))),
            }
        }
    }
    // The corrupting daemon serves right again from the next round on.
    if let Some(c) = corrupt_host
        && let Err(e) = cluster.restart_daemon(c, &[])
    {
        violations.push(format!("round {round}: restarting {} without the fault failed: {e:#}", node_id(c)));
    }

    // The round's figures.
    let corrupt_total = count_in_logs(&state.log_dir, CORRUPT_LOG_LINE)?;
    round_report.corrupt_chunks_rejected = corrupt_total.saturating_sub(state.corrupt_seen);
    state.corrupt_seen = corrupt_total;
    let report = &mut state.report;
    report.corrupt_chunks_rejected = corrupt_total;
    report.pulls.connect_refused += connect_refused;
    for record in fault_records {
        fault_names.push(format!(
            "{}@{}",
            match record.kind {
                FaultKind::DaemonKill => "kill",
                FaultKind::CorruptChunks => "corrupt",
                FaultKind::LinkDown => "link",
                FaultKind::SchedulerRestart => "sched",
            },
            record.host.trim_start_matches("node-")
        ));
        if let Some(e) = &record.error {
            violations.push(format!("round {round}: injecting {} on {} failed: {e}", record.kind.name(), record.host));
        }
        if let Some(s) = record.reregistered_seconds {
            report.max_reregister_seconds = report.max_reregister_seconds.max(s);
        }
        *report.faults.entry(record.kind.name().into()).or_default() += 1;
        report.fault_detail.push(record);
    }
    for (host, record, ok_seconds) in records {
        round_report.attempts += 1;
        report.pulls.attempts += 1;
        round_report.max_pull_seconds = round_report.max_pull_seconds.max(record.seconds);
        report.max_pull_seconds = report.max_pull_seconds.max(record.seconds);
        if record.past_deadline {
            round_report.past_deadline += 1;
            report.pulls.past_deadline += 1;
            violations.push(format!(
                "round {round}: a get on {} took {:.1} s (timeout {:.0} s, deadline {:.0} s): {}",
                node_id(host),
                record.seconds,
                record.timeout_seconds,
                secs(deadline),
                record.outcome
            ));
        }
        if record.wrong_bytes {
            report.pulls.wrong_bytes += 1;
            violations.push(format!("round {round}: a get on {} returned wrong bytes", node_id(host)));
        }
        if let Some(s) = ok_seconds {
            round_report.ok += 1;
            report.pulls.ok += 1;
            state.ok_times.push(s);
        } else {
            round_report.failed += 1;
            report.pulls.failed += 1;
            *report.errors.entry(record.outcome.clone()).or_default() += 1;
            if let Some(message) = &record.message {
                report.error_examples.entry(record.outcome.clone()).or_insert_with(|| message.clone());
            }
        }
        if (ok_seconds.is_none() || record.past_deadline) && report.failed_pulls.len() < KEPT_FAILURES {
            report.failed_pulls.push(record);
        }
    }
    // Hung gets never reported an attempt: they count as past deadline too.
    round_report.past_deadline += hung.len() as u64;
    report.pulls.past_deadline += hung.len() as u64;
    for (_, got_copy) in finals {
        if got_copy {
            round_report.receivers_with_copy += 1;
        } else {
            round_report.receivers_without += 1;
        }
    }
    round_report.receivers_without += hung.len() as u64;
    report.receivers_with_copy += round_report.receivers_with_copy;
    report.receivers_without += round_report.receivers_without;
    report.copies_verified += round_report.copies_verified;
    report.wrong_copies += round_report.wrong_copies;
    round_report.faults = fault_names;
    round_report.seconds = secs(round_start.elapsed());
    report.max_round_seconds = report.max_round_seconds.max(round_report.seconds);
    report.max_recovery_seconds = report.max_recovery_seconds.max(round_report.recovery_seconds);
    for v in &violations {
        progress(&format!("VIOLATION {v}"));
    }
    report.violations.extend(violations);
    let r = &round_report;
    let summary = format!(
        "round {round}: source {}, faults [{}], pulls {} ok / {} attempts ({} failed, {} past deadline), {} copies verified, {} wrong, {} corrupt chunks rejected, longest get {:.1} s, round {:.1} s",
        r.source,
        r.faults.join(" "),
        r.ok,
        r.attempts,
        r.failed,
        r.past_deadline,
        r.copies_verified,
        r.wrong_copies,
        r.corrupt_chunks_rejected,
        r.max_pull_seconds,
        r.seconds
    );
    report.per_round.push(round_report);
    Ok(summary)
}

/// The fault thread: injects `planned` one after another, reporting each.
#[allow(clippy::too_many_arguments)]
pub(super) fn inject(
    cluster: &mut TestCluster,
    planned: &[PlannedFault],
    round: u64,
    source: usize,
    gets_start: Instant,
    recovery_limit: Duration,
    shaped: Option<u32>,
    tx: &Sender<Event>,
) {
    for fault in planned {
        std::thread::sleep(fault.delay);
        let at = gets_start.elapsed();
        let mut reregistered = None;
        let result: anyhow::Result<()> = match fault.kind {
            FaultKind::DaemonKill => {
                cluster.kill_daemon(fault.host);
                std::thread::sleep(fault.outage);
                let restarted = cluster.restart_daemon(fault.host, &[]);
                if restarted.is_ok() {
                    let _ = tx.send(Event::Restarted(fault.host));
                }
                restarted
            }
            FaultKind::LinkDown => flap_link(cluster, fault.host, fault.outage, shaped),
            FaultKind::SchedulerRestart => {
                let restarted = cluster.restart_scheduler(fault.outage);
                let back = Instant::now();
                if restarted.is_ok() && registered_within(cluster, source, recovery_limit) {
                    reregistered = Some(secs(back.elapsed()));
                }
                restarted
            }
            FaultKind::CorruptChunks => Ok(()),
        };
        let record = FaultRecord {
            round,
            kind: fault.kind,
            host: if fault.kind == FaultKind::SchedulerRestart { "scheduler".into() } else { node_id(fault.host) },
            at_seconds: secs(at),
            outage_seconds: secs(fault.outage),
            reregistered_seconds: reregistered,
            error: result.err().map(|e| format!("{e:#}")),
        };
        let _ = tx.send(Event::Fault(record));
    }
    let _ = tx.send(Event::FaultsDone);
}

/// Takes `host`'s link down for `outage`, brings it up and checks its shaping is back.
pub(super) fn flap_link(
    cluster: &TestCluster,
    host: usize,
    outage: Duration,
    shaped: Option<u32>,
) -> anyhow::Result<()> {
    cluster.net().set_link_up(host, false)?;
    std::thread::sleep(outage);
    cluster.net().set_link_up(host, true)?;
    if let Some(rate) = shaped {
        let qdisc = cluster.net().root_qdisc(host)?;
        if !(qdisc.contains("tbf") && qdisc.contains(&format!("{rate}Mbit"))) {
            bail!("the link came back without its shaping: {}", qdisc.trim());
        }
    }
    Ok(())
}

/// Whether the scheduler lists every daemon (asked through `via`) within `limit`.
pub(super) fn registered_within(cluster: &TestCluster, via: usize, limit: Duration) -> bool {
    let n = cluster.len();
    let socket = cluster.socket(via);
    store_tests::wait_until(limit, || {
        StoreClient::connect(&socket).and_then(|c| c.nodes()).is_ok_and(|nodes| {
            (0..n).all(|i| {
                let id = node_id(i);
                nodes.iter().any(|s| s.info.id == id)
            })
        })
    })
}

/// A receiver: gets the object through its daemon until it has it or the window closes.
pub(super) fn receive(job: &PullJob, clock: &AttemptClock, tx: &Sender<Event>) {
    let host = job.host;
    loop {
        let left = job.window_end.saturating_duration_since(Instant::now());
        if left < MIN_ATTEMPT {
            let _ = tx.send(Event::ReceiverDone { host, got_copy: false });
            return;
        }
        let client = match StoreClient::connect(&job.socket) {
            Ok(client) => client,
            Err(_) => {
                let _ = tx.send(Event::ConnectRefused);
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
        };
        let timeout = job.get_timeout.min(left);
        let deadline = timeout + job.grace;
        let began = Instant::now();
        clock.set(Some((began, deadline)));
        let got = client.get(&job.name, timeout);
        let took = began.elapsed();
        clock.set(None);
        let (outcome, message, wrong, ok) = match &got {
            Ok(guard) => {
                let right = guard.len() == job.size && mapped_blake3(guard) == job.digest;
                ("ok".to_string(), None, !right, right)
            }
            Err(e) => (classify(e), Some(e.to_string()), false, false),
        };
        drop(got);
        let record = PullRecord {
            round: job.round,
            host: node_id(host),
            started_seconds: secs(began.duration_since(job.gets_start)),
            seconds: secs(took),
            timeout_seconds: secs(timeout),
            outcome,
            message,
            past_deadline: took > deadline,
            wrong_bytes: wrong,
        };
        let _ = tx.send(Event::Attempt { host, record, ok_seconds: ok.then(|| secs(took)) });
        if ok || wrong {
            let _ = tx.send(Event::ReceiverDone { host, got_copy: ok });
            return;
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The class of a failed get, for counting.
pub(super) fn classify(e: &ClientError) -> String {
    if let Some(code) = e.code() {
        return format!("{code:?}");
    }
    match e {
        ClientError::Io(_) => "connection lost".into(),
        ClientError::Connect { .. } => "connect refused".into(),
        ClientError::Protocol(_) => "protocol".into(),
        _ => "client error".into(),
    }
}

/// Lines containing `needle` in the `*.log` files of `dir`.
pub(super) fn count_in_logs(dir: &Path, needle: &str) -> anyhow::Result<u64> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            count += String::from_utf8_lossy(&text).lines().filter(|l| l.contains(needle)).count() as u64;
        }
    }
    Ok(count)
}
