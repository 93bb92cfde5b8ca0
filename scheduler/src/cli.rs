//! The `store-scheduler` command line: its flags (each with a `STORE_*` variable), the
//! [`SchedulerConfig`] they make, and running a scheduler from them. The binary is a thin
//! wrapper, so anything that starts a scheduler in-process (the demo) runs exactly what
//! `store-scheduler --flag ...` runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use store_client::tls::CertPaths;
use tokio_util::sync::CancellationToken;

use crate::server::{Scheduler, SchedulerConfig};

/// Cluster scheduler of the object store: the global location table.
#[derive(Debug, Parser)]
#[command(name = "store-scheduler", version, about)]
pub struct Args {
    /// UDP address to accept QUIC connections on.
    #[arg(long, env = "STORE_SCHEDULER_LISTEN", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    /// Directory with `ca.pem`, `NAME.pem` and `NAME.key` (as `storectl certs` writes them).
    #[arg(long, env = "STORE_TLS_DIR", required_unless_present_all = ["ca", "cert", "key"])]
    cert_dir: Option<PathBuf>,
    /// Name of this scheduler's certificate in --cert-dir.
    #[arg(long, env = "STORE_TLS_NAME", default_value = "scheduler")]
    name: String,
    /// CA certificate (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_CA")]
    ca: Option<PathBuf>,
    /// This scheduler's certificate (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_CERT")]
    cert: Option<PathBuf>,
    /// This scheduler's private key (overrides --cert-dir).
    #[arg(long, env = "STORE_TLS_KEY")]
    key: Option<PathBuf>,
    /// Milliseconds a node stays registered after its last message.
    #[arg(long, env = "STORE_SCHEDULER_LEASE_MS", default_value_t = 3000)]
    lease_ms: u64,
    /// Accept node messages whatever name the connection's certificate carries.
    #[arg(long, env = "STORE_SCHEDULER_ANY_NODE_NAME")]
    any_node_name: bool,
    /// Placement: inbound bandwidth of a node before any transfer into it was reported, in
    /// Mbit/s.
    #[arg(long, env = "STORE_SCHEDULER_DEFAULT_INBOUND_MBIT", default_value_t = 1000.0)]
    default_inbound_mbit: f64,
    /// TCP address for Prometheus `/metrics`, e.g. 127.0.0.1:9700 [default: no metrics endpoint].
    #[arg(long, env = "STORE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STORE_LOG", default_value = "info")]
    log: String,
}

fn cert_paths(args: &Args) -> anyhow::Result<CertPaths> {
    let from_dir = args.cert_dir.as_deref().map(|dir| CertPaths::in_dir(dir, &args.name));
    let pick = |explicit: &Option<PathBuf>, in_dir: Option<PathBuf>, flag: &str| {
        explicit.clone().or(in_dir).with_context(|| format!("give --{flag} or --cert-dir"))
    };
    Ok(CertPaths {
        ca: pick(&args.ca, from_dir.as_ref().map(|p| p.ca.clone()), "ca")?,
        cert: pick(&args.cert, from_dir.as_ref().map(|p| p.cert.clone()), "cert")?,
        key: pick(&args.key, from_dir.as_ref().map(|p| p.key.clone()), "key")?,
    })
}

/// The scheduler's configuration from its command line.
pub fn config(args: &Args) -> anyhow::Result<SchedulerConfig> {
    anyhow::ensure!(args.lease_ms > 0, "--lease-ms must be positive");
    let mut config = SchedulerConfig::new(args.listen, cert_paths(args)?);
    config.lease = Duration::from_millis(args.lease_ms);
    config.check_node_names = !args.any_node_name;
    config.metrics_addr = args.metrics_addr;
    anyhow::ensure!(
        args.default_inbound_mbit.is_finite() && args.default_inbound_mbit > 0.0,
        "--default-inbound-mbit must be positive"
    );
    config.default_inbound_bytes_per_second = args.default_inbound_mbit * 1e6 / 8.0;
    Ok(config)
}

/// Runs a scheduler as the binary does: logging, configuration, then serving until SIGTERM
/// or SIGINT.
pub fn run(args: Args) -> anyhow::Result<()> {
    store_service::init_logging(&args.log).context("bad --log filter")?;
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let scheduler = Scheduler::bind(config)?;
        store_service::notify_ready(&format!("serving on {}", scheduler.local_addr()));
        let shutdown = CancellationToken::new();
        tokio::spawn(store_service::cancel_on_signals(shutdown.clone(), "scheduler"));
        scheduler.run(shutdown).await;
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
    fn explicit_files_override_the_cert_dir() {
        let args = Args::try_parse_from(["store-scheduler", "--cert-dir", "/certs", "--name", "s1", "--key", "/k"])
            .expect("valid arguments");
        let paths = cert_paths(&args).expect("complete paths");
        assert_eq!(paths.ca, PathBuf::from("/certs/ca.pem"));
        assert_eq!(paths.cert, PathBuf::from("/certs/s1.pem"));
        assert_eq!(paths.key, PathBuf::from("/k"));
        assert!(Args::try_parse_from(["store-scheduler", "--ca", "/ca", "--cert", "/c"]).is_err());
        let explicit = Args::try_parse_from(["store-scheduler", "--ca", "/ca", "--cert", "/c", "--key", "/k"])
            .expect("valid arguments");
        assert_eq!(cert_paths(&explicit).expect("complete paths").cert, PathBuf::from("/c"));
        assert_eq!(explicit.listen, "0.0.0.0:7700".parse::<SocketAddr>().expect("address"));
        assert_eq!(explicit.lease_ms, 3000);
    }
}
