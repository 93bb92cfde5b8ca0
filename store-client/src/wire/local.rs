//! The local socket protocol between `store-client` and `store-daemon`.
//!
//! Every message is one frame ([`crate::frame`]) holding a postcard-encoded [`Request`] or
//! [`Response`]. File descriptors travel beside the frame's bytes as `SCM_RIGHTS`: a
//! request or response that carries one says so in its doc. Requests are answered in
//! order, one response each, except [`Request::Release`], which is never answered so that
//! dropping a mapping costs no round trip.
//!
//! Send a frame that carries descriptors in one message with them (one `sendmsg`, as this
//! crate does): the daemon gives descriptors to the frame holding the last byte of the read
//! that brought them, and Linux ends a read right after a message with descriptors. A
//! request that comes with another number of descriptors than
//! [`Request::descriptors`] is refused with [`ErrorCode::BadDescriptor`] and every
//! descriptor that came with it is closed at once; so is every descriptor of a frame that
//! does not decode. The daemon takes requests of at most [`MAX_REQUEST_LEN`] bytes, each
//! within its frame timeout once its first byte arrived.

use serde::{Deserialize, Serialize};

use crate::manifest::Digest;
use crate::wire::node::{Location, NodeId, NodeStatus, PullReport};
use crate::wire::object::{ErrorCode, ObjectId, ObjectInfo, S3Origin};
use crate::wire::placement::{PlaceOutcome, PlaceSpec};

/// Version spoken by this crate; the daemon answers a mismatching [`Request::Hello`] with
/// [`ErrorCode::BadRequest`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest request frame body the daemon reads; a header announcing more is refused at once.
/// (Names are at most [`crate::name::MAX_NAME_LEN`]; the largest requests list names.)
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Optional first request; answered with [`Response::Hello`].
    Hello { version: u32 },
    /// Reserves `size` bytes under `name`; answered with [`Response::Created`] and the
    /// writable memfd. The object stays invisible until sealed and is dropped if this
    /// connection closes first.
    Create { name: String, size: u64, evictable: bool },
    /// Seals an object created on this connection; answered with [`Response::Sealed`]. The
    /// memfd `Create` handed out is sealed against shrinking and growing from the start.
    Seal { id: ObjectId },
    /// Drops an unsealed object created on this connection; answered with
    /// [`Response::Done`].
    Abort { id: ObjectId },
    /// Carries a memfd of `size` bytes the client filled itself (created with
    /// `MFD_ALLOW_SEALING`, open for writing, no writable mapping left); the daemon seals it
    /// (one the client sealed completely itself is taken as it is), checks that it is still
    /// `size` bytes, and adopts it. Answered with [`Response::Sealed`]; another size gets
    /// [`ErrorCode::SizeMismatch`], anything but a sealable memfd [`ErrorCode::BadDescriptor`].
    PutMemfd { name: String, size: u64, evictable: bool },
    /// Carries a readable file descriptor; the daemon copies it into a new object in the
    /// kernel. Answered with [`Response::Sealed`].
    PutFile { name: String, evictable: bool },
    /// Answered with [`Response::Object`] and a read-only-sealed memfd; takes a lease.
    /// Waits up to `timeout_ms` for an object that does not exist or is not sealed yet.
    Get { name: String, timeout_ms: u64 },
    /// Returns one lease taken by `Get` on this connection. Never answered.
    Release { id: ObjectId },
    /// Unbinds `name`; answered with [`Response::Done`]. Mappings that exist stay valid;
    /// the bytes are freed when the last lease is released.
    Delete { name: String },
    /// Answered with [`Response::Listing`].
    List,
    /// Answered with [`Response::Stat`].
    Stat { name: String },
    /// Where the object is in the cluster; answered with [`Response::Located`].
    Locate { name: String },
    /// The cluster's nodes; answered with [`Response::Nodes`].
    Nodes,
    /// Asks `to` (every live node if `None`) to pull the object; answered with
    /// [`Response::Replicated`] once every target finished or failed.
    Replicate { name: String, to: Option<Vec<NodeId>>, timeout_ms: u64, relay: bool },
    /// Fills a new object `name` from `url` (`s3://bucket/key`) with the daemon's S3 settings
    /// and seals it; answered with [`Response::PulledS3`]. Nothing is bound on any error.
    /// `part_size` and `concurrency` override the daemon's defaults.
    PullS3 { url: String, name: String, evictable: bool, part_size: Option<u64>, concurrency: Option<u32> },
    /// Where an object was ingested from; answered with [`Response::Origin`].
    Origin { name: String },
    /// Cooperative fetch: each of `nodes` (every live node if `None`) reads a disjoint share
    /// of the S3 object's chunks and takes the rest from the others, so S3 serves the object
    /// about once for the whole group. Answered with [`Response::PulledS3Cooperative`] once
    /// every node finished or failed. If a share cannot be fetched, no node keeps anything.
    PullS3Cooperative { url: String, name: String, nodes: Option<Vec<NodeId>>, timeout_ms: u64 },
    /// Asks the scheduler where to run tasks that read `spec.needs`; with `prefetch`, the
    /// chosen nodes are also asked to start pulling what they miss. Answered with
    /// [`Response::Placed`].
    Place { spec: PlaceSpec, prefetch: bool },
}

impl Request {
    /// How many descriptors this request carries: exactly these, no more and no fewer.
    pub fn descriptors(&self) -> usize {
        match self {
            Request::PutMemfd { .. } | Request::PutFile { .. } => 1,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        daemon: String,
    },
    /// Carries the writable memfd of the new object.
    Created {
        id: ObjectId,
    },
    Sealed(ObjectInfo),
    /// Carries the sealed memfd.
    Object(ObjectInfo),
    Done,
    Listing(Vec<ObjectInfo>),
    Stat(ObjectInfo),
    Located(Vec<Location>),
    Nodes(Vec<NodeStatus>),
    Replicated(Vec<ReplicaOutcome>),
    Error {
        code: ErrorCode,
        message: String,
    },
    PulledS3(S3Pull),
    Origin(Option<S3Origin>),
    PulledS3Cooperative(CooperativePull),
    Placed(PlaceOutcome),
}

/// The result of [`Request::PullS3Cooperative`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CooperativePull {
    pub name: String,
    pub origin: S3Origin,
    /// BLAKE3 of the content, assembled from the shares' chunk hashes.
    pub digest: Digest,
    /// Seconds of the first phase (every node reading its share from S3).
    pub share_seconds: f64,
    /// Seconds from request to the last node's sealed copy.
    pub total_seconds: f64,
    /// Bytes S3 served to the whole group (shares and fallbacks).
    pub s3_bytes: u64,
    pub nodes: Vec<CooperativeOutcome>,
}

/// One node's part of a cooperative fetch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CooperativeOutcome {
    pub node: NodeId,
    /// The chunks it read from S3 (`first..end`).
    pub share: (u64, u64),
    /// Its pull report (`s3_bytes` counts its share), or why it failed.
    pub result: Result<PullReport, String>,
}

/// The result of [`Request::PullS3`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct S3Pull {
    pub info: ObjectInfo,
    pub origin: S3Origin,
    /// Seconds of the download (HEAD and ranged GETs), before sealing.
    pub download_seconds: f64,
    /// Seconds from request to sealed object.
    pub total_seconds: f64,
    /// Ranged GET attempts that failed and were retried.
    pub retries: u64,
}

/// One target node's result of a replicate request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaOutcome {
    pub node: NodeId,
    pub result: Result<PullReport, String>,
}
