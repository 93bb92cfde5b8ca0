//! The `store-daemon` command line: its flags (each with a `STORE_*` variable), the
//! [`DaemonConfig`] they make, and running a daemon from them. The binary is a thin wrapper,
//! so anything that starts a daemon in-process (the demo) runs exactly what
//! `store-daemon --flag ...` runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use store_client::tls::CertPaths;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::{Daemon, DaemonConfig};

/// Node-local shared-memory object store daemon.
#[derive(Debug, Parser)]
#[command(name = "store-daemon", version, about)]
pub struct Args {
    /// Unix socket to listen on [default: $RUNTIME_DIRECTORY/store.sock, /run/store/store.sock
    /// or $XDG_RUNTIME_DIR/store.sock].
    #[arg(long, env = "STORE_SOCKET")]
    socket: Option<PathBuf>,
    /// Byte budget for all objects, e.g. 4GiB or 512MiB.
    #[arg(long, env = "STORE_CAPACITY", default_value = "4GiB")]
    capacity: bytesize::ByteSize,
    /// Extra users allowed to connect, by uid or name (the daemon's own uid and root always are).
    #[arg(long = "allow-uid", env = "STORE_ALLOW_UIDS", value_delimiter = ',')]
    allow_uids: Vec<String>,
    /// Groups whose members (by primary group) may connect, by gid or name.
    #[arg(long = "allow-gid", env = "STORE_ALLOW_GIDS", value_delimiter = ',')]
    allow_gids: Vec<String>,
    /// Chunk size of object manifests (a power of two).
    #[arg(long, env = "STORE_CHUNK_SIZE", default_value = "4MiB")]
    chunk_size: bytesize::ByteSize,
    /// This node's name in the cluster (the DNS name of its certificate). Joining a cluster
    /// needs it, --scheduler and the certificates.
    #[arg(long, env = "STORE_NODE_ID")]
    node_id: Option<String>,
    /// UDP address of the QUIC endpoint for peers.
    #[arg(long, env = "STORE_LISTEN", default_value = "0.0.0.0:7701")]
    listen: std::net::SocketAddr,
    /// Address peers use to reach this node [default: --listen].
    #[arg(long, env = "STORE_ADVERTISE")]
    advertise: Option<std::net::SocketAddr>,
    /// The scheduler's QUIC address.
    #[arg(long, env = "STORE_SCHEDULER")]
    scheduler: Option<std::net::SocketAddr>,
    /// Name in the scheduler's certificate.
    #[arg(long, env = "STORE_SCHEDULER_NAME", default_value = "scheduler")]
    scheduler_name: String,
    /// Directory with ca.pem, <node-id>.pem and <node-id>.key (from `storectl certs`).
    #[arg(long, env = "STORE_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// CA certificate (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Labels for placement, e.g. site=cloud,rack=r1.
    #[arg(long = "label", env = "STORE_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Resources for placement constraints, e.g. cpu=16,gpu=2 (`cpu` is also how many tasks
    /// the scheduler expects this node to run at once).
    #[arg(long = "resource", env = "STORE_RESOURCES", value_delimiter = ',')]
    resources: Vec<String>,
    /// Cap on replication traffic sent to peers, in bits per second (e.g. 200Mbit, 1Gbit).
    #[arg(long, env = "STORE_MAX_EGRESS_RATE")]
    max_egress_rate: Option<String>,
    /// Heartbeat interval to the scheduler, in milliseconds.
    #[arg(long, env = "STORE_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Fault injection for tests: corrupt every chunk served to peers (test builds only:
    /// feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "STORE_FAULT_CORRUPT_CHUNKS", hide = true)]
    fault_corrupt_chunks: bool,
    /// TCP address for Prometheus `/metrics`, e.g. 127.0.0.1:9701 [default: no metrics endpoint].
    #[arg(long, env = "STORE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Local client connections served at once; one more gets a LimitExceeded error.
    #[arg(long, env = "STORE_MAX_CLIENTS", default_value_t = 4096)]
    max_clients: usize,
    /// Unsealed objects (created, not yet sealed) one client connection may hold.
    #[arg(long, env = "STORE_MAX_UNSEALED_PER_CLIENT", default_value_t = 64)]
    max_unsealed_per_client: usize,
    /// Milliseconds a client may take to send one request once its first byte arrived (and
    /// to take one response) before its connection is cut.
    #[arg(long, env = "STORE_FRAME_TIMEOUT_MS", default_value_t = 30_000)]
    frame_timeout_ms: u64,
    /// Seconds that requests and transfers under way get to finish after SIGTERM.
    #[arg(long, env = "STORE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STORE_LOG", default_value = "info")]
    log: String,
    /// S3-compatible endpoint for `storectl pull s3://...`, e.g. http://10.0.0.20:9000
    /// [default: AWS S3]. Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID, ...).
    #[arg(long, env = store_client::s3::ENDPOINT_ENV)]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION or the AWS profile, else us-east-1].
    #[arg(long, env = store_client::s3::REGION_ENV)]
    s3_region: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key); `--s3-path-style=false` for
    /// virtual-hosted style [default: path-style exactly when --s3-endpoint is set].
    #[arg(long, env = store_client::s3::PATH_STYLE_ENV, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    s3_path_style: Option<bool>,
    /// Size of each ranged GET of an S3 download.
    #[arg(long, env = store_client::s3::PART_SIZE_ENV, default_value = "8MiB")]
    s3_part_size: bytesize::ByteSize,
    /// Ranged GETs in flight per S3 download.
    #[arg(long, env = store_client::s3::CONCURRENCY_ENV, default_value_t = store_client::s3::DEFAULT_CONCURRENCY)]
    s3_concurrency: usize,
    /// Attempts per S3 request (and per part without progress) before giving up.
    #[arg(long, env = store_client::s3::MAX_ATTEMPTS_ENV, default_value_t = 8)]
    s3_max_attempts: u32,
    /// S3 objects local clients and peers may make this daemon read: BUCKET, BUCKET/PREFIX
    /// or *, comma-separated [default: any the credentials can read].
    #[arg(long = "s3-allow", env = "STORE_S3_ALLOW", value_delimiter = ',')]
    s3_allow: Vec<String>,
}

