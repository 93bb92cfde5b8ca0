//! Serving peers: manifests, chunk bitmaps and chunk bytes of the objects this node holds
//! (also those it is still receiving), and pulls asked for by `storectl replicate`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use store_client::rpc::{self, RpcError};
use store_client::wire::peer::{PeerRequest, PeerResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::cooperative::Coordinator;
use super::{Cluster, SEND_SLICE};
use crate::metrics::{Direction, Source};
use crate::replication::UPLOAD_QUEUE;

/// How long a peer may take to send a whole request frame once it opened a stream.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a `Have` request waits for a new chunk before it is answered anyway.
pub const HAVE_WAIT: Duration = Duration::from_secs(1);
/// Peer connections served at once; more are refused at the door (a cluster has one per
/// peer node, so this is far above any honest need).
pub const MAX_PEER_CONNECTIONS: usize = 4096;

/// Accepts peer connections until `shutdown`.
pub async fn accept_loop(cluster: Arc<Cluster>, shutdown: CancellationToken, tracker: TaskTracker) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            incoming = cluster.endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "refused a peer connection: {MAX_PEER_CONNECTIONS} already open");
            incoming.refuse();
            continue;
        };
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    // A peer without a certificate from our CA ends here.
                    warn!(error = %e, "refused a QUIC connection");
                    return;
                }
            };
            serve_connection(cluster, conn, shutdown).await;
        });
    }
}

/// The peer's end-entity certificate: who asks, for requests that only the asker of an
/// earlier one may follow up (a cooperative share's second phase).
fn peer_certificate(conn: &quinn::Connection) -> Coordinator {
    let der = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|cert| Arc::<[u8]>::from(cert.as_ref())));
    // The TLS configuration demands a client certificate, so there always is one; an empty
    // identity matches no staged share but an empty one.
    Coordinator::Peer(der.unwrap_or_else(|| Arc::from(&[][..])))
}

async fn serve_connection(cluster: Arc<Cluster>, conn: quinn::Connection, shutdown: CancellationToken) {
    let _open = cluster.metrics.peer_connection(Direction::In);
    let asker = peer_certificate(&conn);
    let streams = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                let cluster = cluster.clone();
                let asker = asker.clone();
                streams.spawn(async move {
                    if let Err(e) = serve_stream(&cluster, &asker, send, recv).await {
                        debug!(error = %e, "peer stream ended with an error");
                    }
                });
            }
            Err(e) => {
                debug!(peer = %conn.remote_address(), error = %e, "peer connection closed");
                break;
            }
        }
    }
    streams.close();
    streams.wait().await;
}

