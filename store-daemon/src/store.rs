//! The node's objects as plain state: names, sizes, leases, the capacity budget and LRU
//! eviction. No I/O happens here; descriptors are only carried along.
//!
//! Semantics worth knowing:
//! - A name is bound once. Binding it again to the same content is a no-op, to other
//!   content an error ([`StoreError::AlreadyExists`]).
//! - `delete` unbinds the name at once. An object that still has leases lives on, invisible
//!   by name and still counted against capacity, until its last lease is released; the
//!   name can be bound again meanwhile.
//! - Only sealed, evictable objects without leases are evicted, least recently used first,
//!   and only when that frees enough room: a put that cannot fit evicts nothing.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use store_client::chunkset::ChunkSet;
use store_client::manifest::Manifest;
use store_client::sys::ReadOnlyMapping;
use store_client::wire::node::Holding;
use store_client::wire::object::{ErrorCode, ObjectId, ObjectInfo, ObjectState, S3Origin};
use thiserror::Error;

/// Identifies a client connection, to tie unsealed objects to their creator.
pub type ConnId = u64;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no object named {0:?}")]
    NotFound(String),
    #[error("no unsealed object {0} created on this connection")]
    UnknownPending(ObjectId),
    #[error("{0:?} is already bound to other content")]
    AlreadyExists(String),
    #[error("{0:?} is being created by another request")]
    Pending(String),
    #[error("object {0} is already sealed or being sealed")]
    AlreadySealed(ObjectId),
    #[error("{size} bytes do not fit: {free} free and {evictable} evictable of {capacity}")]
    StoreFull { size: u64, free: u64, evictable: u64, capacity: u64 },
    #[error("{size} bytes exceed the store's whole capacity of {capacity}")]
    TooLarge { size: u64, capacity: u64 },
    #[error("{0:?} is being created; delete it after it is sealed or aborted")]
    DeletePending(String),
    #[error("object {id} was reserved with {reserved} bytes but sealed with {sealed}")]
    SizeMismatch { id: ObjectId, reserved: u64, sealed: u64 },
}

impl StoreError {
    /// The one place store errors become protocol error codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) | StoreError::UnknownPending(_) => ErrorCode::NotFound,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::Pending(_) | StoreError::DeletePending(_) => ErrorCode::Pending,
            StoreError::AlreadySealed(_) => ErrorCode::AlreadySealed,
            StoreError::StoreFull { .. } => ErrorCode::StoreFull,
            StoreError::TooLarge { .. } => ErrorCode::TooLarge,
            StoreError::SizeMismatch { .. } => ErrorCode::SizeMismatch,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Pending {
        owner: ConnId,
        sealing: bool,
    },
    /// Being pulled from peers: the daemon writes verified chunks and serves them on.
    Receiving {
        manifest: Arc<Manifest>,
        mapping: Arc<ReadOnlyMapping>,
        held: ChunkSet,
    },
    Sealed {
        manifest: Arc<Manifest>,
        mapping: Arc<ReadOnlyMapping>,
    },
}

#[derive(Debug)]
struct Object {
    name: String,
    size: u64,
    phase: Phase,
    deleted: bool,
    evictable: bool,
    segment: Arc<OwnedFd>,
    leases: u32,
    created: Instant,
    last_access: u64,
    /// The S3 object these bytes came from, if they did: chunks no peer serves are read
    /// from it, and `storectl origin` shows it.
    origin: Option<S3Origin>,
}

/// A lease handed out by [`Store::lease`].
#[derive(Debug, Clone)]
pub struct Lease {
    pub info: ObjectInfo,
    pub segment: Arc<OwnedFd>,
}

/// What a `get` finds.
#[derive(Debug)]
pub enum Lookup {
    Ready(Lease),
    /// The name is bound to an object not sealed yet, or not bound at all: wait.
    NotYet,
}

/// What a peer may read of an object.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub id: ObjectId,
    pub manifest: Arc<Manifest>,
    pub held: ChunkSet,
    pub mapping: Arc<ReadOnlyMapping>,
    pub origin: Option<S3Origin>,
}

/// Result of adopting an already sealed object.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopted {
    New(ObjectInfo),
    /// The name was already bound to identical content; nothing changed.
    Existing(ObjectInfo),
}

