//! Peers authenticate each other: a daemon's QUIC endpoint serves a client with a
//! certificate from the cluster CA and refuses one from another CA; an authenticated peer's
//! malformed requests get errors, never a crash. Runs on loopback.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::time::Duration;

use store_client::manifest::{Digest, Manifest};
use store_client::tls::{self, CertPaths, Identity};
use store_client::wire::object::S3Origin;
use store_client::wire::peer::{PEER_ALPN, PeerRequest, PeerResponse};
use store_daemon::cluster::ClusterConfig;
use store_daemon::{Daemon, DaemonConfig};
use tokio_util::sync::CancellationToken;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn ask(identity: &Identity, server: SocketAddr, request: &PeerRequest) -> Result<PeerResponse, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(identity.quic_client(PEER_ALPN, tls::bulk_transport()).unwrap());
    let conn = endpoint.connect(server, "node-a").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (resp, _) = store_client::rpc::call::<_, PeerResponse>(&conn, request).await.map_err(|e| e.to_string())?;
    Ok(resp)
}

async fn ask_manifest(identity: &Identity, server: SocketAddr, name: &str) -> Result<PeerResponse, String> {
    ask(identity, server, &PeerRequest::Manifest { name: name.into() }).await
}

/// A daemon "node-a" serving peers on a free loopback port (no scheduler listens), with the
/// object "x" (7 bytes) stored.
async fn start_node_a(
    dir: &std::path::Path,
    certs: &std::path::Path,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    start_node_a_with(dir, certs, DaemonConfig::new(dir.join("a.sock"), 1 << 30)).await
}

/// [`start_node_a`] from a given base configuration (S3 allow-list, capacity).
async fn start_node_a_with(
    dir: &std::path::Path,
    certs: &std::path::Path,
    mut config: DaemonConfig,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let _ = dir;
    let port = free_udp_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    config.cluster = Some(ClusterConfig {
        node_id: "node-a".into(),
        listen,
        advertise: None,
        // Nothing listens there: the daemon serves peers without a scheduler.
        scheduler: format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
        scheduler_name: "scheduler".into(),
        certs: CertPaths::in_dir(certs, "node-a"),
        labels: Default::default(),
        resources: Default::default(),
        max_egress_rate: None,
        heartbeat: Duration::from_secs(1),
        corrupt_served_chunks: false,
    });
    let daemon = Daemon::bind(config).unwrap();
    let socket = daemon.socket_path().to_owned();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run(shutdown.clone()));
    tokio::task::spawn_blocking(move || {
        let c = store_client::StoreClient::connect(socket).unwrap();
        c.put("x", b"payload").unwrap();
    })
    .await
    .unwrap();
    (listen, shutdown, running)
}

