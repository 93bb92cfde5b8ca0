//! The plan driven by a simulated cluster: virtual time, per-node upload and download
//! links shared fairly among concurrent transfers, lost, corrupt and silent peers.

use super::*;

const MIB: u64 = 1 << 20;

#[derive(Debug)]
struct SimNode {
    id: String,
    plan: Option<PullPlan>,
    held: ChunkSet,
    alive: bool,
    corrupt: bool,
    silent: bool,
    finished_at: Option<f64>,
}

#[derive(Debug)]
struct Transfer {
    from: usize,
    to: usize,
    index: u64,
    remaining: f64,
}

struct Sim {
    nodes: Vec<SimNode>,
    transfers: Vec<Transfer>,
    /// Bytes per second of every node's uplink and downlink.
    link: f64,
    size: u64,
    chunk: u64,
    /// Receivers learn only of complete holders (relaying off, as Ray does).
    relay: bool,
    start: Instant,
}

impl Sim {
    fn new(sources: usize, receivers: usize, size: u64, chunk: u64, link: f64, relay: bool) -> Self {
        let count = store_client::manifest::chunk_count(size, chunk);
        let start = Instant::now();
        let mut nodes = Vec::new();
        for i in 0..sources {
            nodes.push(SimNode {
                id: format!("src{i}"),
                plan: None,
                held: ChunkSet::full(count),
                alive: true,
                corrupt: false,
                silent: false,
                finished_at: Some(0.0),
            });
        }
        for i in 0..receivers {
            nodes.push(SimNode {
                id: format!("rcv{i}"),
                plan: Some(PullPlan::new(size, chunk, PlanConfig::default())),
                held: ChunkSet::empty(count),
                alive: true,
                corrupt: false,
                silent: false,
                finished_at: None,
            });
        }
        Self { nodes, transfers: Vec::new(), link, size, chunk, relay, start }
    }

    fn uploads(&self, node: usize) -> u32 {
        self.transfers.iter().filter(|t| t.from == node).count() as u32
    }

