//! `store-s3`: the embedded S3-compatible endpoint over a directory (buckets are its
//! subdirectories), for the default setup, the demo and benchmarks.
//!
//! ```sh
//! AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s store-s3 --root /srv/s3 --bucket models
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use store_tests::s3_server::{DirBackend, Faults, serve};
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
    /// Rewrite this file every 100 ms (and at exit) with the bytes served and stored so far,
    /// as JSON: `{"body_bytes": GET body bytes, "uploaded_bytes": PUT/UploadPart bytes}`
    /// (what the cluster bench reports as "S3 bytes served").
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

fn write_stats(path: &std::path::Path, faults: &Faults) -> std::io::Result<()> {
    let text = serde_json::json!({
        "body_bytes": faults.body_bytes(),
        "uploaded_bytes": faults.uploaded_bytes(),
        "served_503": faults.served_503(),
    })
    .to_string();
    // Renamed into place, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
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
        let backend = DirBackend::new(args.root);
        if let Some(path) = args.stats_file.clone() {
            let faults = backend.faults().clone();
            let token = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = write_stats(&path, &faults) {
                        eprintln!("store-s3: cannot write {}: {e}", path.display());
                    }
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
            });
        }
        let faults = backend.faults().clone();
        serve(listener, backend, &args.access_key, &args.secret_key, shutdown).await;
        if let Some(path) = &args.stats_file {
            write_stats(path, &faults)?;
        }
        anyhow::Ok(())
    })
}
