//! One pull's whole policy as a sans-IO state machine, after quinn-proto: the driver feeds
//! it what happened (holders the scheduler reported, a chunk that arrived verified or
//! failed, a read from the S3 origin, a peer's report of what it holds) with the time, and
//! takes from it the actions to perform now ([`PullCore::poll`]) and when to come back
//! ([`PullCore::poll_timeout`]). Nothing here does I/O or reads a clock, so the simulator
//! ([`crate::replication::sim`]) runs exactly this code in virtual time.
//!
//! On top of the chunk plan ([`PullPlan`]) it decides:
//! - which holders are peers: complete holders, and the partial ones when relaying, minus
//!   quarantined ones, at most [`CoreConfig::max_partial_peers`] of them chosen by
//!   rendezvous hashing (stable per pair of nodes, different for every receiver, so a large
//!   swarm forms a well-mixed graph instead of everyone asking the same few nodes);
//! - this receiver's stripe: its rank among the receivers the scheduler lists as pulling;
//! - when to ask the scheduler again ([`Action::Locate`]);
//! - quarantine: a peer that looked gone is not asked for [`CoreConfig::quarantine`] even if
//!   the scheduler still lists it;
//! - the peers' upload load, as each reports it with every chunk;
//! - when complete holders may be asked for other receivers' stripes (idle for
//!   [`CoreConfig::any_from_complete_after`]);
//! - when missing chunks no peer offers go to the S3 origin ([`CoreConfig::origin_grace`]),
//!   how many at once, and when the origin is given up;
//! - when the pull has stalled and fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use store_client::chunkset::ChunkSet;
use store_client::wire::node::{Location, NodeId};

use super::plan::{ChunkFailure, PlanConfig, PullPlan};

/// Tuning of a pull's policy.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub plan: PlanConfig,
    /// How often holders and their chunks are asked of the scheduler.
    pub refresh: Duration,
    /// A chunk stream that delivers nothing for this long is given up, and its peer with it
    /// (the driver enforces it on the stream; [`Fetch::stall`] carries it).
    pub stall: Duration,
    /// A peer given up is not asked again for this long.
    pub quarantine: Duration,
    /// A pull with nothing in flight and nothing obtainable for this long fails.
    pub stalled_pull: Duration,
    /// Missing chunks no peer has offered for this long are read from the S3 origin.
    pub origin_grace: Duration,
    /// Chunks read from the origin at once.
    pub origin_window: usize,
    /// Origin reads failing in a row before the origin is given up for this pull.
    pub origin_max_failures: u32,
    /// Idle this long with chunks missing, a receiver asks complete holders for other
    /// receivers' stripes too.
    pub any_from_complete_after: Duration,
    /// A peer that refused a request for want of upload slots is not asked again for this
    /// long.
    pub busy_backoff: Duration,
    /// Partial holders used as peers at most.
    pub max_partial_peers: usize,
    /// Watch partial peers directly ([`Action::Watch`]) instead of learning of their chunks
    /// only from the scheduler.
    pub watch_partial_peers: bool,
    /// Complete holders used as peers at most.
    pub max_complete_peers: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            plan: PlanConfig::default(),
            refresh: Duration::from_millis(100),
            stall: Duration::from_secs(5),
            quarantine: Duration::from_secs(15),
            stalled_pull: Duration::from_secs(10),
            origin_grace: Duration::from_secs(2),
            origin_window: 4,
            origin_max_failures: 3,
            any_from_complete_after: Duration::from_secs(5),
            busy_backoff: Duration::from_millis(50),
            max_partial_peers: 32,
            watch_partial_peers: true,
            max_complete_peers: 8,
        }
    }
}

/// A chunk request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub peer: NodeId,
    pub addr: SocketAddr,
    pub index: u64,
    /// Give the stream up when it delivers nothing for this long.
    pub stall: Duration,
}

/// What the driver should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Fetch(Fetch),
    /// Read chunk `index` from the S3 origin.
    ReadOrigin {
        index: u64,
    },
    /// Ask the scheduler for the object's holders; answer with [`PullCore::located`] or
    /// [`PullCore::locate_failed`].
    Locate,
    /// Ask the partial holder `peer` to report what it holds as soon as that is more than
    /// the `known` chunks (or after a while); answer with [`PullCore::peer_reported`] or
    /// [`PullCore::watch_failed`]. Co-receivers so learn of each other's chunks as they
    /// land, not one scheduler round later.
    Watch {
        peer: NodeId,
        addr: SocketAddr,
        known: u64,
    },
}

