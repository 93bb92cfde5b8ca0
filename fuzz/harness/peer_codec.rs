//! Target `peer_codec`: the daemon <-> daemon wire types of `store_client::wire::peer`, read as
//! `store_client::rpc::read_frame` reads one frame off a QUIC stream (a `u32` length, the
//! limit, then exactly that many bytes of postcard). The first input byte picks the side:
//! even decodes a [`PeerRequest`] (the serving daemon), odd a [`PeerResponse`] (the pulling
//! one).
//!
//! Properties: nothing panics; a decoded message round-trips (compared as bytes, `f64`
//! fields may be NaN); a manifest received from a peer is checked as `pull.rs` and
//! `cooperative.rs` check it (the chunk list must hash to the root), and one that passes can
//! be used (`chunk_range`, `verify_chunk`) without a panic; a chunk set received from a peer
//! is checked as the replication plan checks it (`is_valid`, length = chunk count), and one
//! that passes answers `count`, `contains`, `iter` and `is_complete` consistently.

use std::collections::BTreeMap;

use store_client::chunkset::ChunkSet;
use store_client::frame::{self, MAX_FRAME_LEN};
use store_client::manifest::{Digest, Manifest};
use store_client::wire::node::PullReport;
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PeerRequest, PeerResponse};

/// Largest chunk count the harness walks chunk by chunk.
const WALK_LIMIT: u64 = 4096;

fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let wire = frame::encode(msg);
    let again: T = frame::decode(&wire[4..]).unwrap_or_else(|e| panic!("{msg:?} does not decode back: {e}"));
    assert_eq!(frame::encode(&again), wire, "{msg:?} re-encodes differently");
}

/// One frame as `rpc::read_frame` reads it, or `None` where it would fail.
fn read_frame(stream: &[u8]) -> Option<&[u8]> {
    let header: [u8; 4] = stream.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return None;
    }
    stream.get(4..4 + len)
}

/// The daemon's check of a manifest from the wire; a manifest that passes must be usable.
fn check_manifest(m: &Manifest) {
    let Ok(check) = Manifest::from_chunk_hashes(m.size, m.chunk_size, m.chunks.clone()) else { return };
    assert_eq!(check.chunks, m.chunks);
    assert_eq!(check.chunk_count(), m.chunk_count());
    if check.root != m.root {
        return;
    }
    let count = m.chunk_count();
    let mut covered = 0u64;
    for index in 0..count.min(WALK_LIMIT) {
        let range = m.chunk_range(index);
        assert!(range.start <= range.end && range.end <= m.size, "chunk {index} of {m:?}: {range:?}");
        covered += range.end - range.start;
        // A chunk of the wrong length is refused before it is hashed.
        let short = (range.end - range.start).saturating_sub(1);
        if range.end > range.start && short <= 1 << 16 {
            assert!(m.verify_chunk(index, &vec![0; short as usize]).is_err());
        }
    }
    if count <= WALK_LIMIT {
        assert_eq!(covered, m.size, "the chunks of {m:?} do not cover the object");
    }
    assert!(m.verify_chunk(count, &[]).is_err(), "a chunk past the end was accepted");
}

/// The replication plan's check of a chunk set from a peer; a set that passes must be sound.
fn check_held(held: &ChunkSet, chunk_count: Option<u64>) {
    if !held.is_valid() || chunk_count.is_some_and(|c| c != held.len()) {
        return;
    }
    let count = held.count();
    assert!(count <= held.len());
    assert_eq!(held.is_complete(), count == held.len());
    if held.len() <= WALK_LIMIT * 64 {
        let listed: Vec<u64> = held.iter().collect();
        assert_eq!(listed.len() as u64, count);
        assert!(listed.iter().all(|&i| i < held.len() && held.contains(i)));
    }
    assert!(!held.contains(held.len()));
    assert_eq!(
        ChunkSet::from_iter_len(held.len(), held.iter().take(WALK_LIMIT as usize)).count(),
        count.min(WALK_LIMIT)
    );
}

pub fn run(data: &[u8]) {
    let Some((&side, stream)) = data.split_first() else { return };
    let Some(body) = read_frame(stream) else { return };
    if side % 2 == 0 {
        let Ok(req) = frame::decode::<PeerRequest>(body) else { return };
        round_trips(&req);
        if let PeerRequest::CompleteShare { manifest, .. } = &req {
            check_manifest(manifest);
        }
    } else {
        let Ok(resp) = frame::decode::<PeerResponse>(body) else { return };
        round_trips(&resp);
        match &resp {
            PeerResponse::Manifest { manifest, held, .. } => {
                check_manifest(manifest);
                check_held(held, Some(manifest.chunk_count()));
            }
            PeerResponse::Have { held, .. } => check_held(held, None),
            _ => {}
        }
    }
}

/// Valid frames of each side (first byte: side), for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    let manifest = Manifest::compute(&data, 1024, 1).expect("manifest of the seed data");
    let origin = S3Origin { url: "s3://bucket/models/m".into(), etag: "\"e1\"".into(), size: 5000 };
    let requests = [
        PeerRequest::Manifest { name: "models/m".into() },
        PeerRequest::Chunk { name: "models/m".into(), index: 3 },
        PeerRequest::Have { name: "models/m".into(), known: 0 },
        PeerRequest::Pull { name: "models/m".into(), timeout_ms: 5000, relay: true },
        PeerRequest::FetchShare { name: "models/m".into(), origin: origin.clone(), chunk_size: 1024, first: 0, end: 2 },
        PeerRequest::CompleteShare {
            name: "models/m".into(),
            manifest: manifest.clone(),
            origin: origin.clone(),
            timeout_ms: 1000,
        },
        PeerRequest::DropShare { name: "models/m".into() },
        PeerRequest::Prefetch { names: vec!["a".into(), "b/c".into()] },
    ];
    let responses = [
        PeerResponse::Manifest {
            manifest: manifest.clone(),
            held: ChunkSet::from_iter_len(5, [0, 2, 4]),
            uploads: 1,
            origin: Some(origin),
        },
        PeerResponse::Chunk { len: 1024, uploads: 0 },
        PeerResponse::Have { held: ChunkSet::full(70), uploads: 2 },
        PeerResponse::Busy { uploads: 4 },
        PeerResponse::Pulled(PullReport {
            node: "n1".into(),
            name: "models/m".into(),
            bytes: 5000,
            seconds: 0.25,
            from: BTreeMap::from([("n2".to_string(), 5000)]),
            already_present: false,
            corrupt_chunks: 0,
            retries: 1,
            s3_bytes: 0,
        }),
        PeerResponse::NotHeld,
        PeerResponse::Error { message: "no".into() },
        PeerResponse::ShareFetched { hashes: vec![Digest([7; 32]); 2], s3_bytes: 2048, seconds: 0.5 },
        PeerResponse::Dropped,
        PeerResponse::Queued { count: 2 },
    ];
    let mut out: Vec<Vec<u8>> = requests.iter().map(|r| [vec![0], frame::encode(r)].concat()).collect();
    out.extend(responses.iter().map(|r| [vec![1], frame::encode(r)].concat()));
    out
}
