//! Cross-process tests of the local store: real `store-daemon` processes, real unix sockets,
//! real memfds and, where a client process must die or run as another user, real child
//! processes (this test binary re-executed on one of its `#[ignore]`d helper entry points).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use memmap2::MmapOptions;
use nix::errno::Errno;
use store_client::client::PutOptions;
use store_client::frame::{self, FrameBuffer};
use store_client::wire::local::{Request, Response};
use store_client::wire::object::{ErrorCode, ObjectInfo, ObjectState};
use store_client::{ClientError, StoreClient, sys};
use store_tests::DaemonProcess;

const MIB: usize = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(5);

/// Environment of the helper processes: the daemon's socket and the object to get.
const HELPER_SOCKET_ENV: &str = "STORE_TEST_HELPER_SOCKET";
const HELPER_OBJECT_ENV: &str = "STORE_TEST_HELPER_OBJECT";
/// Markers in the lines the helpers print once they got somewhere.
const HELPER_LEASED: &str = "HELPER-LEASED";
const HELPER_RESULT: &str = "HELPER-RESULT";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64), different for each seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

fn digest_of(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// The daemon's error code of a failed client call; panics on success or a local error.
fn store_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Ok(v) => panic!("expected the daemon to refuse, got {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("expected a daemon error code, got {e}")),
    }
}

/// Polls `f` every 10 ms until it yields a value; fails after `limit`.
fn poll_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names(client: &StoreClient) -> Vec<String> {
    client.list().expect("list").into_iter().map(|o| o.name).collect()
}

/// A fresh client can still put and get: the daemon survived whatever came before.
fn assert_serves(daemon: &DaemonProcess) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("still-serving/{n}");
    let data = pattern(10_000, 1000 + n);
    let client = daemon.client().expect("a fresh client connects");
    let info = client.put(&name, &data).expect("a fresh client puts");
    assert_eq!(info.digest.map(|d| d.0), Some(digest_of(&data)));
    let guard = client.get(&name, WAIT).expect("a fresh client gets");
    assert_eq!(&guard[..], &data[..]);
}

/// One raw protocol connection: frames and descriptors by hand.
struct RawConn {
    stream: UnixStream,
    frames: FrameBuffer,
    fds: Vec<OwnedFd>,
}

impl RawConn {
    fn connect(daemon: &DaemonProcess) -> Self {
        let stream = UnixStream::connect(daemon.socket()).expect("raw connect");
        // Every read is bounded: a daemon that does not answer fails the test, not hangs it.
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
        Self { stream, frames: FrameBuffer::new(), fds: Vec::new() }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw write");
    }

    fn send(&mut self, req: &Request) {
        self.send_bytes(&frame::encode(req));
    }

    /// The next response, or `None` once the daemon closed the connection.
    fn receive(&mut self) -> Option<Response> {
        loop {
            if let Some(body) = self.frames.next_frame().expect("daemon sent a valid frame") {
                return Some(frame::decode(body).expect("daemon sent a valid response"));
            }
            let spare = self.frames.spare(64 * 1024);
            let n = sys::recv_with_fds(self.stream.as_fd(), spare, &mut self.fds)
                .expect("receive from the daemon (timed out?)");
            self.frames.filled(n);
            if n == 0 {
                self.frames.finish().expect("daemon closed inside a frame");
                return None;
            }
        }
    }

    fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        self.receive().expect("the daemon closed the connection instead of answering")
    }
}

/// The message of an error response with `code`; panics on anything else.
fn expect_error(resp: Option<Response>, code: ErrorCode) -> String {
    match resp {
        Some(Response::Error { code: c, message }) if c == code => message,
        other => panic!("expected an error {code:?}, got {other:?}"),
    }
}

