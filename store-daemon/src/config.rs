//! Daemon configuration, built by the binary from flags and `STORE_*` variables: the
//! store, its local clients, its S3 access and its place in a cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use store_client::tls::CertPaths;
use store_client::wire::node::NodeId;

use crate::s3_ingest::S3AllowList;

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
    pub cluster: Option<ClusterConfig>,
    /// TCP address of the Prometheus `/metrics` endpoint; `None` serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// On shutdown, how long requests and transfers under way may take to finish before
    /// they are cut.
    pub shutdown_grace: std::time::Duration,
    /// S3 client settings: the `--s3-*` flags and their `STORE_S3_*` variables, read once
    /// by the command line ([`crate::cli`]); the defaults otherwise.
    pub s3: store_client::s3::S3Config,
    /// Limits on local clients (connections, unsealed objects, frame timeout).
    pub clients: ClientLimits,
    /// Which S3 objects local clients and peers may make this daemon read (`--s3-allow`).
    pub s3_allow: S3AllowList,
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
            s3: store_client::s3::S3Config::default(),
            clients: ClientLimits::default(),
            s3_allow: S3AllowList::default(),
        }
    }

    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.allow_uids.contains(&uid) || self.allow_gids.contains(&gid)
    }
}

/// Limits on local clients, so that no client (or crowd of them) can exhaust the daemon for
/// the others. Capacity is the other limit: unsealed objects count against it like sealed
/// ones.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Connections served at once; one more is told `LimitExceeded` and closed.
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
