//! The workload bench behind `workload-bench`: a hybrid HPC + cloud cluster running a batch
//! of tasks, placed naively or by the scheduler's data-aware placement, each with or without
//! prefetch, so that the two effects are measured apart.
//!
//! Hosts (network namespaces, [`store_tests::netns`]; real scheduler and daemons,
//! [`store_tests::cluster`]):
//! - `node-0`, `node-1`: "hpc" (label `site=hpc`), unshaped links. They hold the inputs,
//!   input `i` on `node-(i mod 2)`. `node-0` also runs the scheduler.
//! - `node-2`, `node-3`: "cloud" (label `site=cloud`), each behind its own link shaped to
//!   the case's rate in both directions (30, 100, 200 Mbit/s by default).
//!
//! Every host has the same number of task slots (`--resource cpu=SLOTS`, and as many worker
//! threads in the bench). A task reads one input through its host's daemon
//! (`StoreClient::get`, which pulls the object from the cluster first if the host lacks it,
//! or joins the pull a prefetch started; the worker touches every page) and then "computes"
//! for a fixed time. The compute is a sleep, not a spin: this machine has 2 cores for 4
//! hosts x SLOTS workers, their daemons and the shaping, so spinning would measure CPU
//! contention instead of placement; a sleep occupies the slot for exactly the task's time,
//! as a core-bound task would on a host of its own.
//!
//! Modes ([`Mode`]), each on a fresh cluster:
//! - `naive`: task `i` goes to host `i mod 4` (round-robin); its input is fetched when the
//!   task starts (the `get` pulls it).
//! - `naive+prefetch`: the same hosts, but the driver tells each chosen host at assignment
//!   time to start pulling the task's input, through the mechanism data-aware placement uses:
//!   a `place` request (through `node-0`'s daemon) with the host as `pinned` node and
//!   prefetch on. The host pulls its queue of inputs in order (two at a time) while it works
//!   through the tasks assigned before.
//! - `data-aware`: the driver asks the scheduler for each task in turn (`place` with the
//!   task's input and `task_seconds`, through `node-0`'s daemon) without prefetch, and
//!   queues the task on the chosen host; the input is fetched when the task starts.
//! - `data-aware+prefetch`: the same placement with prefetch: the chosen host starts
//!   pulling the input at once.
//!
//! Before each run, each cloud host pulls one warm-up object (in every mode): the scheduler
//! of a running cluster has seen transfers into its nodes before, and without one it would
//! assume its default bandwidth for the cloud hosts. The warm-up is not part of the makespan
//! nor of the bytes.
//!
//! Makespan: from the first placement decision (or round-robin assignment) to the end of
//! the last task; placement requests are inside it. Bytes over the shaped links: what the
//! cloud hosts' interfaces received and sent during the run (Ethernet frames, so protocol
//! overhead included).
//!
//! # Lower bounds
//!
//! Each run is printed beside a lower bound on its makespan ([`bound`]). Notation: `N`
//! tasks, `T` compute seconds per task, `k` slots per host, `S` bytes per input, `B` the
//! cloud links' nominal rate in bytes/s (`Mbit/s x 1e6 / 8`; the payload rate is lower, as
//! the shaping counts Ethernet frames), `s = S / B` the seconds one input takes over a cloud
//! link alone, `W(n) = ceil(n / k) x T` the seconds `n` tasks keep `k` slots busy.
//!
//! One host running `n` tasks:
//! - hpc host: `W(n)`. Its inputs are on the host or behind an unshaped link, counted as
//!   free.
//! - cloud host, with prefetch: `max over j = 1..n of (j x s + W(n - j + 1))`. All its
//!   inputs cross its link, so the `j`-th input to be complete is there no earlier than
//!   `j x s`, and the `n - j + 1` tasks whose inputs come at or after it start no earlier.
//!   `j = n` is the link bound `n x s + T`, `j = 1` the compute bound `s + W(n)`.
//! - cloud host, without prefetch: the above, and `ceil(n / k) x (s + T)`: a task holds
//!   its slot while its input comes (at least `s`, more when fetches share the link) and
//!   then while it computes: a slot cannot overlap its fetches with its compute.
//!
//! A placement's bound is its busiest host's. For the naive modes the placement is fixed
//! (host `h` runs the tasks `i` with `i mod 4 = h`, the hpc hosts holding all of theirs),
//! so the bound is that of this placement. For the data-aware modes it is the optimum over
//! placements: `min over c = 0..N of max(W(ceil((N - c) / 2)), cloud(ceil(c / 2)))`, with
//! `c` tasks in the cloud split evenly over the two cloud hosts and the rest over the two
//! hpc hosts (the best split for a given `c`, the bounds growing with `n`). No mode can do
//! better than the data-aware bound of the same prefetch setting, and with all 4 hosts busy
//! and no waiting `W(N / 4)` is the floor of all. The bounds use the nominal link rate and
//! leave out what the driver spends on placement requests (inside the makespan: about 1 ms
//! a task without prefetch, 7-30 ms with, as each then waits for the host to queue the
//! prefetch).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use store_client::StoreClient;
use store_client::wire::object::ErrorCode;
use store_client::wire::placement::PlaceSpec;

