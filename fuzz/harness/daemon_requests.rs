//! Target `daemon_requests`: the daemon's real request handling (`store_daemon::connection`)
//! over a socket pair, against a fresh in-memory store per input. No socket file, no
//! cluster, no S3: one connection [`Context`] over a fresh [`NodeStore`] (1 MiB capacity, 4 KiB chunks), one
//! connection task (`connection::serve`) on a current-thread runtime, one client that
//! writes the input and reads every answer.
//!
//! The input is what a client writes: length-prefixed frames, valid or not, and possibly a
//! cut or oversized frame at the end. The harness splits it with [`FrameBuffer`] to know what
//! the daemon will see, and changes three things so that an input cannot make the daemon
//! wait or reach out: a `Get`'s timeout becomes 0, a `PullS3` frame is left out (the S3 path
//! needs an endpoint; the S3 tests cover it), and a `PutMemfd`/`PutFile` request carries one
//! memfd, sent with the frame's first byte as a real client does: for `PutMemfd { size }` of
//! that size (up to 64 KiB; larger ones get a 1-byte memfd, a lying client), for `PutFile`
//! up to 64 KiB derived from the name.
//!
//! Properties: nothing panics, in the daemon or in the harness; the daemon answers every
//! request but `Release` exactly once, in order, plus one error for a cut or oversized frame;
//! every answer is a well-formed [`Response`] that round-trips; after the client goes, the
//! store holds no lease and no unsealed object, and its byte count is the sum of the objects
//! it lists.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use store_client::frame::{self, FrameBuffer, FrameError};
use store_client::sys;
use store_client::wire::local::{PROTOCOL_VERSION, Request, Response};
use store_client::wire::object::ObjectState;
use store_daemon::DaemonConfig;
use store_daemon::connection::{self, Context};
use store_daemon::node::NodeStore;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const CAPACITY: u64 = 1 << 20;
/// The smallest chunk size a daemon runs with (`manifest::MIN_REPLICATION_CHUNK_SIZE`).
const CHUNK_SIZE: u64 = 64 * 1024;
/// Largest memfd the harness attaches.
const MAX_ATTACHED: usize = 64 * 1024;

/// One write of the client: a frame (or the raw rest of the input) and the memfd riding on it.
struct Write1 {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
}

/// A memfd of `len` bytes (at most [`MAX_ATTACHED`]) of content derived from `name`.
fn memfd_for(name: &str, len: usize) -> OwnedFd {
    let content: Vec<u8> = name.bytes().chain([0x5a]).cycle().take(len.min(MAX_ATTACHED)).collect();
    let fd = sys::create_memfd(0).expect("memfd_create");
    let mut file = std::fs::File::from(fd);
    file.write_all(&content).expect("fill the memfd");
    OwnedFd::from(file)
}

/// What the client sends, and how many answers the daemon owes for it.
fn plan(data: &[u8]) -> (Vec<Write1>, usize) {
    let mut fb = FrameBuffer::new();
    fb.spare(data.len())[..data.len()].copy_from_slice(data);
    fb.filled(data.len());
    let mut writes = Vec::new();
    let mut answers = 0;
    let mut consumed = 0;
    loop {
        match fb.next_frame() {
            Ok(Some(body)) => {
                let raw = data[consumed..consumed + 4 + body.len()].to_vec();
                consumed += raw.len();
                let (bytes, fd, answered) = match frame::decode::<Request>(body) {
                    Ok(Request::PullS3 { .. }) => continue,
                    Ok(Request::Get { name, timeout_ms: _ }) => {
                        (frame::encode(&Request::Get { name, timeout_ms: 0 }), None, true)
                    }
                    Ok(Request::Release { .. }) => (raw, None, false),
                    Ok(Request::PutMemfd { name, size, .. }) => {
                        let len = usize::try_from(size).ok().filter(|&s| s <= MAX_ATTACHED).unwrap_or(1);
                        (raw, Some(memfd_for(&name, len)), true)
                    }
                    Ok(Request::PutFile { name, .. }) => (raw, Some(memfd_for(&name, name.len() * 61)), true),
                    Ok(_) | Err(_) => (raw, None, true),
                };
                answers += usize::from(answered);
                writes.push(Write1 { bytes, fd });
            }
            Ok(None) => {
                // A cut frame at the end: the daemon reports it when the stream ends.
                if fb.buffered() > 0 {
                    writes.push(Write1 { bytes: data[consumed..].to_vec(), fd: None });
                    answers += 1;
                }
                break;
            }
            Err(FrameError::TooLarge(_)) => {
                // Answered once, then the daemon hangs up: nothing after it is read.
                writes.push(Write1 { bytes: data[consumed..].to_vec(), fd: None });
                answers += 1;
                break;
            }
            Err(e) => panic!("framing failed with {e}"),
        }
    }
    (writes, answers)
}

