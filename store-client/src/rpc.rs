//! Request/response over QUIC: each request opens a bidirectional stream, sends one frame
//! and finishes its half; the answer is one frame, optionally followed by raw bytes.

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::frame::{self, MAX_FRAME_LEN};

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("timed out")]
    Timeout,
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), RpcError> {
    send.write_all(&frame::encode(msg)).await?;
    Ok(())
}

/// How far ahead of the bytes actually received a frame's buffer grows: a header that
/// announces a large frame costs memory only as its bytes arrive, so many streams that
/// announce 16 MiB and send nothing hold almost nothing.
const READ_STEP: usize = 64 * 1024;

/// Reads one frame.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, RpcError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(RpcError::TooLarge(len));
    }
    let mut body = Vec::with_capacity(len.min(READ_STEP));
    while body.len() < len {
        let start = body.len();
        body.resize(start + (len - start).min(READ_STEP), 0);
        recv.read_exact(&mut body[start..]).await?;
    }
    frame::decode(&body).map_err(|e| RpcError::Malformed(e.to_string()))
}

/// [`read_frame`] that gives up after `limit` ([`RpcError::Timeout`]): what a server uses,
/// so a peer that opens a stream and sends half a request holds nothing for long.
pub async fn read_frame_within<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limit: std::time::Duration,
) -> Result<T, RpcError> {
    tokio::time::timeout(limit, read_frame(recv)).await.map_err(|_| RpcError::Timeout)?
}

/// Sends `req` on a new stream and reads the response frame; the receive stream is returned
/// for responses that carry bytes after the frame.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
) -> Result<(Resp, quinn::RecvStream), RpcError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    send.finish()?;
    let resp = read_frame(&mut recv).await?;
    Ok((resp, recv))
}