use crate::cluster_bench::Machine;
use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::LinkSpec;
use store_tests::payload;

/// Hosts 0 and 1 are hpc, 2 and 3 cloud.
pub const HPC_HOSTS: [usize; 2] = [0, 1];
pub const CLOUD_HOSTS: [usize; 2] = [2, 3];
const HOSTS: usize = 4;
/// How long one task's `get` may wait for its input.
const GET_TIMEOUT: Duration = Duration::from_secs(600);

/// How tasks are placed, and whether the chosen host starts pulling the input at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
pub enum Mode {
    /// Round-robin over all hosts, input fetched when the task starts.
    #[serde(rename = "naive")]
    #[value(name = "naive")]
    Naive,
    /// Round-robin over all hosts, the host told to prefetch the input at assignment.
    #[serde(rename = "naive+prefetch")]
    #[value(name = "naive+prefetch")]
    NaivePrefetch,
    /// The scheduler's placement, input fetched when the task starts.
    #[serde(rename = "data-aware")]
    #[value(name = "data-aware")]
    DataAware,
    /// The scheduler's placement, the chosen host prefetching the input at once.
    #[serde(rename = "data-aware+prefetch")]
    #[value(name = "data-aware+prefetch")]
    DataAwarePrefetch,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Naive, Mode::NaivePrefetch, Mode::DataAware, Mode::DataAwarePrefetch];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::NaivePrefetch => "naive+prefetch",
            Mode::DataAware => "data-aware",
            Mode::DataAwarePrefetch => "data-aware+prefetch",
        }
    }

    /// Whether the scheduler chooses the hosts (else round-robin).
    pub fn data_aware(self) -> bool {
        matches!(self, Mode::DataAware | Mode::DataAwarePrefetch)
    }

    pub fn prefetch(self) -> bool {
        matches!(self, Mode::NaivePrefetch | Mode::DataAwarePrefetch)
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    /// Rates of the cloud hosts' links, Mbit/s; one case each.
    pub rates_mbit: Vec<u32>,
    pub modes: Vec<Mode>,
    /// Number of inputs, and of tasks (one input each).
    pub tasks: usize,
    /// Size of each input, bytes.
    pub input_size: u64,
    /// Compute time of one task, seconds.
    pub task_seconds: f64,
    /// Tasks each host runs at once.
    pub slots: usize,
    /// Size of the warm-up object each cloud host pulls before a run, bytes.
    pub warmup_size: u64,
    pub mtu: u32,
    /// Log filter of the daemons and the scheduler.
    pub log: String,
}

impl WorkloadConfig {
    /// `W(n)`: seconds `n` tasks keep one host's slots busy.
    fn waves_seconds(&self, n: usize) -> f64 {
        n.div_ceil(self.slots.max(1)) as f64 * self.task_seconds
    }

