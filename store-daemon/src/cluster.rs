//! The daemon's place in the cluster, assembled from parts that own one thing each:
//! the QUIC endpoint (mutual TLS) and the typed client of other daemons ([`peers`]), the
//! link to the scheduler ([`announce`]), the pull service ([`pull`], whose transfers
//! ([`transfer`]) drive [`crate::replication::pull_core`]), cooperative S3 fetches
//! ([`cooperative`], with their [`staged`] shares), placement and prefetch ([`placement`]),
//! and the server of peers' requests ([`serve`]). Every part holds the [`NodeStore`], never
//! the local server; the local server holds this.

pub mod announce;
pub mod cooperative;
pub mod error;
pub mod peers;
pub mod placement;
pub mod pull;
pub mod serve;
pub mod staged;
pub mod transfer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use store_client::scheduler_client::SchedulerClient;
use store_client::tls::{self, Identity};
use store_client::wire::local::ReplicaOutcome;
use store_client::wire::node::NodeId;
use store_client::wire::peer::PEER_ALPN;
use store_client::wire::scheduler::SCHEDULER_ALPN;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::error::{ClusterError, PullError};
pub use self::serve::SEND_SLICE;
pub use crate::config::ClusterConfig;
use crate::node::NodeStore;

/// A daemon's cluster membership.
#[derive(Debug)]
pub struct Cluster {
    member: announce::Member,
    endpoint: quinn::Endpoint,
    scheduler: Arc<SchedulerClient>,
    node: Arc<NodeStore>,
    puller: Arc<pull::Puller>,
    cooperative: Arc<cooperative::Cooperative>,
    placement: Arc<placement::Placement>,
    server: Arc<serve::PeerServer>,
}

impl Cluster {
    /// Binds the QUIC endpoint. Must run inside a tokio runtime.
    pub fn bind(config: ClusterConfig, node: Arc<NodeStore>) -> Result<Self, ClusterError> {
        let advertise = match config.advertise {
            Some(a) => a,
            None if config.listen.ip().is_unspecified() => return Err(ClusterError::NoAdvertiseAddress(config.listen)),
            None => config.listen,
        };
        let max_egress_rate = match config.max_egress_rate {
            None => None,
            Some(rate) => Some(u32::try_from(rate).ok().and_then(NonZeroU32::new).ok_or(ClusterError::BadRate)?),
        };
        let identity = Identity::load(&config.certs)?;
        let server = identity.quic_server(PEER_ALPN, tls::bulk_transport())?;
        let peer_client = identity.quic_client(PEER_ALPN, tls::bulk_transport())?;
        let scheduler_client = identity.quic_client(SCHEDULER_ALPN, tls::control_transport())?;
        let mut endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|source| ClusterError::Bind { addr: config.listen, source })?;
        endpoint.set_default_client_config(peer_client);
        // Well below the lease, so a scheduler that died (and maybe came back) is noticed
        // and re-registered with in about a second.
        let request_timeout = (config.heartbeat / 2).clamp(Duration::from_millis(300), Duration::from_secs(2));
        let scheduler = Arc::new(
            SchedulerClient::new(&endpoint, config.scheduler, &config.scheduler_name, scheduler_client)
                .with_request_timeout(request_timeout),
        );
        let peers = Arc::new(peers::PeerClient::new(endpoint.clone(), node.metrics().clone()));
        let puller = Arc::new(pull::Puller::new(transfer::PullContext {
            node_id: config.node_id.clone(),
            node: node.clone(),
            peers,
            scheduler: scheduler.clone(),
            draining: CancellationToken::new(),
            bytes_received: Default::default(),
        }));
        let cooperative = Arc::new(cooperative::Cooperative::new(node.clone(), puller.clone(), scheduler.clone()));
        let placement = Arc::new(placement::Placement::new(node.clone(), puller.clone(), scheduler.clone()));
        let server = Arc::new(serve::PeerServer::new(
            node.clone(),
            puller.clone(),
            cooperative.clone(),
            placement.clone(),
            max_egress_rate,
            corrupts_served_chunks(&config),
        ));
        let member = announce::Member {
            id: config.node_id.clone(),
            addr: advertise,
            labels: config.labels.clone(),
            resources: config.resources.clone(),
            heartbeat: config.heartbeat,
        };
        Ok(Self { member, endpoint, scheduler, node, puller, cooperative, placement, server })
    }

    pub fn node_id(&self) -> &str {
        &self.member.id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn scheduler(&self) -> &SchedulerClient {
        &self.scheduler
    }

    pub fn puller(&self) -> &Arc<pull::Puller> {
        &self.puller
    }

    pub fn cooperative(&self) -> &Arc<cooperative::Cooperative> {
        &self.cooperative
    }

    pub fn placement(&self) -> &Arc<placement::Placement> {
        &self.placement
    }

    /// Starts serving peers and keeping the scheduler's table right, until `shutdown`.
    pub fn start(&self, shutdown: &CancellationToken, tracker: &TaskTracker) {
        let accept = serve::accept_loop(self.server.clone(), self.endpoint.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(accept);
        let link = announce::run(self.node.clone(), self.scheduler.clone(), self.member.clone(), shutdown.clone());
        tracker.spawn(link);
    }

    /// Asks `targets` (every live node if `None`) to pull `name`, all at once, and collects
    /// their reports.
    pub async fn replicate(
        &self,
        name: &str,
        targets: Option<Vec<NodeId>>,
        timeout: Duration,
        relay: bool,
    ) -> Result<Vec<ReplicaOutcome>, PullError> {
        let nodes = self.scheduler.nodes().await?;
        let addrs: HashMap<NodeId, SocketAddr> = nodes.iter().map(|n| (n.info.id.clone(), n.info.addr)).collect();
        let targets = targets.unwrap_or_else(|| nodes.iter().map(|n| n.info.id.clone()).collect());
        Ok(self.puller.replicate(name, targets, addrs, timeout, relay).await)
    }

    /// Starts draining: no new peer connections, pulls under way abort (nothing partial is
    /// sealed), no new pulls start. Chunk uploads under way finish.
    pub fn begin_shutdown(&self) {
        self.endpoint.set_server_config(None);
        self.puller.begin_shutdown();
    }

    /// Resolves when every pull task has ended.
    pub async fn pulls_ended(&self) {
        self.puller.ended().await;
    }

    /// Closes the endpoint and waits (briefly) for peers to learn of it.
    pub async fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        self.scheduler.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Whether a test build was told to corrupt what it serves; never in a shipped daemon.
#[cfg(feature = "fault-injection")]
fn corrupts_served_chunks(config: &ClusterConfig) -> bool {
    config.corrupt_served_chunks
}

#[cfg(not(feature = "fault-injection"))]
fn corrupts_served_chunks(_: &ClusterConfig) -> bool {
    false
}
