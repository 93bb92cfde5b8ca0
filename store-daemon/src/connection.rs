//! One client connection: reads frames (and the descriptors riding on them), answers each
//! request in order, and gives back the client's leases and unsealed objects when it goes.
//!
//! A hostile client must not hurt the others. Descriptors belong to the frame that holds the
//! last byte of the read that brought them: Linux ends a read of a unix stream right after
//! the message that carried descriptors, so that is the frame a client sent in one message
//! with them (as `store-client` does), however many frames were queued before it, and one
//! read still takes in everything queued (one `recvmsg` per request, not one per header and
//! one per body). A request with any other number of descriptors than it takes
//! ([`Request::descriptors`]) is refused with every one closed; more than one for a frame, or
//! a truncated batch (`MSG_CTRUNC`), closes them at once, so nothing piles up while a frame
//! trickles in. Frames are capped at [`MAX_REQUEST_LEN`] (refused on their header, before any
//! allocation), a frame must arrive whole within the frame timeout of its first byte and a
//! response must be taken within it too, and a connection holds at most
//! [`ClientLimits::max_unsealed`](crate::config::ClientLimits) unsealed objects.

mod frames;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_client::Digest;
use store_client::frame::{self, FrameBuffer, FrameError};
use store_client::name;
use store_client::sys;
use store_client::wire::local::{MAX_REQUEST_LEN, PROTOCOL_VERSION, Request, Response, S3Pull};
use store_client::wire::object::{ErrorCode, ObjectId};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::frames::{FrameFds, write_frame};
use crate::cluster::{Cluster, PullError};
use crate::config::DaemonConfig;
use crate::ingest::{self, IngestError};
use crate::metrics::{Direction, Source};
use crate::node::{NodeStore, Room};
use crate::s3_ingest;
use crate::store::{Adopted, ConnId, Lookup, StoreError};

/// What every connection is served with.
#[derive(Debug)]
pub struct Context {
    pub config: DaemonConfig,
    pub node: Arc<NodeStore>,
    /// The cluster membership, if this daemon has one.
    pub cluster: Option<Arc<Cluster>>,
}

/// Longest a put waits for the scheduler to say whether its name is free cluster-wide.
const BINDING_CHECK_LIMIT: Duration = Duration::from_millis(500);

/// Longest transfer a `get` with a zero timeout starts for an object held elsewhere.
const PULL_FOR_GET_LIMIT: Duration = Duration::from_secs(600);