/// A child process that is killed and reaped however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `#[ignore]`d helper test `helper` of the test binary `exe` in a new process.
fn helper_command(exe: &Path, helper: &str, socket: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", helper, "--nocapture", "--ignored", "--test-threads=1"])
        .env(HELPER_SOCKET_ENV, socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Forwards the child's stdout line by line (the reader ends with the child).
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The rest of the first line holding `marker`, from the marker on, waiting at most
/// `limit`. (libtest prints "test <name> ... " before the test runs, on the same line.)
fn wait_for_line(lines: &mpsc::Receiver<String>, marker: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(at) = line.find(marker) {
                    return line[at..].to_owned();
                }
            }
            Err(e) => panic!("the helper printed no {marker} line within {limit:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helper process entry points (not tests on their own: they do nothing without their
// environment variables)
// ---------------------------------------------------------------------------------------

/// Gets an object, says so, and sleeps holding the lease until killed.
#[test]
#[ignore = "helper process of lease_is_dropped_when_a_client_process_is_killed"]
fn helper_get_and_sleep() {
    let (Some(socket), Ok(name)) = (std::env::var_os(HELPER_SOCKET_ENV), std::env::var(HELPER_OBJECT_ENV)) else {
        return;
    };
    let client = StoreClient::connect(socket).unwrap();
    let guard = client.get(&name, WAIT).unwrap();
    println!("{HELPER_LEASED} {} bytes", guard.len());
    std::io::stdout().flush().unwrap();
    // Bounded, so that a helper whose parent vanished does not linger for long.
    std::thread::sleep(Duration::from_secs(60));
    drop(guard);
}

/// Connects and reports its uid and what `StoreClient::connect` said.
#[test]
#[ignore = "helper process of a_uid_not_on_the_allow_list_is_refused"]
fn helper_report_connect_error() {
    let Some(socket) = std::env::var_os(HELPER_SOCKET_ENV) else {
        return;
    };
    let uid = nix::unistd::getuid();
    match StoreClient::connect(socket) {
        Ok(_) => println!("{HELPER_RESULT} uid={uid} connected"),
        Err(e) => println!("{HELPER_RESULT} uid={uid} code={:?} message={e}", e.code()),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn round_trips_of_0_1_4k_and_100m_bytes_keep_bytes_and_digest() {
    let daemon = DaemonProcess::start("256MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    for (seed, len) in [0usize, 1, 4096, 100 * MIB].into_iter().enumerate() {
        let data = pattern(len, seed as u64 + 1);
        let want = digest_of(&data);
        let name = format!("round-trip/{len}");
        let put = client.put(&name, &data).unwrap();
        assert_eq!(put.size, len as u64);
        assert_eq!(put.state, ObjectState::Sealed);
        assert_eq!(put.digest.map(|d| d.0), Some(want), "digest of the put of {len} bytes");

        let guard = client.get(&name, WAIT).unwrap();
        assert_eq!(guard.len(), len);
        assert_eq!(guard.info().digest.map(|d| d.0), Some(want), "digest of the get of {len} bytes");
        assert_eq!(guard.info().id, put.id);
        if len <= 4096 {
            assert_eq!(&guard[..], &data[..]);
        } else {
            assert_eq!(digest_of(&guard), want, "hash of the mapped {len} bytes");
        }
    }
}

#[test]
fn put_from_file_equals_put_from_memory() {
    let daemon = DaemonProcess::start("64MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Empty, one page, and several 4 MiB chunks with a ragged end.
    for (seed, len) in [0usize, 4096, 9 * MIB + 123].into_iter().enumerate() {
        let data = pattern(len, 50 + seed as u64);
        let path = dir.path().join(format!("input-{len}"));
        std::fs::write(&path, &data).unwrap();

        let from_file = client.put_file(&format!("from-file/{len}"), &path, PutOptions::default()).unwrap();
        let from_memory = client.put(&format!("from-memory/{len}"), &data).unwrap();
        assert_eq!(from_file.size, len as u64);
        assert_eq!(from_file.digest, from_memory.digest, "digests of {len} bytes");
        assert_eq!(from_file.digest.map(|d| d.0), Some(digest_of(&data)));

        let a = client.get(&format!("from-file/{len}"), WAIT).unwrap();
        let b = client.get(&format!("from-memory/{len}"), WAIT).unwrap();
        assert_eq!(&a[..], &data[..], "bytes put from a file of {len} bytes");
        assert_eq!(&a[..], &b[..]);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Immutability
// ---------------------------------------------------------------------------------------

#[test]
fn a_sealed_object_cannot_be_changed() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let data = pattern(3 * 4096, 7);
    client.put("sealed", &data).unwrap();
    let guard = client.get("sealed", WAIT).unwrap();
    let fd = guard.fd();
    assert!(sys::is_sealed(fd.as_fd()));
    // The descriptor is open for writing: only the seals stand in the way (so EPERM below).
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(flags & nix::libc::O_ACCMODE, nix::libc::O_RDWR, "the memfd comes read-write");

    // SAFETY: the mapping is expected to fail; if the kernel created it, the test fails
    // before anything reads or writes through it.
    let mapped = unsafe { MmapOptions::new().len(data.len()).map_mut(fd.as_raw_fd()) };
    let err = mapped.expect_err("a writable shared mapping of a sealed object");
    assert_eq!(err.raw_os_error(), Some(Errno::EPERM as i32), "mmap(PROT_WRITE, MAP_SHARED): {err}");

    let mut file = File::from(fd.try_clone().unwrap());
    let err = file.write_all(b"overwrite").expect_err("write(2) into a sealed object");
    assert_eq!(err.raw_os_error(), Some(Errno::EPERM as i32), "write: {err}");
    let err = file.write_all_at(b"overwrite", 100).expect_err("pwrite(2) into a sealed object");
    assert_eq!(err.raw_os_error(), Some(Errno::EPERM as i32), "pwrite: {err}");

    for len in [0, 1, data.len() as i64 + 4096] {
        let err = nix::unistd::ftruncate(fd, len).expect_err("ftruncate of a sealed object");
        assert_eq!(err, Errno::EPERM, "ftruncate to {len}");
    }

    assert_eq!(sys::file_size(fd.as_fd()).unwrap(), data.len() as u64);
    assert_eq!(&guard[..], &data[..]);
    let again = daemon.client().unwrap().get("sealed", WAIT).unwrap();
    assert_eq!(&again[..], &data[..]);
}

// ---------------------------------------------------------------------------------------
// 3. Shared pages
// ---------------------------------------------------------------------------------------

/// Physical page frame number of the page holding `addr` in this process, from
/// /proc/self/pagemap (bits 0-54; the process must have CAP_SYS_ADMIN to see them).
fn page_frame(addr: *const u8) -> u64 {
    const PAGE: u64 = 4096;
    let pagemap = File::open("/proc/self/pagemap").expect("open /proc/self/pagemap");
    let mut entry = [0u8; 8];
    pagemap.read_exact_at(&mut entry, (addr as u64 / PAGE) * 8).expect("read /proc/self/pagemap");
    let entry = u64::from_le_bytes(entry);
    assert!(entry & (1 << 63) != 0, "page at {addr:p} is not present (entry {entry:#x})");
    entry & ((1 << 55) - 1)
}

#[test]
fn two_clients_map_the_same_physical_pages() {
    if !store_tests::skip::requires_euid_root("reading page frame numbers (/proc/self/pagemap)") {
        return;
    }
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let first = daemon.client().unwrap();
    let second = daemon.client().unwrap();
    let data = pattern(5 * 4096, 3);
    first.put("shared", &data).unwrap();

    let a = first.get("shared", WAIT).unwrap();
    let b = second.get("shared", WAIT).unwrap();
    assert_eq!(a.info().id, b.info().id);
    assert_eq!(
        sys::file_identity(a.fd().as_fd()).unwrap(),
        sys::file_identity(b.fd().as_fd()).unwrap(),
        "both descriptors are the same memfd"
    );
    assert_ne!(a.as_ptr(), b.as_ptr(), "two mappings, two virtual addresses");

    // Fault the first page of each mapping in.
    assert_eq!(std::hint::black_box(a[0]), data[0]);
    assert_eq!(std::hint::black_box(b[0]), data[0]);
    let (pfn_a, pfn_b) = (page_frame(a.as_ptr()), page_frame(b.as_ptr()));
    assert_ne!(pfn_a, 0, "page frame numbers are visible to root");
    assert_eq!(pfn_a, pfn_b, "both mappings use the same physical page");
}

// ---------------------------------------------------------------------------------------
// 4. Leases of dead clients
// ---------------------------------------------------------------------------------------

#[test]
fn lease_is_dropped_when_a_client_process_is_killed() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    client.put("leased-by-child", &pattern(10_000, 4)).unwrap();
    assert_eq!(client.stat("leased-by-child").unwrap().leases, 0);

    let exe = std::env::current_exe().unwrap();
    let mut cmd = helper_command(&exe, "helper_get_and_sleep", daemon.socket());
    cmd.env(HELPER_OBJECT_ENV, "leased-by-child");
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let lines = stdout_lines(&mut child.0);
    let line = wait_for_line(&lines, HELPER_LEASED, Duration::from_secs(20));
    assert!(line.ends_with("10000 bytes"), "{line}");
    assert_eq!(client.stat("leased-by-child").unwrap().leases, 1);

    child.0.kill().unwrap(); // SIGKILL: the child gets no chance to release anything
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(nix::sys::signal::Signal::SIGKILL as i32));
    poll_until("the dead client's lease to be returned", WAIT, || {
        (client.stat("leased-by-child").unwrap().leases == 0).then_some(())
    });
}

// ---------------------------------------------------------------------------------------
// 5. Eviction
// ---------------------------------------------------------------------------------------

const CACHE: PutOptions = PutOptions { evictable: true };

#[test]
fn eviction_drops_the_least_recently_used_evictable_copy() {
    let daemon = DaemonProcess::start("3MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    for (seed, name) in ["a", "b", "c"].into_iter().enumerate() {
        client.put_with(name, &pattern(MIB, seed as u64), CACHE).unwrap();
    }
    // Using "a" makes "b" the least recently used. (Same connection, so the release is
    // handled before the next put.)
    drop(client.get("a", WAIT).unwrap());
    client.put_with("d", &pattern(MIB, 10), CACHE).unwrap();
    assert_eq!(names(&client), ["a", "c", "d"]);
    assert_eq!(store_code(client.stat("b")), ErrorCode::NotFound);

    client.put_with("e", &pattern(MIB, 11), CACHE).unwrap();
    assert_eq!(names(&client), ["a", "d", "e"], "c was used longest ago");

    drop(client.get("a", WAIT).unwrap());
    drop(client.get("d", WAIT).unwrap());
    client.put_with("f", &pattern(MIB, 12), CACHE).unwrap();
    assert_eq!(names(&client), ["a", "d", "f"], "e was used longest ago");

    // Survivors are intact.
    assert_eq!(&client.get("a", WAIT).unwrap()[..], &pattern(MIB, 0)[..]);
    assert_eq!(&client.get("f", WAIT).unwrap()[..], &pattern(MIB, 12)[..]);
}

#[test]
fn leased_and_primary_objects_are_never_evicted() {
    let daemon = DaemonProcess::start("3MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    client.put("primary", &pattern(MIB, 1)).unwrap();
    client.put_with("leased", &pattern(MIB, 2), CACHE).unwrap();
    client.put_with("cache", &pattern(MIB, 3), CACHE).unwrap();
    let lease = client.get("leased", WAIT).unwrap();
    assert!(!client.stat("primary").unwrap().evictable);

    // "primary" is the oldest and "leased" older than "cache", yet only "cache" may go.
    client.put_with("new", &pattern(MIB, 4), CACHE).unwrap();
    assert_eq!(names(&client), ["leased", "new", "primary"]);

    // Needs 1.5 MiB, only "new" (1 MiB) could go: refused, and nothing is evicted.
    let big = pattern(3 * MIB / 2, 5);
    assert_eq!(store_code(client.put_with("big", &big, CACHE)), ErrorCode::StoreFull);
    assert_eq!(names(&client), ["leased", "new", "primary"], "a failed put evicts nothing");
    assert_eq!(&lease[..], &pattern(MIB, 2)[..]);

    // Once the lease is returned the copy is evictable like any other.
    drop(lease);
    client.put_with("big", &big, CACHE).unwrap();
    assert_eq!(names(&client), ["big", "primary"]);
    assert_eq!(&client.get("primary", WAIT).unwrap()[..], &pattern(MIB, 1)[..]);
}

#[test]
fn store_full_when_everything_is_pinned_and_nothing_is_evicted() {
    let daemon = DaemonProcess::start("3MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    client.put("primary-1", &pattern(MIB, 1)).unwrap();
    client.put("primary-2", &pattern(MIB, 2)).unwrap();
    client.put_with("held", &pattern(MIB, 3), CACHE).unwrap();
    let _lease = client.get("held", WAIT).unwrap();
    let before = client.list().unwrap();

    for (name, len) in [("one-more", MIB), ("a-little", 1)] {
        let err = client.put_with(name, &pattern(len, 9), CACHE).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StoreFull), "{err}");
    }
    let err = client.create("created", 4096, CACHE).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StoreFull), "{err}");

    let after = client.list().unwrap();
    let ids = |l: &[ObjectInfo]| l.iter().map(|o| (o.name.clone(), o.id)).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "nothing was evicted");
    assert_eq!(names(&client), ["held", "primary-1", "primary-2"]);
}

// ---------------------------------------------------------------------------------------
// 6. Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn a_truncated_frame_gets_bad_request() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let mut raw = RawConn::connect(&daemon);
    raw.send_bytes(&100u32.to_le_bytes());
    raw.send_bytes(&[7u8; 10]);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let message = expect_error(raw.receive(), ErrorCode::BadRequest);
    assert!(message.contains("ended inside a frame"), "{message}");
    assert!(raw.receive().is_none(), "the connection ends after the error");
    assert_serves(&daemon);
}

#[test]
fn an_oversized_frame_gets_bad_request() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let mut raw = RawConn::connect(&daemon);
    raw.send_bytes(&0xFFFF_FFF0u32.to_le_bytes());
    let message = expect_error(raw.receive(), ErrorCode::BadRequest);
    assert!(message.contains("exceeds the limit"), "{message}");
    // There is no finding the next frame after this one: the daemon hangs up.
    assert!(raw.receive().is_none());
    assert_serves(&daemon);
}

