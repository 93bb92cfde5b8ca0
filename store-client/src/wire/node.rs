//! Nodes of the cluster and what they hold: the types the scheduler, the daemons and the
//! local protocol all speak of.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::manifest::Digest;

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
