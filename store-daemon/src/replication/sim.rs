//! A broadcast simulator: one source and N receivers over a modelled network, in virtual
//! time, where every swarm receiver runs the production pull policy ([`PullCore`]) and the
//! scheduler is modelled as production's is (holdings announced every 200 ms, read by each
//! receiver's locate, a node dropped when its 3 s lease runs out).
//!
//! The network is a fluid model: every node has an uplink and a downlink rate; a transfer
//! goes at the smaller of its sender's uplink and its receiver's downlink, each shared
//! equally among the transfers on it; requests and reports take the one-way latency; a
//! fetch may fail (loss) and a node may die mid-transfer (its streams stall, and the
//! receivers find out after the stall timeout, as the daemon does). Chunk contents are
//! modelled too (a value per chunk that a receiver checks against the manifest), so a run
//! verifies that every receiver ended up with the source's bytes.
//!
//! Besides the swarm, the same network runs two fixed schedules for reference: a chain
//! (each receiver pulls from the one before it) and a binary tree (from its parent), both
//! pipelined chunk by chunk.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use store_client::chunkset::ChunkSet;
use store_client::manifest::{Digest, chunk_count};
use store_client::wire::node::Location;

use super::UPLOAD_QUEUE;
use super::pull_core::{Action, FetchResult, Finished, PullCore};

mod scenario;

pub use self::scenario::{Schedule, SimConfig, SimReport};

const SOURCE: usize = 0;
/// Holdings announced to the scheduler this often (the daemon's sync interval).
const ANNOUNCE: f64 = 0.2;
/// The scheduler drops a node whose heartbeats stopped this long ago.
const LEASE: f64 = 3.0;
/// A watch with nothing new is answered after this long (the daemon's long-poll), and one
/// unanswered this much longer counts its peer as gone (the daemon's margin).
const WATCH_TIMEOUT: f64 = 1.0;
const WATCH_MARGIN: f64 = 1.0;

#[derive(Debug)]
struct Node {
    id: String,
    addr: SocketAddr,
    alive: bool,
    died_at: f64,
    held: ChunkSet,
    /// The content of every chunk this node holds (the source's is the manifest).
    content: Vec<Option<Digest>>,
    core: Option<PullCore>,
    /// Fixed schedules: the node pulled from, and the next chunk asked of it.
    parent: Option<usize>,
    next_chunk: u64,
    in_flight: u32,
    /// Next time the core wants a poll.
    wake: f64,
    finished_at: Option<f64>,
    announced: ChunkSet,
    next_announce: f64,
    sent: u64,
}

#[derive(Debug)]
struct Transfer {
    from: usize,
    to: usize,
    index: u64,
    remaining: f64,
    /// Data flows from this time (request latency).
    starts: f64,
    /// The sender died: the stream stalls.
    stalled_since: Option<f64>,
    /// Queued at the sender for an upload slot.
    waiting: bool,
}

#[derive(Debug)]
enum Delivery {
    Located(usize),
    Fetched { to: usize, from: usize, index: u64, result: FetchResult },
    Reported { to: usize, from: usize },
}

/// Events in time order (ties in insertion order, so runs are deterministic).
#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    items: HashMap<u64, Delivery>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: f64, what: Delivery) {
        self.seq += 1;
        self.heap.push(Reverse(((at * 1e9) as u64, self.seq)));
        self.items.insert(self.seq, what);
    }

    fn pop_due(&mut self, now: f64) -> Option<Delivery> {
        let Reverse((at, seq)) = *self.heap.peek()?;
        if at as f64 > now * 1e9 {
            return None;
        }
        self.heap.pop();
        self.items.remove(&seq)
    }
}

struct Sim {
    config: SimConfig,
    nodes: Vec<Node>,
    /// By the order they were asked for (a waiting one is served in that order).
    transfers: BTreeMap<u64, Transfer>,
    next_transfer: u64,
    /// Per sender: uploads holding a slot, and the ones queued for one.
    active_up: Vec<u32>,
    waiting_up: Vec<VecDeque<u64>>,
    queue: Queue,
    /// Watches out: (watcher, watched, known count, answer by).
    watches: Vec<(usize, usize, u64, f64)>,
    manifest: Vec<Digest>,
    epoch: Instant,
    rng: fastrand::Rng,
    count: u64,
    corrupt: u64,
    retries: u64,
}

