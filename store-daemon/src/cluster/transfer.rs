//! One pull's transfer: the tokio driver of [`PullCore`]. It only moves bytes and reports
//! what happened: which chunk to ask whom, when to ask the scheduler or the S3 origin, whom
//! to give up on and when the pull has stalled are the core's decisions.
//!
//! Received bytes are collected per chunk and verified against the manifest before they
//! touch the destination memfd; the first verified copy of a chunk claims it and is written
//! (`pwrite`), any later copy (a fetch superseded by a timeout, a second holder) is dropped,
//! so no unverified byte ever lands where a verified chunk or a consumer could see it. A
//! received chunk counts, and is served on to other receivers, only once written.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use store_client::chunkset::ChunkSet;
use store_client::manifest::Manifest;
use store_client::rpc;
use store_client::scheduler_client::SchedulerClient;
use store_client::sys::ReadOnlyMapping;
use store_client::wire::node::{Location, NodeId};
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PeerRequest, PeerResponse};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::PullError;
use super::peers::{HAVE_WAIT, PeerClient};
use crate::metrics::{Direction, Source};
use crate::node::NodeStore;
use crate::replication::pull_core::{Action, CoreConfig, FetchResult, Finished, PullCore};

/// A watch unanswered this long past the peer's promised wait ([`HAVE_WAIT`]) counts the peer
/// as gone.
const WATCH_MARGIN: Duration = Duration::from_secs(1);

/// What every transfer of this node needs.
#[derive(Debug)]
pub struct PullContext {
    pub node_id: NodeId,
    pub node: Arc<NodeStore>,
    pub peers: Arc<PeerClient>,
    pub scheduler: Arc<SchedulerClient>,
    /// Cancelled when the daemon drains: transfers under way abort.
    pub draining: CancellationToken,
    /// Bytes received from peers by every pull of this node (pulls running side by side
    /// share the link), for the scheduler's bandwidth estimate.
    pub bytes_received: AtomicU64,
}

impl PullContext {
    /// The holders of `name` other than this node.
    pub async fn locate_others(&self, name: &str) -> Result<Vec<Location>, PullError> {
        let mut locations = self.scheduler.locate(name).await?;
        locations.retain(|l| l.node != self.node_id);
        Ok(locations)
    }
}

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
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub file: Arc<File>,
    pub mapping: Arc<ReadOnlyMapping>,
    pub manifest: Arc<Manifest>,
    /// Per chunk: a verified copy has claimed the right to write it.
    pub claimed: Arc<[AtomicBool]>,
}

