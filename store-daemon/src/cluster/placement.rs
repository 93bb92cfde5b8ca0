//! The daemon's part in data-aware placement:
//!
//! - a client's placement request goes to the scheduler; with prefetch, each chosen node is
//!   then asked ([`PeerRequest::Prefetch`]) to pull the inputs it lacks, and the answer waits
//!   only for those requests to be queued, not for the pulls;
//! - a node asked to prefetch queues the names and pulls them in order, at most
//!   [`PREFETCH_CONCURRENCY`] at a time, so the inputs of the tasks queued first arrive
//!   first, while the node works through the tasks placed before (that overlap is the point
//!   of prefetching). A task's `get` of an input being prefetched joins that pull;
//! - every finished pull is reported to the scheduler (by the pull service), which keeps its
//!   estimate of the bandwidth into this node from them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store_client::scheduler_client::SchedulerClient;
use store_client::wire::node::NodeId;
use store_client::wire::placement::{PlaceOutcome, PlaceSpec, PrefetchOutcome};
use tracing::{debug, info, warn};

use super::error::PullError;
use super::pull::Puller;
use crate::node::NodeStore;

/// Prefetch pulls running at once on a node. Two keep the inbound link busy across each
/// pull's set-up (locate, manifest) without splitting it so finely that the input of the
/// first queued task arrives late.
pub const PREFETCH_CONCURRENCY: usize = 2;
/// Longest a prefetch pull may take (queued ones wait without a limit).
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a chosen node may take to accept a prefetch request (plus the peer client's
/// round-trip margin).
const PREFETCH_ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most names waiting to be prefetched; names asked for beyond it are not queued (the
/// task's own `get` pulls them), so a peer cannot grow the queue without bound.
pub const MAX_PREFETCH_QUEUE: usize = 4096;

/// Names waiting to be prefetched, and the workers pulling them.
#[derive(Debug, Default)]
struct PrefetchQueue {
    queue: VecDeque<String>,
    workers: usize,
}

/// Placement requests of local clients, and the prefetch queue peers fill.
#[derive(Debug)]
pub struct Placement {
    node: Arc<NodeStore>,
    puller: Arc<Puller>,
    scheduler: Arc<SchedulerClient>,
    queue: Mutex<PrefetchQueue>,
}

impl Placement {
    pub fn new(node: Arc<NodeStore>, puller: Arc<Puller>, scheduler: Arc<SchedulerClient>) -> Self {
        Self { node, puller, scheduler, queue: Mutex::default() }
    }

    /// Asks the scheduler where to run tasks reading `spec.needs`; with `prefetch`, asks the
    /// chosen nodes to start pulling what they miss.
    pub async fn place(self: &Arc<Self>, spec: PlaceSpec, prefetch: bool) -> Result<PlaceOutcome, PullError> {
        let placement = self.scheduler.place(&spec).await?;
        let mut outcomes = Vec::new();
        if prefetch {
            // One request per node, inputs in task order.
            let mut per_node: BTreeMap<NodeId, (SocketAddr, Vec<String>)> = BTreeMap::new();
            for task in &placement.tasks {
                let (_, names) = per_node.entry(task.node.clone()).or_insert_with(|| (task.addr, Vec::new()));
                for name in &task.missing {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
            }
            let mut asks = tokio::task::JoinSet::new();
            for (node, (addr, names)) in per_node.into_iter().filter(|(_, (_, names))| !names.is_empty()) {
                let this = self.clone();
                asks.spawn(async move {
                    let result = this.ask_prefetch(&node, addr, names.clone()).await;
                    PrefetchOutcome { node, names, result }
                });
            }
            while let Some(done) = asks.join_next().await {
                if let Ok(outcome) = done {
                    outcomes.push(outcome);
                }
            }
            outcomes.sort_by(|a, b| a.node.cmp(&b.node));
        }
        Ok(PlaceOutcome { placement, prefetch: outcomes })
    }

    async fn ask_prefetch(self: &Arc<Self>, node: &str, addr: SocketAddr, names: Vec<String>) -> Result<(), String> {
        if node == self.puller.node_id() {
            self.prefetch(names);
            return Ok(());
        }
        let asked = self.puller.peers().prefetch(node, addr, names, PREFETCH_ASK_TIMEOUT).await;
        asked.map(drop).map_err(|e| e.to_string())
    }

    /// Queues `names` for pulling in the background, in order; returns how many were
    /// queued (names held or queued already are skipped).
    pub fn prefetch(self: &Arc<Self>, names: Vec<String>) -> u32 {
        if self.puller.is_draining() {
            return 0;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut queued = 0;
        for name in names {
            if q.queue.len() >= MAX_PREFETCH_QUEUE {
                warn!(limit = MAX_PREFETCH_QUEUE, "prefetch queue full: further names not queued");
                break;
            }
            if store_client::name::validate(&name).is_err()
                || self.node.store().has_sealed(&name)
                || q.queue.contains(&name)
            {
                continue;
            }
            q.queue.push_back(name);
            queued += 1;
        }
        while q.workers < PREFETCH_CONCURRENCY && q.workers < q.queue.len() {
            q.workers += 1;
            self.puller.spawn(self.clone().prefetch_worker());
        }
        debug!(queued, waiting = q.queue.len(), "prefetch queued");
        queued
    }

    /// Pulls queued names one after another until the queue is empty.
    async fn prefetch_worker(self: Arc<Self>) {
        loop {
            let name = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                match q.queue.pop_front() {
                    Some(name) if !self.puller.is_draining() => name,
                    _ => {
                        q.queue.clear();
                        q.workers -= 1;
                        return;
                    }
                }
            };
            let started = Instant::now();
            match self.puller.pull(&name, PREFETCH_TIMEOUT, true).await {
                Ok(r) if !r.already_present => {
                    info!(%name, bytes = r.bytes, seconds = started.elapsed().as_secs_f64(), "prefetched")
                }
                Ok(_) => {}
                // The task's own `get` pulls again (or fails with the reason).
                Err(e) => warn!(%name, error = %e, "prefetch failed"),
            }
        }
    }
}
