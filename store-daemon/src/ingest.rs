//! Turning bytes into sealed, hashed objects. Everything here blocks; the server runs it
//! on the blocking pool for anything but tiny objects.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc;

use nix::sys::stat::SFlag;

use store_client::manifest::{self, Digest, Manifest, ManifestError};
use store_client::protocol::ErrorCode;
use store_client::sys::{self, ReadOnlyMapping, SealError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("descriptor is not a regular file")]
    NotRegularFile,
    #[error("i/o error while filling the object: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl IngestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            IngestError::Seal(SealError::WritableMapping) => ErrorCode::WritableMapping,
            IngestError::Seal(SealError::NotSealable) | IngestError::NotRegularFile => ErrorCode::BadDescriptor,
            IngestError::Seal(SealError::AlreadySealed) => ErrorCode::AlreadySealed,
            IngestError::Seal(SealError::Other(_)) | IngestError::Io(_) => ErrorCode::Io,
            IngestError::Manifest(_) => ErrorCode::Internal,
        }
    }
}

/// Seals a memfd that others may have written, then hashes what it now holds for good.
/// Returns the daemon's own read-only mapping with the manifest: it is kept for the
/// object's life, so unmapping never lands on the put's path.
pub fn seal_and_hash(
    fd: BorrowedFd<'_>,
    chunk_size: u64,
    threads: usize,
) -> Result<(Manifest, ReadOnlyMapping), IngestError> {
    sys::seal_immutable(fd)?;
    let size = sys::file_size(fd)?;
    let map = ReadOnlyMapping::new(fd, size)?;
    let manifest = Manifest::compute(&map, chunk_size, threads)?;
    Ok((manifest, map))
}

/// Checks that `fd` is a regular file and returns its size.
pub fn regular_file_size(fd: BorrowedFd<'_>) -> Result<u64, IngestError> {
    let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(IngestError::NotRegularFile);
    }
    Ok(st.st_size as u64)
}

/// Copies `size` bytes of `src` into the fresh memfd `dst` in the kernel, hashing each
/// chunk on another thread as soon as it has landed, then seals `dst`.
///
/// Hashing before sealing is sound only because `dst` was created by the daemon and no one
/// else holds a descriptor to it.
pub fn copy_hash_and_seal(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    chunk_size: u64,
) -> Result<(Manifest, ReadOnlyMapping), IngestError> {
    let count = manifest::chunk_count(size, chunk_size);
    let map = ReadOnlyMapping::new_exclusive(dst, size)?;
    let chunks = std::thread::scope(|scope| -> Result<Vec<Digest>, IngestError> {
        let (landed_tx, landed_rx) = mpsc::channel::<u64>();
        let map = &map;
        let hasher = scope.spawn(move || {
            let mut chunks = Vec::with_capacity(count as usize);
            for index in landed_rx {
                let bytes = manifest::chunk_bytes(map, index, chunk_size);
                chunks.push(manifest::chunk_hash(index, bytes, size, chunk_size));
            }
            chunks
        });
        for index in 0..count {
            let start = index * chunk_size;
            let len = chunk_size.min(size - start.min(size));
            sys::copy_into(src, start, dst, start, len)?;
            if landed_tx.send(index).is_err() {
                break;
            }
        }
        drop(landed_tx);
        hasher.join().map_err(|_| std::io::Error::other("hashing thread panicked").into())
    })?;
    sys::seal_immutable(dst.as_fd())?;
    Ok((Manifest::from_chunk_hashes(size, chunk_size, chunks)?, map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn copied_objects_hash_like_blake3_and_are_sealed() {
        for len in [0usize, 1, 4096, 3 * 65536 + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&data).unwrap();
            let size = regular_file_size(file.as_fd()).unwrap();
            let dst = sys::create_memfd(size).unwrap();
            let (m, map) = copy_hash_and_seal(file.as_fd(), dst.as_fd(), size, 65536).unwrap();
            assert_eq!(m.root.0, *blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(&map[..], &data[..]);
            assert!(sys::is_sealed(dst.as_fd()));
            let (m2, _) = seal_and_hash(sys::create_memfd(0).unwrap().as_fd(), 65536, 2).unwrap();
            assert_eq!(m2.size, 0);
        }
    }

    #[test]
    fn pipes_are_refused() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(regular_file_size(r.as_fd()), Err(IngestError::NotRegularFile)));
    }
}