    /// Makespan if only the hpc hosts worked (and never waited for data), seconds.
    pub fn hpc_only_seconds(&self) -> f64 {
        self.waves_seconds(self.tasks.div_ceil(HPC_HOSTS.len()))
    }

    /// Makespan if all four hosts worked and no task waited for data, seconds.
    pub fn all_hosts_seconds(&self) -> f64 {
        self.waves_seconds(self.tasks.div_ceil(HOSTS))
    }

    /// Lower bound on the finish of one host running `n` tasks whose inputs each take
    /// `s` seconds over its link alone (0 for an hpc host); see the module documentation.
    pub fn host_bound(&self, n: usize, s: f64, prefetch: bool) -> f64 {
        if n == 0 {
            return 0.0;
        }
        let mut bound = self.waves_seconds(n);
        if s > 0.0 {
            for j in 1..=n {
                bound = bound.max(j as f64 * s + self.waves_seconds(n - j + 1));
            }
            if !prefetch {
                bound = bound.max(n.div_ceil(self.slots.max(1)) as f64 * (s + self.task_seconds));
            }
        }
        bound
    }

    /// Seconds one input takes over a cloud link of `rate_mbit` alone (nominal rate).
    fn input_seconds(&self, rate_mbit: u32) -> f64 {
        self.input_size as f64 * 8.0 / (f64::from(rate_mbit.max(1)) * 1e6)
    }
}

/// A lower bound on a run's makespan, and the placement it assumes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bound {
    pub seconds: f64,
    /// Tasks on the cloud hosts in that placement.
    pub cloud_tasks: usize,
}

/// The lower bound of `mode` at `rate_mbit` (module documentation, "Lower bounds").
pub fn bound(cfg: &WorkloadConfig, rate_mbit: u32, mode: Mode) -> Bound {
    let s = cfg.input_seconds(rate_mbit);
    let n = cfg.tasks;
    if !mode.data_aware() {
        let on = |h: usize| (n + HOSTS - 1 - h) / HOSTS;
        let seconds = (0..HOSTS)
            .map(|h| cfg.host_bound(on(h), if CLOUD_HOSTS.contains(&h) { s } else { 0.0 }, mode.prefetch()))
            .fold(0.0, f64::max);
        return Bound { seconds, cloud_tasks: CLOUD_HOSTS.iter().map(|&h| on(h)).sum() };
    }
    (0..=n)
        .map(|c| {
            let hpc = cfg.host_bound((n - c).div_ceil(HPC_HOSTS.len()), 0.0, mode.prefetch());
            let cloud = cfg.host_bound(c.div_ceil(CLOUD_HOSTS.len()), s, mode.prefetch());
            Bound { seconds: hpc.max(cloud), cloud_tasks: c }
        })
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .unwrap_or(Bound { seconds: 0.0, cloud_tasks: 0 })
}

/// One run: a mode at a rate.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub rate_mbit: u32,
    pub mode: Mode,
    /// Whether the hosts were told to prefetch (part of `mode`, repeated for readers).
    pub prefetch: bool,
    pub makespan_seconds: f64,
    /// Lower bound on the makespan for this mode at this rate.
    pub bound: Bound,
    /// Makespan / bound.
    pub vs_bound: f64,
    /// Makespan / the naive mode's (without prefetch) at the same rate, if it ran.
    pub vs_naive: Option<f64>,
    /// Seconds the driver spent assigning tasks (placement requests in every mode but naive).
    pub placing_seconds: f64,
    /// Bytes the cloud hosts' interfaces received and sent during the run.
    pub shaped_link_bytes: u64,
    /// Input bytes the tasks placed in the cloud needed there.
    pub cloud_input_bytes: u64,
    pub tasks_per_host: BTreeMap<String, usize>,
    /// Median and longest seconds a task waited for its input (`get`).
    pub median_get_seconds: f64,
    pub max_get_seconds: f64,
    /// Warm-up: the cloud hosts' inbound bandwidth as the scheduler estimated it, Mbit/s.
    pub estimated_cloud_mbit: BTreeMap<String, f64>,
}

