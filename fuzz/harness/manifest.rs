//! Target `manifest`: chunk manifests and chunk sets (`store_client::manifest`,
//! `store_client::chunkset`). The first input byte picks a mode:
//!
//! - 0: the rest is content; its manifest (chunk size `1024 << (byte 1 % 4)`) must have the
//!   plain BLAKE3 of the content as root, verify every chunk, and reject a chunk with one
//!   bit flipped, a chunk presented at another index (unless the bytes there are the same),
//!   a chunk one byte short and an index past the end. The manifest round-trips and
//!   rebuilds from its chunk hashes.
//! - 1: the rest is a postcard [`Manifest`] from the wire; whatever the daemon's consistency
//!   check (`Manifest::from_chunk_hashes`) accepts must be usable without a panic.
//! - 2: the rest is a postcard [`ChunkSet`] from the wire; a set that `is_valid` must answer
//!   consistently, and inserting and removing must keep it valid.
//! - 3: the rest is a postcard `Holding` from the wire, checked as the scheduler checks it.

use store_client::chunkset::ChunkSet;
use store_client::frame;
use store_client::manifest::{self, Digest, Manifest, ManifestError};
use store_client::wire::node::Holding;

/// Largest chunk count the harness walks chunk by chunk.
const WALK_LIMIT: u64 = 4096;

fn round_trips<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let wire = frame::encode(msg);
    let again: T = frame::decode(&wire[4..]).unwrap_or_else(|e| panic!("{msg:?} does not decode back: {e}"));
    assert_eq!(&again, msg);
}

