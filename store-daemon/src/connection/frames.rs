//! The bytes and descriptors of the local protocol on a unix stream: which descriptors a
//! frame came with, and writing a frame with its descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use store_client::sys;
use store_client::wire::local::Request;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Most descriptors any request takes ([`Request::descriptors`]).
const MAX_FDS_PER_REQUEST: usize = 1;

/// The descriptors that came with one frame.
#[derive(Debug, Default)]
pub struct FrameFds {
    fds: Vec<OwnedFd>,
    /// How many came in all, kept or closed.
    came: usize,
    /// More came than any request takes, or the kernel truncated them: all are closed.
    closed: bool,
}

impl FrameFds {
    pub fn add(&mut self, mut fds: Vec<OwnedFd>, truncated: bool) {
        self.came += fds.len();
        if truncated || self.came > MAX_FDS_PER_REQUEST {
            // Closed at once: a frame trickled in with descriptors holds at most one.
            self.fds.clear();
            self.closed = true;
        } else {
            self.fds.append(&mut fds);
        }
    }

    /// The descriptor `req` takes, or why the request is refused.
    pub fn for_request(mut self, req: &Request) -> Result<Option<OwnedFd>, String> {
        let takes = match req.descriptors() {
            0 => "no descriptor".to_owned(),
            n => format!("exactly {n} descriptor"),
        };
        if self.closed {
            return Err(format!(
                "the request takes {takes} and came with more than {MAX_FDS_PER_REQUEST}; every one was closed"
            ));
        }
        match self.fds.len() {
            n if n == req.descriptors() => Ok(self.fds.pop()),
            0 => Err(format!("the request takes {takes} and came with none")),
            n => Err(format!("the request takes {takes} and came with {n}; it was closed")),
        }
    }
}

pub async fn write_frame(stream: &UnixStream, mut bytes: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let raw: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let mut fds: &[_] = &raw;
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || sys::send_with_fds(stream.as_fd(), bytes, fds)) {
            Ok(n) => {
                bytes = &bytes[n..];
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
