//! What the store says about an object, on every wire: its id, state and description, the
//! error codes a client can act on, and the S3 object it was ingested from.

use serde::{Deserialize, Serialize};

use crate::manifest::Digest;

/// Object ids are unique for the daemon's lifetime; names can be rebound after a delete.
pub type ObjectId = u64;

/// The S3 object an object was ingested from: a receiver that loses every peer can fall
/// back to it (the ETag pins the version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Origin {
    pub url: String,
    pub etag: String,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectState {
    /// Created, being filled; invisible to `Get`.
    Pending,
    /// Immutable and readable.
    Sealed,
    /// Deleted while leased: invisible by name, alive until its leases are released.
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub id: ObjectId,
    pub name: String,
    pub size: u64,
    pub state: ObjectState,
    /// BLAKE3 of the content; present once sealed.
    pub digest: Option<Digest>,
    pub chunk_size: u64,
    /// Leases held by all clients.
    pub leases: u32,
    /// Milliseconds since the object was created.
    pub age_ms: u64,
    /// Whether LRU eviction may drop it to make room.
    pub evictable: bool,
}

/// What went wrong, in terms a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded or makes no sense.
    BadRequest,
    InvalidName,
    NotFound,
    /// The name is bound to a sealed object (for `Create`), or bound to different content.
    AlreadyExists,
    /// The name is being created by another request.
    Pending,
    /// Not enough room even after evicting every evictable object.
    StoreFull,
    /// Larger than the whole capacity.
    TooLarge,
    /// Seal refused: a writable shared mapping of the object still exists.
    WritableMapping,
    /// The passed descriptor is missing or of the wrong kind, or the request came with
    /// more descriptors than it takes (all of them were closed).
    BadDescriptor,
    AlreadySealed,
    PermissionDenied,
    Timeout,
    ShuttingDown,
    Io,
    Internal,
    /// The daemon runs without a cluster (no scheduler configured).
    NoCluster,
    /// The scheduler or the peers could not be reached.
    ClusterUnavailable,
    /// The S3 origin failed: unreachable, throttling beyond the retries, or the object
    /// changed during the download.
    OriginFailed,
    /// The object's size is not the size declared for it (a client memfd resized), or the
    /// file being copied changed during the copy.
    SizeMismatch,
    /// A limit on local clients was reached: connections served at once, or unsealed
    /// objects one connection may hold.
    LimitExceeded,
}
