//! Wire types of the cluster: daemon <-> scheduler and daemon <-> daemon messages, carried
//! over QUIC streams as length-prefixed postcard frames ([`crate::frame`]).
//!
//! Every request opens its own bidirectional stream and gets one response frame on it. A
//! chunk response is followed on the same stream by the chunk's raw bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::manifest::{Digest, Manifest};
use crate::protocol::S3Origin;

/// ALPN of daemon <-> daemon connections.
pub const PEER_ALPN: &[u8] = b"store-peer/1";
/// ALPN of daemon <-> scheduler connections.
pub const SCHEDULER_ALPN: &[u8] = b"store-sched/1";

/// A node's name; also the DNS name in its certificate.
pub type NodeId = String;

/// What a node tells the scheduler about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Its QUIC address, reachable by the other nodes.
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub capacity: u64,
    pub free: u64,
    /// Named resources with counts, for placement constraints (as Ray's custom resources);
    /// `cpu` is also how many tasks the node runs at once.
    pub resources: BTreeMap<String, u64>,
}

/// One object a node holds, in whole or in part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub root: Digest,
    /// The chunks held; complete for a sealed object.
    pub chunks: ChunkSet,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SchedulerRequest {
    /// First message of a (re)connecting daemon: its identity and everything it holds.
    Register {
        node: NodeInfo,
        holdings: Vec<Holding>,
    },
    /// Renews the node's lease.
    Heartbeat {
        node: NodeId,
        free: u64,
    },
    /// The node now holds (part of) an object; replaces what was known of it.
    Announce {
        node: NodeId,
        holding: Holding,
    },
    /// The node no longer holds the object.
    Withdraw {
        node: NodeId,
        name: String,
    },
    /// Where an object is.
    Locate {
        name: String,
    },
    /// Waits until an object exists on some node (complete), or the timeout.
    Wait {
        name: String,
        timeout_ms: u64,
    },
    Nodes,
    /// Chooses nodes for tasks; answered with [`SchedulerResponse::Placed`].
    Place {
        spec: crate::placement::PlaceSpec,
    },
    /// A finished pull into `node`, for the inbound bandwidth estimate; answered `Ok`.
    TransferReport {
        node: NodeId,
        report: crate::placement::TransferReport,
    },
}

/// A holder of an object, as `locate` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub size: u64,
    pub chunk_size: u64,
    pub root: Digest,
    pub chunks: ChunkSet,
}

impl Location {
    pub fn is_complete(&self) -> bool {
        self.chunks.is_complete()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub info: NodeInfo,
    /// Milliseconds since the node's last heartbeat.
    pub last_seen_ms: u64,
    pub objects: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SchedulerResponse {
    Ok,
    /// The scheduler does not know this node (it restarted, or the lease expired):
    /// register again with everything you hold.
    UnknownNode,
    Located(Vec<Location>),
    Nodes(Vec<NodeStatus>),
    Error {
        message: String,
    },
    Placed(crate::placement::Placement),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The object's manifest and which chunks the peer holds.
    Manifest { name: String },
    /// One chunk; the response header is followed by its bytes.
    Chunk { name: String, index: u64 },
    /// Which chunks the peer holds now.
    Have { name: String },
    /// Asks the peer to fetch the object into its own store; answered when done. With
    /// `relay` false it pulls only from complete holders (single-source fan-out, for
    /// comparison).
    Pull { name: String, timeout_ms: u64, relay: bool },
    /// Cooperative S3 fetch, first phase: download chunks `first..end` of the S3 object
    /// `origin` into memory set aside for `name` (bound to nothing yet) and answer with their
    /// hashes ([`PeerResponse::ShareFetched`]).
    FetchShare { name: String, origin: S3Origin, chunk_size: u64, first: u64, end: u64 },
    /// Second phase: receive `name` with this manifest (assembled from every node's share
    /// hashes), starting from the share fetched in the first phase, and pull the rest from
    /// the other nodes (the origin is the fallback); answered with [`PeerResponse::Pulled`].
    CompleteShare { name: String, manifest: Manifest, origin: S3Origin, timeout_ms: u64 },
    /// Forgets a share fetched in the first phase (the cooperative fetch failed elsewhere);
    /// answered with [`PeerResponse::Dropped`].
    DropShare { name: String },
    /// Asks the peer to pull these objects in the background, in order (a scheduler's
    /// placement with prefetch); answered at once with [`PeerResponse::Queued`].
    Prefetch { names: Vec<String> },
}

impl PeerRequest {
    /// Every object name the request carries: what the receiving daemon checks with
    /// [`crate::name::validate`] before acting on it (the match is exhaustive, so a new
    /// variant cannot slip past the check).
    pub fn names(&self) -> Vec<&str> {
        match self {
            PeerRequest::Manifest { name }
            | PeerRequest::Chunk { name, .. }
            | PeerRequest::Have { name }
            | PeerRequest::Pull { name, .. }
            | PeerRequest::FetchShare { name, .. }
            | PeerRequest::CompleteShare { name, .. }
            | PeerRequest::DropShare { name } => vec![name.as_str()],
            PeerRequest::Prefetch { names } => names.iter().map(String::as_str).collect(),
        }
    }

    /// Checks every name the request carries ([`Self::names`]).
    pub fn validate_names(&self) -> Result<(), InvalidName> {
        validate_all(self.names())
    }
}

impl SchedulerRequest {
    /// Every object name the request carries, as [`PeerRequest::names`].
    pub fn names(&self) -> Vec<&str> {
        match self {
            SchedulerRequest::Register { holdings, .. } => holdings.iter().map(|h| h.name.as_str()).collect(),
            SchedulerRequest::Announce { holding, .. } => vec![holding.name.as_str()],
            SchedulerRequest::Withdraw { name, .. }
            | SchedulerRequest::Locate { name }
            | SchedulerRequest::Wait { name, .. } => vec![name.as_str()],
            SchedulerRequest::Place { spec } => spec.needs.iter().map(String::as_str).collect(),
            SchedulerRequest::TransferReport { report, .. } => vec![report.name.as_str()],
            SchedulerRequest::Heartbeat { .. } | SchedulerRequest::Nodes => Vec::new(),
        }
    }
}

/// A name from the wire that [`crate::name::validate`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: crate::name::NameError,
}

/// Checks each name with [`crate::name::validate`]; the first bad one is the error.
pub fn validate_all<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), InvalidName> {
    for name in names {
        // Names longer than the limit are cut in the message, so an error stays small.
        crate::name::validate(name).map_err(|reason| InvalidName {
            name: name.chars().take(crate::name::MAX_NAME_LEN.min(128)).collect(),
            reason,
        })?;
    }
    Ok(())
}

