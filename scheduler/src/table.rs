//! The global location table: which nodes are alive and which objects (or parts of them) each
//! one holds.
//!
//! It is soft state and a pure state machine. Events come in as method calls that carry the
//! time (`now`); effects come out as [`Effect`] values. Nothing here reads a clock or touches
//! a socket, so the table is tested by stepping virtual time.
//!
//! - A node [`register`](Table::register)s with its whole holdings, which replace anything
//!   known of it; this is also how the table rebuilds itself after a scheduler restart.
//! - Every message from a node renews its lease; [`expire`](Table::expire) drops the nodes
//!   whose lease has passed (at `now >= last message + lease`), with all their locations.
//!   Until `expire` runs, a node whose lease has passed is still known and may renew it; the
//!   driver calls `expire` at [`next_expiry`](Table::next_expiry).
//! - [`announce`](Table::announce) replaces what is known of one (node, object) pair, complete
//!   or partial; [`withdraw`](Table::withdraw) removes it.
//! - A message from a node the table does not know is answered [`TableError::UnknownNode`]:
//!   the node must register again with everything it holds.
//!
//! One name, one content, cluster-wide: a holding of a name that another node holds with a
//! different root is refused ([`TableError::Conflict`]; left out of a registration), so every
//! [`Location`] of a name carries the same root. A node may replace its own holding of a
//! name, and once every other holder withdrew, the name may take another content.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use store_client::manifest::{Digest, MIN_CHUNK_SIZE, check_chunk_size, chunk_count};
use store_client::name::{self, NameError};
use store_client::wire::node::{Holding, Location, NodeId, NodeInfo, NodeStatus};
use thiserror::Error;

/// How long a node stays in the table after its last message, unless configured otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// Longest accepted node id, in bytes (a DNS name's limit).
pub const MAX_NODE_ID_LEN: usize = 253;

