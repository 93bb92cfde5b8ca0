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

/// Reads one frame.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, RpcError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(RpcError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    frame::decode(&body).map_err(|e| RpcError::Malformed(e.to_string()))
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
