//! Framing of the local protocol: a little-endian `u32` length, then that many bytes of
//! postcard. Decoding is a plain buffer state machine shared by the blocking client and
//! the async daemon.

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Largest frame body either side accepts. Requests are small; a listing of many objects is
/// the largest response.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A header announced more than the reader's limit ([`MAX_FRAME_LEN`] or the one given
    /// to [`FrameBuffer::with_limit`]).
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing plain-data enums into a Vec cannot fail.
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).unwrap_or_default();
    let len = (out.len().saturating_sub(HEADER_LEN)) as u32;
    if out.len() >= HEADER_LEN {
        out[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    }
    out
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Accumulates bytes and yields complete frame bodies. The buffer is zeroed once when it
/// grows, not on every read: reads land in `buf[end..]`.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }
}

impl FrameBuffer {
    /// A buffer for frames of up to [`MAX_FRAME_LEN`] bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer that refuses frames longer than `limit` as soon as their header is in.
    pub fn with_limit(limit: usize) -> Self {
        Self { buf: Vec::new(), start: 0, end: 0, limit: limit.min(MAX_FRAME_LEN) }
    }

    /// Bytes still missing to complete the next frame's header, or, once the header is in,
    /// the frame (0 if a whole frame is buffered). A reader that never asks for more keeps
    /// every read within one frame, so whatever rides on the read (descriptors) belongs to
    /// that frame.
    pub fn missing(&self) -> usize {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return HEADER_LEN - avail.len();
        }
        let len = Self::announced(avail).min(self.limit);
        (HEADER_LEN + len).saturating_sub(avail.len())
    }

    fn announced(avail: &[u8]) -> usize {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&avail[..HEADER_LEN]);
        u32::from_le_bytes(header) as usize
    }

    /// Space to read into (at least `at_least` bytes); call [`FrameBuffer::filled`] with the
    /// count read.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < at_least {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < at_least {
            let grown = (self.end + at_least).max(self.buf.len() * 2);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`FrameBuffer::spare`] as read.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = Self::announced(avail);
        if len > self.limit {
            return Err(FrameError::TooLarge(len));
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + len;
        Ok(Some(&self.buf[body_start..body_start + len]))
    }

    /// Called at end of stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::local::{Request, Response};
    use crate::wire::object::ErrorCode;

    fn feed(fb: &mut FrameBuffer, bytes: &[u8]) {
        let spare = fb.spare(bytes.len());
        spare[..bytes.len()].copy_from_slice(bytes);
        fb.filled(bytes.len());
    }

    #[test]
    fn round_trips_frames_split_anywhere() {
        let msgs = vec![
            Request::Get { name: "a/b".into(), timeout_ms: 5 },
            Request::List,
            Request::Create { name: "x".repeat(1000), size: u64::MAX, evictable: true },
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for split in 1..wire.len() {
            let mut fb = FrameBuffer::new();
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                feed(&mut fb, piece);
                while let Some(body) = fb.next_frame().unwrap() {
                    got.push(decode::<Request>(body).unwrap());
                }
            }
            assert_eq!(got, msgs);
            assert_eq!(fb.finish(), Ok(()));
        }
    }

    #[test]
    fn rejects_oversized_and_truncated_frames() {
        let mut fb = FrameBuffer::new();
        feed(&mut fb, &(MAX_FRAME_LEN as u32 + 1).to_le_bytes());
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge(MAX_FRAME_LEN + 1)));
        let mut fb = FrameBuffer::with_limit(100);
        feed(&mut fb, &101u32.to_le_bytes());
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge(101)));
        let mut fb = FrameBuffer::with_limit(100);
        feed(&mut fb, &u32::MAX.to_le_bytes());
        assert!(fb.next_frame().is_err(), "4 GiB announced");

        let mut fb = FrameBuffer::new();
        let frame = encode(&Request::List);
        feed(&mut fb, &frame[..frame.len() - 1]);
        assert_eq!(fb.next_frame(), Ok(None));
        assert!(matches!(fb.finish(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn missing_counts_up_to_the_end_of_the_next_frame_only() {
        let mut fb = FrameBuffer::new();
        assert_eq!(fb.missing(), HEADER_LEN);
        let frame = encode(&Request::Stat { name: "abc".into() });
        let body_len = frame.len() - HEADER_LEN;
        feed(&mut fb, &frame[..2]);
        assert_eq!(fb.missing(), 2);
        feed(&mut fb, &frame[2..5]);
        assert_eq!(fb.missing(), body_len - 1);
        feed(&mut fb, &frame[5..]);
        assert_eq!(fb.missing(), 0);
        assert!(fb.next_frame().unwrap().is_some());
        assert_eq!((fb.missing(), fb.buffered()), (HEADER_LEN, 0));
    }

    #[test]
    fn unknown_tags_and_bad_utf8_are_malformed() {
        assert!(matches!(decode::<Request>(&[200]), Err(FrameError::Malformed(_))));
        // Tag of `Stat`, then a 2-byte string that is not UTF-8.
        let stat_tag = encode(&Request::Stat { name: String::new() })[4];
        assert!(matches!(decode::<Request>(&[stat_tag, 2, 0xff, 0xfe]), Err(FrameError::Malformed(_))));
        let err = Response::Error { code: ErrorCode::NotFound, message: "m".into() };
        assert_eq!(decode::<Response>(&encode(&err)[4..]).unwrap(), err);
    }
}
