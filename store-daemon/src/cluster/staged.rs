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
}

impl StagedShare {
    /// Whether `chunks` of `origin`, asked by `coordinator`, may extend this share (the
    /// share of a failed node taken over): same object, same asker, no overlap.
    fn extends_with(&self, origin: &S3Origin, chunk_size: u64, chunks: &Range<u64>, by: &Coordinator) -> bool {
        self.origin == *origin
            && self.coordinator == *by
            && self.chunk_size == chunk_size
            && self.ranges.iter().all(|(r, _)| r.end <= chunks.start || chunks.end <= r.start)
    }
}

/// A staged share and which staging it was, so the expiry of an earlier one spares it.
#[derive(Debug)]
struct Entry {
    share: StagedShare,
    generation: u64,
}

/// The shares staged on this node, by object name.
#[derive(Debug, Default)]
pub struct StagedShares {
    entries: Mutex<HashMap<String, Entry>>,
    generation: AtomicU64,
}

/// Another share of the object is staged here and cannot be extended or replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct ShareBusy;

/// The share staged here belongs to another coordinator.
#[derive(Debug, PartialEq, Eq)]
pub struct NotYours;

impl StagedShares {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages `share` for `name` unless another share of it appeared meanwhile; it is
    /// dropped after [`STAGED_TTL`] unless completed or dropped before.
    pub fn stage(self: &Arc<Self>, name: &str, share: StagedShare) -> Result<(), ShareBusy> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = self.lock();
            if entries.contains_key(name) {
                return Err(ShareBusy);
            }
            entries.insert(name.to_owned(), Entry { share, generation });
        }
        let weak = Arc::downgrade(self);
        let owned = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(STAGED_TTL).await;
            if let Some(this) = weak.upgrade() {
                let mut entries = this.lock();
                if entries.get(&owned).is_some_and(|e| e.generation == generation) {
                    warn!(name = %owned, "dropping a cooperative share never completed");
                    entries.remove(&owned);
                }
            }
        });
        Ok(())
    }

    /// Takes out the share of `name` that `chunks` of `origin`, asked by `by`, extend (the
    /// share of a failed node taken over goes into the same memory); `None` if there is none.
    pub fn take_extendable(
        &self,
        name: &str,
        origin: &S3Origin,
        chunk_size: u64,
        chunks: &Range<u64>,
        by: &Coordinator,
    ) -> Result<Option<StagedShare>, ShareBusy> {
        let mut entries = self.lock();
        match entries.get(name) {
            None => Ok(None),
            Some(e) if e.share.extends_with(origin, chunk_size, chunks, by) => {
                Ok(entries.remove(name).map(|e| e.share))
            }
            Some(_) => Err(ShareBusy),
        }
    }

    /// Takes out the share of `name` for its second phase, if `by` staged it.
    pub fn take_for(&self, name: &str, by: &Coordinator) -> Result<Option<StagedShare>, NotYours> {
        let mut entries = self.lock();
        match entries.get(name) {
            None => Ok(None),
            Some(e) if e.share.coordinator == *by => Ok(entries.remove(name).map(|e| e.share)),
            Some(_) => Err(NotYours),
        }
    }

    /// Forgets the share of `name`, if `coordinator` staged it.
    pub fn drop_share(&self, name: &str, coordinator: &Coordinator) {
        let _ = self.take_for(name, coordinator);
    }
}
