//! Async client of the scheduler: what daemons (and tests) use to register, heartbeat,
//! announce and withdraw holdings, report transfers, locate objects or wait for them, and
//! place tasks.
//!
//! One QUIC connection, opened lazily and shared by concurrent calls; each call is one
//! request on its own stream ([`crate::rpc`]). Every request is idempotent (register and
//! announce replace state, the rest are queries or removals), so a call that fails because
//! the connection dropped or the scheduler went silent is retried once on a fresh connection:
//! a restarted scheduler is reached transparently. It then answers
//! [`SchedulerClientError::UnknownNode`] to heartbeats and announces, and the caller registers
//! again with everything it holds.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::manifest::Digest;
use crate::rpc::{self, RpcError};
use crate::wire::node::{Holding, Location, NodeId, NodeInfo, NodeStatus};
use crate::wire::scheduler::{SchedulerRequest, SchedulerResponse};

/// How long one attempt of a request (or of a connection) may take by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait a client asks for (longer ones are shortened; the scheduler does the same).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Error)]
pub enum SchedulerClientError {
    /// The scheduler does not know the node (it restarted, or the lease expired).
    #[error("the scheduler does not know this node: register again with everything it holds")]
    UnknownNode,
    /// No complete copy of the object appeared anywhere before the wait's timeout.
    #[error("no complete copy of {0:?} appeared in time")]
    NotAvailable(String),
    /// The scheduler refused the request (invalid input, or a node name the connection's
    /// certificate does not vouch for).
    #[error("the scheduler refused the request: {0}")]
    Refused(String),
    /// Another node holds the name with other content: one name, one content, cluster-wide.
    #[error("{name:?} is bound to other content in the cluster: {holder} holds root {known}")]
    Conflict { name: String, known: Digest, holder: NodeId },
    #[error("unexpected answer from the scheduler: {0}")]
    UnexpectedResponse(String),
    #[error("scheduler request failed: {0}")]
    Rpc(#[from] RpcError),
}

type Result<T, E = SchedulerClientError> = std::result::Result<T, E>;

/// A connection to the scheduler that reconnects when needed. Cheap to share behind an `Arc`:
/// every method takes `&self`.
#[derive(Debug)]
pub struct SchedulerClient {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    config: quinn::ClientConfig,
    request_timeout: Duration,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl SchedulerClient {
    /// A client that connects on first use (so a daemon may start before the scheduler).
    /// `server_name` is the name in the scheduler's certificate; `config` comes from
    /// [`crate::tls::Identity::quic_client`] with [`crate::wire::scheduler::SCHEDULER_ALPN`].
    pub fn new(endpoint: &quinn::Endpoint, addr: SocketAddr, server_name: &str, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint: endpoint.clone(),
            addr,
            server_name: server_name.to_owned(),
            config,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Like [`SchedulerClient::new`], but connects now, so an unreachable scheduler or a
    /// failed handshake is reported here.
    ///
    /// With TLS 1.3 the server checks our certificate after the client considers the
    /// handshake done, so a scheduler that refuses our certificate may only show on the
    /// first request.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<Self> {
        let client = Self::new(endpoint, addr, server_name, config);
        client.connection().await?;
        Ok(client)
    }

    /// Sets how long one attempt of a request (or of a connection) may take. A node's
    /// heartbeat loop wants this below its lease.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers the node with everything it holds, replacing what the scheduler knew of it.
    pub async fn register(&self, node: NodeInfo, holdings: Vec<Holding>) -> Result<()> {
        self.expect_ok(SchedulerRequest::Register { node, holdings }).await
    }

    /// Renews the node's lease. [`SchedulerClientError::UnknownNode`] means: register again.
    pub async fn heartbeat(&self, node: &str, free: u64) -> Result<()> {
        self.expect_ok(SchedulerRequest::Heartbeat { node: node.to_owned(), free }).await
    }

    /// Reports that the node holds (part of) an object, replacing what was known of it.
    pub async fn announce(&self, node: &str, holding: Holding) -> Result<()> {
        self.expect_ok(SchedulerRequest::Announce { node: node.to_owned(), holding }).await
    }

    /// Reports that the node no longer holds the object.
    pub async fn withdraw(&self, node: &str, name: &str) -> Result<()> {
        self.expect_ok(SchedulerRequest::Withdraw { node: node.to_owned(), name: name.to_owned() }).await
    }

    /// Holders of the object: complete ones first, then partial ones by chunks held.
    pub async fn locate(&self, name: &str) -> Result<Vec<Location>> {
        let req = SchedulerRequest::Locate { name: name.to_owned() };
        match self.exchange(|| (req.clone(), self.request_timeout)).await? {
            SchedulerResponse::Located(locations) => Ok(locations),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until some node holds the whole object, then returns its holders as
    /// [`locate`](Self::locate) does; [`SchedulerClientError::NotAvailable`] after `timeout`.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Result<Vec<Location>> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let make = || {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Rounded up, so the scheduler never answers before our deadline.
            let timeout_ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            // The scheduler answers at its own timeout; give the answer time to arrive.
            (SchedulerRequest::Wait { name: name.to_owned(), timeout_ms }, left.saturating_add(self.request_timeout))
        };
        match self.exchange(make).await? {
            SchedulerResponse::Located(locations) if locations.iter().any(Location::is_complete) => Ok(locations),
            SchedulerResponse::Located(_) => Err(SchedulerClientError::NotAvailable(name.to_owned())),
            other => Err(unexpected(other)),
        }
    }

    /// Every registered node.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        match self.exchange(|| (SchedulerRequest::Nodes, self.request_timeout)).await? {
            SchedulerResponse::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// Chooses nodes for tasks reading `spec.needs` (see [`crate::wire::placement`]). Not strictly
    /// idempotent: a retry after a lost answer counts the tasks twice in the queue estimate,
    /// which only makes the nodes look a little busier until that work would have drained.
    pub async fn place(&self, spec: &crate::wire::placement::PlaceSpec) -> Result<crate::wire::placement::Placement> {
        let req = SchedulerRequest::Place { spec: spec.clone() };
        match self.exchange(|| (req.clone(), self.request_timeout)).await? {
            SchedulerResponse::Placed(placement) => Ok(placement),
            other => Err(unexpected(other)),
        }
    }

    /// Reports a finished pull into `node`, for the scheduler's bandwidth estimate.
    pub async fn report_transfer(&self, node: &str, report: crate::wire::placement::TransferReport) -> Result<()> {
        self.expect_ok(SchedulerRequest::TransferReport { node: node.to_owned(), report }).await
    }

    /// Closes the connection (if open); a later call opens a new one.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close(quinn::VarInt::from_u32(0), b"client closing");
        }
    }

