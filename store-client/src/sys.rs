//! Every memfd, seal, mapping and `SCM_RIGHTS` call of the system, in one place.
//!
//! An object is one memfd created with `MFD_ALLOW_SEALING`. Once sealed with
//! [`IMMUTABLE_SEALS`] the kernel guarantees that nobody can change, grow or shrink it,
//! which is what makes read-only shared mappings of it safe in every process.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Deref;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use memmap2::{Mmap, MmapMut, MmapOptions};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The seals that make an object immutable: no writes, no size change, no seal removal.
pub const IMMUTABLE_SEALS: SealFlag =
    SealFlag::F_SEAL_WRITE.union(SealFlag::F_SEAL_SHRINK).union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_SEAL);

/// Most descriptors a single message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Creates an empty sealable memfd of `size` bytes.
pub fn create_memfd(size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(c"store-object", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let len = i64::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::unistd::ftruncate(&fd, len)?;
    Ok(fd)
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a writable shared mapping of the object still exists")]
    WritableMapping,
    #[error("descriptor is not a sealable memfd")]
    NotSealable,
    #[error("object is already sealed")]
    AlreadySealed,
    #[error("sealing failed: {0}")]
    Other(#[source] io::Error),
}

/// The seals currently on `fd`; `NotSealable` for anything that is not a sealable memfd.
pub fn seals(fd: BorrowedFd<'_>) -> Result<SealFlag, SealError> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(SealFlag::from_bits_retain(bits)),
        Err(Errno::EINVAL) => Err(SealError::NotSealable),
        Err(e) => Err(SealError::Other(e.into())),
    }
}

/// Seals `fd` immutable. Fails with `WritableMapping` while anyone maps it writable.
pub fn seal_immutable(fd: BorrowedFd<'_>) -> Result<(), SealError> {
    let current = seals(fd)?;
    if current.contains(SealFlag::F_SEAL_SEAL) {
        return Err(if current.contains(IMMUTABLE_SEALS) { SealError::AlreadySealed } else { SealError::NotSealable });
    }
    match fcntl(fd, FcntlArg::F_ADD_SEALS(IMMUTABLE_SEALS)) {
        Ok(_) => Ok(()),
        Err(Errno::EBUSY) => Err(SealError::WritableMapping),
        Err(Errno::EPERM) => Err(SealError::NotSealable),
        Err(e) => Err(SealError::Other(e.into())),
    }
}

/// Whether `fd` carries every immutability seal.
pub fn is_sealed(fd: BorrowedFd<'_>) -> bool {
    seals(fd).is_ok_and(|s| s.contains(IMMUTABLE_SEALS))
}

/// Size of the file behind `fd`.
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(st.st_size as u64)
}

/// Inode and device of the file behind `fd`, to tell whether two descriptors share pages.
pub fn file_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// A read-only shared mapping of a sealed object (empty objects map to nothing).
#[derive(Debug)]
pub struct ReadOnlyMapping(Option<Mmap>);

impl ReadOnlyMapping {
    /// The mapping of an empty object.
    pub fn empty() -> Self {
        Self(None)
    }

    /// Maps `len` bytes of `fd`, which must carry [`IMMUTABLE_SEALS`]. Pages are mapped
    /// lazily, so this costs the same for any size.
    pub fn new(fd: BorrowedFd<'_>, len: u64) -> io::Result<Self> {
        if !is_sealed(fd) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "object is not sealed"));
        }
        if len == 0 {
            return Ok(Self(None));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the memfd is sealed against writes, growth and shrinking (checked above),
        // so the mapped bytes can neither change nor disappear (no SIGBUS) while mapped.
        let map = unsafe { MmapOptions::new().len(len).map(fd.as_raw_fd()) }?;
        Ok(Self(Some(map)))
    }

    /// Maps an unsealed object that only this process writes (a daemon reading what it
    /// filled itself, before sealing). The mapping is private so that it does not count as
    /// a writable shared mapping, which would make sealing fail; no page is ever written
    /// through it, so it keeps sharing the object's pages, also after sealing.
    pub fn new_exclusive(fd: BorrowedFd<'_>, len: u64) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self(None));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the caller holds the only descriptor of this memfd and does not resize it
        // while the mapping lives; bytes written through the descriptor are only read here
        // after the writes completed.
        let map = unsafe { MmapOptions::new().len(len).map_copy_read_only(fd.as_raw_fd()) }?;
        Ok(Self(Some(map)))
    }
}

impl Deref for ReadOnlyMapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// A writable shared mapping of an unsealed object, for filling it in place.
#[derive(Debug)]
pub struct WritableMapping(Option<MmapMut>);