#[test]
fn peers_serve_the_cluster_ca_and_refuse_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let rogue_dir = dir.path().join("rogue");
    tls::init_ca(&rogue_dir).unwrap();
    tls::issue(&rogue_dir, "node-b", &rogue_dir).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (listen, shutdown, running) = start_node_a(dir.path(), &certs).await;

        let good = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let answer = ask_manifest(&good, listen, "x").await.expect("a cluster peer must be served");
        assert!(matches!(answer, PeerResponse::Manifest { ref manifest, .. } if manifest.size == 7), "{answer:?}");

        // The rogue trusts the real CA, so only the server's check can stop it.
        let rogue = Identity::load(&CertPaths {
            ca: certs.join("ca.pem"),
            cert: rogue_dir.join("node-b.pem"),
            key: rogue_dir.join("node-b.key"),
        })
        .unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), ask_manifest(&rogue, listen, "x")).await;
        match refused {
            Ok(Ok(resp)) => panic!("a peer from another CA was served: {resp:?}"),
            Ok(Err(e)) => assert!(!e.is_empty()),
            Err(_) => {} // the handshake never completed: refused as well
        }

        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn malformed_cooperative_requests_from_a_peer_get_an_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (listen, shutdown, running) = start_node_a(dir.path(), &certs).await;
        let peer = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let origin = S3Origin { url: "s3://bucket/key".into(), etag: "\"e\"".into(), size: 10 << 20 };
        let share = |chunk_size, first, end| PeerRequest::FetchShare {
            name: "y".into(),
            origin: origin.clone(),
            chunk_size,
            first,
            end,
        };
        // A zero or odd chunk size, and a share past the object's last chunk.
        for request in [share(0, 0, 1), share(1000, 0, 1), share(4 << 20, 2, 9), share(4 << 20, 2, 1)] {
            let answer = ask(&peer, listen, &request).await.unwrap();
            assert!(matches!(answer, PeerResponse::Error { .. }), "{request:?} -> {answer:?}");
        }
        // A manifest that does not hash to its root, or does not describe the origin.
        let good = Manifest::compute(&[7u8; 5000], 1024, 1).unwrap();
        let mut bad_root = good.clone();
        bad_root.root = Digest([0; 32]);
        let mut zero_chunks = good.clone();
        zero_chunks.chunk_size = 0;
        for manifest in [bad_root, zero_chunks, good] {
            let request =
                PeerRequest::CompleteShare { name: "y".into(), manifest, origin: origin.clone(), timeout_ms: 1000 };
            let answer = ask(&peer, listen, &request).await.unwrap();
            assert!(matches!(answer, PeerResponse::Error { .. }), "{answer:?}");
        }
        let dropped = ask(&peer, listen, &PeerRequest::DropShare { name: "nothing".into() }).await.unwrap();
        assert_eq!(dropped, PeerResponse::Dropped);
        // Still serving, and nothing was bound.
        let answer = ask_manifest(&peer, listen, "x").await.unwrap();
        assert!(matches!(answer, PeerResponse::Manifest { ref manifest, .. } if manifest.size == 7), "{answer:?}");
        assert_eq!(ask_manifest(&peer, listen, "y").await.unwrap(), PeerResponse::NotHeld);
        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn every_peer_request_with_a_bad_name_is_refused_before_anything_happens() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (listen, shutdown, running) = start_node_a(dir.path(), &certs).await;
        let peer = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let origin = S3Origin { url: "s3://bucket/key".into(), etag: "\"e\"".into(), size: 5000 };
        let manifest = Manifest::compute(&[7u8; 5000], 1024, 1).unwrap();
        for bad in ["", "a/../b", "/abs", "a//b", "x\u{0}y", "dir/", &"n".repeat(5000)] {
            let requests = [
                PeerRequest::Manifest { name: bad.into() },
                PeerRequest::Chunk { name: bad.into(), index: 0 },
                PeerRequest::Have { name: bad.into(), known: 0 },
                PeerRequest::Pull { name: bad.into(), timeout_ms: 100, relay: true },
                PeerRequest::FetchShare {
                    name: bad.into(),
                    origin: origin.clone(),
                    chunk_size: 1024,
                    first: 0,
                    end: 1,
                },
                PeerRequest::CompleteShare {
                    name: bad.into(),
                    manifest: manifest.clone(),
                    origin: origin.clone(),
                    timeout_ms: 100,
                },
                PeerRequest::DropShare { name: bad.into() },
                PeerRequest::Prefetch { names: vec!["x".into(), bad.into()] },
            ];
            for request in requests {
                let answer = ask(&peer, listen, &request).await.unwrap();
                match &answer {
                    PeerResponse::Error { message } => assert!(message.contains("invalid object name"), "{message}"),
                    other => panic!("{bad:?}: {request:?} was answered {other:?}"),
                }
            }
        }
        // Still serving the good object, and nothing was staged, bound or queued.
        let answer = ask_manifest(&peer, listen, "x").await.unwrap();
        assert!(matches!(answer, PeerResponse::Manifest { ref manifest, .. } if manifest.size == 7), "{answer:?}");
        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn s3_reads_outside_the_allow_list_are_refused_for_peers_and_local_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut config = DaemonConfig::new(dir.path().join("a.sock"), 1 << 30);
        config.s3_allow = store_daemon::s3_ingest::S3AllowList::parse(&["models/public/"]).unwrap();
        // An endpoint nobody listens on: a refused read must fail before any request.
        config.s3 = store_client::s3::S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", free_udp_port())),
            ..Default::default()
        };
        let socket = config.socket.clone();
        let (listen, shutdown, running) = start_node_a_with(dir.path(), &certs, config).await;
        let peer = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        for url in ["s3://models/private/w.bin", "s3://other/key", "s3://models/publicity"] {
            let origin = S3Origin { url: url.into(), etag: "\"e\"".into(), size: 4 << 20 };
            let request = PeerRequest::FetchShare {
                name: "y".into(),
                origin: origin.clone(),
                chunk_size: 1 << 20,
                first: 0,
                end: 1,
            };
            let answer = ask(&peer, listen, &request).await.unwrap();
            match &answer {
                PeerResponse::Error { message } => assert!(message.contains("allow-list"), "{url}: {message}"),
                other => panic!("{url}: FetchShare answered {other:?}"),
            }
            let local = tokio::task::spawn_blocking({
                let socket = socket.clone();
                let url = url.to_string();
                move || {
                    let client = store_client::StoreClient::connect(socket).unwrap();
                    client.pull_s3(&url, "y", Default::default())
                }
            })
            .await
            .unwrap();
            let err = local.expect_err("a local pull outside the allow-list");
            assert_eq!(err.code(), Some(store_client::ErrorCode::PermissionDenied), "{url}: {err}");
            assert!(err.to_string().contains("allow-list"), "{err}");
        }
        assert_eq!(ask_manifest(&peer, listen, "y").await.unwrap(), PeerResponse::NotHeld);
        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn only_the_coordinator_that_staged_a_share_may_complete_or_drop_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    for node in ["node-a", "node-b", "node-c"] {
        tls::issue(&certs, node, &certs).unwrap();
    }
    let s3 = store_tests::s3_server::TestS3::start().unwrap();
    let data = store_tests::payload(4 << 20, 5);
    s3.put("obj", &data).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let url: store_client::s3::S3Url = "s3://bucket/obj".parse().unwrap();
        let meta = store_client::s3::S3Reader::new(s3.config()).await.unwrap().head(&url).await.unwrap();
        let origin = S3Origin { url: url.to_string(), etag: meta.etag, size: meta.size };
        let mut config = DaemonConfig::new(dir.path().join("a.sock"), 1 << 30);
        config.s3 = s3.config();
        let (listen, shutdown, running) = start_node_a_with(dir.path(), &certs, config).await;
        let coordinator = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let other = Identity::load(&CertPaths::in_dir(&certs, "node-c")).unwrap();
        let share =
            PeerRequest::FetchShare { name: "y".into(), origin: origin.clone(), chunk_size: 1 << 20, first: 0, end: 2 };
        let answer = ask(&coordinator, listen, &share).await.unwrap();
        assert!(matches!(answer, PeerResponse::ShareFetched { ref hashes, .. } if hashes.len() == 2), "{answer:?}");

        // Another certificate holder can neither complete nor drop it.
        let manifest = Manifest::compute(&data, 1 << 20, 1).unwrap();
        let complete =
            PeerRequest::CompleteShare { name: "y".into(), manifest, origin: origin.clone(), timeout_ms: 1000 };
        match ask(&other, listen, &complete).await.unwrap() {
            PeerResponse::Error { message } => assert!(message.contains("another coordinator"), "{message}"),
            other => panic!("a stranger completed the share: {other:?}"),
        }
        assert_eq!(
            ask(&other, listen, &PeerRequest::DropShare { name: "y".into() }).await.unwrap(),
            PeerResponse::Dropped
        );
        // Still staged: the same range again is refused as overlapping.
        assert!(matches!(ask(&coordinator, listen, &share).await.unwrap(), PeerResponse::Error { .. }));
        // The coordinator drops it; then the range can be staged again.
        let dropped = ask(&coordinator, listen, &PeerRequest::DropShare { name: "y".into() }).await.unwrap();
        assert_eq!(dropped, PeerResponse::Dropped);
        let again = ask(&coordinator, listen, &share).await.unwrap();
        assert!(matches!(again, PeerResponse::ShareFetched { .. }), "{again:?}");
        assert_eq!(ask_manifest(&coordinator, listen, "y").await.unwrap(), PeerResponse::NotHeld);
        shutdown.cancel();
        running.await.unwrap();
    });
}

