//! The S3 engine's errors.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum S3Error {
    #[error("invalid S3 URL `{0}`: expected s3://BUCKET/KEY")]
    InvalidUrl(String),
    #[error("invalid S3 setting {name}=`{value}`: {why}")]
    InvalidSetting { name: &'static str, value: String, why: String },
    #[error("bucket `{bucket}` does not exist")]
    NoSuchBucket { bucket: String },
    #[error("object s3://{bucket}/{key} does not exist")]
    NoSuchKey { bucket: String, key: String },
    #[error("access to s3://{bucket}/{key} denied (check the credentials): {message}")]
    AccessDenied { bucket: String, key: String, message: String },
    #[error("S3 endpoint {endpoint} unreachable after {attempts} attempts: {message}")]
    Unreachable { endpoint: String, attempts: u32, message: String },
    #[error("s3://{bucket}/{key} failed after {attempts} attempts (last: {message})")]
    GaveUp { bucket: String, key: String, attempts: u32, message: String },
    #[error("s3://{bucket}/{key} changed during the download: {detail}")]
    Changed { bucket: String, key: String, detail: String },
    #[error("S3 answered {status} for s3://{bucket}/{key}: {message}")]
    Service { bucket: String, key: String, status: u16, message: String },
    #[error("destination holds {have} bytes, the object {want}")]
    Destination { have: u64, want: u64 },
    #[error("cannot start the S3 client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the transfer was cancelled")]
    Cancelled,
    /// Without bucket and key fields (the URL is in `url`) and with the errors boxed, so
    /// that `S3Error` stays small.
    #[error(
        "{cause}; multipart upload {upload_id} of {url} could not be aborted ({abort}): its parts stay until a lifecycle rule removes them"
    )]
    Abandoned { url: String, upload_id: String, cause: Box<S3Error>, abort: Box<S3Error> },
}
