//! Chunk manifests: the size, the chunk size, one BLAKE3 chaining value per chunk and the
//! root digest of an object.
//!
//! The chunk hashes are interior nodes of the object's own BLAKE3 tree (via
//! `blake3::hazmat`), so each chunk is hashed exactly once, chunks can be hashed in
//! parallel and verified one by one on arrival, and the root digest equals plain
//! `blake3::hash` of the content: `b3sum file` prints an object's digest.

use std::fmt;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("chunk size {0} is not a power of two of at least 1 KiB")]
    BadChunkSize(u64),
    #[error("manifest lists {listed} chunks, an object of {size} bytes has {expected}")]
    ChunkCount { listed: usize, expected: u64, size: u64 },
    #[error("chunk {index} out of range (object has {count} chunks)")]
    NoSuchChunk { index: u64, count: u64 },
    #[error("chunk {index} is {got} bytes, expected {expected}")]
    ChunkLength { index: u64, got: usize, expected: u64 },
    #[error(
        "chunks of {chunk_size} bytes for an object of {size} bytes: replication needs chunks of at least \
         {MIN_REPLICATION_CHUNK_SIZE} bytes and at most {MAX_REPLICATION_CHUNKS} chunks"
    )]
    ChunkingForReplication { size: u64, chunk_size: u64 },
}

/// Default chunk size of manifests and replication: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Smallest chunk size of any manifest: one BLAKE3 chunk (1 KiB), see [`check_chunk_size`].
pub const MIN_CHUNK_SIZE: u64 = blake3::CHUNK_LEN as u64;

/// Smallest chunk a daemon uses, and accepts in a manifest from a peer. Tiny chunks from a
/// peer would make a receiver track (and its pull plan weigh) millions of chunks.
pub const MIN_REPLICATION_CHUNK_SIZE: u64 = 64 * 1024;
/// Most chunks of one replicated object (1 TiB at 4 MiB chunks).
pub const MAX_REPLICATION_CHUNKS: u64 = 1 << 18;

/// The one rule for how an object may be cut for replication: [`check_chunk_size`], at
/// least [`MIN_REPLICATION_CHUNK_SIZE`] per chunk and at most [`MAX_REPLICATION_CHUNKS`]
/// chunks. Checked on every manifest a peer sends and on the daemon's own chunk size.
pub fn check_replication_chunking(size: u64, chunk_size: u64) -> Result<(), ManifestError> {
    check_chunk_size(chunk_size)?;
    if chunk_size < MIN_REPLICATION_CHUNK_SIZE || chunk_count(size, chunk_size) > MAX_REPLICATION_CHUNKS {
        return Err(ManifestError::ChunkingForReplication { size, chunk_size });
    }
    Ok(())
}

/// What a receiver needs to verify an object chunk by chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    pub chunk_size: u64,
    /// One entry per chunk. For a single-chunk object the entry is the root digest, since
    /// BLAKE3 has no interior node then.
    pub chunks: Vec<Digest>,
    pub root: Digest,
}

/// A chunk size must be a power of two of at least one BLAKE3 chunk (1 KiB), so that every
/// chunk is a subtree of the object's BLAKE3 tree.
pub fn check_chunk_size(chunk_size: u64) -> Result<(), ManifestError> {
    if chunk_size < MIN_CHUNK_SIZE || !chunk_size.is_power_of_two() {
        return Err(ManifestError::BadChunkSize(chunk_size));
    }
    Ok(())
}

/// The chunk size a daemon may be configured with: [`check_chunk_size`] and at least
/// [`MIN_REPLICATION_CHUNK_SIZE`], since the daemon replicates what it cuts.
pub fn check_store_chunk_size(chunk_size: u64) -> Result<(), ManifestError> {
    check_chunk_size(chunk_size)?;
    if chunk_size < MIN_REPLICATION_CHUNK_SIZE {
        return Err(ManifestError::ChunkingForReplication { size: 0, chunk_size });
    }
    Ok(())
}

