//! Target `local_frame`: the daemon's side of the local socket, byte for byte, without the
//! socket. The input is what a client wrote; its first byte picks the size of the reads it
//! arrives in. The bytes go through [`FrameBuffer`] as `store-daemon`'s connection feeds it
//! (`spare`/`filled`/`next_frame`/`finish`), every body is decoded as a [`Request`] (what the
//! daemon does) and as a [`Response`] (what the client does with the daemon's frames).
//!
//! Properties: nothing panics; the frames found do not depend on how the stream was split,
//! including the daemon's frame-by-frame reads (at most `missing()` bytes, so that one read
//! never completes two frames); an oversized length stops the stream; the bytes left over
//! at the end are exactly what `finish` reports as truncated; a decoded message encodes to
//! a frame that decodes to the same bytes again (compared as bytes because `f64` fields may
//! be NaN).

use store_client::frame::{self, FrameBuffer, FrameError, MAX_FRAME_LEN};
use store_client::wire::local::{PROTOCOL_VERSION, Request, Response};
use store_client::wire::object::{ErrorCode, ObjectInfo, ObjectState};

/// What a split of the stream yielded: the frame bodies, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    bodies: Vec<Vec<u8>>,
    end: Result<(), FrameError>,
}

fn frames(stream: &[u8], read_size: usize) -> Outcome {
    let mut fb = FrameBuffer::new();
    let mut bodies = Vec::new();
    for piece in stream.chunks(read_size.max(1)) {
        let spare = fb.spare(piece.len());
        assert!(spare.len() >= piece.len(), "spare() gave less room than asked for");
        spare[..piece.len()].copy_from_slice(piece);
        fb.filled(piece.len());
        loop {
            match fb.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= MAX_FRAME_LEN);
                    bodies.push(body.to_vec());
                }
                Ok(None) => break,
                // The daemon answers an oversized frame and closes: nothing after it counts.
                Err(e) => return Outcome { bodies, end: Err(e) },
            }
        }
    }
    let end = fb.finish();
    Outcome { bodies, end }
}

/// The daemon's way of reading (`store_daemon::connection`): never more than
/// [`FrameBuffer::missing`] bytes (and at most `cap`) at a time, so that one read never
/// completes more than one frame and descriptors riding on a read belong to its frame.
fn frames_by_missing(stream: &[u8], cap: usize) -> Outcome {
    let mut fb = FrameBuffer::new();
    let mut bodies = Vec::new();
    let mut rest = stream;
    loop {
        let mut completed = 0;
        loop {
            match fb.next_frame() {
                Ok(Some(body)) => {
                    bodies.push(body.to_vec());
                    completed += 1;
                }
                Ok(None) => break,
                Err(e) => return Outcome { bodies, end: Err(e) },
            }
        }
        assert!(completed <= 1, "one read of at most missing() bytes completed {completed} frames");
        if rest.is_empty() {
            break;
        }
        let want = fb.missing();
        assert!(want > 0, "missing() is 0 with no whole frame buffered");
        let n = want.min(cap.max(1)).min(rest.len());
        fb.spare(n)[..n].copy_from_slice(&rest[..n]);
        fb.filled(n);
        rest = &rest[n..];
    }
    let end = fb.finish();
    Outcome { bodies, end }
}

/// `decode(encode(x))` gives `x` back, compared through its encoding.
fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let wire = frame::encode(msg);
    assert_eq!(wire.len() - 4, u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize);
    let again: T = frame::decode(&wire[4..]).unwrap_or_else(|e| panic!("{msg:?} does not decode back: {e}"));
    assert_eq!(frame::encode(&again), wire, "{msg:?} re-encodes differently");
}

pub fn run(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else { return };
    let whole = frames(stream, stream.len());
    let by_missing = frames_by_missing(stream, usize::from(split) * 8 + 1);
    let split = frames(stream, usize::from(split % 64) + 1);
    assert_eq!(whole, split, "the frames depend on how the stream was split");
    assert_eq!(whole, by_missing, "reading frame by frame finds other frames");

    // Framing accounts for every byte: consumed frames, then the remainder `finish` reports.
    let consumed: usize = whole.bodies.iter().map(|b| b.len() + 4).sum();
    match &whole.end {
        Ok(()) => assert_eq!(consumed, stream.len()),
        Err(FrameError::Truncated { buffered }) => {
            assert!(*buffered > 0);
            assert_eq!(consumed + buffered, stream.len());
        }
        Err(FrameError::TooLarge(len)) => assert!(*len > MAX_FRAME_LEN),
        Err(FrameError::Malformed(m)) => panic!("framing reported a malformed message: {m}"),
    }

    for body in &whole.bodies {
        if let Ok(req) = frame::decode::<Request>(body) {
            round_trips(&req);
        }
        if let Ok(resp) = frame::decode::<Response>(body) {
            round_trips(&resp);
        }
    }
}

/// Valid client streams (first byte: read size), for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let info = ObjectInfo {
        id: 1,
        name: "models/a".into(),
        size: 4096,
        state: ObjectState::Sealed,
        digest: None,
        chunk_size: 1024,
        leases: 1,
        age_ms: 5,
        evictable: true,
    };
    let streams: Vec<Vec<u8>> = vec![
        [
            frame::encode(&Request::Hello { version: PROTOCOL_VERSION }),
            frame::encode(&Request::Create { name: "models/a".into(), size: 4096, evictable: false }),
            frame::encode(&Request::Seal { id: 1 }),
            frame::encode(&Request::Get { name: "models/a".into(), timeout_ms: 0 }),
            frame::encode(&Request::Release { id: 1 }),
            frame::encode(&Request::List),
            frame::encode(&Request::Delete { name: "models/a".into() }),
        ]
        .concat(),
        [
            frame::encode(&Request::Replicate {
                name: "x/y".into(),
                to: Some(vec!["n1".into(), "n2".into()]),
                timeout_ms: 1000,
                relay: true,
            }),
            frame::encode(&Request::Place {
                spec: store_client::wire::placement::PlaceSpec { needs: vec!["x/y".into()], ..Default::default() },
                prefetch: true,
            }),
        ]
        .concat(),
        [
            frame::encode(&Response::Sealed(info.clone())),
            frame::encode(&Response::Listing(vec![info.clone(), info])),
            frame::encode(&Response::Error { code: ErrorCode::NotFound, message: "no".into() }),
        ]
        .concat(),
        // A frame cut short, and an oversized length.
        frame::encode(&Request::Stat { name: "abc".into() })[..6].to_vec(),
        ((MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec(),
    ];
    streams.into_iter().enumerate().map(|(i, s)| [vec![i as u8 * 7], s].concat()).collect()
}