    fn refresh_peers(&mut self) {
        let views: Vec<(String, ChunkSet, u32, bool)> = (0..self.nodes.len())
            .map(|i| {
                let n = &self.nodes[i];
                let visible = n.alive && (self.relay || n.held.is_complete());
                (n.id.clone(), n.held.clone(), self.uploads(i), visible)
            })
            .collect();
        // Ranks among the receivers still pulling, as the driver derives them from the
        // partial holders the scheduler reports.
        let pulling: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.alive && n.plan.is_some() && n.finished_at.is_none() && (self.relay || n.held.is_complete())
            })
            .collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let Some(plan) = node.plan.as_mut() else { continue };
            if let Some(rank) = pulling.iter().position(|&j| j == i) {
                plan.set_stripe(rank as u64, pulling.len() as u64);
            }
            for (j, (id, held, load, visible)) in views.iter().enumerate() {
                if i != j && *visible && held.count() > 0 {
                    plan.update_peer(id, held.clone(), Some(*load));
                }
            }
        }
    }

    /// Runs until every receiver holds everything or `limit` virtual seconds pass.
    fn run(&mut self, limit: f64, mut on_tick: impl FnMut(&mut Sim, f64)) -> f64 {
        let dt = 0.002;
        let mut t = 0.0;
        self.refresh_peers();
        while t < limit {
            let now = self.start + Duration::from_secs_f64(t);
            on_tick(self, t);
            if ((t / dt) as u64).is_multiple_of(50) {
                self.refresh_peers();
            }
            for r in 0..self.nodes.len() {
                if !self.nodes[r].alive {
                    continue;
                }
                let Some(plan) = self.nodes[r].plan.as_mut() else { continue };
                plan.handle_timeouts(now);
                let requests = plan.poll_requests(now);
                for req in requests {
                    let Some(from) = self.nodes.iter().position(|n| n.id == req.peer) else { continue };
                    let (alive, holds, silent) = {
                        let source = &self.nodes[from];
                        (source.alive, source.held.contains(req.index), source.silent)
                    };
                    let plan = self.nodes[r].plan.as_mut().expect("receiver");
                    if !alive {
                        plan.peer_lost(&req.peer);
                    } else if !holds {
                        plan.chunk_failed(&req.peer, req.index, ChunkFailure::NotHeld);
                    } else if !silent {
                        let len = self.chunk.min(self.size - req.index * self.chunk) as f64;
                        self.transfers.push(Transfer { from, to: r, index: req.index, remaining: len });
                    }
                }
            }
            // Fair sharing of every uplink and downlink.
            let ups: Vec<usize> = (0..self.nodes.len()).map(|i| self.uploads(i) as usize).collect();
            let downs: Vec<usize> =
                (0..self.nodes.len()).map(|i| self.transfers.iter().filter(|x| x.to == i).count()).collect();
            let mut finished = Vec::new();
            for (k, tr) in self.transfers.iter_mut().enumerate() {
                let rate = (self.link / ups[tr.from] as f64).min(self.link / downs[tr.to] as f64);
                tr.remaining -= rate * dt;
                if tr.remaining <= 0.0 {
                    finished.push(k);
                }
            }
            for k in finished.into_iter().rev() {
                let tr = self.transfers.remove(k);
                let corrupt = self.nodes[tr.from].corrupt;
                let from_id = self.nodes[tr.from].id.clone();
                let node = &mut self.nodes[tr.to];
                let plan = node.plan.as_mut().expect("receiver");
                if corrupt {
                    plan.chunk_failed(&from_id, tr.index, ChunkFailure::Corrupt);
                } else {
                    plan.chunk_done(&from_id, tr.index);
                    node.held.insert(tr.index);
                    if plan.is_complete() && node.finished_at.is_none() {
                        node.finished_at = Some(t + dt);
                    }
                }
            }
            t += dt;
            if self.nodes.iter().filter(|n| n.plan.is_some() && n.alive).all(|n| n.finished_at.is_some()) {
                break;
            }
        }
        t
    }

    fn kill(&mut self, id: &str) {
        let i = self.nodes.iter().position(|n| n.id == id).expect("node");
        self.nodes[i].alive = false;
        self.transfers.retain(|t| t.from != i && t.to != i);
        let id = id.to_owned();
        for n in &mut self.nodes {
            if let Some(plan) = n.plan.as_mut() {
                plan.peer_lost(&id);
            }
        }
    }
}

fn bound(size: u64, link: f64) -> f64 {
    size as f64 / link
}

#[test]
fn broadcast_with_relaying_takes_about_one_transfer_time_for_any_n() {
    let link = 25e6; // 200 Mbit/s
    for n in [1, 2, 3, 4, 5, 8] {
        let mut sim = Sim::new(1, n, 256 * MIB, 4 * MIB, link, true);
        let t = sim.run(200.0, |_, _| {});
        let ratio = t / bound(256 * MIB, link);
        println!("n={n}: {t:.2} s = {ratio:.3} x S/B");
        assert!(ratio <= 1.3, "n={n}: {t:.1} s is {ratio:.2} x S/B");
    }
}

#[test]
fn without_relaying_the_source_link_makes_it_grow_with_n() {
    let link = 25e6;
    let mut sim = Sim::new(1, 5, 256 * MIB, 4 * MIB, link, false);
    let t = sim.run(400.0, |_, _| {});
    let ratio = t / bound(256 * MIB, link);
    assert!(ratio >= 4.5, "5 receivers from one source took only {ratio:.2} x S/B");
}

#[test]
fn a_lost_source_is_replaced_by_another_holder() {
    let mut sim = Sim::new(2, 1, 64 * MIB, 4 * MIB, 25e6, true);
    let mut killed = false;
    let t = sim.run(60.0, |sim, t| {
        if !killed && t > 0.5 {
            sim.kill("src0");
            killed = true;
        }
    });
    let rcv = &sim.nodes[2];
    assert!(rcv.held.is_complete(), "receiver did not complete after losing a source");
    assert!(t < 10.0);
    let plan = rcv.plan.as_ref().unwrap();
    assert!(plan.bytes_by_peer().any(|(p, b)| p == "src1" && b > 0));
}

