//! The daemon's place in the cluster: its QUIC endpoint (mutual TLS), the link to the
//! scheduler ([`announce`]), serving chunks to peers ([`serve`]) and pulling objects from
//! them ([`pull`], driving [`crate::replication::plan`]).

pub mod announce;
pub mod cooperative;
pub mod placement;
pub mod pull;
pub mod serve;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use store_client::scheduler_client::{SchedulerClient, SchedulerClientError};
use store_client::tls::{self, CertPaths, Identity, TlsError};
use store_client::wire::node::{NodeId, NodeInfo};
use store_client::wire::object::ErrorCode;
use store_client::wire::peer::PEER_ALPN;
use store_client::wire::scheduler::SCHEDULER_ALPN;
use thiserror::Error;
use tokio::sync::watch;

use crate::server::Shared;

/// How a daemon joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's name: the DNS name of its certificate.
    pub node_id: NodeId,
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Address peers should use, if not `listen`.
    pub advertise: Option<SocketAddr>,
    pub scheduler: SocketAddr,
    /// Name in the scheduler's certificate.
    pub scheduler_name: String,
    pub certs: CertPaths,
    pub labels: BTreeMap<String, String>,
    /// Named resources with counts, for placement (`cpu`: tasks run at once).
    pub resources: BTreeMap<String, u64>,
    /// Cap on bytes per second sent to peers (all uploads together).
    pub max_egress_rate: Option<u64>,
    pub heartbeat: Duration,
    /// Fault injection for tests: flip a byte in every chunk served. Exists only in test
    /// builds (feature `fault-injection`, which the tests crate enables); the shipped
    /// daemon cannot serve a wrong byte on purpose.
    #[cfg(feature = "fault-injection")]
    pub corrupt_served_chunks: bool,
}

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind the QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--advertise is needed when listening on the unspecified address {0}")]
    NoAdvertiseAddress(SocketAddr),
    #[error("the egress rate must be at least 1 byte/s and below 4 GB/s")]
    BadRate,
}

/// Why a pull or a cluster query failed.
#[derive(Debug, Error, Clone)]
pub enum PullError {
    #[error("no node holds {0:?}")]
    NotFound(String),
    #[error("scheduler unavailable: {0}")]
    Scheduler(String),
    #[error("no holder answered with the manifest of {name:?}: {last_error}")]
    NoManifest { name: String, last_error: String },
    #[error("{0}")]
    Store(String),
    #[error("pull of {name:?} stalled: {missing} chunks held by no reachable peer")]
    Stalled { name: String, missing: u64 },
    #[error("pull of {0:?} timed out")]
    Timeout(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("{message}")]
    S3 { code: ErrorCode, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0:?} is already held in the cluster")]
    AlreadyHeld(String),
    #[error("cooperative fetch failed: {0}")]
    Cooperative(String),
}

impl PullError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PullError::NotFound(_) => ErrorCode::NotFound,
            PullError::Scheduler(_) | PullError::NoManifest { .. } | PullError::Stalled { .. } => {
                ErrorCode::ClusterUnavailable
            }
            PullError::Store(_) => ErrorCode::StoreFull,
            PullError::Timeout(_) => ErrorCode::Timeout,
            PullError::Io(_) => ErrorCode::Io,
            PullError::ShuttingDown => ErrorCode::ShuttingDown,
            PullError::S3 { code, .. } => *code,
            PullError::BadRequest(_) => ErrorCode::BadRequest,
            PullError::AlreadyHeld(_) => ErrorCode::AlreadyExists,
            PullError::Cooperative(_) => ErrorCode::OriginFailed,
        }
    }
}

impl From<SchedulerClientError> for PullError {
    fn from(e: SchedulerClientError) -> Self {
        PullError::Scheduler(e.to_string())
    }
}

/// Counters of the replication traffic, for reports and metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub chunks_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub chunks_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub corrupt_chunks: AtomicU64,
    pub retries: AtomicU64,
    pub pulls_completed: AtomicU64,
    pub pulls_failed: AtomicU64,
}

type PullResult = Result<store_client::wire::node::PullReport, PullError>;

