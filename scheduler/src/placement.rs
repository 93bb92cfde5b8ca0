//! Data-aware placement as a pure function: which nodes should run a task that reads some
//! objects, ranked by when the task could start there.
//!
//! Estimated start on a node = bytes of the inputs still missing there / bandwidth observed
//! into that node (or a configured default before any transfer was seen) + the work already
//! queued on the node. Hard constraints (labels, resources, a pinned node) filter first.
//! Placing several tasks is greedy: each assignment adds the task's duration to the chosen
//! node's queue and counts its inputs as present there for the next task, so a burst spreads
//! over nodes only when waiting for a busy data holder costs more than moving the data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use store_client::cluster::NodeId;

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
    /// Expected run time of one task, in seconds (what it adds to a node's queue).
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
    /// Seconds of work already queued on the node.
    pub queued_seconds: f64,
}

/// One node's estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: NodeId,
    pub missing_bytes: u64,
    pub transfer_seconds: f64,
    pub queued_seconds: f64,
    pub estimated_start_seconds: f64,
    /// Whether the bandwidth was a default, not an observation.
    pub bandwidth_assumed: bool,
}

fn qualifies(req: &PlacementRequest, node: &NodeView) -> bool {
    req.pinned.as_ref().is_none_or(|p| *p == node.id)
        && req.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        && req.resources.iter().all(|(r, n)| node.resources.get(r).copied().unwrap_or(0) >= *n)
}

fn estimate(req: &PlacementRequest, node: &NodeView, default_bps: f64) -> Candidate {
    let missing_bytes: u64 =
        req.needs.iter().map(|(name, size)| size.saturating_sub(node.held.get(name).copied().unwrap_or(0))).sum();
    let (bps, assumed) = match node.inbound_bytes_per_second {
        Some(b) if b > 0.0 => (b, false),
        _ => (default_bps.max(1.0), true),
    };
    let transfer_seconds = missing_bytes as f64 / bps;
    Candidate {
        node: node.id.clone(),
        missing_bytes,
        transfer_seconds,
        queued_seconds: node.queued_seconds,
        // The transfer overlaps the queued work (prefetch), so the later of the two decides.
        estimated_start_seconds: transfer_seconds.max(node.queued_seconds),
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

/// Chooses a node for each of `req.count` tasks (greedy by estimated start); empty if no
/// node qualifies.
pub fn place(req: &PlacementRequest, nodes: &[NodeView], default_bps: f64) -> Vec<Candidate> {
    let mut nodes: Vec<NodeView> = nodes.iter().filter(|n| qualifies(req, n)).cloned().collect();
    let mut chosen = Vec::new();
    for _ in 0..req.count.max(1) {
        let Some(best) = nodes.iter().map(|n| estimate(req, n, default_bps)).min_by(by_start) else { break };
        if let Some(node) = nodes.iter_mut().find(|n| n.id == best.node) {
            node.queued_seconds = best.estimated_start_seconds + req.task_seconds.max(0.0);
            for (name, size) in &req.needs {
                node.held.insert(name.clone(), *size);
            }
        }
        chosen.push(best);
    }
    chosen
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
        busy.queued_seconds = 30.0;
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
