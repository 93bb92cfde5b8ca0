//! The reading engine: one HEAD, then parallel ranged GETs written straight into the
//! destination, with the retries and the error classification the writing side shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use futures_util::{StreamExt, stream};

use super::config::S3Config;
use super::error::S3Error;
use super::url::S3Url;

/// Size and version of an object, fixed at the start of a download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: String,
}

/// What a download did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadStats {
    pub bytes: u64,
    pub parts: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    pub elapsed: Duration,
}

impl DownloadStats {
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The outcome of one attempt of a request.
pub(super) enum Attempt {
    /// Worth trying again: 5xx, 429, timeouts, connection errors, a body cut short.
    Transient {
        message: String,
        unreachable: bool,
    },
    Fatal(S3Error),
}

/// An S3 client set up for ranged reads.
#[derive(Clone, Debug)]
pub struct S3Reader {
    client: Client,
    config: S3Config,
}

impl S3Reader {
    pub async fn new(config: S3Config) -> Result<Self, S3Error> {
        config.validate()?;
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled());
        loader = match &config.region {
            Some(r) => loader.region(Region::new(r.clone())),
            None => loader.region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else(Region::from_static("us-east-1")),
            ),
        };
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "store-s3-static",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &config.endpoint {
            builder = builder.endpoint_url(e.clone());
        }
        builder = builder.force_path_style(config.path_style.unwrap_or(config.endpoint.is_some()));
        Ok(Self { client: Client::from_conf(builder.build()), config })
    }

    /// A reader configured by [`S3Config::from_env`].
    pub async fn from_env() -> Result<Self, S3Error> {
        Self::new(S3Config::from_env()?).await
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The SDK client, for operations this engine does not wrap (uploads).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` with backoff until it succeeds, fails for good or runs out of attempts.
    pub(super) async fn retrying<T, F, Fut>(&self, url: &S3Url, mut op: F, retries: &AtomicU64) -> Result<T, S3Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient { message, unreachable }) => {
                    attempt += 1;
                    if attempt >= self.config.max_attempts {
                        return Err(self.give_up(url, attempt, message, unreachable));
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.config.backoff(attempt - 1)).await;
                }
            }
        }
    }

    fn give_up(&self, url: &S3Url, attempts: u32, message: String, unreachable: bool) -> S3Error {
        if unreachable {
            S3Error::Unreachable { endpoint: self.config.endpoint_name(), attempts, message }
        } else {
            S3Error::GaveUp { bucket: url.bucket.clone(), key: url.key.clone(), attempts, message }
        }
    }

    /// The object's size and ETag, with a precise error for a missing bucket or key and
    /// for refused credentials.
    pub async fn head(&self, url: &S3Url) -> Result<ObjectMeta, S3Error> {
        let retries = AtomicU64::new(0);
        let head = self
            .retrying(
                url,
                || async {
                    let r = self.client.head_object().bucket(&url.bucket).key(&url.key).send().await;
                    r.map_err(|e| classify(url, e))
                },
                &retries,
            )
            .await;
        let out = match head {
            Ok(out) => out,
            // HEAD answers have no body, so no error code: ask with a GET, whose body says
            // which of bucket or key is missing, or why the credentials were refused.
            Err(S3Error::Service { status: 403 | 404, .. } | S3Error::AccessDenied { .. }) => {
                return Err(self.explain(url).await);
            }
            Err(e) => return Err(e),
        };
        let size = out.content_length().and_then(|l| u64::try_from(l).ok()).ok_or_else(|| S3Error::Service {
            bucket: url.bucket.clone(),
            key: url.key.clone(),
            status: 200,
            message: "HEAD answer lacks a valid Content-Length".into(),
        })?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        Ok(ObjectMeta { size, etag })
    }

    async fn explain(&self, url: &S3Url) -> S3Error {
        match self.client.get_object().bucket(&url.bucket).key(&url.key).range("bytes=0-0").send().await {
            Ok(_) => S3Error::Changed {
                bucket: url.bucket.clone(),
                key: url.key.clone(),
                detail: "HEAD failed but GET succeeded".into(),
            },
            Err(e) => match classify(url, e) {
                Attempt::Fatal(e) => e,
                Attempt::Transient { message, unreachable } => self.give_up(url, 1, message, unreachable),
            },
        }
    }

    /// Downloads the whole object into `dst` (exactly `meta.size` bytes) with parallel ranged
    /// GETs. `on_landed(offset, len)` is called once per part when all of it is in `dst`.
    pub async fn download_into(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        dst: &mut [u8],
        on_landed: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<DownloadStats, S3Error> {
        if dst.len() as u64 != meta.size {
            return Err(S3Error::Destination { have: dst.len() as u64, want: meta.size });
        }
        self.download_range_into(url, meta, 0, dst, on_landed).await
    }

    /// Downloads bytes `offset..offset + dst.len()` of the object into `dst`, as
    /// [`Self::download_into`] does for the whole object; `on_landed` gets object offsets.
    /// A cooperative fetch has each node read one such share.
    pub async fn download_range_into(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        offset: u64,
        dst: &mut [u8],
        on_landed: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<DownloadStats, S3Error> {
        if offset.checked_add(dst.len() as u64).is_none_or(|end| end > meta.size) {
            return Err(S3Error::Destination { have: offset.saturating_add(dst.len() as u64), want: meta.size });
        }
        let start = Instant::now();
        let retries = AtomicU64::new(0);
        let part_size = self.config.part_size as usize;
        // A queue and an explicit set of running parts rather than an iterator adaptor: a
        // closure held across the awaits makes the future not provably `Send`.
        let dst_len = dst.len() as u64;
        let mut queue: std::collections::VecDeque<(u64, &mut [u8])> =
            dst.chunks_mut(part_size).enumerate().map(|(i, part)| (offset + (i * part_size) as u64, part)).collect();
        let mut running = stream::FuturesUnordered::new();
        let mut count = 0;
        loop {
            while running.len() < self.config.concurrency {
                let Some((offset, part)) = queue.pop_front() else { break };
                running.push(self.land_part(url, meta, offset, part, &retries, on_landed));
            }
            match running.next().await {
                Some(done) => {
                    done?;
                    count += 1;
                }
                None => break,
            }
        }
        Ok(DownloadStats {
            bytes: dst_len,
            parts: count,
            retries: retries.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        })
    }

    async fn land_part(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        offset: u64,
        part: &mut [u8],
        retries: &AtomicU64,
        on_landed: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), S3Error> {
        let len = part.len() as u64;
        self.fetch_part(url, meta, offset, part, retries).await?;
        on_landed(offset, len);
        Ok(())
    }

    /// Fills `part` with the object's bytes from `offset`, resuming after broken bodies.
    async fn fetch_part(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        offset: u64,
        part: &mut [u8],
        retries: &AtomicU64,
    ) -> Result<(), S3Error> {
        let mut filled = 0usize;
        let mut attempt = 0;
        loop {
            let before = filled;
            match self.get_range(url, meta, offset, part, &mut filled).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient { message, unreachable }) => {
                    attempt = if filled > before { 1 } else { attempt + 1 };
                    if attempt >= self.config.max_attempts {
                        return Err(self.give_up(url, attempt, message, unreachable));
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.config.backoff(attempt - 1)).await;
                }
            }
        }
    }

    /// One ranged GET of `part[*filled..]`; advances `filled` as bytes land.
    async fn get_range(
        &self,
        url: &S3Url,
        meta: &ObjectMeta,
        offset: u64,
        part: &mut [u8],
        filled: &mut usize,
    ) -> Result<(), Attempt> {
        let first = offset + *filled as u64;
        let last = offset + part.len() as u64 - 1;
        let changed = |detail: String| {
            Attempt::Fatal(S3Error::Changed { bucket: url.bucket.clone(), key: url.key.clone(), detail })
        };
        let mut req = self.client.get_object().bucket(&url.bucket).key(&url.key).range(format!("bytes={first}-{last}"));
        if !meta.etag.is_empty() {
            req = req.if_match(&meta.etag);
        }
        let mut out = req.send().await.map_err(|e| classify(url, e))?;
        if out.e_tag().is_some_and(|e| e != meta.etag) {
            return Err(changed(format!("ETag {} instead of {}", out.e_tag().unwrap_or_default(), meta.etag)));
        }
        if let Some(total) = out.content_range().and_then(|r| r.rsplit_once('/')).map(|(_, t)| t)
            && total != "*"
            && total.parse::<u64>().ok() != Some(meta.size)
        {
            return Err(changed(format!("size {total} instead of {}", meta.size)));
        }
        let want = last - first + 1;
        if out.content_length().is_some_and(|l| l as u64 != want) {
            return Err(changed(format!("range {first}-{last} answered with {:?} bytes", out.content_length())));
        }
        loop {
            match out.body.next().await {
                Some(Ok(bytes)) => {
                    let room = part.len() - *filled;
                    if bytes.len() > room {
                        return Err(changed(format!("range {first}-{last} answered with more bytes")));
                    }
                    part[*filled..*filled + bytes.len()].copy_from_slice(&bytes);
                    *filled += bytes.len();
                }
                Some(Err(e)) => {
                    return Err(Attempt::Transient {
                        message: format!("body broke: {}", DisplayErrorContext(&e)),
                        unreachable: false,
                    });
                }
                None if *filled == part.len() => return Ok(()),
                None => {
                    return Err(Attempt::Transient {
                        message: format!("body ended {} bytes short", part.len() - *filled),
                        unreachable: false,
                    });
                }
            }
        }
    }

    /// Downloads a whole object into a new buffer of this process.
    pub async fn download_to_vec(&self, url: &S3Url) -> Result<(Vec<u8>, DownloadStats), S3Error> {
        let meta = self.head(url).await?;
        let len = usize::try_from(meta.size)
            .map_err(|_| S3Error::Destination { have: usize::MAX as u64, want: meta.size })?;
        // Zeroed allocations of this size come fresh from mmap: no zeroing pass.
        let mut buf = vec![0u8; len];
        let stats = self.download_into(url, &meta, &mut buf, &|_, _| {}).await?;
        Ok((buf, stats))
    }
}

/// Downloads `url` into a buffer of this process on a runtime of its own: the runner's
/// comparison path (each consumer pays a full download).
pub fn download_blocking(config: S3Config, url: &S3Url) -> Result<(Vec<u8>, DownloadStats), S3Error> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(S3Error::Runtime)?;
    rt.block_on(async {
        let reader = S3Reader::new(config).await?;
        reader.download_to_vec(url).await
    })
}

/// Downloads `files` under the prefix `prefix` (`s3://bucket/prefix` + `/file`) into buffers
/// of this process, one after the other with one client: what `s2t-runner --model s3://...`
/// uses.
pub fn download_prefix_blocking(
    config: S3Config,
    prefix: &S3Url,
    files: &[&str],
) -> Result<Vec<(Vec<u8>, DownloadStats)>, S3Error> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(S3Error::Runtime)?;
    rt.block_on(async {
        let reader = S3Reader::new(config).await?;
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            out.push(reader.download_to_vec(&prefix.join(file)).await?);
        }
        Ok(out)
    })
}

