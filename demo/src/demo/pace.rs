//! A node's downlink from S3 on loopback: every byte the embedded S3 endpoint writes to the
//! connections of one listener is paced through one shared [`Pacer`].
//!
//! Why on the S3 side: on loopback the daemons' egress limit covers peer traffic only, and
//! an S3 download is a plain TCP stream from the endpoint. Each emulated node gets a listener
//! of its own (its "NIC" towards S3) and all of that node's S3 connections share its rate, so
//! k parallel ranged GETs from one node split one 200 Mbit/s link exactly as they would on
//! a real instance, while N nodes each get their own. The S3 service itself is not the
//! bottleneck, as with real S3.
//!
//! The pacer is a virtual clock rather than a token bucket with burst credit: each write
//! reserves `bytes / rate` of link time after the end of the previous reservation, and the
//! writer waits until its reservation has elapsed before writing more, so an idle link never
//! banks credit and a transfer's time is its size over the rate (plus one write's worth).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Largest piece written at once: 64 KiB is 2.6 ms at 200 Mbit/s, fine-grained enough that
/// parallel connections interleave smoothly.
const MAX_WRITE: usize = 64 * 1024;

/// One link's shared clock.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_second: f64,
    /// When the link is free again.
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Arc<Self> {
        Arc::new(Self { bytes_per_second: bytes_per_second.max(1) as f64, free_at: Mutex::new(None) })
    }

    /// Books `bytes` of link time; returns when that booking ends.
    fn book(&self, bytes: usize) -> Instant {
        let now = Instant::now();
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = free_at.map_or(now, |f| f.max(now));
        let end = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
        *free_at = Some(end);
        end
    }
}

/// A stream whose writes go through a [`Pacer`]; reads pass through.
#[derive(Debug)]
pub struct PacedStream<S> {
    inner: S,
    pacer: Arc<Pacer>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> PacedStream<S> {
    pub fn new(inner: S, pacer: Arc<Pacer>) -> Self {
        Self { inner, pacer, wait: None }
    }
}

impl<S> PacedStream<S> {
    /// Ready once the link has carried everything written so far.
    fn poll_link(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PacedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PacedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_link(cx).is_pending() {
            return Poll::Pending;
        }
        let piece = &buf[..buf.len().min(MAX_WRITE)];
        match Pin::new(&mut this.inner).poll_write(cx, piece) {
            Poll::Ready(Ok(n)) if n > 0 => {
                // The bytes are out; the next write waits until the link has carried them.
                let end = this.pacer.book(n);
                if end > Instant::now() {
                    this.wait = Some(Box::pin(tokio::time::sleep_until(end)));
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Flushed means carried: the last piece's link time has passed too, so a response does
    /// not end before the link could have delivered it.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_link(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_link(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn two_writers_share_one_rate() {
        let pacer = Pacer::new(1_000_000);
        // 2 x 150 kB at 1 MB/s: 0.3 s whoever writes it.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let mut paced = PacedStream::new(a, pacer.clone());
            tasks.push(tokio::spawn(async move {
                let data = vec![7u8; 150_000];
                paced.write_all(&data).await.unwrap();
                paced.shutdown().await.unwrap();
            }));
            tasks.push(tokio::spawn(async move {
                let mut sink = Vec::new();
                b.read_to_end(&mut sink).await.unwrap();
                assert_eq!(sink.len(), 150_000);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.28..0.5).contains(&took), "{took}");
    }
}