#[test]
fn an_unknown_request_gets_bad_request_and_the_connection_keeps_serving() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    daemon.client().unwrap().put("present", b"here").unwrap();
    let mut raw = RawConn::connect(&daemon);
    raw.send_bytes(&[1, 0, 0, 0, 200]);
    let message = expect_error(raw.receive(), ErrorCode::BadRequest);
    assert!(message.contains("malformed"), "{message}");
    match raw.call(&Request::List) {
        Response::Listing(list) => assert_eq!(list.len(), 1),
        other => panic!("expected a listing, got {other:?}"),
    }
    assert_serves(&daemon);
}

#[test]
fn an_invalid_utf8_name_gets_bad_request() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let stat_tag = frame::encode(&Request::Stat { name: String::new() })[4];
    let mut raw = RawConn::connect(&daemon);
    raw.send_bytes(&[4, 0, 0, 0, stat_tag, 2, 0xff, 0xfe]);
    let message = expect_error(raw.receive(), ErrorCode::BadRequest);
    assert!(message.contains("malformed"), "{message}");
    assert!(matches!(raw.call(&Request::List), Response::Listing(_)));
    assert_serves(&daemon);
}

#[test]
fn an_overlong_name_gets_invalid_name() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let long = "n".repeat(2000);
    let mut raw = RawConn::connect(&daemon);
    for req in [
        Request::Stat { name: long.clone() },
        Request::Get { name: long.clone(), timeout_ms: 0 },
        Request::Create { name: long.clone(), size: 10, evictable: false },
        Request::Delete { name: long.clone() },
    ] {
        let message = expect_error(Some(raw.call(&req)), ErrorCode::InvalidName);
        assert!(message.contains("2000 bytes"), "{message}");
    }
    // The client checks names itself before asking.
    let client = daemon.client().unwrap();
    assert!(matches!(client.put(&long, b"x"), Err(ClientError::InvalidName(_))));
    assert!(client.list().unwrap().is_empty());
    assert_serves(&daemon);
}

