//! The scheduler's QUIC server: a thin tokio driver around the [`Table`].
//!
//! Every connection is mutual TLS against the cluster CA (a peer without a certificate from
//! it fails the handshake). Every bidirectional stream carries one [`SchedulerRequest`] frame
//! and gets one [`SchedulerResponse`] frame. `Wait` holds its stream until a complete copy
//! exists somewhere or the timeout passes, and is answered `Located` in both cases (without a
//! complete holder when it timed out). A background task calls [`Table::expire`] when the next
//! lease passes.
//!
//! `Place` is answered from the table (bytes of the inputs each node holds, labels,
//! resources) and the [`Planner`] (inbound bandwidth from the daemons' `TransferReport`s,
//! load of earlier placements); see [`crate::placement`].
//!
//! Requests that speak for a node (register, heartbeat, announce, withdraw, transfer
//! reports) must come over a connection whose client certificate is valid for that node id
//! (the id is the DNS name in the node's certificate), unless
//! [`SchedulerConfig::check_node_names`] is off: a node can only speak for itself.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use store_client::metrics::server::{MetricsServer, Render};
use store_client::rpc::{self, RpcError};
use store_client::tls::{self, CertPaths, Identity, TlsError};
use store_client::wire::node::{NodeId, NodeInfo};
use store_client::wire::placement::{NodeEstimate, PlaceSpec, Placement};
use store_client::wire::scheduler::{SCHEDULER_ALPN, SchedulerRequest, SchedulerResponse};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::SchedulerMetrics;
use crate::placement::{Candidate, PlacementRequest, Planner};
use crate::table::{DEFAULT_LEASE, Effect, Table, TableError};

/// Longest a client may take to send its request once it opened a stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a `Wait` may ask for (longer requests are shortened to this).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Shortest pause of the expiry task between two runs.
const MIN_EXPIRY_PAUSE: Duration = Duration::from_millis(10);
/// Most tasks one placement request may place.
pub const MAX_PLACE_COUNT: u32 = 100_000;
/// Longest task a placement request may announce (a week), so estimates stay finite.
const MAX_TASK_SECONDS: f64 = 7.0 * 24.0 * 3600.0;
/// Inbound bandwidth assumed for a node no transfer was reported into yet: 1 Gbit/s.
pub const DEFAULT_INBOUND_BYTES_PER_SECOND: f64 = 125e6;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub listen: SocketAddr,
    pub certs: CertPaths,
    /// How long a node stays registered after its last message.
    pub lease: Duration,
    /// Require node-scoped requests to come with a certificate valid for the node id.
    pub check_node_names: bool,
    /// TCP address of the Prometheus `/metrics` endpoint; `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// Placement's inbound bandwidth of a node before any transfer into it was reported,
    /// bytes per second.
    pub default_inbound_bytes_per_second: f64,
    /// Connections served at once; more are refused at the door. Each node keeps one (and
    /// `storectl` one while it runs), so the default leaves room for clusters of 10,000s.
    pub max_connections: usize,
}

/// Default of [`SchedulerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 32_768;

