//! Which chunk to ask whom: the receiver side of replication as a plain state machine.
//!
//! Inputs are what the network layer observed (a peer and what it holds, a chunk that
//! arrived verified, a failure, a lost peer, the time); outputs are the chunk requests to
//! send now. Nothing here does I/O or reads a clock, so a simulated cluster drives it
//! deterministically in tests.
//!
//! Policy:
//! - Stripes: the receivers pulling an object at the same time split it into as many
//!   contiguous stripes as there are of them (the driver tells each its rank among the
//!   partial holders). A receiver asks complete holders (the source) for its own stripe
//!   only and takes the other stripes from the receivers that own them as soon as those
//!   hold a chunk, so the source sends each chunk about once and every receiver relays its
//!   stripe: a broadcast becomes a swarm instead of a star, and takes about one transfer
//!   time whatever the number of receivers. Other stripes are asked of complete holders
//!   only once the driver allows it ([`PullPlan::allow_any_from_complete`]: this receiver
//!   sat idle while nothing new landed anywhere, e.g. stripe owners that stopped
//!   progressing).
//! - Source by load: among the peers holding a chunk, the one with the fewest uploads in
//!   flight (its own report plus our requests to it), not a random one.
//! - Bounded windows: at most `per_peer_window` requests to one peer and `total_window`
//!   overall.
//! - A corrupt chunk, a refusal or a timeout puts the chunk back and counts against the
//!   peer; a peer that keeps failing, or is lost, is dropped and its chunks go elsewhere.

use std::time::{Duration, Instant};

use store_client::chunkset::ChunkSet;
use store_client::wire::node::NodeId;

/// Chunks a receiver's stripe must have for it to help others from the source.
const MIN_STEAL_STRIPE: u64 = 4;

/// Tuning of a pull.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// Requests in flight to one peer when this receiver pulls alone: enough to hide the
    /// request round trip on a fast link.
    pub per_peer_window: u32,
    /// Requests in flight to one peer when several receivers pull together: one, so each
    /// chunk completes (and can be relayed) as early as possible; the other receivers'
    /// requests keep every link busy.
    pub swarm_peer_window: u32,
    pub total_window: u32,
    /// A request unanswered for this long is given up and retried elsewhere.
    pub chunk_timeout: Duration,
    /// A peer is dropped after this many failures in a row.
    pub max_peer_failures: u32,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            per_peer_window: 3,
            swarm_peer_window: 1,
            total_window: 12,
            chunk_timeout: Duration::from_secs(30),
            max_peer_failures: 3,
        }
    }
}

/// Why a chunk request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkFailure {
    /// The bytes did not match the manifest.
    Corrupt,
    /// The peer does not hold the chunk (any more).
    NotHeld,
    /// Stream or connection error, or the peer stalled.
    Transport,
}

/// A request the driver should send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    pub peer: NodeId,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Missing,
    InFlight {
        peer: usize,
        deadline: Instant,
    },
    /// Being read from the object's S3 origin: no peer is asked for it meanwhile.
    FromOrigin,
    Done,
}

#[derive(Debug)]
struct Peer {
    id: NodeId,
    held: ChunkSet,
    /// `held.is_complete()`, kept because it is asked for every chunk of every poll.
    complete: bool,
    in_flight: u32,
    /// Uploads in flight as the peer last reported them (to everyone).
    reported_load: u32,
    failures_in_a_row: u32,
    /// Refused a request for want of upload slots: not asked again before this.
    busy_until: Option<Instant>,
    dead: bool,
    /// Served corrupt data: never asked again in this pull.
    banned: bool,
    bytes: u64,
}

