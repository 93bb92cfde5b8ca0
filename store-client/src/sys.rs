//! Every memfd, seal, mapping and `SCM_RIGHTS` call of the system, in one place.
//!
//! An object is one memfd created with `MFD_ALLOW_SEALING`. Once sealed with
//! [`IMMUTABLE_SEALS`] the kernel guarantees that nobody can change, grow or shrink it,
//! which is what makes read-only shared mappings of it safe in every process.

use std::fs::File;
use std::io::{self, IoSlice};
use std::ops::Deref;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use memmap2::{Mmap, MmapMut, MmapOptions};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// The seals that make an object immutable: no writes, no size change, no seal removal.
pub const IMMUTABLE_SEALS: SealFlag =
    SealFlag::F_SEAL_WRITE.union(SealFlag::F_SEAL_SHRINK).union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_SEAL);

/// The seals that fix an object's size while its writer may still write it.
pub const SIZE_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_GROW);

/// Most descriptors a single message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Creates an empty sealable memfd of `size` bytes.
pub fn create_memfd(size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create(c"store-object", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let len = i64::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::unistd::ftruncate(&fd, len)?;
    Ok(fd)
}

/// [`create_memfd`] with its size sealed ([`SIZE_SEALS`]): whoever holds a descriptor may
/// write the bytes but cannot shrink or grow it, so the size accounted for it is the size it
/// has, and a mapping of it never reaches past its end.
pub fn create_sized_memfd(size: u64) -> io::Result<OwnedFd> {
    let fd = create_memfd(size)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SIZE_SEALS))?;
    Ok(fd)
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a writable shared mapping (or a pinned page) of the object still exists")]
    WritableMapping,
    #[error("descriptor is not a memfd that can be sealed (and is open for writing)")]
    NotSealable,
    #[error("object is already sealed")]
    AlreadySealed,
    #[error("object is {actual} bytes, not the {expected} declared")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("sealing failed: {0}")]
    Other(#[source] io::Error),
}

/// The seals currently on `fd`; `NotSealable` for anything that is not a sealable memfd.
pub fn seals(fd: BorrowedFd<'_>) -> Result<SealFlag, SealError> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(SealFlag::from_bits_retain(bits)),
        // EBADF: an O_PATH descriptor.
        Err(Errno::EINVAL | Errno::EBADF) => Err(SealError::NotSealable),
        Err(e) => Err(SealError::Other(e.into())),
    }
}

/// Makes a memfd that another process handed over (or still holds) an immutable object of
/// exactly `size` bytes: seals it with [`IMMUTABLE_SEALS`] (a memfd its owner already sealed
/// that way is accepted as it is), then checks the size it is now stuck with.
///
/// Refuses anything but a sealable memfd open for writing, one sealed against sealing
/// without being immutable, one still mapped writable, and one of another size. Checking the
/// size before sealing spares a well-meaning client a sealed memfd on refusal; the check
/// after sealing is the one that counts.
pub fn seal_object(fd: BorrowedFd<'_>, size: u64) -> Result<(), SealError> {
    let check_size = || match file_size(fd).map_err(SealError::Other)? {
        actual if actual == size => Ok(()),
        actual => Err(SealError::SizeMismatch { expected: size, actual }),
    };
    let current = seals(fd)?;
    if current.contains(IMMUTABLE_SEALS) {
        return check_size();
    }
    if current.contains(SealFlag::F_SEAL_SEAL) {
        // Sealed against further seals without being immutable (or a tmpfs file that is no
        // memfd): it can never be made immutable.
        return Err(SealError::NotSealable);
    }
    check_size()?;
    seal_immutable(fd)?;
    check_size()
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
        let held = file_size(fd)?;
        if held < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("object is {len} bytes but its memfd holds only {held}"),
            ));
        }
        if len == 0 {
            return Ok(Self(None));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the memfd is sealed against writes, growth and shrinking and holds at
        // least `len` bytes (both checked above), so the mapped bytes can neither change nor
        // disappear (no SIGBUS) while mapped.
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

/// What one [`recv_with_fds_checked`] brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes read; 0 at end of stream.
    pub bytes: usize,
    /// More descriptors came than fit ([`MAX_FDS_PER_MESSAGE`]): the kernel closed the rest
    /// (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// Receives into `buf`; descriptors that arrive are appended to `fds` (close-on-exec).
/// Returns 0 at end of stream, and an error if more descriptors came than fit.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let received = recv_with_fds_checked(sock, buf, fds)?;
    if received.truncated {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors in one message"));
    }
    Ok(received.bytes)
}