#[derive(Debug)]
pub struct Store {
    capacity: u64,
    used: u64,
    next_id: ObjectId,
    clock: u64,
    objects: HashMap<ObjectId, Object>,
    names: HashMap<String, ObjectId>,
    /// Sealed objects by last access.
    lru: BTreeMap<u64, ObjectId>,
    chunk_size: u64,
    evictions: u64,
}

impl Store {
    pub fn new(capacity: u64, chunk_size: u64) -> Self {
        Self {
            capacity,
            used: 0,
            next_id: 1,
            clock: 0,
            objects: HashMap::new(),
            names: HashMap::new(),
            lru: BTreeMap::new(),
            chunk_size,
            evictions: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Fails early, before any work, if `size` could never fit right now.
    pub fn check_room(&self, size: u64) -> Result<(), StoreError> {
        if size > self.capacity {
            return Err(StoreError::TooLarge { size, capacity: self.capacity });
        }
        let free = self.capacity - self.used;
        if free >= size {
            return Ok(());
        }
        let evictable = self.evictable_bytes();
        if free + evictable < size {
            return Err(StoreError::StoreFull { size, free, evictable, capacity: self.capacity });
        }
        Ok(())
    }

    fn is_evictable(obj: &Object) -> bool {
        obj.evictable && obj.leases == 0 && !obj.deleted && matches!(obj.phase, Phase::Sealed { .. })
    }

    fn evictable_bytes(&self) -> u64 {
        self.objects.values().filter(|o| Self::is_evictable(o)).map(|o| o.size).sum()
    }

    /// Evicts LRU evictable objects until `size` fits; evicts nothing if it cannot fit.
    fn make_room(&mut self, size: u64) -> Result<Vec<String>, StoreError> {
        self.check_room(size)?;
        let mut evicted = Vec::new();
        while self.capacity - self.used < size {
            let victim = self.lru.values().copied().find(|id| self.objects.get(id).is_some_and(Self::is_evictable));
            let Some(id) = victim else { break };
            if let Some(obj) = self.remove(id) {
                self.evictions += 1;
                evicted.push(obj.name);
            }
        }
        Ok(evicted)
    }

    fn remove(&mut self, id: ObjectId) -> Option<Object> {
        let obj = self.objects.remove(&id)?;
        self.used -= obj.size;
        self.lru.remove(&obj.last_access);
        if self.names.get(&obj.name) == Some(&id) {
            self.names.remove(&obj.name);
        }
        Some(obj)
    }

    fn touch(&mut self, id: ObjectId) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(obj) = self.objects.get_mut(&id) {
            self.lru.remove(&obj.last_access);
            obj.last_access = clock;
            self.lru.insert(clock, id);
        }
    }

    fn insert(&mut self, name: &str, size: u64, evictable: bool, segment: OwnedFd, phase: Phase) -> ObjectId {
        let id = self.next_id;
        self.next_id += 1;
        self.used += size;
        let sealed = matches!(phase, Phase::Sealed { .. });
        self.objects.insert(
            id,
            Object {
                name: name.to_owned(),
                size,
                phase,
                deleted: false,
                evictable,
                segment: Arc::new(segment),
                leases: 0,
                created: Instant::now(),
                last_access: 0,
                origin: None,
            },
        );
        self.names.insert(name.to_owned(), id);
        if sealed {
            self.touch(id);
        }
        id
    }

    /// Reserves room and binds `name` to a new unsealed object owned by `owner`.
    /// Returns the evicted names with the id.
    pub fn reserve(
        &mut self,
        name: &str,
        size: u64,
        evictable: bool,
        segment: OwnedFd,
        owner: ConnId,
    ) -> Result<(ObjectId, Vec<String>), StoreError> {
        self.check_unbound(name)?;
        let evicted = self.make_room(size)?;
        let id = self.insert(name, size, evictable, segment, Phase::Pending { owner, sealing: false });
        Ok((id, evicted))
    }

    fn check_unbound(&self, name: &str) -> Result<(), StoreError> {
        match self.names.get(name).and_then(|id| self.objects.get(id)) {
            None => Ok(()),
            Some(obj) => match obj.phase {
                Phase::Pending { .. } | Phase::Receiving { .. } => Err(StoreError::Pending(name.to_owned())),
                Phase::Sealed { .. } => Err(StoreError::AlreadyExists(name.to_owned())),
            },
        }
    }

    /// Marks an unsealed object of `owner` as being sealed and returns its memfd.
    pub fn begin_seal(&mut self, id: ObjectId, owner: ConnId) -> Result<(Arc<OwnedFd>, u64), StoreError> {
        let obj = self.objects.get_mut(&id).ok_or(StoreError::UnknownPending(id))?;
        match &mut obj.phase {
            Phase::Pending { owner: o, sealing } if *o == owner => {
                if *sealing {
                    return Err(StoreError::AlreadySealed(id));
                }
                *sealing = true;
                Ok((obj.segment.clone(), obj.size))
            }
            Phase::Pending { .. } | Phase::Receiving { .. } => Err(StoreError::UnknownPending(id)),
            Phase::Sealed { .. } => Err(StoreError::AlreadySealed(id)),
        }
    }

    /// Undoes [`Store::begin_seal`] after a failed seal; the object stays unsealed.
    pub fn seal_failed(&mut self, id: ObjectId) {
        if let Some(Object { phase: Phase::Pending { sealing, .. }, .. }) = self.objects.get_mut(&id) {
            *sealing = false;
        }
    }

    /// Completes a seal started with [`Store::begin_seal`]. The object keeps the size it was
    /// reserved (and accounted) with: a manifest of another size is refused.
    pub fn finish_seal(
        &mut self,
        id: ObjectId,
        manifest: Manifest,
        mapping: ReadOnlyMapping,
    ) -> Result<ObjectInfo, StoreError> {
        let obj = self.objects.get_mut(&id).ok_or(StoreError::UnknownPending(id))?;
        if manifest.size != obj.size {
            let (reserved, sealed) = (obj.size, manifest.size);
            self.seal_failed(id);
            return Err(StoreError::SizeMismatch { id, reserved, sealed });
        }
        obj.phase = Phase::Sealed { manifest: Arc::new(manifest), mapping: Arc::new(mapping) };
        self.touch(id);
        self.info(id).ok_or(StoreError::UnknownPending(id))
    }

    /// Drops an unsealed object of `owner`.
    pub fn abort(&mut self, id: ObjectId, owner: ConnId) -> Result<(), StoreError> {
        match self.objects.get(&id).map(|o| &o.phase) {
            Some(Phase::Pending { owner: o, .. }) if *o == owner => {
                self.remove(id);
                Ok(())
            }
            Some(Phase::Sealed { .. }) => Err(StoreError::AlreadySealed(id)),
            _ => Err(StoreError::UnknownPending(id)),
        }
    }

    /// Takes `size` bytes of room for an object that is being filled and not bound to a name
    /// yet (a copy under way), evicting as a put would, so that fills under way together
    /// never exceed the capacity. Give it back with [`Store::return_room`], also right
    /// before [`Store::adopt`]ing the object under the same lock.
    pub fn reserve_room(&mut self, size: u64) -> Result<Vec<String>, StoreError> {
        let evicted = self.make_room(size)?;
        self.used += size;
        Ok(evicted)
    }

    /// Gives back room taken with [`Store::reserve_room`].
    pub fn return_room(&mut self, size: u64) {
        self.used -= size;
    }

    /// Binds `name` to an object that is already sealed and hashed.
    pub fn adopt(
        &mut self,
        name: &str,
        evictable: bool,
        segment: OwnedFd,
        manifest: Manifest,
        mapping: ReadOnlyMapping,
    ) -> Result<(Adopted, Vec<String>), StoreError> {
        if let Some(&id) = self.names.get(name) {
            let same = match self.objects.get(&id).map(|o| &o.phase) {
                Some(Phase::Sealed { manifest: m, .. }) => m.root == manifest.root && m.size == manifest.size,
                Some(Phase::Pending { .. } | Phase::Receiving { .. }) => {
                    return Err(StoreError::Pending(name.to_owned()));
                }
                None => false,
            };
            if !same {
                return Err(StoreError::AlreadyExists(name.to_owned()));
            }
            let info = self.info(id).ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
            return Ok((Adopted::Existing(info), Vec::new()));
        }
        let size = manifest.size;
        let evicted = self.make_room(size)?;
        let id = self.insert(
            name,
            size,
            evictable,
            segment,
            Phase::Sealed { manifest: Arc::new(manifest), mapping: Arc::new(mapping) },
        );
        let info = self.info(id).ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        Ok((Adopted::New(info), evicted))
    }

    /// Takes a lease on the sealed object bound to `name`.
    pub fn lease(&mut self, name: &str) -> Lookup {
        let Some(&id) = self.names.get(name) else { return Lookup::NotYet };
        let Some(obj) = self.objects.get_mut(&id) else { return Lookup::NotYet };
        if !matches!(obj.phase, Phase::Sealed { .. }) {
            return Lookup::NotYet;
        }
        obj.leases += 1;
        let segment = obj.segment.clone();
        self.touch(id);
        match self.info(id) {
            Some(info) => Lookup::Ready(Lease { info, segment }),
            None => Lookup::NotYet,
        }
    }

    /// Returns one lease; frees a deleted object with its last lease.
    pub fn release(&mut self, id: ObjectId) -> bool {
        let Some(obj) = self.objects.get_mut(&id) else { return false };
        if obj.leases == 0 {
            return false;
        }
        obj.leases -= 1;
        if obj.leases == 0 && obj.deleted {
            self.remove(id);
        }
        true
    }

    /// Unbinds `name`; see the module docs for what happens to leased objects.
    pub fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        let id = *self.names.get(name).ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let Some(obj) = self.objects.get_mut(&id) else {
            return Err(StoreError::NotFound(name.to_owned()));
        };
        if matches!(obj.phase, Phase::Pending { .. } | Phase::Receiving { .. }) {
            return Err(StoreError::DeletePending(name.to_owned()));
        }
        if obj.leases == 0 {
            self.remove(id);
        } else {
            obj.deleted = true;
            self.names.remove(name);
        }
        Ok(())
    }