/// The state of one object being pulled.
#[derive(Debug)]
pub struct PullPlan {
    config: PlanConfig,
    chunks: Vec<Chunk>,
    chunk_len: Vec<u64>,
    peers: Vec<Peer>,
    /// This receiver's stripe: chunks `[stripe_start, stripe_end)`.
    stripe_start: u64,
    stripe_end: u64,
    receivers: u64,
    /// Where a receiver that believes it is alone starts (see [`PullPlan::set_start_hint`]).
    start_hint: u64,
    /// Other receivers' stripes may be asked of complete holders too.
    any_from_complete: bool,
    done: u64,
    in_flight: u32,
    corrupt: u64,
    retries: u64,
    busy: u64,
}

/// Progress counters of a pull.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub corrupt_chunks: u64,
    pub retries: u64,
    /// Requests a peer refused for want of upload slots.
    pub busy: u64,
}

impl PullPlan {
    /// A plan for an object of `size` bytes in `chunk_size` chunks, as the only receiver
    /// until [`PullPlan::set_stripe`] says otherwise.
    pub fn new(size: u64, chunk_size: u64, config: PlanConfig) -> Self {
        let count = store_client::manifest::chunk_count(size, chunk_size);
        let chunk_len = (0..count).map(|i| chunk_size.min(size.saturating_sub(i * chunk_size))).collect();
        Self {
            config,
            chunks: vec![Chunk::Missing; count as usize],
            chunk_len,
            peers: Vec::new(),
            stripe_start: 0,
            stripe_end: count,
            receivers: 1,
            start_hint: 0,
            any_from_complete: false,
            done: 0,
            in_flight: 0,
            corrupt: 0,
            retries: 0,
            busy: 0,
        }
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// This receiver is number `rank` of `of` receivers pulling the object now.
    pub fn set_stripe(&mut self, rank: u64, of: u64) {
        let count = self.chunk_count();
        let of = of.max(1);
        let rank = rank.min(of - 1);
        self.stripe_start = rank * count / of;
        self.stripe_end = (rank + 1) * count / of;
        self.receivers = of;
    }

    /// Where to start while this receiver believes it pulls alone. Receivers that start at
    /// the same moment learn of each other only after a round through the scheduler; if
    /// they all began at chunk 0 they would ask the source for the same first chunks, so
    /// each begins at a point of its own (e.g. from a hash of its node id).
    pub fn set_start_hint(&mut self, hint: u64) {
        self.start_hint = hint % self.chunk_count().max(1);
    }

    /// From now on complete holders may be asked for any chunk, not only this receiver's
    /// stripe: the fallback when the stripes' owners do not deliver.
    pub fn allow_any_from_complete(&mut self) {
        self.any_from_complete = true;
    }

    pub fn allows_any_from_complete(&self) -> bool {
        self.any_from_complete
    }

    /// Chunk requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Chunks neither held nor being fetched.
    pub fn missing(&self) -> u64 {
        self.chunks.iter().filter(|c| **c == Chunk::Missing).count() as u64
    }

    /// Sets the uploads `peer` reported in flight (e.g. in a chunk response's header).
    pub fn set_reported_load(&mut self, peer: &str, load: u32) {
        if let Some(p) = self.peer_index(peer) {
            self.peers[p].reported_load = load;
        }
    }

    /// Adds chunk `index` to what `peer` is known to hold.
    pub fn peer_holds(&mut self, peer: &str, index: u64) {
        if let Some(p) = self.peer_index(peer) {
            let peer = &mut self.peers[p];
            if peer.held.insert(index) {
                peer.complete = peer.held.is_complete();
            }
        }
    }

    /// Every chunk of this receiver's stripe is held or being fetched.
    fn own_stripe_settled(&self) -> bool {
        (self.stripe_start..self.stripe_end).all(|i| self.chunks[i as usize] != Chunk::Missing)
    }

    fn in_stripe(&self, index: u64) -> bool {
        (self.stripe_start..self.stripe_end).contains(&index)
    }

    /// Marks chunks this node already holds (e.g. from an interrupted pull).
    pub fn mark_held(&mut self, index: u64) {
        if let Some(c) = self.chunks.get_mut(index as usize)
            && *c != Chunk::Done
        {
            *c = Chunk::Done;
            self.done += 1;
        }
    }

    fn peer_index(&self, id: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    /// Adds a peer or refreshes what it holds and (if given) its reported load. A lost peer
    /// that reappears is given another chance.
    pub fn update_peer(&mut self, id: &str, held: ChunkSet, reported_load: Option<u32>) {
        if held.len() != self.chunk_count() || !held.is_valid() {
            return;
        }
        match self.peer_index(id) {
            Some(i) => {
                let p = &mut self.peers[i];
                p.complete = held.is_complete();
                p.held = held;
                if let Some(load) = reported_load {
                    p.reported_load = load;
                }
                if p.dead && !p.banned {
                    p.dead = false;
                    p.failures_in_a_row = 0;
                }
            }
            None => self.peers.push(Peer {
                id: id.to_owned(),
                complete: held.is_complete(),
                held,
                in_flight: 0,
                reported_load: reported_load.unwrap_or(0),
                failures_in_a_row: 0,
                busy_until: None,
                dead: false,
                banned: false,
                bytes: 0,
            }),
        }
    }

    /// How many chunks `peer` is known to hold.
    pub fn peer_count(&self, peer: &str) -> Option<u64> {
        self.peer_index(peer).map(|p| self.peers[p].held.count())
    }

    /// Live peers that do not hold the whole object, with how many chunks they hold.
    pub fn partial_peers(&self) -> impl Iterator<Item = (&str, u64)> {
        self.peers.iter().filter(|p| !p.dead && !p.complete).map(|p| (p.id.as_str(), p.held.count()))
    }

    /// Adds what `held` says to what `peer` is known to hold (a view that may lag behind
    /// what the peer reported itself), adding the peer if it is new.
    pub fn merge_peer(&mut self, id: &str, held: &ChunkSet) {
        if held.len() != self.chunk_count() || !held.is_valid() {
            return;
        }
        match self.peer_index(id) {
            Some(i) => {
                let mut merged = self.peers[i].held.clone();
                merged.union_with(held);
                self.update_peer(id, merged, None);
            }
            None => self.update_peer(id, held.clone(), None),
        }
    }

    /// Known, live peers.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().filter(|p| !p.dead).map(|p| p.id.as_str())
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.chunk_count()
    }

    /// Missing chunks that no live peer is known to hold: the driver should look for more
    /// holders (or another origin).
    pub fn unreachable_chunks(&self) -> u64 {
        (0..self.chunk_count())
            .filter(|&i| self.chunks[i as usize] == Chunk::Missing && self.holders(i).next().is_none())
            .count() as u64
    }

    fn holders(&self, index: u64) -> impl Iterator<Item = usize> + '_ {
        self.peers.iter().enumerate().filter(move |(_, p)| !p.dead && p.held.contains(index)).map(|(i, _)| i)
    }

