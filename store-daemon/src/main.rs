use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use store_daemon::{Daemon, DaemonConfig};
use tokio_util::sync::CancellationToken;

/// Node-local shared-memory object store daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket to listen on [default: $RUNTIME_DIRECTORY/store.sock, /run/store/store.sock
    /// or $XDG_RUNTIME_DIR/store.sock].
    #[arg(long, env = "STORE_SOCKET")]
    socket: Option<PathBuf>,
    /// Byte budget for all objects, e.g. 4GiB or 512MiB.
    #[arg(long, env = "STORE_CAPACITY", default_value = "4GiB")]
    capacity: bytesize::ByteSize,
    /// Extra uids allowed to connect (the daemon's own uid and root always are).
    #[arg(long = "allow-uid", env = "STORE_ALLOW_UIDS", value_delimiter = ',')]
    allow_uids: Vec<u32>,
    /// Gids whose members may connect.
    #[arg(long = "allow-gid", env = "STORE_ALLOW_GIDS", value_delimiter = ',')]
    allow_gids: Vec<u32>,
    /// Chunk size of object manifests (a power of two).
    #[arg(long, env = "STORE_CHUNK_SIZE", default_value = "4MiB")]
    chunk_size: bytesize::ByteSize,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "STORE_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let chunk_size = args.chunk_size.as_u64();
    anyhow::ensure!(
        chunk_size.is_power_of_two() && chunk_size >= 1024,
        "--chunk-size must be a power of two of at least 1 KiB"
    );
    let mut config =
        DaemonConfig::new(args.socket.unwrap_or_else(store_client::default_socket_path), args.capacity.as_u64());
    config.allow_uids.extend(args.allow_uids);
    config.allow_gids = args.allow_gids;
    config.chunk_size = chunk_size;

    let fd_limit = store_daemon::server::raise_fd_limit();
    tracing::info!(fd_limit, "open-file limit (one descriptor per object)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let daemon = Daemon::bind(config)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(store_daemon::server::cancel_on_signals(shutdown.clone()));
        daemon.run(shutdown).await;
        anyhow::Ok(())
    })
}
