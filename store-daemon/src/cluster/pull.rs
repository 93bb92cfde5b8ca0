//! Pulling an object from peers: the tokio driver of [`PullCore`]. It only moves bytes and
//! reports what happened: which chunk to ask whom, when to ask the scheduler or the S3
//! origin, whom to give up on and when the pull has stalled are the core's decisions.
//!
//! Received bytes are collected per chunk and verified against the manifest before they
//! touch the destination memfd; the first verified copy of a chunk claims it and is written
//! (`pwrite`), any later copy (a fetch superseded by a timeout, a second holder) is dropped,
//! so no unverified byte ever lands where a verified chunk or a consumer could see it. A
//! received chunk counts, and is served on to other receivers, only once written. The
//! complete object is sealed and then hashed once more as a whole against the manifest's
//! root before it is bound; any failure drops the partial object.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use store_client::chunkset::ChunkSet;
use store_client::manifest::Manifest;
use store_client::rpc;
use store_client::sys::{self, ReadOnlyMapping};
use store_client::wire::node::{Location, NodeId, PullReport};
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PeerRequest, PeerResponse};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::cooperative::StagedShare;
use super::serve::HAVE_WAIT;
use super::{Cluster, PullError, PullResult};
use crate::metrics::{Direction, Source};
use crate::replication::pull_core::{Action, CoreConfig, FetchResult, Finished, PullCore};
use crate::server::Shared;
use crate::store::StoreError;

/// A watch unanswered this long past the peer's promised wait ([`HAVE_WAIT`]) counts the peer
/// as gone.
const WATCH_MARGIN: Duration = Duration::from_secs(1);
/// Longest wait for one holder's manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A manifest request with no answer this soon is asked again on a new connection (see
/// [`Cluster::forget_connection`]); the new one gets the rest of [`MANIFEST_TIMEOUT`].
const MANIFEST_PROBE: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum FetchError {
    Corrupt(String),
    NotHeld,
    /// Every upload slot of the peer was taken; it reported this many uploads.
    Busy(u32),
    /// The stream or connection failed; `lost` if the peer looks gone.
    Transport {
        lost: bool,
        message: String,
    },
}

/// What a chunk fetch needs, shareable with its task.
#[derive(Clone)]
struct Target {
    name: String,
    file: Arc<File>,
    mapping: Arc<ReadOnlyMapping>,
    manifest: Arc<Manifest>,
    /// Per chunk: a verified copy has claimed the right to write it.
    claimed: Arc<[AtomicBool]>,
}

impl Target {
    /// Writes `bytes`, already verified as chunk `index`, unless another verified copy
    /// claimed the chunk first; returns whether this copy was written.
    fn write_verified(&self, index: u64, bytes: &[u8]) -> std::io::Result<bool> {
        let Some(claim) = self.claimed.get(index as usize) else { return Ok(false) };
        if claim.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let start = self.manifest.chunk_range(index).start;
        if let Err(e) = self.file.write_all_at(bytes, start) {
            // Let another copy try.
            claim.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }
}

/// Whether the sealed bytes hash to the manifest's root: the last check before an object
/// received from peers is bound under its name.
fn sealed_bytes_match(bytes: &[u8], manifest: &Manifest, threads: usize) -> bool {
    Manifest::compute(bytes, manifest.chunk_size, threads).is_ok_and(|m| m.root == manifest.root)
}

impl Cluster {
    /// Pulls `name` into the local store, or joins the pull already under way for it.
    pub async fn pull(self: &Arc<Self>, name: &str, timeout: Duration, relay: bool) -> PullResult {
        self.pull_with(name, timeout, PullStart::Peers { relay }).await
    }

