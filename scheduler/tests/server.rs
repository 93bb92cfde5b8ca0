//! The scheduler over real QUIC on 127.0.0.1, with certificates made in a temporary directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::{Scheduler, SchedulerConfig};
use store_client::chunkset::ChunkSet;
use store_client::manifest::chunk_count;
use store_client::scheduler_client::{SchedulerClient, SchedulerClientError};
use store_client::tls::{self, CertPaths, Identity};
use store_client::wire::node::{Holding, NodeInfo};
use store_client::wire::scheduler::SCHEDULER_ALPN;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KIB: u64 = 1024;

/// A cluster CA with certificates for the scheduler and two nodes in `dir`, and another CA
/// with a certificate named like a node in `dir/other`.
fn make_certs() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    tls::init_ca(&ca).expect("init CA");
    for name in ["scheduler", "node-a", "node-b"] {
        tls::issue(&ca, name, dir.path()).expect("issue certificate");
    }
    std::fs::copy(ca.join("ca.pem"), dir.path().join("ca.pem")).expect("copy ca.pem");
    let other = dir.path().join("other");
    tls::init_ca(&other).expect("init other CA");
    tls::issue(&other, "node-a", &other).expect("issue other certificate");
    dir
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("scheduler stops")
            .expect("scheduler task");
    }
}

async fn start_at(dir: &Path, listen: SocketAddr, lease: Duration) -> Running {
    let mut config = SchedulerConfig::new(listen, CertPaths::in_dir(dir, "scheduler"));
    config.lease = lease;
    // A restarted scheduler rebinds the port of the one just stopped; the old socket is
    // released by quinn's driver task, which may take a moment.
    let started = Instant::now();
    let scheduler = loop {
        match Scheduler::bind(config.clone()) {
            Ok(s) => break s,
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                eprintln!("bind failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind: {e}"),
        }
    };
    let addr = scheduler.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    Running { addr, shutdown, task }
}

async fn start(dir: &Path) -> Running {
    start_at(dir, "127.0.0.1:0".parse().expect("address"), Duration::from_secs(3)).await
}

fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().expect("client endpoint")).expect("client endpoint")
}

fn client_config(paths: &CertPaths) -> quinn::ClientConfig {
    Identity::load(paths)
        .expect("client TLS config")
        .quic_client(SCHEDULER_ALPN, tls::bulk_transport())
        .expect("client TLS config")
}

async fn client(dir: &Path, name: &str, addr: SocketAddr) -> SchedulerClient {
    SchedulerClient::connect(&endpoint(), addr, "scheduler", client_config(&CertPaths::in_dir(dir, name)))
        .await
        .expect("connect")
}

fn node(id: &str, port: u16) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        labels: BTreeMap::from([("zone".to_owned(), "test".to_owned())]),
        capacity: 1 << 30,
        free: 1 << 29,
        resources: BTreeMap::new(),
    }
}

fn holding(name: &str, size: u64, held: Option<&[u64]>) -> Holding {
    let count = chunk_count(size, KIB);
    let chunks = match held {
        None => ChunkSet::full(count),
        Some(indices) => {
            let mut s = ChunkSet::empty(count);
            for &i in indices {
                s.insert(i);
            }
            s
        }
    };
    Holding { name: name.to_owned(), size, chunk_size: KIB, root: store_client::Digest([1; 32]), chunks }
}