    pub fn info(&self, id: ObjectId) -> Option<ObjectInfo> {
        let obj = self.objects.get(&id)?;
        let (state, digest) = match (&obj.phase, obj.deleted) {
            (Phase::Pending { .. }, _) => (ObjectState::Pending, None),
            (Phase::Receiving { manifest, .. }, _) => (ObjectState::Pending, Some(manifest.root)),
            (Phase::Sealed { manifest, .. }, false) => (ObjectState::Sealed, Some(manifest.root)),
            (Phase::Sealed { manifest, .. }, true) => (ObjectState::Deleted, Some(manifest.root)),
        };
        Some(ObjectInfo {
            id,
            name: obj.name.clone(),
            size: obj.size,
            state,
            digest,
            chunk_size: self.chunk_size,
            leases: obj.leases,
            age_ms: obj.created.elapsed().as_millis() as u64,
            evictable: obj.evictable,
        })
    }

    pub fn stat(&self, name: &str) -> Result<ObjectInfo, StoreError> {
        self.names.get(name).and_then(|&id| self.info(id)).ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// What a peer may read of `name`: the manifest, the chunks held and the daemon's
    /// own mapping of them. Sealed objects and objects being received are served.
    pub fn peer_view(&self, name: &str) -> Option<PeerView> {
        let id = *self.names.get(name)?;
        let obj = self.objects.get(&id)?;
        match &obj.phase {
            Phase::Sealed { manifest, mapping } => Some(PeerView {
                id,
                manifest: manifest.clone(),
                held: ChunkSet::full(manifest.chunk_count()),
                mapping: mapping.clone(),
                origin: obj.origin.clone(),
            }),
            Phase::Receiving { manifest, mapping, held } => Some(PeerView {
                id,
                manifest: manifest.clone(),
                held: held.clone(),
                mapping: mapping.clone(),
                origin: obj.origin.clone(),
            }),
            Phase::Pending { .. } => None,
        }
    }

    /// Whether `name` is bound to anything (sealed, being created or being received).
    pub fn is_bound(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Whether a sealed object is bound to `name`.
    pub fn has_sealed(&self, name: &str) -> bool {
        self.names
            .get(name)
            .and_then(|id| self.objects.get(id))
            .is_some_and(|o| matches!(o.phase, Phase::Sealed { .. }))
    }

    /// Starts receiving `name` from peers into `segment`, as an evictable copy.
    pub fn begin_receive(
        &mut self,
        name: &str,
        manifest: Manifest,
        segment: OwnedFd,
        mapping: ReadOnlyMapping,
    ) -> Result<(ObjectId, Vec<String>), StoreError> {
        self.check_unbound(name)?;
        let size = manifest.size;
        let evicted = self.make_room(size)?;
        let held = ChunkSet::empty(manifest.chunk_count());
        let phase = Phase::Receiving { manifest: Arc::new(manifest), mapping: Arc::new(mapping), held };
        let id = self.insert(name, size, true, segment, phase);
        Ok((id, evicted))
    }

    /// A verified chunk of an object being received has landed.
    pub fn chunk_received(&mut self, id: ObjectId, index: u64) {
        if let Some(Object { phase: Phase::Receiving { held, .. }, .. }) = self.objects.get_mut(&id) {
            held.insert(index);
        }
    }

    /// The memfd of an object being received, for the caller to seal once complete.
    pub fn receiving_segment(&self, id: ObjectId) -> Option<Arc<OwnedFd>> {
        match self.objects.get(&id) {
            Some(obj @ Object { phase: Phase::Receiving { .. }, .. }) => Some(obj.segment.clone()),
            _ => None,
        }
    }

    /// Completes a receive whose memfd the caller has sealed.
    pub fn finish_receive(&mut self, id: ObjectId) -> Result<ObjectInfo, StoreError> {
        let obj = self.objects.get_mut(&id).ok_or(StoreError::UnknownPending(id))?;
        let Phase::Receiving { manifest, mapping, held } = &obj.phase else {
            return Err(StoreError::UnknownPending(id));
        };
        if !held.is_complete() {
            return Err(StoreError::UnknownPending(id));
        }
        obj.phase = Phase::Sealed { manifest: manifest.clone(), mapping: mapping.clone() };
        self.touch(id);
        self.info(id).ok_or(StoreError::UnknownPending(id))
    }

    /// Records the S3 object `id`'s bytes came from.
    pub fn set_origin(&mut self, id: ObjectId, origin: S3Origin) {
        if let Some(obj) = self.objects.get_mut(&id) {
            obj.origin = Some(origin);
        }
    }

    /// The S3 object the bytes bound to `name` came from, if they did.
    pub fn origin(&self, name: &str) -> Result<Option<S3Origin>, StoreError> {
        let id = self.names.get(name).ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        Ok(self.objects.get(id).and_then(|o| o.origin.clone()))
    }

    /// Drops an object being received: nothing half-received is ever kept.
    pub fn abort_receive(&mut self, id: ObjectId) {
        if matches!(self.objects.get(&id).map(|o| &o.phase), Some(Phase::Receiving { .. })) {
            self.remove(id);
        }
    }

    /// Everything this node holds, in whole or in part, as the scheduler wants it.
    pub fn holdings(&self) -> Vec<Holding> {
        let mut out: Vec<Holding> = self
            .objects
            .values()
            .filter(|o| !o.deleted && self.names.contains_key(&o.name))
            .filter_map(|o| {
                let (manifest, chunks) = match &o.phase {
                    Phase::Sealed { manifest, .. } => (manifest, ChunkSet::full(manifest.chunk_count())),
                    Phase::Receiving { manifest, held, .. } => (manifest, held.clone()),
                    Phase::Pending { .. } => return None,
                };
                Some(Holding {
                    name: o.name.clone(),
                    size: manifest.size,
                    chunk_size: manifest.chunk_size,
                    root: manifest.root,
                    chunks,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn free(&self) -> u64 {
        self.capacity - self.used
    }

    /// Every object, bound or deleted-but-leased, sorted by name.
    pub fn list(&self) -> Vec<ObjectInfo> {
        let mut all: Vec<ObjectInfo> = self.objects.keys().filter_map(|&id| self.info(id)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Model;

    fn fd() -> OwnedFd {
        store_client::sys::create_memfd(0).unwrap()
    }

    fn manifest(size: u64, seed: u8) -> Manifest {
        let data = vec![seed; size as usize];
        Manifest::compute(&data, 1024, 1).unwrap()
    }

    fn put(store: &mut Store, name: &str, size: u64, evictable: bool) -> Result<ObjectInfo, StoreError> {
        match store.adopt(name, evictable, fd(), manifest(size, 1), ReadOnlyMapping::empty())? {
            (Adopted::New(info), _) | (Adopted::Existing(info), _) => Ok(info),
        }
    }

    impl Store {
        fn adopt_t(
            &mut self,
            name: &str,
            evictable: bool,
            fd: OwnedFd,
            m: Manifest,
        ) -> Result<(Adopted, Vec<String>), StoreError> {
            self.adopt(name, evictable, fd, m, ReadOnlyMapping::empty())
        }
    }

    fn lease_id(store: &mut Store, name: &str) -> ObjectId {
        match store.lease(name) {
            Lookup::Ready(l) => l.info.id,
            Lookup::NotYet => panic!("{name} not ready"),
        }
    }

    #[test]
    fn names_bind_once_same_content_is_a_no_op() {
        let mut s = Store::new(10_000, 1024);
        let first = put(&mut s, "a", 100, false).unwrap();
        let (again, _) = s.adopt_t("a", false, fd(), manifest(100, 1)).unwrap();
        assert_eq!(again, Adopted::Existing(first.clone()));
        assert_eq!(s.adopt_t("a", false, fd(), manifest(100, 2)).unwrap_err(), StoreError::AlreadyExists("a".into()));
        assert_eq!(s.used(), 100);
    }

    #[test]
    fn evicts_least_recently_used_evictable_objects_first() {
        let mut s = Store::new(300, 1024);
        put(&mut s, "a", 100, true).unwrap();
        put(&mut s, "b", 100, true).unwrap();
        put(&mut s, "c", 100, true).unwrap();
        // Touch "a" so that "b" becomes the oldest.
        let id = lease_id(&mut s, "a");
        s.release(id);
        let (_, evicted) = s.adopt_t("d", true, fd(), manifest(100, 4)).unwrap();
        assert_eq!(evicted, vec!["b".to_string()]);
        let (_, evicted) = s.adopt_t("e", true, fd(), manifest(200, 5)).unwrap();
        assert_eq!(evicted, vec!["c".to_string(), "a".to_string()]);
        assert_eq!(s.evictions(), 3);
    }

    #[test]
    fn leased_and_primary_objects_are_never_evicted() {
        let mut s = Store::new(300, 1024);
        put(&mut s, "primary", 100, false).unwrap();
        put(&mut s, "leased", 100, true).unwrap();
        put(&mut s, "cache", 100, true).unwrap();
        let _lease = lease_id(&mut s, "leased");
        let (_, evicted) = s.adopt_t("new", true, fd(), manifest(100, 9)).unwrap();
        assert_eq!(evicted, vec!["cache".to_string()]);
        let err = s.adopt_t("big", true, fd(), manifest(150, 9)).unwrap_err();
        assert!(matches!(err, StoreError::StoreFull { size: 150, free: 0, evictable: 100, capacity: 300 }));
        // A failed put evicts nothing.
        assert!(s.stat("new").is_ok());
        assert_eq!(
            s.adopt_t("huge", true, fd(), manifest(301, 9)).unwrap_err(),
            StoreError::TooLarge { size: 301, capacity: 300 }
        );
    }

    #[test]
    fn delete_of_a_leased_object_defers_the_free() {
        let mut s = Store::new(1000, 1024);
        put(&mut s, "a", 100, false).unwrap();
        let id = lease_id(&mut s, "a");
        s.delete("a").unwrap();
        assert!(matches!(s.lease("a"), Lookup::NotYet));
        assert_eq!(s.used(), 100);
        assert_eq!(s.info(id).unwrap().state, ObjectState::Deleted);
        // The name can be bound again while the old object lives on.
        put(&mut s, "a", 50, false).unwrap();
        assert!(s.release(id));
        assert_eq!(s.used(), 50);
        assert!(!s.release(id));
        assert_eq!(s.delete("zzz"), Err(StoreError::NotFound("zzz".into())));
    }

    #[test]
    fn pending_objects_belong_to_their_creator() {
        let mut s = Store::new(1000, 1024);
        let (id, _) = s.reserve("p", 10, false, fd(), 7).unwrap();
        assert!(matches!(s.lease("p"), Lookup::NotYet));
        assert_eq!(s.reserve("p", 10, false, fd(), 8).unwrap_err(), StoreError::Pending("p".into()));
        assert_eq!(s.begin_seal(id, 8).unwrap_err(), StoreError::UnknownPending(id));
        assert_eq!(s.delete("p"), Err(StoreError::DeletePending("p".into())));
        s.begin_seal(id, 7).unwrap();
        assert_eq!(s.begin_seal(id, 7).unwrap_err(), StoreError::AlreadySealed(id));
        s.seal_failed(id);
        s.begin_seal(id, 7).unwrap();
        s.finish_seal(id, manifest(10, 3), ReadOnlyMapping::empty()).unwrap();
        assert!(matches!(s.lease("p"), Lookup::Ready(_)));
        assert_eq!(s.abort(id, 7), Err(StoreError::AlreadySealed(id)));
        let (id2, _) = s.reserve("q", 10, false, fd(), 7).unwrap();
        s.abort(id2, 7).unwrap();
        assert_eq!(s.used(), 10);
    }

    #[test]
    fn reserved_room_counts_until_returned() {
        let mut s = Store::new(1000, 1024);
        put(&mut s, "cache", 300, true).unwrap();
        assert_eq!(s.reserve_room(600).unwrap(), Vec::<String>::new());
        assert_eq!(s.used(), 900);
        assert!(matches!(s.reserve_room(200), Ok(evicted) if evicted == ["cache"]));
        assert!(matches!(s.reserve_room(300), Err(StoreError::StoreFull { .. })));
        assert!(matches!(s.adopt_t("x", false, fd(), manifest(300, 1)), Err(StoreError::StoreFull { .. })));
        s.return_room(600);
        put(&mut s, "x", 600, false).unwrap();
        s.return_room(200);
        assert_eq!(s.used(), 600);
    }

    #[test]
    fn a_seal_of_another_size_than_reserved_is_refused() {
        let mut s = Store::new(1000, 1024);
        let (id, _) = s.reserve("p", 100, false, fd(), 7).unwrap();
        s.begin_seal(id, 7).unwrap();
        let err = s.finish_seal(id, manifest(0, 1), ReadOnlyMapping::empty()).unwrap_err();
        assert_eq!(err, StoreError::SizeMismatch { id, reserved: 100, sealed: 0 });
        assert_eq!(err.code(), ErrorCode::SizeMismatch);
        assert_eq!(s.stat("p").unwrap().state, ObjectState::Pending);
        assert_eq!(s.used(), 100);
        s.begin_seal(id, 7).unwrap();
        s.finish_seal(id, manifest(100, 1), ReadOnlyMapping::empty()).unwrap();
    }

    /// Random operations against a simple reference model of bytes in use.
    #[test]
    fn accounting_matches_a_reference_model() {
        let mut s = Store::new(1000, 1024);
        let mut model: Model<String, (u64, u32)> = Model::new();
        let mut leases: Vec<(String, ObjectId)> = Vec::new();
        let mut x: u64 = 12345;
        for _ in 0..3000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let name = format!("o{}", (x >> 33) % 12);
            let size = (x >> 40) % 300;
            match (x >> 20) % 4 {
                0 => {
                    if let Ok((Adopted::New(_), evicted)) =
                        s.adopt(&name, true, fd(), manifest(size, 1), ReadOnlyMapping::empty())
                    {
                        for e in evicted {
                            assert_eq!(model.get(&e).map(|m| m.1), Some(0), "evicted a leased object");
                            model.remove(&e);
                        }
                        model.insert(name, (size, 0));
                    }
                }
                1 => {
                    if let Lookup::Ready(l) = s.lease(&name) {
                        model.get_mut(&name).unwrap().1 += 1;
                        leases.push((name, l.info.id));
                    }
                }
                2 => {
                    if let Some((n, id)) = leases.pop() {
                        s.release(id);
                        if let Some(m) = model.get_mut(&n)
                            && s.info(id).is_some_and(|i| i.state == ObjectState::Sealed)
                        {
                            m.1 -= 1;
                        }
                    }
                }
                _ => {
                    if s.delete(&name).is_ok() {
                        model.remove(&name);
                    }
                }
            }
            assert!(s.used() <= s.capacity());
            let bound: u64 = model.values().map(|m| m.0).sum();
            assert!(s.used() >= bound);
        }
    }
}
