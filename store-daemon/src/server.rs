//! The daemon's listener: binds the socket, checks peers, runs one task per connection and
//! shuts down cleanly.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use store_client::metrics::server::{MetricsServer, Render};
use store_client::wire::object::ErrorCode;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::DaemonConfig;
use crate::connection;
use crate::metrics::DaemonMetrics;
use crate::store::Store;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("another daemon is already listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot bind {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Limits on local clients, so that no client (or crowd of them) can exhaust the daemon for
/// the others. Capacity is the other limit: unsealed objects count against it like sealed
/// ones.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Connections served at once; one more is told [`ErrorCode::LimitExceeded`] and closed.
    pub max_clients: usize,
    /// Unsealed objects (created, neither sealed nor aborted) one connection may hold.
    pub max_unsealed: usize,
    /// How long a request frame may take to arrive once its first byte did, and a response
    /// to be taken by the client; a connection that exceeds it is cut. Idle connections
    /// (between frames) are never cut.
    pub frame_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self { max_clients: 4096, max_unsealed: 64, frame_timeout: Duration::from_secs(30) }
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: DaemonConfig,
    store: Mutex<Store>,
    /// One permit per connection served ([`ClientLimits::max_clients`]).
    client_slots: Arc<Semaphore>,
    /// Bumped on every seal, so waiters for a name re-check.
    sealed: watch::Sender<u64>,
    next_conn: std::sync::atomic::AtomicU64,
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    metrics: Arc<DaemonMetrics>,
    s3: crate::s3_ingest::S3Ingest,
}

impl Shared {
    pub fn new(config: DaemonConfig) -> Self {
        let store = Store::new(config.capacity, config.chunk_size);
        let metrics = Arc::new(DaemonMetrics::new());
        let s3 = crate::s3_ingest::S3Ingest::new(config.s3.clone(), config.s3_allow.clone(), metrics.clone());
        let client_slots = Arc::new(Semaphore::new(config.clients.max_clients.min(Semaphore::MAX_PERMITS)));
        Self {
            config,
            store: Mutex::new(store),
            client_slots,
            sealed: watch::channel(0).0,
            next_conn: 0.into(),
            cluster: std::sync::OnceLock::new(),
            metrics,
            s3,
        }
    }

    pub fn s3(&self) -> &crate::s3_ingest::S3Ingest {
        &self.s3
    }

    pub fn metrics(&self) -> &Arc<DaemonMetrics> {
        &self.metrics
    }

    /// The cluster membership, if this daemon has one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        // Store methods leave it consistent at every return, so a panic elsewhere while the
        // lock was held does not poison the data itself.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An object was sealed here: wake local waiters and tell the scheduler soon.
    pub fn notify_sealed(&self) {
        self.sealed.send_modify(|n| *n += 1);
        self.holdings_changed();
    }

    /// What this node holds changed: the scheduler should hear of it without waiting for
    /// the next periodic sync.
    pub fn holdings_changed(&self) {
        if let Some(cluster) = self.cluster() {
            cluster.sync_soon();
        }
    }

    pub fn subscribe_sealed(&self) -> watch::Receiver<u64> {
        self.sealed.subscribe()
    }
}

/// A daemon whose socket is bound and accepting.
#[derive(Debug)]
pub struct Daemon {
    listener: UnixListener,
    shared: Arc<Shared>,
    metrics_server: Option<MetricsServer>,
}

