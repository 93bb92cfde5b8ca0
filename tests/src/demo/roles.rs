//! The processes of the experiment, all played by the demo's own executable (hidden
//! subcommands of `store-demo`): a node's daemon, the scheduler, the S3 endpoint, an
//! application downloading from S3, and the speech runner.
//!
//! Why one executable: `cargo run --bin store-demo` builds only that binary, and the demo
//! must work from that one command on a fresh checkout; the roles call the same library code
//! as `store-daemon`, `store-scheduler`, `store-s3`, `s3-get` and `s2t-runner`. Separate
//! processes (rather than threads of the demo) give every node its own environment (its S3
//! endpoint) and, with `--netns`, its own network namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use store_client::tls::CertPaths;
use tokio_util::sync::CancellationToken;

use super::pace::{PacedStream, Pacer};
use crate::s3_server::DirBackend;

/// A hidden role of `store-demo`.
#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// A node's store daemon in the cluster.
    #[command(hide = true)]
    RoleNode(NodeArgs),
    /// The scheduler.
    #[command(hide = true)]
    RoleScheduler(SchedulerArgs),
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

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub capacity: u64,
    #[arg(long)]
    pub node_id: String,
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub scheduler: SocketAddr,
    #[arg(long)]
    pub cert_dir: PathBuf,
    /// Bytes per second to peers, all uploads together.
    #[arg(long)]
    pub max_egress_rate: Option<u64>,
    #[arg(long, default_value_t = 750)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value = "warn")]
    pub log: String,
}

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub cert_dir: PathBuf,
    #[arg(long, default_value_t = 3000)]
    pub lease_ms: u64,
    #[arg(long, default_value = "warn")]
    pub log: String,
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

fn node(a: NodeArgs) -> anyhow::Result<()> {
    store_service::init_logging(&a.log).context("bad --log filter")?;
    let mut config = store_daemon::DaemonConfig::new(a.socket, a.capacity);
    config.shutdown_grace = Duration::from_secs(2);
    config.cluster = Some(store_daemon::cluster::ClusterConfig {
        certs: CertPaths::in_dir(&a.cert_dir, &a.node_id),
        node_id: a.node_id,
        listen: a.listen,
        advertise: None,
        scheduler: a.scheduler,
        scheduler_name: "scheduler".into(),
        labels: Default::default(),
        resources: Default::default(),
        max_egress_rate: a.max_egress_rate,
        heartbeat: Duration::from_millis(a.heartbeat_ms.max(50)),
        corrupt_served_chunks: false,
    });
    store_daemon::server::raise_fd_limit();
    runtime()?.block_on(async move {
        let daemon = store_daemon::Daemon::bind(config)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(store_service::cancel_on_signals(shutdown.clone(), "daemon"));
        daemon.run(shutdown).await;
        anyhow::Ok(())
    })
}

fn scheduler(a: SchedulerArgs) -> anyhow::Result<()> {
    store_service::init_logging(&a.log).context("bad --log filter")?;
    let mut config = scheduler::SchedulerConfig::new(a.listen, CertPaths::in_dir(&a.cert_dir, "scheduler"));
    config.lease = Duration::from_millis(a.lease_ms.max(1));
    runtime()?.block_on(async move {
        let scheduler = scheduler::Scheduler::bind(config)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(store_service::cancel_on_signals(shutdown.clone(), "scheduler"));
        scheduler.run(shutdown).await;
        anyhow::Ok(())
    })
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
