//! S3 and the cluster together, on network-namespace hosts: cooperative fetch (each node
//! reads a share of the object from S3 and the rest from its peers) and the S3 origin as
//! the fallback of a receiver whose peers are gone. The S3 endpoint is the embedded one
//! (`store-s3`), run in host 0. They need root; without it each test says SKIPPED.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{LinkSpec, NsChild, requires_root};
use store_tests::verify::held_blake3;
use store_tests::{payload, workspace_bin};

const MIB: usize = 1 << 20;
const S3_PORT: u16 = 9000;
const BUCKET: &str = "models";
const ACCESS_KEY: &str = "cluster-test-key";
const SECRET_KEY: &str = "cluster-test-secret";

fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A cluster whose daemons reach the embedded S3 endpoint running in host 0.
struct S3Cluster {
    cluster: TestCluster,
    _s3: NsChild,
    _root: tempfile::TempDir,
}

fn start(hosts: usize, link: LinkSpec, objects: &[(&str, &[u8])]) -> S3Cluster {
    let root = tempfile::tempdir().unwrap();
    for (key, bytes) in objects {
        let path = root.path().join(BUCKET).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let spec = ClusterSpec::new(hosts, link);
    let cluster = TestCluster::start(spec).unwrap();
    let endpoint = SocketAddr::new(cluster.net().host(0).addr().into(), S3_PORT);
    let s3 = spawn_s3(&cluster, root.path(), endpoint);
    // The endpoint's address is known once the hosts exist: the daemons start again with it.
    let env = vec![
        ("STORE_S3_ENDPOINT".to_owned(), format!("http://{endpoint}")),
        ("AWS_ACCESS_KEY_ID".to_owned(), ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), SECRET_KEY.to_owned()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
    ];
    let mut cluster = cluster;
    cluster.set_daemon_env(env);
    for i in 0..hosts {
        cluster.restart_daemon(i, &[]).unwrap();
    }
    cluster.wait_registered(hosts, Duration::from_secs(20)).unwrap();
    S3Cluster { cluster, _s3: s3, _root: root }
}

fn spawn_s3(cluster: &TestCluster, root: &Path, listen: SocketAddr) -> NsChild {
    let mut cmd = cluster.net().host(0).command(workspace_bin("store-s3").unwrap());
    cmd.arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--bucket")
        .arg(BUCKET)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null());
    let child = NsChild::spawn(&mut cmd).unwrap();
    let up = cluster.wait_until(Duration::from_secs(10), || {
        cluster
            .net()
            .host(0)
            .run(
                "bash",
                &["-c", &format!("exec 3<>/dev/tcp/{}/{}", listen.ip(), listen.port())],
                Duration::from_secs(2),
            )
            .is_ok()
    });
    assert!(up, "store-s3 did not listen on {listen}");
    child
}