impl Daemon {
    /// Binds the socket (mode 0660), replacing a stale socket file but never a live daemon.
    /// Must be called inside a tokio runtime.
    pub fn bind(config: DaemonConfig) -> Result<Self, ServerError> {
        let path = config.socket.clone();
        let bind_err = |source| ServerError::Bind { path: path.clone(), source };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ServerError::AlreadyRunning(path));
            }
            std::fs::remove_file(&path).map_err(bind_err)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        let metrics_server = match config.metrics_addr {
            None => None,
            Some(addr) => Some(MetricsServer::bind(addr).map_err(|source| ServerError::Metrics { addr, source })?),
        };
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        let cluster_config = config.cluster.clone();
        let shared = Arc::new(Shared::new(config));
        if let Some(cc) = cluster_config {
            let cluster = Cluster::bind(cc, Arc::downgrade(&shared))?;
            info!(node = %cluster.node_id(), quic = ?cluster.local_addr().ok(), "cluster endpoint bound");
            let _ = shared.cluster.set(cluster);
        }
        let metrics_addr = metrics_server.as_ref().and_then(|m| m.local_addr().ok());
        info!(socket = %path.display(), capacity = shared.config.capacity, metrics = ?metrics_addr, "store daemon listening");
        Ok(Self { listener, shared, metrics_server })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().and_then(|m| m.local_addr().ok())
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn socket_path(&self) -> &Path {
        &self.shared.config.socket
    }

    /// Serves until `shutdown` is cancelled, then drains: the socket file goes at once (new
    /// clients cannot connect), peers can no longer connect, requests already read finish
    /// and later ones are answered `ShuttingDown`, pulls under way abort without sealing
    /// anything, chunk uploads under way finish. Whatever is still running after
    /// [`DaemonConfig::shutdown_grace`] is cut.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { listener, shared, metrics_server } = self;
        let tracker = TaskTracker::new();
        // Scrapes go on while draining; the metrics server stops after everything else.
        let stop_metrics = CancellationToken::new();
        let metrics_task = metrics_server.map(|server| {
            let weak = Arc::downgrade(&shared);
            let render: Render = Arc::new(move || match weak.upgrade() {
                Some(shared) => {
                    shared.metrics.refresh_store(&shared.store());
                    shared.metrics.render()
                }
                None => Vec::new(),
            });
            let stop = stop_metrics.clone();
            tokio::spawn(server.run(render, async move { stop.cancelled().await }))
        });
        if let Some(cluster) = shared.cluster() {
            tracker.spawn(crate::cluster::serve::accept_loop(cluster.clone(), shutdown.clone(), tracker.clone()));
            tracker.spawn(crate::cluster::announce::run(cluster.clone(), shutdown.clone()));
        }
        if let Some(interval) = store_service::watchdog_interval() {
            let weak = Arc::downgrade(&shared);
            // Taking the store's lock proves no request is wedged holding it (a wedged lock
            // blocks this task too, and the missing pings get the daemon restarted).
            let healthy = move || {
                weak.upgrade().is_some_and(|s| {
                    drop(s.store());
                    true
                })
            };
            tracker.spawn(store_service::watchdog(interval, shutdown.clone(), healthy));
        }
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move { accept_one(shared, stream, shutdown).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        store_service::notify_stopping("draining");
        info!(grace_s = shared.config.shutdown_grace.as_secs_f64(), "draining: no new clients or peers");
        drop(listener);
        let _ = std::fs::remove_file(&shared.config.socket);
        if let Some(cluster) = shared.cluster() {
            cluster.begin_shutdown();
        }
        tracker.close();
        let drained = async {
            tracker.wait().await;
            if let Some(cluster) = shared.cluster() {
                cluster.pulls_ended().await;
            }
        };
        if tokio::time::timeout(shared.config.shutdown_grace, drained).await.is_err() {
            warn!("requests or transfers still running after the shutdown grace; cutting them");
        }
        if let Some(cluster) = shared.cluster() {
            cluster.close().await;
        }
        stop_metrics.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        info!("store daemon stopped");
    }
}

async fn accept_one(shared: Arc<Shared>, stream: UnixStream, shutdown: CancellationToken) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let conn_id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let timeout = shared.config.clients.frame_timeout;
    if !shared.config.allows(cred.uid(), cred.gid()) {
        warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "refusing client not on the allow-list");
        let message = format!("uid {} (gid {}) is not allowed to use this store", cred.uid(), cred.gid());
        connection::refuse(stream, ErrorCode::PermissionDenied, message, timeout).await;
        return;
    }
    let Ok(_slot) = shared.client_slots.clone().try_acquire_owned() else {
        let max = shared.config.clients.max_clients;
        warn!(uid = cred.uid(), pid = ?cred.pid(), max, "refusing a client: too many connections");
        let message = format!("the daemon serves at most {max} clients at once; try again once one has closed");
        connection::refuse(stream, ErrorCode::LimitExceeded, message, timeout).await;
        return;
    };
    debug!(conn_id, uid = cred.uid(), pid = ?cred.pid(), "client connected");
    let _connected = shared.metrics.client_connection();
    connection::serve(shared.clone(), stream, conn_id, shutdown).await;
    debug!(conn_id, "client disconnected");
}

/// Raises the soft open-file limit to the hard one: every object is a descriptor, so the
/// usual soft limit of 1024 would cap the store at about a thousand objects.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
