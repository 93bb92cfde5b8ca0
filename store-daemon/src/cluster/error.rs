//! Why joining the cluster, a pull or a cluster query failed, and the code each failure
//! reaches local clients with.

use std::net::SocketAddr;
use std::sync::Arc;

use store_client::scheduler_client::SchedulerClientError;
use store_client::tls::TlsError;
use store_client::wire::object::ErrorCode;
use thiserror::Error;

use super::peers::PeerError;
use crate::s3_ingest::S3IngestError;
use crate::store::StoreError;

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

/// Why a pull or a cluster query failed. Cloned to every requester of a shared pull.
#[derive(Debug, Error, Clone)]
pub enum PullError {
    #[error("no node holds {0:?}")]
    NotFound(String),
    #[error("scheduler unavailable: {0}")]
    Scheduler(Arc<SchedulerClientError>),
    #[error("no holder answered with the manifest of {name:?}: {last_error}")]
    NoManifest { name: String, last_error: ManifestRefused },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pull of {name:?} stalled: {missing} chunks held by no reachable peer")]
    Stalled { name: String, missing: u64 },
    #[error("pull of {0:?} timed out")]
    Timeout(String),
    #[error("i/o error: {0}")]
    Io(Arc<std::io::Error>),
    #[error("cannot seal the received object: {0}")]
    Seal(Arc<store_client::sys::SealError>),
    #[error("the received bytes of {0:?} do not hash to its root; not sealed")]
    NotVerified(String),
    #[error("{0:?} was dropped while it was being received")]
    Vanished(String),
    #[error("a worker task failed: {0}")]
    Worker(Arc<tokio::task::JoinError>),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    S3(Arc<S3IngestError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0:?} is already held in the cluster")]
    AlreadyHeld(String),
    #[error("a share of {0:?} is already staged or being fetched here")]
    ShareBusy(String),
    #[error("the manifest of {0:?} does not match this node's share")]
    ShareMismatch(String),
    #[error("cooperative fetch failed: {0}")]
    Cooperative(String),
}

/// Why the last holder asked for a manifest gave none.
#[derive(Debug, Error, Clone)]
pub enum ManifestRefused {
    #[error("no holder")]
    NoHolder,
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("{0} sent a manifest this node refuses: {1}")]
    Refused(String, store_client::manifest::ManifestError),
    #[error("{0} sent an inconsistent manifest")]
    Inconsistent(String),
}

impl PullError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PullError::NotFound(_) => ErrorCode::NotFound,
            PullError::Scheduler(_) | PullError::NoManifest { .. } | PullError::Stalled { .. } => {
                ErrorCode::ClusterUnavailable
            }
            PullError::Store(e) => e.code(),
            PullError::Timeout(_) => ErrorCode::Timeout,
            PullError::Io(_) | PullError::Seal(_) | PullError::NotVerified(_) => ErrorCode::Io,
            PullError::Vanished(_) | PullError::Worker(_) => ErrorCode::Internal,
            PullError::ShuttingDown => ErrorCode::ShuttingDown,
            PullError::S3(e) => e.code(),
            PullError::BadRequest(_) | PullError::ShareMismatch(_) => ErrorCode::BadRequest,
            PullError::AlreadyHeld(_) => ErrorCode::AlreadyExists,
            PullError::ShareBusy(_) => ErrorCode::Pending,
            PullError::Cooperative(_) => ErrorCode::OriginFailed,
        }
    }
}

impl From<SchedulerClientError> for PullError {
    fn from(e: SchedulerClientError) -> Self {
        PullError::Scheduler(Arc::new(e))
    }
}

impl From<std::io::Error> for PullError {
    fn from(e: std::io::Error) -> Self {
        PullError::Io(Arc::new(e))
    }
}

impl From<S3IngestError> for PullError {
    fn from(e: S3IngestError) -> Self {
        PullError::S3(Arc::new(e))
    }
}

impl From<tokio::task::JoinError> for PullError {
    fn from(e: tokio::task::JoinError) -> Self {
        PullError::Worker(Arc::new(e))
    }
}