/// The S3 client settings from the `--s3-*` flags (each with its `STORE_S3_*` variable).
fn s3_config(args: &Args) -> anyhow::Result<store_client::s3::S3Config> {
    let config = store_client::s3::S3Config {
        endpoint: args.s3_endpoint.clone().filter(|e| !e.trim().is_empty()),
        region: args.s3_region.clone().filter(|r| !r.trim().is_empty()),
        path_style: args.s3_path_style,
        max_attempts: args.s3_max_attempts,
        ..Default::default()
    };
    // with_overrides validates the whole configuration.
    Ok(config.with_overrides(Some(args.s3_part_size.as_u64()), Some(args.s3_concurrency))?)
}

/// Parses a rate such as `200Mbit`, `1.5Gbit` or `25MB` (bytes) into bytes per second.
fn parse_rate(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("bad rate {text:?}"))?;
    let bits_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "b" => 8.0,
        "kb" => 8e3,
        "mb" => 8e6,
        "gb" => 8e9,
        other => anyhow::bail!("unknown rate unit {other:?} in {text:?} (use bit, kbit, Mbit, Gbit or B, kB, MB, GB)"),
    };
    Ok((number * bits_per_unit / 8.0) as u64)
}

/// A numeric id, or a user or group name looked up with `lookup`.
fn resolve_id(text: &str, lookup: impl Fn(&str) -> nix::Result<Option<u32>>) -> anyhow::Result<u32> {
    let text = text.trim();
    if let Ok(id) = text.parse() {
        return Ok(id);
    }
    lookup(text)
        .with_context(|| format!("looking up {text:?}"))?
        .with_context(|| format!("no user or group named {text:?}"))
}