/// A daemon's cluster membership.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    advertise: SocketAddr,
    endpoint: quinn::Endpoint,
    scheduler: SchedulerClient,
    shared: Weak<Shared>,
    peers: tokio::sync::Mutex<HashMap<NodeId, quinn::Connection>>,
    /// Pulls in progress, so concurrent requests for one object share one transfer.
    pulls: std::sync::Mutex<HashMap<String, watch::Receiver<Option<PullResult>>>>,
    /// Chunk uploads in flight: the load this node reports to receivers.
    uploads: AtomicU32,
    /// At most [`crate::replication::UPLOAD_SLOTS`] chunk uploads at once, and the requests
    /// waiting for one.
    upload_slots: tokio::sync::Semaphore,
    upload_waiters: std::sync::atomic::AtomicUsize,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    pub stats: ClusterStats,
    /// Wakes the announcer for an immediate sync with the scheduler.
    sync_now: tokio::sync::Notify,
    /// Bumped whenever a chunk lands in an object being received, for the peers waiting
    /// on a `Have` ([`serve`]).
    chunks_landed: watch::Sender<u64>,
    pub(crate) metrics: Arc<crate::metrics::DaemonMetrics>,
    /// Cancelled when the daemon drains: pulls under way abort.
    draining: tokio_util::sync::CancellationToken,
    /// Pull tasks, so that a draining daemon waits for them to clean up.
    pull_tasks: tokio_util::task::TaskTracker,
    /// Inputs a placement asked this node to prefetch.
    prefetch: std::sync::Mutex<placement::PrefetchQueue>,
    /// Shares of cooperative S3 fetches between their two phases.
    staged: std::sync::Mutex<HashMap<String, cooperative::StagedShare>>,
    staged_generation: AtomicU64,
}

/// Largest piece written to a peer stream at once (and the limiter's burst).
pub const SEND_SLICE: usize = 256 * 1024;

