//! Ingest from S3: a fresh memfd is filled by the S3 engine's parallel ranged GETs through a
//! writable mapping, each 4 MiB chunk hashed on another thread as soon as all of its bytes
//! have landed, then unmapped and sealed. Hashing before sealing is sound for the same reason
//! as in [`crate::ingest::copy_hash_and_seal`]: the daemon created the memfd and no one else
//! holds a descriptor to it. Any error drops the memfd: nothing is bound or sealed.
//!
//! The S3 client is built on first use from the daemon's `--s3-*` settings (each with its
//! `STORE_S3_*` variable, read once by the command line); the credentials always come from
//! the standard AWS chain (`AWS_ACCESS_KEY_ID`, ...). The origin of every ingested object is
//! stored on the object (`Store::set_origin`). S3 bytes are counted in
//! `store_transfer_bytes_total{source="s3",direction="in"}` as each ranged GET part lands,
//! so a download's rate shows while it runs (not at the seal).

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use store_client::manifest::{self, Digest, Manifest, ManifestError};
use store_client::s3::{DownloadStats, ObjectMeta, S3Config, S3Error, S3Reader, S3Url};
use store_client::sys::{self, ReadOnlyMapping, WritableMapping};
use store_client::wire::object::{ErrorCode, S3Origin};
use thiserror::Error;
use tokio::sync::OnceCell;

#[derive(Debug, Error)]
pub enum S3IngestError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("sealing the object failed: {0}")]
    Seal(#[from] sys::SealError),
    #[error("i/o error while filling the object: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("hashing thread failed")]
    Hasher,
    #[error("chunks {first}..{end} are not a share of an object of {count} chunks")]
    Share { first: u64, end: u64, count: u64 },
    #[error("{url} is not on this daemon's S3 allow-list (--s3-allow)")]
    NotAllowed { url: String },
}

impl S3IngestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            S3IngestError::S3(S3Error::InvalidUrl(_) | S3Error::InvalidSetting { .. }) => ErrorCode::BadRequest,
            S3IngestError::S3(S3Error::NoSuchBucket { .. } | S3Error::NoSuchKey { .. }) => ErrorCode::NotFound,
            S3IngestError::S3(S3Error::AccessDenied { .. }) => ErrorCode::PermissionDenied,
            S3IngestError::S3(_) => ErrorCode::OriginFailed,
            S3IngestError::Io(_) | S3IngestError::Seal(_) => ErrorCode::Io,
            S3IngestError::Manifest(_) | S3IngestError::Hasher => ErrorCode::Internal,
            S3IngestError::Share { .. } => ErrorCode::BadRequest,
            S3IngestError::NotAllowed { .. } => ErrorCode::PermissionDenied,
        }
    }
}

/// A filled, hashed and sealed memfd, ready to be adopted under a name.
#[derive(Debug)]
pub struct Fetched {
    pub fd: OwnedFd,
    pub manifest: Manifest,
    pub mapping: ReadOnlyMapping,
    pub origin: S3Origin,
    pub stats: DownloadStats,
}

/// Which S3 objects this daemon may be asked to read, by a local client or by a peer
/// (`--s3-allow`): entries `bucket` (any key), `bucket/prefix` (keys starting with
/// `prefix`, compared as strings: end it with `/` for a folder) or `*`. Empty: any object
/// the daemon's credentials can read (the trust model in README.md says why that is the
/// default and when to set it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3AllowList {
    /// (bucket, key prefix); bucket `*` matches every bucket.
    entries: Vec<(String, String)>,
}

impl S3AllowList {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut entries = Vec::new();
        for item in items.iter().map(|i| i.as_ref().trim()).filter(|i| !i.is_empty()) {
            let item = item.strip_prefix("s3://").unwrap_or(item);
            let (bucket, prefix) = item.split_once('/').unwrap_or((item, ""));
            if bucket.is_empty() || (bucket == "*" && !prefix.is_empty()) {
                return Err(format!("bad --s3-allow entry {item:?}: expected BUCKET, BUCKET/PREFIX or *"));
            }
            entries.push((bucket.to_owned(), prefix.to_owned()));
        }
        Ok(Self { entries })
    }

    pub fn allows(&self, url: &S3Url) -> bool {
        self.entries.is_empty()
            || self.entries.iter().any(|(bucket, prefix)| {
                bucket == "*" || (*bucket == url.bucket && url.key.starts_with(prefix.as_str()))
            })
    }
}

/// The daemon's S3 side: one client for its life, behind the allow-list.
#[derive(Debug, Default)]
pub struct S3Ingest {
    reader: OnceCell<S3Reader>,
    /// Every read goes through [`Self::parse_allowed`], which checks this.
    allow: S3AllowList,
    /// The daemon's `--s3-*` settings.
    config: S3Config,
    metrics: Arc<crate::metrics::DaemonMetrics>,
}

impl S3Ingest {
    pub fn new(config: S3Config, allow: S3AllowList, metrics: Arc<crate::metrics::DaemonMetrics>) -> Self {
        Self { config, allow, metrics, ..Self::default() }
    }