#[test]
fn an_absurd_create_size_is_too_large() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let err = client.create("absurd", u64::MAX / 2, PutOptions::default()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err}");
    assert!(client.list().unwrap().is_empty());
    assert_serves(&daemon);
}

#[test]
fn seal_or_get_of_an_unknown_name_or_id_is_not_found() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    assert_eq!(store_code(client.get("missing", Duration::ZERO)), ErrorCode::NotFound);
    assert_eq!(store_code(client.stat("missing")), ErrorCode::NotFound);
    assert_eq!(store_code(client.delete("missing")), ErrorCode::NotFound);

    let mut raw = RawConn::connect(&daemon);
    expect_error(Some(raw.call(&Request::Seal { id: 999_999 })), ErrorCode::NotFound);
    // An id created on another connection is unknown to this one.
    let mut other = client.create("someone-elses", 100, PutOptions::default()).unwrap();
    expect_error(Some(raw.call(&Request::Seal { id: other.id() })), ErrorCode::NotFound);
    expect_error(Some(raw.call(&Request::Abort { id: other.id() })), ErrorCode::NotFound);
    other.seal().unwrap();
    assert_serves(&daemon);
}

#[test]
fn a_double_seal_is_already_sealed() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let data = pattern(4096, 8);
    let mut raw = RawConn::connect(&daemon);
    let id = match raw.call(&Request::Create { name: "twice".into(), size: 4096, evictable: false }) {
        Response::Created { id } => id,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(raw.fds.len(), 1, "Created carries the writable memfd");
    let memfd = File::from(raw.fds.remove(0));
    memfd.write_all_at(&data, 0).unwrap();
    drop(memfd);
    match raw.call(&Request::Seal { id }) {
        Response::Sealed(info) => assert_eq!(info.digest.map(|d| d.0), Some(digest_of(&data))),
        other => panic!("expected Sealed, got {other:?}"),
    }
    let message = expect_error(Some(raw.call(&Request::Seal { id })), ErrorCode::AlreadySealed);
    assert!(message.contains(&id.to_string()), "{message}");

    // The client refuses a second seal itself.
    let client = daemon.client().unwrap();
    let mut obj = client.create("twice-by-client", 10, PutOptions::default()).unwrap();
    obj.seal().unwrap();
    assert!(matches!(obj.seal(), Err(ClientError::Protocol(_))));

    assert_eq!(&client.get("twice", WAIT).unwrap()[..], &data[..]);
    assert_serves(&daemon);
}