impl WritableMapping {
    pub fn new(fd: BorrowedFd<'_>, len: u64) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self(None));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: an unsealed object is written only by the client that created it (the
        // daemon does not touch it before sealing) and its size is fixed by the daemon, so
        // no other party changes or truncates the mapped range.
        let map = unsafe { MmapOptions::new().len(len).map_mut(fd.as_raw_fd()) }?;
        Ok(Self(Some(map)))
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

/// Copies `len` bytes of `src` (from its offset 0) into `dst` at `dst_offset`, in the
/// kernel. Falls back to read/write for descriptors `sendfile` cannot take.
pub fn copy_into(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    // sendfile writes at the destination's file offset, so position it first; it measured
    // faster than copy_file_range from ext4 into shmem here.
    nix::unistd::lseek(dst, dst_offset as i64, nix::unistd::Whence::SeekSet)?;
    let mut off_in = src_offset as i64;
    let mut left = len;
    while left > 0 {
        let step = left.min(1 << 30) as usize;
        match nix::sys::sendfile::sendfile(dst, src, Some(&mut off_in), step) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source ended early"));
            }
            Ok(n) => left -= n as u64,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                let done = len - left;
                return copy_by_pread(src, off_in as u64, dst, dst_offset + done, left);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_by_pread(
    src: BorrowedFd<'_>,
    mut off_in: u64,
    dst: BorrowedFd<'_>,
    mut off_out: u64,
    mut left: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let src = File::from(src.try_clone_to_owned()?);
    let dst = File::from(dst.try_clone_to_owned()?);
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = src.read_at(&mut buf[..want], off_in)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source ended early"));
        }
        dst.write_all_at(&buf[..n], off_out)?;
        off_in += n as u64;
        off_out += n as u64;
        left -= n as u64;
    }
    Ok(())
}

/// Sends `bytes` with `fds` attached; returns how many bytes went out (the descriptors
/// go with the first byte).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Receives into `buf`; descriptors that arrive are appended to `fds` (close-on-exec).
/// Returns 0 at end of stream.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(io::Error::from)?,
        }
    };
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for us;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors in one message"));
    }
    Ok(msg.bytes)
}

/// Sends a whole frame, the descriptors riding on its first bytes.
pub fn send_all_with_fds(sock: BorrowedFd<'_>, mut bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut fds = fds;
    while !bytes.is_empty() {
        let n = send_with_fds(sock, bytes, fds)?;
        bytes = &bytes[n..];
        fds = &[];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sealed_memfd_rejects_every_change() {
        let fd = create_memfd(4096).unwrap();
        let mut file = File::from(fd.try_clone().unwrap());
        file.write_all(b"hello").unwrap();
        seal_immutable(fd.as_fd()).unwrap();
        assert!(is_sealed(fd.as_fd()));
        assert!(file.write_all(b"x").is_err());
        assert!(nix::unistd::ftruncate(&fd, 1).is_err());
        assert!(WritableMapping::new(fd.as_fd(), 4096).is_err());
        let map = ReadOnlyMapping::new(fd.as_fd(), 4096).unwrap();
        assert_eq!(&map[..5], b"hello");
        assert!(matches!(seal_immutable(fd.as_fd()), Err(SealError::AlreadySealed)));
    }

    #[test]
    fn seal_fails_while_mapped_writable() {
        let fd = create_memfd(8192).unwrap();
        let mut map = WritableMapping::new(fd.as_fd(), 8192).unwrap();
        map.as_mut_slice()[0] = 7;
        assert!(matches!(seal_immutable(fd.as_fd()), Err(SealError::WritableMapping)));
        drop(map);
        seal_immutable(fd.as_fd()).unwrap();
        assert_eq!(ReadOnlyMapping::new(fd.as_fd(), 8192).unwrap()[0], 7);
    }

    #[test]
    fn regular_files_are_not_sealable_and_unsealed_fds_do_not_map() {
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(seal_immutable(file.as_fd()), Err(SealError::NotSealable)));
        let fd = create_memfd(10).unwrap();
        assert!(ReadOnlyMapping::new(fd.as_fd(), 10).is_err());
    }

    #[test]
    fn passes_descriptors_over_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = create_memfd(3).unwrap();
        send_all_with_fds(a.as_fd(), b"abc", &[fd.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"abc");
        assert_eq!(fds.len(), 1);
        assert_eq!(file_identity(fds[0].as_fd()).unwrap(), file_identity(fd.as_fd()).unwrap());
    }

    #[test]
    fn copies_a_file_into_a_memfd() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        file.write_all(&data).unwrap();
        let fd = create_memfd(data.len() as u64).unwrap();
        copy_into(file.as_fd(), 0, fd.as_fd(), 0, data.len() as u64).unwrap();
        seal_immutable(fd.as_fd()).unwrap();
        assert_eq!(&ReadOnlyMapping::new(fd.as_fd(), data.len() as u64).unwrap()[..], &data[..]);
    }
}
