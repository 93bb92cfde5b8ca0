//! The S3 writing side: an object's bytes (typically a read-only mapping of a sealed store
//! object) uploaded with parallel `UploadPart`s.
//!
//! # Design
//! - The body is one [`Bytes`] over the caller's memory ([`Bytes::from_owner`] on a store
//!   mapping): each part is a [`Bytes::slice`] of it, so nothing is copied into private
//!   memory; the HTTP client writes the slices to the socket (or, with TLS, encrypts from
//!   them). A part's body is replayable, so a failed attempt is sent again from the mapping.
//! - An object no larger than one part goes up in a single `PutObject`; larger ones use
//!   `CreateMultipartUpload`, up to [`S3Config::concurrency`] `UploadPart`s at once, then
//!   `CompleteMultipartUpload`. Any error (or a cancellation) after the upload was created
//!   sends `AbortMultipartUpload`, so no half-uploaded parts are left behind to be billed.
//! - Parts are at least [`MIN_UPLOAD_PART_SIZE`] (S3 refuses smaller non-final parts at
//!   completion) and grow so that an object needs at most [`MAX_PARTS`] of them.
//! - No request checksum (the reader's client is built with `WhenRequired`, so no CRC32
//!   trailer: S3-compatible servers that cannot parse `aws-chunked` accept it, and no CPU is
//!   spent on it) and no SigV4 payload hash (`UNSIGNED-PAYLOAD`): that would be a full
//!   SHA-256 pass over the object before each part is sent, slower than the link on this
//!   class of machine. The request headers stay signed; on `https` endpoints TLS protects the
//!   body, and the store's BLAKE3 digest can be checked by pulling the object back.
//! - Retries: the same backoff and classification as the reading engine (5xx, 429, timeouts,
//!   connection errors are retried; 403/404 and other client errors are final).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::{StreamExt, stream};

use super::config::S3Config;
use super::error::S3Error;
use super::reader::{Attempt, S3Reader, classify};
use super::url::S3Url;

/// S3's smallest part (all but the last): 5 MiB.
pub const MIN_UPLOAD_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;

/// What an upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    pub bytes: u64,
    /// Parts sent (1 for a single `PutObject`).
    pub parts: u64,
    /// Whether a multipart upload was used.
    pub multipart: bool,
    /// The part size used (after the S3 limits were applied).
    pub part_size: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// The ETag S3 gave the new object.
    pub etag: String,
    pub elapsed: Duration,
}