/// What a change of the table means to the outside.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// The node's lease passed; it was dropped with all its locations.
    NodeExpired(NodeId),
    /// The object has a complete holder now and had none before: wake its waiters.
    ObjectAvailable(String),
    /// The last complete holder of the object is gone (partial holders may remain).
    ObjectUnavailable(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TableError {
    #[error("unknown node {0:?}: register again with everything it holds")]
    UnknownNode(NodeId),
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNode { id: NodeId, reason: &'static str },
    #[error("invalid holding of {name:?}: {reason}")]
    InvalidHolding {
        name: String,
        #[source]
        reason: HoldingError,
    },
    #[error("invalid object name {name:?}: {source}")]
    InvalidName {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("{name:?} is bound to other content in the cluster: {holder} holds root {known}")]
    Conflict { name: String, known: Digest, holder: NodeId },
}

/// Why a [`Holding`] was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HoldingError {
    #[error("bad object name: {0}")]
    Name(#[from] NameError),
    #[error("chunk size {0} is not a power of two of at least {MIN_CHUNK_SIZE}")]
    ChunkSize(u64),
    #[error("malformed chunk set")]
    MalformedChunks,
    #[error("chunk set covers {got} chunks, an object of {size} bytes in chunks of {chunk_size} has {expected}")]
    ChunkCount { got: u64, expected: u64, size: u64, chunk_size: u64 },
    #[error("listed more than once")]
    Duplicate,
}

/// Checks a holding as received from the wire.
pub fn validate_holding(h: &Holding) -> Result<(), HoldingError> {
    name::validate(&h.name)?;
    check_chunk_size(h.chunk_size).map_err(|_| HoldingError::ChunkSize(h.chunk_size))?;
    if !h.chunks.is_valid() {
        return Err(HoldingError::MalformedChunks);
    }
    let expected = chunk_count(h.size, h.chunk_size);
    if h.chunks.len() != expected {
        return Err(HoldingError::ChunkCount { got: h.chunks.len(), expected, size: h.size, chunk_size: h.chunk_size });
    }
    Ok(())
}

fn validate_node_id(id: &str) -> Result<(), TableError> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_NODE_ID_LEN {
        "too long"
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "contains whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(TableError::InvalidNode { id: id.to_owned(), reason })
}

/// Bytes covered by the chunks in `chunks` of an object of `size` bytes (only the last chunk
/// may be short).
fn held_bytes(size: u64, chunk_size: u64, chunks: &store_client::chunkset::ChunkSet) -> u64 {
    let count = chunks.count();
    let last = chunks.len().saturating_sub(1);
    if count == 0 {
        return 0;
    }
    if chunks.contains(last) {
        let last_len = size.saturating_sub(last.saturating_mul(chunk_size));
        (count - 1).saturating_mul(chunk_size).saturating_add(last_len)
    } else {
        count.saturating_mul(chunk_size)
    }
}

/// What [`Table::register`] did: the effects on objects' availability, and the holdings it
/// left out with why.
#[derive(Debug, PartialEq)]
pub struct Registered {
    pub effects: Vec<Effect>,
    pub refused: Vec<TableError>,
}

fn invalid(name: &str, reason: HoldingError) -> TableError {
    TableError::InvalidHolding { name: name.to_owned(), reason }
}

#[derive(Debug)]
struct Node {
    info: NodeInfo,
    last_seen: Instant,
    holdings: BTreeMap<String, Holding>,
}

/// The location table. See the module documentation.
#[derive(Debug)]
pub struct Table {
    lease: Duration,
    nodes: BTreeMap<NodeId, Node>,
    /// Index: object name -> nodes holding (part of) it. Never holds an empty set.
    holders: BTreeMap<String, BTreeSet<NodeId>>,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(DEFAULT_LEASE)
    }
}

impl Table {
    pub fn new(lease: Duration) -> Self {
        Self { lease, nodes: BTreeMap::new(), holders: BTreeMap::new() }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Adds a node, or replaces everything known of it (info and holdings). An invalid
    /// holding (or a second one of the same name) is left out and returned, so that one bad
    /// entry never keeps the node and everything else it holds out of the table; an invalid
    /// node id refuses the whole registration.
    pub fn register(&mut self, now: Instant, info: NodeInfo, holdings: Vec<Holding>) -> Result<Registered, TableError> {
        validate_node_id(&info.id)?;
        let mut new = BTreeMap::new();
        let mut refused = Vec::new();
        for h in holdings {
            if let Err(reason) = validate_holding(&h) {
                refused.push(invalid(&h.name, reason));
            } else if new.contains_key(&h.name) {
                refused.push(invalid(&h.name, HoldingError::Duplicate));
            } else {
                new.insert(h.name.clone(), h);
            }
        }
        let id = info.id.clone();
        new.retain(|_, h| match self.conflict(&id, h) {
            Some(conflict) => {
                refused.push(conflict);
                false
            }
            None => true,
        });
        let mut affected: BTreeSet<String> = new.keys().cloned().collect();
        if let Some(old) = self.nodes.get(&id) {
            affected.extend(old.holdings.keys().cloned());
        }
        let before = self.availability(&affected);
        if let Some(old) = self.nodes.remove(&id) {
            self.unindex(&id, old.holdings.keys());
        }
        for name in new.keys() {
            self.holders.entry(name.clone()).or_default().insert(id.clone());
        }
        self.nodes.insert(id, Node { info, last_seen: now, holdings: new });
        Ok(Registered { effects: self.object_effects(before), refused })
    }

    /// Renews the node's lease and records its free bytes.
    pub fn heartbeat(&mut self, now: Instant, node: &str, free: u64) -> Result<(), TableError> {
        let entry = self.node_mut(node)?;
        entry.last_seen = now;
        entry.info.free = free;
        Ok(())
    }

    /// Replaces what is known of (node, object); renews the node's lease.
    pub fn announce(&mut self, now: Instant, node: &str, holding: Holding) -> Result<Vec<Effect>, TableError> {
        validate_holding(&holding).map_err(|reason| invalid(&holding.name, reason))?;
        self.node_mut(node)?;
        if let Some(conflict) = self.conflict(node, &holding) {
            return Err(conflict);
        }
        let before = self.availability_of(&holding.name);
        let entry = self.node_mut(node)?;
        entry.last_seen = now;
        let name = holding.name.clone();
        entry.holdings.insert(name.clone(), holding);
        self.holders.entry(name.clone()).or_default().insert(node.to_owned());
        Ok(self.object_effects(BTreeMap::from([(name, before)])))
    }

    /// Forgets that the node holds the object (a no-op if it did not); renews its lease.
    pub fn withdraw(&mut self, now: Instant, node: &str, name: &str) -> Result<Vec<Effect>, TableError> {
        name::validate(name).map_err(|source| TableError::InvalidName { name: name.to_owned(), source })?;
        let before = self.availability_of(name);
        let entry = self.node_mut(node)?;
        entry.last_seen = now;
        if entry.holdings.remove(name).is_none() {
            return Ok(Vec::new());
        }
        self.unindex(node, [name]);
        Ok(self.object_effects(BTreeMap::from([(name.to_owned(), before)])))
    }

    /// Drops every node whose lease has passed at `now`, with all its locations.
    /// Effects: the expired nodes (by id), then the objects that lost their last complete copy.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let expired: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| now >= n.last_seen + self.lease).map(|(id, _)| id.clone()).collect();
        if expired.is_empty() {
            return Vec::new();
        }
        let affected: BTreeSet<String> =
            expired.iter().filter_map(|id| self.nodes.get(id)).flat_map(|n| n.holdings.keys().cloned()).collect();
        let before = self.availability(&affected);
        for id in &expired {
            if let Some(node) = self.nodes.remove(id) {
                self.unindex(id, node.holdings.keys());
            }
        }
        let mut effects: Vec<Effect> = expired.into_iter().map(Effect::NodeExpired).collect();
        effects.extend(self.object_effects(before));
        effects
    }

    /// When the next lease passes, if any node is registered: the time to call
    /// [`expire`](Table::expire) next.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.nodes.values().map(|n| n.last_seen + self.lease).min()
    }

    /// Holders of the object: complete ones first, then partial ones by chunks held (most
    /// first); ties by node id.
    pub fn locate(&self, name: &str) -> Vec<Location> {
        let Some(ids) = self.holders.get(name) else {
            return Vec::new();
        };
        let mut out: Vec<Location> = ids
            .iter()
            .filter_map(|id| {
                let node = self.nodes.get(id)?;
                let h = node.holdings.get(name)?;
                Some(Location {
                    node: id.clone(),
                    addr: node.info.addr,
                    size: h.size,
                    chunk_size: h.chunk_size,
                    root: h.root,
                    chunks: h.chunks.clone(),
                })
            })
            .collect();
        // Stable sort: ids are already in order within each rank.
        out.sort_by_key(|l| (!l.chunks.is_complete(), std::cmp::Reverse(l.chunks.count())));
        out
    }

    /// The refusal of `holding` from `node` if another node holds its name with another root.
    fn conflict(&self, node: &str, holding: &Holding) -> Option<TableError> {
        let holders = self.holders.get(&holding.name)?;
        holders.iter().filter(|id| id.as_str() != node).find_map(|id| {
            let known = self.nodes.get(id)?.holdings.get(&holding.name)?;
            (known.root != holding.root).then(|| TableError::Conflict {
                name: holding.name.clone(),
                known: known.root,
                holder: id.clone(),
            })
        })
    }

    /// Whether some node holds the whole object.
    pub fn is_available(&self, name: &str) -> bool {
        self.availability_of(name)
    }

    /// Every registered node, by id.
    pub fn nodes(&self, now: Instant) -> Vec<NodeStatus> {
        self.nodes
            .values()
            .map(|n| NodeStatus {
                info: n.info.clone(),
                last_seen_ms: u64::try_from(now.saturating_duration_since(n.last_seen).as_millis()).unwrap_or(u64::MAX),
                objects: n.holdings.len() as u64,
            })
            .collect()
    }

    /// For placement: the object's size and how many of its bytes each node holds, counting
    /// only copies of the content of its first holder as [`locate`](Table::locate) orders
    /// them (a complete one if any); `None` if no node holds any of it.
    pub fn held_bytes(&self, name: &str) -> Option<(u64, BTreeMap<NodeId, u64>)> {
        let locations = self.locate(name);
        let first = locations.first()?;
        let (size, root) = (first.size, first.root);
        let held = locations
            .iter()
            .filter(|l| l.root == root && l.size == size)
            .map(|l| (l.node.clone(), held_bytes(l.size, l.chunk_size, &l.chunks)))
            .collect();
        Some((size, held))
    }

    /// Every registered node's info, by id.
    pub fn node_infos(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().map(|n| &n.info)
    }

    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id).map(|n| &n.info)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of distinct object names held anywhere, in whole or in part.
    pub fn object_count(&self) -> usize {
        self.holders.len()
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut Node, TableError> {
        self.nodes.get_mut(id).ok_or_else(|| TableError::UnknownNode(id.to_owned()))
    }

    fn unindex<S: AsRef<str>>(&mut self, id: &str, names: impl IntoIterator<Item = S>) {
        for name in names {
            let name = name.as_ref();
            if let Some(set) = self.holders.get_mut(name) {
                set.remove(id);
                if set.is_empty() {
                    self.holders.remove(name);
                }
            }
        }
    }

    fn availability_of(&self, name: &str) -> bool {
        self.holders.get(name).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.nodes.get(id).and_then(|n| n.holdings.get(name)).is_some_and(|h| h.chunks.is_complete()))
        })
    }

    fn availability(&self, names: &BTreeSet<String>) -> BTreeMap<String, bool> {
        names.iter().map(|name| (name.clone(), self.availability_of(name))).collect()
    }

    /// Compares the availability of each name before a change with now, in name order.
    fn object_effects(&self, before: BTreeMap<String, bool>) -> Vec<Effect> {
        before
            .into_iter()
            .filter_map(|(name, was)| match (was, self.availability_of(&name)) {
                (false, true) => Some(Effect::ObjectAvailable(name)),
                (true, false) => Some(Effect::ObjectUnavailable(name)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use store_client::chunkset::ChunkSet;

    use super::*;

    /// A holding of `name` with `held` of its chunks (the whole object if `held` is `None`).
    fn holding(name: &str, size: u64, chunk_size: u64, held: Option<&[u64]>) -> Holding {
        let count = chunk_count(size, chunk_size);
        let chunks = match held {
            None => ChunkSet::full(count),
            Some(indices) => {
                let mut s = ChunkSet::empty(count);
                for &i in indices {
                    s.insert(i);
                }
                s
            }
        };
        Holding { name: name.to_owned(), size, chunk_size, root: store_client::Digest([7; 32]), chunks }
    }

    const KIB: u64 = 1024;

    fn info(id: &str) -> NodeInfo {
        let port = 7000 + id.bytes().map(u16::from).sum::<u16>();
        NodeInfo {
            id: id.to_owned(),
            addr: SocketAddr::from(([198, 18, 0, 1], port)),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            capacity: 1 << 30,
            free: 1 << 29,
            resources: BTreeMap::new(),
        }
    }

    fn ids(locs: &[Location]) -> Vec<&str> {
        locs.iter().map(|l| l.node.as_str()).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn node_holding_the_data_is_located() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let effects = t.register(t0, info("a"), vec![holding("m/w", 10 * KIB, KIB, None)]).unwrap().effects;
        assert_eq!(effects, vec![Effect::ObjectAvailable("m/w".into())]);
        let locs = t.locate("m/w");
        assert_eq!(ids(&locs), ["a"]);
        assert_eq!(locs[0].addr, info("a").addr);
        assert_eq!(locs[0].size, 10 * KIB);
        assert!(locs[0].is_complete());
        assert!(t.is_available("m/w"));
        assert!(t.locate("other").is_empty());
        assert_eq!(t.nodes(t0 + Duration::from_millis(250))[0].last_seen_ms, 250);
        assert_eq!(t.nodes(t0)[0].objects, 1);
    }

    #[test]
    fn one_name_keeps_one_content_across_nodes() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let first = holding("m/w", 4 * KIB, KIB, None);
        let other = Holding { root: store_client::Digest([9; 32]), ..first.clone() };
        t.register(t0, info("a"), vec![first.clone()]).unwrap();
        t.register(t0, info("b"), vec![]).unwrap();
        let refused = t.announce(t0, "b", other.clone()).unwrap_err();
        assert_eq!(refused, TableError::Conflict { name: "m/w".into(), known: first.root, holder: "a".into() });
        assert!(refused.to_string().contains("bound to other content"), "{refused}");
        assert_eq!(ids(&t.locate("m/w")), ["a"], "the conflicting holding is not listed");
        // The same content is welcome, partial or whole.
        t.announce(t0, "b", holding("m/w", 4 * KIB, KIB, Some(&[1]))).unwrap();
        // A registration keeps everything else and leaves the conflict out.
        let c = t.register(t0, info("c"), vec![other.clone(), holding("m/v", KIB, KIB, None)]).unwrap();
        assert_eq!(c.refused.len(), 1, "{:?}", c.refused);
        assert!(matches!(c.refused[0], TableError::Conflict { ref holder, .. } if holder == "a" || holder == "b"));
        assert_eq!(ids(&t.locate("m/v")), ["c"]);
        // A node may replace its own content once no one else holds the old one.
        t.withdraw(t0, "b", "m/w").unwrap();
        t.announce(t0, "a", other.clone()).unwrap();
        assert_eq!(t.locate("m/w")[0].root, other.root);
    }

    #[test]
    fn announce_and_withdraw_change_locations_and_report_availability() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.register(t0, info("a"), vec![]).unwrap();
        assert_eq!(t.announce(t0, "a", holding("x", 4 * KIB, KIB, Some(&[0]))).unwrap(), vec![]);
        assert!(!t.is_available("x"));
        assert_eq!(t.locate("x")[0].chunks.count(), 1);
        // Announce replaces: now complete.
        assert_eq!(
            t.announce(t0, "a", holding("x", 4 * KIB, KIB, None)).unwrap(),
            vec![Effect::ObjectAvailable("x".into())]
        );
        // Announcing complete again is not news.
        assert_eq!(t.announce(t0, "a", holding("x", 4 * KIB, KIB, None)).unwrap(), vec![]);
        assert_eq!(t.withdraw(t0, "a", "x").unwrap(), vec![Effect::ObjectUnavailable("x".into())]);
        assert!(t.locate("x").is_empty());
        assert_eq!(t.object_count(), 0);
        // Withdrawing what is not held is a no-op.
        assert_eq!(t.withdraw(t0, "a", "x").unwrap(), vec![]);
    }

    #[test]
    fn expired_node_locations_vanish_and_objects_held_elsewhere_remain() {
        let t0 = Instant::now();
        let mut t = Table::new(secs(3));
        t.register(t0, info("a"), vec![holding("shared", 8 * KIB, KIB, None), holding("only-a", KIB, KIB, None)])
            .unwrap();
        t.register(t0, info("b"), vec![holding("shared", 8 * KIB, KIB, None)]).unwrap();
        assert_eq!(t.next_expiry(), Some(t0 + secs(3)));
        // b keeps heartbeating, a falls silent.
        t.heartbeat(t0 + secs(2), "b", 5).unwrap();
        assert_eq!(t.expire(t0 + secs(2)), vec![]);
        assert_eq!(t.next_expiry(), Some(t0 + secs(3)));
        let effects = t.expire(t0 + secs(3));
        assert_eq!(effects, vec![Effect::NodeExpired("a".into()), Effect::ObjectUnavailable("only-a".into())]);
        assert_eq!(ids(&t.locate("shared")), ["b"]);
        assert!(t.locate("only-a").is_empty());
        assert_eq!(t.nodes(t0 + secs(3)).len(), 1);
        assert_eq!(t.node("b").map(|n| n.free), Some(5));
        assert_eq!(t.next_expiry(), Some(t0 + secs(5)));
        assert_eq!(t.heartbeat(t0 + secs(3), "a", 0), Err(TableError::UnknownNode("a".into())));
    }

    #[test]
    fn announce_and_withdraw_renew_the_lease() {
        let t0 = Instant::now();
        let mut t = Table::new(secs(3));
        t.register(t0, info("a"), vec![]).unwrap();
        t.announce(t0 + secs(2), "a", holding("x", KIB, KIB, None)).unwrap();
        assert_eq!(t.expire(t0 + secs(4)), vec![]);
        t.withdraw(t0 + secs(4), "a", "x").unwrap();
        assert_eq!(t.expire(t0 + secs(6)), vec![]);
        assert_eq!(t.expire(t0 + secs(7)), vec![Effect::NodeExpired("a".into())]);
    }

    #[test]
    fn messages_from_unknown_nodes_ask_for_registration() {
        let t0 = Instant::now();
        let mut t = Table::default();
        assert_eq!(t.heartbeat(t0, "ghost", 1), Err(TableError::UnknownNode("ghost".into())));
        assert_eq!(t.announce(t0, "ghost", holding("x", KIB, KIB, None)), Err(TableError::UnknownNode("ghost".into())));
        assert_eq!(t.withdraw(t0, "ghost", "x"), Err(TableError::UnknownNode("ghost".into())));
        assert_eq!(t.node_count(), 0);
        assert_eq!(t.object_count(), 0);
    }

    #[test]
    fn re_register_after_restart_rebuilds_the_table() {
        let t0 = Instant::now();
        let holdings_a = vec![holding("m", 3 * KIB, KIB, None), holding("p", 3 * KIB, KIB, Some(&[1]))];
        let holdings_b = vec![holding("m", 3 * KIB, KIB, Some(&[0, 2]))];
        let mut before = Table::default();
        before.register(t0, info("a"), holdings_a.clone()).unwrap();
        before.register(t0, info("b"), holdings_b.clone()).unwrap();

        // The scheduler restarts: a fresh, empty table; daemons learn it from UnknownNode.
        let mut after = Table::default();
        let t1 = t0 + secs(1);
        assert_eq!(after.heartbeat(t1, "a", 0), Err(TableError::UnknownNode("a".into())));
        after.register(t1, info("a"), holdings_a).unwrap();
        after.register(t1, info("b"), holdings_b).unwrap();
        for name in ["m", "p"] {
            assert_eq!(after.locate(name), before.locate(name));
        }
        assert_eq!(after.nodes(t1), before.nodes(t0));
    }

    #[test]
    fn re_register_replaces_the_node_state() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.register(t0, info("a"), vec![holding("old", KIB, KIB, None)]).unwrap();
        let mut moved = info("a");
        moved.addr = SocketAddr::from(([198, 18, 0, 9], 1));
        let effects = t.register(t0, moved.clone(), vec![holding("new", KIB, KIB, None)]).unwrap().effects;
        assert_eq!(effects, vec![Effect::ObjectAvailable("new".into()), Effect::ObjectUnavailable("old".into())]);
        assert!(t.locate("old").is_empty());
        assert_eq!(t.locate("new")[0].addr, moved.addr);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn partial_holders_are_ordered_after_complete_ones_by_chunks_held() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let size = 130 * KIB;
        t.register(t0, info("p1"), vec![holding("x", size, KIB, Some(&[0]))]).unwrap();
        t.register(t0, info("p0"), vec![holding("x", size, KIB, Some(&[]))]).unwrap();
        t.register(t0, info("z-full"), vec![holding("x", size, KIB, None)]).unwrap();
        t.register(t0, info("p3"), vec![holding("x", size, KIB, Some(&[0, 64, 129]))]).unwrap();
        t.register(t0, info("a-full"), vec![holding("x", size, KIB, None)]).unwrap();
        t.register(t0, info("q3"), vec![holding("x", size, KIB, Some(&[5, 6, 7]))]).unwrap();
        assert_eq!(ids(&t.locate("x")), ["a-full", "z-full", "p3", "q3", "p1", "p0"]);
    }

    #[test]
    fn malformed_holdings_are_rejected_without_changing_the_table() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.register(t0, info("a"), vec![holding("keep", KIB, KIB, None)]).unwrap();

        let good = holding("x", 3 * KIB, KIB, None);
        let malformed = Holding { chunks: decode_chunkset(3, &[0xff]), ..good.clone() };
        assert!(!malformed.chunks.is_valid());
        let wrong_count = Holding { chunks: ChunkSet::full(4), ..good.clone() };
        let bad_chunk_size = Holding { chunk_size: 1000, ..good.clone() };
        let zero_chunk_size = Holding { chunk_size: 0, ..good.clone() };
        let bad_name = Holding { name: "../etc".into(), ..good.clone() };
        let cases = [
            (malformed.clone(), HoldingError::MalformedChunks),
            (wrong_count.clone(), HoldingError::ChunkCount { got: 4, expected: 3, size: 3 * KIB, chunk_size: KIB }),
            (bad_chunk_size.clone(), HoldingError::ChunkSize(1000)),
            (zero_chunk_size.clone(), HoldingError::ChunkSize(0)),
            (bad_name.clone(), HoldingError::Name(NameError::BadSegment)),
        ];
        let mut wants = Vec::new();
        for (h, reason) in cases {
            let want = TableError::InvalidHolding { name: h.name.clone(), reason };
            assert_eq!(t.announce(t0, "a", h.clone()).as_ref().err(), Some(&want));
            wants.push(want);
        }
        assert!(matches!(t.register(t0, info(""), vec![]), Err(TableError::InvalidNode { .. })));
        assert!(matches!(t.register(t0, info("a b"), vec![]), Err(TableError::InvalidNode { .. })));
        assert!(matches!(t.withdraw(t0, "a", ""), Err(TableError::InvalidName { .. })));
        // Nothing changed.
        assert_eq!(ids(&t.locate("keep")), ["a"]);
        assert!(t.locate("x").is_empty());
        assert_eq!(t.node_count(), 1);

        // A registration keeps the node and its valid holdings, and says what it left out.
        let mut holdings = vec![good.clone(), holding("keep", KIB, KIB, None)];
        holdings.extend([&malformed, &wrong_count, &bad_chunk_size, &zero_chunk_size, &bad_name].map(Clone::clone));
        holdings.push(good.clone());
        wants.push(TableError::InvalidHolding { name: "x".into(), reason: HoldingError::Duplicate });
        let registered = t.register(t0, info("a"), holdings).unwrap();
        assert_eq!(registered.refused, wants);
        assert_eq!(ids(&t.locate("keep")), ["a"]);
        assert_eq!(ids(&t.locate("x")), ["a"]);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn held_bytes_count_partial_copies_and_a_short_last_chunk() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.register(t0, info("a"), vec![holding("x", 10 * KIB + 5, KIB, None)]).unwrap();
        t.register(t0, info("b"), vec![holding("x", 10 * KIB + 5, KIB, Some(&[0, 10]))]).unwrap();
        t.register(t0, info("c"), vec![holding("x", 10 * KIB + 5, KIB, Some(&[3]))]).unwrap();
        let (size, held) = t.held_bytes("x").unwrap();
        assert_eq!(size, 10 * KIB + 5);
        assert_eq!(held, BTreeMap::from([("a".into(), 10 * KIB + 5), ("b".into(), KIB + 5), ("c".into(), KIB)]));
        assert_eq!(t.held_bytes("nothing"), None);
        assert_eq!(t.node_infos().count(), 3);
    }

    #[test]
    fn empty_objects_have_one_chunk() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.register(t0, info("a"), vec![holding("empty", 0, KIB, None)]).unwrap();
        assert!(t.is_available("empty"));
        let no_chunks = Holding { chunks: ChunkSet::empty(0), ..holding("e2", 0, KIB, None) };
        assert!(matches!(t.announce(t0, "a", no_chunks), Err(TableError::InvalidHolding { .. })));
    }

    /// A chunk set as a peer could send it: decoded, not constructed, so it may be malformed.
    fn decode_chunkset(len: u64, words: &[u64]) -> ChunkSet {
        #[derive(serde::Serialize)]
        struct Raw<'a> {
            len: u64,
            words: &'a [u64],
        }
        let frame = store_client::frame::encode(&Raw { len, words });
        store_client::frame::decode(&frame[4..]).unwrap()
    }

    // ---- property test against a reference model ----

    /// SplitMix64: small, deterministic, good enough to drive a model test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];
    const NAMES: [&str; 5] = ["a", "b", "c/d", "e", "f"];

    fn random_holding(rng: &mut Rng) -> Holding {
        let name = *rng.pick(&NAMES);
        let size = rng.below(6) * KIB + rng.below(2) * 100;
        let count = chunk_count(size, KIB);
        let mut h = if rng.below(2) == 0 {
            holding(name, size, KIB, None)
        } else {
            let held: Vec<u64> = (0..count).filter(|_| rng.below(2) == 0).collect();
            holding(name, size, KIB, Some(&held))
        };
        match rng.below(20) {
            0 => h.chunks = ChunkSet::full(count + 1),
            1 => h.chunk_size = 1500,
            2 => h.chunks = decode_chunkset(count, &[u64::MAX]),
            _ => {}
        }
        h
    }

    #[derive(Default)]
    struct Model {
        nodes: HashMap<String, (NodeInfo, Instant, HashMap<String, Holding>)>,
    }

    impl Model {
        fn available(&self) -> BTreeSet<String> {
            self.nodes
                .values()
                .flat_map(|(_, _, hs)| hs.values())
                .filter(|h| h.chunks.is_complete())
                .map(|h| h.name.clone())
                .collect()
        }

        fn locate(&self, name: &str) -> Vec<Location> {
            let mut out: Vec<Location> = self
                .nodes
                .iter()
                .filter_map(|(id, (info, _, hs))| {
                    hs.get(name).map(|h| Location {
                        node: id.clone(),
                        addr: info.addr,
                        size: h.size,
                        chunk_size: h.chunk_size,
                        root: h.root,
                        chunks: h.chunks.clone(),
                    })
                })
                .collect();
            out.sort_by(|x, y| {
                (!x.is_complete(), std::cmp::Reverse(x.chunks.count()), &x.node).cmp(&(
                    !y.is_complete(),
                    std::cmp::Reverse(y.chunks.count()),
                    &y.node,
                ))
            });
            out
        }

        fn effects(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<Effect> {
            let mut names: Vec<&String> = before.symmetric_difference(after).collect();
            names.sort();
            names
                .into_iter()
                .map(|n| {
                    if after.contains(n) {
                        Effect::ObjectAvailable(n.clone())
                    } else {
                        Effect::ObjectUnavailable(n.clone())
                    }
                })
                .collect()
        }
    }

    fn valid(h: &Holding) -> bool {
        h.chunk_size == KIB && h.chunks.is_valid() && h.chunks.len() == chunk_count(h.size, KIB)
    }

    #[test]
    fn behaves_like_a_hashmap_model_under_random_operations() {
        let lease = secs(3);
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let mut table = Table::new(lease);
            let mut model = Model::default();
            let t0 = Instant::now();
            let mut now = t0;
            for step in 0..300 {
                let ctx = format!("seed {seed} step {step}");
                let before = model.available();
                let id = *rng.pick(&NODES);
                match rng.below(10) {
                    0 | 1 => {
                        let holdings: Vec<Holding> = (0..rng.below(4)).map(|_| random_holding(&mut rng)).collect();
                        let mut kept = BTreeMap::new();
                        let mut refused = 0;
                        for h in &holdings {
                            if valid(h) && !kept.contains_key(&h.name) {
                                kept.insert(h.name.clone(), h.clone());
                            } else {
                                refused += 1;
                            }
                        }
                        let mut node = info(id);
                        node.free = rng.below(1000);
                        let got = table.register(now, node.clone(), holdings.clone()).unwrap();
                        assert_eq!(got.refused.len(), refused, "{ctx}: {got:?}");
                        model.nodes.insert(id.to_owned(), (node, now, kept.into_iter().collect()));
                        assert_eq!(got.effects, Model::effects(&before, &model.available()), "{ctx}");
                    }
                    2 | 3 => {
                        let free = rng.below(1000);
                        let got = table.heartbeat(now, id, free);
                        if let Some((info, seen, _)) = model.nodes.get_mut(id) {
                            assert_eq!(got, Ok(()), "{ctx}");
                            info.free = free;
                            *seen = now;
                        } else {
                            assert_eq!(got, Err(TableError::UnknownNode(id.into())), "{ctx}");
                        }
                    }
                    4 | 5 => {
                        let h = random_holding(&mut rng);
                        let got = table.announce(now, id, h.clone());
                        if !valid(&h) {
                            assert!(matches!(got, Err(TableError::InvalidHolding { .. })), "{ctx}: {got:?}");
                        } else if let Some((_, seen, hs)) = model.nodes.get_mut(id) {
                            *seen = now;
                            hs.insert(h.name.clone(), h);
                            assert_eq!(got, Ok(Model::effects(&before, &model.available())), "{ctx}");
                        } else {
                            assert_eq!(got, Err(TableError::UnknownNode(id.into())), "{ctx}");
                        }
                    }
                    6 => {
                        let name = *rng.pick(&NAMES);
                        let got = table.withdraw(now, id, name);
                        if let Some((_, seen, hs)) = model.nodes.get_mut(id) {
                            *seen = now;
                            hs.remove(name);
                            assert_eq!(got, Ok(Model::effects(&before, &model.available())), "{ctx}");
                        } else {
                            assert_eq!(got, Err(TableError::UnknownNode(id.into())), "{ctx}");
                        }
                    }
                    7 => now += Duration::from_millis(rng.below(2000)),
                    8 => {
                        // Exactly onto a lease's end, where off-by-one mistakes live.
                        let ends = model.nodes.values().map(|(_, seen, _)| *seen + lease).filter(|&t| t >= now);
                        now = ends.min().unwrap_or(now);
                    }
                    _ => {
                        let mut expired: Vec<String> = model
                            .nodes
                            .iter()
                            .filter(|(_, (_, seen, _))| now.duration_since(*seen) >= lease)
                            .map(|(id, _)| id.clone())
                            .collect();
                        expired.sort();
                        for id in &expired {
                            model.nodes.remove(id);
                        }
                        let mut want: Vec<Effect> = expired.into_iter().map(Effect::NodeExpired).collect();
                        want.extend(Model::effects(&before, &model.available()));
                        assert_eq!(table.expire(now), want, "{ctx}");
                    }
                }
                for name in NAMES {
                    assert_eq!(table.locate(name), model.locate(name), "{ctx}: locate {name}");
                    assert_eq!(table.is_available(name), model.available().contains(name), "{ctx}");
                }
                let mut want_nodes: Vec<NodeStatus> = model
                    .nodes
                    .values()
                    .map(|(info, seen, hs)| NodeStatus {
                        info: info.clone(),
                        last_seen_ms: now.duration_since(*seen).as_millis() as u64,
                        objects: hs.len() as u64,
                    })
                    .collect();
                want_nodes.sort_by(|x, y| x.info.id.cmp(&y.info.id));
                assert_eq!(table.nodes(now), want_nodes, "{ctx}");
                let want_expiry = model.nodes.values().map(|(_, seen, _)| *seen + lease).min();
                assert_eq!(table.next_expiry(), want_expiry, "{ctx}");
                assert_eq!(table.object_count(), {
                    let names: BTreeSet<&String> = model.nodes.values().flat_map(|(_, _, hs)| hs.keys()).collect();
                    names.len()
                });
            }
        }
    }
}
