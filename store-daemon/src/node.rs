//! The node's store as one handle that the local server and replication both hold: the
//! objects ([`Store`], behind one lock), the S3 side ([`S3Ingest`]), the metrics, and the
//! events that flow out of the store (an object was sealed, the holdings changed, a chunk
//! landed in an object being received). Nothing here knows who listens: the local server
//! waits on seals, the scheduler link on holdings, peers on landed chunks.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::DaemonConfig;
use crate::metrics::DaemonMetrics;
use crate::s3_ingest::S3Ingest;
use crate::store::{Store, StoreError};

/// The node's objects and what happens to them.
#[derive(Debug)]
pub struct NodeStore {
    store: Mutex<Store>,
    metrics: Arc<DaemonMetrics>,
    s3: S3Ingest,
    chunk_size: u64,
    hash_threads: usize,
    /// Bumped on every seal, so waiters for a name look again.
    sealed: watch::Sender<u64>,
    /// Bumped whenever what this node holds changed (sealed, deleted, begun or dropped).
    holdings: watch::Sender<u64>,
    /// Bumped whenever a chunk lands in an object being received.
    chunks_landed: watch::Sender<u64>,
}

impl NodeStore {
    pub fn new(config: &DaemonConfig) -> Self {
        let metrics = Arc::new(DaemonMetrics::new());
        let s3 = S3Ingest::new(config.s3.clone(), config.s3_allow.clone(), metrics.clone());
        Self {
            store: Mutex::new(Store::new(config.capacity, config.chunk_size)),
            metrics,
            s3,
            chunk_size: config.chunk_size,
            hash_threads: config.hash_threads,
            sealed: watch::channel(0).0,
            holdings: watch::channel(0).0,
            chunks_landed: watch::channel(0).0,
        }
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        // Store methods leave it consistent at every return, so a panic elsewhere while the
        // lock was held does not poison the data itself.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &Arc<DaemonMetrics> {
        &self.metrics
    }

    pub fn s3(&self) -> &S3Ingest {
        &self.s3
    }

    /// Chunk size of the manifests this node computes.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Threads used to hash large objects.
    pub fn hash_threads(&self) -> usize {
        self.hash_threads
    }

    /// An object was sealed here: wakes local waiters, and the holdings changed.
    pub fn notify_sealed(&self) {
        self.sealed.send_modify(|n| *n = n.wrapping_add(1));
        self.holdings_changed();
    }

    /// What this node holds changed: the scheduler should hear of it without waiting for
    /// the next periodic sync.
    pub fn holdings_changed(&self) {
        self.holdings.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A chunk landed in an object being received: peers waiting on it look again.
    pub fn chunk_landed(&self) {
        self.chunks_landed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe_sealed(&self) -> watch::Receiver<u64> {
        self.sealed.subscribe()
    }

    pub fn subscribe_holdings(&self) -> watch::Receiver<u64> {
        self.holdings.subscribe()
    }

    pub fn subscribe_chunks_landed(&self) -> watch::Receiver<u64> {
        self.chunks_landed.subscribe()
    }

    /// Takes `size` bytes of room (evicting what may be evicted), or refuses like a put
    /// would; the room is given back when the [`Room`] is dropped.
    pub fn take_room(self: &Arc<Self>, size: u64) -> Result<Room, StoreError> {
        for name in self.store().reserve_room(size)? {
            tracing::debug!(%name, "evicted to make room");
        }
        Ok(Room { node: self.clone(), size })
    }
}

/// Store room taken for bytes that are not an object yet (a file being copied in, a
/// cooperative share between its phases), so they count against the capacity like every
/// object does; given back when dropped, or handed over with [`Room::into_size`].
#[derive(Debug)]
pub struct Room {
    node: Arc<NodeStore>,
    size: u64,
}

impl Room {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes `other`'s room part of this one.
    pub fn absorb(&mut self, mut other: Room) {
        self.size += std::mem::take(&mut other.size);
    }

    /// The room's size, no longer given back on drop: the caller gives it back under the
    /// store's lock (to turn it into an object's room without anyone taking it in between).
    pub fn into_size(mut self) -> u64 {
        std::mem::take(&mut self.size)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.size > 0 {
            self.node.store().return_room(self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_given_back_when_dropped_and_kept_when_handed_over() {
        let node = Arc::new(NodeStore::new(&DaemonConfig::new("/nonexistent".into(), 1 << 20)));
        let free = node.store().free();
        let mut room = node.take_room(1000).expect("room");
        room.absorb(node.take_room(24).expect("room"));
        assert_eq!(room.size(), 1024);
        assert_eq!(node.store().free(), free - 1024);
        drop(room);
        assert_eq!(node.store().free(), free);
        let handed = node.take_room(4096).expect("room").into_size();
        assert_eq!(handed, 4096);
        assert_eq!(node.store().free(), free - 4096, "handed-over room stays taken");
        assert!(node.take_room(2 << 20).is_err(), "beyond the capacity");
    }
}
