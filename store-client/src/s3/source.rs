//! What the daemon reads S3 objects through: the [`ObjectSource`] trait, its production
//! implementation on [`S3Reader`], and two test sources that need no endpoint.
//!
//! As mountpoint-s3-client's `ObjectClient` (with its `MockClient` and `FailureClient`),
//! the trait covers only the operations a reader needs: a HEAD that fixes size and ETag, and
//! ranged reads straight into the destination. [`MemorySource`] holds objects in memory;
//! [`FailingSource`] wraps any source and fails the operations a callback picks, so a test can
//! drive every error branch of a caller without starting an endpoint.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::config::DEFAULT_PART_SIZE;
use super::error::S3Error;
use super::reader::{DownloadStats, ObjectMeta, S3Reader};
use super::url::S3Url;

/// A boxed future that can move between threads: what [`ObjectSource`]'s methods return.
pub use futures_util::future::BoxFuture;

/// A store of objects readable by range: S3 in production, memory in tests.
pub trait ObjectSource: Send + Sync + fmt::Debug {
    /// The object's size and ETag (the version every later read must match).
    fn head<'a>(&'a self, url: &'a S3Url) -> BoxFuture<'a, Result<ObjectMeta, S3Error>>;

    /// Reads bytes `offset..offset + dst.len()` of the object version `meta` into `dst`;
    /// `landed(offset, len)` is called once per part when all of it is in `dst`, with object
    /// offsets. A read past the end is [`S3Error::Destination`]; an object that is no longer
    /// the version `meta` names is [`S3Error::Changed`].
    fn read_range_into<'a>(
        &'a self,
        url: &'a S3Url,
        meta: &'a ObjectMeta,
        offset: u64,
        dst: &'a mut [u8],
        landed: &'a (dyn Fn(u64, u64) + Sync),
    ) -> BoxFuture<'a, Result<DownloadStats, S3Error>>;
}

impl ObjectSource for S3Reader {
    fn head<'a>(&'a self, url: &'a S3Url) -> BoxFuture<'a, Result<ObjectMeta, S3Error>> {
        Box::pin(S3Reader::head(self, url))
    }

    fn read_range_into<'a>(
        &'a self,
        url: &'a S3Url,
        meta: &'a ObjectMeta,
        offset: u64,
        dst: &'a mut [u8],
        landed: &'a (dyn Fn(u64, u64) + Sync),
    ) -> BoxFuture<'a, Result<DownloadStats, S3Error>> {
        Box::pin(self.download_range_into(url, meta, offset, dst, landed))
    }
}

/// Content and ETag of each object, by bucket and key.
type Objects = HashMap<(String, String), (Vec<u8>, String)>;

/// Objects held in memory, keyed by bucket and key; reads are cut into parts of
/// `part_size` bytes, each reported to `landed` as the S3 reader reports its ranged GETs.
#[derive(Debug)]
pub struct MemorySource {
    part_size: u64,
    objects: Mutex<Objects>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new(DEFAULT_PART_SIZE)
    }
}

impl MemorySource {
    /// An empty source whose reads land in parts of `part_size` bytes (at least 1).
    pub fn new(part_size: u64) -> Self {
        Self { part_size: part_size.max(1), objects: Mutex::new(HashMap::new()) }
    }

    /// Stores (or replaces) the object at `url`; its ETag is derived from the content, so
    /// replacing it with other bytes makes reads of the old version fail as changed.
    pub fn put(&self, url: &S3Url, bytes: impl Into<Vec<u8>>) -> ObjectMeta {
        let bytes = bytes.into();
        let etag = format!("\"{}\"", &blake3::hash(&bytes).to_hex()[..32]);
        let meta = ObjectMeta { size: bytes.len() as u64, etag: etag.clone() };
        self.lock().insert((url.bucket.clone(), url.key.clone()), (bytes, etag));
        meta
    }