fn digest_of(index: u64) -> Digest {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&index.to_le_bytes());
    d[8] = 0xa5;
    Digest(d)
}

/// Runs one broadcast.
pub fn run(config: &SimConfig) -> SimReport {
    let wall = Instant::now();
    let mut sim = Sim::new(config.clone());
    let slowest = sim.run();
    let failed_nodes = sim.nodes.iter().skip(1).filter(|n| !n.alive).count();
    let survivors = sim.nodes.iter().skip(1).filter(|n| n.alive);
    let completed = survivors.clone().filter(|n| n.finished_at.is_some()).count();
    let verified = survivors
        .filter(|n| n.finished_at.is_some())
        .filter(|n| n.content.iter().zip(&sim.manifest).all(|(c, m)| c.as_ref() == Some(m)))
        .count();
    SimReport {
        slowest,
        transfer_time: config.transfer_time(),
        lower_bound: config.lower_bound(),
        source_egress: sim.nodes[SOURCE].sent as f64 / config.size as f64,
        receivers: config.receivers,
        failed_nodes,
        completed,
        verified,
        corrupt_chunks: sim.corrupt,
        retries: sim.retries,
        wall: wall.elapsed(),
    }
}

impl Sim {
    fn new(config: SimConfig) -> Self {
        let count = chunk_count(config.size, config.chunk_size);
        let manifest: Vec<Digest> = (0..count).map(digest_of).collect();
        let epoch = Instant::now();
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let mut nodes = Vec::with_capacity(config.receivers + 1);
        for i in 0..=config.receivers {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i as u32)), 7000);
            let is_source = i == SOURCE;
            let parent = match config.schedule {
                _ if is_source => None,
                Schedule::Swarm => None,
                Schedule::Chain => Some(i - 1),
                Schedule::BinaryTree => Some((i - 1) / 2),
            };
            let core = (!is_source && config.schedule == Schedule::Swarm).then(|| {
                PullCore::new(
                    &format!("node{i:05}"),
                    config.size,
                    config.chunk_size,
                    true,
                    [],
                    false,
                    config.core.clone(),
                    epoch,
                )
            });
            nodes.push(Node {
                id: format!("node{i:05}"),
                addr,
                alive: true,
                died_at: f64::INFINITY,
                held: if is_source { ChunkSet::full(count) } else { ChunkSet::empty(count) },
                content: if is_source {
                    manifest.iter().copied().map(Some).collect()
                } else {
                    vec![None; count as usize]
                },
                core,
                parent,
                next_chunk: 0,
                in_flight: 0,
                wake: 0.0,
                finished_at: is_source.then_some(0.0),
                announced: if is_source { ChunkSet::full(count) } else { ChunkSet::empty(count) },
                // Spread over the interval, as independent daemons are.
                next_announce: rng.f64() * ANNOUNCE,
                sent: 0,
            });
        }
        let receivers = config.receivers;
        Self {
            config,
            nodes,
            transfers: BTreeMap::new(),
            next_transfer: 0,
            active_up: vec![0; receivers + 1],
            waiting_up: vec![VecDeque::new(); receivers + 1],
            queue: Queue::default(),
            watches: Vec::new(),
            manifest,
            epoch,
            rng,
            count,
            corrupt: 0,
            retries: 0,
        }
    }

    fn instant(&self, t: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(t)
    }

    fn latency(&self) -> f64 {
        self.config.latency.as_secs_f64()
    }

    /// The scheduler's answer to a locate: every node it still lists with what it announced.
    fn locations(&self, now: f64) -> Vec<Location> {
        self.nodes
            .iter()
            .filter(|n| now < n.died_at + LEASE)
            .filter(|n| n.announced.count() > 0 || n.core.is_some())
            .map(|n| Location {
                node: n.id.clone(),
                addr: n.addr,
                size: self.config.size,
                chunk_size: self.config.chunk_size,
                root: Digest([0; 32]),
                chunks: n.announced.clone(),
            })
            .collect()
    }

    fn run(&mut self) -> f64 {
        let tt = self.config.transfer_time();
        let limit = self.config.limit * tt;
        let chunk_time = self.config.chunk_size as f64 / self.config.up_rate.min(self.config.down_rate);
        let dt = (chunk_time / 20.0).clamp(1e-4, 0.005);
        let fail_time = self.config.fail_at * tt;
        let mut failed = self.config.fail_fraction <= 0.0;
        let mut t = 0.0;
        let mut locations: Option<(f64, Vec<Location>)> = None;
        while t < limit {
            if !failed && t >= fail_time {
                failed = true;
                self.fail_nodes(t);
            }
            self.announce(t);
            let mut woken = vec![false; self.nodes.len()];
            while let Some(delivery) = self.queue.pop_due(t) {
                let now = self.instant(t);
                match delivery {
                    Delivery::Located(to) => {
                        if locations.as_ref().is_none_or(|(at, _)| *at != t) {
                            locations = Some((t, self.locations(t)));
                        }
                        let list = &locations.as_ref().map(|(_, l)| l.as_slice()).unwrap_or_default();
                        if let Some(core) = self.nodes[to].core.as_mut() {
                            core.located(now, list);
                        }
                        woken[to] = true;
                    }
                    Delivery::Fetched { to, from, index, result } => {
                        self.fetched(t, to, from, index, result);
                        woken[to] = true;
                    }
                    Delivery::Reported { to, from } => {
                        let (id, held, uploads) =
                            (self.nodes[from].id.clone(), self.nodes[from].held.clone(), self.uploads(from));
                        if let Some(core) = self.nodes[to].core.as_mut() {
                            core.peer_reported(now, &id, held, uploads);
                        }
                        woken[to] = true;
                    }
                }
            }
            self.answer_watches(t);
            for (i, was_woken) in woken.into_iter().enumerate().skip(1) {
                let node = &self.nodes[i];
                if node.alive && node.finished_at.is_none() && (was_woken || t >= node.wake) {
                    self.poll(i, t);
                }
            }
            self.step(t, dt);
            t += dt;
            if self.nodes.iter().all(|n| !n.alive || n.finished_at.is_some()) {
                break;
            }
        }
        let survivors = self.nodes.iter().skip(1).filter(|n| n.alive);
        survivors.map(|n| n.finished_at.unwrap_or(limit)).fold(0.0, f64::max)
    }

    /// Uploads the node reports: the ones holding a slot.
    fn uploads(&self, node: usize) -> u32 {
        self.active_up[node]
    }

    fn remove_transfer(&mut self, seq: u64, t: f64) -> Option<Transfer> {
        let x = self.transfers.remove(&seq)?;
        if x.waiting {
            self.waiting_up[x.from].retain(|s| *s != seq);
        } else {
            self.active_up[x.from] -= 1;
            self.promote(x.from, t);
        }
        Some(x)
    }

    /// Gives freed upload slots of `from` to the uploads queued longest.
    fn promote(&mut self, from: usize, t: f64) {
        let slots = self.config.upload_slots.unwrap_or(u32::MAX);
        while self.active_up[from] < slots {
            let Some(seq) = self.waiting_up[from].pop_front() else { break };
            if let Some(x) = self.transfers.get_mut(&seq) {
                x.waiting = false;
                x.starts = x.starts.max(t);
                self.active_up[from] += 1;
            }
        }
    }

    fn announce(&mut self, t: f64) {
        for n in &mut self.nodes {
            if n.alive && t >= n.next_announce {
                n.next_announce += ANNOUNCE;
                if n.announced != n.held {
                    n.announced = n.held.clone();
                }
            }
        }
    }

    fn fail_nodes(&mut self, t: f64) {
        let receivers = self.config.receivers;
        let mut victims = ((receivers as f64) * self.config.fail_fraction).round() as usize;
        while victims > 0 {
            let i = 1 + self.rng.usize(..receivers);
            let node = &mut self.nodes[i];
            if node.alive && node.finished_at.is_none() {
                node.alive = false;
                node.died_at = t;
                victims -= 1;
            } else if self.nodes.iter().skip(1).all(|n| !n.alive || n.finished_at.is_some()) {
                break;
            }
        }
        let stall = self.config.core.stall.as_secs_f64();
        for x in self.transfers.values_mut() {
            if !self.nodes[x.from].alive && x.stalled_since.is_none() {
                x.stalled_since = Some(t);
                self.queue.push(
                    t + stall,
                    Delivery::Fetched {
                        to: x.to,
                        from: x.from,
                        index: x.index,
                        result: FetchResult::Transport { lost: true },
                    },
                );
            }
        }
        let orphaned: Vec<u64> =
            self.transfers.iter().filter(|(_, x)| !self.nodes[x.to].alive).map(|(seq, _)| *seq).collect();
        for seq in orphaned {
            self.remove_transfer(seq, t);
        }
        self.watches.retain(|w| self.nodes[w.0].alive);
    }

    fn answer_watches(&mut self, t: f64) {
        let latency = self.latency();
        let mut answered = Vec::new();
        let mut lost = Vec::new();
        self.watches.retain(|&(to, from, known, by)| {
            let node = &self.nodes[from];
            if !node.alive {
                if t >= by + WATCH_MARGIN {
                    lost.push((to, from));
                    return false;
                }
                return true;
            }
            let ready = node.held.count() > known || t >= by;
            if ready {
                answered.push((to, from));
            }
            !ready
        });
        for (to, from) in answered {
            self.queue.push(t + latency, Delivery::Reported { to, from });
        }
        let now = self.instant(t);
        for (to, from) in lost {
            let id = self.nodes[from].id.clone();
            if let Some(core) = self.nodes[to].core.as_mut() {
                core.watch_failed(now, &id, true);
            }
        }
    }

    fn poll(&mut self, i: usize, t: f64) {
        match self.config.schedule {
            Schedule::Swarm => self.poll_core(i, t),
            Schedule::Chain | Schedule::BinaryTree => self.poll_fixed(i, t),
        }
    }

    fn poll_core(&mut self, i: usize, t: f64) {
        let now = self.instant(t);
        let Some(core) = self.nodes[i].core.as_mut() else { return };
        let actions = core.poll(now);
        let wake = core.poll_timeout().map(|at| at.saturating_duration_since(self.epoch).as_secs_f64());
        self.nodes[i].wake = wake.unwrap_or(f64::INFINITY);
        let latency = self.latency();
        for action in actions {
            match action {
                Action::Locate => self.queue.push(t + 2.0 * latency, Delivery::Located(i)),
                Action::Fetch(fetch) => {
                    let Some(from) = self.node_at(fetch.addr) else { continue };
                    self.request(i, from, fetch.index, t);
                }
                Action::Watch { addr, known, .. } => {
                    if let Some(from) = self.node_at(addr) {
                        // A dead peer never answers: the watch fails when its margin runs out.
                        self.watches.push((i, from, known, t + latency + WATCH_TIMEOUT));
                    }
                }
                Action::ReadOrigin { index } => {
                    // No origin in these runs: the read fails.
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.origin_done(index, None);
                    }
                }
            }
        }
        self.check_finished(i, t);
    }

    fn poll_fixed(&mut self, i: usize, t: f64) {
        let Some(parent) = self.nodes[i].parent else { return };
        // One chunk at a time: a second one in flight would share the link with the first
        // and delay its forwarding, doubling the chain's per-hop latency.
        while self.nodes[i].in_flight < 1 && self.nodes[i].next_chunk < self.count {
            let index = self.nodes[i].next_chunk;
            if !self.nodes[parent].held.contains(index) {
                break;
            }
            self.nodes[i].next_chunk += 1;
            self.nodes[i].in_flight += 1;
            self.request(i, parent, index, t);
        }
        // Parents' progress is seen on the next step.
        self.nodes[i].wake = t;
    }

    fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        match addr.ip() {
            IpAddr::V4(ip) => Some((u32::from(ip) - 0xc612_0000) as usize).filter(|i| *i < self.nodes.len()),
            IpAddr::V6(_) => None,
        }
    }

    /// Receiver `to` asks `from` for chunk `index`.
    fn request(&mut self, to: usize, from: usize, index: u64, t: f64) {
        let latency = self.latency();
        let stall = self.config.core.stall.as_secs_f64();
        if !self.nodes[from].alive {
            // No answer: the fetch gives up after the stall timeout.
            let result = FetchResult::Transport { lost: true };
            self.queue.push(t + stall, Delivery::Fetched { to, from, index, result });
        } else if !self.nodes[from].held.contains(index) {
            self.queue.push(t + 2.0 * latency, Delivery::Fetched { to, from, index, result: FetchResult::NotHeld });
        } else if self.config.upload_slots.is_some_and(|slots| self.active_up[from] >= slots)
            && self.waiting_up[from].len() >= UPLOAD_QUEUE
        {
            let result = FetchResult::Busy { uploads: self.uploads(from) };
            self.queue.push(t + 2.0 * latency, Delivery::Fetched { to, from, index, result });
        } else if self.config.loss > 0.0 && self.rng.f64() < self.config.loss {
            let result = FetchResult::Transport { lost: false };
            self.queue.push(t + 2.0 * latency, Delivery::Fetched { to, from, index, result });
        } else {
            let len = self.config.chunk_size.min(self.config.size - index * self.config.chunk_size) as f64;
            let waiting = self.config.upload_slots.is_some_and(|slots| self.active_up[from] >= slots);
            let seq = self.next_transfer;
            self.next_transfer += 1;
            if waiting {
                self.waiting_up[from].push_back(seq);
            } else {
                self.active_up[from] += 1;
            }
            let starts = t + 2.0 * latency;
            self.transfers
                .insert(seq, Transfer { from, to, index, remaining: len, starts, stalled_since: None, waiting });
        }
    }

    /// Moves every flowing transfer on by `dt`, links shared equally.
    fn step(&mut self, t: f64, dt: f64) {
        let mut ups = vec![0u32; self.nodes.len()];
        let mut downs = vec![0u32; self.nodes.len()];
        let flowing = |x: &Transfer| !x.waiting && x.starts <= t && x.stalled_since.is_none();
        for x in self.transfers.values().filter(|x| flowing(x)) {
            ups[x.from] += 1;
            downs[x.to] += 1;
        }
        let (up, down) = (self.config.up_rate, self.config.down_rate);
        let mut done = Vec::new();
        let mut expired = Vec::new();
        let stall = self.config.core.stall.as_secs_f64();
        for (seq, x) in self.transfers.iter_mut() {
            if x.stalled_since.is_some_and(|s| t >= s + stall) {
                expired.push(*seq);
            }
            if !flowing(x) {
                continue;
            }
            let rate = (up / f64::from(ups[x.from])).min(down / f64::from(downs[x.to]));
            let moved = (rate * dt).min(x.remaining);
            x.remaining -= moved;
            self.nodes[x.from].sent += moved as u64;
            if x.remaining <= 0.0 {
                done.push(*seq);
            }
        }
        for seq in done {
            let Some(x) = self.remove_transfer(seq, t + dt) else { continue };
            let content = self.nodes[x.from].content[x.index as usize];
            let result = if content == Some(self.manifest[x.index as usize]) {
                FetchResult::Arrived { bytes: 0, uploads: ups[x.from] }
            } else {
                FetchResult::Corrupt
            };
            self.queue.push(t + dt, Delivery::Fetched { to: x.to, from: x.from, index: x.index, result });
        }
        for seq in expired {
            self.remove_transfer(seq, t);
        }
    }

    fn fetched(&mut self, t: f64, to: usize, from: usize, index: u64, result: FetchResult) {
        if !self.nodes[to].alive {
            return;
        }
        let len = self.config.chunk_size.min(self.config.size - index * self.config.chunk_size);
        let result = match result {
            FetchResult::Arrived { uploads, .. } => {
                let node = &mut self.nodes[to];
                node.held.insert(index);
                node.content[index as usize] = Some(self.manifest[index as usize]);
                FetchResult::Arrived { bytes: len, uploads }
            }
            busy @ FetchResult::Busy { .. } => busy,
            other => {
                self.retries += 1;
                if other == FetchResult::Corrupt {
                    self.corrupt += 1;
                }
                other
            }
        };
        let now = self.instant(t);
        let peer = self.nodes[from].id.clone();
        let node = &mut self.nodes[to];
        match node.core.as_mut() {
            Some(core) => core.fetch_done(now, &peer, index, result),
            // A swarm receiver that finished or gave up: a late answer changes nothing.
            None if node.parent.is_none() => return,
            None => {
                node.in_flight -= 1;
                if !matches!(result, FetchResult::Arrived { .. }) {
                    // Fixed schedules have nowhere else to go: ask again.
                    node.next_chunk = node.next_chunk.min(index);
                }
                if node.held.is_complete() && node.finished_at.is_none() {
                    node.finished_at = Some(t);
                }
            }
        }
        self.check_finished(to, t);
    }

    fn check_finished(&mut self, i: usize, t: f64) {
        let node = &mut self.nodes[i];
        if let Some(core) = &node.core {
            match core.finished() {
                Some(Finished::Complete) if node.finished_at.is_none() => {
                    node.finished_at = Some(t);
                    node.core = None;
                }
                Some(Finished::Stalled { .. }) => {
                    // Gives up; counts as not completed.
                    node.core = None;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const RATE: f64 = 25e6; // 200 Mbit/s

    #[test]
    fn a_swarm_broadcast_is_near_one_transfer_time_and_the_source_sends_about_once() {
        // The targets for five hosts; sixteen as measured (1.38 x and 1.17 x S sent,
        // not yet at the bound).
        for (n, ratio, egress) in [(2, 1.15, 1.1), (5, 1.15, 1.1), (16, 1.45, 1.2)] {
            let report = run(&SimConfig::new(n, 256 * MIB, RATE));
            println!("{n}: {report:?}");
            assert!(report.all_verified(), "{report:?}");
            assert!(report.ratio() <= ratio, "{n} receivers: {:.3} x S/B", report.ratio());
            assert!(report.source_egress <= egress, "{n} receivers: the source sent {:.2} x S", report.source_egress);
        }
    }

    #[test]
    fn a_chain_and_a_tree_behave_as_their_schedules_say() {
        let mut chain = SimConfig::new(8, 64 * MIB, RATE);
        chain.schedule = Schedule::Chain;
        let report = run(&chain);
        assert!(report.all_verified(), "{report:?}");
        // (S/B) + (N-1) chunk times, give or take the request latency.
        let expected = chain.transfer_time() * (1.0 + 7.0 / 16.0);
        assert!((report.slowest - expected).abs() / expected < 0.15, "{report:?} vs {expected}");
        let mut tree = chain.clone();
        tree.schedule = Schedule::BinaryTree;
        let report = run(&tree);
        assert!(report.all_verified(), "{report:?}");
        assert!(report.ratio() > 1.8, "a binary tree halves every parent's uplink: {report:?}");
    }

    #[test]
    fn receivers_dying_mid_transfer_cost_the_others_little() {
        let mut config = SimConfig::new(20, 128 * MIB, RATE);
        config.fail_fraction = 0.1;
        let report = run(&config);
        println!("{report:?}");
        assert_eq!(report.failed_nodes, 2);
        assert!(report.all_verified(), "{report:?}");
        // As measured (2.32 x): far from the 1.5 x, but bounded.
        assert!(report.ratio() <= 2.5, "{:.3} x S/B", report.ratio());
    }

    #[test]
    fn runs_repeat_exactly() {
        let mut config = SimConfig::new(6, 32 * MIB, RATE);
        config.loss = 0.02;
        let (a, b) = (run(&config), run(&config));
        assert_eq!((a.slowest, a.retries, a.source_egress), (b.slowest, b.retries, b.source_egress));
    }
}
