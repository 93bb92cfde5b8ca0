//! Data-aware placement: which nodes should run a task that reads some objects, ranked by
//! when the task could start there.
//!
//! Estimated start on a node = the later of
//! - the transfer: bytes of the inputs still missing there / bandwidth observed into that
//!   node (a configured default before any transfer was seen), after the transfers already
//!   expected into it (its inbound link moves one thing after another), and
//! - its queue: when one of its task slots is free (a node runs as many tasks at once as its
//!   [`SLOTS_RESOURCE`] says, one if it names none).
//!
//! The later, not the sum: with prefetch the transfer overlaps the work already queued.
//! Hard constraints (labels, resources, a pinned node) filter first. Placing several tasks is
//! greedy: each assignment occupies the chosen slot until the task's estimated end, keeps the
//! link busy until its inputs are there, and counts them as present for the next task, so a
//! burst spreads over nodes only when waiting for a busy data holder costs more than moving
//! the data.
//!
//! [`rank`] and [`place`] are pure functions of constructed [`NodeView`]s. [`Planner`] is the
//! scheduler's state around them, also pure (time comes in as `now`): per node the inbound
//! bandwidth estimate (an EWMA of the transfers the daemons report) and the queue and link
//! occupancy its own placements imply. Queued work is not reported back by anyone: it
//! drains with time at the rate the estimates assumed, so a stale estimate fades by itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use store_client::wire::node::{NodeId, NodeInfo};
use store_client::wire::placement::TransferReport;

/// The resource whose count is how many tasks a node runs at once (Ray's `CPU`: a task takes
/// one by default).
pub const SLOTS_RESOURCE: &str = "cpu";

/// Most task slots a node is modelled with, whatever it claims.
const MAX_SLOTS: u64 = 1024;

/// What a task needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// Objects the task reads, with their sizes.
    pub needs: Vec<(String, u64)>,
    /// Every label must match (`site=cloud`).
    pub labels: BTreeMap<String, String>,
    /// Named resources the node must offer at least this many of (as Ray's custom resources).
    pub resources: BTreeMap<String, u64>,
    /// Only this node qualifies.
    pub pinned: Option<NodeId>,
    /// How many tasks to place.
    pub count: u32,
    /// Expected run time of one task, in seconds (how long it occupies a slot).
    pub task_seconds: f64,
}

/// What the scheduler knows of a node, for placement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, u64>,
    /// Bytes held of each needed object (complete or partial).
    pub held: BTreeMap<String, u64>,
    /// Observed bandwidth into the node, bytes per second.
    pub inbound_bytes_per_second: Option<f64>,
    /// Seconds until the transfers already expected into the node are done.
    pub inbound_busy_seconds: f64,
    /// Seconds until each of the node's task slots is free, one entry per slot; no entry
    /// counts as one free slot.
    pub slots: Vec<f64>,
    /// Objects already on their way to the node (placed there before), with the seconds
    /// until they are expected to be there.
    pub incoming: BTreeMap<String, f64>,
}

/// One node's estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: NodeId,
    pub missing_bytes: u64,
    /// Needed objects the node lacks in whole or in part.
    pub missing: Vec<String>,
    /// Seconds until the missing bytes are there (after the transfers already expected).
    pub transfer_seconds: f64,
    /// Seconds until a task slot is free.
    pub queued_seconds: f64,
    pub estimated_start_seconds: f64,
    /// Bandwidth the estimate used, bytes per second.
    pub bandwidth: f64,
    /// Whether the bandwidth was a default, not an observation.
    pub bandwidth_assumed: bool,
}

fn qualifies(req: &PlacementRequest, node: &NodeView) -> bool {
    req.pinned.as_ref().is_none_or(|p| *p == node.id)
        && req.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        && req.resources.iter().all(|(r, n)| node.resources.get(r).copied().unwrap_or(0) >= *n)
}

/// Index and seconds of the slot that frees first (0 s for a node without entries).
fn first_free_slot(node: &NodeView) -> (Option<usize>, f64) {
    node.slots
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or((None, 0.0), |(i, s)| (Some(i), s.max(0.0)))
}

