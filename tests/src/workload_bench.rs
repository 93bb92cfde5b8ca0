//! The workload bench behind `workload-bench`: a hybrid HPC + cloud cluster running a batch
//! of tasks, placed naively or by the scheduler's data-aware placement with prefetch.
//!
//! Hosts (network namespaces, [`crate::netns`]; real scheduler and daemons,
//! [`crate::cluster`]):
//! - `node-0`, `node-1`: "hpc" (label `site=hpc`), unshaped links. They hold the inputs,
//!   input `i` on `node-(i mod 2)`. `node-0` also runs the scheduler.
//! - `node-2`, `node-3`: "cloud" (label `site=cloud`), each behind its own link shaped to
//!   the case's rate in both directions (30, 100, 200 Mbit/s by default).
//!
//! Every host has the same number of task slots (`--resource cpu=SLOTS`, and as many worker
//! threads in the bench). A task reads one input through its host's daemon
//! (`StoreClient::get`, which pulls the object from the cluster first if the host lacks it;
//! the worker touches every page) and then "computes" for a fixed time. The compute is a
//! sleep, not a spin: this machine has 2 cores for 4 hosts x SLOTS workers, their daemons
//! and the shaping, so spinning would measure CPU contention instead of placement; a sleep
//! occupies the slot for exactly the task's time, as a core-bound task would on a host of
//! its own.
//!
//! Modes, each on a fresh cluster:
//! - `naive`: task `i` goes to host `i mod 4` (round-robin), its input fetched when the
//!   task starts (the `get` pulls it).
//! - `data-aware`: the driver asks the scheduler for each task in turn (`place` with the
//!   task's input, `task_seconds` and prefetch, through `node-0`'s daemon) and queues the
//!   task on the chosen host; the chosen host starts pulling the input at once, while it
//!   works through the tasks placed there before.
//!
//! Before each run, each cloud host pulls one warm-up object (in both modes): the scheduler
//! of a running cluster has seen transfers into its nodes before, and without one it would
//! assume its default bandwidth for the cloud hosts. The warm-up is not part of the makespan
//! nor of the bytes.
//!
//! Makespan: from the first placement decision (or round-robin assignment) to the end of
//! the last task; placement requests are inside it. Bytes over the shaped links: what the
//! cloud hosts' interfaces received and sent during the run (Ethernet frames, so protocol
//! overhead included).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use store_client::StoreClient;
use store_client::placement::PlaceSpec;

use crate::cluster::{ClusterSpec, TestCluster, node_id};
use crate::cluster_bench::Machine;
use crate::netns::LinkSpec;
use crate::payload;

/// Hosts 0 and 1 are hpc, 2 and 3 cloud.
pub const HPC_HOSTS: [usize; 2] = [0, 1];
pub const CLOUD_HOSTS: [usize; 2] = [2, 3];
const HOSTS: usize = 4;
/// How long one task's `get` may wait for its input.
const GET_TIMEOUT: Duration = Duration::from_secs(600);

/// How tasks are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Round-robin over all hosts, input fetched when the task starts.
    Naive,
    /// The scheduler's placement, with prefetch.
    DataAware,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::DataAware => "data-aware",
        }
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
    /// Makespan if only the hpc hosts worked (and never waited for data), seconds.
    pub fn hpc_only_seconds(&self) -> f64 {
        let waves = self.tasks.div_ceil(HPC_HOSTS.len() * self.slots.max(1));
        waves as f64 * self.task_seconds
    }

    /// Makespan if all four hosts worked and no task waited for data, seconds.
    pub fn all_hosts_seconds(&self) -> f64 {
        let waves = self.tasks.div_ceil(HOSTS * self.slots.max(1));
        waves as f64 * self.task_seconds
    }
}

/// One run: a mode at a rate.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub rate_mbit: u32,
    pub mode: Mode,
    pub makespan_seconds: f64,
    /// Seconds the driver spent assigning tasks (placement requests in data-aware mode).
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

/// Naive against data-aware at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub rate_mbit: u32,
    pub naive_seconds: f64,
    pub data_aware_seconds: f64,
    /// data-aware / naive makespan.
    pub ratio: f64,
    pub naive_shaped_bytes: u64,
    pub data_aware_shaped_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    pub config: WorkloadConfig,
    pub machine: Machine,
    pub hpc_only_seconds: f64,
    pub all_hosts_seconds: f64,
    pub runs: Vec<RunResult>,
    pub comparisons: Vec<Comparison>,
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
        let path = format!("/sys/class/net/{}/statistics/{counter}", crate::netns::HOST_IF);
        let out = cluster.net().host(i).run("cat", &[&path], Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&out.stdout);
        total += text.trim().parse::<u64>().with_context(|| format!("reading {path}: {text:?}"))?;
    }
    Ok(total)
}

