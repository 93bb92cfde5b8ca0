//! The blocking local client: one unix-socket connection to the node's daemon.
//!
//! Objects come back as [`ObjectGuard`]s, read-only shared mappings of the daemon's sealed
//! memfd that deref to `&[u8]`; dropping one returns its lease without a round trip.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;

use crate::frame::{self, FrameBuffer, FrameError};
use crate::name::{self, NameError};
use crate::sys::{self, ReadOnlyMapping, WritableMapping};
use crate::wire::local::{PROTOCOL_VERSION, Request, Response};
use crate::wire::object::{ErrorCode, ObjectId, ObjectInfo};

/// Environment variable naming the daemon's socket, shared by the daemon and `storectl`.
pub const SOCKET_ENV: &str = "STORE_SOCKET";

/// The socket path a daemon or client uses when none is given.
///
/// Under systemd `$RUNTIME_DIRECTORY/store.sock`; else `/run/store/store.sock` for root;
/// else `$XDG_RUNTIME_DIR/store.sock` so that an unprivileged user can run a daemon.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may pass several directories separated by ':'; ours is the first.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return PathBuf::from(first).join("store.sock");
    }
    let run = PathBuf::from("/run/store");
    if nix::unistd::geteuid().is_root() || run.exists() {
        return run.join("store.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("store.sock"),
        None => run.join("store.sock"),
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to the store daemon at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{message} ({code:?})")]
    Store { code: ErrorCode, message: String },
    #[error("connection to the store daemon failed: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("invalid object name: {0}")]
    InvalidName(#[from] NameError),
    #[error("{} cannot be stored as {name:?}: {reason}", path.display())]
    UnstorablePath {
        path: PathBuf,
        name: String,
        #[source]
        reason: NameError,
    },
}

impl ClientError {
    /// The daemon's error code, if the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Store { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    frames: FrameBuffer,
    fds: Vec<OwnedFd>,
}

impl Connection {
    fn send(&mut self, req: &Request, fd: Option<&OwnedFd>) -> io::Result<()> {
        let bytes = frame::encode(req);
        let raw: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
        sys::send_all_with_fds(self.stream.as_fd(), &bytes, &raw)
    }

    fn receive(&mut self) -> Result<(Response, Option<OwnedFd>)> {
        loop {
            if let Some(body) = self.frames.next_frame()? {
                let resp: Response = frame::decode(body)?;
                let carries_fd = matches!(resp, Response::Created { .. } | Response::Object(_));
                let fd = if carries_fd {
                    if self.fds.is_empty() {
                        return Err(ClientError::Protocol("response lacks its descriptor".into()));
                    }
                    Some(self.fds.remove(0))
                } else {
                    None
                };
                // One response is awaited at a time: a descriptor it did not take belongs to
                // nothing.
                self.fds.clear();
                return Ok((resp, fd));
            }
            let spare = self.frames.spare(64 * 1024);
            let n = sys::recv_with_fds(self.stream.as_fd(), spare, &mut self.fds)?;
            self.frames.filled(n);
            if n == 0 {
                self.frames.finish()?;
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                )));
            }
        }
    }

    fn call(&mut self, req: &Request, fd: Option<&OwnedFd>) -> Result<(Response, Option<OwnedFd>)> {
        if let Err(e) = self.send(req, fd) {
            // The daemon may have answered and hung up before reading anything (it refuses a
            // peer that is not on its allow-list that way): its answer says why, a broken
            // pipe does not.
            if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
                && let Ok((Response::Error { code, message }, _)) = self.receive()
            {
                return Err(ClientError::Store { code, message });
            }
            return Err(e.into());
        }
        match self.receive()? {
            (Response::Error { code, message }, _) => Err(ClientError::Store { code, message }),
            ok => Ok(ok),
        }
    }
}

#[derive(Debug)]
struct Shared {
    conn: Mutex<Connection>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection in an unknown state, but the
        // frames it holds are whole or absent; carrying on is no worse than failing.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call(&self, req: &Request, fd: Option<&OwnedFd>) -> Result<(Response, Option<OwnedFd>)> {
        self.lock().call(req, fd)
    }

    fn notify(&self, req: &Request) {
        // Best effort: if the connection is gone the daemon has released everything anyway.
        let _ = self.lock().send(req, None);
    }
}