/// How a chunk fetch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchResult {
    /// Verified and written; the peer reported `uploads` in flight when it answered.
    Arrived { bytes: u64, uploads: u32 },
    /// The bytes did not match the manifest.
    Corrupt,
    /// The peer does not hold the chunk.
    NotHeld,
    /// All the peer's upload slots were taken; it reported `uploads` in flight.
    Busy { uploads: u32 },
    /// The stream or connection failed; `lost` if the peer looks gone.
    Transport { lost: bool },
}

/// How the pull ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Complete,
    /// Nothing in flight and `missing` chunks held by no reachable peer for too long.
    Stalled {
        missing: u64,
    },
}

/// Counters of a pull.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub corrupt_chunks: u64,
    pub retries: u64,
    /// Requests refused for want of upload slots.
    pub busy: u64,
    pub s3_bytes: u64,
    pub peer_bytes: u64,
}

#[derive(Debug)]
struct Origin {
    available: bool,
    /// Reading from it has begun (after the grace), and goes on for the rest of the pull.
    in_use: bool,
    in_flight: usize,
    failures_in_a_row: u32,
}

/// One pull's policy state.
#[derive(Debug)]
pub struct PullCore {
    me: NodeId,
    relay: bool,
    config: CoreConfig,
    plan: PullPlan,
    addrs: HashMap<NodeId, SocketAddr>,
    quarantine: HashMap<NodeId, Instant>,
    origin: Origin,
    /// Chunk fetches the driver has not reported back yet.
    fetches: usize,
    /// Since when nothing has been in flight while chunks were missing.
    idle_since: Option<Instant>,
    /// When a chunk last landed here or at a partial peer, as far as this node knows.
    progress_at: Instant,
    next_refresh: Instant,
    locating: bool,
    /// A peer was given up since the last locate.
    requarantined: bool,
    /// Peers with a watch out, and peers whose watch failed with when to try again.
    watching: HashMap<NodeId, Option<Instant>>,
    last_poll: Instant,
    stats: CoreStats,
    finished: Option<Finished>,
}

