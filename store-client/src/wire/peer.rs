//! Daemon <-> daemon messages, carried over QUIC streams as length-prefixed postcard frames
//! ([`crate::frame`]). Every request opens its own bidirectional stream and gets one response
//! frame on it; a chunk response is followed on the same stream by the chunk's raw bytes.

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::manifest::{Digest, Manifest};
use crate::name::{InvalidName, validate_all};
use crate::wire::node::PullReport;
use crate::wire::object::S3Origin;

/// ALPN of daemon <-> daemon connections.
pub const PEER_ALPN: &[u8] = b"store-peer/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The object's manifest and which chunks the peer holds.
    Manifest { name: String },
    /// One chunk; the response header is followed by its bytes.
    Chunk { name: String, index: u64 },
    /// Which chunks the peer holds: answered as soon as it holds more than `known` chunks,
    /// or after at most a second with what it holds then (a long poll, so co-receivers of
    /// an object learn of each other's chunks as they land).
    Have { name: String, known: u64 },
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
            | PeerRequest::Have { name, .. }
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
    /// Every upload slot of the peer is taken: ask again later, or another holder.
    Busy {
        uploads: u32,
    },
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
            PeerRequest::Have { name: bad.clone(), known: 0 },
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
}
