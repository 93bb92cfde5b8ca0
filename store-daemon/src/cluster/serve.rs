//! Serving peers: manifests, chunk bitmaps and chunk bytes of the objects this node holds
//! (also those it is still receiving), and pulls asked for by `storectl replicate`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use store_client::rpc::{self, RpcError};
use store_client::wire::peer::{PeerRequest, PeerResponse};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::cooperative::Cooperative;
use super::peers::{HAVE_WAIT, ShareFetched};
use super::placement::Placement;
use super::pull::Puller;
use super::staged::Coordinator;
use crate::metrics::{Direction, Source};
use crate::node::NodeStore;
use crate::replication::{UPLOAD_QUEUE, UPLOAD_SLOTS};

/// How long a peer may take to send a whole request frame once it opened a stream.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest piece written to a peer stream at once (and the egress limiter's burst).
pub const SEND_SLICE: usize = 256 * 1024;
/// Peer connections served at once; more are refused at the door (a cluster has one per
/// peer node, so this is far above any honest need).
pub const MAX_PEER_CONNECTIONS: usize = 4096;

/// What this node serves its peers, and the upload slots they share.
#[derive(Debug)]
pub struct PeerServer {
    node: Arc<NodeStore>,
    puller: Arc<Puller>,
    cooperative: Arc<Cooperative>,
    placement: Arc<Placement>,
    uploads: UploadSlots,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Test builds only: flip a byte of every chunk served.
    corrupt_served_chunks: bool,
}

/// At most [`UPLOAD_SLOTS`] chunk uploads at once, the next [`UPLOAD_QUEUE`] requests
/// waiting in order, and the uploads in flight: the load reported to receivers.
#[derive(Debug)]
struct UploadSlots {
    slots: Semaphore,
    waiters: AtomicUsize,
    in_flight: AtomicU32,
}

/// An upload in flight, counted while it lives.
struct Upload<'a> {
    _slot: SemaphorePermit<'a>,
    in_flight: &'a AtomicU32,
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UploadSlots {
    fn new() -> Self {
        Self {
            slots: Semaphore::new(UPLOAD_SLOTS as usize),
            waiters: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// An upload slot, after waiting in order behind at most [`UPLOAD_QUEUE`] other
    /// requests; `None` if that many wait already (or the daemon is closing).
    async fn acquire(&self) -> Option<Upload<'_>> {
        let slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                if self.waiters.fetch_add(1, Ordering::AcqRel) >= UPLOAD_QUEUE {
                    self.waiters.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                // Fair: permits go to waiters in the order they asked.
                let slot = self.slots.acquire().await.ok();
                self.waiters.fetch_sub(1, Ordering::AcqRel);
                slot?
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Upload { _slot: slot, in_flight: &self.in_flight })
    }
}

impl PeerServer {
    /// `max_egress_rate` caps the bytes per second of all uploads together.
    pub fn new(
        node: Arc<NodeStore>,
        puller: Arc<Puller>,
        cooperative: Arc<Cooperative>,
        placement: Arc<Placement>,
        max_egress_rate: Option<NonZeroU32>,
        corrupt_served_chunks: bool,
    ) -> Self {
        let limiter = max_egress_rate.map(|rate| {
            let burst = NonZeroU32::new(SEND_SLICE as u32).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
        });
        Self { node, puller, cooperative, placement, uploads: UploadSlots::new(), limiter, corrupt_served_chunks }
    }

    /// Chunk uploads in flight.
    pub fn uploads(&self) -> u32 {
        self.uploads.in_flight()
    }
}

/// Accepts peer connections on `endpoint` until `shutdown`.
pub async fn accept_loop(
    server: Arc<PeerServer>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "refused a peer connection: {MAX_PEER_CONNECTIONS} already open");
            incoming.refuse();
            continue;
        };
        let server = server.clone();
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
            serve_connection(server, conn, shutdown).await;
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

