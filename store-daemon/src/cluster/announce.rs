//! Keeping the scheduler's table right: register with everything held, heartbeat on the
//! lease, and send the difference between what the store holds and what was announced.
//! The store is the truth and the scheduler soft state, so after a scheduler restart (it
//! answers `UnknownNode`) a full re-registration rebuilds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_client::scheduler_client::SchedulerClientError;
use store_client::wire::node::Holding;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Cluster;

/// Between two syncs of holdings when nothing asks for one sooner.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

pub async fn run(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut announced: HashMap<String, Holding> = HashMap::new();
    let mut registered = false;
    let mut last_heartbeat = Instant::now();
    let mut warned = false;
    loop {
        let Some(shared) = cluster.shared.upgrade() else { return };
        let outcome = if registered {
            sync(&cluster, &shared, &mut announced, &mut last_heartbeat).await
        } else {
            let node = cluster.node_info(&shared);
            let holdings = shared.store().holdings();
            match cluster.scheduler.register(node, holdings.clone()).await {
                Ok(()) => {
                    info!(scheduler = %cluster.config.scheduler, objects = holdings.len(), "registered with the scheduler");
                    announced = holdings.into_iter().map(|h| (h.name.clone(), h)).collect();
                    registered = true;
                    last_heartbeat = Instant::now();
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        drop(shared);
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
            _ = shutdown.cancelled() => return,
            _ = cluster.sync_now.notified() => {}
            _ = tokio::time::sleep(if registered { SYNC_INTERVAL } else { Duration::from_secs(1) }) => {}
        }
    }
}

async fn sync(
    cluster: &Cluster,
    shared: &crate::server::Shared,
    announced: &mut HashMap<String, Holding>,
    last_heartbeat: &mut Instant,
) -> Result<(), SchedulerClientError> {
    let node = &cluster.config.node_id;
    if last_heartbeat.elapsed() >= cluster.config.heartbeat {
        let free = shared.store().free();
        cluster.scheduler.heartbeat(node, free).await?;
        *last_heartbeat = Instant::now();
    }
    let current: HashMap<String, Holding> =
        shared.store().holdings().into_iter().map(|h| (h.name.clone(), h)).collect();
    for (name, holding) in &current {
        if announced.get(name) != Some(holding) {
            cluster.scheduler.announce(node, holding.clone()).await?;
            announced.insert(name.clone(), holding.clone());
        }
    }
    let gone: Vec<String> = announced.keys().filter(|n| !current.contains_key(*n)).cloned().collect();
    for name in gone {
        cluster.scheduler.withdraw(node, &name).await?;
        announced.remove(&name);
    }
    Ok(())
}