    async fn expect_ok(&self, req: SchedulerRequest) -> Result<()> {
        match self.exchange(|| (req.clone(), self.request_timeout)).await? {
            SchedulerResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a request (built by `make`, with the time its attempt may take) and returns the
    /// answer; `UnknownNode` and `Error` answers become errors. Retries once on a fresh
    /// connection when the attempt failed on a connection that was already open.
    async fn exchange(&self, make: impl Fn() -> (SchedulerRequest, Duration)) -> Result<SchedulerResponse> {
        let mut retried = false;
        loop {
            let (conn, fresh) = self.connection().await?;
            let (req, limit) = make();
            let err = match tokio::time::timeout(limit, rpc::call::<_, SchedulerResponse>(&conn, &req)).await {
                Ok(Ok((SchedulerResponse::UnknownNode, _))) => return Err(SchedulerClientError::UnknownNode),
                Ok(Ok((SchedulerResponse::Error { message }, _))) => {
                    return Err(SchedulerClientError::Refused(message));
                }
                Ok(Ok((SchedulerResponse::Conflict { name, known, holder }, _))) => {
                    return Err(SchedulerClientError::Conflict { name, known, holder });
                }
                Ok(Ok((resp, _))) => return Ok(resp),
                Ok(Err(e @ (RpcError::Malformed(_) | RpcError::TooLarge(_)))) => return Err(e.into()),
                Ok(Err(e)) => e,
                Err(_) => RpcError::Timeout,
            };
            self.forget(&conn).await;
            if fresh || retried {
                return Err(err.into());
            }
            retried = true;
        }
    }

    /// The open connection, or a new one; `true` if it is new.
    /// The cached connection if it is alive, else a new one. The slot is never locked
    /// across the handshake (no lock is held across network I/O); two callers that connect
    /// at once keep the first connection stored.
    async fn connection(&self) -> Result<(quinn::Connection, bool)> {
        let live = |slot: &Option<quinn::Connection>| slot.as_ref().filter(|c| c.close_reason().is_none()).cloned();
        if let Some(conn) = live(&*self.conn.lock().await) {
            return Ok((conn, false));
        }
        let connecting =
            self.endpoint.connect_with(self.config.clone(), self.addr, &self.server_name).map_err(RpcError::from)?;
        let conn = tokio::time::timeout(self.request_timeout, connecting)
            .await
            .map_err(|_| RpcError::Timeout)?
            .map_err(RpcError::from)?;
        let mut slot = self.conn.lock().await;
        if let Some(existing) = live(&slot) {
            conn.close(quinn::VarInt::from_u32(0), b"duplicate");
            return Ok((existing, false));
        }
        *slot = Some(conn.clone());
        Ok((conn, true))
    }

    /// Drops the cached connection if it is `conn`, so the next call reconnects.
    async fn forget(&self, conn: &quinn::Connection) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *slot = None;
        }
    }
}

fn unexpected(resp: SchedulerResponse) -> SchedulerClientError {
    SchedulerClientError::UnexpectedResponse(format!("{resp:?}"))
}