fn estimate(req: &PlacementRequest, node: &NodeView, default_bps: f64) -> Candidate {
    let mut missing = Vec::new();
    let mut missing_bytes = 0u64;
    // Inputs already on their way cost no more link time, but the task waits for them.
    let mut arriving = 0.0f64;
    for (name, size) in &req.needs {
        let lacking = size.saturating_sub(node.held.get(name).copied().unwrap_or(0));
        if lacking == 0 {
            continue;
        }
        match node.incoming.get(name) {
            Some(ready) => arriving = arriving.max(*ready),
            None => {
                missing.push(name.clone());
                missing_bytes = missing_bytes.saturating_add(lacking);
            }
        }
    }
    let (bps, assumed) = match node.inbound_bytes_per_second {
        Some(b) if b > 0.0 && b.is_finite() => (b, false),
        _ => (default_bps.max(1.0), true),
    };
    // Nothing to move waits for nothing, however busy the link is.
    let transfer_seconds = if missing_bytes == 0 {
        arriving
    } else {
        arriving.max(node.inbound_busy_seconds.max(0.0) + missing_bytes as f64 / bps)
    };
    let (_, queued_seconds) = first_free_slot(node);
    Candidate {
        node: node.id.clone(),
        missing_bytes,
        missing,
        transfer_seconds,
        queued_seconds,
        // The transfer overlaps the queued work (prefetch), so the later of the two decides.
        estimated_start_seconds: transfer_seconds.max(queued_seconds),
        bandwidth: bps,
        bandwidth_assumed: assumed,
    }
}

fn by_start(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.estimated_start_seconds
        .total_cmp(&b.estimated_start_seconds)
        .then(a.missing_bytes.cmp(&b.missing_bytes))
        .then(a.node.cmp(&b.node))
}

/// Every qualifying node, best first.
pub fn rank(req: &PlacementRequest, nodes: &[NodeView], default_bps: f64) -> Vec<Candidate> {
    let mut out: Vec<Candidate> =
        nodes.iter().filter(|n| qualifies(req, n)).map(|n| estimate(req, n, default_bps)).collect();
    out.sort_by(by_start);
    out
}

/// What assigning a task to `node` (as estimated by `c`) does to it.
fn assign(node: &mut NodeView, c: &Candidate, req: &PlacementRequest) {
    if c.missing_bytes > 0 {
        node.inbound_busy_seconds = c.transfer_seconds;
    }
    let end = c.estimated_start_seconds + req.task_seconds.max(0.0);
    match first_free_slot(node) {
        (Some(i), _) => node.slots[i] = end,
        (None, _) => node.slots.push(end),
    }
    for name in &c.missing {
        node.incoming.insert(name.clone(), c.transfer_seconds);
    }
}

/// Chooses a node for each of `req.count` tasks (greedy by estimated start) and returns the
/// qualifying nodes as they stand afterwards.
fn place_views(req: &PlacementRequest, nodes: &[NodeView], default_bps: f64) -> (Vec<Candidate>, Vec<NodeView>) {
    let mut nodes: Vec<NodeView> = nodes.iter().filter(|n| qualifies(req, n)).cloned().collect();
    let mut chosen = Vec::new();
    for _ in 0..req.count.max(1) {
        let Some(best) = nodes.iter().map(|n| estimate(req, n, default_bps)).min_by(by_start) else { break };
        if let Some(node) = nodes.iter_mut().find(|n| n.id == best.node) {
            assign(node, &best, req);
        }
        chosen.push(best);
    }
    (chosen, nodes)
}

/// Chooses a node for each of `req.count` tasks (greedy by estimated start); empty if no
/// node qualifies.
pub fn place(req: &PlacementRequest, nodes: &[NodeView], default_bps: f64) -> Vec<Candidate> {
    place_views(req, nodes, default_bps).0
}

/// An exponentially weighted estimate of a node's inbound bandwidth from finished transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BandwidthEstimate {
    value: Option<f64>,
}

impl BandwidthEstimate {
    /// Weight of the newest observation.
    const ALPHA: f64 = 0.3;

