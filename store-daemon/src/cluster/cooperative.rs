//! Cooperative S3 fetch: N nodes load one S3 object while S3 serves its bytes about once.
//!
//! The coordinator (the daemon a client asked) splits the object's chunks into one
//! contiguous share per node. First phase: every node reads its share from S3 into memory
//! set aside for the object (bound to no name yet) and answers with the share's chunk
//! hashes. Second phase: the coordinator assembles the manifest from all shares and sends
//! it to every node, which binds its share as a partially received object, announces it,
//! and pulls the other shares from the other nodes as in any swarm pull (each chunk
//! verified against the manifest; the S3 origin is the fallback for chunks no peer serves).
//! Every node's uplink carries its share to the others, so the exchange takes about one
//! transfer time, and the S3 reads before it take 1/N of one.
//!
//! The manifest can only exist once every share is hashed, so the phases cannot overlap.
//! The share of a node that fails the first phase is read by one of the others instead and
//! the failed node is left out; if that fails too (or every node failed), the whole fetch
//! fails and no node keeps anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_client::manifest::{self, Digest, Manifest};
use store_client::scheduler_client::SchedulerClient;
use store_client::wire::local::{CooperativeOutcome, CooperativePull};
use store_client::wire::node::{NodeId, PullReport};
use store_client::wire::object::S3Origin;
use tracing::{info, warn};

use super::error::PullError;
use super::peers::ShareFetched;
use super::pull::{PullStart, Puller};
use super::staged::{Coordinator, NotYours, ShareBusy, StagedShare, StagedShares};
use crate::node::NodeStore;
use crate::store::StoreError;

/// Cooperative fetches this node coordinates or takes part in.
#[derive(Debug)]
pub struct Cooperative {
    node: Arc<NodeStore>,
    puller: Arc<Puller>,
    scheduler: Arc<SchedulerClient>,
    staged: Arc<StagedShares>,
}

/// Bytes of chunks `chunks` of an object of `size` bytes cut in `chunk_size` chunks.
fn share_bytes(size: u64, chunk_size: u64, chunks: &Range<u64>) -> u64 {
    let end = chunks.end.saturating_mul(chunk_size).min(size);
    end.saturating_sub(chunks.start.saturating_mul(chunk_size))
}

/// Contiguous shares of `count` chunks for `nodes` nodes, as even as can be.
pub fn shares(count: u64, nodes: usize) -> Vec<Range<u64>> {
    let n = nodes.max(1) as u64;
    (0..n).map(|i| (i * count / n)..((i + 1) * count / n)).collect()
}

impl Cooperative {
    pub fn new(node: Arc<NodeStore>, puller: Arc<Puller>, scheduler: Arc<SchedulerClient>) -> Self {
        Self { node, puller, scheduler, staged: Arc::default() }
    }

