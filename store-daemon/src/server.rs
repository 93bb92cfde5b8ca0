//! The daemon's listener: binds the socket, checks peers, runs one task per connection and
//! shuts down cleanly.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use store_client::metrics::server::{MetricsServer, Render};
use store_client::wire::object::ErrorCode;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::DaemonConfig;
use crate::connection::{self, Context};
use crate::node::NodeStore;
use crate::store::ConnId;

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

pub use crate::config::ClientLimits;

/// A daemon whose socket is bound and accepting.
#[derive(Debug)]
pub struct Daemon {
    listener: UnixListener,
    ctx: Arc<Context>,
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
        let node = Arc::new(NodeStore::new(&config));
        let cluster = match config.cluster.clone() {
            None => None,
            Some(cc) => {
                let cluster = Cluster::bind(cc, node.clone())?;
                info!(node = %cluster.node_id(), quic = ?cluster.local_addr().ok(), "cluster endpoint bound");
                Some(Arc::new(cluster))
            }
        };
        let metrics_addr = metrics_server.as_ref().and_then(|m| m.local_addr().ok());
        info!(socket = %path.display(), capacity = config.capacity, metrics = ?metrics_addr, "store daemon listening");
        let ctx = Arc::new(Context { config, node, cluster });
        Ok(Self { listener, ctx, metrics_server })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().and_then(|m| m.local_addr().ok())
    }

    pub fn socket_path(&self) -> &Path {
        &self.ctx.config.socket
    }

    /// Serves until `shutdown` is cancelled, then drains: the socket file goes at once (new
    /// clients cannot connect), peers can no longer connect, requests already read finish
    /// and later ones are answered `ShuttingDown`, pulls under way abort without sealing
    /// anything, chunk uploads under way finish. Whatever is still running after
    /// [`DaemonConfig::shutdown_grace`] is cut.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { listener, ctx, metrics_server } = self;
        let tracker = TaskTracker::new();
        let client_slots = Arc::new(Semaphore::new(ctx.config.clients.max_clients.min(Semaphore::MAX_PERMITS)));
        let mut next_conn: ConnId = 0;
        // Scrapes go on while draining; the metrics server stops after everything else.
        let stop_metrics = CancellationToken::new();
        let metrics_task = metrics_server.map(|server| {
            let weak = Arc::downgrade(&ctx.node);
            let render: Render = Arc::new(move || match weak.upgrade() {
                Some(node) => {
                    node.metrics().refresh_store(&node.store());
                    node.metrics().render()
                }
                None => Vec::new(),
            });
            let stop = stop_metrics.clone();
            tokio::spawn(server.run(render, async move { stop.cancelled().await }))
        });
        if let Some(cluster) = &ctx.cluster {
            cluster.start(&shutdown, &tracker);
        }
        if let Some(interval) = store_service::watchdog_interval() {
            let weak = Arc::downgrade(&ctx.node);
            // Taking the store's lock proves no request is wedged holding it (a wedged lock
            // blocks this task too, and the missing pings get the daemon restarted).
            let healthy = move || {
                weak.upgrade().is_some_and(|node| {
                    drop(node.store());
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
                    next_conn += 1;
                    let (ctx, slots, shutdown) = (ctx.clone(), client_slots.clone(), shutdown.clone());
                    tracker.spawn(async move { accept_one(ctx, slots, stream, next_conn, shutdown).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        store_service::notify_stopping("draining");
        info!(grace_s = ctx.config.shutdown_grace.as_secs_f64(), "draining: no new clients or peers");
        drop(listener);
        let _ = std::fs::remove_file(&ctx.config.socket);
        if let Some(cluster) = &ctx.cluster {
            cluster.begin_shutdown();
        }
        tracker.close();
        let drained = async {
            tracker.wait().await;
            if let Some(cluster) = &ctx.cluster {
                cluster.pulls_ended().await;
            }
        };
        if tokio::time::timeout(ctx.config.shutdown_grace, drained).await.is_err() {
            warn!("requests or transfers still running after the shutdown grace; cutting them");
        }
        if let Some(cluster) = &ctx.cluster {
            cluster.close().await;
        }
        stop_metrics.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        info!("store daemon stopped");
    }
}

async fn accept_one(
    ctx: Arc<Context>,
    client_slots: Arc<Semaphore>,
    stream: UnixStream,
    conn_id: ConnId,
    shutdown: CancellationToken,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let timeout = ctx.config.clients.frame_timeout;
    if !ctx.config.allows(cred.uid(), cred.gid()) {
        warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "refusing client not on the allow-list");
        let message = format!("uid {} (gid {}) is not allowed to use this store", cred.uid(), cred.gid());
        connection::refuse(stream, ErrorCode::PermissionDenied, message, timeout).await;
        return;
    }
    let Ok(_slot) = client_slots.try_acquire_owned() else {
        let max = ctx.config.clients.max_clients;
        warn!(uid = cred.uid(), pid = ?cred.pid(), max, "refusing a client: too many connections");
        let message = format!("the daemon serves at most {max} clients at once; try again once one has closed");
        connection::refuse(stream, ErrorCode::LimitExceeded, message, timeout).await;
        return;
    };
    debug!(conn_id, uid = cred.uid(), pid = ?cred.pid(), "client connected");
    let _connected = ctx.node.metrics().client_connection();
    connection::serve(ctx, stream, conn_id, shutdown).await;
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