impl Target {
    /// Writes `bytes`, already verified as chunk `index`, unless another verified copy
    /// claimed the chunk first; returns whether this copy was written.
    pub fn write_verified(&self, index: u64, bytes: &[u8]) -> std::io::Result<bool> {
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

/// Carries out what the pull's [`PullCore`] decides, and tells it what happened: the
/// only policy here is none.
pub async fn transfer(
    ctx: &Arc<PullContext>,
    id: u64,
    target: &Target,
    sources: Sources,
    deadline: Instant,
) -> Result<Received, PullError> {
    let Sources { locations, relay, held, origin } = sources;
    let manifest = &target.manifest;
    let now = Instant::now();
    let mut core = PullCore::new(
        &ctx.node_id,
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
            perform(ctx, action, target, origin.as_ref(), &tx, &mut tasks);
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
                tell(ctx, &mut core, id, happened);
                // Whatever else is ready goes in before the next poll.
                while let Ok(happened) = rx.try_recv() {
                    tell(ctx, &mut core, id, happened);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                tasks.abort_all();
                return Err(PullError::Timeout(target.name.clone()));
            }
            _ = ctx.draining.cancelled() => {
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
    ctx: &Arc<PullContext>,
    action: Action,
    target: &Target,
    origin: Option<&S3Origin>,
    tx: &mpsc::UnboundedSender<Happened>,
    tasks: &mut JoinSet<()>,
) {
    let (ctx, target, tx) = (ctx.clone(), target.clone(), tx.clone());
    match action {
        Action::Fetch(fetch) => {
            tasks.spawn(async move {
                let _in_flight = ctx.node.metrics().chunk_in_flight(Direction::In);
                let result = match ctx.peers.connect(&fetch.peer, fetch.addr).await {
                    Ok(conn) => {
                        let result = fetch_chunk(&conn, &target, fetch.index, fetch.stall).await;
                        if matches!(result, Err(FetchError::Transport { lost: true, .. })) {
                            // The peer is quarantined; when it is asked again, it is on a
                            // new connection (it may have restarted).
                            ctx.peers.forget(&fetch.peer, &conn).await;
                        }
                        result
                    }
                    Err(e) => Err(FetchError::Transport { lost: true, message: e.to_string() }),
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
                let result = fetch_from_origin(&ctx.node, &target, &source, index).await;
                let _ = tx.send(Happened::FromOrigin { index, result });
            });
        }
        Action::Locate => {
            tasks.spawn(async move {
                let result = ctx.locate_others(&target.name).await;
                let _ = tx.send(Happened::Located(result));
            });
        }
        Action::Watch { peer, addr, known } => {
            tasks.spawn(async move {
                let answer = match ctx.peers.connect(&peer, addr).await {
                    Ok(conn) => {
                        match PeerClient::have_on(&conn, &peer, &target.name, known, HAVE_WAIT + WATCH_MARGIN).await {
                            Ok(report) => Ok(report),
                            // No answer within the peer's promised wait: it is gone, or too far
                            // behind to serve anyone.
                            Err(e) if e.is_unreachable() => {
                                ctx.peers.forget(&peer, &conn).await;
                                Err(true)
                            }
                            Err(_) => Err(false),
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
fn tell(ctx: &PullContext, core: &mut PullCore, id: u64, happened: Happened) {
    let metrics = ctx.node.metrics();
    let now = Instant::now();
    match happened {
        Happened::Fetched { peer, index, result } => {
            let result = match result {
                Ok((bytes, uploads)) => {
                    ctx.node.store().chunk_received(id, index);
                    ctx.node.chunk_landed();
                    ctx.bytes_received.fetch_add(bytes, Ordering::Relaxed);
                    metrics.transfer_bytes(Source::Peer, Direction::In, bytes);
                    FetchResult::Arrived { bytes, uploads }
                }
                Err(FetchError::Corrupt(why)) => {
                    warn!(%peer, index, %why, "corrupt chunk rejected");
                    metrics.chunk_verify_failed();
                    metrics.chunk_retried();
                    FetchResult::Corrupt
                }
                Err(FetchError::NotHeld) => {
                    metrics.chunk_retried();
                    FetchResult::NotHeld
                }
                Err(FetchError::Busy(uploads)) => FetchResult::Busy { uploads },
                Err(FetchError::Transport { lost, message }) => {
                    debug!(%peer, index, %message, lost, "chunk fetch failed");
                    metrics.chunk_retried();
                    FetchResult::Transport { lost }
                }
            };
            core.fetch_done(now, &peer, index, result);
        }
        Happened::FromOrigin { index, result } => match result {
            Ok(bytes) => {
                ctx.node.store().chunk_received(id, index);
                ctx.node.chunk_landed();
                // (The metrics counted the bytes as they landed.)
                core.origin_done(index, Some(bytes));
            }
            Err(why) => {
                warn!(index, %why, "reading a chunk from the S3 origin failed");
                metrics.chunk_retried();
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

/// What a task of [`transfer`] reports back.
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
#[derive(Debug)]
pub struct Sources {
    /// The other holders the scheduler knew of at the start.
    pub locations: Vec<Location>,
    /// Whether partial holders serve too (the swarm) or only complete ones.
    pub relay: bool,
    /// Chunks already in the destination (the ranges of a cooperative share).
    pub held: Vec<Range<u64>>,
    /// The S3 object to read chunks no peer serves from.
    pub origin: Option<S3Origin>,
}

/// What the transfer of a pull did.
#[derive(Debug, Default)]
pub struct Received {
    pub from: BTreeMap<NodeId, u64>,
    pub corrupt: u64,
    pub retries: u64,
    pub s3_bytes: u64,
}

/// Reads chunk `index` from the S3 origin, checks it against the manifest and writes it.
async fn fetch_from_origin(node: &NodeStore, target: &Target, origin: &S3Origin, index: u64) -> Result<u64, String> {
    let range = target.manifest.chunk_range(index);
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    let read = node.s3().read_range(origin, range.start, &mut bytes).await.map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use store_client::sys;

    use super::*;

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
