//! Wire types of data-aware placement: what a client asks the scheduler (through its local
//! daemon), what the scheduler answers, and what daemons report of finished transfers so
//! that the scheduler can estimate the bandwidth into each node.
//!
//! The policy itself lives in the scheduler (`scheduler::placement`); these types only carry
//! its inputs and outputs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::wire::node::NodeId;

/// A task (or `count` identical ones) to place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceSpec {
    /// Objects the task reads; each must be known to the scheduler (held somewhere).
    pub needs: Vec<String>,
    /// Hard constraint: every label must match the node's (`site=cloud`).
    pub labels: BTreeMap<String, String>,
    /// Hard constraint: the node must offer at least this many of each named resource.
    pub resources: BTreeMap<String, u64>,
    /// Hard constraint: only this node qualifies.
    pub pinned: Option<NodeId>,
    /// How many tasks to place (at least one).
    pub count: u32,
    /// Expected run time of one task, in seconds: what it adds to its node's queue.
    pub task_seconds: f64,
}

impl Default for PlaceSpec {
    fn default() -> Self {
        Self {
            needs: Vec::new(),
            labels: BTreeMap::new(),
            resources: BTreeMap::new(),
            pinned: None,
            count: 1,
            task_seconds: 1.0,
        }
    }
}

/// The scheduler's estimate for running one task on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEstimate {
    pub node: NodeId,
    /// The node's QUIC address (where a prefetch request goes).
    pub addr: SocketAddr,
    /// Bytes of the inputs the node does not hold yet.
    pub missing_bytes: u64,
    /// The inputs the node lacks in whole or in part (what a prefetch pulls).
    pub missing: Vec<String>,
    /// Seconds until the missing bytes are there: transfers already expected into the node
    /// plus this one, at the node's inbound bandwidth.
    pub transfer_seconds: f64,
    /// Seconds until one of the node's task slots is free.
    pub queued_seconds: f64,
    /// When the task could start: the later of the two above.
    pub estimated_start_seconds: f64,
    /// Inbound bandwidth used for the estimate, bytes per second.
    pub inbound_bytes_per_second: f64,
    /// True if that bandwidth is the configured default, not an observation.
    pub bandwidth_assumed: bool,
}

/// The scheduler's answer to a placement request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// One entry per task, in order: the node chosen for it. Empty if no node qualifies.
    pub tasks: Vec<NodeEstimate>,
    /// Every qualifying node for one task, best first, as things stood before this request.
    pub ranked: Vec<NodeEstimate>,
}

/// A finished pull into the reporting node, for the scheduler's bandwidth estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    pub name: String,
    /// Bytes of this object received.
    pub bytes: u64,
    /// Seconds from the first chunk request to the last chunk verified.
    pub seconds: f64,
    /// Bytes received from each source node.
    pub from: BTreeMap<NodeId, u64>,
    /// Bytes the node received from all peers over the same seconds (this pull and any
    /// other running at the same time): `node_bytes / seconds` is what the node's inbound
    /// link carried, whereas concurrent pulls each see only a share of it.
    pub node_bytes: u64,
}

/// What a chosen node answered to the request to prefetch its missing inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefetchOutcome {
    pub node: NodeId,
    pub names: Vec<String>,
    /// Queued at the node (it pulls them in the background, in order), or why not.
    pub result: Result<(), String>,
}

/// The local daemon's answer to a placement request: the scheduler's placement and, with
/// prefetch, what each chosen node said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceOutcome {
    pub placement: Placement,
    pub prefetch: Vec<PrefetchOutcome>,
}