/// Each effect on its own at one rate: makespan ratios between modes that differ in one
/// thing (present when both ran). Below 1: the change helps.
#[derive(Clone, Debug, Serialize)]
pub struct Effects {
    pub rate_mbit: u32,
    /// data-aware / naive.
    pub placement_without_prefetch: Option<f64>,
    /// data-aware+prefetch / naive+prefetch.
    pub placement_with_prefetch: Option<f64>,
    /// naive+prefetch / naive.
    pub prefetch_with_naive: Option<f64>,
    /// data-aware+prefetch / data-aware.
    pub prefetch_with_data_aware: Option<f64>,
    /// data-aware+prefetch / naive: both.
    pub both: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    pub config: WorkloadConfig,
    pub machine: Machine,
    pub hpc_only_seconds: f64,
    pub all_hosts_seconds: f64,
    pub runs: Vec<RunResult>,
    pub effects: Vec<Effects>,
}

fn input_name(i: usize) -> String {
    format!("inputs/{i:04}.bin")
}

fn cluster_spec(cfg: &WorkloadConfig, rate_mbit: u32) -> ClusterSpec {
    let mut spec = ClusterSpec::new(HOSTS, LinkSpec::unshaped(cfg.mtu));
    spec.links =
        (0..HOSTS)
            .map(|i| {
                if CLOUD_HOSTS.contains(&i) {
                    LinkSpec::shaped(rate_mbit, cfg.mtu)
                } else {
                    LinkSpec::unshaped(cfg.mtu)
                }
            })
            .collect();
    // Every host could end up with every input (and the warm-up object), plus room.
    let capacity_mib = (cfg.tasks as u64 * cfg.input_size + cfg.warmup_size).div_ceil(1 << 20) + 512;
    spec.capacity = format!("{capacity_mib}MiB");
    spec.log = cfg.log.clone();
    spec.host_args = (0..HOSTS)
        .map(|i| {
            let site = if CLOUD_HOSTS.contains(&i) { "cloud" } else { "hpc" };
            vec!["--label".into(), format!("site={site}"), "--resource".into(), format!("cpu={}", cfg.slots)]
        })
        .collect();
    spec
}

/// Waits until the scheduler lists `name` complete somewhere.
fn wait_listed(cluster: &TestCluster, client: &StoreClient, name: &str) -> anyhow::Result<()> {
    if !cluster
        .wait_until(Duration::from_secs(30), || client.locate(name).is_ok_and(|l| l.iter().any(|l| l.is_complete())))
    {
        bail!("the scheduler did not list {name} within 30 s");
    }
    Ok(())
}

/// Bytes received plus sent on the host's interface.
fn link_bytes(cluster: &TestCluster, i: usize) -> anyhow::Result<u64> {
    let mut total = 0;
    for counter in ["rx_bytes", "tx_bytes"] {
        let path = format!("/sys/class/net/{}/statistics/{counter}", store_tests::netns::HOST_IF);
        let out = cluster.net().host(i).run("cat", &[&path], Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&out.stdout);
        total += text.trim().parse::<u64>().with_context(|| format!("reading {path}: {text:?}"))?;
    }
    Ok(total)
}

