//! The pull service: pulls an object into the local store from the other holders, once per
//! name however many ask at once (later requesters join the pull under way), in tasks that
//! outlive the requester that started them. It finds the holders and the manifest, makes
//! room, runs the [`transfer`], then seals the object and hashes it once more as a whole
//! against the manifest's root before it is bound; any failure drops the partial object.
//! Finished transfers are reported to the scheduler for its bandwidth estimates.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use store_client::manifest::Manifest;
use store_client::scheduler_client::SchedulerClientError;
use store_client::sys::{self, ReadOnlyMapping};
use store_client::wire::local::ReplicaOutcome;
use store_client::wire::node::{Location, NodeId, PullReport};
use store_client::wire::object::S3Origin;
use store_client::wire::placement::TransferReport;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::error::{ManifestRefused, PullError};
use super::peers::{ManifestAnswer, PeerClient, PeerError};
use super::staged::StagedShare;
use super::transfer::{self, PullContext, Received, Sources, Target};
use crate::metrics::Source;
use crate::store::StoreError;

/// Longest wait for one holder's manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A manifest request with no answer this soon is asked again on a new connection (see
/// [`PeerClient::forget`]); the new one gets the rest of [`MANIFEST_TIMEOUT`].
const MANIFEST_PROBE: Duration = Duration::from_secs(2);

type PullResult = Result<PullReport, PullError>;

/// How a pull starts.
#[derive(Debug)]
// Built once per pull and moved once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum PullStart {
    /// From nothing: the manifest comes from a holder; `relay` as in a peer's `Pull`.
    Peers { relay: bool },
    /// From this node's share of a cooperative S3 fetch (if it has one), with the manifest
    /// assembled from every share.
    Share { share: Option<StagedShare>, manifest: Manifest, origin: S3Origin },
}

/// Pulls under way on this node.
#[derive(Debug)]
pub struct Puller {
    ctx: Arc<PullContext>,
    /// Pulls in progress, so concurrent requests for one object share one transfer.
    pulls: Mutex<HashMap<String, watch::Receiver<Option<PullResult>>>>,
    /// Pull (and prefetch) tasks, so that a draining daemon waits for them to clean up.
    tasks: TaskTracker,
}

impl Puller {
    pub fn new(ctx: PullContext) -> Self {
        Self { ctx: Arc::new(ctx), pulls: Mutex::default(), tasks: TaskTracker::new() }
    }

    pub fn node_id(&self) -> &str {
        &self.ctx.node_id
    }

    pub fn is_draining(&self) -> bool {
        self.ctx.draining.is_cancelled()
    }

    /// Runs `task` as one of the pull tasks a draining daemon waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Starts draining: pulls under way abort (nothing partial is sealed), no new pulls
    /// start.
    pub fn begin_shutdown(&self) {
        self.ctx.draining.cancel();
        self.tasks.close();
    }

    /// Resolves when every pull task has ended.
    pub async fn ended(&self) {
        self.tasks.wait().await;
    }

    /// Pulls `name` into the local store, or joins the pull already under way for it.
    pub async fn pull(self: &Arc<Self>, name: &str, timeout: Duration, relay: bool) -> PullResult {
        self.pull_with(name, timeout, PullStart::Peers { relay }).await
    }