    /// First phase on this node: reads chunks `chunks` of the S3 object into a staged share
    /// for `name`; returns their hashes, the bytes read and the seconds it took.
    pub async fn fetch_share(
        self: &Arc<Self>,
        name: &str,
        origin: S3Origin,
        chunk_size: u64,
        chunks: Range<u64>,
        coordinator: Coordinator,
    ) -> Result<ShareFetched, PullError> {
        let started = Instant::now();
        manifest::check_replication_chunking(origin.size, chunk_size)
            .map_err(|e| PullError::BadRequest(e.to_string()))?;
        let node = &self.node;
        if node.store().is_bound(name) {
            return Err(StoreError::AlreadyExists(name.to_owned()).into());
        }
        // A second share for the same object (taken over from a node that failed) goes into
        // the same memory; the entry is out of the map meanwhile.
        let earlier = self
            .staged
            .take_extendable(name, &origin, chunk_size, &chunks, &coordinator)
            .map_err(|ShareBusy| PullError::ShareBusy(name.to_owned()))?;
        let mut room = node.take_room(share_bytes(origin.size, chunk_size, &chunks))?;
        let (into, mut ranges, earlier_bytes) = match earlier {
            Some(s) => {
                room.absorb(s.room);
                (Some((s.fd, s.mapping)), s.ranges, s.s3_bytes)
            }
            None => (None, Vec::new(), 0),
        };
        // The whole object must fit once received, the share's room counted in.
        let reserved = room.size();
        let fits = |size: u64| node.store().check_room(size.saturating_sub(reserved));
        let filled = node.s3().fetch_share(&origin, chunk_size, chunks.clone(), into, fits).await??;
        // (S3 bytes are counted in the metrics as each part lands.)
        let s3_bytes = filled.stats.bytes;
        let hashes = filled.hashes.clone();
        ranges.push((chunks.clone(), filled.hashes));
        let share = StagedShare {
            fd: filled.fd,
            mapping: filled.mapping,
            ranges,
            s3_bytes: earlier_bytes + s3_bytes,
            origin,
            chunk_size,
            coordinator,
            room,
        };
        self.staged.stage(name, share).map_err(|ShareBusy| PullError::ShareBusy(name.to_owned()))?;
        Ok(ShareFetched { hashes, s3_bytes, seconds: started.elapsed().as_secs_f64() })
    }

    /// The first phase on `node`: on this node itself, or asked of a peer.
    #[allow(clippy::too_many_arguments)]
    async fn share_on(
        self: &Arc<Self>,
        node: &str,
        addr: SocketAddr,
        name: &str,
        origin: S3Origin,
        chunk_size: u64,
        chunks: Range<u64>,
        timeout: Duration,
    ) -> Result<ShareFetched, String> {
        if node == self.puller.node_id() {
            self.fetch_share(name, origin, chunk_size, chunks, Coordinator::Local).await.map_err(|e| e.to_string())
        } else {
            let peers = self.puller.peers();
            peers.fetch_share(node, addr, name, origin, chunk_size, chunks, timeout).await.map_err(|e| e.to_string())
        }
    }

    /// Second phase on this node: receives `name` from its staged share (if any) and the
    /// other nodes.
    pub async fn complete_share(
        self: &Arc<Self>,
        name: &str,
        manifest: Manifest,
        origin: S3Origin,
        timeout: Duration,
        coordinator: Coordinator,
    ) -> Result<PullReport, PullError> {
        // The manifest comes from a peer: it must describe the S3 object and hash to its root.
        store_client::manifest::check_replication_chunking(manifest.size, manifest.chunk_size)
            .map_err(|e| PullError::BadRequest(e.to_string()))?;
        let consistent = Manifest::from_chunk_hashes(manifest.size, manifest.chunk_size, manifest.chunks.clone())
            .is_ok_and(|check| check.root == manifest.root && manifest.size == origin.size);
        if !consistent {
            return Err(PullError::BadRequest(format!("the manifest sent for {name:?} is inconsistent")));
        }
        let share = self.staged.take_for(name, &coordinator).map_err(|NotYours| {
            PullError::BadRequest(format!("the share of {name:?} staged here belongs to another coordinator"))
        })?;
        let share = share.filter(|s| s.origin == origin);
        self.puller.pull_with(name, timeout, PullStart::Share { share, manifest, origin }).await
    }

    /// Forgets the staged share of `name`, if `coordinator` staged it.
    pub fn drop_share(&self, name: &str, coordinator: &Coordinator) {
        self.staged.drop_share(name, coordinator);
    }