/// Puts the inputs on the hpc hosts and lets each cloud host pull the warm-up object;
/// returns the scheduler's bandwidth estimate per cloud host.
fn prepare(
    cfg: &WorkloadConfig,
    cluster: &TestCluster,
    say: &mut impl FnMut(String),
) -> anyhow::Result<BTreeMap<String, f64>> {
    let clients: Vec<StoreClient> = HPC_HOSTS.iter().map(|&h| cluster.client(h)).collect::<anyhow::Result<_>>()?;
    let size = usize::try_from(cfg.input_size)?;
    for i in 0..cfg.tasks {
        let host = i % HPC_HOSTS.len();
        let data = payload(size, i as u64 + 1);
        let mut attempt = 1;
        loop {
            match clients[host].put(&input_name(i), &data) {
                Ok(_) => break,
                // The daemon's seal of the put's memfd failed once with EBUSY (reported as
                // `WritableMapping`, though `put` maps nothing; not investigated, the kernel
                // also answers EBUSY for pages with transient extra references) while other
                // builds loaded the machine. Nothing is stored then: the put can be repeated.
                Err(e) if e.code() == Some(ErrorCode::WritableMapping) && attempt < 5 => {
                    say(format!("putting input {i}: {e}; retrying"));
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("putting input {i}")),
            }
        }
    }
    for i in 0..cfg.tasks {
        wait_listed(cluster, &clients[0], &input_name(i))?;
    }
    let warmup = "warmup/object.bin";
    clients[0].put(warmup, &payload(usize::try_from(cfg.warmup_size)?, 0xfeed))?;
    wait_listed(cluster, &clients[0], warmup)?;
    let mut estimates = BTreeMap::new();
    for &c in &CLOUD_HOSTS {
        // One after the other, so each sees its own link alone.
        drop(cluster.client(c)?.get(warmup, GET_TIMEOUT).with_context(|| format!("warm-up pull on {}", node_id(c)))?);
        let node = node_id(c);
        let spec = PlaceSpec { needs: vec![warmup.into()], pinned: Some(node.clone()), ..Default::default() };
        let mut estimate = None;
        // The report reaches the scheduler in the background, right after the pull.
        cluster.wait_until(Duration::from_secs(10), || {
            let answer = clients[0].place(&spec, false);
            estimate = answer.ok().and_then(|o| o.placement.ranked.into_iter().next()).filter(|e| !e.bandwidth_assumed);
            estimate.is_some()
        });
        let estimate = estimate.with_context(|| format!("the scheduler has no bandwidth estimate for {node}"))?;
        estimates.insert(node, estimate.inbound_bytes_per_second * 8.0 / 1e6);
    }
    Ok(estimates)
}

/// What one task did.
struct TaskDone {
    get_seconds: f64,
}

type Queue = Arc<Mutex<mpsc::Receiver<usize>>>;

