//! The bare quinn stream, the baseline of the transfer cases: hidden subcommands of
//! `cluster-bench` run inside the hosts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use store_client::tls::{CertPaths, Identity};

use super::config::{QUINN_ALPN, QUINN_SLICE};
use store_tests::payload;

/// Result of one bare quinn transfer, printed by `quinn-source` as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuinnResult {
    pub bytes: u64,
    pub seconds: f64,
}

// The bare quinn stream (hidden subcommands of cluster-bench, run inside the hosts)
// ---------------------------------------------------------------------------------------

pub(super) fn identity(cert_dir: &Path, name: &str) -> anyhow::Result<Identity> {
    Identity::load(&CertPaths::in_dir(cert_dir, name)).with_context(|| format!("loading {name}'s certificate"))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // The daemons' runtime: multi-threaded, one worker per core.
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Accepts connections on `listen` (TLS as a daemon's peer server, `bulk_transport`) and
/// reads every bidirectional stream to its end, answering the byte count (8 bytes LE).
/// Prints `listening ADDR` once ready; runs until killed.
pub fn quinn_sink(listen: SocketAddr, cert_dir: &Path, name: &str) -> anyhow::Result<()> {
    let id = identity(cert_dir, name)?;
    let server = id.quic_server(QUINN_ALPN, store_client::tls::bulk_transport())?;
    runtime()?.block_on(async move {
        let endpoint = quinn::Endpoint::server(server, listen).with_context(|| format!("binding {listen}"))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {}", endpoint.local_addr()?)?;
            out.flush()?;
        }
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0u64;
                        loop {
                            match recv.read_chunk(usize::MAX, true).await {
                                Ok(Some(chunk)) => total += chunk.bytes.len() as u64,
                                Ok(None) => break,
                                Err(_) => return,
                            }
                        }
                        if send.write_all(&total.to_le_bytes()).await.is_ok() {
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    });
                }
            });
        }
        anyhow::Ok(())
    })
}

/// Sends `bytes` on one stream to a [`quinn_sink`] at `to` (TLS as a daemon's peer client,
/// `bulk_transport`), written in [`QUINN_SLICE`] pieces like the daemons' chunk server;
/// the time runs from opening the stream to the sink's count.
pub fn quinn_source(
    to: SocketAddr,
    server_name: &str,
    cert_dir: &Path,
    name: &str,
    bytes: u64,
) -> anyhow::Result<QuinnResult> {
    let id = identity(cert_dir, name)?;
    let client = id.quic_client(QUINN_ALPN, store_client::tls::bulk_transport())?;
    let buffer = payload(4 << 20, 7);
    let limit = Duration::from_secs(110);
    runtime()?.block_on(async move {
        let bind = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let endpoint = quinn::Endpoint::client(bind).context("binding the client endpoint")?;
        let work = async {
            let conn = endpoint.connect_with(client, to, server_name)?.await.context("connecting to the sink")?;
            let start = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut left = bytes;
            while left > 0 {
                for piece in buffer.chunks(QUINN_SLICE) {
                    let n = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    send.write_all(&piece[..n]).await?;
                    left -= n as u64;
                    if left == 0 {
                        break;
                    }
                }
            }
            send.finish()?;
            let answer = recv.read_to_end(8).await.context("reading the sink's count")?;
            let seconds = start.elapsed().as_secs_f64();
            let count = <[u8; 8]>::try_from(answer.as_slice()).map(u64::from_le_bytes).unwrap_or(0);
            conn.close(quinn::VarInt::from_u32(0), b"done");
            anyhow::Ok(QuinnResult { bytes: count, seconds })
        };
        let result =
            tokio::time::timeout(limit, work).await.map_err(|_| anyhow::anyhow!("timed out after {limit:?}"))?;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        result
    })
}