struct UploadGuard<'a>(&'a Cluster);

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        self.0.uploads.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_stream(
    cluster: &Arc<Cluster>,
    asker: &Coordinator,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), RpcError> {
    let request: PeerRequest = match rpc::read_frame_within(&mut recv, REQUEST_READ_TIMEOUT).await {
        Ok(r) => r,
        Err(RpcError::Malformed(m)) => {
            rpc::write_frame(&mut send, &PeerResponse::Error { message: format!("malformed request: {m}") }).await?;
            send.finish()?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // The one name check, before anything looks a name up, stages memory or asks S3.
    if let Err(e) = request.validate_names() {
        rpc::write_frame(&mut send, &PeerResponse::Error { message: e.to_string() }).await?;
        send.finish()?;
        return Ok(());
    }
    let Some(shared) = cluster.shared.upgrade() else {
        rpc::write_frame(&mut send, &PeerResponse::Error { message: "shutting down".into() }).await?;
        return Ok(());
    };
    match request {
        PeerRequest::Manifest { name } => {
            let view = shared.store().peer_view(&name);
            let resp = match view {
                Some(v) => PeerResponse::Manifest {
                    manifest: (*v.manifest).clone(),
                    held: v.held,
                    uploads: cluster.uploads(),
                    origin: shared.s3().origin(v.id),
                },
                None => PeerResponse::NotHeld,
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Have { name, known } => {
            drop(shared);
            let resp = have_when_more_than(cluster, &name, known).await;
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Chunk { name, index } => {
            let view = shared.store().peer_view(&name);
            drop(shared);
            let Some(view) = view.filter(|v| v.held.contains(index)) else {
                rpc::write_frame(&mut send, &PeerResponse::NotHeld).await?;
                send.finish()?;
                return Ok(());
            };
            // A few uploads at once, the next ones in order of asking; past a short queue
            // the asker is told at once to go to another holder or come back.
            let Some(_slot) = upload_slot(cluster).await else {
                rpc::write_frame(&mut send, &PeerResponse::Busy { uploads: cluster.uploads() }).await?;
                send.finish()?;
                return Ok(());
            };
            cluster.uploads.fetch_add(1, Ordering::Relaxed);
            let _upload = UploadGuard(cluster);
            let _in_flight = cluster.metrics.chunk_in_flight(Direction::Out);
            let range = view.manifest.chunk_range(index);
            let bytes = &view.mapping[range.start as usize..range.end as usize];
            rpc::write_frame(&mut send, &PeerResponse::Chunk { len: bytes.len() as u64, uploads: cluster.uploads() })
                .await?;
            for (n, piece) in bytes.chunks(SEND_SLICE).enumerate() {
                if let Some(limiter) = &cluster.limiter
                    && let Some(cells) = std::num::NonZeroU32::new(piece.len() as u32)
                {
                    // Pieces never exceed the burst, so this cannot fail.
                    let _ = limiter.until_n_ready(cells).await;
                }
                if corrupts_served_chunks(cluster) && n == 0 {
                    let mut bad = piece.to_vec();
                    bad[0] ^= 0xff;
                    send.write_all(&bad).await?;
                } else {
                    send.write_all(piece).await?;
                }
                cluster.metrics.transfer_bytes(Source::Peer, Direction::Out, piece.len() as u64);
            }
            cluster.stats.chunks_sent.fetch_add(1, Ordering::Relaxed);
            cluster.stats.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        PeerRequest::Pull { name, timeout_ms, relay } => {
            drop(shared);
            let timeout = Duration::from_millis(timeout_ms);
            let resp = match cluster.pull(&name, timeout, relay).await {
                Ok(report) => PeerResponse::Pulled(report),
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::FetchShare { name, origin, chunk_size, first, end } => {
            drop(shared);
            let resp = match cluster.fetch_share(&name, origin, chunk_size, first..end, asker.clone()).await {
                Ok((hashes, s3_bytes, seconds)) => PeerResponse::ShareFetched { hashes, s3_bytes, seconds },
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::CompleteShare { name, manifest, origin, timeout_ms } => {
            drop(shared);
            let resp = match cluster
                .complete_share(&name, manifest, origin, Duration::from_millis(timeout_ms), asker.clone())
                .await
            {
                Ok(report) => PeerResponse::Pulled(report),
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Prefetch { names } => {
            drop(shared);
            let count = cluster.prefetch(names);
            rpc::write_frame(&mut send, &PeerResponse::Queued { count }).await?;
        }
        PeerRequest::DropShare { name } => {
            drop(shared);
            cluster.drop_share(&name, asker);
            rpc::write_frame(&mut send, &PeerResponse::Dropped).await?;
        }
    }
    send.finish()?;
    Ok(())
}

/// An upload slot, after waiting in order behind at most [`UPLOAD_QUEUE`] other requests;
/// `None` if that many wait already (or the daemon is closing).
async fn upload_slot(cluster: &Cluster) -> Option<tokio::sync::SemaphorePermit<'_>> {
    if let Ok(slot) = cluster.upload_slots.try_acquire() {
        return Some(slot);
    }
    if cluster.upload_waiters.fetch_add(1, Ordering::AcqRel) >= UPLOAD_QUEUE {
        cluster.upload_waiters.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    // Fair: permits go to waiters in the order they asked.
    let slot = cluster.upload_slots.acquire().await.ok();
    cluster.upload_waiters.fetch_sub(1, Ordering::AcqRel);
    slot
}

/// What this node holds of `name` once that is more than `known` chunks, or after
/// [`HAVE_WAIT`] whatever it is. The store is looked at again each time a chunk lands here;
/// no lock is held while waiting.
async fn have_when_more_than(cluster: &Cluster, name: &str, known: u64) -> PeerResponse {
    let mut landed = cluster.chunks_landed.subscribe();
    let deadline = tokio::time::Instant::now() + HAVE_WAIT;
    loop {
        let Some(shared) = cluster.shared.upgrade() else {
            return PeerResponse::Error { message: "shutting down".into() };
        };
        let view = shared.store().peer_view(name);
        drop(shared);
        let Some(view) = view else { return PeerResponse::NotHeld };
        if view.held.count() > known || tokio::time::Instant::now() >= deadline {
            return PeerResponse::Have { held: view.held, uploads: cluster.uploads() };
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, landed.changed()).await {
            // The cluster is going away: answer with what is held now.
            return PeerResponse::Have { held: view.held, uploads: cluster.uploads() };
        }
    }
}

/// Whether a test build was told to corrupt what it serves; never in a shipped daemon.
#[cfg(feature = "fault-injection")]
fn corrupts_served_chunks(cluster: &Cluster) -> bool {
    cluster.config.corrupt_served_chunks
}

#[cfg(not(feature = "fault-injection"))]
fn corrupts_served_chunks(_: &Cluster) -> bool {
    false
}
