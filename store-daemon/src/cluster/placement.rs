//! The daemon's part in data-aware placement:
//!
//! - a client's placement request goes to the scheduler; with prefetch, each chosen node is
//!   then asked ([`PeerRequest::Prefetch`]) to pull the inputs it lacks, and the answer waits
//!   only for those requests to be queued, not for the pulls;
//! - a node asked to prefetch queues the names and pulls them in order, at most
//!   [`PREFETCH_CONCURRENCY`] at a time, so the inputs of the tasks queued first arrive
//!   first, while the node works through the tasks placed before (that overlap is the point
//!   of prefetching). A task's `get` of an input being prefetched joins that pull;
//! - every finished pull is reported to the scheduler ([`TransferReport`]), which keeps its
//!   estimate of the bandwidth into this node from them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store_client::wire::node::NodeId;
use store_client::wire::peer::{PeerRequest, PeerResponse};
use store_client::wire::placement::{PlaceOutcome, PlaceSpec, PrefetchOutcome, TransferReport};
use tracing::{debug, info, warn};

use super::{Cluster, PullError};

/// Prefetch pulls running at once on a node. Two keep the inbound link busy across each
/// pull's set-up (locate, manifest) without splitting it so finely that the input of the
/// first queued task arrives late.
pub const PREFETCH_CONCURRENCY: usize = 2;
/// Longest a prefetch pull may take (queued ones wait without a limit).
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a chosen node may take to accept a prefetch request.
const PREFETCH_ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most names waiting to be prefetched; names asked for beyond it are not queued (the
/// task's own `get` pulls them), so a peer cannot grow the queue without bound.
pub const MAX_PREFETCH_QUEUE: usize = 4096;

/// Names waiting to be prefetched, and the workers pulling them.
#[derive(Debug, Default)]
pub struct PrefetchQueue {
    queue: VecDeque<String>,
    workers: usize,
}

impl Cluster {
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
                let cluster = self.clone();
                asks.spawn(async move {
                    let result = cluster.ask_prefetch(&node, addr, names.clone()).await;
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
        if node == self.config.node_id {
            self.prefetch(names);
            return Ok(());
        }
        let ask = async {
            let conn = self.connect(node, addr).await?;
            match store_client::rpc::call::<_, PeerResponse>(&conn, &PeerRequest::Prefetch { names }).await {
                Ok((PeerResponse::Queued { .. }, _)) => Ok(()),
                Ok((PeerResponse::Error { message }, _)) => Err(message),
                Ok((other, _)) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(PREFETCH_ASK_TIMEOUT, ask).await.unwrap_or_else(|_| Err(format!("{node} did not answer")))
    }

    /// Queues `names` for pulling in the background, in order; returns how many were
    /// queued (names held or queued already are skipped).
    pub fn prefetch(self: &Arc<Self>, names: Vec<String>) -> u32 {
        let Ok(shared) = self.shared() else { return 0 };
        if self.draining.is_cancelled() {
            return 0;
        }
        let mut q = self.prefetch.lock().unwrap_or_else(|p| p.into_inner());
        let mut queued = 0;
        for name in names {
            if q.queue.len() >= MAX_PREFETCH_QUEUE {
                warn!(limit = MAX_PREFETCH_QUEUE, "prefetch queue full: further names not queued");
                break;
            }
            if store_client::name::validate(&name).is_err()
                || shared.store().has_sealed(&name)
                || q.queue.contains(&name)
            {
                continue;
            }
            q.queue.push_back(name);
            queued += 1;
        }
        while q.workers < PREFETCH_CONCURRENCY && q.workers < q.queue.len() {
            q.workers += 1;
            self.pull_tasks.spawn(self.clone().prefetch_worker());
        }
        debug!(queued, waiting = q.queue.len(), "prefetch queued");
        queued
    }

    /// Pulls queued names one after another until the queue is empty.
    async fn prefetch_worker(self: Arc<Self>) {
        loop {
            let name = {
                let mut q = self.prefetch.lock().unwrap_or_else(|p| p.into_inner());
                match q.queue.pop_front() {
                    Some(name) if !self.draining.is_cancelled() => name,
                    _ => {
                        q.queue.clear();
                        q.workers -= 1;
                        return;
                    }
                }
            };
            let started = Instant::now();
            match self.pull(&name, PREFETCH_TIMEOUT, true).await {
                Ok(r) if !r.already_present => {
                    info!(%name, bytes = r.bytes, seconds = started.elapsed().as_secs_f64(), "prefetched")
                }
                Ok(_) => {}
                // The task's own `get` pulls again (or fails with the reason).
                Err(e) => warn!(%name, error = %e, "prefetch failed"),
            }
        }
    }

    /// Reports a finished pull to the scheduler, in the background: `started` is when the
    /// chunk transfer began and what the node had received from peers by then.
    pub(super) fn report_transfer(self: &Arc<Self>, name: &str, started: (Instant, u64), from: &BTreeMap<NodeId, u64>) {
        let bytes: u64 = from.values().sum();
        if bytes == 0 {
            return;
        }
        let seconds = started.0.elapsed().as_secs_f64();
        let node_bytes = self.stats.bytes_received.load(Ordering::Relaxed).saturating_sub(started.1);
        let report = TransferReport { name: name.to_owned(), bytes, seconds, from: from.clone(), node_bytes };
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.scheduler.report_transfer(&cluster.config.node_id, report).await {
                debug!(error = %e, "cannot report a transfer to the scheduler");
            }
        });
    }
}
