//! The embedded S3-compatible endpoint: `s3s` speaks the S3 protocol over hyper (HTTP/1.1,
//! SigV4 checked against one access key), [`DirBackend`] keeps buckets as directories of a
//! root and objects as files under them.
//!
//! It lives in the tests crate (binary `store-s3`) because it is infrastructure for the demo,
//! the tests and the benches: the daemon and the client only ever talk to it as to any other
//! S3 over the network, so neither carries a server stack.
//!
//! Unlike `s3s-fs`, which streams files in 4 KiB reads, GETs read [`READ_BLOCK`] at a time on
//! the blocking pool and hand each block to hyper as one `Bytes`. ETags are derived from the
//! file's identity (device, inode, size, mtime): a replaced object gets a new one, and
//! `If-Match` on GET and HEAD is honoured, so a client can detect a replacement mid-download.
//!
//! Multipart uploads stage each part in a file under `ROOT/.uploads/UPLOAD_ID/` (a name no
//! bucket can have) and concatenate them in the kernel (`copy_file_range`) on completion;
//! the object's ETag is then the file-identity ETag that HEAD and GET return. As S3 does, a
//! part other than the last must be at least 5 MiB, and completion checks each part's ETag.
//!
//! Test knobs ([`Faults`]): answer the next N GET/HEAD requests (or N UploadParts) with 503
//! SlowDown, and sleep before every block of a GET body to make downloads slow enough to
//! disturb.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput, CompleteMultipartUploadOutput,
    CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, ETag,
    ETagCondition, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Bytes read from the file per step of a GET body.
pub const READ_BLOCK: usize = 4 * 1024 * 1024;

/// Credentials the test helpers use.
pub const TEST_ACCESS_KEY: &str = "store-test-access";
pub const TEST_SECRET_KEY: &str = "store-test-secret-key";

/// Faults injected by tests. Shared with the running server.
#[derive(Debug, Default)]
pub struct Faults {
    unavailable: AtomicU32,
    unavailable_gets: AtomicU32,
    block_delay_us: AtomicU64,
    served_503: AtomicU64,
    body_bytes: AtomicU64,
    unavailable_parts: AtomicU32,
    uploaded_bytes: AtomicU64,
}

impl Faults {
    /// The next `n` GET and HEAD requests answer 503 SlowDown.
    pub fn fail_next(&self, n: u32) {
        self.unavailable.store(n, Ordering::SeqCst);
    }

    /// The next `n` GET requests (not HEADs) answer 503 SlowDown.
    pub fn fail_next_gets(&self, n: u32) {
        self.unavailable_gets.store(n, Ordering::SeqCst);
    }

    /// Sleep this long before each [`READ_BLOCK`] of a GET body.
    pub fn set_block_delay(&self, delay: Duration) {
        self.block_delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// 503 answers given so far.
    pub fn served_503(&self) -> u64 {
        self.served_503.load(Ordering::SeqCst)
    }

    /// GET body bytes read from files so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    /// The next `n` UploadPart requests answer 503 SlowDown.
    pub fn fail_next_parts(&self, n: u32) {
        self.unavailable_parts.store(n, Ordering::SeqCst);
    }

    /// Request body bytes of PutObject and UploadPart stored so far.
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded_bytes.load(Ordering::SeqCst)
    }

    fn take_unavailable_part(&self) -> bool {
        let took =
            self.unavailable_parts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if took {
            self.served_503.fetch_add(1, Ordering::SeqCst);
        }
        took
    }

    fn take_unavailable(&self, get: bool) -> bool {
        let take = |c: &AtomicU32| c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        let took = take(&self.unavailable) || (get && take(&self.unavailable_gets));
        if took {
            self.served_503.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

/// Buckets are the root's directories; objects are files under them.
#[derive(Clone, Debug)]
pub struct DirBackend {
    root: PathBuf,
    faults: Arc<Faults>,
}

impl DirBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), faults: Arc::default() }
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn bucket_dir(&self, bucket: &str) -> S3Result<PathBuf> {
        if bucket.is_empty() || bucket.contains('/') || bucket.starts_with('.') {
            return Err(s3_error!(InvalidBucketName));
        }
        Ok(self.root.join(bucket))
    }

    fn existing_bucket(&self, bucket: &str) -> S3Result<PathBuf> {
        let dir = self.bucket_dir(bucket)?;
        if !dir.is_dir() {
            return Err(s3_error!(NoSuchBucket, "bucket {bucket} does not exist"));
        }
        Ok(dir)
    }