#[test]
fn cooperative_fetch_to_three_hosts_reads_each_byte_from_s3_about_once() {
    if !requires_root() {
        return;
    }
    let data = payload(96 * MIB + 12345, 7);
    let want = digest(&data);
    let size = data.len() as u64;
    let small = payload(5 * MIB + 3, 8);
    let tiny = payload(1000, 9);
    let objects: [(&str, &[u8]); 3] = [("coop/model.bin", &data), ("coop/small.bin", &small), ("coop/tiny.bin", &tiny)];
    let env = start(3, LinkSpec::shaped(800, 1500), &objects);
    let cluster = &env.cluster;

    let url = format!("s3://{BUCKET}/coop/model.bin");
    let pulled =
        cluster.client(1).unwrap().pull_s3_cooperative(&url, "coop/model.bin", None, Duration::from_secs(120)).unwrap();
    assert_eq!(pulled.digest.to_hex().to_string(), want);
    assert_eq!(pulled.origin.size, size);
    assert_eq!(pulled.nodes.len(), 3);
    let mut covered = 0;
    for o in &pulled.nodes {
        let report = o.result.as_ref().unwrap_or_else(|e| panic!("{} failed: {e}", o.node));
        assert_eq!(report.bytes, size, "{}", o.node);
        assert!(report.s3_bytes > 0, "{} read nothing from S3", o.node);
        covered += o.share.1 - o.share.0;
        // Whatever it did not read from S3 came from the other two nodes.
        let from_peers: u64 = report.from.values().sum();
        assert_eq!(from_peers + report.s3_bytes, size, "{}: {report:?}", o.node);
    }
    assert_eq!(covered, size.div_ceil(4 * MIB as u64));
    let factor = pulled.s3_bytes as f64 / size as f64;
    eprintln!("cooperative fetch of {size} bytes to 3 hosts: S3 served {factor:.3} x, {:.2} s", pulled.total_seconds);
    assert!(factor <= 1.1, "S3 served {factor:.3} x the object");
    for i in 0..3 {
        let stat = cluster.client(i).unwrap().stat("coop/model.bin").unwrap();
        assert_eq!(stat.digest.unwrap().to_hex().to_string(), want, "{}", node_id(i));
        // The copy itself: the bytes a consumer on the host maps.
        assert_eq!(held_blake3(&cluster.client(i).unwrap(), "coop/model.bin").unwrap(), want, "{}", node_id(i));
        let origin = cluster.client(i).unwrap().origin("coop/model.bin").unwrap();
        assert_eq!(origin.map(|o| o.url), Some(url.clone()), "{}", node_id(i));
    }
    // The same through storectl, onto two of the three nodes.
    let out = std::process::Command::new(workspace_bin("storectl").unwrap())
        .arg("--socket")
        .arg(cluster.socket(2))
        .args(["--json", "pull", &format!("s3://{BUCKET}/coop/small.bin"), "--name", "coop/small"])
        .args(["--nodes", &format!("{},{}", node_id(0), node_id(2))])
        .output()
        .unwrap();
    assert!(out.status.success(), "storectl: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blake3"], digest(&small));
    assert_eq!(report["nodes"].as_array().unwrap().len(), 2);
    assert!(report["s3_factor"].as_f64().unwrap() <= 1.0 + 1e-9, "{report}");
    assert!(cluster.client(1).unwrap().stat("coop/small").is_err());
    assert_eq!(
        cluster.client(0).unwrap().stat("coop/small").unwrap().digest.unwrap().to_hex().to_string(),
        digest(&small)
    );
    for i in [0, 2] {
        assert_eq!(held_blake3(&cluster.client(i).unwrap(), "coop/small").unwrap(), digest(&small), "{}", node_id(i));
    }

    // More nodes than chunks: two of the three shares are empty.
    let pulled = cluster
        .client(0)
        .unwrap()
        .pull_s3_cooperative(&format!("s3://{BUCKET}/coop/tiny.bin"), "coop/tiny", None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(pulled.digest.to_hex().to_string(), digest(&tiny));
    assert!(pulled.nodes.iter().all(|o| o.result.is_ok()), "{:?}", pulled.nodes);
    for i in 0..3 {
        assert_eq!(held_blake3(&cluster.client(i).unwrap(), "coop/tiny").unwrap(), digest(&tiny), "{}", node_id(i));
    }
    assert_eq!(pulled.s3_bytes, 1000);

    // Once held, a second cooperative fetch of the name is refused and changes nothing.
    let again = cluster.client(0).unwrap().pull_s3_cooperative(&url, "coop/model.bin", None, Duration::from_secs(30));
    assert_eq!(again.unwrap_err().code(), Some(store_client::ErrorCode::AlreadyExists));
}

#[test]
fn a_failed_share_aborts_the_cooperative_fetch_and_no_node_keeps_anything() {
    if !requires_root() {
        return;
    }
    let env = start(2, LinkSpec::shaped(800, 1500), &[]);
    let cluster = &env.cluster;
    let url = format!("s3://{BUCKET}/coop/missing.bin");
    let err = cluster.client(0).unwrap().pull_s3_cooperative(&url, "coop/missing", None, Duration::from_secs(30));
    assert_eq!(err.unwrap_err().code(), Some(store_client::ErrorCode::NotFound));
    let unknown = cluster.client(0).unwrap().pull_s3_cooperative(
        &url,
        "coop/missing",
        Some(vec!["node-9".into()]),
        Duration::from_secs(30),
    );
    assert!(unknown.is_err());
    for i in 0..2 {
        assert!(cluster.client(i).unwrap().list().unwrap().is_empty(), "{}", node_id(i));
    }
}

