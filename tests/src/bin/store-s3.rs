//! `store-s3`: the embedded S3-compatible endpoint over a directory (buckets are its
//! subdirectories), for the default setup, the demo and benchmarks.
//!
//! ```sh
//! AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s store-s3 --root /srv/s3 --bucket models
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use store_tests::s3_server::{DirBackend, serve};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "S3-compatible endpoint over a directory (buckets are subdirectories)")]
struct Args {
    /// Directory holding the buckets.
    #[arg(long, env = "STORE_S3_ROOT")]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "STORE_S3_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The one access key accepted.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    /// Its secret.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Buckets to create if missing.
    #[arg(long)]
    bucket: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STORE_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    for b in &args.bucket {
        std::fs::create_dir_all(args.root.join(b))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("store-s3: serving {} on http://{}", args.root.display(), listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        });
        serve(listener, DirBackend::new(args.root), &args.access_key, &args.secret_key, shutdown).await;
        anyhow::Ok(())
    })
}