    /// The file of `key`; keys with `..`, empty or absolute components are refused.
    fn object_path(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        let dir = self.existing_bucket(bucket)?;
        let rel = Path::new(key);
        let clean = !key.is_empty()
            && !key.ends_with('/')
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
            && !key.split('/').any(|p| p.is_empty() || p.starts_with(".tmp-"));
        if !clean {
            return Err(s3_error!(InvalidArgument, "unsupported key {key:?}"));
        }
        Ok(dir.join(rel))
    }

    fn open(&self, bucket: &str, key: &str) -> S3Result<(std::fs::File, std::fs::Metadata)> {
        let path = self.object_path(bucket, key)?;
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => s3_error!(NoSuchKey, "no key {key}"),
            _ => s3_error!(e, InternalError),
        })?;
        let meta = file.metadata().map_err(|e| s3_error!(e, InternalError))?;
        if !meta.is_file() {
            return Err(s3_error!(NoSuchKey, "no key {key}"));
        }
        Ok((file, meta))
    }
}

/// Directory of the multipart uploads under way (bucket names cannot start with `.`).
pub const UPLOADS_DIR: &str = ".uploads";
/// S3's smallest part other than the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The file in an upload's directory naming its bucket and key.
const TARGET_FILE: &str = "target";

impl DirBackend {
    /// The staging directory of `upload_id`, checked to belong to `bucket`/`key`.
    fn upload_dir(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<PathBuf> {
        let valid = !upload_id.is_empty() && upload_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let no_such = || s3_error!(NoSuchUpload, "no upload {upload_id} of {bucket}/{key}");
        if !valid {
            return Err(no_such());
        }
        let dir = self.root.join(UPLOADS_DIR).join(upload_id);
        let target = std::fs::read_to_string(dir.join(TARGET_FILE)).map_err(|_| no_such())?;
        if target != format!("{bucket}\n{key}") {
            return Err(no_such());
        }
        Ok(dir)
    }

    /// Writes a request body to `file`; the byte count.
    async fn write_body(&self, file: &std::fs::File, body: Option<StreamingBlob>) -> S3Result<u64> {
        let mut offset = 0u64;
        if let Some(mut body) = body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "body broke: {e}"))?;
                file.write_all_at(&chunk, offset).map_err(|e| s3_error!(e, InternalError))?;
                offset += chunk.len() as u64;
            }
        }
        self.faults.uploaded_bytes.fetch_add(offset, Ordering::Relaxed);
        Ok(offset)
    }
}

/// Multipart uploads staged under `root` and not yet completed or aborted.
pub fn open_uploads(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join(UPLOADS_DIR)) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

fn new_upload_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{nanos:x}-{:x}-{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn part_file(dir: &Path, number: i32) -> PathBuf {
    dir.join(format!("part-{number:05}"))
}

fn etag_of(meta: &std::fs::Metadata) -> ETag {
    let mtime = (meta.mtime() as u64).wrapping_mul(1_000_000_000).wrapping_add(meta.mtime_nsec() as u64);
    let mixed = [meta.dev(), meta.ino(), meta.size(), mtime]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, v| (h ^ v).wrapping_mul(0x0000_0100_0000_01b3));
    ETag::Strong(format!("{:016x}{:016x}", mixed, meta.size()))
}

fn last_modified(meta: &std::fs::Metadata) -> Option<Timestamp> {
    meta.modified().ok().map(Timestamp::from)
}