/// What a peer reports of a finished pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullReport {
    pub node: NodeId,
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
    /// Bytes received from each source node.
    pub from: BTreeMap<NodeId, u64>,
    /// True if the object was already there.
    pub already_present: bool,
    /// Chunks that failed verification and were fetched again.
    pub corrupt_chunks: u64,
    /// Chunk requests retried (corrupt, refused, timed out, peer lost).
    pub retries: u64,
    /// Bytes this node read from the object's S3 origin (a cooperative share, or chunks
    /// no peer could serve).
    pub s3_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Manifest {
        manifest: Manifest,
        held: ChunkSet,
        uploads: u32,
        /// The S3 object the content came from, if known: the fallback when no peer can
        /// serve some chunks.
        origin: Option<S3Origin>,
    },
    /// Followed by `len` raw bytes on the stream.
    Chunk {
        len: u64,
        uploads: u32,
    },
    Have {
        held: ChunkSet,
        uploads: u32,
    },
    Pulled(PullReport),
    /// The peer does not hold the object or chunk (any more).
    NotHeld,
    Error {
        message: String,
    },
    ShareFetched {
        /// Hashes of the share's chunks, in order.
        hashes: Vec<Digest>,
        s3_bytes: u64,
        seconds: f64,
    },
    Dropped,
    /// How many of the names asked for were queued for prefetch (the others were held or
    /// queued already).
    Queued {
        count: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_request_names_its_objects() {
        let bad = "a/../b".to_string();
        let origin = S3Origin { url: "s3://b/k".into(), etag: String::new(), size: 1 };
        let manifest = Manifest::compute(b"x", 1024, 1).expect("manifest");
        let requests = [
            PeerRequest::Manifest { name: bad.clone() },
            PeerRequest::Chunk { name: bad.clone(), index: 0 },
            PeerRequest::Have { name: bad.clone() },
            PeerRequest::Pull { name: bad.clone(), timeout_ms: 1, relay: true },
            PeerRequest::FetchShare { name: bad.clone(), origin: origin.clone(), chunk_size: 1024, first: 0, end: 1 },
            PeerRequest::CompleteShare { name: bad.clone(), manifest, origin, timeout_ms: 1 },
            PeerRequest::DropShare { name: bad.clone() },
            PeerRequest::Prefetch { names: vec!["ok".into(), bad.clone()] },
        ];
        for request in requests {
            assert!(request.names().contains(&bad.as_str()), "{request:?}");
            assert!(request.validate_names().is_err(), "{request:?}");
        }
        assert_eq!(PeerRequest::Manifest { name: "models/m".into() }.validate_names(), Ok(()));
    }

    #[test]
    fn long_bad_names_are_cut_in_the_error() {
        let long = format!("{}\n", "x".repeat(5000));
        let err = validate_all([long.as_str()]).expect_err("too long");
        assert!(err.name.len() <= 128);
    }
}