/// A request's failure, as it goes on the wire.
#[derive(Debug)]
struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<IngestError> for Failure {
    fn from(e: IngestError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<PullError> for Failure {
    fn from(e: PullError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::new(ErrorCode::Io, e.to_string())
    }
}

type Reply = Result<(Response, Option<Arc<OwnedFd>>), Failure>;

/// What this connection holds in the store.
#[derive(Debug, Default)]
struct Held {
    leases: HashMap<ObjectId, u32>,
    pending: HashSet<ObjectId>,
}

struct Connection {
    ctx: Arc<Context>,
    /// The node's store (the context's, at hand).
    node: Arc<NodeStore>,
    stream: UnixStream,
    id: ConnId,
    frames: FrameBuffer,
    /// The descriptors of the frame being read (the one the buffered bytes begin with).
    fds: FrameFds,
    /// Descriptors the last read brought, until they are given to the frame holding its last
    /// byte, and whether the kernel truncated them.
    arrived: Option<(Vec<OwnedFd>, bool)>,
    /// When the first byte of the frame being read arrived.
    frame_started: Option<tokio::time::Instant>,
    holdings: Held,
    shutdown: CancellationToken,
}

/// Tells a client why it is being dropped before it is served (not on the allow-list, too
/// many clients).
pub async fn refuse(stream: UnixStream, code: ErrorCode, message: String, limit: Duration) {
    let resp = Response::Error { code, message };
    let _ = tokio::time::timeout(limit, write_frame(&stream, &frame::encode(&resp), None)).await;
}

pub async fn serve(ctx: Arc<Context>, stream: UnixStream, id: ConnId, shutdown: CancellationToken) {
    let mut conn = Connection {
        node: ctx.node.clone(),
        ctx,
        stream,
        id,
        frames: FrameBuffer::with_limit(MAX_REQUEST_LEN),
        fds: FrameFds::default(),
        arrived: None,
        frame_started: None,
        holdings: Held::default(),
        shutdown,
    };
    if let Err(e) = conn.run().await {
        debug!(conn_id = id, error = %e, "connection ended with an error");
    }
    conn.release_all();
}

/// What a connection waits for between frames.
enum Wake {
    Read(io::Result<usize>),
    Shutdown,
    FrameTimeout,
}

impl Connection {
    fn frame_timeout(&self) -> Duration {
        self.ctx.config.clients.frame_timeout
    }

    async fn run(&mut self) -> io::Result<()> {
        loop {
            let mut answered = false;
            loop {
                let next = match self.frames.next_frame() {
                    Ok(body) => body.map(frame::decode::<Request>),
                    Err(e) => {
                        // An oversized frame leaves no way to find the next one.
                        let message = format!("{e} of {MAX_REQUEST_LEN} bytes for a request");
                        self.send_error(ErrorCode::BadRequest, message).await?;
                        return Ok(());
                    }
                };
                let Some(decoded) = next else { break };
                answered = true;
                let mut fds = std::mem::take(&mut self.fds);
                if self.frames.buffered() == 0
                    && let Some((batch, truncated)) = self.arrived.take()
                {
                    // This frame holds the last byte read.
                    fds.add(batch, truncated);
                }
                match decoded {
                    Ok(req) => self.handle(req, fds).await?,
                    // The frame's descriptors are closed with it.
                    Err(e) => self.send_error(ErrorCode::BadRequest, e.to_string()).await?,
                }
            }
            if let Some((batch, truncated)) = self.arrived.take() {
                // The frame in progress holds the last byte read.
                self.fds.add(batch, truncated);
            }
            // A frame in progress is timed from its first byte, or from the answer to the
            // frame before it (the client may have sent it while that one was being answered).
            self.frame_started = match self.frames.buffered() {
                0 => None,
                _ if answered => Some(tokio::time::Instant::now()),
                _ => self.frame_started.or_else(|| Some(tokio::time::Instant::now())),
            };
            let deadline = self.frame_started.map(|t| t + self.frame_timeout());
            let shutdown = self.shutdown.clone();
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = sleep_until(deadline) => Wake::FrameTimeout,
                n = self.read() => Wake::Read(n),
            };
            let n = match wake {
                Wake::Read(n) => n?,
                Wake::Shutdown => return Ok(()),
                Wake::FrameTimeout => {
                    let message = format!(
                        "a request frame did not arrive whole within {} ms of its first byte ({} bytes came)",
                        self.frame_timeout().as_millis(),
                        self.frames.buffered()
                    );
                    warn!(conn_id = self.id, %message, "cutting a stalled client");
                    let _ = self.send_error(ErrorCode::Timeout, message).await;
                    return Ok(());
                }
            };
            if n == 0 {
                if let Err(e @ FrameError::Truncated { .. }) = self.frames.finish() {
                    // The client may have shut down only its writing half.
                    let _ = self.send_error(ErrorCode::BadRequest, e.to_string()).await;
                }
                return Ok(());
            }
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        loop {
            self.stream.readable().await?;
            let spare = self.frames.spare(64 * 1024);
            let stream = &self.stream;
            let mut fds = Vec::new();
            match stream.try_io(Interest::READABLE, || sys::recv_with_fds_checked(stream.as_fd(), spare, &mut fds)) {
                Ok(got) => {
                    self.frames.filled(got.bytes);
                    if !fds.is_empty() || got.truncated {
                        self.arrived = Some((fds, got.truncated));
                    }
                    return Ok(got.bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one response; a client that does not take it within the frame timeout is cut.
    async fn respond(&self, resp: &Response, fd: Option<&OwnedFd>) -> io::Result<()> {
        let limit = self.frame_timeout();
        match tokio::time::timeout(limit, write_frame(&self.stream, &frame::encode(resp), fd)).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client did not take a response within {} ms", limit.as_millis()),
            )),
        }
    }

    async fn send_error(&self, code: ErrorCode, message: String) -> io::Result<()> {
        debug!(conn_id = self.id, ?code, %message, "request failed");
        self.respond(&Response::Error { code, message }, None).await
    }

    async fn handle(&mut self, req: Request, fds: FrameFds) -> io::Result<()> {
        let fd = match fds.for_request(&req) {
            Ok(fd) => fd,
            // Never answered, so refused without a word.
            Err(message) if matches!(req, Request::Release { .. }) => {
                debug!(conn_id = self.id, %message, "release refused");
                return Ok(());
            }
            Err(message) => return self.send_error(ErrorCode::BadDescriptor, message).await,
        };
        if let Request::Release { id } = req {
            self.release(id);
            return Ok(());
        }
        if self.shutdown.is_cancelled() {
            // Draining: requests already being answered finish, later ones are refused.
            return self.send_error(ErrorCode::ShuttingDown, "the daemon is shutting down".into()).await;
        }
        let reply = self.answer(req, fd).await;
        match reply {
            Ok((resp, fd)) => self.respond(&resp, fd.as_deref()).await,
            Err(f) => self.send_error(f.code, f.message).await,
        }
    }

    async fn answer(&mut self, req: Request, fd: Option<OwnedFd>) -> Reply {
        let take_fd = || fd.ok_or_else(|| Failure::new(ErrorCode::BadDescriptor, "the request needs a descriptor"));
        match req {
            Request::Hello { version } if version == PROTOCOL_VERSION => {
                Ok((Response::Hello { version, daemon: format!("store-daemon {}", env!("CARGO_PKG_VERSION")) }, None))
            }
            Request::Hello { version } => Err(Failure::new(
                ErrorCode::BadRequest,
                format!("protocol version {version} is not supported (this daemon speaks {PROTOCOL_VERSION})"),
            )),
            Request::Create { name, size, evictable } => self.create(&name, size, evictable),
            Request::Seal { id } => {
                let sealed = self.seal(id).await;
                match &sealed {
                    // Filled in place by the client: the bytes count, the duration (the
                    // client's own pace) does not.
                    Ok((Response::Sealed(info), _)) => {
                        self.node.metrics().transfer_bytes(Source::Local, Direction::In, info.size)
                    }
                    Ok(_) => {}
                    Err(_) => self.node.metrics().transfer_failed(Source::Local),
                }
                sealed
            }
            Request::Abort { id } => {
                self.node.store().abort(id, self.id)?;
                self.holdings.pending.remove(&id);
                Ok((Response::Done, None))
            }
            Request::PutMemfd { name, size, evictable } => {
                let fd = take_fd()?;
                let started = Instant::now();
                let put = self.put_memfd(name, size, evictable, fd, started).await;
                self.count_failed_put(&put);
                put
            }
            Request::PutFile { name, evictable } => {
                let fd = take_fd()?;
                let started = Instant::now();
                let put = self.put_file(name, evictable, fd, started).await;
                self.count_failed_put(&put);
                put
            }
            Request::Get { name, timeout_ms } => self.get(&name, timeout_ms).await,
            Request::Release { id } => {
                self.release(id);
                Ok((Response::Done, None))
            }
            Request::Delete { name } => {
                check_name(&name)?;
                self.node.store().delete(&name)?;
                self.node.holdings_changed();
                Ok((Response::Done, None))
            }
            Request::List => Ok((Response::Listing(self.node.store().list()), None)),
            Request::Stat { name } => {
                check_name(&name)?;
                Ok((Response::Stat(self.node.store().stat(&name)?), None))
            }
            Request::Locate { name } => {
                check_name(&name)?;
                let cluster = self.cluster()?;
                let located = cluster.scheduler().locate(&name).await.map_err(PullError::from)?;
                Ok((Response::Located(located), None))
            }
            Request::Nodes => {
                let cluster = self.cluster()?;
                Ok((Response::Nodes(cluster.scheduler().nodes().await.map_err(PullError::from)?), None))
            }
            Request::Replicate { name, to, timeout_ms, relay } => {
                check_name(&name)?;
                let cluster = self.cluster()?;
                let outcomes = cluster.replicate(&name, to, Duration::from_millis(timeout_ms), relay).await?;
                Ok((Response::Replicated(outcomes), None))
            }
            Request::PullS3 { url, name, evictable, part_size, concurrency } => {
                let pulled = self.pull_s3(&url, &name, evictable, part_size, concurrency).await;
                if pulled.is_err() {
                    self.node.metrics().transfer_failed(Source::S3);
                }
                pulled
            }
            Request::Place { spec, prefetch } => {
                for need in &spec.needs {
                    check_name(need)?;
                }
                let placement = self.cluster()?.placement().clone();
                Ok((Response::Placed(placement.place(spec, prefetch).await?), None))
            }
            Request::PullS3Cooperative { url, name, nodes, timeout_ms } => {
                check_name(&name)?;
                let cooperative = self.cluster()?.cooperative().clone();
                let timeout = Duration::from_millis(timeout_ms);
                let pulled = cooperative.pull_s3_cooperative(&url, &name, nodes, timeout).await?;
                Ok((Response::PulledS3Cooperative(pulled), None))
            }
            Request::Origin { name } => {
                check_name(&name)?;
                Ok((Response::Origin(self.node.store().origin(&name)?), None))
            }
        }
    }

    async fn pull_s3(
        &mut self,
        url: &str,
        name: &str,
        evictable: bool,
        part_size: Option<u64>,
        concurrency: Option<u32>,
    ) -> Reply {
        check_name(name)?;
        let start = Instant::now();
        let node = self.node.clone();
        let room = |size| node.store().check_room(size);
        let fetched = self.node.s3().fetch(url, self.node.chunk_size(), part_size, concurrency, room).await;
        let fetched = fetched.map_err(|e| Failure::new(e.code(), e.to_string()))??;
        let s3_ingest::Fetched { fd, manifest, mapping, origin, stats } = fetched;
        self.check_cluster_binding(name, manifest.root).await?;
        let (info, _) = self.adopt(name, evictable, fd, manifest, mapping, start, Source::S3, None)?;
        let Response::Sealed(info) = info else {
            return Err(Failure::new(ErrorCode::Internal, "adopt answered without an object"));
        };
        self.node.store().set_origin(info.id, origin.clone());
        let pull = S3Pull {
            info,
            origin,
            download_seconds: stats.elapsed.as_secs_f64(),
            total_seconds: s3_ingest::seconds_since(start),
            retries: stats.retries,
        };
        Ok((Response::PulledS3(pull), None))
    }

    fn cluster(&self) -> Result<&Arc<Cluster>, Failure> {
        self.ctx
            .cluster
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorCode::NoCluster, "this daemon runs without a cluster (no --scheduler)"))
    }

    fn create(&mut self, name: &str, size: u64, evictable: bool) -> Reply {
        check_name(name)?;
        let limit = self.ctx.config.clients.max_unsealed;
        if self.holdings.pending.len() >= limit {
            return Err(Failure::new(
                ErrorCode::LimitExceeded,
                format!("this connection holds {limit} unsealed objects, the limit: seal or abort one first"),
            ));
        }
        self.node.store().check_room(size)?;
        // Sized for good: the client can write it but not shrink or grow it, so the size
        // accounted is the size consumers map.
        let segment = sys::create_sized_memfd(size)?;
        let client_fd = segment.try_clone()?;
        let (id, evicted) = self.node.store().reserve(name, size, evictable, segment, self.id)?;
        log_evictions(&evicted);
        self.holdings.pending.insert(id);
        Ok((Response::Created { id }, Some(Arc::new(client_fd))))
    }

    async fn seal(&mut self, id: ObjectId) -> Reply {
        let (segment, size) = self.node.store().begin_seal(id, self.id)?;
        let (chunk_size, threads) = (self.node.chunk_size(), self.node.hash_threads());
        let hashed = ingest::seal_and_hash_patiently(segment, size, chunk_size, threads).await;
        let (manifest, mapping) = match hashed {
            Ok(done) => done,
            Err(e) => {
                self.node.store().seal_failed(id);
                return Err(e.into());
            }
        };
        let name = self.node.store().info(id).map(|info| info.name);
        if let Some(name) = name
            && let Err(refused) = self.check_cluster_binding(&name, manifest.root).await
        {
            // Sealed already, so it cannot be filled again: it goes.
            let _ = self.node.store().abort(id, self.id);
            self.holdings.pending.remove(&id);
            return Err(refused);
        }
        let info = self.node.store().finish_seal(id, manifest, mapping)?;
        self.holdings.pending.remove(&id);
        self.node.notify_sealed();
        Ok((Response::Sealed(info), None))
    }

    /// One name, one content, cluster-wide: refuses to bind `name` to `root` when another
    /// node holds it with other content. Without an answer from the scheduler in
    /// [`BINDING_CHECK_LIMIT`] the put goes on, and the scheduler refuses the announce of a
    /// conflicting copy instead (two nodes putting at once end there too).
    async fn check_cluster_binding(&self, name: &str, root: Digest) -> Result<(), Failure> {
        let Some(cluster) = &self.ctx.cluster else { return Ok(()) };
        let located = match tokio::time::timeout(BINDING_CHECK_LIMIT, cluster.scheduler().locate(name)).await {
            Ok(Ok(located)) => located,
            Ok(Err(e)) => {
                debug!(%name, error = %e, "cannot check the name with the scheduler; its announce will be");
                return Ok(());
            }
            Err(_) => {
                debug!(%name, "the scheduler did not answer the name check in time; its announce will be checked");
                return Ok(());
            }
        };
        match located.iter().find(|l| l.root != root && l.node != cluster.node_id()) {
            None => Ok(()),
            Some(other) => Err(Failure::new(
                ErrorCode::AlreadyExists,
                format!("{name:?} is bound to other content in the cluster: {} holds root {}", other.node, other.root),
            )),
        }
    }

    fn count_failed_put(&self, put: &Reply) {
        if put.is_err() {
            self.node.metrics().transfer_failed(Source::Local);
        }
    }

    /// Adopts a memfd the client filled: `size` is what the client declared, and the memfd
    /// must still be that large once sealed ([`ingest::seal_and_hash`]).
    async fn put_memfd(&mut self, name: String, size: u64, evictable: bool, fd: OwnedFd, started: Instant) -> Reply {
        check_name(&name)?;
        self.node.store().check_room(size)?;
        let (chunk_size, threads) = (self.node.chunk_size(), self.node.hash_threads());
        let fd = Arc::new(fd);
        let (manifest, mapping) = ingest::seal_and_hash_patiently(fd.clone(), size, chunk_size, threads).await?;
        let fd = Arc::into_inner(fd).ok_or_else(|| Failure::new(ErrorCode::Internal, "the memfd is still shared"))?;
        self.check_cluster_binding(&name, manifest.root).await?;
        self.adopt(&name, evictable, fd, manifest, mapping, started, Source::Local, None)
    }

    /// Copies a regular file in. Its room is taken before the copy allocates anything, so
    /// copies under way never take the daemon past its capacity.
    async fn put_file(&mut self, name: String, evictable: bool, src: OwnedFd, started: Instant) -> Reply {
        check_name(&name)?;
        let source = ingest::SourceFile::of(src.as_fd())?;
        let room = self.node.take_room(source.size)?;
        let chunk_size = self.node.chunk_size();
        let (dst, (manifest, mapping)) = blocking(move || -> Result<_, IngestError> {
            let dst = sys::create_sized_memfd(source.size)?;
            let done = ingest::copy_hash_and_seal(src.as_fd(), &source, dst.as_fd(), chunk_size)?;
            Ok((dst, done))
        })
        .await??;
        self.check_cluster_binding(&name, manifest.root).await?;
        self.adopt(&name, evictable, dst, manifest, mapping, started, Source::Local, Some(room))
    }

    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        name: &str,
        evictable: bool,
        fd: OwnedFd,
        manifest: store_client::Manifest,
        mapping: sys::ReadOnlyMapping,
        started: Instant,
        source: Source,
        room: Option<Room>,
    ) -> Reply {
        let (adopted, evicted) = {
            // The room held for the object becomes its own under one lock: nobody takes it
            // in between.
            let mut store = self.node.store();
            store.return_room(room.map_or(0, Room::into_size));
            store.adopt(name, evictable, fd, manifest, mapping)?
        };
        log_evictions(&evicted);
        match adopted {
            Adopted::New(info) => {
                let metrics = self.node.metrics();
                // S3 bytes were counted part by part as they landed (s3_ingest).
                if source != Source::S3 {
                    metrics.transfer_bytes(source, Direction::In, info.size);
                }
                metrics.transfer_completed(source, info.size, started.elapsed());
                self.node.notify_sealed();
                Ok((Response::Sealed(info), None))
            }
            Adopted::Existing(info) => Ok((Response::Sealed(info), None)),
        }
    }

    async fn get(&mut self, name: &str, timeout_ms: u64) -> Reply {
        check_name(name)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut sealed = self.node.subscribe_sealed();
        let mut pulled = false;
        loop {
            // Subscribed before looking, so a seal in between is not missed.
            sealed.borrow_and_update();
            if let Lookup::Ready(lease) = self.node.store().lease(name) {
                *self.holdings.leases.entry(lease.info.id).or_default() += 1;
                self.node.metrics().lease_taken();
                return Ok((Response::Object(lease.info), Some(lease.segment)));
            }
            if !pulled
                && let Some(cluster) = self.ctx.cluster.clone()
                && !self.node.store().is_bound(name)
            {
                pulled = true;
                self.pull_for_get(&cluster, name, timeout_ms).await?;
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(Failure::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let message = if timeout_ms == 0 {
                        format!("no sealed object named {name:?}")
                    } else {
                        format!("no sealed object named {name:?} appeared within {timeout_ms} ms")
                    };
                    let code = if timeout_ms == 0 { ErrorCode::NotFound } else { ErrorCode::Timeout };
                    return Err(Failure::new(code, message));
                }
                changed = sealed.changed() => {
                    if changed.is_err() {
                        return Err(Failure::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
                    }
                }
            }
        }
    }

    /// A `get` of an object this node lacks: pull it from the cluster. With a zero timeout
    /// only an object that exists somewhere now is pulled (and then without a deadline
    /// shorter than [`PULL_FOR_GET_LIMIT`]); with a timeout, the pull may also wait for it
    /// to appear.
    async fn pull_for_get(&self, cluster: &Arc<Cluster>, name: &str, timeout_ms: u64) -> Result<(), Failure> {
        let timeout = if timeout_ms == 0 {
            let located = cluster.scheduler().locate(name).await.map_err(PullError::from)?;
            if located.is_empty() {
                return Err(Failure::new(ErrorCode::NotFound, format!("no node holds {name:?}")));
            }
            PULL_FOR_GET_LIMIT
        } else {
            Duration::from_millis(timeout_ms)
        };
        let shutdown = self.shutdown.clone();
        tokio::select! {
            result = cluster.puller().pull(name, timeout, true) => result.map(|_| ()).map_err(Failure::from),
            _ = shutdown.cancelled() => Err(Failure::new(ErrorCode::ShuttingDown, "the daemon is shutting down")),
        }
    }

    fn release(&mut self, id: ObjectId) {
        match self.holdings.leases.get_mut(&id) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.holdings.leases.remove(&id);
                }
                self.node.store().release(id);
                self.node.metrics().leases_returned(1);
            }
            None => warn!(conn_id = self.id, id, "release of a lease this connection does not hold"),
        }
    }

    /// Gives back everything the client held: on close, crash or kill -9 alike.
    fn release_all(&mut self) {
        let mut store = self.node.store();
        for (id, n) in self.holdings.leases.drain() {
            for _ in 0..n {
                store.release(id);
            }
            self.node.metrics().leases_returned(n);
        }
        for id in self.holdings.pending.drain() {
            let _ = store.abort(id, self.id);
        }
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    name::validate(name).map_err(|e| Failure::new(ErrorCode::InvalidName, e.to_string()))
}

fn log_evictions(evicted: &[String]) {
    for name in evicted {
        debug!(%name, "evicted to make room");
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Failure::new(ErrorCode::Internal, format!("worker failed: {e}")))
}