impl UploadStats {
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The part size an upload of `size` bytes uses with `config`: the configured size, at least
/// [`MIN_UPLOAD_PART_SIZE`], and large enough for [`MAX_PARTS`] parts to cover the object.
pub fn upload_part_size(config: &S3Config, size: u64) -> u64 {
    config.part_size.max(MIN_UPLOAD_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

/// An S3 client set up for uploads (the same client setup as [`S3Reader`]).
#[derive(Clone, Debug)]
pub struct S3Writer {
    inner: S3Reader,
}

impl S3Writer {
    pub async fn new(config: S3Config) -> Result<Self, S3Error> {
        Ok(Self { inner: S3Reader::new(config).await? })
    }

    /// A writer sharing `reader`'s client and settings.
    pub fn from_reader(reader: &S3Reader) -> Self {
        Self { inner: reader.clone() }
    }

    pub fn config(&self) -> &S3Config {
        self.inner.config()
    }

    /// Uploads `body` as `url`. `on_sent(offset, len)` is called once per part when S3 has
    /// acknowledged it.
    pub async fn upload(
        &self,
        url: &S3Url,
        body: Bytes,
        on_sent: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<UploadStats, S3Error> {
        self.upload_until(url, body, on_sent, std::future::pending()).await
    }

    /// [`S3Writer::upload`] that stops when `cancel` completes: a multipart upload under way
    /// is aborted, and the result is [`S3Error::Cancelled`].
    pub async fn upload_until(
        &self,
        url: &S3Url,
        body: Bytes,
        on_sent: &(dyn Fn(u64, u64) + Sync),
        cancel: impl Future<Output = ()>,
    ) -> Result<UploadStats, S3Error> {
        if url.key.is_empty() || url.key.ends_with('/') {
            return Err(S3Error::InvalidUrl(format!("{url} (an upload needs a key that is not a prefix)")));
        }
        let start = Instant::now();
        let size = body.len() as u64;
        let part_size = upload_part_size(self.config(), size);
        let retries = AtomicU64::new(0);
        let mut stats = UploadStats { bytes: size, part_size, ..Default::default() };
        if size <= part_size {
            let put = self.put_single(url, body, &retries);
            let etag = tokio::select! {
                put = put => put?,
                () = cancel => return Err(S3Error::Cancelled),
            };
            on_sent(0, size);
            stats.parts = 1;
            stats.etag = etag;
        } else {
            let upload_id = self.create(url, &retries).await?;
            let sent = tokio::select! {
                sent = self.send_parts(url, &upload_id, &body, part_size, &retries, on_sent) => sent,
                () = cancel => Err(S3Error::Cancelled),
            };
            let done = match sent {
                Ok(parts) => {
                    stats.parts = parts.len() as u64;
                    self.complete(url, &upload_id, parts, &retries).await
                }
                Err(e) => Err(e),
            };
            match done {
                Ok(etag) => stats.etag = etag,
                Err(e) => return Err(self.abort(url, &upload_id, e).await),
            }
            stats.multipart = true;
        }
        stats.retries = retries.load(Ordering::Relaxed);
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    async fn put_single(&self, url: &S3Url, body: Bytes, retries: &AtomicU64) -> Result<String, S3Error> {
        let client = self.inner.client();
        let out = self
            .inner
            .retrying(
                url,
                || async {
                    client
                        .put_object()
                        .bucket(&url.bucket)
                        .key(&url.key)
                        .content_length(body.len() as i64)
                        .body(ByteStream::from(body.clone()))
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| classify(url, e))
                },
                retries,
            )
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn create(&self, url: &S3Url, retries: &AtomicU64) -> Result<String, S3Error> {
        let client = self.inner.client();
        let out = self
            .inner
            .retrying(
                url,
                || async {
                    let r = client.create_multipart_upload().bucket(&url.bucket).key(&url.key).send().await;
                    r.map_err(|e| classify(url, e))
                },
                retries,
            )
            .await?;
        out.upload_id().filter(|id| !id.is_empty()).map(str::to_owned).ok_or_else(|| S3Error::Service {
            bucket: url.bucket.clone(),
            key: url.key.clone(),
            status: 200,
            message: "CreateMultipartUpload answered without an upload id".into(),
        })
    }

    /// Sends every part, `concurrency` at once; the completed parts in part-number order.
    async fn send_parts(
        &self,
        url: &S3Url,
        upload_id: &str,
        body: &Bytes,
        part_size: u64,
        retries: &AtomicU64,
        on_sent: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Vec<CompletedPart>, S3Error> {
        let size = body.len() as u64;
        let count = size.div_ceil(part_size);
        // A queue and an explicit set of running parts, as in the reader: a closure held
        // across the awaits makes the future not provably `Send`.
        let mut queue: std::collections::VecDeque<u64> = (0..count).collect();
        let mut running = stream::FuturesUnordered::new();
        let mut parts = Vec::with_capacity(count as usize);
        loop {
            while running.len() < self.config().concurrency {
                let Some(index) = queue.pop_front() else { break };
                let offset = index * part_size;
                let end = (offset + part_size).min(size);
                // Zero-copy: a reference-counted view of the caller's memory.
                let slice = body.slice(offset as usize..end as usize);
                running.push(self.send_part(url, upload_id, index, slice, retries, on_sent, offset));
            }
            match running.next().await {
                Some(done) => parts.push(done?),
                None => break,
            }
        }
        parts.sort_unstable_by_key(|p| p.part_number());
        Ok(parts)
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        url: &S3Url,
        upload_id: &str,
        index: u64,
        slice: Bytes,
        retries: &AtomicU64,
        on_sent: &(dyn Fn(u64, u64) + Sync),
        offset: u64,
    ) -> Result<CompletedPart, S3Error> {
        // S3 part numbers start at 1; MAX_PARTS keeps them within i32.
        let number = i32::try_from(index + 1).map_err(|_| S3Error::InvalidSetting {
            name: super::config::PART_SIZE_ENV,
            value: index.to_string(),
            why: "too many parts".into(),
        })?;
        let client = self.inner.client();
        let len = slice.len() as u64;
        let out = self
            .inner
            .retrying(
                url,
                || async {
                    client
                        .upload_part()
                        .bucket(&url.bucket)
                        .key(&url.key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .body(ByteStream::from(slice.clone()))
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| classify(url, e))
                },
                retries,
            )
            .await?;
        let etag = out.e_tag().filter(|e| !e.is_empty()).ok_or_else(|| S3Error::Service {
            bucket: url.bucket.clone(),
            key: url.key.clone(),
            status: 200,
            message: format!("UploadPart {number} answered without an ETag"),
        })?;
        on_sent(offset, len);
        Ok(CompletedPart::builder().part_number(number).e_tag(etag).build())
    }

    async fn complete(
        &self,
        url: &S3Url,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        retries: &AtomicU64,
    ) -> Result<String, S3Error> {
        let client = self.inner.client();
        let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        let out = self
            .inner
            .retrying(
                url,
                || async {
                    client
                        .complete_multipart_upload()
                        .bucket(&url.bucket)
                        .key(&url.key)
                        .upload_id(upload_id)
                        .multipart_upload(done.clone())
                        .send()
                        .await
                        .map_err(|e| classify(url, e))
                },
                retries,
            )
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    /// Aborts the upload after `cause`, with the usual retries (the failure may have been
    /// the endpoint going away for a moment). The error to report: `cause`, or, if the parts
    /// could not be removed, [`S3Error::Abandoned`] naming the upload left behind.
    async fn abort(&self, url: &S3Url, upload_id: &str, cause: S3Error) -> S3Error {
        let client = self.inner.client();
        let retries = AtomicU64::new(0);
        let aborted = self
            .inner
            .retrying(
                url,
                || async {
                    match client
                        .abort_multipart_upload()
                        .bucket(&url.bucket)
                        .key(&url.key)
                        .upload_id(upload_id)
                        .send()
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(e) => match classify(url, e) {
                            // Already gone: nothing is left behind.
                            Attempt::Fatal(S3Error::Service { status: 404, .. }) => Ok(()),
                            other => Err(other),
                        },
                    }
                },
                &retries,
            )
            .await;
        match aborted {
            Ok(()) => cause,
            Err(e) => S3Error::Abandoned {
                url: url.to_string(),
                upload_id: upload_id.to_owned(),
                cause: Box::new(cause),
                abort: Box::new(e),
            },
        }
    }
}

/// Lets a store mapping be the body of an upload without a copy.
struct MappedObject(crate::ObjectGuard);

impl AsRef<[u8]> for MappedObject {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes of a store object as an upload body: a view of its read-only mapping, which
/// (and whose lease) lives as long as any part still holds a slice of it.
pub fn object_body(object: crate::ObjectGuard) -> Bytes {
    Bytes::from_owner(MappedObject(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_respect_the_s3_limits() {
        let c = S3Config::default();
        assert_eq!(upload_part_size(&c, 100 << 20), c.part_size.max(MIN_UPLOAD_PART_SIZE));
        let small = S3Config { part_size: 1 << 20, ..S3Config::default() };
        assert_eq!(upload_part_size(&small, 100 << 20), MIN_UPLOAD_PART_SIZE);
        // 1 TiB in 8 MiB parts would be 131072 parts: grown to fit 10000.
        let huge = 1u64 << 40;
        let p = upload_part_size(&c, huge);
        assert!(huge.div_ceil(p) <= MAX_PARTS, "{p}");
    }
}
