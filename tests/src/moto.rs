//! A second, independent S3 implementation for the compatibility tests: moto's server
//! (`moto_server`, PyPI `moto[server]`) started as a child process on a free loopback port.
//!
//! moto is not written against this project's engine (unlike the embedded s3s endpoint in
//! [`crate::s3_server`]), so what passes against both is ordinary S3 usage. What it does
//! differently, as met by `tests/tests/s3_moto.rs`:
//! - Path-style addressing only here (`http://127.0.0.1:PORT/bucket/key`; a virtual-host
//!   name `bucket.127.0.0.1` does not resolve), which the engine uses whenever an endpoint
//!   is set. Any region is accepted and signatures are not checked unless authentication
//!   is switched on ([`MotoServer::start_with_auth`]).
//! - Objects are private: an unsigned GET is refused with 403 and no body (unsigned PUTs
//!   are accepted), so every request here goes through the SDK, signed.
//! - A 403 or 404 answer to HEAD has no body (as on AWS): after a 404 the engine's follow-up
//!   GET of `bytes=0-0` tells a missing bucket from a missing key. A 403 to HEAD is reported
//!   as access denied right away (`HTTP 403`), without that GET; the answers to other
//!   requests name the reason (`SignatureDoesNotMatch` for a wrong secret,
//!   `InvalidAccessKeyId` for an unknown key).
//! - `If-Match` is honoured on ranged GETs (412 `PreconditionFailed`), a ranged GET answers
//!   206 with the ETag and `Content-Range: bytes A-B/TOTAL`.
//! - Checksums: an object stored with a CRC32 (aws-chunked trailer, what current SDKs send by
//!   default) keeps it, and every GET of it, ranged ones too, names the algorithm
//!   (`x-amz-sdk-checksum-algorithm`); the engine's client sends and validates checksums only
//!   when an operation requires them, so it neither sends trailers nor trips over these.
//! - Multipart ETags are S3's `"<md5 of the part md5s>-<parts>"`. Non-final parts under 5 MiB
//!   are refused at completion (`EntityTooSmall`).
//! - `UploadPart` to an upload id that no longer exists answers 500 (AWS: 404
//!   `NoSuchUpload`), which the engine, like any client, retries as a server error;
//!   `AbortMultipartUpload` of an unknown id answers 404 `NoSuchUpload`.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::s3::{S3Config, S3Reader, StaticCredentials};

/// The program looked for on the PATH.
pub const PROGRAM: &str = "moto_server";
/// What a test that cannot find it reports (see [`crate::skip`]).
pub const SKIP_REASON: &str = "needs moto_server (PyPI moto[server]; ./run-tests installs it)";

/// Access key pair used with a server that checks none.
const ANY_ACCESS_KEY: &str = "moto-test-access";
const ANY_SECRET_KEY: &str = "moto-test-secret";

/// Whether `moto_server` is on the PATH; reports the skip otherwise (the caller returns).
#[track_caller]
pub fn available() -> bool {
    if crate::skip::find_on_path(PROGRAM) {
        return true;
    }
    crate::skip::skip(SKIP_REASON);
    false
}

/// A running `moto_server`; killed on drop. Its request log (one line per request, with the
/// method, path and status) is kept in a temporary file, see [`MotoServer::log`].
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    /// SDK client (the engine's client setup) for setting up and checking from outside.
    sdk: S3Reader,
}

impl MotoServer {
    /// A server that accepts any credentials, with `buckets` created.
    pub fn start(buckets: &[&str]) -> anyhow::Result<Self> {
        let server = Self::spawn(&[])?;
        for bucket in buckets {
            server.create_bucket(bucket)?;
        }
        Ok(server)
    }

    /// A server that authenticates every request (moto's `INITIAL_NO_AUTH_ACTION_COUNT`):
    /// the first three requests, unauthenticated, create an IAM user, its access key and a
    /// policy allowing everything; after those, only that key with its secret is accepted.
    pub fn start_with_auth(buckets: &[&str]) -> anyhow::Result<Self> {
        let mut server = Self::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")])?;
        server.iam("Action=CreateUser&UserName=store-test&Version=2010-05-08")?;
        let key = server.iam("Action=CreateAccessKey&UserName=store-test&Version=2010-05-08")?;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
        server.iam(&format!(
            "Action=PutUserPolicy&UserName=store-test&PolicyName=all&PolicyDocument={}&Version=2010-05-08",
            percent_encode(policy)
        ))?;
        let access = xml_text(&key, "AccessKeyId").context("CreateAccessKey answer")?;
        let secret = xml_text(&key, "SecretAccessKey").context("CreateAccessKey answer")?;
        server.set_credentials(access, secret)?;
        for bucket in buckets {
            server.create_bucket(bucket)?;
        }
        Ok(server)
    }