/// A staged share's bytes count against the daemon's capacity from when it is fetched until
/// it is dropped: a peer cannot park memory the store does not see.
#[test]
fn staged_shares_take_store_room_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let s3 = store_tests::s3_server::TestS3::start().unwrap();
    let data = store_tests::payload(8 << 20, 6);
    s3.put("big", &data).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let url: store_client::s3::S3Url = "s3://bucket/big".parse().unwrap();
        let meta = store_client::s3::S3Reader::new(s3.config()).await.unwrap().head(&url).await.unwrap();
        let origin = S3Origin { url: url.to_string(), etag: meta.etag, size: meta.size };
        // 10 MiB: an 8 MiB put fits beside the 7-byte object, but not beside a 3 MiB share.
        let mut config = DaemonConfig::new(dir.path().join("a.sock"), 10 << 20);
        config.s3 = s3.config();
        let socket = config.socket.clone();
        let (listen, shutdown, running) = start_node_a_with(dir.path(), &certs, config).await;
        let coordinator = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let share =
            PeerRequest::FetchShare { name: "y".into(), origin: origin.clone(), chunk_size: 1 << 20, first: 2, end: 5 };
        let answer = ask(&coordinator, listen, &share).await.unwrap();
        assert!(matches!(answer, PeerResponse::ShareFetched { ref hashes, .. } if hashes.len() == 3), "{answer:?}");

        let put = |socket: std::path::PathBuf| async move {
            tokio::task::spawn_blocking(move || {
                store_client::StoreClient::connect(socket).unwrap().put("p", &vec![7u8; 8 << 20]).map(|_| ())
            })
            .await
            .unwrap()
        };
        let refused = put(socket.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Some(store_client::wire::object::ErrorCode::StoreFull), "{refused}");

        let dropped = ask(&coordinator, listen, &PeerRequest::DropShare { name: "y".into() }).await.unwrap();
        assert_eq!(dropped, PeerResponse::Dropped);
        put(socket.clone()).await.unwrap();
        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn a_peer_cannot_grow_the_prefetch_queue_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (listen, shutdown, running) = start_node_a(dir.path(), &certs).await;
        let peer = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        let limit = store_daemon::cluster::placement::MAX_PREFETCH_QUEUE;
        let names: Vec<String> = (0..3 * limit).map(|i| format!("inputs/{i}")).collect();
        let started = std::time::Instant::now();
        let answer = ask(&peer, listen, &PeerRequest::Prefetch { names }).await.unwrap();
        match answer {
            PeerResponse::Queued { count } => assert!(count as usize <= limit, "{count} queued, limit {limit}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "queueing took {:?}", started.elapsed());
        let answer = ask_manifest(&peer, listen, "x").await.unwrap();
        assert!(matches!(answer, PeerResponse::Manifest { .. }), "{answer:?}");
        shutdown.cancel();
        running.await.unwrap();
    });
}

