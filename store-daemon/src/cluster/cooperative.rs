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
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use store_client::manifest::{self, Digest, Manifest};
use store_client::sys::ReadOnlyMapping;
use store_client::wire::local::{CooperativeOutcome, CooperativePull};
use store_client::wire::node::{NodeId, PullReport};
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PeerRequest, PeerResponse};
use tracing::{info, warn};

use super::pull::PullStart;
use super::{Cluster, PullError};
use crate::server::Shared;
use crate::store::StoreError;

/// A share not claimed by its second phase within this time is dropped (its coordinator
/// died between the phases).
const STAGED_TTL: Duration = Duration::from_secs(600);

/// Who asked for a share: this daemon (it coordinates the fetch) or a peer, named by the
/// certificate it authenticated with. Only the coordinator that staged a share may complete
/// or drop it: another certificate holder cannot bind or discard someone else's fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coordinator {
    Local,
    /// The peer's end-entity certificate (DER).
    Peer(Arc<[u8]>),
}

/// A node's share of a cooperative fetch, between the phases: usually one range of chunks,
/// more when it took over the share of a node that failed.
#[derive(Debug)]
pub struct StagedShare {
    pub fd: OwnedFd,
    pub mapping: ReadOnlyMapping,
    /// The chunk ranges fetched and their hashes.
    pub ranges: Vec<(Range<u64>, Vec<Digest>)>,
    pub s3_bytes: u64,
    origin: S3Origin,
    chunk_size: u64,
    generation: u64,
    coordinator: Coordinator,
    /// The store room the share's bytes take until it is dropped or received into.
    pub room: StagedRoom,
}

/// Store room taken for the bytes of a staged share, so staged memory counts against the
/// daemon's capacity like every object does; given back when dropped.
#[derive(Debug)]
pub struct StagedRoom {
    shared: Weak<Shared>,
    size: u64,
}

impl StagedRoom {
    /// Takes `size` bytes of room (evicting what may be evicted), or refuses like a put would.
    fn take(shared: &Arc<Shared>, size: u64) -> Result<Self, StoreError> {
        for name in shared.store().reserve_room(size)? {
            tracing::debug!(%name, "evicted to make room for a cooperative share");
        }
        Ok(Self { shared: Arc::downgrade(shared), size })
    }