fn check_if_match(cond: Option<&ETagCondition>, etag: &ETag) -> S3Result<()> {
    match cond {
        Some(ETagCondition::ETag(want)) if want.value() != etag.value() => {
            Err(s3_error!(PreconditionFailed, "the object's ETag is not {}", want.value()))
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl S3 for DirBackend {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let dir = self.bucket_dir(&req.input.bucket)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(S3Response::new(CreateBucketOutput::default())),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(s3_error!(BucketAlreadyOwnedByYou)),
            Err(e) => Err(s3_error!(e, InternalError)),
        }
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.existing_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        if self.faults.take_unavailable(false) {
            return Err(s3_error!(SlowDown, "injected"));
        }
        let (_, meta) = self.open(&req.input.bucket, &req.input.key)?;
        let etag = etag_of(&meta);
        check_if_match(req.input.if_match.as_ref(), &etag)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(meta.len() as i64),
            e_tag: Some(etag),
            last_modified: last_modified(&meta),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        if self.faults.take_unavailable(true) {
            return Err(s3_error!(SlowDown, "injected"));
        }
        let (file, meta) = self.open(&req.input.bucket, &req.input.key)?;
        let etag = etag_of(&meta);
        check_if_match(req.input.if_match.as_ref(), &etag)?;
        let size = meta.len();
        let (range, content_range) = match &req.input.range {
            None => (0..size, None),
            Some(r) => {
                let range = r.check(size).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!("bytes {}-{}/{size}", range.start, range.end - 1);
                (range, Some(cr))
            }
        };
        let len = range.end - range.start;
        let body = block_stream(Arc::new(file), range, self.faults.clone());
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(len as i64),
            content_range,
            e_tag: Some(etag),
            last_modified: last_modified(&meta),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let path = self.object_path(&input.bucket, &input.key)?;
        let parent = path.parent().ok_or_else(|| s3_error!(InvalidArgument))?.to_owned();
        std::fs::create_dir_all(&parent).map_err(|e| s3_error!(e, InternalError))?;
        let tmp =
            tempfile::Builder::new().prefix(".tmp-").tempfile_in(&parent).map_err(|e| s3_error!(e, InternalError))?;
        let offset = self.write_body(tmp.as_file(), input.body).await?;
        if input.content_length.is_some_and(|l| l as u64 != offset) {
            return Err(s3_error!(IncompleteBody));
        }
        tmp.persist(&path).map_err(|e| s3_error!(e.error, InternalError))?;
        let meta = std::fs::metadata(&path).map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(etag_of(&meta)), ..Default::default() }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        // Checks the bucket and the key now, as S3 does, rather than at completion.
        self.object_path(&input.bucket, &input.key)?;
        let id = new_upload_id();
        let dir = self.root.join(UPLOADS_DIR).join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| s3_error!(e, InternalError))?;
        std::fs::write(dir.join(TARGET_FILE), format!("{}\n{}", input.bucket, input.key))
            .map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        if self.faults.take_unavailable_part() {
            // Read the body first: answering while the client is still sending makes it see
            // a broken pipe instead of the 503.
            if let Some(mut body) = input.body {
                while let Some(Ok(_)) = body.next().await {}
            }
            return Err(s3_error!(SlowDown, "injected"));
        }
        let dir = self.upload_dir(&input.bucket, &input.key, &input.upload_id)?;
        if !(1..=10_000).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part number {} is not in 1..=10000", input.part_number));
        }
        // Staged beside the part and renamed over it: a retried part replaces the old one
        // whole, and gets a new ETag.
        let tmp =
            tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(|e| s3_error!(e, InternalError))?;
        let len = self.write_body(tmp.as_file(), input.body).await?;
        if input.content_length.is_some_and(|l| l as u64 != len) {
            return Err(s3_error!(IncompleteBody));
        }
        let path = part_file(&dir, input.part_number);
        tmp.persist(&path).map_err(|e| s3_error!(e.error, InternalError))?;
        let meta = std::fs::metadata(&path).map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(etag_of(&meta)), ..Default::default() }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let dir = self.upload_dir(&input.bucket, &input.key, &input.upload_id)?;
        let path = self.object_path(&input.bucket, &input.key)?;
        let parts = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts listed"));
        }
        let mut files = Vec::with_capacity(parts.len());
        let mut last = 0;
        for (i, part) in parts.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= last {
                return Err(s3_error!(InvalidPartOrder, "part {number} after part {last}"));
            }
            last = number;
            let file = part_file(&dir, number);
            let meta =
                std::fs::metadata(&file).map_err(|_| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
            if part.e_tag.as_ref().is_none_or(|e| e.value() != etag_of(&meta).value()) {
                return Err(s3_error!(InvalidPart, "part {number}: ETag differs from the uploaded part's"));
            }
            if i + 1 < parts.len() && meta.len() < MIN_PART_SIZE {
                return Err(s3_error!(EntityTooSmall, "part {number} is {} bytes, below 5 MiB", meta.len()));
            }
            files.push(file);
        }
        let parent = path.parent().ok_or_else(|| s3_error!(InvalidArgument))?.to_owned();
        let target = path.clone();
        let joined = tokio::task::spawn_blocking(move || -> io::Result<std::fs::Metadata> {
            std::fs::create_dir_all(&parent)?;
            let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&parent)?;
            for file in &files {
                // File to file: copy_file_range, in the kernel.
                io::copy(&mut std::fs::File::open(file)?, tmp.as_file_mut())?;
            }
            tmp.persist(&target).map_err(|e| e.error)?;
            std::fs::metadata(&target)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        let meta = joined.map_err(|e| s3_error!(e, InternalError))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag_of(&meta)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let dir = self.upload_dir(&input.bucket, &input.key, &input.upload_id)?;
        std::fs::remove_dir_all(&dir).map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

/// The body of a GET: `range` of `file`, [`READ_BLOCK`] per read on the blocking pool.
fn block_stream(
    file: Arc<std::fs::File>,
    range: std::ops::Range<u64>,
    faults: Arc<Faults>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync + 'static {
    futures_util::stream::unfold((file, range.start), move |(file, pos)| {
        let faults = faults.clone();
        let end = range.end;
        async move {
            if pos >= end {
                return None;
            }
            let delay = faults.block_delay_us.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_micros(delay)).await;
            }
            let n = (end - pos).min(READ_BLOCK as u64) as usize;
            let reader = file.clone();
            let read = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                let mut buf = vec![0u8; n];
                reader.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match read {
                Ok(bytes) => {
                    faults.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(bytes), (file, pos + n as u64)))
                }
                // Ends the stream after the error: the response is cut short.
                Err(e) => Some((Err(e), (file, end))),
            }
        }
    })
}

