//! Ingest from S3: a fresh memfd is filled by the S3 engine's parallel ranged GETs through a
//! writable mapping, each 4 MiB chunk hashed on another thread as soon as all of its bytes
//! have landed, then unmapped and sealed. Hashing before sealing is sound for the same reason
//! as in [`crate::ingest::copy_hash_and_seal`]: the daemon created the memfd and no one else
//! holds a descriptor to it. Any error drops the memfd: nothing is bound or sealed.
//!
//! The S3 client is built on first use from the daemon's environment
//! ([`store_client::s3::S3Config::from_env`]: `STORE_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, ...),
//! and the origin of every ingested object is kept by object id.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use store_client::manifest::{self, Digest, Manifest, ManifestError};
use store_client::protocol::{ErrorCode, ObjectId, S3Origin};
use store_client::s3::{DownloadStats, S3Config, S3Error, S3Reader, S3Url};
use store_client::sys::{self, ReadOnlyMapping, WritableMapping};
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

/// The daemon's S3 side: one client for its life, and where objects came from.
#[derive(Debug, Default)]
pub struct S3Ingest {
    reader: OnceCell<S3Reader>,
    origins: Mutex<HashMap<ObjectId, S3Origin>>,
}

impl S3Ingest {
    async fn reader(&self) -> Result<&S3Reader, S3Error> {
        self.reader.get_or_try_init(|| async { S3Reader::new(S3Config::from_env()?).await }).await
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
        let url: S3Url = url.parse()?;
        let base = self.reader().await?;
        let reader = if part_size.is_some() || concurrency.is_some() {
            let config = base.config().clone().with_overrides(part_size, concurrency.map(|c| c as usize))?;
            S3Reader::new(config).await?
        } else {
            base.clone()
        };
        let meta = reader.head(&url).await?;
        if let Err(e) = room(meta.size) {
            return Ok(Err(e));
        }
        let size = meta.size;
        let fd = sys::create_memfd(size)?;
        let hashing = Arc::new(ReadOnlyMapping::new_exclusive(fd.as_fd(), size)?);
        let mut writable = WritableMapping::new(fd.as_fd(), size)?;

        let count = manifest::chunk_count(size, chunk_size);
        let (landed_tx, landed_rx) = mpsc::channel::<u64>();
        let map = hashing.clone();
        let hasher = tokio::task::spawn_blocking(move || {
            let mut chunks = Vec::with_capacity(count as usize);
            for index in landed_rx {
                let bytes = manifest::chunk_bytes(&map, index, chunk_size);
                chunks.push((index, manifest::chunk_hash(index, bytes, size, chunk_size)));
            }
            chunks
        });
        // Bytes still missing per chunk; a chunk goes to the hasher when it reaches zero.
        let missing: Mutex<Vec<u64>> = Mutex::new((0..count).map(|i| chunk_size.min(size - i * chunk_size)).collect());
        if size == 0 {
            // The one empty chunk has nothing to wait for.
            let _ = landed_tx.send(0);
        }
        let tx = Mutex::new(landed_tx);
        let on_landed = |offset: u64, len: u64| {
            let mut missing = missing.lock().unwrap_or_else(|p| p.into_inner());
            let (mut at, end) = (offset, offset + len);
            while at < end {
                let index = at / chunk_size;
                let upto = ((index + 1) * chunk_size).min(end);
                if let Some(m) = missing.get_mut(index as usize) {
                    *m -= upto - at;
                    if *m == 0 {
                        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(index);
                    }
                }
                at = upto;
            }
        };
        let downloaded = reader.download_into(&url, &meta, writable.as_mut_slice(), &on_landed).await;
        // Unmapped before sealing (F_SEAL_WRITE refuses while a writable mapping exists),
        // and the hasher told that nothing more will land.
        drop(writable);
        drop(tx);
        let hashed = hasher.await.map_err(|_| S3IngestError::Hasher)?;
        let stats = downloaded?;
        let mut hashed = hashed;
        if hashed.len() as u64 != count {
            return Err(S3IngestError::Hasher);
        }
        hashed.sort_unstable_by_key(|(i, _)| *i);
        let chunks: Vec<Digest> = hashed.into_iter().map(|(_, d)| d).collect();
        sys::seal_immutable(fd.as_fd())?;
        let manifest = Manifest::from_chunk_hashes(size, chunk_size, chunks)?;
        let mapping = Arc::try_unwrap(hashing).map_err(|_| S3IngestError::Hasher)?;
        let origin = S3Origin { url: url.to_string(), etag: meta.etag, size };
        Ok(Ok(Fetched { fd, manifest, mapping, origin, stats }))
    }

    pub fn record(&self, id: ObjectId, origin: S3Origin) {
        self.origins.lock().unwrap_or_else(|p| p.into_inner()).insert(id, origin);
    }

    pub fn origin(&self, id: ObjectId) -> Option<S3Origin> {
        self.origins.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }
}

/// Seconds since `start`, for reports.
pub fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
