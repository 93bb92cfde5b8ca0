//! The typed client of other daemons: one QUIC connection per peer, reused while it lives
//! and never waited on under a lock, and one method per request that answers the request's
//! own result or a [`PeerError`]. Chunk transfers, which stream bytes after the answer, are
//! read by the pull's transfer loop on a [`PeerClient::connect`]ed connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use store_client::chunkset::ChunkSet;
use store_client::manifest::{Digest, Manifest};
use store_client::rpc::{self, RpcError};
use store_client::wire::node::{NodeId, PullReport};
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PeerRequest, PeerResponse};
use thiserror::Error;

use crate::metrics::{DaemonMetrics, Direction};

/// Longest a `Have` request waits for a new chunk before it is answered anyway: the
/// server keeps to it, and a watcher that hears nothing for longer counts the peer as gone.
pub const HAVE_WAIT: Duration = Duration::from_secs(1);
/// Longest a connection handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to a request's own timeout for the round trip around it.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Why a request to a peer got no answer it could use.
#[derive(Debug, Error, Clone)]
pub enum PeerError {
    #[error("connect to {node} at {addr}: {source}")]
    Connect {
        node: NodeId,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("connect to {node} at {addr}: {source}")]
    Handshake {
        node: NodeId,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("connect to {node} at {addr}: timed out")]
    ConnectTimeout { node: NodeId, addr: SocketAddr },
    #[error("{node}: {source}")]
    Rpc {
        node: NodeId,
        #[source]
        source: Arc<RpcError>,
    },
    #[error("{node} did not answer in time")]
    Timeout { node: NodeId },
    /// The peer answered with an error of its own.
    #[error("{node}: {message}")]
    Refused { node: NodeId, message: String },
    #[error("{node} answered {answer}")]
    Unexpected { node: NodeId, answer: String },
}

impl PeerError {
    /// Whether the peer looks gone (no connection, no answer), not just unwilling.
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, PeerError::Refused { .. } | PeerError::Unexpected { .. })
    }

    fn unexpected(node: &str, answer: PeerResponse) -> Self {
        PeerError::Unexpected { node: node.to_owned(), answer: format!("{answer:?}") }
    }
}

/// What a holder's `Manifest` answer carries.
#[derive(Debug)]
pub struct ManifestAnswer {
    pub manifest: Manifest,
    pub held: ChunkSet,
    pub origin: Option<S3Origin>,
}

/// What a node's first phase of a cooperative fetch answers.
#[derive(Debug, Clone)]
pub struct ShareFetched {
    pub hashes: Vec<Digest>,
    pub s3_bytes: u64,
    pub seconds: f64,
}

/// Connections to peers, and requests over them.
#[derive(Debug)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    connections: tokio::sync::Mutex<HashMap<NodeId, quinn::Connection>>,
    metrics: Arc<DaemonMetrics>,
}

impl PeerClient {
    pub fn new(endpoint: quinn::Endpoint, metrics: Arc<DaemonMetrics>) -> Self {
        Self { endpoint, connections: tokio::sync::Mutex::new(HashMap::new()), metrics }
    }