/// `slots` workers on host `host`, each with its own connection, taking tasks from `queue`.
fn spawn_workers(
    cluster: &TestCluster,
    host: usize,
    cfg: &WorkloadConfig,
    queue: &Queue,
    done: &mpsc::Sender<anyhow::Result<TaskDone>>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for _ in 0..cfg.slots {
        let client = cluster.client(host)?;
        let (queue, done) = (queue.clone(), done.clone());
        let compute = Duration::from_secs_f64(cfg.task_seconds);
        handles.push(std::thread::spawn(move || {
            loop {
                // The lock is held only while waiting for the next task.
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(i) = next else { return };
                let started = Instant::now();
                let result = client.get(&input_name(i), GET_TIMEOUT).map(|obj| {
                    let get_seconds = started.elapsed().as_secs_f64();
                    // Read the input: one byte of every page.
                    let touched = obj.iter().step_by(4096).fold(0u8, |a, b| a.wrapping_add(*b));
                    std::hint::black_box(touched);
                    std::thread::sleep(compute);
                    TaskDone { get_seconds }
                });
                let _ = done.send(result.with_context(|| format!("task {i} on {}", node_id(host))));
            }
        }));
    }
    Ok(handles)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One mode at one rate on a fresh cluster.
pub fn run_one(
    cfg: &WorkloadConfig,
    rate_mbit: u32,
    mode: Mode,
    say: &mut impl FnMut(String),
) -> anyhow::Result<RunResult> {
    say(format!("{rate_mbit} Mbit/s {}: starting 4 hosts, putting {} inputs", mode.label(), cfg.tasks));
    let cluster = TestCluster::start(cluster_spec(cfg, rate_mbit))?;
    let estimated_cloud_mbit = prepare(cfg, &cluster, say)?;
    say(format!("{rate_mbit} Mbit/s {}: scheduler's cloud estimates {estimated_cloud_mbit:.1?} Mbit/s", mode.label()));
    let before: Vec<u64> = CLOUD_HOSTS.iter().map(|&c| link_bytes(&cluster, c)).collect::<anyhow::Result<_>>()?;

    let (done_tx, done_rx) = mpsc::channel();
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for host in 0..HOSTS {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        workers.extend(spawn_workers(&cluster, host, cfg, &Arc::new(Mutex::new(rx)), &done_tx)?);
    }
    drop(done_tx);
    let placer = cluster.client(0)?;
    let mut tasks_per_host: BTreeMap<String, usize> = (0..HOSTS).map(|h| (node_id(h), 0)).collect();
    let started = Instant::now();
    for i in 0..cfg.tasks {
        let host = if mode == Mode::Naive {
            i % HOSTS
        } else {
            // Naive with prefetch pins the round-robin host: the scheduler then only
            // records the assignment, and the daemon asks that host to prefetch.
            let pinned = (!mode.data_aware()).then(|| node_id(i % HOSTS));
            let spec = PlaceSpec {
                needs: vec![input_name(i)],
                task_seconds: cfg.task_seconds,
                pinned: pinned.clone(),
                ..Default::default()
            };
            let outcome = placer.place(&spec, mode.prefetch()).with_context(|| format!("placing task {i}"))?;
            if let Some(p) = outcome.prefetch.iter().find(|p| p.result.is_err()) {
                bail!("prefetch on {} failed: {:?}", p.node, p.result);
            }
            let node = &outcome.placement.tasks.first().context("no node qualified")?.node;
            if pinned.as_ref().is_some_and(|p| p != node) {
                bail!("task {i} pinned to {pinned:?} was placed on {node}");
            }
            (0..HOSTS).find(|&h| node_id(h) == *node).with_context(|| format!("unknown node {node}"))?
        };
        *tasks_per_host.entry(node_id(host)).or_default() += 1;
        senders[host].send(i).context("a host's workers are gone")?;
    }
    let placing_seconds = started.elapsed().as_secs_f64();
    drop(senders);
    let mut gets = Vec::new();
    for result in done_rx.iter() {
        gets.push(result?.get_seconds);
    }
    let makespan_seconds = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.join();
    }
    if gets.len() != cfg.tasks {
        bail!("{} of {} tasks finished", gets.len(), cfg.tasks);
    }
    let after: Vec<u64> = CLOUD_HOSTS.iter().map(|&c| link_bytes(&cluster, c)).collect::<anyhow::Result<_>>()?;
    let shaped_link_bytes = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).sum();
    let cloud_tasks: usize = CLOUD_HOSTS.iter().map(|&c| tasks_per_host[&node_id(c)]).sum();
    let bound = bound(cfg, rate_mbit, mode);
    let result = RunResult {
        rate_mbit,
        mode,
        prefetch: mode.prefetch(),
        makespan_seconds,
        bound,
        vs_bound: makespan_seconds / bound.seconds,
        vs_naive: None,
        placing_seconds,
        shaped_link_bytes,
        cloud_input_bytes: cloud_tasks as u64 * cfg.input_size,
        tasks_per_host,
        max_get_seconds: gets.iter().copied().fold(0.0, f64::max),
        median_get_seconds: median(gets),
        estimated_cloud_mbit,
    };
    say(format!(
        "{rate_mbit} Mbit/s {}: makespan {:.2} s (bound {:.2} s), {:.1} MB over the shaped links, tasks {:?}",
        mode.label(),
        result.makespan_seconds,
        result.bound.seconds,
        result.shaped_link_bytes as f64 / 1e6,
        result.tasks_per_host
    ));
    Ok(result)
}