async fn send(stream: &UnixStream, write: &Write1) -> std::io::Result<()> {
    let raw: Vec<_> = write.fd.iter().map(|f| f.as_raw_fd()).collect();
    let (mut bytes, mut fds): (&[u8], &[_]) = (&write.bytes, &raw);
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || sys::send_with_fds(stream.as_fd(), bytes, fds)) {
            Ok(n) => {
                bytes = &bytes[n..];
                fds = &[];
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn run(data: &[u8]) {
    let (writes, answers) = plan(data);
    let mut config = DaemonConfig::new("/nonexistent/fuzz.sock".into(), CAPACITY);
    config.chunk_size = CHUNK_SIZE;
    config.hash_threads = 1;
    let node = Arc::new(NodeStore::new(&config));
    let ctx = Arc::new(Context { config, node: node.clone(), cluster: None });
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().expect("runtime");
    let received = rt.block_on(async {
        let (daemon_end, client) = UnixStream::pair().expect("socketpair");
        let daemon = tokio::spawn(connection::serve(ctx, daemon_end, 1, CancellationToken::new()));
        let (mut read_half, write_half) = client.into_split();
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            // A reset after the daemon hung up on an oversized frame ends the answers too.
            let _ = read_half.read_to_end(&mut received).await;
            received
        });
        for write in &writes {
            if send(write_half.as_ref(), write).await.is_err() {
                break; // the daemon hung up (oversized frame)
            }
        }
        drop(write_half); // end of stream for the daemon
        daemon.await.expect("the connection task panicked");
        reader.await.expect("the reader panicked")
    });

    let mut fb = FrameBuffer::new();
    fb.spare(received.len())[..received.len()].copy_from_slice(&received);
    fb.filled(received.len());
    let mut got = 0;
    while let Some(body) = fb.next_frame().expect("the daemon sent an oversized frame") {
        let resp: Response = frame::decode(body).unwrap_or_else(|e| panic!("the daemon sent a malformed answer: {e}"));
        let wire = frame::encode(&resp);
        assert_eq!(frame::encode(&frame::decode::<Response>(&wire[4..]).expect("round trip")), wire);
        got += 1;
    }
    assert_eq!(fb.finish(), Ok(()), "the daemon's last answer is cut");
    assert_eq!(got, answers, "answers do not match requests");

    // The client is gone: everything it held is given back.
    let store = node.store();
    let listed = store.list();
    for info in &listed {
        assert_eq!(info.leases, 0, "a lease outlived its connection: {info:?}");
        assert_ne!(info.state, ObjectState::Pending, "an unsealed object outlived its creator: {info:?}");
        assert_ne!(info.state, ObjectState::Deleted, "a deleted object outlived its last lease: {info:?}");
    }
    assert_eq!(store.used(), listed.iter().map(|i| i.size).sum::<u64>(), "bytes in use do not add up");
    assert!(store.used() <= store.capacity());
}

/// Request streams of a local client, for the seed corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    let enc = |reqs: &[Request]| -> Vec<u8> { reqs.iter().flat_map(frame::encode).collect() };
    let name = |s: &str| s.to_string();
    vec![
        enc(&[
            Request::Hello { version: PROTOCOL_VERSION },
            Request::Create { name: name("models/a"), size: 5000, evictable: false },
            Request::Seal { id: 1 },
            Request::Get { name: name("models/a"), timeout_ms: 0 },
            Request::Stat { name: name("models/a") },
            Request::List,
            Request::Delete { name: name("models/a") },
            Request::List,
            Request::Release { id: 1 },
            Request::List,
        ]),
        enc(&[
            Request::PutMemfd { name: name("b/c"), size: 3000, evictable: true },
            Request::Get { name: name("b/c"), timeout_ms: 10 },
            Request::Get { name: name("b/c"), timeout_ms: 0 },
            Request::Release { id: 1 },
            Request::PutFile { name: name("b/d"), evictable: false },
            Request::PutMemfd { name: name("b/c"), size: 3000, evictable: true },
            Request::PutMemfd { name: name("b/e"), size: 70_000, evictable: true },
            Request::Origin { name: name("b/c") },
        ]),
        enc(&[
            Request::Create { name: name("big"), size: 300_000, evictable: true },
            Request::Seal { id: 1 },
            Request::Abort { id: 1 },
            Request::Create { name: name("y"), size: 10, evictable: false },
            Request::Abort { id: 2 },
            Request::Delete { name: name("y") },
            Request::Create { name: name("z"), size: 800_000, evictable: false },
            Request::Create { name: name("w"), size: 2 << 20, evictable: false },
        ]),
        enc(&[
            Request::Locate { name: name("x") },
            Request::Nodes,
            Request::Replicate { name: name("x"), to: None, timeout_ms: 100, relay: true },
            Request::Place { spec: Default::default(), prefetch: false },
            Request::PullS3Cooperative { url: name("s3://b/k"), name: name("x"), nodes: None, timeout_ms: 1 },
            Request::Hello { version: PROTOCOL_VERSION + 1 },
            Request::Stat { name: name("a//b") },
        ]),
        // A malformed frame, then a cut one.
        [vec![1, 0, 0, 0, 200], frame::encode(&Request::List), frame::encode(&Request::Nodes)[..5].to_vec()].concat(),
        // An oversized frame after a valid one.
        [frame::encode(&Request::List), vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]].concat(),
    ]
}