#[test]
fn a_receiver_whose_only_peer_dies_finishes_from_the_s3_origin() {
    if !requires_root() {
        return;
    }
    let data = payload(64 * MIB, 9);
    let want = digest(&data);
    let mut env = start(2, LinkSpec::shaped(800, 1500), &[("fallback/model.bin", &data)]);
    // The source sends to peers at 8 MB/s: the pull is still under way when it dies.
    env.cluster.restart_daemon(0, &["--max-egress-rate", "8MB"]).unwrap();
    env.cluster.wait_registered(2, Duration::from_secs(20)).unwrap();
    let url = format!("s3://{BUCKET}/fallback/model.bin");
    let pulled = env.cluster.client(0).unwrap().pull_s3(&url, "fallback/model.bin", Default::default()).unwrap();
    assert_eq!(pulled.info.digest.unwrap().to_hex().to_string(), want);

    let receiver = std::thread::spawn({
        let client = env.cluster.client(1).unwrap();
        move || client.replicate("fallback/model.bin", Some(vec![node_id(1)]), Duration::from_secs(120), true)
    });
    std::thread::sleep(Duration::from_millis(2500));
    env.cluster.kill_daemon(0);
    let outcomes = receiver.join().unwrap().unwrap();
    let report = outcomes[0].result.as_ref().unwrap_or_else(|e| panic!("the pull failed: {e}"));
    assert!(report.s3_bytes > 0 && report.s3_bytes < data.len() as u64, "{report:?}");
    assert!(report.from.get(&node_id(0)).is_some_and(|b| *b > 0), "{report:?}");
    let stat = env.cluster.client(1).unwrap().stat("fallback/model.bin").unwrap();
    assert_eq!(stat.digest.unwrap().to_hex().to_string(), want);
    assert_eq!(held_blake3(&env.cluster.client(1).unwrap(), "fallback/model.bin").unwrap(), want);
}

#[test]
fn the_share_of_a_node_that_cannot_reach_s3_is_read_by_another() {
    if !requires_root() {
        return;
    }
    let data = payload(40 * MIB + 777, 11);
    let want = digest(&data);
    let mut env = start(3, LinkSpec::shaped(800, 1500), &[("coop/taken-over.bin", &data)]);
    // node-2's S3 endpoint points nowhere: its share fails at once.
    env.cluster.restart_daemon(2, &["--s3-endpoint", "http://127.0.0.1:9", "--s3-max-attempts", "1"]).unwrap();
    env.cluster.wait_registered(3, Duration::from_secs(20)).unwrap();
    let url = format!("s3://{BUCKET}/coop/taken-over.bin");
    let pulled = env
        .cluster
        .client(0)
        .unwrap()
        .pull_s3_cooperative(&url, "coop/taken-over", None, Duration::from_secs(120))
        .unwrap();
    assert_eq!(pulled.digest.to_hex().to_string(), want);
    let failed: Vec<_> = pulled.nodes.iter().filter(|o| o.result.is_err()).collect();
    assert_eq!(failed.len(), 1, "{:?}", pulled.nodes);
    assert_eq!(failed[0].node, node_id(2));
    assert!(failed[0].result.as_ref().unwrap_err().contains("instead"), "{:?}", failed[0]);
    let factor = pulled.s3_bytes as f64 / data.len() as f64;
    assert!((0.99..=1.1).contains(&factor), "S3 served {factor:.3} x the object");
    for i in 0..2 {
        let stat = env.cluster.client(i).unwrap().stat("coop/taken-over").unwrap();
        assert_eq!(stat.digest.unwrap().to_hex().to_string(), want, "{}", node_id(i));
        assert_eq!(held_blake3(&env.cluster.client(i).unwrap(), "coop/taken-over").unwrap(), want, "{}", node_id(i));
    }
    assert!(env.cluster.client(2).unwrap().stat("coop/taken-over").is_err());
}