    fn absorb(&mut self, mut other: StagedRoom) {
        self.size += std::mem::take(&mut other.size);
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for StagedRoom {
    fn drop(&mut self) {
        if self.size > 0
            && let Some(shared) = self.shared.upgrade()
        {
            shared.store().return_room(self.size);
        }
    }
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

impl Cluster {
    /// First phase on this node: reads chunks `chunks` of the S3 object into a staged share
    /// for `name`; returns their hashes, the bytes read and the seconds it took.
    pub async fn fetch_share(
        self: &Arc<Self>,
        name: &str,
        origin: S3Origin,
        chunk_size: u64,
        chunks: Range<u64>,
        coordinator: Coordinator,
    ) -> Result<(Vec<Digest>, u64, f64), PullError> {
        let started = Instant::now();
        manifest::check_replication_chunking(origin.size, chunk_size)
            .map_err(|e| PullError::BadRequest(e.to_string()))?;
        let shared = self.shared()?;
        if shared.store().is_bound(name) {
            return Err(PullError::Store(StoreError::AlreadyExists(name.to_owned()).to_string()));
        }
        // A second share for the same object (taken over from a node that failed) goes into
        // the same memory; the entry is out of the map meanwhile.
        let earlier = {
            let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            match staged.get(name) {
                None => None,
                Some(s)
                    if s.origin == origin
                        && s.coordinator == coordinator
                        && s.chunk_size == chunk_size
                        && s.ranges.iter().all(|(r, _)| r.end <= chunks.start || chunks.end <= r.start) =>
                {
                    staged.remove(name)
                }
                Some(_) => {
                    return Err(PullError::Store(format!("a different share of {name:?} is already staged here")));
                }
            }
        };
        let mut room = StagedRoom::take(&shared, share_bytes(origin.size, chunk_size, &chunks))
            .map_err(|e| PullError::Store(e.to_string()))?;
        let (into, mut ranges, earlier_bytes) = match earlier {
            Some(s) => {
                room.absorb(s.room);
                (Some((s.fd, s.mapping)), s.ranges, s.s3_bytes)
            }
            None => (None, Vec::new(), 0),
        };
        // The whole object must fit once received, the share's room counted in.
        let reserved = room.size();
        let fits = |size: u64| shared.store().check_room(size.saturating_sub(reserved));
        let filled = shared
            .s3()
            .fetch_share(&origin, chunk_size, chunks.clone(), into, fits)
            .await
            .map_err(|e| PullError::S3 { code: e.code(), message: e.to_string() })?
            .map_err(|e| PullError::Store(e.to_string()))?;
        // (S3 bytes are counted in the metrics as each part lands.)
        let s3_bytes = filled.stats.bytes;
        let hashes = filled.hashes.clone();
        ranges.push((chunks.clone(), filled.hashes));
        let generation = self.staged_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let share = StagedShare {
            fd: filled.fd,
            mapping: filled.mapping,
            ranges,
            s3_bytes: earlier_bytes + s3_bytes,
            origin,
            chunk_size,
            generation,
            coordinator,
            room,
        };
        {
            let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            if staged.contains_key(name) {
                return Err(PullError::Store(format!("a share of {name:?} is already being fetched here")));
            }
            staged.insert(name.to_owned(), share);
        }
        let cluster = Arc::downgrade(self);
        let owned = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(STAGED_TTL).await;
            if let Some(cluster) = cluster.upgrade() {
                let mut staged = cluster.staged.lock().unwrap_or_else(|p| p.into_inner());
                if staged.get(&owned).is_some_and(|s| s.generation == generation) {
                    warn!(name = %owned, "dropping a cooperative share never completed");
                    staged.remove(&owned);
                }
            }
        });
        Ok((hashes, s3_bytes, started.elapsed().as_secs_f64()))
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
        let share = {
            let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
            match staged.get(name) {
                Some(s) if s.coordinator != coordinator => {
                    return Err(PullError::BadRequest(format!(
                        "the share of {name:?} staged here belongs to another coordinator"
                    )));
                }
                Some(_) => staged.remove(name),
                None => None,
            }
        };
        let share = share.filter(|s| s.origin == origin);
        self.pull_with(name, timeout, PullStart::Share { share, manifest, origin }).await
    }

    /// Forgets the staged share of `name`, if `coordinator` staged it.
    pub fn drop_share(&self, name: &str, coordinator: &Coordinator) {
        let mut staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if staged.get(name).is_some_and(|s| s.coordinator == *coordinator) {
            staged.remove(name);
        }
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
        let shared = self.shared()?;
        let origin =
            shared.s3().head(url).await.map_err(|e| PullError::S3 { code: e.code(), message: e.to_string() })?;
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
        let chunk_size = shared.config.chunk_size;
        let count = manifest::chunk_count(origin.size, chunk_size);
        let plan: Vec<(NodeId, Range<u64>)> = targets.iter().cloned().zip(shares(count, targets.len())).collect();

        let mut fetching = tokio::task::JoinSet::new();
        for (node, chunks) in plan.clone() {
            let (cluster, name, origin, addr) = (self.clone(), name.to_owned(), origin.clone(), addrs[&node]);
            let left = deadline.saturating_duration_since(Instant::now());
            fetching.spawn(async move {
                let result = if node == cluster.config.node_id {
                    cluster
                        .fetch_share(&name, origin, chunk_size, chunks.clone(), Coordinator::Local)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let req =
                        PeerRequest::FetchShare { name, origin, chunk_size, first: chunks.start, end: chunks.end };
                    match cluster.ask_peer(&node, addr, &req, left).await {
                        Ok(PeerResponse::ShareFetched { hashes, s3_bytes, seconds }) => Ok((hashes, s3_bytes, seconds)),
                        Ok(PeerResponse::Error { message }) => Err(message),
                        Ok(other) => Err(format!("unexpected answer {other:?}")),
                        Err(e) => Err(e),
                    }
                };
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
                Ok((node, chunks, Ok((hashes, s3_bytes, _)))) if hashes.len() as u64 == chunks.end - chunks.start => {
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
            let result = if *substitute == self.config.node_id {
                self.fetch_share(name, origin.clone(), chunk_size, chunks.clone(), Coordinator::Local)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                let req = PeerRequest::FetchShare {
                    name: name.to_owned(),
                    origin: origin.clone(),
                    chunk_size,
                    first: chunks.start,
                    end: chunks.end,
                };
                match self.ask_peer(substitute, addrs[substitute], &req, left).await {
                    Ok(PeerResponse::ShareFetched { hashes, s3_bytes, seconds }) => Ok((hashes, s3_bytes, seconds)),
                    Ok(PeerResponse::Error { message }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok((hashes, s3_bytes, _)) if hashes.len() as u64 == chunks.end - chunks.start => {
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
            let (cluster, name, origin, manifest, addr) =
                (self.clone(), name.to_owned(), origin.clone(), manifest.clone(), addrs[&node]);
            let left = deadline.saturating_duration_since(Instant::now());
            completing.spawn(async move {
                let result = if node == cluster.config.node_id {
                    cluster
                        .complete_share(&name, manifest, origin, left, Coordinator::Local)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    let timeout_ms = left.as_millis() as u64;
                    let req = PeerRequest::CompleteShare { name, manifest, origin, timeout_ms };
                    match cluster.ask_peer(&node, addr, &req, left).await {
                        Ok(PeerResponse::Pulled(report)) => Ok(report),
                        Ok(PeerResponse::Error { message }) => Err(message),
                        Ok(other) => Err(format!("unexpected answer {other:?}")),
                        Err(e) => Err(e),
                    }
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
            let (cluster, node, name, addr) = (self.clone(), node.clone(), name.to_owned(), addrs[node]);
            dropping.spawn(async move {
                if node == cluster.config.node_id {
                    cluster.drop_share(&name, &Coordinator::Local);
                } else if let Err(e) =
                    cluster.ask_peer(&node, addr, &PeerRequest::DropShare { name }, Duration::from_secs(5)).await
                {
                    warn!(%node, error = %e, "could not drop a cooperative share");
                }
            });
        }
        while dropping.join_next().await.is_some() {}
    }

    /// Sends one request to a peer and returns its answer, within `timeout`.
    pub(super) async fn ask_peer(
        &self,
        node: &str,
        addr: SocketAddr,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, String> {
        let ask = async {
            let conn = self.connect(node, addr).await?;
            store_client::rpc::call::<_, PeerResponse>(&conn, req).await.map(|(r, _)| r).map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout + Duration::from_secs(5), ask).await.unwrap_or_else(|_| Err("timed out".into()))
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