fn nodes_of(locations: &[store_client::wire::node::Location]) -> Vec<(&str, bool)> {
    locations.iter().map(|l| (l.node.as_str(), l.is_complete())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_announces_and_locates_over_quic() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let a = client(dir.path(), "node-a", sched.addr).await;
    let b = client(dir.path(), "node-b", sched.addr).await;

    a.register(node("node-a", 9001), vec![holding("models/m", 8 * KIB, None)]).await.unwrap();
    // b listens on every address: the scheduler records where it came from.
    let mut b_info = node("node-b", 9002);
    b_info.addr = "0.0.0.0:9002".parse().unwrap();
    b.register(b_info, vec![]).await.unwrap();
    b.announce("node-b", holding("models/m", 8 * KIB, Some(&[0, 1, 2]))).await.unwrap();

    let located = a.locate("models/m").await.unwrap();
    assert_eq!(nodes_of(&located), [("node-a", true), ("node-b", false)]);
    assert_eq!(located[0].addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(located[1].addr, "127.0.0.1:9002".parse().unwrap());
    assert_eq!(located[1].chunks.count(), 3);
    assert!(b.locate("nothing/here").await.unwrap().is_empty());

    b.heartbeat("node-b", 12345).await.unwrap();
    let nodes = a.nodes().await.unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n.info.id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert_eq!(nodes[1].info.free, 12345);
    assert_eq!(nodes[1].objects, 1);

    b.withdraw("node-b", "models/m").await.unwrap();
    assert_eq!(nodes_of(&a.locate("models/m").await.unwrap()), [("node-a", true)]);
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_answered_when_another_client_announces() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let a = Arc::new(client(dir.path(), "node-a", sched.addr).await);
    let b = client(dir.path(), "node-b", sched.addr).await;
    b.register(node("node-b", 9002), vec![]).await.unwrap();

    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (a.wait("data/x", Duration::from_secs(20)).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A partial copy does not end the wait.
    b.announce("node-b", holding("data/x", 4 * KIB, Some(&[0]))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    b.announce("node-b", holding("data/x", 4 * KIB, None)).await.unwrap();
    let (located, waited) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(nodes_of(&located.unwrap()), [("node-b", true)]);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // Already there: answered at once. Never there: NotAvailable at the timeout.
    assert_eq!(nodes_of(&a.wait("data/x", Duration::from_secs(5)).await.unwrap()), [("node-b", true)]);
    let started = Instant::now();
    let missing = a.wait("data/missing", Duration::from_millis(300)).await;
    assert!(matches!(missing, Err(SchedulerClientError::NotAvailable(ref n)) if n == "data/missing"), "{missing:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "waited {waited:?}");
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_a_certificate_from_another_ca_is_refused() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let other = dir.path().join("other");
    // The intruder trusts our CA (so it accepts the scheduler) but presents a certificate of
    // its own CA.
    let paths = CertPaths { ca: dir.path().join("ca.pem"), ..CertPaths::in_dir(&other, "node-a") };
    let attempt = async {
        let intruder = SchedulerClient::connect(&endpoint(), sched.addr, "scheduler", client_config(&paths)).await?;
        intruder.register(node("node-a", 9001), vec![]).await
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), attempt).await.unwrap();
    assert!(matches!(refused, Err(SchedulerClientError::Rpc(_))), "{refused:?}");

    // The scheduler itself is not trusted by a client of the other CA either.
    let paths = CertPaths::in_dir(&other, "node-a");
    let attempt = async {
        let stranger = SchedulerClient::connect(&endpoint(), sched.addr, "scheduler", client_config(&paths)).await?;
        stranger.nodes().await
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), attempt).await.unwrap();
    assert!(matches!(refused, Err(SchedulerClientError::Rpc(_))), "{refused:?}");

    // Nothing registered; a legitimate client is served.
    let a = client(dir.path(), "node-a", sched.addr).await;
    assert!(a.nodes().await.unwrap().is_empty());
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let dir = make_certs();
    let sched = start(dir.path()).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![SCHEDULER_ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let attempt = async {
        let anonymous = SchedulerClient::connect(&endpoint(), sched.addr, "scheduler", config).await?;
        anonymous.nodes().await
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), attempt).await.unwrap();
    assert!(matches!(refused, Err(SchedulerClientError::Rpc(_))), "{refused:?}");
    sched.stop().await;
}

/// Connections beyond the cap are refused at the door; the ones served go on, and a slot
/// freed by a closed connection is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused() {
    let dir = make_certs();
    let mut config = SchedulerConfig::new("127.0.0.1:0".parse().unwrap(), CertPaths::in_dir(dir.path(), "scheduler"));
    config.max_connections = 1;
    let scheduler = Scheduler::bind(config).unwrap();
    let addr = scheduler.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    let sched = Running { addr, shutdown, task };

    let first = client(dir.path(), "node-a", sched.addr).await;
    first.nodes().await.expect("the first connection is served");
    let second = async {
        let c = SchedulerClient::connect(
            &endpoint(),
            sched.addr,
            "scheduler",
            client_config(&CertPaths::in_dir(dir.path(), "node-b")),
        )
        .await?;
        c.nodes().await
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), second).await.expect("refused in time");
    assert!(refused.is_err(), "a second connection was served: {refused:?}");
    first.nodes().await.expect("the first connection still works");
    drop(first);
    let started = Instant::now();
    loop {
        // Until the scheduler has seen the first connection close, the slot is still taken
        // and this connection is refused too: try again.
        let again = async {
            let paths = CertPaths::in_dir(dir.path(), "node-b");
            let c = SchedulerClient::connect(&endpoint(), sched.addr, "scheduler", client_config(&paths)).await?;
            c.nodes().await
        };
        match tokio::time::timeout(Duration::from_secs(5), again).await {
            Ok(Ok(_)) => break,
            _ if started.elapsed() < Duration::from_secs(20) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("the freed slot was never taken again: {other:?}"),
        }
    }
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_for_an_unknown_node_gets_unknown_node() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let a = client(dir.path(), "node-a", sched.addr).await;
    assert!(matches!(a.heartbeat("node-a", 1).await, Err(SchedulerClientError::UnknownNode)));
    assert!(matches!(a.announce("node-a", holding("x", KIB, None)).await, Err(SchedulerClientError::UnknownNode)));
    assert!(matches!(a.withdraw("node-a", "x").await, Err(SchedulerClientError::UnknownNode)));
    a.register(node("node-a", 9001), vec![]).await.unwrap();
    a.heartbeat("node-a", 1).await.unwrap();
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_only_for_themselves_and_malformed_holdings_are_left_out() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let b = client(dir.path(), "node-b", sched.addr).await;
    let spoof = b.register(node("node-a", 9001), vec![]).await;
    assert!(matches!(spoof, Err(SchedulerClientError::Refused(ref m)) if m.contains("node-a")), "{spoof:?}");

    b.register(node("node-b", 9002), vec![]).await.unwrap();
    let mut bad = holding("x", 4 * KIB, None);
    bad.chunks = ChunkSet::full(9);
    let refused = b.announce("node-b", bad.clone()).await;
    assert!(matches!(refused, Err(SchedulerClientError::Refused(_))), "{refused:?}");
    // A registration with a bad holding keeps the node and its good holdings; the bad one
    // is left out.
    b.register(node("node-b", 9002), vec![bad, holding("y", 4 * KIB, None)]).await.unwrap();
    assert_eq!(b.nodes().await.unwrap().len(), 1);
    assert!(b.locate("x").await.unwrap().is_empty());
    assert_eq!(nodes_of(&b.locate("y").await.unwrap()), [("node-b", true)]);
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_expires_with_its_locations() {
    let dir = make_certs();
    let sched = start_at(dir.path(), "127.0.0.1:0".parse().unwrap(), Duration::from_secs(1)).await;
    let a = client(dir.path(), "node-a", sched.addr).await;
    let b = client(dir.path(), "node-b", sched.addr).await;
    a.register(node("node-a", 9001), vec![holding("shared", KIB, None), holding("only-a", KIB, None)]).await.unwrap();
    b.register(node("node-b", 9002), vec![holding("shared", KIB, None)]).await.unwrap();
    assert_eq!(nodes_of(&a.locate("only-a").await.unwrap()), [("node-a", true)]);
    // b heartbeats, a falls silent.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.heartbeat("node-b", 0).await.unwrap();
    }
    assert!(a.locate("only-a").await.unwrap().is_empty());
    assert_eq!(nodes_of(&a.locate("shared").await.unwrap()), [("node-b", true)]);
    assert!(matches!(a.heartbeat("node-a", 0).await, Err(SchedulerClientError::UnknownNode)));
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_scheduler_rebuilds_its_table_when_the_node_registers_again() {
    let dir = make_certs();
    let first = start(dir.path()).await;
    let addr = first.addr;
    let a = client(dir.path(), "node-a", addr).await;
    let info = node("node-a", 9001);
    let holdings = vec![holding("models/m", 8 * KIB, None)];
    a.register(info.clone(), holdings.clone()).await.unwrap();
    assert_eq!(nodes_of(&a.locate("models/m").await.unwrap()), [("node-a", true)]);

    first.stop().await;
    let second = start_at(dir.path(), addr, Duration::from_secs(3)).await;
    assert_eq!(second.addr, addr);

    // The same client reconnects by itself and learns the scheduler forgot it.
    assert!(matches!(a.heartbeat("node-a", 0).await, Err(SchedulerClientError::UnknownNode)));
    assert!(a.locate("models/m").await.unwrap().is_empty());
    a.register(info, holdings).await.unwrap();
    assert_eq!(nodes_of(&a.locate("models/m").await.unwrap()), [("node-a", true)]);
    a.heartbeat("node-a", 0).await.unwrap();
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_pending_waits() {
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let a = Arc::new(client(dir.path(), "node-a", sched.addr).await);
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait("never", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sched.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let result = tokio::time::timeout(Duration::from_secs(15), waiter).await.unwrap().unwrap();
    assert!(matches!(result, Err(SchedulerClientError::Rpc(_))), "{result:?}");
}

/// A scheduler process, killed when dropped (so a failing test leaves none behind).
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the `store-scheduler` binary on `addr`, logging to `log`.
fn spawn_binary(dir: &Path, addr: SocketAddr, log: &Path) -> Process {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_store-scheduler"))
        .env("STORE_SCHEDULER_LISTEN", addr.to_string())
        .env("STORE_TLS_DIR", dir)
        .env("STORE_SCHEDULER_LEASE_MS", "1500")
        .env("STORE_LOG", "debug")
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file"))
        .spawn()
        .expect("spawn store-scheduler");
    Process(child)
}

/// A free UDP port on 127.0.0.1: bind, note, release.
fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address")
}

/// Connects, retrying while the scheduler process starts.
async fn connect_when_up(addr: SocketAddr, config: quinn::ClientConfig) -> SchedulerClient {
    let started = Instant::now();
    loop {
        match SchedulerClient::connect(&endpoint(), addr, "scheduler", config.clone()).await {
            Ok(c) => return c,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not up yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("scheduler binary does not answer: {e}"),
        }
    }
}

fn wait_exit(process: &mut Process, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(exit) = process.0.try_wait().expect("try_wait") {
            return exit;
        }
        assert!(started.elapsed() < limit, "scheduler did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    let dir = make_certs();
    let addr = free_addr();
    let log_path = dir.path().join("scheduler.log");
    let mut child = spawn_binary(dir.path(), addr, &log_path);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let a = connect_when_up(addr, client_config(&CertPaths::in_dir(dir.path(), "node-a"))).await;
        a.register(node("node-a", 9001), vec![]).await.unwrap();
        assert_eq!(a.nodes().await.unwrap().len(), 1);
    });
    let status = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = wait_exit(&mut child, Duration::from_secs(10));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("SIGTERM") && log.contains("scheduler stopped"), "{log}");
}

#[test]
fn client_reconnects_to_a_scheduler_restarted_after_a_crash() {
    let dir = make_certs();
    let addr = free_addr();
    let log_path = dir.path().join("scheduler.log");
    let mut first = spawn_binary(dir.path(), addr, &log_path);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let config = client_config(&CertPaths::in_dir(dir.path(), "node-a"));
    let a = runtime.block_on(async {
        let a = connect_when_up(addr, config.clone()).await.with_request_timeout(Duration::from_millis(500));
        a.register(node("node-a", 9001), vec![holding("m", KIB, None)]).await.unwrap();
        assert_eq!(nodes_of(&a.locate("m").await.unwrap()), [("node-a", true)]);
        a
    });
    // No goodbye: the client's connection is left for dead, not closed.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second = spawn_binary(dir.path(), addr, &log_path);
    runtime.block_on(async {
        // Wait for the new process without touching `a`'s connection.
        connect_when_up(addr, config).await;
        let started = Instant::now();
        // The dead connection times out, the retry reaches the new scheduler.
        assert!(matches!(a.heartbeat("node-a", 0).await, Err(SchedulerClientError::UnknownNode)));
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        a.register(node("node-a", 9001), vec![holding("m", KIB, None)]).await.unwrap();
        assert_eq!(nodes_of(&a.locate("m").await.unwrap()), [("node-a", true)]);
    });
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_ranks_by_holdings_and_reported_bandwidth_under_constraints() {
    use store_client::wire::placement::{PlaceSpec, TransferReport};
    const MB: u64 = 1_000_000;
    let dir = make_certs();
    let sched = start(dir.path()).await;
    let a = client(dir.path(), "node-a", sched.addr).await;
    let b = client(dir.path(), "node-b", sched.addr).await;
    let mut a_info = node("node-a", 9001);
    a_info.labels.insert("site".into(), "hpc".into());
    a_info.resources.insert("cpu".into(), 4);
    let mut b_info = node("node-b", 9002);
    b_info.labels.insert("site".into(), "cloud".into());
    a.register(a_info, vec![holding("data/in", 64 * MB, None)]).await.unwrap();
    b.register(b_info, vec![holding("data/in", 64 * MB, Some(&[0]))]).await.unwrap();

    // The holder wins; the partial holder's transfer runs at the default 1 Gbit/s.
    let spec = PlaceSpec { needs: vec!["data/in".into()], task_seconds: 2.0, ..Default::default() };
    let placed = a.place(&spec).await.unwrap();
    assert_eq!(placed.tasks.len(), 1);
    assert_eq!(placed.tasks[0].node, "node-a");
    assert_eq!(placed.tasks[0].missing_bytes, 0);
    assert_eq!(placed.tasks[0].addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(placed.ranked[1].node, "node-b");
    assert_eq!(placed.ranked[1].missing_bytes, 64 * MB - KIB);
    assert_eq!(placed.ranked[1].missing, ["data/in"]);
    assert!(placed.ranked[1].bandwidth_assumed);
    assert!((placed.ranked[1].inbound_bytes_per_second - 125e6).abs() < 1.0);

    // A label constraint is hard: only node-b qualifies, however much it lacks.
    let mut cloud = spec.clone();
    cloud.labels.insert("site".into(), "cloud".into());
    cloud.count = 2;
    let placed = a.place(&cloud).await.unwrap();
    assert_eq!(placed.tasks.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(), ["node-b", "node-b"]);
    assert_eq!(placed.ranked.len(), 1);
    // No node offers 8 cpus: no placement, not an error.
    let mut big = spec.clone();
    big.resources.insert("cpu".into(), 8);
    assert!(a.place(&big).await.unwrap().tasks.is_empty());

    // A reported transfer replaces the default; only the node itself may report.
    let report =
        TransferReport { name: "x".into(), bytes: 10 * MB, seconds: 1.0, from: BTreeMap::new(), node_bytes: 10 * MB };
    assert!(matches!(a.report_transfer("node-b", report.clone()).await, Err(SchedulerClientError::Refused(_))));
    b.report_transfer("node-b", report).await.unwrap();
    let placed = b.place(&PlaceSpec { pinned: Some("node-b".into()), ..spec.clone() }).await.unwrap();
    assert!(!placed.tasks[0].bandwidth_assumed);
    assert!((placed.tasks[0].inbound_bytes_per_second - 10e6).abs() < 1.0);

    // Inputs nobody holds and nonsense counts are refused.
    let unknown = PlaceSpec { needs: vec!["data/none".into()], ..Default::default() };
    assert!(matches!(a.place(&unknown).await, Err(SchedulerClientError::Refused(_))));
    assert!(matches!(a.place(&PlaceSpec { count: 0, ..spec.clone() }).await, Err(SchedulerClientError::Refused(_))));
    sched.stop().await;
}