/// Every rate, every mode.
pub fn run(cfg: &WorkloadConfig, mut say: impl FnMut(String)) -> anyhow::Result<WorkloadReport> {
    if cfg.tasks == 0 || cfg.slots == 0 || cfg.input_size == 0 || cfg.task_seconds <= 0.0 {
        bail!("tasks, slots, input size and task seconds must be positive");
    }
    if cfg.modes.is_empty() {
        bail!("no mode to run");
    }
    let mut runs = Vec::new();
    for &rate in &cfg.rates_mbit {
        for &mode in &cfg.modes {
            runs.push(run_one(cfg, rate, mode, &mut say)?);
        }
    }
    let makespans: BTreeMap<(u32, Mode), f64> =
        runs.iter().map(|r| ((r.rate_mbit, r.mode), r.makespan_seconds)).collect();
    for r in &mut runs {
        r.vs_naive = makespans.get(&(r.rate_mbit, Mode::Naive)).map(|n| r.makespan_seconds / n);
    }
    let effects = cfg
        .rates_mbit
        .iter()
        .map(|&rate| {
            let ratio = |a: Mode, b: Mode| Some(makespans.get(&(rate, a))? / makespans.get(&(rate, b))?);
            Effects {
                rate_mbit: rate,
                placement_without_prefetch: ratio(Mode::DataAware, Mode::Naive),
                placement_with_prefetch: ratio(Mode::DataAwarePrefetch, Mode::NaivePrefetch),
                prefetch_with_naive: ratio(Mode::NaivePrefetch, Mode::Naive),
                prefetch_with_data_aware: ratio(Mode::DataAwarePrefetch, Mode::DataAware),
                both: ratio(Mode::DataAwarePrefetch, Mode::Naive),
            }
        })
        .collect();
    Ok(WorkloadReport {
        config: cfg.clone(),
        machine: Machine::probe(),
        hpc_only_seconds: cfg.hpc_only_seconds(),
        all_hosts_seconds: cfg.all_hosts_seconds(),
        runs,
        effects,
    })
}

