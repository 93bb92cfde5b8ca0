//! The processes of the experiment, all played by the demo's own executable (hidden
//! subcommands of `store-demo`): a node's daemon, the scheduler, the S3 endpoint, an
//! application downloading from S3, and the speech runner.
//!
//! Why one executable: `cargo run --bin store-demo` builds only that binary, and the demo
//! must work from that one command on a fresh checkout; the roles call the same library code
//! as `store-daemon`, `store-scheduler`, `store-s3`, `s3-get` and `s2t-runner`. The daemon
//! and scheduler roles take those binaries' own flags and run through their entry points
//! (`store_daemon::cli`, `scheduler::cli`), so a node of the demo is exactly a
//! `store-daemon --flag ...` with the flags [`NodeFlags::argv`] lists. Separate
//! processes (rather than threads of the demo) give every node its own environment (its S3
//! endpoint) and, with `--netns`, its own network namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser as _;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::pace::{PacedStream, Pacer};
use store_tests::s3_server::DirBackend;

/// A hidden role of `store-demo`.
#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// A node's store daemon in the cluster; the arguments are `store-daemon`'s.
    #[command(hide = true)]
    RoleNode(BinaryArgs),
    /// The scheduler; the arguments are `store-scheduler`'s.
    #[command(hide = true)]
    RoleScheduler(BinaryArgs),
    /// The S3 endpoint, one listener per node.
    #[command(hide = true)]
    RoleS3(S3Args),
    /// An application downloading one object from S3 into its memory; prints JSON.
    #[command(hide = true)]
    RoleS3Get(S3GetArgs),
    /// s2t-runner on one node; prints its report as JSON, with the BLAKE3 of the weight
    /// bytes it held (`weights_blake3`).
    #[command(hide = true)]
    RoleTranscribe(TranscribeArgs),
}

/// The flags of a binary whose entry point a role runs.
#[derive(Debug, clap::Args)]
pub struct BinaryArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// One node's daemon, as `store-daemon` flags.
#[derive(Clone, Debug)]
pub struct NodeFlags {
    pub socket: PathBuf,
    pub capacity: u64,
    pub node_id: String,
    pub listen: SocketAddr,
    pub scheduler: SocketAddr,
    pub cert_dir: PathBuf,
    /// Bytes per second to peers, all uploads together.
    pub max_egress_rate: Option<u64>,
    pub log: String,
}

impl NodeFlags {
    /// The daemon's command line (without the program name).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            "--socket".to_owned(),
            self.socket.display().to_string(),
            "--capacity".to_owned(),
            self.capacity.to_string(),
            "--node-id".to_owned(),
            self.node_id.clone(),
            "--listen".to_owned(),
            self.listen.to_string(),
            "--scheduler".to_owned(),
            self.scheduler.to_string(),
            "--cert-dir".to_owned(),
            self.cert_dir.display().to_string(),
            // The demo's nodes as they always ran (the binary's defaults are 1 s and 30 s):
            // the cluster is stopped and started between cases, so it need not wait long.
            "--heartbeat-ms".to_owned(),
            "750".to_owned(),
            "--shutdown-grace-secs".to_owned(),
            "2".to_owned(),
            "--log".to_owned(),
            self.log.clone(),
        ];
        if let Some(rate) = self.max_egress_rate {
            // A rate with unit B is in bytes per second (without a unit, bits).
            argv.extend(["--max-egress-rate".to_owned(), format!("{rate}B")]);
        }
        argv
    }
}

/// The scheduler, as `store-scheduler` flags.
#[derive(Clone, Debug)]
pub struct SchedulerFlags {
    pub listen: SocketAddr,
    pub cert_dir: PathBuf,
    pub log: String,
}

impl SchedulerFlags {
    /// The scheduler's command line (without the program name).
    pub fn argv(&self) -> Vec<String> {
        vec![
            "--listen".to_owned(),
            self.listen.to_string(),
            "--cert-dir".to_owned(),
            self.cert_dir.display().to_string(),
            "--lease-ms".to_owned(),
            "3000".to_owned(),
            "--log".to_owned(),
            self.log.clone(),
        ]
    }
}

#[derive(Debug, clap::Args)]
pub struct S3Args {
    /// Directory holding the buckets.
    #[arg(long)]
    pub root: PathBuf,
    /// One listener per node (each with its own link when --rate is given).
    #[arg(long, required = true)]
    pub listen: Vec<SocketAddr>,
    /// Bytes per second each listener sends, all its connections together.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub access_key: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: String,
}

#[derive(Debug, clap::Args)]
pub struct S3GetArgs {
    /// `s3://BUCKET/KEY`; the endpoint and credentials come from the environment.
    #[arg(long)]
    pub url: String,
    /// Start downloading at this Unix time in milliseconds (set-up done before), so that
    /// downloads meant to run together start together.
    #[arg(long)]
    pub start_at_ms: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct TranscribeArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub audio: PathBuf,
    #[arg(long)]
    pub max_length: Option<usize>,
    #[arg(long, default_value_t = 120.0)]
    pub store_timeout: f64,
}