    /// Parses `url` and checks it against the allow-list: the one door of every S3 read.
    fn parse_allowed(&self, url: &str) -> Result<S3Url, S3IngestError> {
        let parsed: S3Url = url.parse()?;
        if !self.allow.allows(&parsed) {
            return Err(S3IngestError::NotAllowed { url: parsed.to_string() });
        }
        Ok(parsed)
    }

    async fn reader(&self) -> Result<&S3Reader, S3Error> {
        self.reader.get_or_try_init(|| S3Reader::new(self.config.clone())).await
    }

    /// `bytes` of an object arrived from S3 (a ranged GET part landed).
    pub fn count_landed(&self, bytes: u64) {
        use crate::metrics::{Direction, Source};
        self.metrics.transfer_bytes(Source::S3, Direction::In, bytes);
    }

    /// The reader for one request: the daemon's, or one with overridden part size and
    /// concurrency.
    async fn reader_with(&self, part_size: Option<u64>, concurrency: Option<u32>) -> Result<S3Reader, S3Error> {
        let base = self.reader().await?;
        if part_size.is_some() || concurrency.is_some() {
            let config = base.config().clone().with_overrides(part_size, concurrency.map(|c| c as usize))?;
            S3Reader::new(config).await
        } else {
            Ok(base.clone())
        }
    }

    /// Size and ETag of the object at `url`.
    pub async fn head(&self, url: &str) -> Result<S3Origin, S3IngestError> {
        let parsed = self.parse_allowed(url)?;
        let meta = self.reader().await?.head(&parsed).await?;
        Ok(S3Origin { url: parsed.to_string(), etag: meta.etag, size: meta.size })
    }

    /// Downloads `url` into a new sealed memfd (checking `room(size)` before allocating).
    pub async fn fetch(
        &self,
        url: &str,
        chunk_size: u64,
        part_size: Option<u64>,
        concurrency: Option<u32>,
        room: impl FnOnce(u64) -> Result<(), crate::store::StoreError>,
    ) -> Result<Result<Fetched, crate::store::StoreError>, S3IngestError> {
        let parsed = self.parse_allowed(url)?;
        let reader = self.reader_with(part_size, concurrency).await?;
        let meta = reader.head(&parsed).await?;
        if let Err(e) = room(meta.size) {
            return Ok(Err(e));
        }
        let count = manifest::chunk_count(meta.size, chunk_size);
        let filled =
            fill_and_hash(&reader, &parsed, &meta, chunk_size, 0..count, &|n| self.count_landed(n), None).await?;
        sys::seal_immutable(filled.fd.as_fd())?;
        let manifest = Manifest::from_chunk_hashes(meta.size, chunk_size, filled.hashes)?;
        let origin = S3Origin { url: parsed.to_string(), etag: meta.etag, size: meta.size };
        Ok(Ok(Fetched { fd: filled.fd, manifest, mapping: filled.mapping, origin, stats: filled.stats }))
    }

    /// Downloads chunks `chunks` of the object `origin` names, not sealed: the first phase
    /// of a cooperative fetch. Into `into` (a memfd of the object's size and its mapping,
    /// from an earlier share) if given, else into a new memfd of the object's full size (the
    /// pages of other chunks stay unallocated) after checking `room(size)`.
    pub async fn fetch_share(
        &self,
        origin: &S3Origin,
        chunk_size: u64,
        chunks: Range<u64>,
        into: Option<(OwnedFd, ReadOnlyMapping)>,
        room: impl FnOnce(u64) -> Result<(), crate::store::StoreError>,
    ) -> Result<Result<Filled, crate::store::StoreError>, S3IngestError> {
        let parsed = self.parse_allowed(&origin.url)?;
        let reader = self.reader().await?.clone();
        let meta = ObjectMeta { size: origin.size, etag: origin.etag.clone() };
        if into.is_none()
            && let Err(e) = room(meta.size)
        {
            return Ok(Err(e));
        }
        let counted = |n| self.count_landed(n);
        Ok(Ok(fill_and_hash(&reader, &parsed, &meta, chunk_size, chunks, &counted, into).await?))
    }

    /// Reads bytes `range` of the object `origin` names into `dst` (its length): a receiver
    /// whose peers hold no copy of some chunks falls back to the S3 object they came from.
    pub async fn read_range(&self, origin: &S3Origin, offset: u64, dst: &mut [u8]) -> Result<u64, S3IngestError> {
        let parsed = self.parse_allowed(&origin.url)?;
        let meta = ObjectMeta { size: origin.size, etag: origin.etag.clone() };
        let counted = |_, len| self.count_landed(len);
        let stats = self.reader().await?.download_range_into(&parsed, &meta, offset, dst, &counted).await?;
        Ok(stats.bytes)
    }
}

/// A memfd filled with some chunks of an S3 object, not sealed, and their hashes.
#[derive(Debug)]
pub struct Filled {
    pub fd: OwnedFd,
    pub mapping: ReadOnlyMapping,
    /// Hashes of the chunks downloaded, in order.
    pub hashes: Vec<Digest>,
    pub stats: DownloadStats,
}