    /// Removes the object at `url`; true if it was there.
    pub fn remove(&self, url: &S3Url) -> bool {
        self.lock().remove(&(url.bucket.clone(), url.key.clone())).is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lookup(&self, url: &S3Url) -> Result<(Vec<u8>, String), S3Error> {
        let objects = self.lock();
        if let Some(found) = objects.get(&(url.bucket.clone(), url.key.clone())) {
            return Ok(found.clone());
        }
        if objects.keys().any(|(bucket, _)| *bucket == url.bucket) {
            Err(S3Error::NoSuchKey { bucket: url.bucket.clone(), key: url.key.clone() })
        } else {
            Err(S3Error::NoSuchBucket { bucket: url.bucket.clone() })
        }
    }

    fn read(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        offset: u64,
        dst: &mut [u8],
        landed: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<DownloadStats, S3Error> {
        let start = Instant::now();
        if offset.checked_add(dst.len() as u64).is_none_or(|end| end > meta.size) {
            return Err(S3Error::Destination { have: offset.saturating_add(dst.len() as u64), want: meta.size });
        }
        let (bytes, etag) = self.lookup(url)?;
        if etag != meta.etag || bytes.len() as u64 != meta.size {
            return Err(S3Error::Changed {
                bucket: url.bucket.clone(),
                key: url.key.clone(),
                detail: format!("ETag {etag} instead of {}", meta.etag),
            });
        }
        let part_size = usize::try_from(self.part_size).unwrap_or(usize::MAX);
        let mut parts = 0;
        let mut at = offset;
        for part in dst.chunks_mut(part_size) {
            let from = at as usize;
            part.copy_from_slice(&bytes[from..from + part.len()]);
            landed(at, part.len() as u64);
            at += part.len() as u64;
            parts += 1;
        }
        Ok(DownloadStats { bytes: dst.len() as u64, parts, retries: 0, elapsed: start.elapsed() })
    }
}

impl ObjectSource for MemorySource {
    fn head<'a>(&'a self, url: &'a S3Url) -> BoxFuture<'a, Result<ObjectMeta, S3Error>> {
        Box::pin(async move { self.lookup(url).map(|(bytes, etag)| ObjectMeta { size: bytes.len() as u64, etag }) })
    }

    fn read_range_into<'a>(
        &'a self,
        url: &'a S3Url,
        meta: &'a ObjectMeta,
        offset: u64,
        dst: &'a mut [u8],
        landed: &'a (dyn Fn(u64, u64) + Sync),
    ) -> BoxFuture<'a, Result<DownloadStats, S3Error>> {
        Box::pin(async move { self.read(url, meta, offset, dst, landed) })
    }
}

/// An operation of an [`ObjectSource`], as [`FailingSource`]'s callback sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceOp {
    Head,
    Read,
}

/// Decides whether an operation fails: the operation, the object and the byte range
/// (empty for a HEAD); `Some(error)` fails it with that error before the inner source is asked.
pub type FailWhen = dyn Fn(SourceOp, &S3Url, Range<u64>) -> Option<S3Error> + Send + Sync;

/// Wraps a source and fails the operations its callback picks (as mountpoint-s3-client's
/// `FailureClient`); the others go to the inner source unchanged.
pub struct FailingSource<S> {
    inner: S,
    fail: Box<FailWhen>,
}

impl<S> FailingSource<S> {
    pub fn new(
        inner: S,
        fail: impl Fn(SourceOp, &S3Url, Range<u64>) -> Option<S3Error> + Send + Sync + 'static,
    ) -> Self {
        Self { inner, fail: Box::new(fail) }
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for FailingSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailingSource").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S: ObjectSource> ObjectSource for FailingSource<S> {
    fn head<'a>(&'a self, url: &'a S3Url) -> BoxFuture<'a, Result<ObjectMeta, S3Error>> {
        match (self.fail)(SourceOp::Head, url, 0..0) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.head(url),
        }
    }