/// What [`Role::RoleS3Get`] prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct S3GetResult {
    pub bytes: u64,
    /// From the first request to the last byte in memory.
    pub seconds: f64,
    pub retries: u64,
    /// BLAKE3 of what arrived (computed after the clock stopped).
    pub blake3: String,
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Runs `role` in this process until it is done or killed.
pub fn run(role: Role) -> anyhow::Result<()> {
    match role {
        Role::RoleNode(a) => node(a),
        Role::RoleScheduler(a) => scheduler(a),
        Role::RoleS3(a) => s3(a),
        Role::RoleS3Get(a) => {
            let result = s3_get(&a)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Role::RoleTranscribe(a) => {
            let opts = s2t_runner::RunOptions {
                source: a.model.parse()?,
                audio: a.audio,
                num_beams: None,
                max_length: a.max_length,
                store_timeout: Duration::from_secs_f64(a.store_timeout.max(0.0)),
                // The demo checks the bytes the runner ran on against the source's digest.
                weights_digest: true,
            };
            let report = s2t_runner::run(&opts, |_| {})?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// `name` (the program name clap shows in errors) followed by `args`.
fn with_program(name: &str, args: Vec<String>) -> Vec<String> {
    std::iter::once(name.to_owned()).chain(args).collect()
}

fn node(a: BinaryArgs) -> anyhow::Result<()> {
    let args = store_daemon::cli::Args::try_parse_from(with_program("store-daemon", a.args))?;
    store_daemon::cli::run(args)
}

fn scheduler(a: BinaryArgs) -> anyhow::Result<()> {
    let args = scheduler::cli::Args::try_parse_from(with_program("store-scheduler", a.args))?;
    scheduler::cli::run(args)
}

/// The S3 endpoint over `root`: the same backend as `store-s3`, but each listener's writes
/// go through its own [`Pacer`] when a rate is given (see [`super::pace`]).
fn s3(a: S3Args) -> anyhow::Result<()> {
    let mut builder = s3s::service::S3ServiceBuilder::new(DirBackend::new(a.root));
    builder.set_auth(s3s::auth::SimpleAuth::from_single(a.access_key, a.secret_key));
    let service = builder.build();
    runtime()?.block_on(async move {
        let mut tasks = Vec::new();
        for addr in a.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let pacer = a.rate.map(Pacer::new);
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let _ = stream.set_nodelay(true);
                    let service = service.clone();
                    let pacer = pacer.clone();
                    tokio::spawn(async move {
                        let http = hyper::server::conn::http1::Builder::new();
                        let result = match pacer {
                            Some(p) => http.serve_connection(TokioIo::new(PacedStream::new(stream, p)), service).await,
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "S3 connection ended with an error");
                        }
                    });
                }
            }));
        }
        // Runs until killed: the demo stops it with the cluster.
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

fn s3_get(a: &S3GetArgs) -> anyhow::Result<S3GetResult> {
    use store_client::s3::{S3Config, S3Reader, S3Url};
    let url: S3Url = a.url.parse()?;
    let config = S3Config::from_env()?;
    runtime()?.block_on(async move {
        let reader = S3Reader::new(config).await?;
        if let Some(at) = a.start_at_ms {
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await;
        }
        let (buf, stats) = reader.download_to_vec(&url).await?;
        Ok(S3GetResult {
            bytes: stats.bytes,
            seconds: stats.elapsed.as_secs_f64(),
            retries: stats.retries,
            blake3: blake3::hash(&buf).to_hex().to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_flags_are_the_daemons() {
        let flags = NodeFlags {
            socket: "/tmp/node-1.sock".into(),
            capacity: 1 << 30,
            node_id: "node-1".into(),
            listen: "127.0.0.1:7701".parse().unwrap(),
            scheduler: "127.0.0.1:7700".parse().unwrap(),
            cert_dir: "/tmp/certs".into(),
            max_egress_rate: Some(25_000_000),
            log: "warn".into(),
        };
        let args = store_daemon::cli::Args::try_parse_from(with_program("store-daemon", flags.argv())).unwrap();
        let config = store_daemon::cli::config(&args).unwrap();
        assert_eq!(config.capacity, 1 << 30);
        assert_eq!(config.shutdown_grace, Duration::from_secs(2));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.max_egress_rate, Some(25_000_000));
        assert_eq!(cluster.heartbeat, Duration::from_millis(750));
        assert_eq!(cluster.certs.cert, PathBuf::from("/tmp/certs/node-1.pem"));
    }

    #[test]
    fn scheduler_flags_are_the_schedulers() {
        let flags = SchedulerFlags {
            listen: "127.0.0.1:7700".parse().unwrap(),
            cert_dir: "/tmp/certs".into(),
            log: "warn".into(),
        };
        let args = scheduler::cli::Args::try_parse_from(with_program("store-scheduler", flags.argv())).unwrap();
        let config = scheduler::cli::config(&args).unwrap();
        assert_eq!(config.lease, Duration::from_secs(3));
    }
}
