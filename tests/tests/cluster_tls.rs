//! Peers authenticate each other: a daemon's QUIC endpoint serves a client with a
//! certificate from the cluster CA and refuses one from another CA. Runs on loopback.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::time::Duration;

use store_client::cluster::{PEER_ALPN, PeerRequest, PeerResponse};
use store_client::tls::{self, CertPaths, Identity};
use store_daemon::cluster::ClusterConfig;
use store_daemon::{Daemon, DaemonConfig};
use tokio_util::sync::CancellationToken;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn ask_manifest(identity: &Identity, server: SocketAddr, name: &str) -> Result<PeerResponse, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(identity.quic_client(PEER_ALPN, tls::bulk_transport()).unwrap());
    let conn = endpoint.connect(server, "node-a").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (resp, _) = store_client::rpc::call::<_, PeerResponse>(&conn, &PeerRequest::Manifest { name: name.into() })
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp)
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
        let port = free_udp_port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = DaemonConfig::new(dir.path().join("a.sock"), 1 << 30);
        config.cluster = Some(ClusterConfig {
            node_id: "node-a".into(),
            listen,
            advertise: None,
            // Nothing listens there: the daemon serves peers without a scheduler.
            scheduler: format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
            scheduler_name: "scheduler".into(),
            certs: CertPaths::in_dir(&certs, "node-a"),
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

        let client = tokio::task::spawn_blocking(move || {
            let c = store_client::StoreClient::connect(socket).unwrap();
            c.put("x", b"payload").unwrap();
        });
        client.await.unwrap();

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