#[test]
fn a_corrupt_peer_is_dropped_and_its_chunks_come_from_elsewhere() {
    let mut sim = Sim::new(2, 1, 64 * MIB, 4 * MIB, 25e6, true);
    sim.nodes[0].corrupt = true;
    sim.run(60.0, |_, _| {});
    let rcv = &sim.nodes[2];
    assert!(rcv.held.is_complete());
    let plan = rcv.plan.as_ref().unwrap();
    let stats = plan.stats();
    assert!(stats.corrupt_chunks >= 1 && stats.corrupt_chunks <= 3, "{stats:?}");
    assert!(!plan.peers().any(|p| p == "src0"), "corrupt peer still in use");
    assert!(plan.bytes_by_peer().all(|(p, _)| p != "src0"));
}

#[test]
fn a_silent_peer_times_out_and_is_retried_elsewhere() {
    let mut sim = Sim::new(2, 1, 16 * MIB, 4 * MIB, 25e6, true);
    sim.nodes[0].silent = true;
    let t = sim.run(200.0, |_, _| {});
    assert!(sim.nodes[2].held.is_complete());
    assert!(t > PlanConfig::default().chunk_timeout.as_secs_f64(), "finished before any timeout: {t}");
    assert!(sim.nodes[2].plan.as_ref().unwrap().stats().retries >= 1);
}

#[test]
fn unknown_chunks_are_reported_unreachable_and_windows_are_respected() {
    let now = Instant::now();
    let mut plan =
        PullPlan::new(10 * MIB, MIB, PlanConfig { per_peer_window: 2, total_window: 3, ..Default::default() });
    assert_eq!(plan.unreachable_chunks(), 10);
    assert!(plan.poll_requests(now).is_empty());
    plan.update_peer("a", ChunkSet::from_iter_len(10, 0..5), Some(0));
    plan.update_peer("b", ChunkSet::from_iter_len(10, 0..5), Some(0));
    assert_eq!(plan.unreachable_chunks(), 5);
    let reqs = plan.poll_requests(now);
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().filter(|r| r.peer == "a").count() <= 2);
    assert!(reqs.iter().all(|r| r.index < 5));
    // A malformed peer view is ignored.
    plan.update_peer("c", ChunkSet::empty(3), Some(0));
    assert_eq!(plan.peers().count(), 2);
    for r in reqs {
        plan.chunk_done(&r.peer, r.index);
    }
    // A completion for something never requested changes nothing.
    plan.chunk_done("a", 9);
    assert_eq!(plan.stats().chunks_done, 3);
    assert_eq!(plan.held().count(), 3);
}

#[test]
fn runs_are_deterministic() {
    let run = || {
        let mut sim = Sim::new(1, 4, 64 * MIB, 4 * MIB, 25e6, true);
        sim.run(100.0, |_, _| {});
        sim.nodes.iter().map(|n| n.finished_at).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn chunks_no_peer_holds_go_to_the_origin_and_are_never_asked_of_peers_meanwhile() {
    let now = Instant::now();
    let mut plan = PullPlan::new(8 * MIB, MIB, PlanConfig::default());
    plan.mark_held(0);
    plan.update_peer("a", ChunkSet::from_iter_len(8, 0..4), Some(0));
    assert_eq!(plan.unreachable_chunks(), 4);
    let taken = plan.take_for_origin(3);
    assert_eq!(taken, vec![4, 5, 6]);
    assert_eq!(plan.unreachable_chunks(), 1);
    // The peer now claims one of them: it is still not asked for it.
    plan.update_peer("a", ChunkSet::from_iter_len(8, 0..6), Some(0));
    let asked = plan.poll_requests(now);
    assert!(asked.iter().all(|r| !taken.contains(&r.index)), "{asked:?}");
    for r in asked {
        plan.chunk_done(&r.peer, r.index);
    }
    plan.origin_done(4);
    plan.origin_failed(5);
    plan.origin_done(6);
    // Done twice, or done for a chunk never taken, changes nothing.
    plan.origin_done(6);
    plan.origin_done(7);
    assert_eq!(plan.stats().chunks_done, 6);
    assert_eq!(plan.stats().retries, 1);
    // The failed one is back among the missing chunks; the peer holds it now.
    assert!(plan.poll_requests(now).iter().any(|r| r.index == 5));
    assert_eq!(plan.take_for_origin(8), vec![7]);
}
