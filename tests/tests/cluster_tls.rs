//! Peers authenticate each other: a daemon's QUIC endpoint serves a client with a
//! certificate from the cluster CA and refuses one from another CA; an authenticated peer's
//! malformed requests get errors, never a crash. Runs on loopback.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::time::Duration;

use store_client::cluster::{PEER_ALPN, PeerRequest, PeerResponse};
use store_client::manifest::{Digest, Manifest};
use store_client::protocol::S3Origin;
use store_client::tls::{self, CertPaths, Identity};
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
    let port = free_udp_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = DaemonConfig::new(dir.join("a.sock"), 1 << 30);
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
