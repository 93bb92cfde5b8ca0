//! Daemon configuration, built by the binary from flags and `STORE_*` variables.

use std::path::PathBuf;

/// Everything a daemon needs to start.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Unix socket the daemon listens on.
    pub socket: PathBuf,
    /// Byte budget for all objects.
    pub capacity: u64,
    /// Peers whose uid is listed may connect.
    pub allow_uids: Vec<u32>,
    /// Peers whose primary gid is listed may connect.
    pub allow_gids: Vec<u32>,
    /// Chunk size of manifests.
    pub chunk_size: u64,
    /// Threads used to hash large objects.
    pub hash_threads: usize,
    /// Cluster membership; `None` for a stand-alone store.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// TCP address of the Prometheus `/metrics` endpoint; `None` serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// On shutdown, how long requests and transfers under way may take to finish before
    /// they are cut.
    pub shutdown_grace: std::time::Duration,
    /// S3 client settings (`--s3-*` flags); `None` reads the `STORE_S3_*` environment on
    /// first use.
    pub s3: Option<store_client::s3::S3Config>,
    /// Limits on local clients (connections, unsealed objects, frame timeout).
    pub clients: crate::server::ClientLimits,
    /// Which S3 objects local clients and peers may make this daemon read (`--s3-allow`).
    pub s3_allow: crate::s3_ingest::S3AllowList,
}

impl DaemonConfig {
    /// A configuration with the defaults: the daemon's own uid and root may connect.
    pub fn new(socket: PathBuf, capacity: u64) -> Self {
        let own = nix::unistd::geteuid().as_raw();
        let mut allow_uids = vec![own];
        if own != 0 {
            allow_uids.push(0);
        }
        Self {
            socket,
            capacity,
            allow_uids,
            allow_gids: Vec::new(),
            chunk_size: store_client::DEFAULT_CHUNK_SIZE,
            hash_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cluster: None,
            metrics_addr: None,
            shutdown_grace: std::time::Duration::from_secs(30),
            s3: None,
            clients: crate::server::ClientLimits::default(),
            s3_allow: crate::s3_ingest::S3AllowList::default(),
        }
    }

    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.allow_uids.contains(&uid) || self.allow_gids.contains(&gid)
    }
}