#[test]
fn seal_is_refused_while_the_client_has_a_writable_mapping() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let data = pattern(8192, 9);
    let mut obj = client.create("mapped", data.len() as u64, PutOptions::default()).unwrap();
    let file = obj.file().unwrap();
    // SAFETY: the object is unsealed, owned by this test, and nobody else writes to it or
    // resizes it while this mapping lives.
    let mut map = unsafe { MmapOptions::new().len(data.len()).map_mut(&file) }.unwrap();
    map.copy_from_slice(&data);

    let err = obj.seal().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WritableMapping), "{err}");
    assert_eq!(client.stat("mapped").unwrap().state, ObjectState::Pending);

    // The object stays unsealed and can be sealed once the mapping is gone.
    drop(map);
    let info = obj.seal().unwrap();
    assert_eq!(info.digest.map(|d| d.0), Some(digest_of(&data)));
    assert_eq!(&client.get("mapped", WAIT).unwrap()[..], &data[..]);
    assert_serves(&daemon);
}

#[test]
fn a_client_that_disconnects_mid_create_leaves_nothing_behind() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let mut raw = RawConn::connect(&daemon);
    assert!(matches!(
        raw.call(&Request::Create { name: "half".into(), size: 4096, evictable: false }),
        Response::Created { .. }
    ));
    let memfd = File::from(raw.fds.remove(0));
    memfd.write_all_at(b"half written", 0).unwrap();
    let listed = client.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].state), ("half", ObjectState::Pending));
    assert_eq!(store_code(client.create("half", 4096, PutOptions::default())), ErrorCode::Pending);
    assert_eq!(store_code(client.get("half", Duration::ZERO)), ErrorCode::NotFound);

    drop(raw); // hang up without sealing or aborting
    poll_until("the unsealed object to be dropped", WAIT, || client.list().unwrap().is_empty().then_some(()));

    let mut again = client.create("half", 4096, PutOptions::default()).unwrap();
    again.as_mut_slice().unwrap()[..5].copy_from_slice(b"whole");
    again.seal().unwrap();
    let guard = client.get("half", WAIT).unwrap();
    assert_eq!(&guard[..5], b"whole");
    assert!(guard[5..].iter().all(|&b| b == 0));
    drop(memfd);
    assert_serves(&daemon);
}