    /// As [`Puller::pull`], from `start`. A pull already under way for `name` is joined
    /// and `start` dropped.
    pub async fn pull_with(self: &Arc<Self>, name: &str, timeout: Duration, start: PullStart) -> PullResult {
        if self.is_draining() {
            return Err(PullError::ShuttingDown);
        }
        let (mut rx, leader) = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            match pulls.get(name) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pulls.insert(name.to_owned(), rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = leader {
            // The transfer runs in its own task so that a requester giving up does not
            // cancel it for the others.
            let this = self.clone();
            let owned = name.to_owned();
            self.tasks.spawn(async move {
                let result = this.pull_now(&owned, timeout, start).await;
                let metrics = this.ctx.node.metrics();
                match &result {
                    Ok(r) => {
                        if !r.already_present {
                            let took = Duration::from_secs_f64(r.seconds);
                            metrics.transfer_completed(Source::Peer, r.bytes.saturating_sub(r.s3_bytes), took);
                        }
                        info!(name = %owned, bytes = r.bytes, seconds = r.seconds, "pull complete");
                    }
                    Err(e) => {
                        metrics.transfer_failed(Source::Peer);
                        warn!(name = %owned, error = %e, "pull failed");
                    }
                }
                this.pulls.lock().unwrap_or_else(|p| p.into_inner()).remove(&owned);
                let _ = tx.send(Some(result));
            });
        }
        let wait = async {
            loop {
                if let Some(result) = rx.borrow_and_update().clone() {
                    return result;
                }
                if rx.changed().await.is_err() {
                    return Err(PullError::ShuttingDown);
                }
            }
        };
        match tokio::time::timeout(timeout + Duration::from_secs(1), wait).await {
            Ok(result) => result,
            Err(_) => Err(PullError::Timeout(name.to_owned())),
        }
    }

    /// Has every node in `targets` (this one too, if listed) pull `name`, all at once, and
    /// collects their reports. `addrs` are the live nodes' addresses.
    pub async fn replicate(
        self: &Arc<Self>,
        name: &str,
        targets: Vec<NodeId>,
        addrs: HashMap<NodeId, SocketAddr>,
        timeout: Duration,
        relay: bool,
    ) -> Vec<ReplicaOutcome> {
        let mut tasks = tokio::task::JoinSet::new();
        for node in targets {
            let this = self.clone();
            let name = name.to_owned();
            let addr = addrs.get(&node).copied();
            tasks.spawn(async move {
                let result = if node == this.ctx.node_id {
                    this.pull(&name, timeout, relay).await.map_err(|e| e.to_string())
                } else {
                    match addr {
                        None => Err(format!("{node} is not a live node of the cluster")),
                        Some(addr) => {
                            this.ctx.peers.pull(&node, addr, &name, timeout, relay).await.map_err(|e| e.to_string())
                        }
                    }
                };
                ReplicaOutcome { node, result }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        outcomes.sort_by(|a, b| a.node.cmp(&b.node));
        outcomes
    }

    /// The manifest of `name` from the first holder in `locations` that answers with one
    /// this node accepts. Holders are asked in order, the next one as soon as the last
    /// failed or has not answered within [`MANIFEST_PROBE`] (the earlier ones are still
    /// listened to), so a holder that never answers (gone, or announced at an address where
    /// nothing listens) costs a pull the probe time, not [`MANIFEST_TIMEOUT`].
    async fn fetch_manifest(
        &self,
        name: &str,
        locations: &[Location],
    ) -> Result<(Manifest, Option<S3Origin>), PullError> {
        let mut last_error = ManifestRefused::NoHolder;
        let mut next = locations.iter();
        let mut asking = FuturesUnordered::new();
        let hedge = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(hedge);
        loop {
            if asking.is_empty() || hedge.is_elapsed() {
                match next.next() {
                    Some(loc) => {
                        asking.push(async move { (loc, self.ask_manifest(name, loc).await) });
                        hedge.as_mut().reset(tokio::time::Instant::now() + MANIFEST_PROBE);
                    }
                    None if asking.is_empty() => {
                        return Err(PullError::NoManifest { name: name.to_owned(), last_error });
                    }
                    None => {}
                }
            }
            let (loc, answer) = tokio::select! {
                Some(answered) = asking.next() => answered,
                () = &mut hedge, if next.len() > 0 => continue,
            };
            match answer {
                Ok(ManifestAnswer { manifest: m, origin, .. }) => {
                    // The chunk list must hash to the root the scheduler knows, and the
                    // manifest must describe the object the holder announced.
                    if let Err(e) = store_client::manifest::check_replication_chunking(m.size, m.chunk_size) {
                        last_error = ManifestRefused::Refused(loc.node.clone(), e);
                        continue;
                    }
                    match Manifest::from_chunk_hashes(m.size, m.chunk_size, m.chunks.clone()) {
                        Ok(check) if check.root == m.root && m.root == loc.root && m.size == loc.size => {
                            let origin = origin.filter(|o| o.size == m.size);
                            return Ok((m, origin));
                        }
                        _ => last_error = ManifestRefused::Inconsistent(loc.node.clone()),
                    }
                }
                Err(e) => last_error = e.into(),
            }
        }
    }

    /// The manifest of `name` from the holder `loc`, within [`MANIFEST_TIMEOUT`]. A request
    /// that fails or has no answer within [`MANIFEST_PROBE`] is asked once more on a new
    /// connection: the one this node had may lead to a process that is gone.
    async fn ask_manifest(&self, name: &str, loc: &Location) -> Result<ManifestAnswer, PeerError> {
        let started = Instant::now();
        let late = || PeerError::Timeout { node: loc.node.clone() };
        let mut fresh = false;
        loop {
            let left = MANIFEST_TIMEOUT.saturating_sub(started.elapsed());
            let conn = match tokio::time::timeout(left, self.ctx.peers.connect(&loc.node, loc.addr)).await {
                Ok(conn) => conn?,
                Err(_) => return Err(late()),
            };
            let left = MANIFEST_TIMEOUT.saturating_sub(started.elapsed());
            let limit = if fresh { left } else { left.min(MANIFEST_PROBE) };
            let failure = match PeerClient::manifest_on(&conn, &loc.node, name, limit).await {
                Ok(answer) => return Ok(answer),
                Err(e) if !e.is_unreachable() => return Err(e),
                Err(e) => e,
            };
            if fresh || started.elapsed() >= MANIFEST_TIMEOUT {
                return Err(failure);
            }
            info!(peer = %loc.node, %failure, "no manifest on the connection to this peer; asking on a new one");
            self.ctx.peers.forget(&loc.node, &conn).await;
            fresh = true;
        }
    }

    async fn pull_now(self: &Arc<Self>, name: &str, timeout: Duration, start: PullStart) -> PullResult {
        let started = Instant::now();
        let deadline = started + timeout;
        let node = &self.ctx.node;
        if node.store().has_sealed(name) {
            return Ok(self.report(name, 0, started, None));
        }
        let (relay, manifest, origin, share, locations) = match start {
            PullStart::Peers { relay } => {
                let locations = self.holders_or_wait(name, deadline).await?;
                let (manifest, origin) = self.fetch_manifest(name, &locations).await?;
                (relay, manifest, origin, None, locations)
            }
            PullStart::Share { share, manifest, origin } => {
                // Peers may not have announced their shares yet: the refresh finds them.
                let locations = self.ctx.locate_others(name).await.unwrap_or_default();
                (true, manifest, Some(origin), share, locations)
            }
        };
        let size = manifest.size;
        let (fd, mapping, held, share_bytes) = match share {
            Some(share) => {
                // The received object takes the room of the whole from here.
                drop(share.room);
                let matches = share.ranges.iter().all(|(range, hashes)| {
                    manifest.chunks.get(range.start as usize..range.end as usize) == Some(hashes.as_slice())
                });
                if !matches || share.mapping.len() as u64 != size {
                    return Err(PullError::ShareMismatch(name.to_owned()));
                }
                node.store().check_room(size)?;
                let held = share.ranges.into_iter().map(|(range, _)| range).collect();
                (share.fd, share.mapping, held, share.s3_bytes)
            }
            None => {
                node.store().check_room(size)?;
                let fd = sys::create_memfd(size)?;
                let mapping = ReadOnlyMapping::new_exclusive(fd.as_fd(), size)?;
                (fd, mapping, Vec::new(), 0)
            }
        };
        let file = Arc::new(File::from(fd.try_clone()?));
        let begun = node.store().begin_receive(name, manifest.clone(), fd, mapping);
        let id = match begun {
            Ok((id, _evicted)) => id,
            Err(StoreError::AlreadyExists(_)) => return Ok(self.report(name, 0, started, None)),
            Err(e) => return Err(e.into()),
        };
        for index in held.iter().flat_map(Range::clone) {
            node.store().chunk_received(id, index);
        }
        let Some(view) = node.store().peer_view(name) else {
            return Err(PullError::Vanished(name.to_owned()));
        };
        let claimed: Arc<[AtomicBool]> = (0..manifest.chunk_count()).map(|_| AtomicBool::new(false)).collect();
        for index in held.iter().flat_map(Range::clone) {
            if let Some(claim) = claimed.get(index as usize) {
                claim.store(true, Ordering::Release);
            }
        }
        let target =
            Target { name: name.to_owned(), file, mapping: view.mapping, manifest: Arc::new(manifest), claimed };
        node.holdings_changed();

        // For the scheduler's bandwidth estimate: when the transfer began, and what the node
        // had received by then (pulls running beside this one count too).
        let transfer_started = (Instant::now(), self.ctx.bytes_received.load(Ordering::Relaxed));
        let sources = Sources { locations, relay, held, origin: origin.clone() };
        let outcome = transfer::transfer(&self.ctx, id, &target, sources, deadline).await;
        if let Ok(received) = &outcome {
            self.report_transfer(name, transfer_started, &received.from);
        }
        let result = match outcome {
            Ok(mut received) => {
                received.s3_bytes += share_bytes;
                self.seal_received(id, &target).await.map(|()| {
                    if let Some(origin) = origin {
                        node.store().set_origin(id, origin);
                    }
                    self.report(name, size, started, Some(received))
                })
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            node.store().abort_receive(id);
        }
        node.holdings_changed();
        result
    }

    /// The other holders of `name`, waiting (until `deadline`) for one to appear.
    async fn holders_or_wait(&self, name: &str, deadline: Instant) -> Result<Vec<Location>, PullError> {
        let mut locations = self.ctx.locate_others(name).await?;
        if locations.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PullError::NotFound(name.to_owned()));
            }
            let waited = tokio::select! {
                waited = self.ctx.scheduler.wait(name, left) => waited,
                _ = self.ctx.draining.cancelled() => return Err(PullError::ShuttingDown),
            };
            match waited {
                Ok(_) => locations = self.ctx.locate_others(name).await?,
                Err(SchedulerClientError::NotAvailable(_)) => return Err(PullError::NotFound(name.to_owned())),
                Err(e) => return Err(e.into()),
            }
        }
        locations.sort_by_key(|l| !l.is_complete());
        Ok(locations)
    }

    async fn seal_received(&self, id: u64, target: &Target) -> Result<(), PullError> {
        let node = &self.ctx.node;
        let name = &target.name;
        let segment = node.store().receiving_segment(id).ok_or_else(|| PullError::Vanished(name.clone()))?;
        sys::seal_immutable(segment.as_fd()).map_err(|e| PullError::Seal(Arc::new(e)))?;
        // Sealed: these bytes can no longer change. Hash them whole once before binding.
        let (mapping, manifest) = (target.mapping.clone(), target.manifest.clone());
        let threads = node.hash_threads();
        let matches = tokio::task::spawn_blocking(move || sealed_bytes_match(&mapping[..], &manifest, threads)).await?;
        if !matches {
            node.metrics().chunk_verify_failed();
            return Err(PullError::NotVerified(name.clone()));
        }
        node.store().finish_receive(id)?;
        node.notify_sealed();
        Ok(())
    }

    /// The report of a pull; `received` is `None` when the object was already there.
    fn report(&self, name: &str, bytes: u64, started: Instant, received: Option<Received>) -> PullReport {
        let already_present = received.is_none();
        let received = received.unwrap_or_default();
        PullReport {
            node: self.ctx.node_id.clone(),
            name: name.to_owned(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            from: received.from,
            already_present,
            corrupt_chunks: received.corrupt,
            retries: received.retries,
            s3_bytes: received.s3_bytes,
        }
    }

    /// Reports a finished pull to the scheduler, in the background: `started` is when the
    /// chunk transfer began and what the node had received from peers by then.
    fn report_transfer(&self, name: &str, started: (Instant, u64), from: &BTreeMap<NodeId, u64>) {
        let bytes: u64 = from.values().sum();
        if bytes == 0 {
            return;
        }
        let seconds = started.0.elapsed().as_secs_f64();
        let node_bytes = self.ctx.bytes_received.load(Ordering::Relaxed).saturating_sub(started.1);
        let report = TransferReport { name: name.to_owned(), bytes, seconds, from: from.clone(), node_bytes };
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = ctx.scheduler.report_transfer(&ctx.node_id, report).await {
                debug!(error = %e, "cannot report a transfer to the scheduler");
            }
        });
    }

    pub fn peers(&self) -> &Arc<PeerClient> {
        &self.ctx.peers
    }
}

/// Whether the sealed bytes hash to the manifest's root: the last check before an object
/// received from peers is bound under its name.
fn sealed_bytes_match(bytes: &[u8], manifest: &Manifest, threads: usize) -> bool {
    Manifest::compute(bytes, manifest.chunk_size, threads).is_ok_and(|m| m.root == manifest.root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_object_is_checked_whole_against_its_root() {
        let data: Vec<u8> = (0..(3 << 16) + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let manifest = Manifest::compute(&data, 1 << 16, 2).expect("manifest");
        assert!(sealed_bytes_match(&data, &manifest, 2));
        let mut late_write = data.clone();
        late_write[(1 << 16) + 5] ^= 1;
        assert!(!sealed_bytes_match(&late_write, &manifest, 2), "one flipped byte in a verified chunk");
        assert!(!sealed_bytes_match(&data[..data.len() - 1], &manifest, 2), "a short object");
    }
}