/// Options of a put.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOptions {
    /// Let LRU eviction drop the object when room is needed (a cache copy).
    pub evictable: bool,
}

/// Options of [`StoreClient::pull_s3`]; `None` keeps the daemon's S3 defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullS3Options {
    pub evictable: bool,
    pub part_size: Option<u64>,
    pub concurrency: Option<u32>,
}

/// A connection to the local daemon. Cheap to share between threads; for parallel
/// requests open one client per thread.
#[derive(Debug, Clone)]
pub struct StoreClient {
    shared: Arc<Shared>,
}

fn unexpected(resp: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {resp:?}"))
}

impl StoreClient {
    /// Connects to the daemon listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream =
            UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        let client = Self {
            shared: Arc::new(Shared {
                conn: Mutex::new(Connection { stream, frames: FrameBuffer::new(), fds: Vec::new() }),
            }),
        };
        match client.shared.call(&Request::Hello { version: PROTOCOL_VERSION }, None)? {
            (Response::Hello { .. }, _) => Ok(client),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Connects to `$STORE_SOCKET`, else the default socket path.
    pub fn connect_default() -> Result<Self> {
        let path = std::env::var_os(SOCKET_ENV).map(PathBuf::from).unwrap_or_else(default_socket_path);
        Self::connect(path)
    }

    /// Maps the object `name`, waiting up to `timeout` for it to be sealed.
    pub fn get(&self, name: &str, timeout: Duration) -> Result<ObjectGuard> {
        name::validate(name)?;
        let req = Request::Get { name: name.to_owned(), timeout_ms: timeout.as_millis() as u64 };
        match self.shared.call(&req, None)? {
            (Response::Object(info), Some(fd)) => {
                let map = ReadOnlyMapping::new(fd.as_fd(), info.size);
                // The lease is ours from here on: return it even if mapping failed.
                let guard_map = match map {
                    Ok(map) => map,
                    Err(e) => {
                        self.shared.notify(&Request::Release { id: info.id });
                        return Err(e.into());
                    }
                };
                Ok(ObjectGuard { info, map: guard_map, shared: self.shared.clone(), fd })
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Stores `data` under `name` and seals it.
    pub fn put(&self, name: &str, data: &[u8]) -> Result<ObjectInfo> {
        self.put_with(name, data, PutOptions::default())
    }

    /// Like [`StoreClient::put`], with options.
    pub fn put_with(&self, name: &str, data: &[u8], opts: PutOptions) -> Result<ObjectInfo> {
        name::validate(name)?;
        // write(2) into our own memfd is faster than faulting in a fresh mapping, and
        // handing the filled memfd over costs a single round trip.
        let fd = sys::create_memfd(data.len() as u64)?;
        File::from(fd.try_clone()?).write_all(data)?;
        let req = Request::PutMemfd { name: name.to_owned(), size: data.len() as u64, evictable: opts.evictable };
        match self.shared.call(&req, Some(&fd))? {
            (Response::Sealed(info), _) => Ok(info),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Stores the file at `path`; the daemon copies it in the kernel.
    pub fn put_file(&self, name: &str, path: impl AsRef<Path>, opts: PutOptions) -> Result<ObjectInfo> {
        name::validate(name)?;
        let file = File::open(path)?;
        let fd = OwnedFd::from(file);
        let req = Request::PutFile { name: name.to_owned(), evictable: opts.evictable };
        match self.shared.call(&req, Some(&fd))? {
            (Response::Sealed(info), _) => Ok(info),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Stores every regular file under `dir` (recursively) as `PREFIX/relative/path`, e.g. a
    /// model directory as `models/m/config.json`, `models/m/model.safetensors`, ...
    pub fn put_dir(&self, dir: impl AsRef<Path>, prefix: &str, opts: PutOptions) -> Result<Vec<ObjectInfo>> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        let prefix = prefix.trim_end_matches('/');
        // Every name is checked before the first file is stored: a directory with one path
        // that cannot be a name is refused whole, not half stored.
        let mut named = Vec::with_capacity(files.len());
        for path in files {
            let relative = path.strip_prefix(dir).map_err(|_| ClientError::Protocol("path outside DIR".into()))?;
            let relative = relative
                .to_str()
                .ok_or_else(|| ClientError::Protocol(format!("{} is not UTF-8", relative.display())))?;
            let name = if prefix.is_empty() { relative.to_owned() } else { format!("{prefix}/{relative}") };
            if let Err(reason) = name::validate(&name) {
                return Err(ClientError::UnstorablePath { path, name, reason });
            }
            named.push((name, path));
        }
        let mut stored = Vec::with_capacity(named.len());
        for (name, path) in named {
            stored.push(self.put_file(&name, &path, opts)?);
        }
        Ok(stored)
    }

    /// Reserves `size` bytes under `name` to fill in place, then [`WritableObject::seal`].
    pub fn create(&self, name: &str, size: u64, opts: PutOptions) -> Result<WritableObject> {
        name::validate(name)?;
        let req = Request::Create { name: name.to_owned(), size, evictable: opts.evictable };
        match self.shared.call(&req, None)? {
            (Response::Created { id }, Some(fd)) => {
                Ok(WritableObject { id, size, fd: Some(fd), map: None, shared: self.shared.clone() })
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        match self.shared.call(&Request::List, None)? {
            (Response::Listing(list), _) => Ok(list),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub fn stat(&self, name: &str) -> Result<ObjectInfo> {
        name::validate(name)?;
        match self.shared.call(&Request::Stat { name: name.to_owned() }, None)? {
            (Response::Stat(info), _) => Ok(info),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Where `name` is in the cluster (via the daemon and its scheduler).
    pub fn locate(&self, name: &str) -> Result<Vec<crate::wire::node::Location>> {
        name::validate(name)?;
        match self.shared.call(&Request::Locate { name: name.to_owned() }, None)? {
            (Response::Located(l), _) => Ok(l),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// The cluster's live nodes.
    pub fn nodes(&self) -> Result<Vec<crate::wire::node::NodeStatus>> {
        match self.shared.call(&Request::Nodes, None)? {
            (Response::Nodes(n), _) => Ok(n),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Asks `to` (every live node if `None`) to pull `name`; returns each node's outcome.
    /// With `relay` false the targets pull only from complete holders (single-source fan-out).
    pub fn replicate(
        &self,
        name: &str,
        to: Option<Vec<String>>,
        timeout: Duration,
        relay: bool,
    ) -> Result<Vec<crate::wire::local::ReplicaOutcome>> {
        name::validate(name)?;
        let req = Request::Replicate { name: name.to_owned(), to, timeout_ms: timeout.as_millis() as u64, relay };
        match self.shared.call(&req, None)? {
            (Response::Replicated(r), _) => Ok(r),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Asks the scheduler (through the daemon) where to run tasks reading `spec.needs`; with
    /// `prefetch` the chosen nodes start pulling what they miss at once.
    pub fn place(
        &self,
        spec: &crate::wire::placement::PlaceSpec,
        prefetch: bool,
    ) -> Result<crate::wire::placement::PlaceOutcome> {
        for need in &spec.needs {
            name::validate(need)?;
        }
        match self.shared.call(&Request::Place { spec: spec.clone(), prefetch }, None)? {
            (Response::Placed(p), _) => Ok(p),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Has the daemon fill the object `name` from `url` (`s3://bucket/key`) and seal it.
    /// Has `nodes` (every live node if `None`) load `url` into `name` together: each reads
    /// a disjoint share from S3 and takes the rest from the others. Returns once every node
    /// finished or failed (see each node's outcome).
    pub fn pull_s3_cooperative(
        &self,
        url: &str,
        name: &str,
        nodes: Option<Vec<String>>,
        timeout: Duration,
    ) -> Result<crate::wire::local::CooperativePull> {
        name::validate(name)?;
        let req = Request::PullS3Cooperative {
            url: url.to_owned(),
            name: name.to_owned(),
            nodes,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.shared.call(&req, None)? {
            (Response::PulledS3Cooperative(p), _) => Ok(p),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub fn pull_s3(&self, url: &str, name: &str, opts: PullS3Options) -> Result<crate::wire::local::S3Pull> {
        name::validate(name)?;
        let req = Request::PullS3 {
            url: url.to_owned(),
            name: name.to_owned(),
            evictable: opts.evictable,
            part_size: opts.part_size,
            concurrency: opts.concurrency,
        };
        match self.shared.call(&req, None)? {
            (Response::PulledS3(p), _) => Ok(p),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// The S3 object `name` was ingested from, if any.
    pub fn origin(&self, name: &str) -> Result<Option<crate::wire::object::S3Origin>> {
        name::validate(name)?;
        match self.shared.call(&Request::Origin { name: name.to_owned() }, None)? {
            (Response::Origin(o), _) => Ok(o),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Unbinds `name`. Existing mappings stay valid; memory is freed when they are dropped.
    pub fn delete(&self, name: &str) -> Result<()> {
        name::validate(name)?;
        match self.shared.call(&Request::Delete { name: name.to_owned() }, None)? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }
}

/// A leased, read-only, zero-copy view of a sealed object.
#[derive(Debug)]
pub struct ObjectGuard {
    info: ObjectInfo,
    map: ReadOnlyMapping,
    fd: OwnedFd,
    shared: Arc<Shared>,
}

impl ObjectGuard {
    pub fn info(&self) -> &ObjectInfo {
        &self.info
    }

    /// The sealed memfd behind the mapping (e.g. to pass on, or to `fstat`).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl std::ops::Deref for ObjectGuard {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        self.shared.notify(&Request::Release { id: self.info.id });
    }
}

/// An unsealed object being filled by this client. Dropping it without sealing aborts it.
#[derive(Debug)]
pub struct WritableObject {
    id: ObjectId,
    size: u64,
    fd: Option<OwnedFd>,
    map: Option<WritableMapping>,
    shared: Arc<Shared>,
}

impl WritableObject {
    pub fn id(&self) -> ObjectId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's bytes through a writable shared mapping (zero-filled at first).
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        if self.map.is_none() {
            let fd = self.fd.as_ref().ok_or_else(|| ClientError::Protocol("object closed".into()))?;
            self.map = Some(WritableMapping::new(fd.as_fd(), self.size)?);
        }
        Ok(self.map.as_mut().map(|m| m.as_mut_slice()).unwrap_or_default())
    }

    /// A `File` over the object's memfd, for filling it with `write_at`.
    pub fn file(&self) -> Result<File> {
        let fd = self.fd.as_ref().ok_or_else(|| ClientError::Protocol("object closed".into()))?;
        Ok(File::from(fd.try_clone()?))
    }

    /// Drops this client's writable mapping and asks the daemon to seal the object. On
    /// error the object stays unsealed and can be sealed again or aborted.
    pub fn seal(&mut self) -> Result<ObjectInfo> {
        if self.id == 0 {
            return Err(ClientError::Protocol("object already sealed or aborted".into()));
        }
        self.map = None;
        match self.shared.call(&Request::Seal { id: self.id }, None)? {
            (Response::Sealed(info), _) => {
                self.id = 0;
                self.fd = None;
                Ok(info)
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Drops the object without sealing it.
    pub fn abort(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        self.map = None;
        match self.shared.call(&Request::Abort { id }, None)? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }
}

impl Drop for WritableObject {
    fn drop(&mut self) {
        if self.id != 0 {
            self.map = None;
            let _ = self.shared.call(&Request::Abort { id: self.id }, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_sent_before_the_daemon_hung_up_is_not_lost() {
        let (client_end, daemon_end) = UnixStream::pair().unwrap();
        let refusal = Response::Error { code: ErrorCode::PermissionDenied, message: "uid 1 is not allowed".into() };
        (&daemon_end).write_all(&frame::encode(&refusal)).unwrap();
        drop(daemon_end);
        let mut conn = Connection { stream: client_end, frames: FrameBuffer::new(), fds: Vec::new() };
        let err = conn.call(&Request::Hello { version: PROTOCOL_VERSION }, None).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    }
}