#[test]
fn get_waits_for_an_object_sealed_later_by_another_client() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let waiter = daemon.client().unwrap();
    let writer = daemon.client().unwrap();
    let data = pattern(100_000, 10);
    let start = Instant::now();
    let getter = std::thread::spawn(move || {
        let guard = waiter.get("late", Duration::from_secs(10)).unwrap();
        (start.elapsed(), guard.to_vec())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!getter.is_finished(), "get returned before the object existed");
    writer.put("late", &data).unwrap();
    let (waited, got) = getter.join().unwrap();
    assert!(waited >= Duration::from_millis(200), "waited {waited:?}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}: woken by the seal, not the timeout");
    assert_eq!(got, data);
    assert_serves(&daemon);
}

#[test]
fn get_times_out_when_nothing_comes() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let start = Instant::now();
    let err = client.get("never", Duration::from_millis(300)).unwrap_err();
    let waited = start.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    assert!(waited >= Duration::from_millis(300) && waited < WAIT, "waited {waited:?}");
    // An unsealed object is "nothing" too.
    let pending = client.create("unsealed", 10, PutOptions::default()).unwrap();
    let other = daemon.client().unwrap();
    assert_eq!(store_code(other.get("unsealed", Duration::from_millis(100))), ErrorCode::Timeout);
    pending.abort().unwrap();
    assert_serves(&daemon);
}

