//! The S3 reading engine: parallel ranged GETs written straight into the destination memory.
//!
//! # Design
//! - One `HeadObject` fixes the object's size and ETag. The destination (a writable mapping
//!   of the daemon's memfd, or a buffer of the calling process) is split into disjoint
//!   `&mut [u8]` parts of [`S3Config::part_size`]; up to [`S3Config::concurrency`] ranged
//!   GETs run at once, each copying its body as it arrives into its own part. There is no
//!   intermediate buffer: the one copy is from the HTTP client's receive buffer into the
//!   destination.
//! - Every ranged GET carries `If-Match: <etag>`, and its answer's ETag, `Content-Range`
//!   total and length are checked: an object replaced on the server mid-download fails with
//!   [`S3Error::Changed`] (412 or a mismatch), never a silent mix of two versions.
//! - The SDK's own retries are off: they cannot resume a body that broke mid-stream. A part
//!   retries itself on 5xx (503 SlowDown included), 429, timeouts and connection errors, with
//!   exponential backoff and jitter, resuming from the bytes it already has. An attempt that
//!   made progress resets the attempt count. Client errors (403, 404, 412, ...) are final.
//! - A caller that hashes while downloading (the daemon) gets `on_landed(offset, len)` for
//!   each part once all its bytes are in place.
//!
//! The defaults (8 MiB parts, 8 at once) were measured against the embedded endpoint on
//! loopback; see `docs/s3-bench.md`. Credentials come from the standard AWS chain (env
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profile files, IMDS) unless given
//! explicitly; an S3-compatible server is reached with [`ENDPOINT_ENV`] (path-style by
//! default when an endpoint is set).
//!
//! The writing side (multipart uploads straight from a store mapping, `storectl push`) is
//! [`S3Writer`], in `s3/upload.rs`. The errors are in `s3/error.rs`, URLs in `s3/url.rs`, the
//! settings in `s3/config.rs` and the reading engine in `s3/reader.rs`; [`ObjectSource`]
//! (`s3/source.rs`) is what a reader goes through, with in-memory and failing sources for
//! tests. This module only re-exports their public names.

mod config;
mod error;
mod reader;
mod source;
mod upload;
mod url;

pub use config::{
    CONCURRENCY_ENV, DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, ENDPOINT_ENV, MAX_ATTEMPTS_ENV, MIN_PART_SIZE,
    PART_SIZE_ENV, PATH_STYLE_ENV, REGION_ENV, S3Config, StaticCredentials,
};
pub use error::S3Error;
pub use reader::{DownloadStats, ObjectMeta, S3Reader, download_blocking, download_prefix_blocking};
pub use source::{BoxFuture, FailWhen, FailingSource, MemorySource, ObjectSource, SourceOp};
pub use upload::{MAX_PARTS, MIN_UPLOAD_PART_SIZE, S3Writer, UploadStats, object_body, upload_part_size};
pub use url::S3Url;