    /// A connection to `node` at `addr`, reusing a live one. The table lock is never held
    /// across the handshake: a node that announced an unreachable address costs only the
    /// requests that ask it, never the others.
    pub async fn connect(&self, node: &str, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let live = |peers: &HashMap<NodeId, quinn::Connection>| {
            peers.get(node).filter(|c| c.close_reason().is_none() && c.remote_address() == addr).cloned()
        };
        if let Some(conn) = live(&*self.connections.lock().await) {
            return Ok(conn);
        }
        let connecting = self.endpoint.connect(addr, node).map_err(|source| PeerError::Connect {
            node: node.to_owned(),
            addr,
            source,
        })?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| PeerError::ConnectTimeout { node: node.to_owned(), addr })?
            .map_err(|source| PeerError::Handshake { node: node.to_owned(), addr, source })?;
        {
            let mut peers = self.connections.lock().await;
            // Two requests may have connected at once: keep the first, close ours.
            if let Some(existing) = live(&peers) {
                conn.close(quinn::VarInt::from_u32(0), b"duplicate");
                return Ok(existing);
            }
            peers.insert(node.to_owned(), conn.clone());
        }
        let open = self.metrics.peer_connection(Direction::Out);
        let closed = conn.clone();
        tokio::spawn(async move {
            closed.closed().await;
            drop(open);
        });
        Ok(conn)
    }

    /// Closes `conn` and forgets it as the connection to `node` (unless another replaced it
    /// already), so that the next request to `node` opens a new one. A holder that restarted
    /// at the same address never answers on its predecessor's connections: they are not
    /// closed (the new process's stateless resets carry another key, and are ignored), so
    /// without this every request on them would wait for the idle timeout (10 s).
    pub async fn forget(&self, node: &str, conn: &quinn::Connection) {
        {
            let mut peers = self.connections.lock().await;
            if peers.get(node).is_some_and(|c| c.stable_id() == conn.stable_id()) {
                peers.remove(node);
            }
        }
        conn.close(quinn::VarInt::from_u32(0), b"unresponsive");
    }

    /// Sends `request` on `conn` and reads the answer frame, within `limit`.
    pub async fn call_on(
        conn: &quinn::Connection,
        node: &str,
        request: &PeerRequest,
        limit: Duration,
    ) -> Result<(PeerResponse, quinn::RecvStream), PeerError> {
        match tokio::time::timeout(limit, rpc::call::<_, PeerResponse>(conn, request)).await {
            Ok(Ok((PeerResponse::Error { message }, _))) => Err(PeerError::Refused { node: node.to_owned(), message }),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(PeerError::Rpc { node: node.to_owned(), source: Arc::new(e) }),
            Err(_) => Err(PeerError::Timeout { node: node.to_owned() }),
        }
    }

    /// Sends one request to a peer and returns its answer, within `timeout` (plus a margin
    /// for the round trip).
    async fn ask(
        &self,
        node: &str,
        addr: SocketAddr,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let limit = timeout + ANSWER_MARGIN;
        let ask = async {
            let conn = self.connect(node, addr).await?;
            Self::call_on(&conn, node, request, limit).await.map(|(answer, _)| answer)
        };
        tokio::time::timeout(limit, ask).await.unwrap_or_else(|_| Err(PeerError::Timeout { node: node.to_owned() }))
    }

    /// Has `node` pull `name` into its store.
    pub async fn pull(
        &self,
        node: &str,
        addr: SocketAddr,
        name: &str,
        timeout: Duration,
        relay: bool,
    ) -> Result<PullReport, PeerError> {
        let request = PeerRequest::Pull { name: name.to_owned(), timeout_ms: timeout.as_millis() as u64, relay };
        match self.ask(node, addr, &request, timeout).await? {
            PeerResponse::Pulled(report) => Ok(report),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// Asks `node` to queue `names` for prefetching; answers how many it queued.
    pub async fn prefetch(
        &self,
        node: &str,
        addr: SocketAddr,
        names: Vec<String>,
        timeout: Duration,
    ) -> Result<u32, PeerError> {
        let request = PeerRequest::Prefetch { names };
        match self.ask(node, addr, &request, timeout).await? {
            PeerResponse::Queued { count } => Ok(count),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// First phase of a cooperative fetch on `node`: read `chunks` of `origin` from S3.
    // The request's own fields, spelled out as at every other request here.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_share(
        &self,
        node: &str,
        addr: SocketAddr,
        name: &str,
        origin: S3Origin,
        chunk_size: u64,
        chunks: Range<u64>,
        timeout: Duration,
    ) -> Result<ShareFetched, PeerError> {
        let request =
            PeerRequest::FetchShare { name: name.to_owned(), origin, chunk_size, first: chunks.start, end: chunks.end };
        match self.ask(node, addr, &request, timeout).await? {
            PeerResponse::ShareFetched { hashes, s3_bytes, seconds } => Ok(ShareFetched { hashes, s3_bytes, seconds }),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// Second phase of a cooperative fetch on `node`: receive the object with `manifest`.
    pub async fn complete_share(
        &self,
        node: &str,
        addr: SocketAddr,
        name: &str,
        manifest: Manifest,
        origin: S3Origin,
        timeout: Duration,
    ) -> Result<PullReport, PeerError> {
        let timeout_ms = timeout.as_millis() as u64;
        let request = PeerRequest::CompleteShare { name: name.to_owned(), manifest, origin, timeout_ms };
        match self.ask(node, addr, &request, timeout).await? {
            PeerResponse::Pulled(report) => Ok(report),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// Has `node` forget its staged share of `name`.
    pub async fn drop_share(
        &self,
        node: &str,
        addr: SocketAddr,
        name: &str,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        match self.ask(node, addr, &PeerRequest::DropShare { name: name.to_owned() }, timeout).await? {
            PeerResponse::Dropped => Ok(()),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// The manifest of `name` as `node` holds it, on `conn`, within `limit`.
    pub async fn manifest_on(
        conn: &quinn::Connection,
        node: &str,
        name: &str,
        limit: Duration,
    ) -> Result<ManifestAnswer, PeerError> {
        let request = PeerRequest::Manifest { name: name.to_owned() };
        match Self::call_on(conn, node, &request, limit).await?.0 {
            PeerResponse::Manifest { manifest, held, origin, .. } => Ok(ManifestAnswer { manifest, held, origin }),
            other => Err(PeerError::unexpected(node, other)),
        }
    }

    /// What `node` holds of `name` once it holds more than `known` chunks (or after its
    /// wait), and its uploads in flight, on `conn`, within `limit`.
    pub async fn have_on(
        conn: &quinn::Connection,
        node: &str,
        name: &str,
        known: u64,
        limit: Duration,
    ) -> Result<(ChunkSet, u32), PeerError> {
        let request = PeerRequest::Have { name: name.to_owned(), known };
        match Self::call_on(conn, node, &request, limit).await?.0 {
            PeerResponse::Have { held, uploads } => Ok((held, uploads)),
            other => Err(PeerError::unexpected(node, other)),
        }
    }
}