    /// Records a transfer of `bytes` that took `seconds`; tiny transfers say little about a
    /// link and are ignored.
    pub fn observe(&mut self, bytes: u64, seconds: f64) {
        if bytes < 1 << 20 || seconds <= 0.0 || !seconds.is_finite() {
            return;
        }
        let sample = bytes as f64 / seconds;
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + Self::ALPHA * (sample - v),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// How many tasks a node with these resources runs at once.
pub fn slot_count(resources: &BTreeMap<String, u64>) -> usize {
    resources.get(SLOTS_RESOURCE).copied().unwrap_or(1).clamp(1, MAX_SLOTS) as usize
}

#[derive(Clone, Debug, Default)]
struct NodeState {
    bandwidth: BandwidthEstimate,
    /// When the transfers this scheduler expects into the node are done.
    link_free: Option<Instant>,
    /// When each task slot is free, by this scheduler's placements.
    slots_free: Vec<Instant>,
    /// Inputs placed here that are on their way, and when they should be there.
    incoming: BTreeMap<String, Instant>,
}

/// The scheduler's placement state: bandwidth estimates and the load its own placements
/// put on each node. See the module documentation.
#[derive(Clone, Debug)]
pub struct Planner {
    default_bps: f64,
    nodes: BTreeMap<NodeId, NodeState>,
}

fn seconds_until(t: Instant, now: Instant) -> f64 {
    t.saturating_duration_since(now).as_secs_f64()
}

impl Planner {
    /// `default_bps`: the inbound bandwidth assumed for a node before any transfer into it
    /// was reported, bytes per second.
    pub fn new(default_bps: f64) -> Self {
        Self {
            default_bps: if default_bps.is_finite() && default_bps > 0.0 { default_bps } else { 1.0 },
            nodes: BTreeMap::new(),
        }
    }

    pub fn default_bps(&self) -> f64 {
        self.default_bps
    }

    /// A finished pull into `node`. The sample is what the node's link carried over the
    /// pull's time (its own bytes and those of pulls running beside it), so concurrent pulls
    /// do not each look like a slow link.
    pub fn observe_transfer(&mut self, node: &str, report: &TransferReport) {
        let bytes = report.node_bytes.max(report.bytes);
        self.nodes.entry(node.to_owned()).or_default().bandwidth.observe(bytes, report.seconds);
    }

    /// The observed inbound bandwidth of `node`, bytes per second.
    pub fn bandwidth(&self, node: &str) -> Option<f64> {
        self.nodes.get(node).and_then(|n| n.bandwidth.get())
    }

    /// The view of a registered node at `now`, holding `held` bytes of the needed objects.
    pub fn view(&self, now: Instant, info: &NodeInfo, held: BTreeMap<String, u64>) -> NodeView {
        let state = self.nodes.get(&info.id);
        let mut slots: Vec<f64> =
            state.map(|s| s.slots_free.iter().map(|t| seconds_until(*t, now)).collect()).unwrap_or_default();
        // The node may have changed its slot count since: new slots are free, missing ones gone.
        slots.resize(slot_count(&info.resources), 0.0);
        NodeView {
            id: info.id.clone(),
            labels: info.labels.clone(),
            resources: info.resources.clone(),
            held,
            inbound_bytes_per_second: state.and_then(|s| s.bandwidth.get()),
            inbound_busy_seconds: state.and_then(|s| s.link_free).map_or(0.0, |t| seconds_until(t, now)),
            slots,
            // Once an input is due, the table's holdings say whether it came (a failed or
            // evicted prefetch then counts as missing again).
            incoming: state
                .map(|s| {
                    s.incoming
                        .iter()
                        .filter(|(_, t)| **t > now)
                        .map(|(n, t)| (n.clone(), seconds_until(*t, now)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Ranks `nodes` for one task and places `req.count` tasks; records the load the
    /// placement puts on the chosen nodes. Returns (one candidate per task, the ranking).
    pub fn place(
        &mut self,
        now: Instant,
        req: &PlacementRequest,
        nodes: &[NodeView],
    ) -> (Vec<Candidate>, Vec<Candidate>) {
        let ranked = rank(req, nodes, self.default_bps);
        let (tasks, after) = place_views(req, nodes, self.default_bps);
        // Estimates are bounded by the request's checks; clamp anyway so no input can make
        // the addition overflow.
        let at = |s: f64| {
            let d = Duration::try_from_secs_f64(s.clamp(0.0, 1e9)).unwrap_or_default();
            now.checked_add(d).unwrap_or(now)
        };
        for view in after.iter().filter(|v| tasks.iter().any(|t| t.node == v.id)) {
            let state = self.nodes.entry(view.id.clone()).or_default();
            if view.inbound_busy_seconds > 0.0 {
                state.link_free = Some(at(view.inbound_busy_seconds));
            }
            state.slots_free = view.slots.iter().map(|s| at(*s)).collect();
            state.incoming.retain(|_, t| *t > now);
            for (name, ready) in &view.incoming {
                state.incoming.insert(name.clone(), at(*ready));
            }
        }
        (tasks, ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn node(id: &str) -> NodeView {
        NodeView { id: id.into(), inbound_bytes_per_second: Some(25e6), ..Default::default() }
    }

    fn needs(size: u64) -> PlacementRequest {
        PlacementRequest { needs: vec![("input".into(), size)], count: 1, task_seconds: 1.0, ..Default::default() }
    }

    #[test]
    fn the_node_holding_the_data_wins() {
        let mut holder = node("b");
        holder.held.insert("input".into(), 100 * MB);
        let ranked = rank(&needs(100 * MB), &[node("a"), holder, node("c")], 25e6);
        assert_eq!(ranked[0].node, "b");
        assert_eq!(ranked[0].missing_bytes, 0);
        assert_eq!(ranked[1].missing_bytes, 100 * MB);
        assert!((ranked[1].transfer_seconds - 4.0).abs() < 1e-9);
    }

    #[test]
    fn partial_holdings_count() {
        let mut partial = node("p");
        partial.held.insert("input".into(), 60 * MB);
        let ranked = rank(&needs(100 * MB), &[node("a"), partial], 25e6);
        assert_eq!(ranked[0].node, "p");
        assert_eq!(ranked[0].missing_bytes, 40 * MB);
    }

    #[test]
    fn constraints_are_hard() {
        let mut holder = node("hpc");
        holder.held.insert("input".into(), 100 * MB);
        holder.labels.insert("site".into(), "hpc".into());
        let mut cloud = node("cloud");
        cloud.labels.insert("site".into(), "cloud".into());
        cloud.resources.insert("gpu".into(), 1);
        let mut req = needs(100 * MB);
        req.labels.insert("site".into(), "cloud".into());
        assert_eq!(
            rank(&req, &[holder.clone(), cloud.clone()], 25e6).iter().map(|c| c.node.as_str()).collect::<Vec<_>>(),
            ["cloud"]
        );
        let mut req = needs(100 * MB);
        req.resources.insert("gpu".into(), 2);
        assert!(rank(&req, &[holder.clone(), cloud.clone()], 25e6).is_empty());
        let mut req = needs(100 * MB);
        req.pinned = Some("cloud".into());
        assert_eq!(place(&req, &[holder, cloud], 25e6)[0].node, "cloud");
    }

    #[test]
    fn a_full_queue_loses_to_a_short_transfer() {
        let mut busy = node("busy");
        busy.held.insert("input".into(), 4 * MB);
        busy.slots = vec![30.0];
        let idle = node("idle"); // 4 MB at 25 MB/s: 0.16 s
        let ranked = rank(&needs(4 * MB), &[busy, idle], 25e6);
        assert_eq!(ranked[0].node, "idle");
    }

    #[test]
    fn missing_bandwidth_falls_back_to_the_default() {
        let unknown = NodeView { id: "n".into(), ..Default::default() };
        let ranked = rank(&needs(100 * MB), &[unknown], 10e6);
        assert!(ranked[0].bandwidth_assumed);
        assert!((ranked[0].transfer_seconds - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_burst_of_tasks_spreads_when_the_holder_gets_busy() {
        let mut holder = node("holder");
        holder.held.insert("input".into(), 4 * MB);
        let req = PlacementRequest { count: 4, task_seconds: 1.0, ..needs(4 * MB) };
        let placed = place(&req, &[holder, node("other")], 25e6);
        let on_holder = placed.iter().filter(|c| c.node == "holder").count();
        assert_eq!(placed.len(), 4);
        assert!((2..4).contains(&on_holder), "{placed:?}");
    }

    #[test]
    fn transfers_into_one_node_queue_on_its_link() {
        // Two tasks, each reading its own 25 MB input, on a node with four slots: the second
        // transfer waits for the first one (one link), not for a slot.
        let mut n = node("n");
        n.slots = vec![0.0; 4];
        let req = |name: &str| PlacementRequest {
            needs: vec![(name.into(), 25 * MB)],
            count: 1,
            task_seconds: 10.0,
            ..Default::default()
        };
        let (first, after) = place_views(&req("a"), &[n], 25e6);
        assert!((first[0].estimated_start_seconds - 1.0).abs() < 1e-9);
        let second = place(&req("b"), &after, 25e6);
        assert!((second[0].transfer_seconds - 2.0).abs() < 1e-9, "{second:?}");
        assert!((second[0].estimated_start_seconds - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_node_runs_as_many_tasks_at_once_as_it_has_slots() {
        let mut wide = node("wide");
        wide.held.insert("input".into(), 4 * MB);
        wide.slots = vec![0.0; 3];
        let mut narrow = node("narrow");
        narrow.held.insert("input".into(), 4 * MB);
        let req = PlacementRequest { count: 4, task_seconds: 5.0, ..needs(4 * MB) };
        let placed = place(&req, &[narrow, wide], 25e6);
        assert_eq!(placed.iter().filter(|c| c.node == "wide").count(), 3, "{placed:?}");
        assert!(placed.iter().all(|c| c.estimated_start_seconds == 0.0), "{placed:?}");
    }

    fn info(id: &str, cpu: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            addr: std::net::SocketAddr::from(([198, 18, 0, 1], 7701)),
            labels: BTreeMap::new(),
            capacity: 1 << 30,
            free: 1 << 30,
            resources: BTreeMap::from([(SLOTS_RESOURCE.to_owned(), cpu)]),
        }
    }

    fn report(node_bytes: u64, seconds: f64) -> TransferReport {
        TransferReport { name: "x".into(), bytes: 4 * MB, seconds, from: BTreeMap::new(), node_bytes }
    }

    #[test]
    fn the_planner_uses_reported_bandwidth_and_its_own_queue_drains_with_time() {
        let t0 = Instant::now();
        let mut planner = Planner::new(125e6);
        let a = info("a", 2);
        assert_eq!(planner.view(t0, &a, BTreeMap::new()).inbound_bytes_per_second, None);
        // Two pulls side by side: each took 2 s for 4 MB, but the node received 20 MB in
        // that time, so its link carries 10 MB/s.
        planner.observe_transfer("a", &report(20 * MB, 2.0));
        assert_eq!(planner.bandwidth("a"), Some(10e6));
        let req = PlacementRequest { count: 3, task_seconds: 4.0, ..needs(10 * MB) };
        let (tasks, ranked) = planner.place(t0, &req, &[planner.view(t0, &a, BTreeMap::new())]);
        assert_eq!(ranked.len(), 1);
        assert!((ranked[0].transfer_seconds - 1.0).abs() < 1e-9);
        assert!(!ranked[0].bandwidth_assumed);
        // The first two start when the input is there, at 1 s (two slots); the third when a
        // slot frees: 1 + 4 s.
        let starts: Vec<f64> = tasks.iter().map(|c| c.estimated_start_seconds).collect();
        assert_eq!(starts, [1.0, 1.0, 5.0]);
        assert_eq!(tasks.iter().map(|c| c.missing_bytes).collect::<Vec<_>>(), [10 * MB, 0, 0]);
        let view = planner.view(t0 + Duration::from_millis(500), &a, BTreeMap::new());
        assert_eq!(view.incoming, BTreeMap::from([("input".to_owned(), 0.5)]));
        assert_eq!(view.inbound_busy_seconds, 0.5);
        let view = planner.view(t0 + Duration::from_secs(2), &a, BTreeMap::new());
        assert_eq!(view.slots, [7.0, 3.0]);
        assert_eq!(view.inbound_busy_seconds, 0.0);
        assert!(view.incoming.is_empty());
        let later = planner.view(t0 + Duration::from_secs(60), &a, BTreeMap::new());
        assert_eq!(later.slots, [0.0, 0.0]);
        // A node that now claims more slots gets free ones.
        assert_eq!(planner.view(t0 + Duration::from_secs(2), &info("a", 3), BTreeMap::new()).slots.len(), 3);
    }

    #[test]
    fn the_planner_falls_back_to_its_configured_default() {
        let t0 = Instant::now();
        let mut planner = Planner::new(5e6);
        let req = needs(10 * MB);
        let (tasks, _) = planner.place(t0, &req, &[planner.view(t0, &info("new", 1), BTreeMap::new())]);
        assert!(tasks[0].bandwidth_assumed);
        assert!((tasks[0].transfer_seconds - 2.0).abs() < 1e-9);
        assert_eq!(Planner::new(f64::NAN).default_bps(), 1.0);
    }

    #[test]
    fn bandwidth_estimates_follow_observations_and_ignore_tiny_transfers() {
        let mut e = BandwidthEstimate::default();
        e.observe(1000, 0.001);
        assert_eq!(e.get(), None);
        e.observe(100 * MB, 4.0);
        assert_eq!(e.get(), Some(25e6));
        e.observe(100 * MB, 1.0);
        let v = e.get().unwrap();
        assert!(v > 25e6 && v < 100e6);
    }
}