    /// As [`Cluster::pull`], from `start`. A pull already under way for `name` is joined
    /// and `start` dropped.
    pub(super) async fn pull_with(self: &Arc<Self>, name: &str, timeout: Duration, start: PullStart) -> PullResult {
        if self.draining.is_cancelled() {
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
            let cluster = self.clone();
            let owned = name.to_owned();
            self.pull_tasks.spawn(async move {
                let result = cluster.pull_now(&owned, timeout, start).await;
                match &result {
                    Ok(r) => {
                        if !r.already_present {
                            let took = Duration::from_secs_f64(r.seconds);
                            cluster.metrics.transfer_completed(Source::Peer, r.bytes.saturating_sub(r.s3_bytes), took);
                        }
                        cluster.stats.pulls_completed.fetch_add(1, Ordering::Relaxed);
                        info!(name = %owned, bytes = r.bytes, seconds = r.seconds, "pull complete");
                    }
                    Err(e) => {
                        cluster.metrics.transfer_failed(Source::Peer);
                        cluster.stats.pulls_failed.fetch_add(1, Ordering::Relaxed);
                        warn!(name = %owned, error = %e, "pull failed");
                    }
                }
                cluster.pulls.lock().unwrap_or_else(|p| p.into_inner()).remove(&owned);
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

    async fn locate_others(&self, name: &str) -> Result<Vec<Location>, PullError> {
        let mut locations = self.scheduler.locate(name).await?;
        locations.retain(|l| l.node != self.config.node_id);
        Ok(locations)
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
        let mut last_error = String::from("no holder");
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
                Ok((m, origin)) => {
                    // The chunk list must hash to the root the scheduler knows, and the
                    // manifest must describe the object the holder announced.
                    if let Err(e) = store_client::manifest::check_replication_chunking(m.size, m.chunk_size) {
                        last_error = format!("{} sent a manifest this node refuses: {e}", loc.node);
                        continue;
                    }
                    match Manifest::from_chunk_hashes(m.size, m.chunk_size, m.chunks.clone()) {
                        Ok(check) if check.root == m.root && m.root == loc.root && m.size == loc.size => {
                            let origin = origin.filter(|o| o.size == m.size);
                            return Ok((m, origin));
                        }
                        _ => last_error = format!("{} sent an inconsistent manifest", loc.node),
                    }
                }
                Err(e) => last_error = e,
            }
        }
    }

    /// The manifest of `name` from the holder `loc`, within [`MANIFEST_TIMEOUT`]. A request
    /// that fails or has no answer within [`MANIFEST_PROBE`] is asked once more on a new
    /// connection: the one this node had may lead to a process that is gone.
    async fn ask_manifest(&self, name: &str, loc: &Location) -> ManifestAnswer {
        let started = Instant::now();
        let request = PeerRequest::Manifest { name: name.to_owned() };
        let late = || format!("{} did not answer in time", loc.node);
        let mut fresh = false;
        loop {
            let left = MANIFEST_TIMEOUT.saturating_sub(started.elapsed());
            let conn = match tokio::time::timeout(left, self.connect(&loc.node, loc.addr)).await {
                Ok(conn) => conn?,
                Err(_) => return Err(late()),
            };
            let left = MANIFEST_TIMEOUT.saturating_sub(started.elapsed());
            let limit = if fresh { left } else { left.min(MANIFEST_PROBE) };
            let failure = match tokio::time::timeout(limit, rpc::call::<_, PeerResponse>(&conn, &request)).await {
                Ok(Ok((PeerResponse::Manifest { manifest, origin, .. }, _))) => return Ok((manifest, origin)),
                Ok(Ok((other, _))) => return Err(format!("{} answered {other:?}", loc.node)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => late(),
            };
            if fresh || started.elapsed() >= MANIFEST_TIMEOUT {
                return Err(failure);
            }
            info!(peer = %loc.node, %failure, "no manifest on the connection to this peer; asking on a new one");
            self.forget_connection(&loc.node, &conn).await;
            fresh = true;
        }
    }

    /// Closes `conn` and forgets it as the connection to `node` (unless another replaced it
    /// already), so that the next request to `node` opens a new one. A holder that restarted
    /// at the same address never answers on its predecessor's connections: they are not
    /// closed (the new process's stateless resets carry another key, and are ignored), so
    /// without this every request on them would wait for the idle timeout (10 s).
    async fn forget_connection(&self, node: &str, conn: &quinn::Connection) {
        {
            let mut peers = self.peers.lock().await;
            if peers.get(node).is_some_and(|c| c.stable_id() == conn.stable_id()) {
                peers.remove(node);
            }
        }
        conn.close(quinn::VarInt::from_u32(0), b"unresponsive");
    }

    async fn pull_now(self: &Arc<Self>, name: &str, timeout: Duration, start: PullStart) -> PullResult {
        let started = Instant::now();
        let deadline = started + timeout;
        let shared = self.shared()?;
        if shared.store().has_sealed(name) {
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
                let locations = self.locate_others(name).await.unwrap_or_default();
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
                    return Err(PullError::Store(format!("the manifest of {name:?} does not match this node's share")));
                }
                shared.store().check_room(size).map_err(|e| PullError::Store(e.to_string()))?;
                let held = share.ranges.into_iter().map(|(range, _)| range).collect();
                (share.fd, share.mapping, held, share.s3_bytes)
            }
            None => {
                shared.store().check_room(size).map_err(|e| PullError::Store(e.to_string()))?;
                let fd = sys::create_memfd(size).map_err(|e| PullError::Io(e.to_string()))?;
                let mapping =
                    ReadOnlyMapping::new_exclusive(fd.as_fd(), size).map_err(|e| PullError::Io(e.to_string()))?;
                (fd, mapping, Vec::new(), 0)
            }
        };
        let file = Arc::new(File::from(fd.try_clone().map_err(|e| PullError::Io(e.to_string()))?));
        let begun = shared.store().begin_receive(name, manifest.clone(), fd, mapping);
        let id = match begun {
            Ok((id, _evicted)) => id,
            Err(StoreError::AlreadyExists(_)) => return Ok(self.report(name, 0, started, None)),
            Err(e) => return Err(PullError::Store(e.to_string())),
        };
        for index in held.iter().flat_map(Range::clone) {
            shared.store().chunk_received(id, index);
        }
        let Some(view) = shared.store().peer_view(name) else {
            return Err(PullError::Store("object vanished while starting to receive it".into()));
        };
        let claimed: Arc<[AtomicBool]> = (0..manifest.chunk_count()).map(|_| AtomicBool::new(false)).collect();
        for index in held.iter().flat_map(Range::clone) {
            if let Some(claim) = claimed.get(index as usize) {
                claim.store(true, Ordering::Release);
            }
        }
        let target =
            Target { name: name.to_owned(), file, mapping: view.mapping, manifest: Arc::new(manifest), claimed };
        self.sync_soon();

        // For the scheduler's bandwidth estimate: when the transfer began, and what the node
        // had received by then (pulls running beside this one count too).
        let transfer_started = (Instant::now(), self.stats.bytes_received.load(Ordering::Relaxed));
        let sources = Sources { locations, relay, held, origin: origin.clone() };
        let outcome = self.drive(&shared, id, &target, sources, deadline).await;
        if let Ok(received) = &outcome {
            self.report_transfer(name, transfer_started, &received.from);
        }
        let result = match outcome {
            Ok(mut received) => {
                received.s3_bytes += share_bytes;
                self.seal_received(&shared, id, &target).await.map(|()| {
                    if let Some(origin) = origin {
                        shared.s3().record(id, origin);
                    }
                    self.report(name, size, started, Some(received))
                })
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            shared.store().abort_receive(id);
        }
        self.sync_soon();
        result
    }

    /// The other holders of `name`, waiting (until `deadline`) for one to appear.
    async fn holders_or_wait(&self, name: &str, deadline: Instant) -> Result<Vec<Location>, PullError> {
        let mut locations = self.locate_others(name).await?;
        if locations.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PullError::NotFound(name.to_owned()));
            }
            let waited = tokio::select! {
                waited = self.scheduler.wait(name, left) => waited,
                _ = self.draining.cancelled() => return Err(PullError::ShuttingDown),
            };
            match waited {
                Ok(_) => locations = self.locate_others(name).await?,
                Err(store_client::scheduler_client::SchedulerClientError::NotAvailable(_)) => {
                    return Err(PullError::NotFound(name.to_owned()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        locations.sort_by_key(|l| !l.is_complete());
        Ok(locations)
    }

    async fn seal_received(&self, shared: &Shared, id: u64, target: &Target) -> Result<(), PullError> {
        let name = &target.name;
        let segment =
            shared.store().receiving_segment(id).ok_or_else(|| PullError::Store(format!("{name:?} was dropped")))?;
        sys::seal_immutable(segment.as_fd()).map_err(|e| PullError::Io(e.to_string()))?;
        // Sealed: these bytes can no longer change. Hash them whole once before binding.
        let (mapping, manifest) = (target.mapping.clone(), target.manifest.clone());
        let threads = shared.config.hash_threads;
        let matches = tokio::task::spawn_blocking(move || sealed_bytes_match(&mapping[..], &manifest, threads))
            .await
            .map_err(|e| PullError::Io(format!("verification task failed: {e}")))?;
        if !matches {
            self.metrics.chunk_verify_failed();
            return Err(PullError::Io(format!("the received bytes of {name:?} do not hash to its root; not sealed")));
        }
        shared.store().finish_receive(id).map_err(|e| PullError::Store(e.to_string()))?;
        shared.notify_sealed();
        Ok(())
    }

    /// The report of a pull; `received` is `None` when the object was already there.
    fn report(&self, name: &str, bytes: u64, started: Instant, received: Option<Received>) -> PullReport {
        let already_present = received.is_none();
        let received = received.unwrap_or_default();
        PullReport {
            node: self.config.node_id.clone(),
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

    /// Carries out what the pull's [`PullCore`] decides, and tells it what happened: the
    /// only policy here is none.
    async fn drive(
        self: &Arc<Self>,
        shared: &Shared,
        id: u64,
        target: &Target,
        sources: Sources,
        deadline: Instant,
    ) -> Result<Received, PullError> {
        let Sources { locations, relay, held, origin } = sources;
        let manifest = &target.manifest;
        let now = Instant::now();
        let mut core = PullCore::new(
            &self.config.node_id,
            manifest.size,
            manifest.chunk_size,
            relay,
            held.iter().flat_map(Range::clone),
            origin.is_some(),
            CoreConfig::default(),
            now,
        );
        core.located(now, &locations);
        let (tx, mut rx) = mpsc::unbounded_channel::<Happened>();
        let mut tasks = JoinSet::new();
        loop {
            for action in core.poll(Instant::now()) {
                self.perform(action, target, origin.as_ref(), &tx, &mut tasks);
            }
            match core.finished() {
                Some(Finished::Complete) => break,
                Some(Finished::Stalled { missing }) => {
                    tasks.abort_all();
                    return Err(PullError::Stalled { name: target.name.clone(), missing: *missing });
                }
                None => {}
            }
            while tasks.try_join_next().is_some() {}
            let wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                Some(happened) = rx.recv() => {
                    self.tell(&mut core, shared, id, happened);
                    // Whatever else is ready goes in before the next poll.
                    while let Ok(happened) = rx.try_recv() {
                        self.tell(&mut core, shared, id, happened);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    tasks.abort_all();
                    return Err(PullError::Timeout(target.name.clone()));
                }
                _ = self.draining.cancelled() => {
                    tasks.abort_all();
                    return Err(PullError::ShuttingDown);
                }
            }
        }
        tasks.abort_all();
        let stats = core.stats();
        let from = core.bytes_by_peer().map(|(p, b)| (p.to_owned(), b)).collect();
        Ok(Received { from, corrupt: stats.corrupt_chunks, retries: stats.retries, s3_bytes: stats.s3_bytes })
    }

    /// Starts the I/O of one action; its outcome comes back on `tx`.
    fn perform(
        self: &Arc<Self>,
        action: Action,
        target: &Target,
        origin: Option<&S3Origin>,
        tx: &mpsc::UnboundedSender<Happened>,
        tasks: &mut JoinSet<()>,
    ) {
        let (cluster, target, tx) = (self.clone(), target.clone(), tx.clone());
        match action {
            Action::Fetch(fetch) => {
                tasks.spawn(async move {
                    let _in_flight = cluster.metrics.chunk_in_flight(Direction::In);
                    let result = match cluster.connect(&fetch.peer, fetch.addr).await {
                        Ok(conn) => {
                            let result = fetch_chunk(&conn, &target, fetch.index, fetch.stall).await;
                            if matches!(result, Err(FetchError::Transport { lost: true, .. })) {
                                // The peer is quarantined; when it is asked again, it is on a
                                // new connection (it may have restarted).
                                cluster.forget_connection(&fetch.peer, &conn).await;
                            }
                            result
                        }
                        Err(message) => Err(FetchError::Transport { lost: true, message }),
                    };
                    let _ = tx.send(Happened::Fetched { peer: fetch.peer, index: fetch.index, result });
                });
            }
            Action::ReadOrigin { index } => {
                let Some(source) = origin.cloned() else {
                    let _ = tx.send(Happened::FromOrigin { index, result: Err("no origin".into()) });
                    return;
                };
                tasks.spawn(async move {
                    let result = match cluster.shared() {
                        Ok(shared) => fetch_from_origin(&shared, &target, &source, index).await,
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = tx.send(Happened::FromOrigin { index, result });
                });
            }
            Action::Locate => {
                tasks.spawn(async move {
                    let result = cluster.locate_others(&target.name).await;
                    let _ = tx.send(Happened::Located(result));
                });
            }
            Action::Watch { peer, addr, known } => {
                tasks.spawn(async move {
                    let request = PeerRequest::Have { name: target.name.clone(), known };
                    let answer = match cluster.connect(&peer, addr).await {
                        Ok(conn) => {
                            let call = rpc::call::<_, PeerResponse>(&conn, &request);
                            match tokio::time::timeout(HAVE_WAIT + WATCH_MARGIN, call).await {
                                Ok(Ok((PeerResponse::Have { held, uploads }, _))) => Ok((held, uploads)),
                                Ok(Ok(_)) => Err(false),
                                // No answer within the peer's promised wait: it is gone, or
                                // too far behind to serve anyone.
                                Ok(Err(_)) | Err(_) => {
                                    cluster.forget_connection(&peer, &conn).await;
                                    Err(true)
                                }
                            }
                        }
                        Err(_) => Err(true),
                    };
                    let _ = tx.send(Happened::Reported { peer, answer });
                });
            }
        }
    }

    /// Hands what happened to the core, and counts it.
    fn tell(&self, core: &mut PullCore, shared: &Shared, id: u64, happened: Happened) {
        let now = Instant::now();
        match happened {
            Happened::Fetched { peer, index, result } => {
                let result = match result {
                    Ok((bytes, uploads)) => {
                        shared.store().chunk_received(id, index);
                        self.chunk_landed();
                        self.stats.chunks_received.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_received.fetch_add(bytes, Ordering::Relaxed);
                        self.metrics.transfer_bytes(Source::Peer, Direction::In, bytes);
                        FetchResult::Arrived { bytes, uploads }
                    }
                    Err(FetchError::Corrupt(why)) => {
                        warn!(%peer, index, %why, "corrupt chunk rejected");
                        self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        self.metrics.chunk_verify_failed();
                        self.metrics.chunk_retried();
                        FetchResult::Corrupt
                    }
                    Err(FetchError::NotHeld) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        self.metrics.chunk_retried();
                        FetchResult::NotHeld
                    }
                    Err(FetchError::Busy(uploads)) => FetchResult::Busy { uploads },
                    Err(FetchError::Transport { lost, message }) => {
                        debug!(%peer, index, %message, lost, "chunk fetch failed");
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        self.metrics.chunk_retried();
                        FetchResult::Transport { lost }
                    }
                };
                core.fetch_done(now, &peer, index, result);
            }
            Happened::FromOrigin { index, result } => match result {
                Ok(bytes) => {
                    shared.store().chunk_received(id, index);
                    self.chunk_landed();
                    // (The metrics counted the bytes as they landed.)
                    core.origin_done(index, Some(bytes));
                }
                Err(why) => {
                    warn!(index, %why, "reading a chunk from the S3 origin failed");
                    self.metrics.chunk_retried();
                    core.origin_done(index, None);
                }
            },
            Happened::Located(Ok(locations)) => core.located(now, &locations),
            Happened::Located(Err(e)) => {
                debug!(error = %e, "refreshing holders failed; keeping the ones known");
                core.locate_failed();
            }
            Happened::Reported { peer, answer: Ok((held, uploads)) } => core.peer_reported(now, &peer, held, uploads),
            Happened::Reported { peer, answer: Err(lost) } => core.watch_failed(now, &peer, lost),
        }
    }
}

/// What a task of [`Cluster::drive`] reports back.
enum Happened {
    Fetched {
        peer: NodeId,
        index: u64,
        result: Result<(u64, u32), FetchError>,
    },
    FromOrigin {
        index: u64,
        result: Result<u64, String>,
    },
    Located(Result<Vec<Location>, PullError>),
    /// A watch's answer, or whether the peer looks gone.
    Reported {
        peer: NodeId,
        answer: Result<(ChunkSet, u32), bool>,
    },
}

/// Where a pull's chunks can come from.
struct Sources {
    /// The other holders the scheduler knew of at the start.
    locations: Vec<Location>,
    /// Whether partial holders serve too (the swarm) or only complete ones.
    relay: bool,
    /// Chunks already in the destination (the ranges of a cooperative share).
    held: Vec<Range<u64>>,
    /// The S3 object to read chunks no peer serves from.
    origin: Option<S3Origin>,
}

/// What the transfer of a pull did.
#[derive(Debug, Default)]
struct Received {
    from: BTreeMap<NodeId, u64>,
    corrupt: u64,
    retries: u64,
    s3_bytes: u64,
}

/// How a pull starts.
#[derive(Debug)]
// Built once per pull and moved once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum PullStart {
    /// From nothing: the manifest comes from a holder; `relay` as in [`PeerRequest::Pull`].
    Peers { relay: bool },
    /// From this node's share of a cooperative S3 fetch (if it has one), with the manifest
    /// assembled from every share.
    Share { share: Option<StagedShare>, manifest: Manifest, origin: S3Origin },
}

/// Reads chunk `index` from the S3 origin, checks it against the manifest and writes it.
async fn fetch_from_origin(shared: &Shared, target: &Target, origin: &S3Origin, index: u64) -> Result<u64, String> {
    let range = target.manifest.chunk_range(index);
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    let read = shared.s3().read_range(origin, range.start, &mut bytes).await.map_err(|e| e.to_string())?;
    let manifest = target.manifest.clone();
    let target = target.clone();
    tokio::task::spawn_blocking(move || match manifest.verify_chunk(index, &bytes) {
        Ok(true) => target.write_verified(index, &bytes).map(drop).map_err(|e| format!("writing the chunk: {e}")),
        Ok(false) => Err("the origin's bytes do not match the manifest".to_owned()),
        Err(e) => Err(e.to_string()),
    })
    .await
    .map_err(|e| format!("verification task failed: {e}"))??;
    Ok(read)
}

/// Fetches chunk `index`, verifies it and writes it; answers its length and the uploads
/// the peer reported in flight.
async fn fetch_chunk(
    conn: &quinn::Connection,
    target: &Target,
    index: u64,
    stall: Duration,
) -> Result<(u64, u32), FetchError> {
    let transport = |message: String| FetchError::Transport { lost: false, message };
    let range = target.manifest.chunk_range(index);
    let len = range.end - range.start;
    let request = PeerRequest::Chunk { name: target.name.clone(), index };
    // The answer may wait in the peer's queue for an upload slot (a few chunk times); a
    // peer that is gone is found by its connection closing, or by the stall below.
    let (resp, mut recv) = tokio::time::timeout(stall * 4, rpc::call::<_, PeerResponse>(conn, &request))
        .await
        .map_err(|_| FetchError::Transport { lost: true, message: "no answer".into() })?
        .map_err(|e| FetchError::Transport { lost: conn.close_reason().is_some(), message: e.to_string() })?;
    let uploads = match resp {
        PeerResponse::Chunk { len: l, uploads } if l == len => uploads,
        PeerResponse::Chunk { len: l, .. } => {
            return Err(FetchError::Corrupt(format!("{l} bytes announced, {len} expected")));
        }
        PeerResponse::NotHeld => return Err(FetchError::NotHeld),
        PeerResponse::Busy { uploads } => return Err(FetchError::Busy(uploads)),
        other => return Err(transport(format!("unexpected answer {other:?}"))),
    };
    // Collected apart from the object: nothing unverified reaches its memfd.
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        let piece = tokio::time::timeout(stall, recv.read_chunk((len - bytes.len() as u64) as usize, true))
            .await
            .map_err(|_| FetchError::Transport { lost: true, message: format!("stalled for {stall:?}") })?
            .map_err(|e| FetchError::Transport { lost: conn.close_reason().is_some(), message: e.to_string() })?;
        let Some(piece) = piece else {
            return Err(transport(format!("stream ended after {} of {len} bytes", bytes.len())));
        };
        bytes.extend_from_slice(&piece.bytes);
    }
    let target = target.clone();
    let written = tokio::task::spawn_blocking(move || match target.manifest.verify_chunk(index, &bytes) {
        Ok(true) => target.write_verified(index, &bytes).map_err(|e| transport(format!("writing the chunk: {e}"))),
        Ok(false) => Err(FetchError::Corrupt("hash mismatch".into())),
        Err(e) => Err(FetchError::Corrupt(e.to_string())),
    })
    .await
    .map_err(|e| transport(format!("verification task failed: {e}")))??;
    // A copy that lost the race to another verified copy carried the same bytes: it counts
    // as received traffic, and the chunk is held either way.
    let _ = written;
    Ok((len, uploads))
}

/// A holder's manifest and the S3 origin it names, or why there is none.
type ManifestAnswer = Result<(Manifest, Option<S3Origin>), String>;

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

    #[test]
    fn only_the_first_verified_copy_of_a_chunk_is_written() {
        let data = vec![7u8; 3 << 16];
        let manifest = Manifest::compute(&data, 1 << 16, 1).expect("manifest");
        let fd = sys::create_memfd(data.len() as u64).expect("memfd");
        let mapping = ReadOnlyMapping::new_exclusive(fd.as_fd(), data.len() as u64).expect("map");
        let claimed: Arc<[AtomicBool]> = (0..3).map(|_| AtomicBool::new(false)).collect();
        let target = Target {
            name: "x".into(),
            file: Arc::new(File::from(fd)),
            mapping: Arc::new(mapping),
            manifest: Arc::new(manifest),
            claimed,
        };
        let chunk = &data[..1 << 16];
        assert!(target.write_verified(0, chunk).expect("write"));
        // A later copy never overwrites, whatever it carries.
        assert!(!target.write_verified(0, &vec![9u8; 1 << 16]).expect("write"));
        assert_eq!(&target.mapping[..1 << 16], chunk);
        assert!(!target.write_verified(99, chunk).expect("out of range"));
    }
}