fn cluster_config(args: &Args) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(scheduler) = args.scheduler else { return Ok(None) };
    let node_id = args.node_id.clone().context("--node-id is required with --scheduler")?;
    let from_dir = args.cert_dir.as_ref().map(|d| CertPaths::in_dir(d, &node_id));
    let pick = |explicit: &Option<PathBuf>, from: Option<PathBuf>, what: &str| {
        explicit.clone().or(from).with_context(|| format!("{what}: give --cert-dir or --tls-{what}"))
    };
    let certs = CertPaths {
        ca: pick(&args.tls_ca, from_dir.as_ref().map(|p| p.ca.clone()), "ca")?,
        cert: pick(&args.tls_cert, from_dir.as_ref().map(|p| p.cert.clone()), "cert")?,
        key: pick(&args.tls_key, from_dir.as_ref().map(|p| p.key.clone()), "key")?,
    };
    let mut labels = std::collections::BTreeMap::new();
    for label in &args.labels {
        let (k, v) = label.split_once('=').with_context(|| format!("label {label:?} is not key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let mut resources = std::collections::BTreeMap::new();
    for resource in &args.resources {
        let (k, n) =
            store_client::wire::node::parse_resource(resource).map_err(|e| anyhow::anyhow!("--resource {e}"))?;
        resources.insert(k, n);
    }
    let max_egress_rate = args.max_egress_rate.as_deref().map(parse_rate).transpose()?;
    Ok(Some(ClusterConfig {
        node_id,
        listen: args.listen,
        advertise: args.advertise,
        scheduler,
        scheduler_name: args.scheduler_name.clone(),
        certs,
        labels,
        resources,
        max_egress_rate,
        heartbeat: std::time::Duration::from_millis(args.heartbeat_ms.max(50)),
        #[cfg(feature = "fault-injection")]
        corrupt_served_chunks: args.fault_corrupt_chunks,
    }))
}

/// The daemon's configuration from its command line.
pub fn config(args: &Args) -> anyhow::Result<DaemonConfig> {
    let chunk_size = args.chunk_size.as_u64();
    store_client::manifest::check_store_chunk_size(chunk_size).context("bad --chunk-size")?;
    let mut config = DaemonConfig::new(
        args.socket.clone().unwrap_or_else(store_client::default_socket_path),
        args.capacity.as_u64(),
    );
    for user in &args.allow_uids {
        config
            .allow_uids
            .push(resolve_id(user, |name| nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw())))?);
    }
    for group in &args.allow_gids {
        config
            .allow_gids
            .push(resolve_id(group, |name| nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw())))?);
    }
    config.chunk_size = chunk_size;
    config.cluster = cluster_config(args)?;
    config.metrics_addr = args.metrics_addr;
    config.shutdown_grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
    config.clients = crate::server::ClientLimits {
        max_clients: args.max_clients.max(1),
        max_unsealed: args.max_unsealed_per_client,
        frame_timeout: std::time::Duration::from_millis(args.frame_timeout_ms.max(1)),
    };
    config.s3 = s3_config(args).context("bad --s3-* setting")?;
    config.s3_allow = crate::s3_ingest::S3AllowList::parse(&args.s3_allow).map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Runs a daemon as the binary does: logging, configuration, then serving until SIGTERM or
/// SIGINT (and the shutdown grace).
pub fn run(args: Args) -> anyhow::Result<()> {
    store_service::init_logging(&args.log).context("bad --log filter")?;
    let config = config(&args)?;
    let fd_limit = crate::server::raise_fd_limit();
    tracing::info!(fd_limit, "open-file limit (one descriptor per object)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let daemon = Daemon::bind(config)?;
        // Every listener is bound (unix socket, QUIC endpoint, metrics): clients can connect.
        let status = format!("serving on {}", daemon.socket_path().display());
        store_service::notify_ready(&status);
        let shutdown = CancellationToken::new();
        tokio::spawn(store_service::cancel_on_signals(shutdown.clone(), "daemon"));
        daemon.run(shutdown).await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn rates_accept_bits_and_bytes() {
        assert_eq!(parse_rate("200Mbit").unwrap(), 25_000_000);
        assert_eq!(parse_rate("25000000B").unwrap(), 25_000_000);
        assert!(parse_rate("3 parsecs").is_err());
    }

    #[test]
    fn flags_make_the_cluster_config() {
        let args = Args::try_parse_from([
            "store-daemon",
            "--socket",
            "/tmp/s.sock",
            "--capacity",
            "1000",
            "--node-id",
            "node-1",
            "--scheduler",
            "127.0.0.1:7700",
            "--cert-dir",
            "/certs",
            "--shutdown-grace-secs",
            "2",
            "--heartbeat-ms",
            "750",
            "--max-egress-rate",
            "100B",
        ])
        .unwrap();
        let config = config(&args).unwrap();
        assert_eq!(config.capacity, 1000);
        assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(2));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, "node-1");
        assert_eq!(cluster.max_egress_rate, Some(100));
        assert_eq!(cluster.heartbeat, std::time::Duration::from_millis(750));
        assert_eq!(cluster.certs.key, PathBuf::from("/certs/node-1.key"));
    }
}