impl Cluster {
    /// Binds the QUIC endpoint. Must run inside a tokio runtime.
    pub fn bind(config: ClusterConfig, shared: Weak<Shared>) -> Result<Arc<Self>, ClusterError> {
        let advertise = match config.advertise {
            Some(a) => a,
            None if config.listen.ip().is_unspecified() => return Err(ClusterError::NoAdvertiseAddress(config.listen)),
            None => config.listen,
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
        let scheduler = SchedulerClient::new(&endpoint, config.scheduler, &config.scheduler_name, scheduler_client)
            .with_request_timeout(request_timeout);
        let limiter = match config.max_egress_rate {
            None => None,
            Some(rate) => {
                let rate = u32::try_from(rate).ok().and_then(NonZeroU32::new).ok_or(ClusterError::BadRate)?;
                let burst = NonZeroU32::new(SEND_SLICE as u32).ok_or(ClusterError::BadRate)?;
                Some(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst)))
            }
        };
        let metrics = shared.upgrade().map(|s| s.metrics().clone()).unwrap_or_default();
        Ok(Arc::new(Self {
            config,
            advertise,
            endpoint,
            scheduler,
            shared,
            peers: tokio::sync::Mutex::new(HashMap::new()),
            pulls: std::sync::Mutex::new(HashMap::new()),
            uploads: AtomicU32::new(0),
            upload_slots: tokio::sync::Semaphore::new(crate::replication::UPLOAD_SLOTS as usize),
            upload_waiters: std::sync::atomic::AtomicUsize::new(0),
            limiter,
            stats: ClusterStats::default(),
            sync_now: tokio::sync::Notify::new(),
            chunks_landed: watch::channel(0).0,
            metrics,
            draining: tokio_util::sync::CancellationToken::new(),
            pull_tasks: tokio_util::task::TaskTracker::new(),
            prefetch: std::sync::Mutex::default(),
            staged: std::sync::Mutex::new(HashMap::new()),
            staged_generation: AtomicU64::new(0),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn scheduler(&self) -> &SchedulerClient {
        &self.scheduler
    }

    fn shared(&self) -> Result<Arc<Shared>, PullError> {
        self.shared.upgrade().ok_or(PullError::ShuttingDown)
    }

    fn node_info(&self, shared: &Shared) -> NodeInfo {
        let store = shared.store();
        NodeInfo {
            id: self.config.node_id.clone(),
            addr: self.advertise,
            labels: self.config.labels.clone(),
            capacity: store.capacity(),
            free: store.free(),
            resources: self.config.resources.clone(),
        }
    }

    pub fn uploads(&self) -> u32 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Tells the peers waiting on a `Have` that a chunk landed.
    fn chunk_landed(&self) {
        self.chunks_landed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Asks the announcer to tell the scheduler about our holdings now.
    pub fn sync_soon(&self) {
        self.sync_now.notify_one();
    }

    /// A connection to `node` at `addr`, reusing a live one. The table lock is never held
    /// across the handshake: a node that announced an unreachable address costs only the
    /// pulls that ask it, never the others.
    pub async fn connect(&self, node: &str, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let live = |peers: &HashMap<NodeId, quinn::Connection>| {
            peers.get(node).filter(|c| c.close_reason().is_none() && c.remote_address() == addr).cloned()
        };
        if let Some(conn) = live(&*self.peers.lock().await) {
            return Ok(conn);
        }
        let connecting = self.endpoint.connect(addr, node).map_err(|e| format!("connect to {node} at {addr}: {e}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| format!("connect to {node} at {addr}: timed out"))?
            .map_err(|e| format!("connect to {node} at {addr}: {e}"))?;
        {
            let mut peers = self.peers.lock().await;
            // Two pulls may have connected at once: keep the first, close ours.
            if let Some(existing) = live(&peers) {
                conn.close(quinn::VarInt::from_u32(0), b"duplicate");
                return Ok(existing);
            }
            peers.insert(node.to_owned(), conn.clone());
        }
        let open = self.metrics.peer_connection(crate::metrics::Direction::Out);
        let closed = conn.clone();
        tokio::spawn(async move {
            closed.closed().await;
            drop(open);
        });
        Ok(conn)
    }

    /// Starts draining: no new peer connections, pulls under way abort (nothing partial is
    /// sealed), no new pulls start. Chunk uploads under way finish.
    pub fn begin_shutdown(&self) {
        self.endpoint.set_server_config(None);
        self.draining.cancel();
        self.pull_tasks.close();
    }

    /// Resolves when every pull task has ended.
    pub async fn pulls_ended(&self) {
        self.pull_tasks.wait().await;
    }

    /// Closes the endpoint and waits (briefly) for peers to learn of it.
    pub async fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        self.scheduler.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

impl Cluster {
    /// Asks `targets` (every live node if `None`) to pull `name`, all at once, and collects
    /// their reports.
    pub async fn replicate(
        self: &Arc<Self>,
        name: &str,
        targets: Option<Vec<NodeId>>,
        timeout: Duration,
        relay: bool,
    ) -> Result<Vec<store_client::wire::local::ReplicaOutcome>, PullError> {
        use store_client::wire::local::ReplicaOutcome;
        use store_client::wire::peer::{PeerRequest, PeerResponse};
        let nodes = self.scheduler.nodes().await?;
        let addrs: HashMap<NodeId, SocketAddr> = nodes.iter().map(|n| (n.info.id.clone(), n.info.addr)).collect();
        let targets = targets.unwrap_or_else(|| nodes.iter().map(|n| n.info.id.clone()).collect());
        let mut tasks = tokio::task::JoinSet::new();
        for node in targets {
            let cluster = self.clone();
            let name = name.to_owned();
            let addr = addrs.get(&node).copied();
            tasks.spawn(async move {
                let result = if node == cluster.config.node_id {
                    cluster.pull(&name, timeout, relay).await.map_err(|e| e.to_string())
                } else {
                    match addr {
                        None => Err(format!("{node} is not a live node of the cluster")),
                        Some(addr) => {
                            let req = PeerRequest::Pull { name, timeout_ms: timeout.as_millis() as u64, relay };
                            match cluster.ask_peer(&node, addr, &req, timeout).await {
                                Ok(PeerResponse::Pulled(report)) => Ok(report),
                                Ok(PeerResponse::Error { message }) => Err(message),
                                Ok(other) => Err(format!("unexpected answer {other:?}")),
                                Err(e) => Err(e),
                            }
                        }
                    }
                };
                ReplicaOutcome { node, result }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        outcomes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(outcomes)
    }
}