impl PullCore {
    /// A pull by node `me` of an object of `size` bytes in `chunk_size` chunks, of which
    /// `held` are already in place; `relay` lets partial holders serve (the swarm), and
    /// `has_origin` says whether an S3 origin can serve what no peer does.
    // Each argument is one fact of the pull, none optional; a struct for them would be
    // built once, here, and taken apart at once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: &str,
        size: u64,
        chunk_size: u64,
        relay: bool,
        held: impl IntoIterator<Item = u64>,
        has_origin: bool,
        config: CoreConfig,
        now: Instant,
    ) -> Self {
        let mut plan = PullPlan::new(size, chunk_size, config.plan.clone());
        if relay {
            plan.set_start_hint(spread(me, ""));
        }
        for index in held {
            plan.mark_held(index);
        }
        let finished = plan.is_complete().then_some(Finished::Complete);
        Self {
            me: me.to_owned(),
            relay,
            config,
            plan,
            addrs: HashMap::new(),
            quarantine: HashMap::new(),
            origin: Origin { available: has_origin, in_use: false, in_flight: 0, failures_in_a_row: 0 },
            fetches: 0,
            idle_since: None,
            progress_at: now,
            // The driver starts from the holders it located already.
            next_refresh: now,
            locating: false,
            requarantined: false,
            watching: HashMap::new(),
            last_poll: now,
            stats: CoreStats::default(),
            finished,
        }
    }

    /// The scheduler's holders of the object (this node among them or not).
    pub fn located(&mut self, now: Instant, locations: &[Location]) {
        self.locating = false;
        let count = self.plan.chunk_count();
        let mut pulling: Vec<&str> = vec![self.me.as_str()];
        let mut complete: Vec<&Location> = Vec::new();
        let mut partial: Vec<&Location> = Vec::new();
        for loc in locations {
            if loc.node == self.me || loc.chunks.len() != count || !loc.chunks.is_valid() {
                continue;
            }
            if self.quarantine.get(&loc.node).is_some_and(|until| *until > now) {
                continue;
            }
            if loc.is_complete() {
                complete.push(loc);
            } else {
                pulling.push(&loc.node);
                if self.relay {
                    partial.push(loc);
                }
            }
        }
        // A peer the scheduler no longer lists at all left (its lease ran out, or it
        // withdrew): what is in flight to it goes elsewhere now, not after a stall.
        let listed: HashSet<&str> = locations.iter().map(|l| l.node.as_str()).collect();
        let gone: Vec<String> = self.plan.peers().filter(|p| !listed.contains(p)).map(str::to_owned).collect();
        for peer in gone {
            self.plan.peer_lost(&peer);
        }
        let me = self.me.clone();
        let nearest = |list: &mut Vec<&Location>, keep: usize| {
            if list.len() > keep {
                list.sort_by_cached_key(|l| spread(&me, &l.node));
                list.truncate(keep);
            }
        };
        nearest(&mut complete, self.config.max_complete_peers);
        nearest(&mut partial, self.config.max_partial_peers);
        for loc in complete.into_iter().chain(partial) {
            self.addrs.insert(loc.node.clone(), loc.addr);
            let before = self.plan.peer_count(&loc.node);
            // Merged: a partial holder's own reports (watches) run ahead of the scheduler's.
            self.plan.merge_peer(&loc.node, &loc.chunks);
            if self.plan.peer_count(&loc.node) > before {
                self.progress_at = now;
            }
        }
        if self.relay {
            pulling.sort_unstable();
            pulling.dedup();
            let rank = pulling.iter().position(|n| *n == self.me).unwrap_or(0);
            self.plan.set_stripe(rank as u64, pulling.len() as u64);
        }
    }

    /// Asking the scheduler failed: the holders known so far stay.
    pub fn locate_failed(&mut self) {
        self.locating = false;
    }

    /// `peer` reported directly what it holds now (and its uploads in flight), answering
    /// [`Action::Watch`].
    pub fn peer_reported(&mut self, now: Instant, peer: &str, held: ChunkSet, uploads: u32) {
        self.watching.remove(peer);
        if self.addrs.contains_key(peer) && held.count() > 0 {
            if Some(held.count()) > self.plan.peer_count(peer) {
                self.progress_at = now;
            }
            self.plan.update_peer(peer, held, Some(uploads));
        }
    }

    /// A watch of `peer` failed: it is tried again a refresh later. With `lost` (no answer
    /// in time, or no connection) the peer is given up like one whose chunk stream broke,
    /// and drops out of the stripes at once: a co-receiver that died is found within a
    /// watch's wait, not after its scheduler lease, and its stripe is taken over.
    pub fn watch_failed(&mut self, now: Instant, peer: &str, lost: bool) {
        self.watching.insert(peer.to_owned(), Some(now + self.config.refresh));
        if lost {
            self.plan.peer_lost(peer);
            self.quarantine.insert(peer.to_owned(), now + self.config.quarantine);
            self.requarantined = true;
        }
    }

    /// A chunk fetch asked for by [`Action::Fetch`] ended.
    pub fn fetch_done(&mut self, now: Instant, peer: &str, index: u64, result: FetchResult) {
        self.fetches = self.fetches.saturating_sub(1);
        match result {
            FetchResult::Arrived { bytes, uploads } => {
                self.progress_at = now;
                self.plan.chunk_done(peer, index);
                self.plan.set_reported_load(peer, uploads);
                self.stats.peer_bytes += bytes;
            }
            FetchResult::Corrupt => {
                self.stats.corrupt_chunks += 1;
                self.stats.retries += 1;
                self.plan.chunk_failed(peer, index, ChunkFailure::Corrupt);
            }
            FetchResult::NotHeld => {
                self.stats.retries += 1;
                self.plan.chunk_failed(peer, index, ChunkFailure::NotHeld);
            }
            FetchResult::Busy { uploads } => {
                self.plan.set_reported_load(peer, uploads);
                self.plan.chunk_busy(peer, index, now + self.config.busy_backoff);
            }
            FetchResult::Transport { lost } => {
                self.stats.retries += 1;
                self.plan.chunk_failed(peer, index, ChunkFailure::Transport);
                if lost {
                    self.plan.peer_lost(peer);
                    self.quarantine.insert(peer.to_owned(), now + self.config.quarantine);
                    self.requarantined = true;
                }
            }
        }
        self.check_complete();
    }

    /// A read from the S3 origin asked for by [`Action::ReadOrigin`] ended: `Some(bytes)`
    /// verified and written, `None` failed.
    pub fn origin_done(&mut self, index: u64, result: Option<u64>) {
        self.origin.in_flight = self.origin.in_flight.saturating_sub(1);
        match result {
            Some(bytes) => {
                self.origin.failures_in_a_row = 0;
                self.plan.origin_done(index);
                self.stats.s3_bytes += bytes;
            }
            None => {
                self.plan.origin_failed(index);
                self.stats.retries += 1;
                self.origin.failures_in_a_row += 1;
                if self.origin.failures_in_a_row >= self.config.origin_max_failures {
                    self.origin.available = false;
                }
            }
        }
        self.check_complete();
    }

    fn check_complete(&mut self) {
        if self.finished.is_none() && self.plan.is_complete() {
            self.finished = Some(Finished::Complete);
        }
    }

    /// The actions to perform now. Call after every event and at [`Self::poll_timeout`].
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.finished.is_some() {
            return actions;
        }
        self.last_poll = now;
        self.plan.handle_timeouts(now);
        if std::mem::take(&mut self.requarantined) {
            // The stripes change without the peer given up: ask the scheduler now.
            self.next_refresh = self.next_refresh.min(now);
        }
        if !self.locating && now >= self.next_refresh {
            self.locating = true;
            self.next_refresh = now + self.config.refresh;
            actions.push(Action::Locate);
        }
        // Idle: nothing in flight while chunks are missing. Long enough idle, complete holders
        // may be asked for other receivers' stripes too (their owners do not deliver).
        if self.fetches == 0 && self.origin.in_flight == 0 && self.plan.missing() > 0 {
            let since = *self.idle_since.get_or_insert(now);
            // ... and nothing new landed anywhere in the swarm meanwhile: idle while the
            // others make progress is waiting for relays, not being let down by them.
            if now.duration_since(since.max(self.progress_at)) >= self.config.any_from_complete_after {
                self.plan.allow_any_from_complete();
            }
        }
        let mut failed = VecDeque::new();
        for request in self.plan.poll_requests(now) {
            match self.addrs.get(&request.peer) {
                Some(&addr) => {
                    self.fetches += 1;
                    actions.push(Action::Fetch(Fetch {
                        peer: request.peer,
                        addr,
                        index: request.index,
                        stall: self.config.stall,
                    }));
                }
                None => failed.push_back(request),
            }
        }
        for request in failed {
            self.plan.chunk_failed(&request.peer, request.index, ChunkFailure::NotHeld);
        }
        if self.relay && self.config.watch_partial_peers {
            for (peer, known) in self.plan.partial_peers() {
                let free = match self.watching.get(peer) {
                    None => true,
                    Some(Some(retry)) => *retry <= now,
                    Some(None) => false,
                };
                if let (true, Some(&addr)) = (free, self.addrs.get(peer)) {
                    self.watching.insert(peer.to_owned(), None);
                    actions.push(Action::Watch { peer: peer.to_owned(), addr, known });
                }
            }
        }
        if self.fetches > 0 || self.origin.in_flight > 0 {
            self.idle_since = None;
        } else if self.idle_since.is_some() && self.plan.unreachable_chunks() > 0 {
            let idle_for = now.duration_since(self.idle_since.unwrap_or(now));
            self.origin.in_use |= idle_for >= self.config.origin_grace;
            if idle_for >= self.config.stalled_pull && !(self.origin.available && self.origin.in_use) {
                self.finished = Some(Finished::Stalled { missing: self.plan.unreachable_chunks() });
                return Vec::new();
            }
        }
        if self.origin.available && self.origin.in_use {
            let room = self.config.origin_window.saturating_sub(self.origin.in_flight);
            for index in self.plan.take_for_origin(room) {
                self.origin.in_flight += 1;
                actions.push(Action::ReadOrigin { index });
            }
        }
        actions
    }

    /// When [`Self::poll`] has something to do next without a new event (`None`: only an
    /// event can move the pull on).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        // While a locate is out, its answer is the event that comes next.
        let refresh = (!self.locating).then_some(self.next_refresh);
        let mut thresholds = Vec::new();
        if let Some(since) = self.idle_since {
            thresholds.push(since + self.config.stalled_pull);
            if !self.plan.allows_any_from_complete() {
                thresholds.push(since.max(self.progress_at) + self.config.any_from_complete_after);
            }
            if self.origin.available && !self.origin.in_use {
                thresholds.push(since + self.config.origin_grace);
            }
        }
        // Only thresholds still ahead: one already passed was acted on at that poll.
        let thresholds = thresholds.into_iter().filter(|at| *at > self.last_poll);
        refresh.into_iter().chain(self.plan.next_deadline()).chain(thresholds).min()
    }

    pub fn finished(&self) -> Option<&Finished> {
        self.finished.as_ref()
    }

    /// Chunks this node holds, to serve to others while it pulls.
    pub fn held(&self) -> ChunkSet {
        self.plan.held()
    }

    pub fn chunk_count(&self) -> u64 {
        self.plan.chunk_count()
    }

    /// Bytes received per peer.
    pub fn bytes_by_peer(&self) -> impl Iterator<Item = (&str, u64)> {
        self.plan.bytes_by_peer()
    }

    pub fn stats(&self) -> CoreStats {
        let mut stats = self.stats.clone();
        stats.retries = stats.retries.max(self.plan.stats().retries);
        stats.busy = self.plan.stats().busy;
        stats
    }

    /// The peers in use (not given up).
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.plan.peers()
    }
}

/// A stable, well-spread number for a pair of node ids (FNV-1a): rendezvous hashing of
/// peers, and (with an empty second id) where a receiver that believes it is alone starts.
fn spread(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0xff]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests;