#[test]
fn a_manifest_with_tiny_chunks_from_a_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls::init_ca(&certs).unwrap();
    tls::issue(&certs, "node-a", &certs).unwrap();
    tls::issue(&certs, "node-b", &certs).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (listen, shutdown, running) = start_node_a(dir.path(), &certs).await;
        let peer = Identity::load(&CertPaths::in_dir(&certs, "node-b")).unwrap();
        // 8 MiB in 1 KiB chunks: 8192 chunks, a valid BLAKE3 manifest, but cut too fine.
        let data = store_tests::payload(8 << 20, 3);
        let manifest = Manifest::compute(&data, 1024, 1).unwrap();
        let origin = S3Origin { url: "s3://bucket/key".into(), etag: "\"e\"".into(), size: data.len() as u64 };
        let request =
            PeerRequest::CompleteShare { name: "tiny".into(), manifest, origin: origin.clone(), timeout_ms: 1000 };
        match ask(&peer, listen, &request).await.unwrap() {
            PeerResponse::Error { message } => assert!(message.contains("replication needs chunks"), "{message}"),
            other => panic!("{other:?}"),
        }
        let share = PeerRequest::FetchShare { name: "tiny".into(), origin, chunk_size: 1024, first: 0, end: 8 };
        match ask(&peer, listen, &share).await.unwrap() {
            PeerResponse::Error { message } => assert!(message.contains("replication needs chunks"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ask_manifest(&peer, listen, "tiny").await.unwrap(), PeerResponse::NotHeld);
        shutdown.cancel();
        running.await.unwrap();
    });
}