impl WorkloadReport {
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{} tasks, each reads one {} input and computes {:.2} s; {} slots per host; \
             2 hpc hosts hold the inputs, 2 cloud hosts behind shaped links\n\
             all 4 hosts busy, no waiting: {:.1} s; hpc hosts only: {:.1} s; \
             BOUND: lower bound of the mode (docs/workload-bench.md)\n\n",
            c.tasks,
            bytesize::ByteSize(c.input_size),
            c.task_seconds,
            c.slots,
            self.all_hosts_seconds,
            self.hpc_only_seconds
        );
        out.push_str(&format!(
            "{:>6} {:<19} {:>9} {:>9} {:>8} {:>8} {:>10} {:>11} {:>8} {:>8} {:>9}\n",
            "MBIT/S",
            "MODE",
            "MAKESPAN",
            "BOUND",
            "VS BOUND",
            "VS NAIVE",
            "SHAPED MB",
            "CLOUD TASKS",
            "GET MED",
            "GET MAX",
            "EST MBIT"
        ));
        for r in &self.runs {
            let vs = r.vs_naive.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let cloud: usize = CLOUD_HOSTS.iter().filter_map(|&h| r.tasks_per_host.get(&node_id(h))).sum();
            let est: Vec<String> = r.estimated_cloud_mbit.values().map(|v| format!("{v:.0}")).collect();
            out.push_str(&format!(
                "{:>6} {:<19} {:>8.2}s {:>8.2}s {:>8.2} {:>8} {:>10.1} {:>5} ({:>3}) {:>7.2}s {:>7.2}s {:>9}\n",
                r.rate_mbit,
                r.mode.label(),
                r.makespan_seconds,
                r.bound.seconds,
                r.vs_bound,
                vs,
                r.shaped_link_bytes as f64 / 1e6,
                cloud,
                r.bound.cloud_tasks,
                r.median_get_seconds,
                r.max_get_seconds,
                est.join("/")
            ));
        }
        out.push_str("\nCLOUD TASKS: placed (in the bound's placement)\n");
        let any = |e: &Effects| {
            [e.placement_without_prefetch, e.placement_with_prefetch, e.prefetch_with_naive, e.prefetch_with_data_aware]
                .iter()
                .any(Option::is_some)
        };
        if self.effects.iter().any(any) {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            out.push_str(&format!(
                "\neach effect on its own (makespan ratios):\n{:>6} {:>14} {:>14} {:>14} {:>14} {:>6}\n",
                "MBIT/S", "PLACE NO-PF", "PLACE W/ PF", "PF NAIVE", "PF AWARE", "BOTH"
            ));
            for e in self.effects.iter().filter(|e| any(e)) {
                out.push_str(&format!(
                    "{:>6} {:>14} {:>14} {:>14} {:>14} {:>6}\n",
                    e.rate_mbit,
                    f(e.placement_without_prefetch),
                    f(e.placement_with_prefetch),
                    f(e.prefetch_with_naive),
                    f(e.prefetch_with_data_aware),
                    f(e.both)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tasks: usize) -> WorkloadConfig {
        WorkloadConfig {
            rates_mbit: vec![30, 100, 200],
            modes: Mode::ALL.to_vec(),
            tasks,
            input_size: 4 << 20,
            task_seconds: 0.5,
            slots: 2,
            warmup_size: 8 << 20,
            mtu: 1500,
            log: "warn".into(),
        }
    }

    #[test]
    fn modes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), serde_json::json!(m.label()));
            assert_eq!(<Mode as clap::ValueEnum>::from_str(m.label(), false), Ok(m));
        }
    }

    #[test]
    fn host_bounds() {
        let c = cfg(200);
        // hpc host: waves only.
        assert_eq!(c.host_bound(50, 0.0, true), 12.5);
        assert_eq!(c.host_bound(51, 0.0, false), 13.0);
        assert_eq!(c.host_bound(0, 1.0, false), 0.0);
        // Link-bound cloud host: n x s + T.
        assert!((c.host_bound(50, 1.0, true) - 50.5).abs() < 1e-9);
        // Compute-bound cloud host with prefetch: s + W(n) ...
        assert!((c.host_bound(49, 0.01, true) - 12.51).abs() < 1e-9);
        // ... or 2 x s + W(n - 1): with 50, the 49 tasks after the first input still take 25 waves.
        assert!((c.host_bound(50, 0.01, true) - 12.52).abs() < 1e-9);
        // Without prefetch the fetch holds the slot: ceil(n / k) x (s + T).
        assert!((c.host_bound(50, 0.2, false) - 25.0 * 0.7).abs() < 1e-9);
        assert!(c.host_bound(50, 0.2, true) < c.host_bound(50, 0.2, false));
    }

    #[test]
    fn bounds_order() {
        let c = cfg(200);
        for rate in [30, 100, 200, 10_000] {
            let b = |m| bound(&c, rate, m);
            // Prefetch never raises a bound; the optimum is no worse than round-robin.
            assert!(b(Mode::NaivePrefetch).seconds <= b(Mode::Naive).seconds);
            assert!(b(Mode::DataAwarePrefetch).seconds <= b(Mode::DataAware).seconds);
            assert!(b(Mode::DataAware).seconds <= b(Mode::Naive).seconds);
            assert!(b(Mode::DataAwarePrefetch).seconds <= b(Mode::NaivePrefetch).seconds);
            assert!(b(Mode::DataAwarePrefetch).seconds >= c.all_hosts_seconds());
            assert_eq!(b(Mode::Naive).cloud_tasks, 100);
        }
        // 30 Mbit/s, naive: each cloud host receives 50 x 4 MiB at 3.75 MB/s, then computes.
        let s = (4 << 20) as f64 / 3.75e6;
        assert!((bound(&c, 30, Mode::Naive).seconds - (50.0 * s + 0.5)).abs() < 1e-9);
        // Data-aware with prefetch balances the cloud links against the hpc slots (~18 per cloud host).
        let aware = bound(&c, 30, Mode::DataAwarePrefetch);
        assert!((30..=40).contains(&aware.cloud_tasks), "{aware:?}");
        assert!(aware.seconds > 19.0 && aware.seconds < 22.0, "{aware:?}");
        // Fast links: every mode with prefetch reaches the compute floor (plus one input).
        assert!(bound(&c, 10_000, Mode::DataAwarePrefetch).seconds < 12.6);
        // One task, naive: it runs on node-0, which holds its input.
        assert_eq!(bound(&cfg(1), 30, Mode::Naive).seconds, 0.5);
    }
}
