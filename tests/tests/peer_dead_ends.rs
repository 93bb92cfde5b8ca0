//! Peers that go quiet or were never there (issue 13 item 4), on loopback with real daemons,
//! a real scheduler and real QUIC: a peer stream that never finishes its request is dropped
//! after the read timeout, and a holder announced at an address where nothing answers delays
//! only the pulls that ask it (no lock is held across a connect).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use store_client::chunkset::ChunkSet;
use store_client::manifest::chunk_count;
use store_client::scheduler_client::SchedulerClient;
use store_client::tls::{self, CertPaths, Identity};
use store_client::wire::node::{Holding, NodeInfo};
use store_client::wire::peer::{PEER_ALPN, PeerRequest, PeerResponse};
use store_client::wire::scheduler::SCHEDULER_ALPN;
use store_daemon::cluster::ClusterConfig;
use store_daemon::{Daemon, DaemonConfig};
use tokio_util::sync::CancellationToken;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn certs(dir: &Path, names: &[&str]) -> PathBuf {
    let certs = dir.join("certs");
    tls::init_ca(&certs).unwrap();
    for name in names {
        tls::issue(&certs, name, &certs).unwrap();
    }
    certs
}

/// Starts daemon `id` serving peers on `listen`, registered with the scheduler at
/// `scheduler` (nothing need listen there). Returns its socket path.
fn start_daemon(
    dir: &Path,
    certs: &Path,
    id: &str,
    listen: SocketAddr,
    scheduler: SocketAddr,
    shutdown: &CancellationToken,
) -> PathBuf {
    let mut config = DaemonConfig::new(dir.join(format!("{id}.sock")), 1 << 30);
    config.cluster = Some(ClusterConfig {
        node_id: id.into(),
        listen,
        advertise: None,
        scheduler,
        scheduler_name: "scheduler".into(),
        certs: CertPaths::in_dir(certs, id),
        labels: Default::default(),
        resources: Default::default(),
        max_egress_rate: None,
        heartbeat: Duration::from_millis(500),
        corrupt_served_chunks: false,
    });
    let daemon = Daemon::bind(config).unwrap();
    let socket = daemon.socket_path().to_owned();
    tokio::spawn(daemon.run(shutdown.clone()));
    socket
}

async fn peer_connection(identity: &Identity, server: SocketAddr) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(identity.quic_client(PEER_ALPN, tls::bulk_transport()).unwrap());
    endpoint.connect(server, "node-a").unwrap().await.unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[test]
fn a_peer_request_that_never_finishes_is_dropped_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path(), &["node-a", "node-b"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let listen = loopback(free_udp_port());
        let socket = start_daemon(dir.path(), &certs, "node-a", listen, loopback(free_udp_port()), &shutdown);
        blocking(move || store_client::StoreClient::connect(socket).unwrap().put("x", b"payload").unwrap()).await;
        let asker = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let conn = peer_connection(&asker, listen).await;

        // Three bytes of a frame header, then nothing.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[1, 0, 0]).await.unwrap();
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(30), recv.read_to_end(1 << 20)).await;
        let waited = started.elapsed();
        assert!(ended.is_ok(), "the daemon still holds a stream that sent 3 bytes 30 s ago");
        assert!(waited >= Duration::from_secs(8), "dropped after {waited:?}, before the 10 s read timeout");
        assert!(waited < Duration::from_secs(20), "dropped only after {waited:?}");

        // The connection itself goes on serving whole requests.
        let request = PeerRequest::Manifest { name: "x".into() };
        let (answer, _) = store_client::rpc::call::<_, PeerResponse>(&conn, &request).await.unwrap();
        assert!(matches!(answer, PeerResponse::Manifest { .. }), "{answer:?}");
        shutdown.cancel();
    });
}

#[test]
fn a_holder_announced_at_a_dead_address_delays_only_the_pulls_that_ask_it() {
    let dir = tempfile::tempdir().unwrap();
    // "node-0" sorts before the others: the pull of the object it claims asks it first.
    let certs = certs(dir.path(), &["scheduler", "node-0", "node-a", "node-b"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut config = scheduler::SchedulerConfig::new(loopback(0), CertPaths::in_dir(&certs, "scheduler"));
        config.lease = Duration::from_secs(120);
        let scheduler = scheduler::Scheduler::bind(config).unwrap();
        let scheduler_addr = scheduler.local_addr();
        tokio::spawn(scheduler.run(shutdown.clone()));

        let a = start_daemon(dir.path(), &certs, "node-a", loopback(free_udp_port()), scheduler_addr, &shutdown);
        let b = start_daemon(dir.path(), &certs, "node-b", loopback(free_udp_port()), scheduler_addr, &shutdown);
        let (shared_data, own_data) = (store_tests::payload(24 << 20, 1), store_tests::payload(8 << 20, 2));
        let put = (shared_data.clone(), own_data.clone());
        let info = blocking(move || {
            let client = store_client::StoreClient::connect(a).unwrap();
            let info = client.put("shared", &put.0).unwrap();
            client.put("own", &put.1).unwrap();
            info
        })
        .await;

        // node-0 claims a full copy of "shared" at an address where nothing listens.
        let dead = loopback(free_udp_port());
        let identity = Identity::load(&CertPaths::in_dir(&certs, "node-0")).unwrap();
        let endpoint = quinn::Endpoint::client(loopback(0)).unwrap();
        let liar = SchedulerClient::connect(
            &endpoint,
            scheduler_addr,
            "scheduler",
            identity.quic_client(SCHEDULER_ALPN, tls::control_transport()).unwrap(),
        )
        .await
        .unwrap();
        let node = NodeInfo {
            id: "node-0".into(),
            addr: dead,
            labels: Default::default(),
            capacity: 1 << 30,
            free: 1 << 30,
            resources: Default::default(),
        };
        let holding = Holding {
            name: "shared".into(),
            size: info.size,
            chunk_size: info.chunk_size,
            root: info.digest.unwrap(),
            chunks: ChunkSet::full(chunk_count(info.size, info.chunk_size)),
        };
        liar.register(node, vec![holding]).await.unwrap();
        let started = Instant::now();
        loop {
            let holders = liar.locate("shared").await.unwrap().len();
            let own = liar.locate("own").await.unwrap().len();
            if holders == 2 && own == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "node-a never announced its objects");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // node-b pulls both at once: the object only node-a holds must not wait for the
        // connect to node-0, and the one node-0 claims still arrives from node-a.
        let timed_get = |name: &'static str, want: Vec<u8>| {
            let socket = b.clone();
            blocking(move || {
                let started = Instant::now();
                let client = store_client::StoreClient::connect(socket).unwrap();
                let got = client.get(name, Duration::from_secs(60)).unwrap();
                assert!(got[..] == want[..], "{name}: wrong bytes");
                started.elapsed()
            })
        };
        let shared = tokio::spawn(timed_get("shared", shared_data));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let own = timed_get("own", own_data).await;
        let shared = shared.await.unwrap();
        eprintln!("own (node-a only): {own:?}; shared (node-0 dead, node-a alive): {shared:?}");
        assert!(own < Duration::from_secs(4), "a pull that never asks node-0 took {own:?}");
        assert!(shared < Duration::from_secs(40), "the claimed object took {shared:?}");
        shutdown.cancel();
    });
}