/// Fills chunks `chunks` of `dest` (a memfd of the object's size and a mapping of it; a new
/// one if `None`) with parallel ranged GETs, each chunk hashed on another thread as soon as
/// all of its bytes landed; `landed(bytes)` as each part lands (the metrics).
async fn fill_and_hash(
    reader: &S3Reader,
    url: &S3Url,
    meta: &ObjectMeta,
    chunk_size: u64,
    chunks: Range<u64>,
    landed: &(dyn Fn(u64) + Sync),
    dest: Option<(OwnedFd, ReadOnlyMapping)>,
) -> Result<Filled, S3IngestError> {
    let size = meta.size;
    let count = manifest::chunk_count(size, chunk_size);
    if chunks.start > chunks.end || chunks.end > count {
        return Err(S3IngestError::Share { first: chunks.start, end: chunks.end, count });
    }
    let (fd, hashing) = match dest {
        Some((fd, mapping)) if mapping.len() as u64 == size => (fd, mapping),
        Some(_) => return Err(S3IngestError::Share { first: chunks.start, end: chunks.end, count }),
        None => {
            let fd = sys::create_memfd(size)?;
            let mapping = ReadOnlyMapping::new_exclusive(fd.as_fd(), size)?;
            (fd, mapping)
        }
    };
    let hashing = Arc::new(hashing);
    let mut writable = WritableMapping::new(fd.as_fd(), size)?;
    let first_byte = (chunks.start * chunk_size).min(size);
    let end_byte = (chunks.end * chunk_size).min(size);

    let (landed_tx, landed_rx) = mpsc::channel::<u64>();
    let map = hashing.clone();
    let wanted = chunks.end - chunks.start;
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hashed = Vec::with_capacity(wanted as usize);
        for index in landed_rx {
            let bytes = manifest::chunk_bytes(&map, index, chunk_size);
            hashed.push((index, manifest::chunk_hash(index, bytes, size, chunk_size)));
        }
        hashed
    });
    // Bytes still missing per chunk of the share; a chunk goes to the hasher at zero.
    let missing: Mutex<Vec<u64>> =
        Mutex::new(chunks.clone().map(|i| chunk_size.min(size.saturating_sub(i * chunk_size))).collect());
    for (i, m) in missing.lock().unwrap_or_else(|p| p.into_inner()).iter().enumerate() {
        if *m == 0 {
            // An empty object's one chunk has nothing to wait for.
            let _ = landed_tx.send(chunks.start + i as u64);
        }
    }
    let tx = Mutex::new(landed_tx);
    let on_landed = |offset: u64, len: u64| {
        landed(len);
        let mut missing = missing.lock().unwrap_or_else(|p| p.into_inner());
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let index = at / chunk_size;
            let upto = ((index + 1) * chunk_size).min(end);
            if let Some(m) = index.checked_sub(chunks.start).and_then(|i| missing.get_mut(i as usize)) {
                *m -= upto - at;
                if *m == 0 {
                    let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(index);
                }
            }
            at = upto;
        }
    };
    let dst = &mut writable.as_mut_slice()[first_byte as usize..end_byte as usize];
    let downloaded = reader.download_range_into(url, meta, first_byte, dst, &on_landed).await;
    // Unmapped before anyone seals (F_SEAL_WRITE refuses while a writable mapping exists),
    // and the hasher told that nothing more will land.
    drop(writable);
    drop(tx);
    let mut hashed = hasher.await.map_err(|_| S3IngestError::Hasher)?;
    let stats = downloaded?;
    if hashed.len() as u64 != wanted {
        return Err(S3IngestError::Hasher);
    }
    hashed.sort_unstable_by_key(|(i, _)| *i);
    let hashes = hashed.into_iter().map(|(_, d)| d).collect();
    let mapping = Arc::try_unwrap(hashing).map_err(|_| S3IngestError::Hasher)?;
    Ok(Filled { fd, mapping, hashes, stats })
}

/// Seconds since `start`, for reports.
pub fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod allow_list_tests {
    use super::*;

    fn url(s: &str) -> S3Url {
        s.parse().expect("url")
    }

    #[test]
    fn empty_allows_everything_and_entries_restrict() {
        assert!(S3AllowList::default().allows(&url("s3://any/key")));
        let list = S3AllowList::parse(&["models", "data/public/", " "]).expect("parse");
        assert!(list.allows(&url("s3://models/x")));
        assert!(list.allows(&url("s3://data/public/a.bin")));
        assert!(!list.allows(&url("s3://data/private/a.bin")));
        assert!(!list.allows(&url("s3://other/x")));
        assert!(S3AllowList::parse(&["*"]).expect("parse").allows(&url("s3://x/y")));
        assert!(S3AllowList::parse(&["s3://models"]).expect("parse").allows(&url("s3://models/y")));
        assert!(S3AllowList::parse(&["*/x"]).is_err());
        assert!(S3AllowList::parse(&["/x"]).is_err());
    }
}
