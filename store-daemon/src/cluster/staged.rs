//! Shares of cooperative S3 fetches between their two phases ([`super::cooperative`]): the
//! bytes a node read from S3, held in memory bound to no name yet, and who may complete or
//! drop them. The pull of the second phase receives the object into the share's memory.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use store_client::manifest::Digest;
use store_client::sys::ReadOnlyMapping;
use store_client::wire::object::S3Origin;
use tracing::warn;

use crate::node::Room;

/// A share not claimed by its second phase within this time is dropped (its coordinator
/// died between the phases).
const STAGED_TTL: Duration = Duration::from_secs(600);

/// Who asked for a share: this daemon (it coordinates the fetch) or a peer, named by the
/// certificate it authenticated with. Only the coordinator that staged a share may complete
/// or drop it: another certificate holder cannot bind or discard someone else's fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coordinator {
    Local,
    /// The peer's end-entity certificate (DER).
    Peer(Arc<[u8]>),
}

/// A node's share of a cooperative fetch, between the phases: usually one range of chunks,
/// more when it took over the share of a node that failed.
#[derive(Debug)]
pub struct StagedShare {
    pub fd: OwnedFd,
    pub mapping: ReadOnlyMapping,
    /// The chunk ranges fetched and their hashes.
    pub ranges: Vec<(Range<u64>, Vec<Digest>)>,
    pub s3_bytes: u64,
    pub origin: S3Origin,
    pub chunk_size: u64,
    pub coordinator: Coordinator,
    /// The store room the share's bytes take until it is dropped or received into.
    pub room: Room,
    generation: u64,
}

impl StagedShare {
    /// Whether `chunks` of `origin`, asked by `coordinator`, may extend this share (the
    /// share of a failed node taken over): same object, same asker, no overlap.
    pub fn extends_with(&self, origin: &S3Origin, chunk_size: u64, chunks: &Range<u64>, by: &Coordinator) -> bool {
        self.origin == *origin
            && self.coordinator == *by
            && self.chunk_size == chunk_size
            && self.ranges.iter().all(|(r, _)| r.end <= chunks.start || chunks.end <= r.start)
    }
}

/// The shares staged on this node, by object name.
#[derive(Debug, Default)]
pub struct StagedShares {
    shares: Mutex<HashMap<String, StagedShare>>,
    generation: AtomicU64,
}

/// A share being built: [`StagedShares::stage`] turns it into a [`StagedShare`].
#[derive(Debug)]
pub struct NewShare {
    pub fd: OwnedFd,
    pub mapping: ReadOnlyMapping,
    pub ranges: Vec<(Range<u64>, Vec<Digest>)>,
    pub s3_bytes: u64,
    pub origin: S3Origin,
    pub chunk_size: u64,
    pub coordinator: Coordinator,
    pub room: Room,
}

/// Why a share could not be staged.
#[derive(Debug, PartialEq, Eq)]
pub struct ShareBusy;

impl StagedShares {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, StagedShare>> {
        self.shares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages `share` for `name` unless another share of it appeared meanwhile; it is
    /// dropped after [`STAGED_TTL`] unless completed or dropped before.
    pub fn stage(self: &Arc<Self>, name: &str, share: NewShare) -> Result<(), ShareBusy> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut shares = self.lock();
            if shares.contains_key(name) {
                return Err(ShareBusy);
            }
            let NewShare { fd, mapping, ranges, s3_bytes, origin, chunk_size, coordinator, room } = share;
            let staged =
                StagedShare { fd, mapping, ranges, s3_bytes, origin, chunk_size, coordinator, room, generation };
            shares.insert(name.to_owned(), staged);
        }
        let weak = Arc::downgrade(self);
        let owned = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(STAGED_TTL).await;
            if let Some(this) = weak.upgrade() {
                let mut shares = this.lock();
                if shares.get(&owned).is_some_and(|s| s.generation == generation) {
                    warn!(name = %owned, "dropping a cooperative share never completed");
                    shares.remove(&owned);
                }
            }
        });
        Ok(())
    }

    /// Forgets the share of `name`, if `coordinator` staged it.
    pub fn drop_share(&self, name: &str, coordinator: &Coordinator) {
        let mut shares = self.lock();
        if shares.get(name).is_some_and(|s| s.coordinator == *coordinator) {
            shares.remove(name);
        }
    }
}
