//! Turning bytes into sealed, hashed objects. Everything here blocks but
//! [`seal_and_hash_patiently`], which runs the work on the blocking pool for anything but
//! tiny objects.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use nix::sys::stat::SFlag;

use store_client::manifest::{self, Digest, Manifest, ManifestError};
use store_client::sys::{self, ReadOnlyMapping, SealError};
use store_client::wire::object::ErrorCode;
use thiserror::Error;
use tracing::debug;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("descriptor is not a regular file")]
    NotRegularFile,
    #[error("the file was written while it was copied ({before} bytes when the copy began, {after} at its end)")]
    SourceChanged { before: u64, after: u64 },
    #[error(
        "the file ended before the {size} bytes its stat promised (in the chunk at {chunk_start}): it shrank while \
         it was copied, or its size is not its length"
    )]
    EndedEarly { size: u64, chunk_start: u64 },
    #[error("i/o error while filling the object: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the hashing worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl IngestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            IngestError::Seal(SealError::WritableMapping) => ErrorCode::WritableMapping,
            IngestError::Seal(SealError::NotSealable) | IngestError::NotRegularFile => ErrorCode::BadDescriptor,
            IngestError::Seal(SealError::AlreadySealed) => ErrorCode::AlreadySealed,
            IngestError::Seal(SealError::SizeMismatch { .. })
            | IngestError::SourceChanged { .. }
            | IngestError::EndedEarly { .. } => ErrorCode::SizeMismatch,
            IngestError::Seal(SealError::Other(_)) | IngestError::Io(_) => ErrorCode::Io,
            IngestError::Manifest(_) | IngestError::Worker(_) => ErrorCode::Internal,
        }
    }
}

/// Seals a memfd that others may have written (and may still hold) as an object of exactly
/// `size` bytes, then hashes what it now holds for good. Anything but a sealable memfd of
/// that size is refused before a byte is hashed ([`sys::seal_object`]). Returns the daemon's
/// own read-only mapping with the manifest: it is kept for the object's life, so unmapping
/// never lands on the put's path.
pub fn seal_and_hash(
    fd: BorrowedFd<'_>,
    size: u64,
    chunk_size: u64,
    threads: usize,
) -> Result<(Manifest, ReadOnlyMapping), IngestError> {
    sys::seal_object(fd, size)?;
    let map = ReadOnlyMapping::new(fd, size)?;
    let manifest = Manifest::compute(&map, chunk_size, threads)?;
    Ok((manifest, map))
}

/// What a regular file looked like before a copy, to tell whether it changed during it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl SourceFile {
    /// Checks that `fd` is a regular file and notes its size and times.
    pub fn of(fd: BorrowedFd<'_>) -> Result<Self, IngestError> {
        let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            return Err(IngestError::NotRegularFile);
        }
        Ok(Self {
            size: st.st_size as u64,
            modified: (st.st_mtime, st.st_mtime_nsec),
            changed: (st.st_ctime, st.st_ctime_nsec),
        })
    }

    /// An error if `fd` no longer looks as it did (size, modification or change time).
    fn unchanged(&self, fd: BorrowedFd<'_>) -> Result<(), IngestError> {
        let now = Self::of(fd)?;
        if now == *self {
            return Ok(());
        }
        Err(IngestError::SourceChanged { before: self.size, after: now.size })
    }
}

/// Copies the regular file `src` (as [`SourceFile::of`] found it) into the fresh memfd `dst`
/// of its size in the kernel, hashing each chunk on another thread as soon as it has landed,
/// then seals `dst`. A file that ends early ([`IngestError::EndedEarly`]) or changes size or
/// times during the copy (it is being written: the copy may be torn,
/// [`IngestError::SourceChanged`]) is refused.
///
/// Hashing before sealing is sound only because `dst` was created by the daemon and no one
/// else holds a descriptor to it.
pub fn copy_hash_and_seal(
    src: BorrowedFd<'_>,
    source: &SourceFile,
    dst: BorrowedFd<'_>,
    chunk_size: u64,
) -> Result<(Manifest, ReadOnlyMapping), IngestError> {
    let size = source.size;
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
            sys::copy_into(src, start, dst, start, len).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => IngestError::EndedEarly { size, chunk_start: start },
                _ => e.into(),
            })?;
            if landed_tx.send(index).is_err() {
                break;
            }
        }
        drop(landed_tx);
        hasher.join().map_err(|_| std::io::Error::other("hashing thread panicked").into())
    })?;
    source.unchanged(src)?;
    sys::seal_object(dst.as_fd(), size)?;
    Ok((Manifest::from_chunk_hashes(size, chunk_size, chunks)?, map))
}