    /// Starts the process on a free port (retrying if another process took it meanwhile)
    /// and waits until it answers HTTP.
    fn spawn(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-moto").tempdir()?;
        let log = dir.path().join("moto.log");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let out = std::fs::File::create(&log)?;
            let mut child = Command::new(PROGRAM)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("spawning {PROGRAM}"))?;
            match wait_until_answering(&mut child, addr, Duration::from_secs(60)) {
                Ok(()) => {
                    // Endpoint, region and credentials all explicit: nothing of the machine's
                    // AWS configuration (profiles, instance metadata) is consulted.
                    let config = S3Config {
                        endpoint: Some(format!("http://{addr}")),
                        region: Some("us-east-1".into()),
                        credentials: Some(StaticCredentials {
                            access_key_id: ANY_ACCESS_KEY.into(),
                            secret_access_key: ANY_SECRET_KEY.into(),
                        }),
                        ..Default::default()
                    };
                    let sdk = runtime.block_on(S3Reader::new(config))?;
                    return Ok(Self {
                        child,
                        addr,
                        access_key: ANY_ACCESS_KEY.into(),
                        secret_key: ANY_SECRET_KEY.into(),
                        log,
                        _dir: dir,
                        runtime,
                        sdk,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = Some(e.context(format!("{PROGRAM} output:\n{tail}")));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{PROGRAM} did not start")))
    }

    fn set_credentials(&mut self, access: String, secret: String) -> anyhow::Result<()> {
        self.access_key = access;
        self.secret_key = secret;
        let config = self.config();
        self.sdk = self.runtime.block_on(S3Reader::new(config))?;
        Ok(())
    }

    /// One IAM query-API request. moto routes it by the service in the credential scope of
    /// the Authorization header; the signature is not checked while requests are still
    /// unauthenticated.
    fn iam(&self, form: &str) -> anyhow::Result<String> {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, \
                    SignedHeaders=host, Signature=00";
        let (status, body) = http(
            self.addr,
            "POST",
            "/",
            &[("Authorization", auth), ("Content-Type", "application/x-www-form-urlencoded")],
            form,
        )?;
        if status != 200 {
            bail!("IAM request `{form}` answered {status}: {body}");
        }
        Ok(body)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Engine settings for this server with its credentials.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: self.access_key.clone(),
                secret_access_key: self.secret_key.clone(),
            }),
            ..Default::default()
        }
    }

    /// Environment for a process (daemon, storectl) talking to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (store_client::s3::ENDPOINT_ENV, self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Runs `f` on this server's runtime (for requests made with `reader().client()`).
    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// A reader with this server's settings; its `client()` is the plain SDK client (the
    /// engine's client setup: path-style, no request checksums) for requests of any kind.
    pub fn reader(&self) -> &S3Reader {
        &self.sdk
    }

    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.block_on(self.sdk.client().create_bucket().bucket(bucket).send())
            .with_context(|| format!("creating bucket {bucket}"))?;
        Ok(())
    }

    /// Stores an object with one plain `PutObject` of the SDK (not the engine's writer).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let out = self
            .block_on(self.sdk.client().put_object().bucket(bucket).key(key).body(bytes.to_vec().into()).send())
            .with_context(|| format!("PutObject s3://{bucket}/{key}"))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    /// The object's bytes with one plain `GetObject` of the SDK (not the engine's reader).
    pub fn get(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        self.block_on(async {
            let out = self.sdk.client().get_object().bucket(bucket).key(key).send().await?;
            Ok::<_, anyhow::Error>(out.body.collect().await?.into_bytes().to_vec())
        })
        .with_context(|| format!("GetObject s3://{bucket}/{key}"))
    }

    /// The object's ETag, or `None` when it does not exist.
    pub fn etag(&self, bucket: &str, key: &str) -> anyhow::Result<Option<String>> {
        match self.block_on(self.sdk.client().head_object().bucket(bucket).key(key).send()) {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("HeadObject s3://{bucket}/{key}")),
        }
    }

    pub fn buckets(&self) -> anyhow::Result<Vec<String>> {
        let out = self.block_on(self.sdk.client().list_buckets().send()).context("ListBuckets")?;
        Ok(out.buckets().iter().filter_map(|b| b.name().map(str::to_owned)).collect())
    }

    /// Multipart uploads neither completed nor aborted, in every bucket (`bucket/key`).
    pub fn open_uploads(&self) -> anyhow::Result<Vec<String>> {
        let mut open = Vec::new();
        for bucket in self.buckets()? {
            let out = self
                .block_on(self.sdk.client().list_multipart_uploads().bucket(&bucket).send())
                .with_context(|| format!("ListMultipartUploads {bucket}"))?;
            open.extend(out.uploads().iter().map(|u| format!("{bucket}/{}", u.key().unwrap_or_default())));
        }
        Ok(open)
    }

    /// Aborts every open multipart upload of `bucket`; how many there were.
    pub fn abort_uploads(&self, bucket: &str) -> anyhow::Result<usize> {
        let out = self.block_on(self.sdk.client().list_multipart_uploads().bucket(bucket).send())?;
        for upload in out.uploads() {
            self.block_on(
                self.sdk
                    .client()
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(upload.key().unwrap_or_default())
                    .upload_id(upload.upload_id().unwrap_or_default())
                    .send(),
            )?;
        }
        Ok(out.uploads().len())
    }

    /// The server's request log so far: one line per request, `"METHOD /path HTTP/1.1" STATUS`
    /// (werkzeug's format, its colour codes removed).
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut text = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(at) = rest.find('\x1b') {
            text.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
        }
        text.push_str(rest);
        text
    }

    /// How many `method` requests to exactly `path` (with any query: the SDK adds
    /// `?x-id=GetObject`) answered `status`.
    pub fn count_requests(&self, method: &str, path: &str, status: u16) -> usize {
        let request = format!("\"{method} {path}");
        let status = format!("\" {status} ");
        self.log()
            .lines()
            .filter(|l| {
                l.split_once(&request).is_some_and(|(_, rest)| rest.starts_with([' ', '?'])) && l.contains(&status)
            })
            .count()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until_answering(child: &mut Child, addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{PROGRAM} exited during start-up: {status}");
        }
        // moto's own API path: not an AWS action, so not counted against the
        // unauthenticated requests of `start_with_auth`.
        if let Ok((status, _)) = http(addr, "GET", "/moto-api/", &[], "")
            && status == 200
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("{PROGRAM} did not answer on {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 request; (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes())?;
    let mut reader = std::io::BufReader::new(conn);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let mut rest = String::new();
    reader.read_to_string(&mut rest)?;
    let body = rest.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find('<')?;
    Some(xml[start..end].to_owned())
}