    /// Has `nodes` (every live node if `None`) load `url` into `name` cooperatively.
    pub async fn pull_s3_cooperative(
        self: &Arc<Self>,
        url: &str,
        name: &str,
        nodes: Option<Vec<NodeId>>,
        timeout: Duration,
    ) -> Result<CooperativePull, PullError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let origin = self.node.s3().head(url).await?;
        let live = self.scheduler.nodes().await?;
        let addrs: HashMap<NodeId, SocketAddr> = live.iter().map(|n| (n.info.id.clone(), n.info.addr)).collect();
        let mut targets = nodes.unwrap_or_else(|| live.iter().map(|n| n.info.id.clone()).collect());
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            return Err(PullError::BadRequest("no nodes to fetch with".into()));
        }
        if let Some(unknown) = targets.iter().find(|t| !addrs.contains_key(*t)) {
            return Err(PullError::BadRequest(format!("{unknown} is not a live node of the cluster")));
        }
        if !self.scheduler.locate(name).await?.is_empty() {
            return Err(PullError::AlreadyHeld(name.to_owned()));
        }
        let chunk_size = self.node.chunk_size();
        let count = manifest::chunk_count(origin.size, chunk_size);
        let plan: Vec<(NodeId, Range<u64>)> = targets.iter().cloned().zip(shares(count, targets.len())).collect();

        let mut fetching = tokio::task::JoinSet::new();
        for (node, chunks) in plan.clone() {
            let (this, name, origin, addr) = (self.clone(), name.to_owned(), origin.clone(), addrs[&node]);
            let left = deadline.saturating_duration_since(Instant::now());
            fetching.spawn(async move {
                let result = this.share_on(&node, addr, &name, origin, chunk_size, chunks.clone(), left).await;
                (node, chunks, result)
            });
        }
        // Hashes by their range (empty ranges too: more nodes than chunks); S3 bytes by node.
        let mut hashes_of: HashMap<(u64, u64), Vec<Digest>> = HashMap::new();
        let mut s3_of: HashMap<NodeId, u64> = HashMap::new();
        let mut ok_nodes: Vec<NodeId> = Vec::new();
        let mut failed: Vec<(NodeId, Range<u64>, String)> = Vec::new();
        while let Some(done) = fetching.join_next().await {
            match done {
                Ok((node, chunks, Ok(ShareFetched { hashes, s3_bytes, .. })))
                    if hashes.len() as u64 == chunks.end - chunks.start =>
                {
                    hashes_of.insert((chunks.start, chunks.end), hashes);
                    s3_of.insert(node.clone(), s3_bytes);
                    ok_nodes.push(node);
                }
                Ok((node, chunks, Ok(_))) => failed.push((node, chunks, "wrong number of chunk hashes".into())),
                Ok((node, chunks, Err(e))) => failed.push((node, chunks, e)),
                Err(e) => return Err(PullError::Cooperative(format!("share task failed: {e}"))),
            }
        }
        ok_nodes.sort_unstable();
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        // The shares of nodes that failed go to the others, one at a time (a node keeps one
        // staged object, extended in place).
        let mut taken_over: HashMap<NodeId, String> = HashMap::new();
        let mut abort = if ok_nodes.is_empty() && !failed.is_empty() {
            Some(failed.iter().map(|(n, _, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; "))
        } else {
            None
        };
        for (i, (node, chunks, why)) in failed.iter().enumerate() {
            if abort.is_some() {
                break;
            }
            let substitute = &ok_nodes[i % ok_nodes.len()];
            warn!(%node, %substitute, error = %why, "cooperative share failed; another node takes it over");
            let left = deadline.saturating_duration_since(Instant::now());
            let result = self
                .share_on(substitute, addrs[substitute], name, origin.clone(), chunk_size, chunks.clone(), left)
                .await;
            match result {
                Ok(ShareFetched { hashes, s3_bytes, .. }) if hashes.len() as u64 == chunks.end - chunks.start => {
                    hashes_of.insert((chunks.start, chunks.end), hashes);
                    *s3_of.entry(substitute.clone()).or_default() += s3_bytes;
                    taken_over.insert(node.clone(), format!("its share failed ({why}); {substitute} read it instead"));
                }
                Ok(_) => abort = Some(format!("{node}: {why}; {substitute} too: wrong number of chunk hashes")),
                Err(e) => abort = Some(format!("{node}: {why}; {substitute} too: {e}")),
            }
        }
        let share_seconds = started.elapsed().as_secs_f64();
        let mut hashes = Vec::with_capacity(count as usize);
        for (_, chunks) in &plan {
            if let Some(h) = hashes_of.get(&(chunks.start, chunks.end)) {
                hashes.extend_from_slice(h);
            }
        }
        let manifest = match abort {
            None => Manifest::from_chunk_hashes(origin.size, chunk_size, hashes).map_err(|e| e.to_string()),
            Some(why) => Err(why),
        };
        let manifest = match manifest {
            Ok(m) => m,
            Err(why) => {
                self.drop_shares(name, &targets, &addrs).await;
                return Err(PullError::Cooperative(why));
            }
        };
        let failed_nodes: Vec<NodeId> = failed.iter().map(|(n, _, _)| n.clone()).collect();
        if !failed_nodes.is_empty() {
            // Best effort, in case a share landed after its node was given up.
            self.drop_shares(name, &failed_nodes, &addrs).await;
        }
        info!(name, nodes = ok_nodes.len(), share_seconds, "cooperative fetch: shares read, exchanging");

        let mut completing = tokio::task::JoinSet::new();
        for (node, chunks) in plan.iter().filter(|(n, _)| !taken_over.contains_key(n)).cloned() {
            let (this, name, origin, manifest, addr) =
                (self.clone(), name.to_owned(), origin.clone(), manifest.clone(), addrs[&node]);
            let left = deadline.saturating_duration_since(Instant::now());
            completing.spawn(async move {
                let result = if node == this.puller.node_id() {
                    this.complete_share(&name, manifest, origin, left, Coordinator::Local)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let peers = this.puller.peers();
                    peers.complete_share(&node, addr, &name, manifest, origin, left).await.map_err(|e| e.to_string())
                };
                CooperativeOutcome { node, share: (chunks.start, chunks.end), result }
            });
        }
        let mut outcomes: Vec<CooperativeOutcome> = plan
            .iter()
            .filter_map(|(node, chunks)| {
                let why = taken_over.get(node)?;
                Some(CooperativeOutcome {
                    node: node.clone(),
                    share: (chunks.start, chunks.end),
                    result: Err(why.clone()),
                })
            })
            .collect();
        while let Some(done) = completing.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        outcomes.sort_by(|a, b| a.node.cmp(&b.node));
        // A node that failed the exchange still read its share.
        let s3_bytes = outcomes
            .iter()
            .map(|o| match &o.result {
                Ok(report) => report.s3_bytes,
                Err(_) => s3_of.get(&o.node).copied().unwrap_or(0),
            })
            .sum();
        Ok(CooperativePull {
            name: name.to_owned(),
            origin,
            digest: manifest.root,
            share_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            s3_bytes,
            nodes: outcomes,
        })
    }

    /// Best effort: every target forgets its share of `name`.
    async fn drop_shares(self: &Arc<Self>, name: &str, targets: &[NodeId], addrs: &HashMap<NodeId, SocketAddr>) {
        let mut dropping = tokio::task::JoinSet::new();
        for node in targets {
            let (this, node, name, addr) = (self.clone(), node.clone(), name.to_owned(), addrs[node]);
            dropping.spawn(async move {
                if node == this.puller.node_id() {
                    this.drop_share(&name, &Coordinator::Local);
                } else if let Err(e) = this.puller.peers().drop_share(&node, addr, &name, Duration::from_secs(5)).await
                {
                    warn!(%node, error = %e, "could not drop a cooperative share");
                }
            });
        }
        while dropping.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_chunk_once_and_differ_by_at_most_one() {
        for count in [1u64, 2, 5, 64, 65, 1000] {
            for nodes in 1..=7 {
                let s = shares(count, nodes);
                assert_eq!(s.len(), nodes);
                assert_eq!(s[0].start, 0);
                assert_eq!(s[nodes - 1].end, count);
                assert!(s.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<u64> = s.iter().map(|r| r.end - r.start).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{count} {nodes} {lens:?}");
            }
        }
    }
}