#[test]
fn delete_while_leased_keeps_the_mapping_and_frees_after_release() {
    // Room for two 1 MiB objects and a little more.
    let daemon = DaemonProcess::start("2112KiB", &[]).unwrap();
    let client = daemon.client().unwrap();
    let data = pattern(MIB, 11);
    client.put("doomed", &data).unwrap();
    let guard = client.get("doomed", WAIT).unwrap();
    let id = guard.info().id;

    client.delete("doomed").unwrap();
    assert_eq!(&guard[..], &data[..], "the mapping stays readable");
    assert_eq!(store_code(client.stat("doomed")), ErrorCode::NotFound);
    assert_eq!(store_code(client.get("doomed", Duration::ZERO)), ErrorCode::NotFound);
    let listed = client.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].state, listed[0].leases), (id, ObjectState::Deleted, 1));

    // Its bytes still count: one more MiB fits, two do not.
    client.put("other", &pattern(MIB, 12)).unwrap();
    assert_eq!(store_code(client.put("third", &pattern(MIB, 13))), ErrorCode::StoreFull);

    drop(guard);
    poll_until("the deleted object to be freed", WAIT, || {
        client.list().unwrap().iter().all(|o| o.id != id).then_some(())
    });
    assert_eq!(names(&client), ["other"]);
    client.put("third", &pattern(MIB, 13)).unwrap();
    assert_serves(&daemon);
}

// ---------------------------------------------------------------------------------------
// 7. Allow-list
// ---------------------------------------------------------------------------------------