fn content(rest: &[u8]) {
    let Some((&shift, data)) = rest.split_first() else { return };
    let chunk_size = 1024u64 << (shift % 4);
    let m = Manifest::compute(data, chunk_size, 1).expect("a valid chunk size");
    assert_eq!(m.root.0, *blake3::hash(data).as_bytes(), "root is not the BLAKE3 of the content");
    assert_eq!(m.chunk_count(), manifest::chunk_count(data.len() as u64, chunk_size));
    assert_eq!(Manifest::from_chunk_hashes(m.size, chunk_size, m.chunks.clone()).as_ref(), Ok(&m));
    round_trips(&m);
    let chunk = |i: u64| {
        let r = m.chunk_range(i);
        &data[r.start as usize..r.end as usize]
    };
    for i in 0..m.chunk_count() {
        assert_eq!(manifest::chunk_bytes(data, i, chunk_size), chunk(i));
        assert_eq!(m.verify_chunk(i, chunk(i)), Ok(true), "chunk {i} does not verify");
    }
    let count = m.chunk_count();
    assert!(matches!(m.verify_chunk(count, &[]), Err(ManifestError::NoSuchChunk { .. })));
    if data.is_empty() {
        return;
    }
    // Corruptions the manifest must catch, at a chunk and bit the content picks.
    let i = u64::from(data[0]) % count;
    let mut bad = chunk(i).to_vec();
    if !bad.is_empty() {
        let bit = usize::from(data[data.len() - 1]) % (bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(m.verify_chunk(i, &bad), Ok(false), "a flipped bit in chunk {i} verified");
        assert!(matches!(m.verify_chunk(i, &bad[1..]), Err(ManifestError::ChunkLength { .. })));
    }
    for j in 0..count {
        if j != i && chunk(j).len() == chunk(i).len() {
            // Only the same bytes verify at another index (where they are that chunk).
            let same = chunk(j) == chunk(i);
            assert_eq!(m.verify_chunk(j, chunk(i)), Ok(same), "chunk {i} at index {j}, same bytes: {same}");
        }
    }
    // A manifest that names another root or other chunks is not this content's.
    let mut other = m.chunks.clone();
    other[i as usize].0[0] ^= 1;
    assert_ne!(Manifest::from_chunk_hashes(m.size, chunk_size, other).map(|o| o.root), Ok(m.root));
}

fn wire_manifest(body: &[u8]) {
    let Ok(m) = frame::decode::<Manifest>(body) else { return };
    round_trips(&m);
    // What `pull.rs` and `cooperative.rs` accept is what `from_chunk_hashes` rebuilds.
    let Ok(check) = Manifest::from_chunk_hashes(m.size, m.chunk_size, m.chunks.clone()) else {
        let bad_size = manifest::check_chunk_size(m.chunk_size).is_err();
        assert!(bad_size || m.chunk_count() != manifest::chunk_count(m.size, m.chunk_size));
        return;
    };
    let count = check.chunk_count();
    for index in (0..count.min(WALK_LIMIT)).chain([count - 1]) {
        let range = check.chunk_range(index);
        assert!(range.start < range.end || check.size == 0, "chunk {index} of {check:?} is empty");
        assert!(range.end <= check.size, "chunk {index} of {check:?} ends past the object: {range:?}");
        let len = range.end - range.start;
        if len <= 1 << 16 {
            // Zeros of the right length verify or not, but never fail.
            assert!(check.verify_chunk(index, &vec![0; len as usize]).is_ok());
        }
    }
    assert!(check.verify_chunk(count, &[]).is_err());
}

fn wire_chunk_set(body: &[u8]) {
    let Ok(mut set) = frame::decode::<ChunkSet>(body) else { return };
    round_trips(&set);
    if !set.is_valid() {
        return;
    }
    let count = set.count();
    assert!(count <= set.len());
    assert_eq!(set.is_complete(), count == set.len());
    if set.len() <= WALK_LIMIT * 64 {
        assert_eq!(set.iter().count() as u64, count);
        assert_eq!(ChunkSet::from_iter_len(set.len(), set.iter()), set);
    }
    let probe = body.last().map_or(0, |&b| u64::from(b) * 7);
    let had = set.contains(probe);
    assert_eq!(set.insert(probe), !had && probe < set.len());
    assert!(set.is_valid());
    assert_eq!(set.remove(probe), probe < set.len());
    assert!(set.is_valid() && !set.contains(probe));
    assert!(!set.insert(set.len()) && !set.contains(set.len()));
}

fn wire_holding(body: &[u8]) {
    let Ok(h) = frame::decode::<Holding>(body) else { return };
    round_trips(&h);
    let valid = store_client::name::validate(&h.name).is_ok()
        && manifest::check_chunk_size(h.chunk_size).is_ok()
        && h.chunks.is_valid()
        && h.chunks.len() == manifest::chunk_count(h.size, h.chunk_size);
    if valid {
        assert!(h.chunks.count() <= manifest::chunk_count(h.size, h.chunk_size));
    }
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => content(rest),
        1 => wire_manifest(rest),
        2 => wire_chunk_set(rest),
        _ => wire_holding(rest),
    }
}

/// Content of a few sizes, wire manifests, chunk sets and holdings, for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let pattern = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 + i / 251) as u8).collect() };
    let mut out = Vec::new();
    for (shift, len) in [(0u8, 0usize), (0, 1), (0, 1024), (0, 1025), (1, 5000), (3, 9000)] {
        out.push([vec![0, shift], pattern(len)].concat());
    }
    for (len, chunk_size) in [(1usize, 1024u64), (2048, 1024), (5000, 1024), (3000, 2048)] {
        let m = Manifest::compute(&pattern(len), chunk_size, 1).expect("manifest");
        out.push([vec![1], frame::encode(&m)[4..].to_vec()].concat());
    }
    // Inconsistent on the wire: a chunk count that does not match the size.
    let lying = Manifest { size: 10, chunk_size: 1024, chunks: vec![Digest([1; 32]); 5], root: Digest([1; 32]) };
    out.push([vec![1], frame::encode(&lying)[4..].to_vec()].concat());
    for set in [ChunkSet::empty(0), ChunkSet::from_iter_len(130, [0, 64, 129]), ChunkSet::full(64)] {
        out.push([vec![2], frame::encode(&set)[4..].to_vec()].concat());
    }
    let holding = Holding {
        name: "models/m".into(),
        size: 5000,
        chunk_size: 1024,
        root: Digest([9; 32]),
        chunks: ChunkSet::from_iter_len(5, [1, 3]),
    };
    out.push([vec![3], frame::encode(&holding)[4..].to_vec()].concat());
    out
}