impl SchedulerConfig {
    pub fn new(listen: SocketAddr, certs: CertPaths) -> Self {
        Self {
            listen,
            certs,
            lease: DEFAULT_LEASE,
            check_node_names: true,
            metrics_addr: None,
            default_inbound_bytes_per_second: DEFAULT_INBOUND_BYTES_PER_SECOND,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot load the scheduler's TLS identity: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
    /// Bumped whenever an object becomes available, so `Wait`s re-check.
    available: watch::Sender<u64>,
    check_node_names: bool,
    metrics: SchedulerMetrics,
    /// Placement state (bandwidth estimates, load of past placements). Locked after the
    /// table when both are needed.
    planner: Mutex<Planner>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Table methods leave it consistent at every return; a panic elsewhere while the lock
        // was held does not poison the data itself.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn planner(&self) -> MutexGuard<'_, Planner> {
        // Planner methods leave it consistent at every return, as the table's do.
        self.planner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, effects: Vec<Effect>) {
        let mut wake = false;
        for effect in effects {
            match effect {
                Effect::NodeExpired(node) => info!(%node, "node lease expired; dropped with its locations"),
                Effect::ObjectAvailable(name) => {
                    debug!(%name, "object available");
                    wake = true;
                }
                Effect::ObjectUnavailable(name) => info!(%name, "no complete copy of the object remains"),
            }
        }
        if wake {
            self.available.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Answers every request but `Wait`.
    fn handle(&self, peer: &Peer, req: SchedulerRequest) -> SchedulerResponse {
        let now = Instant::now();
        let result = match req {
            SchedulerRequest::Register { mut node, holdings } => self.check_identity(peer, &node.id).and_then(|()| {
                if node.addr.ip().is_unspecified() {
                    // The node listens on every address: reach it where it came from.
                    node.addr.set_ip(peer.remote.ip().to_canonical());
                }
                let (id, addr, count) = (node.id.clone(), node.addr, holdings.len());
                let mut table = self.table();
                let replaced = table.node(&id).is_some();
                let registered = table.register(now, node, holdings).map_err(Refusal::from)?;
                drop(table);
                info!(node = %id, %addr, holdings = count, replaced, "node registered");
                for refused in &registered.refused {
                    warn!(node = %id, "a holding left out of the registration: {refused}");
                }
                Ok(registered.effects)
            }),
            SchedulerRequest::Heartbeat { node, free } => self
                .check_identity(peer, &node)
                .and_then(|()| self.table().heartbeat(now, &node, free).map(|()| Vec::new()).map_err(Refusal::from)),
            SchedulerRequest::Announce { node, holding } => self
                .check_identity(peer, &node)
                .and_then(|()| self.table().announce(now, &node, holding).map_err(Refusal::from)),
            SchedulerRequest::Withdraw { node, name } => self
                .check_identity(peer, &node)
                .and_then(|()| self.table().withdraw(now, &node, &name).map_err(Refusal::from)),
            SchedulerRequest::Locate { name } => {
                self.metrics.lookup();
                return SchedulerResponse::Located(self.table().locate(&name));
            }
            SchedulerRequest::Nodes => return SchedulerResponse::Nodes(self.table().nodes(now)),
            SchedulerRequest::Place { spec } => return self.place(now, spec),
            SchedulerRequest::TransferReport { node, report } => self.check_identity(peer, &node).map(|()| {
                let mut planner = self.planner();
                planner.observe_transfer(&node, &report);
                debug!(%node, name = %report.name, bytes = report.bytes, seconds = report.seconds,
                    estimate = ?planner.bandwidth(&node), "transfer reported");
                Vec::new()
            }),
            SchedulerRequest::Wait { .. } => {
                return SchedulerResponse::Error { message: "wait is not answered here".into() };
            }
        };
        match result {
            Ok(effects) => {
                self.publish(effects);
                SchedulerResponse::Ok
            }
            Err(Refusal::UnknownNode) => SchedulerResponse::UnknownNode,
            Err(Refusal::Conflict { name, known, holder }) => {
                warn!(remote = %peer.remote, %name, %holder, "a holding of other content than the cluster's refused");
                SchedulerResponse::Conflict { name, known, holder }
            }
            Err(Refusal::Other(message)) => {
                warn!(remote = %peer.remote, %message, "request refused");
                SchedulerResponse::Error { message }
            }
        }
    }

    /// Answers `Place`: builds each node's view from the table (bytes held of the inputs,
    /// labels, resources) and the planner (bandwidth, queue), places and records the tasks.
    fn place(&self, now: Instant, spec: PlaceSpec) -> SchedulerResponse {
        let refuse = |message: String| SchedulerResponse::Error { message };
        if spec.count == 0 || spec.count > MAX_PLACE_COUNT {
            return refuse(format!("count must be between 1 and {MAX_PLACE_COUNT}, not {}", spec.count));
        }
        if !(spec.task_seconds.is_finite() && (0.0..=MAX_TASK_SECONDS).contains(&spec.task_seconds)) {
            return refuse(format!("task seconds must be between 0 and {MAX_TASK_SECONDS}"));
        }
        let table = self.table();
        let mut needs = Vec::with_capacity(spec.needs.len());
        let mut held: BTreeMap<NodeId, BTreeMap<String, u64>> = BTreeMap::new();
        for name in &spec.needs {
            if let Err(e) = store_client::name::validate(name) {
                return refuse(format!("invalid object name {name:?}: {e}"));
            }
            if needs.iter().any(|(n, _)| n == name) {
                continue;
            }
            // Placement is about moving data that exists; an input nobody holds would be a
            // wait of unknown length anywhere.
            let Some((size, by_node)) = table.held_bytes(name) else {
                return refuse(format!("no node holds {name:?}"));
            };
            needs.push((name.clone(), size));
            for (node, bytes) in by_node {
                held.entry(node).or_default().insert(name.clone(), bytes);
            }
        }
        let infos: BTreeMap<NodeId, NodeInfo> = table.node_infos().map(|i| (i.id.clone(), i.clone())).collect();
        drop(table);
        let req = PlacementRequest {
            needs,
            labels: spec.labels,
            resources: spec.resources,
            pinned: spec.pinned,
            count: spec.count,
            task_seconds: spec.task_seconds,
        };
        let mut planner = self.planner();
        let views: Vec<_> =
            infos.values().map(|i| planner.view(now, i, held.remove(&i.id).unwrap_or_default())).collect();
        let (tasks, ranked) = planner.place(now, &req, &views);
        drop(planner);
        for _ in &tasks {
            self.metrics.placement();
        }
        let wire = |c: Candidate| {
            let addr = infos.get(&c.node).map(|i| i.addr)?;
            Some(NodeEstimate {
                node: c.node,
                addr,
                missing_bytes: c.missing_bytes,
                missing: c.missing,
                transfer_seconds: c.transfer_seconds,
                queued_seconds: c.queued_seconds,
                estimated_start_seconds: c.estimated_start_seconds,
                inbound_bytes_per_second: c.bandwidth,
                bandwidth_assumed: c.bandwidth_assumed,
            })
        };
        debug!(tasks = tasks.len(), candidates = ranked.len(), "placed");
        SchedulerResponse::Placed(Placement {
            tasks: tasks.into_iter().filter_map(wire).collect(),
            ranked: ranked.into_iter().filter_map(wire).collect(),
        })
    }

    fn check_identity(&self, peer: &Peer, node: &str) -> Result<(), Refusal> {
        if !self.check_node_names {
            return Ok(());
        }
        let Some(cert) = &peer.cert else {
            return Err(Refusal::Other("the connection has no client certificate".into()));
        };
        let name = ServerName::try_from(node)
            .map_err(|_| Refusal::Other(format!("node id {node:?} is not a DNS name or an IP address")))?;
        let cert = webpki::EndEntityCert::try_from(cert.as_ref())
            .map_err(|e| Refusal::Other(format!("cannot parse the client certificate: {e}")))?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|_| Refusal::Other(format!("the client certificate is not valid for node {node:?}")))
    }

    /// Answers `Wait`: `Located` as soon as a complete copy exists, or at the timeout.
    async fn wait(&self, name: String, timeout_ms: u64) -> SchedulerResponse {
        self.metrics.lookup();
        if let Err(e) = store_client::name::validate(&name) {
            return SchedulerResponse::Error { message: format!("invalid object name {name:?}: {e}") };
        }
        let mut changes = self.available.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms).min(MAX_WAIT);
        loop {
            // Subscribed before checking, so an announce in between is not missed.
            if self.table().is_available(&name) {
                break;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        SchedulerResponse::Located(self.table().locate(&name))
    }
}

enum Refusal {
    UnknownNode,
    Conflict { name: String, known: store_client::Digest, holder: String },
    Other(String),
}

impl From<TableError> for Refusal {
    fn from(e: TableError) -> Self {
        match e {
            TableError::UnknownNode(_) => Refusal::UnknownNode,
            TableError::Conflict { name, known, holder } => Refusal::Conflict { name, known, holder },
            other => Refusal::Other(other.to_string()),
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
struct Peer {
    remote: SocketAddr,
    cert: Option<Arc<CertificateDer<'static>>>,
}

fn peer_certificate(conn: &quinn::Connection) -> Option<Arc<CertificateDer<'static>>> {
    let chain = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next().map(Arc::new)
}

/// A scheduler whose endpoint is bound and accepting.
#[derive(Debug)]
pub struct Scheduler {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    lease: Duration,
    max_connections: usize,
    shared: Arc<Shared>,
    metrics_server: Option<MetricsServer>,
}

impl Scheduler {
    /// Loads the identity and binds the QUIC endpoint. Must be called inside a tokio runtime.
    pub fn bind(config: SchedulerConfig) -> Result<Self, ServerError> {
        let identity = Identity::load(&config.certs)?;
        let server_config = identity.quic_server(SCHEDULER_ALPN, tls::control_transport())?;
        let bind_err = |source| ServerError::Bind { addr: config.listen, source };
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let metrics_server = match config.metrics_addr {
            None => None,
            Some(addr) => Some(MetricsServer::bind(addr).map_err(|source| ServerError::Metrics { addr, source })?),
        };
        info!(%local_addr, lease_ms = config.lease.as_millis(), "scheduler listening");
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::new(config.lease)),
            available: watch::channel(0).0,
            check_node_names: config.check_node_names,
            metrics: SchedulerMetrics::new(),
            planner: Mutex::new(Planner::new(config.default_inbound_bytes_per_second)),
        });
        let max_connections = config.max_connections;
        Ok(Self { endpoint, local_addr, lease: config.lease, max_connections, shared, metrics_server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled; then closes the endpoint (and every connection,
    /// which ends pending `Wait`s) and returns once every task has finished.
    pub async fn run(self, shutdown: CancellationToken) {
        // Our own token, so that an endpoint closed under us stops our tasks and not the caller's.
        let shutdown = shutdown.child_token();
        let tracker = TaskTracker::new();
        let slots =
            Arc::new(tokio::sync::Semaphore::new(self.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS)));
        tracker.spawn(expire_leases(self.shared.clone(), self.lease, shutdown.clone()));
        if let Some(server) = self.metrics_server {
            let shared = self.shared.clone();
            let render: Render = Arc::new(move || {
                shared.metrics.refresh(&shared.table());
                shared.metrics.render()
            });
            let stop = shutdown.clone();
            tracker.spawn(server.run(render, async move { stop.cancelled().await }));
        }
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(remote = %incoming.remote_address(), "refused a connection: {} already open", self.max_connections);
                incoming.refuse();
                continue;
            };
            let serve = serve_connection(self.shared.clone(), incoming, shutdown.clone(), tracker.clone());
            tracker.spawn(async move {
                let _slot = slot;
                serve.await;
            });
        }
        shutdown.cancel();
        store_service::notify_stopping("stopping");
        self.endpoint.close(quinn::VarInt::from_u32(0), b"scheduler shutting down");
        tracker.close();
        tracker.wait().await;
        self.endpoint.wait_idle().await;
        info!("scheduler stopped");
    }
}

/// Drops nodes whose lease passed, waking up when the earliest lease ends.
async fn expire_leases(shared: Arc<Shared>, lease: Duration, shutdown: CancellationToken) {
    loop {
        let now = tokio::time::Instant::now();
        let next = shared.table().next_expiry().map(tokio::time::Instant::from_std).unwrap_or(now + lease);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.max(now + MIN_EXPIRY_PAUSE)) => {}
        }
        let effects = shared.table().expire(Instant::now());
        shared.publish(effects);
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let remote = incoming.remote_address();
    let conn = tokio::select! {
        _ = shutdown.cancelled() => return,
        conn = incoming => conn,
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%remote, error = %e, "connection refused or failed during the handshake");
            return;
        }
    };
    let peer = Peer { remote, cert: peer_certificate(&conn) };
    debug!(%remote, "connection established");
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                tracker.spawn(serve_stream(shared.clone(), peer.clone(), send, recv, shutdown.clone()));
            }
            Err(e) => {
                debug!(%remote, error = %e, "connection ended");
                break;
            }
        }
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    peer: Peer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    let req = match tokio::time::timeout(REQUEST_READ_TIMEOUT, rpc::read_frame::<SchedulerRequest>(&mut recv)).await {
        Ok(Ok(req)) => req,
        Ok(Err(RpcError::Malformed(message))) => {
            warn!(remote = %peer.remote, %message, "malformed request");
            let resp = SchedulerResponse::Error { message: format!("malformed request: {message}") };
            respond(&peer, &mut send, &resp).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(remote = %peer.remote, error = %e, "cannot read request");
            return;
        }
        Err(_) => {
            debug!(remote = %peer.remote, "no request within the timeout");
            return;
        }
    };
    let resp = match req {
        SchedulerRequest::Wait { name, timeout_ms } => tokio::select! {
            _ = shutdown.cancelled() => return,
            resp = shared.wait(name, timeout_ms) => resp,
        },
        other => shared.handle(&peer, other),
    };
    respond(&peer, &mut send, &resp).await;
}

async fn respond(peer: &Peer, send: &mut quinn::SendStream, resp: &SchedulerResponse) {
    if let Err(e) = rpc::write_frame(send, resp).await {
        debug!(remote = %peer.remote, error = %e, "cannot send response");
        return;
    }
    let _ = send.finish();
}