/// Puts the inputs on the hpc hosts and lets each cloud host pull the warm-up object;
/// returns the scheduler's bandwidth estimate per cloud host.
fn prepare(cfg: &WorkloadConfig, cluster: &TestCluster) -> anyhow::Result<BTreeMap<String, f64>> {
    let clients: Vec<StoreClient> = HPC_HOSTS.iter().map(|&h| cluster.client(h)).collect::<anyhow::Result<_>>()?;
    let size = usize::try_from(cfg.input_size)?;
    for i in 0..cfg.tasks {
        let host = i % HPC_HOSTS.len();
        clients[host]
            .put(&input_name(i), &payload(size, i as u64 + 1))
            .with_context(|| format!("putting input {i}"))?;
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
    let estimated_cloud_mbit = prepare(cfg, &cluster)?;
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
        let host = match mode {
            Mode::Naive => i % HOSTS,
            Mode::DataAware => {
                let spec =
                    PlaceSpec { needs: vec![input_name(i)], task_seconds: cfg.task_seconds, ..Default::default() };
                let outcome = placer.place(&spec, true).with_context(|| format!("placing task {i}"))?;
                if let Some(p) = outcome.prefetch.iter().find(|p| p.result.is_err()) {
                    bail!("prefetch on {} failed: {:?}", p.node, p.result);
                }
                let node = &outcome.placement.tasks.first().context("no node qualified")?.node;
                (0..HOSTS).find(|&h| node_id(h) == *node).with_context(|| format!("unknown node {node}"))?
            }
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
    let result = RunResult {
        rate_mbit,
        mode,
        makespan_seconds,
        placing_seconds,
        shaped_link_bytes,
        cloud_input_bytes: cloud_tasks as u64 * cfg.input_size,
        tasks_per_host,
        max_get_seconds: gets.iter().copied().fold(0.0, f64::max),
        median_get_seconds: median(gets),
        estimated_cloud_mbit,
    };
    say(format!(
        "{rate_mbit} Mbit/s {}: makespan {:.2} s, {:.1} MB over the shaped links, tasks {:?}",
        mode.label(),
        result.makespan_seconds,
        result.shaped_link_bytes as f64 / 1e6,
        result.tasks_per_host
    ));
    Ok(result)
}

/// Every rate, every mode.
pub fn run(cfg: &WorkloadConfig, mut say: impl FnMut(String)) -> anyhow::Result<WorkloadReport> {
    if cfg.tasks == 0 || cfg.slots == 0 || cfg.input_size == 0 {
        bail!("tasks, slots and input size must be positive");
    }
    let mut runs = Vec::new();
    for &rate in &cfg.rates_mbit {
        for &mode in &cfg.modes {
            runs.push(run_one(cfg, rate, mode, &mut say)?);
        }
    }
    let comparisons = cfg
        .rates_mbit
        .iter()
        .filter_map(|&rate| {
            let find = |m: Mode| runs.iter().find(|r| r.rate_mbit == rate && r.mode == m);
            let (naive, aware) = (find(Mode::Naive)?, find(Mode::DataAware)?);
            Some(Comparison {
                rate_mbit: rate,
                naive_seconds: naive.makespan_seconds,
                data_aware_seconds: aware.makespan_seconds,
                ratio: aware.makespan_seconds / naive.makespan_seconds,
                naive_shaped_bytes: naive.shaped_link_bytes,
                data_aware_shaped_bytes: aware.shaped_link_bytes,
            })
        })
        .collect();
    Ok(WorkloadReport {
        config: cfg.clone(),
        machine: Machine::probe(),
        hpc_only_seconds: cfg.hpc_only_seconds(),
        all_hosts_seconds: cfg.all_hosts_seconds(),
        runs,
        comparisons,
    })
}

impl WorkloadReport {
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{} tasks, each reads one {} input and computes {:.2} s; {} slots per host; \
             2 hpc hosts hold the inputs, 2 cloud hosts behind shaped links\n\
             bounds: all 4 hosts busy {:.1} s, hpc hosts only {:.1} s\n\n",
            c.tasks,
            bytesize::ByteSize(c.input_size),
            c.task_seconds,
            c.slots,
            self.all_hosts_seconds,
            self.hpc_only_seconds
        );
        out.push_str(&format!(
            "{:>6} {:<11} {:>10} {:>8} {:>12} {:>11} {:>10} {:>9} {:>14}\n",
            "MBIT/S",
            "MODE",
            "MAKESPAN",
            "VS NAIVE",
            "SHAPED MB",
            "CLOUD TASKS",
            "GET MED",
            "GET MAX",
            "EST CLOUD MBIT"
        ));
        for r in &self.runs {
            let naive = self.runs.iter().find(|n| n.rate_mbit == r.rate_mbit && n.mode == Mode::Naive);
            let vs = naive.map_or("-".to_owned(), |n| format!("{:.2}", r.makespan_seconds / n.makespan_seconds));
            let cloud: usize = CLOUD_HOSTS.iter().filter_map(|&h| r.tasks_per_host.get(&node_id(h))).sum();
            let est: Vec<String> = r.estimated_cloud_mbit.values().map(|v| format!("{v:.0}")).collect();
            out.push_str(&format!(
                "{:>6} {:<11} {:>9.2}s {:>8} {:>12.1} {:>11} {:>9.2}s {:>8.2}s {:>14}\n",
                r.rate_mbit,
                r.mode.label(),
                r.makespan_seconds,
                vs,
                r.shaped_link_bytes as f64 / 1e6,
                cloud,
                r.median_get_seconds,
                r.max_get_seconds,
                est.join("/")
            ));
        }
        out
    }
}
