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

/// A `k=v` label or `name=count` resource that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelSyntaxError {
    #[error("{0:?} is not key=value")]
    NotKeyValue(String),
    #[error("{0:?}: the count must be a whole number")]
    NotACount(String),
}

/// Parses `k=v` (a label constraint or a daemon label). Here rather than in each command
/// line so that `store-daemon --resource` and `storectl place --label/--resource` accept
/// the same text.
pub fn parse_label(text: &str) -> Result<(String, String), LabelSyntaxError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(LabelSyntaxError::NotKeyValue(text.to_owned())),
    }
}

/// Parses `name=count` (a resource constraint or a node's resource).
pub fn parse_resource(text: &str) -> Result<(String, u64), LabelSyntaxError> {
    let (k, v) = parse_label(text)?;
    let n = v.parse().map_err(|_| LabelSyntaxError::NotACount(text.to_owned()))?;
    Ok((k, n))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_resources_parse_trimmed_and_refuse_malformed_text() {
        assert_eq!(parse_label(" site = cloud "), Ok(("site".into(), "cloud".into())));
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert_eq!(parse_resource("gpu=2"), Ok(("gpu".into(), 2)));
        let no_key = parse_label("=v").unwrap_err();
        assert_eq!(no_key.to_string(), r#""=v" is not key=value"#);
        assert!(matches!(parse_label("novalue"), Err(LabelSyntaxError::NotKeyValue(_))));
        let bad_count = parse_resource("gpu=two").unwrap_err();
        assert_eq!(bad_count.to_string(), r#""gpu=two": the count must be a whole number"#);
    }
}