#[test]
fn a_uid_not_on_the_allow_list_is_refused() {
    if !store_tests::skip::requires_euid_root("running a client as another uid") {
        return;
    }
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    // The socket is 0660 root:root; uid 65534 with gid 0 may open it once it can reach it.
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // This test binary, or a copy of it that uid 65534 can read and execute.
    let exe = std::env::current_exe().unwrap();
    let bin_dir = tempfile::Builder::new().prefix("store-test-bin").tempdir().unwrap();
    let exe = if executable_by_others(&exe) {
        exe
    } else {
        std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = bin_dir.path().join("local_store");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    };

    let mut cmd = helper_command(&exe, "helper_report_connect_error", daemon.socket());
    cmd.uid(65534).gid(0).current_dir("/");
    let mut child = ChildGuard(spawn_retrying_busy(&mut cmd));
    let lines = stdout_lines(&mut child.0);
    let line = wait_for_line(&lines, HELPER_RESULT, Duration::from_secs(20));
    assert!(line.contains("uid=65534 "), "the helper ran as uid 65534: {line}");
    assert!(line.contains("code=Some(PermissionDenied)"), "{line}");
    assert!(line.contains("uid 65534 (gid 0) is not allowed"), "the message names the uid: {line}");
    let status = poll_until("the helper to exit", Duration::from_secs(20), || child.0.try_wait().unwrap());
    assert!(status.success(), "helper: {status}");

    assert_serves(&daemon);
}

/// Whether any user may execute `exe`: every directory above it searchable and the file
/// itself readable and executable by "others".
fn executable_by_others(exe: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(exe) & 0o005 == 0o005 && exe.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// Spawns `cmd`, retrying while exec fails with ETXTBSY: a freshly written binary stays
/// "busy" while a process forked by another test thread still holds the writing descriptor.
fn spawn_retrying_busy(cmd: &mut Command) -> Child {
    let start = Instant::now();
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.expect("spawning the helper"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Shutdown
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_exits_successfully_and_removes_the_socket() {
    let daemon = DaemonProcess::start("16MiB", &[]).unwrap();
    // Idle connections and held leases do not hold up the shutdown.
    let client = daemon.client().unwrap();
    client.put("held", b"held").unwrap();
    let _lease = client.get("held", WAIT).unwrap();

    // `terminate` drops the harness's temporary directory, which would remove the socket
    // file whatever the daemon did. So move the directory out of the harness's reach and
    // leave a symlink in its place: the daemon unlinks its socket through the symlink, and
    // the harness removes only the symlink.
    let keep = tempfile::tempdir().unwrap();
    let moved = keep.path().join("daemon-dir");
    std::fs::rename(daemon.dir(), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, daemon.dir()).unwrap();
    assert!(moved.join("store.sock").exists());
    assert!(UnixStream::connect(daemon.socket()).is_ok(), "still reachable through the symlink");

    let status = daemon.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(moved.exists());
    assert!(!moved.join("store.sock").exists(), "the daemon removed its socket");
    assert!(client.list().is_err(), "the connection is closed");
}

#[test]
fn put_dir_stores_every_file_under_the_prefix() {
    let daemon = DaemonProcess::start("64MiB", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("sub/weights.bin"), pattern(70_000, 9)).unwrap();
    let client = daemon.client().unwrap();
    let stored = client.put_dir(dir.path(), "models/m/", PutOptions::default()).unwrap();
    let names: Vec<_> = stored.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["models/m/config.json", "models/m/sub/weights.bin"]);
    let weights = client.get("models/m/sub/weights.bin", Duration::ZERO).unwrap();
    assert_eq!(&weights[..], &pattern(70_000, 9)[..]);
}

/// A directory with one file whose path cannot be a name is refused whole, before anything
/// is stored.
#[test]
fn put_dir_refuses_a_directory_with_an_unstorable_path_and_stores_nothing() {
    let daemon = DaemonProcess::start("64MiB", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("bad\nname"), b"x").unwrap();
    std::fs::write(dir.path().join("z.bin"), b"zz").unwrap();
    let client = daemon.client().unwrap();
    let err = client.put_dir(dir.path(), "m", PutOptions::default()).unwrap_err();
    assert!(matches!(&err, store_client::ClientError::UnstorablePath { name, .. } if name == "m/bad\nname"), "{err}");
    assert!(client.list().unwrap().is_empty(), "nothing stored");
}