pub(super) fn classify<E>(url: &S3Url, err: SdkError<E, HttpResponse>) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (bucket, key) = (url.bucket.clone(), url.key.clone());
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or_default().to_owned();
            let message = match ctx.err().message() {
                Some(m) if !code.is_empty() => format!("{code}: {m}"),
                Some(m) => m.to_owned(),
                None if !code.is_empty() => code.clone(),
                None => format!("HTTP {status}"),
            };
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => Attempt::Fatal(S3Error::NoSuchBucket { bucket }),
                (_, "NoSuchKey") => Attempt::Fatal(S3Error::NoSuchKey { bucket, key }),
                (412, _) | (_, "PreconditionFailed") => Attempt::Fatal(S3Error::Changed {
                    bucket,
                    key,
                    detail: "the ETag no longer matches (412 Precondition Failed)".into(),
                }),
                (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
                    Attempt::Fatal(S3Error::AccessDenied { bucket, key, message })
                }
                (429 | 500..=599, _) | (_, "SlowDown" | "Throttling" | "RequestTimeout") => {
                    // `message` is "HTTP {status}" itself when the answer had no body.
                    let message =
                        if message.starts_with("HTTP ") { message } else { format!("HTTP {status} {message}") };
                    Attempt::Transient { message, unreachable: false }
                }
                _ => Attempt::Fatal(S3Error::Service { bucket, key, status, message }),
            }
        }
        SdkError::DispatchFailure(f) => Attempt::Transient {
            message: DisplayErrorContext(&err).to_string(),
            unreachable: f.is_io() || f.is_timeout(),
        },
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Attempt::Transient { message: DisplayErrorContext(&err).to_string(), unreachable: false }
        }
        _ => {
            Attempt::Fatal(S3Error::Service { bucket, key, status: 0, message: DisplayErrorContext(&err).to_string() })
        }
    }
}
