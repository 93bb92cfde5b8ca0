//! Daemon <-> scheduler messages, carried over QUIC streams as length-prefixed postcard
//! frames ([`crate::frame`]). Every request opens its own bidirectional stream and gets one
//! response frame on it.

use serde::{Deserialize, Serialize};

use crate::manifest::Digest;
use crate::wire::node::{Holding, Location, NodeId, NodeInfo, NodeStatus};
use crate::wire::placement::{PlaceSpec, Placement, TransferReport};

/// ALPN of daemon <-> scheduler connections.
pub const SCHEDULER_ALPN: &[u8] = b"store-sched/1";

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
        spec: PlaceSpec,
    },
    /// A finished pull into `node`, for the inbound bandwidth estimate; answered `Ok`.
    TransferReport {
        node: NodeId,
        report: TransferReport,
    },
}

impl SchedulerRequest {
    /// Every object name the request carries, as [`crate::wire::peer::PeerRequest::names`].
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
    Placed(Placement),
    /// The holding was refused: another node holds the name with another root.
    Conflict {
        name: String,
        known: Digest,
        holder: NodeId,
    },
}