    /// The requests to send now, up to the windows. Chunks are looked at in order from
    /// this receiver's stripe start (or start hint), in two passes: first its own stripe
    /// (from anyone) and chunks relays hold (from relays), then, if allowed, other stripes
    /// from complete holders. A poll stops as soon as no peer has room in its window, so
    /// its cost follows the requests it makes, not the object's chunk count.
    pub fn poll_requests(&mut self, now: Instant) -> Vec<ChunkRequest> {
        let mut out = Vec::new();
        let window = if self.receivers > 1 { self.config.swarm_peer_window } else { self.config.per_peer_window };
        for peer in &mut self.peers {
            if peer.busy_until.is_some_and(|until| until <= now) {
                peer.busy_until = None;
            }
        }
        let mut free: Vec<usize> = (0..self.peers.len())
            .filter(|&p| {
                let peer = &self.peers[p];
                !peer.dead && peer.busy_until.is_none() && peer.in_flight < window
            })
            .collect();
        let count = self.chunk_count();
        let origin = if self.receivers > 1 { self.stripe_start } else { self.start_hint };
        // A receiver whose own stripe is all held or under way helps the others from the
        // source: from the tail of the stripe before its own, backwards, while that stripe's
        // owner works forwards from its start, so the two meet and nothing is fetched
        // twice. Links are never shared exactly fairly, and without this the source idles
        // while the unluckiest stripe's owner finishes alone.
        // Only with stripes of several chunks: with one chunk each (as many receivers as
        // chunks) every helper would race the owner for the same chunk at the source.
        let steal =
            self.receivers > 1 && self.stripe_end - self.stripe_start >= MIN_STEAL_STRIPE && self.own_stripe_settled();
        for pass in 0..2 {
            if pass == 1 && !(self.any_from_complete || steal) {
                break;
            }
            for k in 0..count {
                if free.is_empty() || self.in_flight >= self.config.total_window {
                    return out;
                }
                let index = if pass == 1 { (origin + count - 1 - k) % count } else { (origin + k) % count };
                if self.chunks[index as usize] != Chunk::Missing {
                    continue;
                }
                let own = self.in_stripe(index);
                let eligible = |peer: &Peer| match (pass, own) {
                    (0, true) => true,
                    (0, false) => !peer.complete,
                    (_, own) => !own && peer.complete,
                };
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        let peer = &self.peers[**p];
                        peer.held.contains(index) && eligible(peer)
                    })
                    .min_by_key(|(_, p)| {
                        let peer = &self.peers[**p];
                        // Between equally loaded holders, a relay before a complete holder:
                        // the source's uplink is the one every receiver needs.
                        (peer.in_flight + peer.reported_load, peer.complete, peer.failures_in_a_row, **p)
                    })
                    .map(|(slot, p)| (slot, *p));
                let Some((slot, p)) = best else { continue };
                self.peers[p].in_flight += 1;
                self.in_flight += 1;
                if self.peers[p].in_flight >= window {
                    free.swap_remove(slot);
                }
                self.chunks[index as usize] = Chunk::InFlight { peer: p, deadline: now + self.config.chunk_timeout };
                out.push(ChunkRequest { peer: self.peers[p].id.clone(), index });
            }
        }
        out
    }

    fn settle(&mut self, peer: &str, index: u64) -> Option<usize> {
        let p = self.peer_index(peer)?;
        match self.chunks.get(index as usize) {
            Some(Chunk::InFlight { peer: q, .. }) if *q == p => {
                self.peers[p].in_flight -= 1;
                self.in_flight -= 1;
                Some(p)
            }
            _ => None,
        }
    }

    /// A chunk arrived from `peer` and matched the manifest.
    pub fn chunk_done(&mut self, peer: &str, index: u64) {
        if let Some(p) = self.settle(peer, index) {
            self.chunks[index as usize] = Chunk::Done;
            self.done += 1;
            let len = self.chunk_len[index as usize];
            let peer = &mut self.peers[p];
            peer.failures_in_a_row = 0;
            peer.bytes += len;
        }
    }

    /// `peer` refused a request for `index` because all its upload slots were taken: the
    /// chunk is missing again and the peer is not asked before `until`. Not a failure.
    pub fn chunk_busy(&mut self, peer: &str, index: u64, until: Instant) {
        let Some(p) = self.settle(peer, index) else { return };
        self.chunks[index as usize] = Chunk::Missing;
        self.busy += 1;
        self.peers[p].busy_until = Some(until);
    }

    /// A chunk request to `peer` failed.
    pub fn chunk_failed(&mut self, peer: &str, index: u64, why: ChunkFailure) {
        let Some(p) = self.settle(peer, index) else { return };
        self.chunks[index as usize] = Chunk::Missing;
        self.retries += 1;
        let max_failures = self.config.max_peer_failures;
        let peer = &mut self.peers[p];
        match why {
            ChunkFailure::NotHeld => {
                peer.held.remove(index);
                peer.complete = false;
            }
            ChunkFailure::Corrupt | ChunkFailure::Transport => {
                if why == ChunkFailure::Corrupt {
                    self.corrupt += 1;
                }
                peer.failures_in_a_row += 1;
                if peer.failures_in_a_row >= max_failures {
                    peer.banned = why == ChunkFailure::Corrupt;
                    self.drop_peer(p);
                }
            }
        }
    }

    fn drop_peer(&mut self, p: usize) {
        self.peers[p].dead = true;
        for index in 0..self.chunks.len() {
            if let Chunk::InFlight { peer, .. } = self.chunks[index]
                && peer == p
            {
                self.chunks[index] = Chunk::Missing;
                self.in_flight -= 1;
                self.retries += 1;
            }
        }
        self.peers[p].in_flight = 0;
    }

    /// The connection to `peer` is gone: everything in flight to it goes elsewhere.
    pub fn peer_lost(&mut self, peer: &str) {
        if let Some(p) = self.peer_index(peer) {
            self.drop_peer(p);
        }
    }

    /// Takes up to `max` missing chunks that no live peer holds, to be read from the
    /// object's origin instead; they are not requested from peers until
    /// [`PullPlan::origin_failed`] puts them back.
    pub fn take_for_origin(&mut self, max: usize) -> Vec<u64> {
        let taken: Vec<u64> = (0..self.chunk_count())
            .filter(|&i| self.chunks[i as usize] == Chunk::Missing && self.holders(i).next().is_none())
            .take(max)
            .collect();
        for &i in &taken {
            self.chunks[i as usize] = Chunk::FromOrigin;
        }
        taken
    }

    /// A chunk read from the origin matched the manifest.
    pub fn origin_done(&mut self, index: u64) {
        if let Some(c @ Chunk::FromOrigin) = self.chunks.get_mut(index as usize) {
            *c = Chunk::Done;
            self.done += 1;
        }
    }

    /// Reading a chunk from the origin failed: it is missing again.
    pub fn origin_failed(&mut self, index: u64) {
        if let Some(c @ Chunk::FromOrigin) = self.chunks.get_mut(index as usize) {
            *c = Chunk::Missing;
            self.retries += 1;
        }
    }

    /// Gives up requests past their deadline.
    pub fn handle_timeouts(&mut self, now: Instant) -> Vec<ChunkRequest> {
        let mut expired = Vec::new();
        for (index, c) in self.chunks.iter().enumerate() {
            if let Chunk::InFlight { peer, deadline } = *c
                && deadline <= now
            {
                expired.push(ChunkRequest { peer: self.peers[peer].id.clone(), index: index as u64 });
            }
        }
        for r in &expired {
            self.chunk_failed(&r.peer.clone(), r.index, ChunkFailure::Transport);
        }
        expired
    }

    /// The earliest request deadline, or end of a busy peer's back-off.
    pub fn next_deadline(&self) -> Option<Instant> {
        let requests = self.chunks.iter().filter_map(|c| match c {
            Chunk::InFlight { deadline, .. } => Some(*deadline),
            _ => None,
        });
        let busy = self.peers.iter().filter(|p| !p.dead).filter_map(|p| p.busy_until);
        requests.chain(busy).min()
    }

    /// Chunks this node holds, to serve to others while it pulls.
    pub fn held(&self) -> ChunkSet {
        ChunkSet::from_iter_len(
            self.chunk_count(),
            (0..self.chunk_count()).filter(|&i| self.chunks[i as usize] == Chunk::Done),
        )
    }

    /// Bytes received per peer.
    pub fn bytes_by_peer(&self) -> impl Iterator<Item = (&str, u64)> {
        self.peers.iter().filter(|p| p.bytes > 0).map(|p| (p.id.as_str(), p.bytes))
    }

    pub fn stats(&self) -> PlanStats {
        PlanStats {
            chunks_done: self.done,
            chunks_total: self.chunk_count(),
            corrupt_chunks: self.corrupt,
            retries: self.retries,
            busy: self.busy,
        }
    }
}

#[cfg(test)]
mod tests;