/// Objects at most this large are sealed and hashed on the caller's task; larger ones go
/// to the blocking pool.
const INLINE_HASH_LIMIT: u64 = 256 * 1024;

/// How long to wait before each further try when sealing meets `EBUSY` though the client
/// holds no writable mapping: the kernel also answers so while a page of the memfd holds a
/// passing extra reference, and waits only ~150 ms for it. Under heavy load that was seen
/// about once in 100,000 seals (docs/reliability.md, soak finding 1); a few more tries clear
/// it. A client that really keeps a writable mapping is refused after about a second, and
/// only its own connection waits (requests are answered in order).
const SEAL_RETRY_PAUSES: [Duration; 4] =
    [Duration::from_millis(20), Duration::from_millis(80), Duration::from_millis(250), Duration::from_millis(600)];

/// [`seal_and_hash`], on the runtime for small objects and on a worker otherwise,
/// tried again after each of [`SEAL_RETRY_PAUSES`] while it fails with `WritableMapping`.
pub async fn seal_and_hash_patiently(
    fd: Arc<OwnedFd>,
    size: u64,
    chunk_size: u64,
    threads: usize,
) -> Result<(Manifest, ReadOnlyMapping), IngestError> {
    let mut pauses = SEAL_RETRY_PAUSES.iter();
    loop {
        let hashed = if size <= INLINE_HASH_LIMIT {
            seal_and_hash(fd.as_fd(), size, chunk_size, 1)
        } else {
            let fd = fd.clone();
            tokio::task::spawn_blocking(move || seal_and_hash(fd.as_fd(), size, chunk_size, threads)).await?
        };
        match (hashed, pauses.next()) {
            (Err(IngestError::Seal(sys::SealError::WritableMapping)), Some(pause)) => {
                debug!(size, ?pause, "sealing met EBUSY; trying again");
                tokio::time::sleep(*pause).await;
            }
            (hashed, _) => return hashed,
        }
    }
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
            let source = SourceFile::of(file.as_fd()).unwrap();
            let dst = sys::create_sized_memfd(source.size).unwrap();
            let (m, map) = copy_hash_and_seal(file.as_fd(), &source, dst.as_fd(), 65536).unwrap();
            assert_eq!(m.root.0, *blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(&map[..], &data[..]);
            assert!(sys::is_sealed(dst.as_fd()));
            let (m2, _) = seal_and_hash(sys::create_memfd(0).unwrap().as_fd(), 0, 65536, 2).unwrap();
            assert_eq!(m2.size, 0);
        }
    }

    #[test]
    fn pipes_are_refused() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(SourceFile::of(r.as_fd()), Err(IngestError::NotRegularFile)));
    }

    #[test]
    fn a_file_that_changed_since_its_stat_is_refused() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 10_000]).unwrap();
        let source = SourceFile::of(file.as_fd()).unwrap();
        file.set_len(5_000).unwrap();
        let dst = sys::create_sized_memfd(source.size).unwrap();
        let err = copy_hash_and_seal(file.as_fd(), &source, dst.as_fd(), 4096).unwrap_err();
        assert!(matches!(err, IngestError::EndedEarly { size: 10_000, chunk_start: 4096 }), "{err}");
        assert_eq!(err.code(), ErrorCode::SizeMismatch);
        assert!(!sys::is_sealed(dst.as_fd()), "nothing sealed");

        // Grown after the stat: the copy would be a prefix of a file being written.
        let source = SourceFile::of(file.as_fd()).unwrap();
        file.set_len(20_000).unwrap();
        let dst = sys::create_sized_memfd(source.size).unwrap();
        let err = copy_hash_and_seal(file.as_fd(), &source, dst.as_fd(), 4096).unwrap_err();
        assert!(matches!(err, IngestError::SourceChanged { before: 5_000, after: 20_000, .. }), "{err}");
    }

    #[test]
    fn seal_and_hash_refuses_another_size() {
        let fd = sys::create_memfd(4096).unwrap();
        let err = seal_and_hash(fd.as_fd(), 8192, 4096, 1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SizeMismatch, "{err}");
        let (m, _) = seal_and_hash(fd.as_fd(), 4096, 4096, 1).unwrap();
        assert_eq!(m.size, 4096);
    }
}