/// [`recv_with_fds`] that reports truncated descriptors instead of failing: the bytes are
/// intact, so a server can refuse the one request and serve on.
///
/// Calls `recvmsg(2)` itself because nix's control-message iterator refuses to walk a
/// truncated buffer, and the descriptors the kernel did install must still be closed.
// The msghdr/cmsghdr length fields are usize here but u32 on other targets: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn recv_with_fds_checked(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Received> {
    use nix::libc;
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain old data; all-zero is its empty value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg_buf.len() as _;
    let bytes = loop {
        // SAFETY: `hdr` points at `iov` (over `buf`) and `cmsg_buf`, all alive and exclusively
        // borrowed for the call; the kernel writes within the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) if Errno::last() == Errno::EINTR => continue,
            Err(_) => return Err(io::Error::last_os_error()),
        }
    };
    // SAFETY: `hdr` is the header the kernel just filled in: msg_control/msg_controllen
    // describe the control messages it wrote (also when it truncated them).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return only headers that lie within msg_control.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `cmsg` is a valid header within the buffer (see above).
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let payload = (header.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
            for i in 0..payload / std::mem::size_of::<RawFd>() {
                // SAFETY: the payload holds `payload` bytes of descriptors written by the
                // kernel inside the buffer; they may be unaligned, hence read_unaligned.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed this descriptor in our table for us;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR: `hdr` and `cmsg` are the kernel's, within the buffer.
        cmsg = unsafe { libc::CMSG_NXTHDR(&hdr, cmsg) };
    }
    Ok(Received { bytes, truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0 })
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
    fn a_sized_memfd_can_be_written_but_not_resized() {
        let fd = create_sized_memfd(8192).unwrap();
        let file = File::from(fd.try_clone().unwrap());
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"inside", 8000).unwrap();
        for len in [0, 4096, 8193, 1 << 30] {
            assert_eq!(nix::unistd::ftruncate(&fd, len), Err(Errno::EPERM), "ftruncate to {len}");
        }
        assert!(file.write_all_at(b"past the end", 8190).is_err());
        let mut map = WritableMapping::new(fd.as_fd(), 8192).unwrap();
        map.as_mut_slice()[0] = 1;
        drop(map);
        seal_object(fd.as_fd(), 8192).unwrap();
        assert!(is_sealed(fd.as_fd()));
    }

    #[test]
    fn seal_object_checks_kind_seals_and_size() {
        let fd = create_memfd(4096).unwrap();
        assert!(matches!(seal_object(fd.as_fd(), 4095), Err(SealError::SizeMismatch { expected: 4095, actual: 4096 })));
        assert!(!is_sealed(fd.as_fd()), "refused before sealing");
        seal_object(fd.as_fd(), 4096).unwrap();
        // Sealed completely by its owner already: accepted as it is, the size still checked.
        seal_object(fd.as_fd(), 4096).unwrap();
        assert!(matches!(seal_object(fd.as_fd(), 1), Err(SealError::SizeMismatch { .. })));

        let locked = create_memfd(10).unwrap();
        fcntl(&locked, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SEAL)).unwrap();
        assert!(matches!(seal_object(locked.as_fd(), 10), Err(SealError::NotSealable)));
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(matches!(seal_object(r.as_fd(), 0), Err(SealError::NotSealable)));
        assert!(matches!(seal_object(w.as_fd(), 0), Err(SealError::NotSealable)));
        let o_path = nix::fcntl::open(c"/", nix::fcntl::OFlag::O_PATH, nix::sys::stat::Mode::empty()).unwrap();
        assert!(matches!(seal_object(o_path.as_fd(), 0), Err(SealError::NotSealable)));
        let memfd = create_memfd(0).unwrap();
        let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        let read_only =
            nix::fcntl::open(path.as_str(), nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
        assert!(matches!(seal_object(read_only.as_fd(), 0), Err(SealError::NotSealable)));
    }

    #[test]
    fn a_mapping_longer_than_the_sealed_memfd_is_refused() {
        let fd = create_memfd(4096).unwrap();
        seal_immutable(fd.as_fd()).unwrap();
        assert!(ReadOnlyMapping::new(fd.as_fd(), 8192).is_err());
        assert_eq!(ReadOnlyMapping::new(fd.as_fd(), 4096).unwrap().len(), 4096);
    }

    #[test]
    fn truncated_descriptors_are_reported_and_the_installed_ones_owned() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = create_memfd(3).unwrap();
        let many = vec![fd.as_raw_fd(); MAX_FDS_PER_MESSAGE + 6];
        send_all_with_fds(a.as_fd(), b"abc", &many).unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let got = recv_with_fds_checked(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(got, Received { bytes: 3, truncated: true });
        assert!(!fds.is_empty() && fds.len() <= MAX_FDS_PER_MESSAGE + 1, "{} installed", fds.len());
        for f in &fds {
            assert_eq!(file_identity(f.as_fd()).unwrap(), file_identity(fd.as_fd()).unwrap());
        }
        send_all_with_fds(a.as_fd(), b"de", &many).unwrap();
        assert!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).is_err(), "the plain receive refuses");
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
