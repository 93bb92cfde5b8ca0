//! Keeping the scheduler's table right: register with everything held, heartbeat on the
//! lease, and send the difference between what the store holds and what was announced.
//! The store is the truth and the scheduler soft state, so after a scheduler restart (it
//! answers `UnknownNode`) a full re-registration rebuilds it. A change of the store's
//! holdings ([`NodeStore::subscribe_holdings`]) is sent at once, and a node that shuts down
//! takes all of them out before it goes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_client::scheduler_client::{SchedulerClient, SchedulerClientError};
use store_client::wire::node::{Holding, NodeId, NodeInfo};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::node::NodeStore;

/// Longest a node leaving cleanly waits for the scheduler to take its holdings out.
const LEAVE_LIMIT: Duration = Duration::from_secs(1);
/// Between two syncs of holdings when nothing asks for one sooner.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Who this node is to the scheduler, besides what it holds.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: NodeId,
    /// Where peers reach this node.
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, u64>,
    /// How often the node proves it lives (within the scheduler's lease).
    pub heartbeat: Duration,
}

impl Member {
    fn info(&self, node: &NodeStore) -> NodeInfo {
        let store = node.store();
        NodeInfo {
            id: self.id.clone(),
            addr: self.addr,
            labels: self.labels.clone(),
            capacity: store.capacity(),
            free: store.free(),
            resources: self.resources.clone(),
        }
    }
}

/// Keeps the scheduler's view of this node right until `shutdown`.
pub async fn run(node: Arc<NodeStore>, scheduler: Arc<SchedulerClient>, me: Member, shutdown: CancellationToken) {
    let mut announced: HashMap<String, Holding> = HashMap::new();
    let mut registered = false;
    let mut last_heartbeat = Instant::now();
    let mut warned = false;
    let mut changes = node.subscribe_holdings();
    loop {
        changes.borrow_and_update();
        let outcome = if registered {
            sync(&node, &scheduler, &me, &mut announced, &mut last_heartbeat).await
        } else {
            let info = me.info(&node);
            let holdings = node.store().holdings();
            match scheduler.register(info, holdings.clone()).await {
                Ok(()) => {
                    info!(objects = holdings.len(), "registered with the scheduler");
                    announced = holdings.into_iter().map(|h| (h.name.clone(), h)).collect();
                    registered = true;
                    last_heartbeat = Instant::now();
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(()) => warned = false,
            Err(SchedulerClientError::UnknownNode) => {
                info!("the scheduler lost track of this node; registering again");
                registered = false;
                continue;
            }
            Err(e) => {
                if !warned {
                    warn!(error = %e, "cannot reach the scheduler; retrying");
                    warned = true;
                }
                registered = false;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return leave(&node, &scheduler, &me).await,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(if registered { SYNC_INTERVAL } else { Duration::from_secs(1) }) => {}
        }
    }
}

/// A node leaving cleanly takes all its holdings out of the table at once (one registration
/// with none), so that pulls stop asking it now rather than when its lease runs out.
async fn leave(node: &NodeStore, scheduler: &SchedulerClient, me: &Member) {
    match tokio::time::timeout(LEAVE_LIMIT, scheduler.register(me.info(node), Vec::new())).await {
        Ok(Ok(())) => info!("holdings withdrawn from the scheduler"),
        Ok(Err(e)) => warn!(error = %e, "cannot withdraw the holdings; the scheduler drops them with the lease"),
        Err(_) => warn!("the scheduler did not take the holdings out in time; it drops them with the lease"),
    }
}

async fn sync(
    node: &NodeStore,
    scheduler: &SchedulerClient,
    me: &Member,
    announced: &mut HashMap<String, Holding>,
    last_heartbeat: &mut Instant,
) -> Result<(), SchedulerClientError> {
    let id = &me.id;
    if last_heartbeat.elapsed() >= me.heartbeat {
        let free = node.store().free();
        scheduler.heartbeat(id, free).await?;
        *last_heartbeat = Instant::now();
    }
    let current: HashMap<String, Holding> = node.store().holdings().into_iter().map(|h| (h.name.clone(), h)).collect();
    for (name, holding) in &current {
        if announced.get(name) != Some(holding) {
            match scheduler.announce(id, holding.clone()).await {
                Ok(()) => {}
                // Another node bound the name to other content first (both put at once):
                // this copy stays local and unlisted, and is not offered again.
                Err(e @ SchedulerClientError::Conflict { .. }) => warn!(error = %e, "holding not announced"),
                Err(e) => return Err(e),
            }
            announced.insert(name.clone(), holding.clone());
        }
    }
    let gone: Vec<String> = announced.keys().filter(|n| !current.contains_key(*n)).cloned().collect();
    for name in gone {
        scheduler.withdraw(id, &name).await?;
        announced.remove(&name);
    }
    Ok(())
}