/// Serves S3 on `listener` until `shutdown`; in-flight connections end with it.
pub async fn serve(
    listener: TcpListener,
    backend: DirBackend,
    access_key: &str,
    secret_key: &str,
    shutdown: CancellationToken,
) {
    let mut builder = s3s::service::S3ServiceBuilder::new(backend);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "S3 connection ended with an error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// An S3 endpoint running on a runtime of its own, in this process.
#[derive(Debug)]
pub struct EmbeddedS3 {
    addr: SocketAddr,
    root: PathBuf,
    faults: Arc<Faults>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// Serves `root` on `addr` (port 0: any free port) with one access key.
    pub fn start(root: &Path, addr: SocketAddr, access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let listener = rt.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let backend = DirBackend::new(root);
        let faults = backend.faults().clone();
        let shutdown = CancellationToken::new();
        let (token, ak, sk) = (shutdown.clone(), access_key.to_owned(), secret_key.to_owned());
        let thread = std::thread::Builder::new().name("store-s3".into()).spawn(move || {
            rt.block_on(serve(listener, backend, &ak, &sk, token));
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(Self { addr, root: root.to_owned(), faults, shutdown, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Stops serving and cuts every open connection, as a killed server would.
    pub fn kill(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An endpoint on a free loopback port over a fresh temporary directory, with the test
/// credentials and a bucket `bucket`.
#[derive(Debug)]
pub struct TestS3 {
    pub server: EmbeddedS3,
    pub dir: tempfile::TempDir,
}

impl TestS3 {
    pub const BUCKET: &'static str = "bucket";

    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-s3").tempdir()?;
        std::fs::create_dir(dir.path().join(Self::BUCKET))?;
        let server = EmbeddedS3::start(dir.path(), ([127, 0, 0, 1], 0).into(), TEST_ACCESS_KEY, TEST_SECRET_KEY)?;
        Ok(Self { server, dir })
    }

    /// Restarts the endpoint on the same port after [`EmbeddedS3::kill`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let addr = self.server.addr();
        self.server.kill();
        self.server = EmbeddedS3::start(self.dir.path(), addr, TEST_ACCESS_KEY, TEST_SECRET_KEY)?;
        Ok(())
    }

    /// Multipart uploads created and neither completed nor aborted.
    pub fn open_uploads(&self) -> Vec<String> {
        open_uploads(self.dir.path())
    }

    /// The stored bytes of an object, as a later GET would see them.
    pub fn read(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.path().join(Self::BUCKET).join(key))?)
    }

    /// Writes an object atomically (a replacement gets a new ETag).
    pub fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.path().join(Self::BUCKET).join(key);
        let parent = path.parent().unwrap_or(self.dir.path());
        std::fs::create_dir_all(parent)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent)?;
        io::Write::write_all(&mut tmp, bytes)?;
        tmp.persist(&path)?;
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// Client settings for this endpoint with the test credentials.
    pub fn config(&self) -> store_client::s3::S3Config {
        store_client::s3::S3Config {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            credentials: Some(store_client::s3::StaticCredentials {
                access_key_id: TEST_ACCESS_KEY.into(),
                secret_access_key: TEST_SECRET_KEY.into(),
            }),
            ..Default::default()
        }
    }

    /// Environment for a process (daemon, CLI) talking to this endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (store_client::s3::ENDPOINT_ENV, self.endpoint()),
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}