/// Number of chunks of an object; an empty object has one empty chunk.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size).max(1)
}

/// Hashes one chunk at its place in the tree.
pub fn chunk_hash(index: u64, bytes: &[u8], size: u64, chunk_size: u64) -> Digest {
    if chunk_count(size, chunk_size) == 1 {
        return Digest(*blake3::hash(bytes).as_bytes());
    }
    let cv = blake3::Hasher::new().set_input_offset(index * chunk_size).update(bytes).finalize_non_root();
    Digest(cv)
}

fn merge(cvs: &[ChainingValue], root: bool) -> ChainingValue {
    debug_assert!(cvs.len() >= 2);
    // BLAKE3's left subtree holds the largest power of two of chunks below the total.
    let left_len = largest_power_of_two_below(cvs.len());
    let (left, right) = cvs.split_at(left_len);
    let left = if left.len() == 1 { left[0] } else { merge(left, false) };
    let right = if right.len() == 1 { right[0] } else { merge(right, false) };
    if root {
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

impl Manifest {
    /// Builds the manifest of `data`, hashing chunks on up to `threads` threads.
    pub fn compute(data: &[u8], chunk_size: u64, threads: usize) -> Result<Self, ManifestError> {
        check_chunk_size(chunk_size)?;
        let size = data.len() as u64;
        let count = chunk_count(size, chunk_size) as usize;
        let mut chunks = vec![Digest([0; 32]); count];
        let threads = threads.clamp(1, count);
        let per_thread = count.div_ceil(threads);
        let hash_range = |first: usize, out: &mut [Digest]| {
            for (i, slot) in out.iter_mut().enumerate() {
                let index = (first + i) as u64;
                *slot = chunk_hash(index, chunk_bytes(data, index, chunk_size), size, chunk_size);
            }
        };
        if threads == 1 {
            hash_range(0, &mut chunks);
        } else {
            std::thread::scope(|scope| {
                for (n, out) in chunks.chunks_mut(per_thread).enumerate() {
                    let hash_range = &hash_range;
                    scope.spawn(move || hash_range(n * per_thread, out));
                }
            });
        }
        Self::from_chunk_hashes(size, chunk_size, chunks)
    }

    /// Assembles a manifest from chunk hashes computed elsewhere (e.g. while filling).
    pub fn from_chunk_hashes(size: u64, chunk_size: u64, chunks: Vec<Digest>) -> Result<Self, ManifestError> {
        check_chunk_size(chunk_size)?;
        let expected = chunk_count(size, chunk_size);
        if chunks.len() as u64 != expected {
            return Err(ManifestError::ChunkCount { listed: chunks.len(), expected, size });
        }
        let root = if chunks.len() == 1 {
            chunks[0]
        } else {
            let cvs: Vec<ChainingValue> = chunks.iter().map(|d| d.0).collect();
            Digest(merge(&cvs, true))
        };
        Ok(Self { size, chunk_size, chunks, root })
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// The byte range of chunk `index` within the object.
    pub fn chunk_range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index.saturating_mul(self.chunk_size);
        // Saturating: a manifest from the wire may name sizes near u64::MAX.
        start.min(self.size)..start.saturating_add(self.chunk_size).min(self.size)
    }

    /// Checks a received chunk against the manifest.
    pub fn verify_chunk(&self, index: u64, bytes: &[u8]) -> Result<bool, ManifestError> {
        let count = self.chunk_count();
        if index >= count {
            return Err(ManifestError::NoSuchChunk { index, count });
        }
        let range = self.chunk_range(index);
        let expected = range.end - range.start;
        if bytes.len() as u64 != expected {
            return Err(ManifestError::ChunkLength { index, got: bytes.len(), expected });
        }
        let got = chunk_hash(index, bytes, self.size, self.chunk_size);
        Ok(got == self.chunks[index as usize])
    }
}

/// The bytes of chunk `index` of `data`.
pub fn chunk_bytes(data: &[u8], index: u64, chunk_size: u64) -> &[u8] {
    let start = (index * chunk_size).min(data.len() as u64) as usize;
    let end = (start as u64 + chunk_size).min(data.len() as u64) as usize;
    &data[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 9) as u8).collect()
    }

    #[test]
    fn root_equals_plain_blake3_for_many_sizes() {
        let chunk = 1024u64;
        for len in [0usize, 1, 1023, 1024, 1025, 2048, 3000, 4096, 5 * 1024 + 7, 8192, 9 * 1024, 17 * 1024 + 1] {
            let data = pattern(len);
            for threads in [1, 2, 3] {
                let m = Manifest::compute(&data, chunk, threads).unwrap();
                assert_eq!(m.root.0, *blake3::hash(&data).as_bytes(), "len {len} threads {threads}");
                assert_eq!(m.chunk_count(), chunk_count(len as u64, chunk));
            }
        }
    }

    #[test]
    fn root_equals_blake3_with_default_chunks() {
        let data = pattern(3 * 4 * 1024 * 1024 + 12345);
        let m = Manifest::compute(&data, DEFAULT_CHUNK_SIZE, 2).unwrap();
        assert_eq!(m.root.0, *blake3::hash(&data).as_bytes());
        assert_eq!(m.chunk_count(), 4);
    }

    #[test]
    fn verifies_good_chunks_and_rejects_corrupt_ones() {
        let data = pattern(10_000);
        let m = Manifest::compute(&data, 4096, 1).unwrap();
        for i in 0..m.chunk_count() {
            let r = m.chunk_range(i);
            assert_eq!(m.verify_chunk(i, &data[r.start as usize..r.end as usize]), Ok(true));
        }
        let mut bad = data[4096..8192].to_vec();
        bad[17] ^= 1;
        assert_eq!(m.verify_chunk(1, &bad), Ok(false));
        // A chunk presented at the wrong index does not verify either.
        assert_eq!(m.verify_chunk(0, &data[4096..8192]), Ok(false));
        assert!(matches!(m.verify_chunk(1, &data[..10]), Err(ManifestError::ChunkLength { .. })));
        assert!(matches!(m.verify_chunk(3, &[]), Err(ManifestError::NoSuchChunk { .. })));
    }

    #[test]
    fn rejects_bad_chunk_sizes_and_counts() {
        assert_eq!(Manifest::compute(b"x", 1000, 1), Err(ManifestError::BadChunkSize(1000)));
        assert_eq!(Manifest::compute(b"x", 512, 1), Err(ManifestError::BadChunkSize(512)));
        assert!(matches!(
            Manifest::from_chunk_hashes(5000, 1024, vec![Digest([0; 32]); 2]),
            Err(ManifestError::ChunkCount { .. })
        ));
    }

    #[test]
    fn store_chunk_size_is_a_replicable_chunk_size() {
        assert_eq!(check_store_chunk_size(DEFAULT_CHUNK_SIZE), Ok(()));
        assert_eq!(check_store_chunk_size(MIN_REPLICATION_CHUNK_SIZE), Ok(()));
        assert_eq!(check_store_chunk_size(3 << 20), Err(ManifestError::BadChunkSize(3 << 20)));
        assert_eq!(check_store_chunk_size(MIN_CHUNK_SIZE / 2), Err(ManifestError::BadChunkSize(MIN_CHUNK_SIZE / 2)));
        // A valid manifest chunk size, but too small to replicate: the daemon's flag refuses it.
        assert_eq!(check_chunk_size(MIN_CHUNK_SIZE), Ok(()));
        assert_eq!(
            check_store_chunk_size(MIN_CHUNK_SIZE),
            Err(ManifestError::ChunkingForReplication { size: 0, chunk_size: MIN_CHUNK_SIZE })
        );
    }
}