    fn read_range_into<'a>(
        &'a self,
        url: &'a S3Url,
        meta: &'a ObjectMeta,
        offset: u64,
        dst: &'a mut [u8],
        landed: &'a (dyn Fn(u64, u64) + Sync),
    ) -> BoxFuture<'a, Result<DownloadStats, S3Error>> {
        match (self.fail)(SourceOp::Read, url, offset..offset.saturating_add(dst.len() as u64)) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.read_range_into(url, meta, offset, dst, landed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn url(s: &str) -> S3Url {
        s.parse().expect("url")
    }

    #[tokio::test]
    async fn memory_source_heads_and_reads_in_parts() {
        let source = MemorySource::new(4);
        let bytes: Vec<u8> = (0..10u8).collect();
        let meta = source.put(&url("s3://b/k"), bytes.clone());
        let source: Arc<dyn ObjectSource> = Arc::new(source);
        assert_eq!(source.head(&url("s3://b/k")).await.expect("head"), meta);
        let landed = Mutex::new(Vec::new());
        let mut dst = vec![0u8; 7];
        let note = |at: u64, len: u64| landed.lock().expect("lock").push((at, len));
        let stats = source.read_range_into(&url("s3://b/k"), &meta, 2, &mut dst, &note).await.expect("read");
        assert_eq!(dst, bytes[2..9]);
        assert_eq!((stats.bytes, stats.parts, stats.retries), (7, 2, 0));
        assert_eq!(*landed.lock().expect("lock"), vec![(2, 4), (6, 3)]);
    }

    #[tokio::test]
    async fn memory_source_reports_missing_changed_and_out_of_range() {
        let source = MemorySource::default();
        assert!(matches!(source.head(&url("s3://none/k")).await, Err(S3Error::NoSuchBucket { .. })));
        let meta = source.put(&url("s3://b/k"), b"old".to_vec());
        assert!(matches!(source.head(&url("s3://b/other")).await, Err(S3Error::NoSuchKey { .. })));
        let mut dst = [0u8; 2];
        assert!(matches!(
            source.read_range_into(&url("s3://b/k"), &meta, 2, &mut dst, &|_, _| {}).await,
            Err(S3Error::Destination { have: 4, want: 3 })
        ));
        source.put(&url("s3://b/k"), b"new".to_vec());
        assert!(matches!(
            source.read_range_into(&url("s3://b/k"), &meta, 0, &mut dst, &|_, _| {}).await,
            Err(S3Error::Changed { .. })
        ));
        assert!(source.remove(&url("s3://b/k")));
        assert!(matches!(source.head(&url("s3://b/k")).await, Err(S3Error::NoSuchBucket { .. })));
    }

    #[tokio::test]
    async fn failing_source_fails_only_what_its_callback_picks() {
        let memory = MemorySource::new(2);
        let meta = memory.put(&url("s3://b/k"), b"abcdef".to_vec());
        // Reads touching byte 4 fail as throttled; HEADs and other reads pass through.
        let source = FailingSource::new(memory, |op, u, range| {
            (op == SourceOp::Read && range.contains(&4)).then(|| S3Error::GaveUp {
                bucket: u.bucket.clone(),
                key: u.key.clone(),
                attempts: 8,
                message: "HTTP 503".into(),
            })
        });
        assert_eq!(source.head(&url("s3://b/k")).await.expect("head"), meta);
        let mut dst = [0u8; 4];
        source.read_range_into(&url("s3://b/k"), &meta, 0, &mut dst, &|_, _| {}).await.expect("first four bytes");
        assert_eq!(&dst, b"abcd");
        let mut dst = [0u8; 2];
        let err = source.read_range_into(&url("s3://b/k"), &meta, 4, &mut dst, &|_, _| {}).await;
        assert!(matches!(err, Err(S3Error::GaveUp { attempts: 8, .. })), "{err:?}");
        assert_eq!(dst, [0, 0], "a failed read writes nothing");
        assert!(format!("{source:?}").starts_with("FailingSource"));
    }
}