async fn serve_connection(server: Arc<PeerServer>, conn: quinn::Connection, shutdown: CancellationToken) {
    let _open = server.node.metrics().peer_connection(Direction::In);
    let asker = peer_certificate(&conn);
    let streams = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                let server = server.clone();
                let asker = asker.clone();
                streams.spawn(async move {
                    if let Err(e) = serve_stream(&server, &asker, send, recv).await {
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

async fn serve_stream(
    server: &Arc<PeerServer>,
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
    match request {
        PeerRequest::Manifest { name } => {
            let view = server.node.store().peer_view(&name);
            let resp = match view {
                Some(v) => PeerResponse::Manifest {
                    manifest: (*v.manifest).clone(),
                    held: v.held,
                    uploads: server.uploads(),
                    origin: v.origin,
                },
                None => PeerResponse::NotHeld,
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Have { name, known } => {
            let resp = have_when_more_than(server, &name, known).await;
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Chunk { name, index } => {
            let view = server.node.store().peer_view(&name);
            let Some(view) = view.filter(|v| v.held.contains(index)) else {
                rpc::write_frame(&mut send, &PeerResponse::NotHeld).await?;
                send.finish()?;
                return Ok(());
            };
            // A few uploads at once, the next ones in order of asking; past a short queue
            // the asker is told at once to go to another holder or come back.
            let Some(_upload) = server.uploads.acquire().await else {
                rpc::write_frame(&mut send, &PeerResponse::Busy { uploads: server.uploads() }).await?;
                send.finish()?;
                return Ok(());
            };
            let metrics = server.node.metrics();
            let _in_flight = metrics.chunk_in_flight(Direction::Out);
            let range = view.manifest.chunk_range(index);
            let bytes = &view.mapping[range.start as usize..range.end as usize];
            rpc::write_frame(&mut send, &PeerResponse::Chunk { len: bytes.len() as u64, uploads: server.uploads() })
                .await?;
            for (n, piece) in bytes.chunks(SEND_SLICE).enumerate() {
                if let Some(limiter) = &server.limiter
                    && let Some(cells) = std::num::NonZeroU32::new(piece.len() as u32)
                {
                    // Pieces never exceed the burst, so this cannot fail.
                    let _ = limiter.until_n_ready(cells).await;
                }
                if server.corrupt_served_chunks && n == 0 {
                    let mut bad = piece.to_vec();
                    bad[0] ^= 0xff;
                    send.write_all(&bad).await?;
                } else {
                    send.write_all(piece).await?;
                }
                metrics.transfer_bytes(Source::Peer, Direction::Out, piece.len() as u64);
            }
        }
        PeerRequest::Pull { name, timeout_ms, relay } => {
            let timeout = Duration::from_millis(timeout_ms);
            let resp = match server.puller.pull(&name, timeout, relay).await {
                Ok(report) => PeerResponse::Pulled(report),
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::FetchShare { name, origin, chunk_size, first, end } => {
            let fetched = server.cooperative.fetch_share(&name, origin, chunk_size, first..end, asker.clone()).await;
            let resp = match fetched {
                Ok(ShareFetched { hashes, s3_bytes, seconds }) => {
                    PeerResponse::ShareFetched { hashes, s3_bytes, seconds }
                }
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::CompleteShare { name, manifest, origin, timeout_ms } => {
            let resp = match server
                .cooperative
                .complete_share(&name, manifest, origin, Duration::from_millis(timeout_ms), asker.clone())
                .await
            {
                Ok(report) => PeerResponse::Pulled(report),
                Err(e) => PeerResponse::Error { message: e.to_string() },
            };
            rpc::write_frame(&mut send, &resp).await?;
        }
        PeerRequest::Prefetch { names } => {
            let count = server.placement.prefetch(names);
            rpc::write_frame(&mut send, &PeerResponse::Queued { count }).await?;
        }
        PeerRequest::DropShare { name } => {
            server.cooperative.drop_share(&name, asker);
            rpc::write_frame(&mut send, &PeerResponse::Dropped).await?;
        }
    }
    send.finish()?;
    Ok(())
}

/// What this node holds of `name` once that is more than `known` chunks, or after
/// [`HAVE_WAIT`] whatever it is. The store is looked at again each time a chunk lands here;
/// no lock is held while waiting.
async fn have_when_more_than(server: &PeerServer, name: &str, known: u64) -> PeerResponse {
    let mut landed = server.node.subscribe_chunks_landed();
    let deadline = tokio::time::Instant::now() + HAVE_WAIT;
    loop {
        let view = server.node.store().peer_view(name);
        let Some(view) = view else { return PeerResponse::NotHeld };
        if view.held.count() > known || tokio::time::Instant::now() >= deadline {
            return PeerResponse::Have { held: view.held, uploads: server.uploads() };
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(deadline, landed.changed()).await {
            // The store is going away: answer with what is held now.
            return PeerResponse::Have { held: view.held, uploads: server.uploads() };
        }
    }
}
