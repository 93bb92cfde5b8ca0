//! Multi-host tests: real scheduler and daemon processes in network-namespace hosts, real
//! QUIC with mutual TLS between them. They need root (CI runs as root); without it each
//! test says SKIPPED.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::{Duration, Instant};

use store_client::client::PutOptions;
use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{LinkSpec, requires_root};
use store_tests::payload;
use store_tests::verify::held_blake3;

const MIB: usize = 1 << 20;

fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn replicates_256_mib_to_three_hosts_and_get_pulls_it_anywhere() {
    if !requires_root() {
        return;
    }
    let cluster = TestCluster::start(ClusterSpec::new(5, LinkSpec::shaped(1000, 1500))).unwrap();
    let data = payload(256 * MIB, 1);
    let want = digest(&data);
    let info = cluster.client(0).unwrap().put("models/big.bin", &data).unwrap();
    drop(data);
    assert_eq!(info.digest.unwrap().to_hex(), want);

    let targets = vec![node_id(1), node_id(2), node_id(3)];
    let outcomes =
        cluster.client(0).unwrap().replicate("models/big.bin", Some(targets), Duration::from_secs(120), true).unwrap();
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        let report = o.result.as_ref().unwrap_or_else(|e| panic!("{} failed: {e}", o.node));
        assert_eq!(report.bytes, 256 * MIB as u64, "{}", o.node);
    }
    for i in 1..4 {
        let client = cluster.client(i).unwrap();
        let stat = client.stat("models/big.bin").unwrap();
        assert_eq!(stat.digest.unwrap().to_hex(), want, "{}", node_id(i));
        // The copy itself: the bytes a consumer on the host maps.
        assert_eq!(held_blake3(&client, "models/big.bin").unwrap(), want, "{}", node_id(i));
    }
    // Host 4 never asked for it: a plain get pulls it transparently.
    let guard = cluster.client(4).unwrap().get("models/big.bin", Duration::from_secs(120)).unwrap();
    assert_eq!(digest(&guard), want);
    let located = cluster.client(4).unwrap().locate("models/big.bin").unwrap();
    assert!(
        cluster.wait_until(Duration::from_secs(5), || {
            cluster
                .client(4)
                .unwrap()
                .locate("models/big.bin")
                .is_ok_and(|l| l.iter().filter(|l| l.is_complete()).count() == 5)
        }),
        "not every host is listed as a complete holder: {located:?}"
    );
}

#[test]
fn a_source_killed_mid_transfer_is_replaced_by_another_holder() {
    if !requires_root() {
        return;
    }
    let mut cluster = TestCluster::start(ClusterSpec::new(3, LinkSpec::shaped(200, 1500))).unwrap();
    let data = payload(64 * MIB, 2);
    let want = digest(&data);
    cluster.client(0).unwrap().put("obj", &data).unwrap();
    let first =
        cluster.client(0).unwrap().replicate("obj", Some(vec![node_id(1)]), Duration::from_secs(60), true).unwrap();
    assert!(first[0].result.is_ok(), "{first:?}");

    let socket = cluster.socket(2);
    let getter = std::thread::spawn(move || {
        let client = store_client::StoreClient::connect(socket).unwrap();
        let start = Instant::now();
        let guard = client.get("obj", Duration::from_secs(90)).map(|g| digest(&g));
        (guard, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(800));
    cluster.kill_daemon(0);
    let (got, took) = getter.join().unwrap();
    assert_eq!(got.unwrap(), want, "after {took:?}");
    let stat = cluster.client(2).unwrap().stat("obj").unwrap();
    assert_eq!(stat.digest.unwrap().to_hex(), want);
}

#[test]
fn corrupt_chunks_from_a_peer_are_rejected_and_fetched_elsewhere() {
    if !requires_root() {
        return;
    }
    let mut cluster = TestCluster::start(ClusterSpec::new(3, LinkSpec::shaped(1000, 1500))).unwrap();
    let data = payload(48 * MIB, 3);
    let want = digest(&data);
    // Node 1 serves every chunk with a flipped byte (it receives correctly).
    cluster.restart_daemon(1, &["--fault-corrupt-chunks"]).unwrap();
    cluster.wait_registered(3, Duration::from_secs(20)).unwrap();
    cluster.client(0).unwrap().put("obj", &data).unwrap();
    let first =
        cluster.client(0).unwrap().replicate("obj", Some(vec![node_id(1)]), Duration::from_secs(60), true).unwrap();
    assert!(first[0].result.is_ok(), "{first:?}");
    assert!(cluster.wait_until(Duration::from_secs(10), || {
        cluster.client(2).unwrap().locate("obj").is_ok_and(|l| l.iter().filter(|l| l.is_complete()).count() == 2)
    }));

    let outcome =
        cluster.client(0).unwrap().replicate("obj", Some(vec![node_id(2)]), Duration::from_secs(60), true).unwrap();
    let report = outcome[0].result.as_ref().expect("pull with a corrupt peer failed");
    assert!(report.corrupt_chunks >= 1, "no corrupt chunk was noticed: {report:?}");
    assert_eq!(report.from.get(&node_id(0)).copied(), Some(48 * MIB as u64), "{report:?}");
    let guard = cluster.client(2).unwrap().get("obj", Duration::ZERO).unwrap();
    assert_eq!(digest(&guard), want);
}

#[test]
fn a_restarted_scheduler_rebuilds_its_table_from_the_daemons() {
    if !requires_root() {
        return;
    }
    let mut cluster = TestCluster::start(ClusterSpec::new(2, LinkSpec::unshaped(1500))).unwrap();
    cluster.client(0).unwrap().put("a", b"hello").unwrap();
    assert!(
        cluster.wait_until(Duration::from_secs(5), || {
            cluster.client(1).unwrap().locate("a").is_ok_and(|l| l.len() == 1)
        })
    );
    cluster.kill_scheduler();
    std::thread::sleep(Duration::from_millis(300));
    cluster.start_scheduler().unwrap();
    let restarted = Instant::now();
    assert!(
        cluster.wait_until(Duration::from_secs(10), || {
            cluster.client(1).unwrap().locate("a").is_ok_and(|l| l.len() == 1 && l[0].node == node_id(0))
        }),
        "locate did not recover within 10 s"
    );
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(5), "recovery took {took:?}");
    cluster.wait_registered(2, Duration::from_secs(5)).unwrap();
}

#[test]
fn a_killed_node_loses_its_locations_after_the_lease_and_others_keep_theirs() {
    if !requires_root() {
        return;
    }
    let mut spec = ClusterSpec::new(3, LinkSpec::unshaped(1500));
    spec.lease_ms = 1500;
    let mut cluster = TestCluster::start(spec).unwrap();
    cluster.client(0).unwrap().put("shared", &payload(MIB, 4)).unwrap();
    cluster.client(1).unwrap().put_with("only-on-1", &payload(MIB, 5), PutOptions::default()).unwrap();
    let r =
        cluster.client(0).unwrap().replicate("shared", Some(vec![node_id(1)]), Duration::from_secs(30), true).unwrap();
    assert!(r[0].result.is_ok(), "{r:?}");
    assert!(cluster.wait_until(Duration::from_secs(5), || {
        cluster.client(2).unwrap().locate("shared").is_ok_and(|l| l.len() == 2)
    }));

    cluster.kill_daemon(1);
    assert!(
        cluster.wait_until(Duration::from_secs(8), || {
            let c = cluster.client(2).unwrap();
            c.locate("only-on-1").is_ok_and(|l| l.is_empty())
                && c.locate("shared").is_ok_and(|l| l.len() == 1 && l[0].node == node_id(0))
        }),
        "the dead node's locations did not vanish"
    );
    let nodes = cluster.client(2).unwrap().nodes().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
}

#[test]
fn a_daemon_with_a_certificate_from_another_ca_is_refused() {
    if !requires_root() {
        return;
    }
    let mut cluster = TestCluster::start(ClusterSpec::new(3, LinkSpec::unshaped(1500))).unwrap();
    cluster.client(0).unwrap().put("secret", &payload(MIB, 6)).unwrap();
    // Host 2 now runs a daemon whose certificate comes from another CA, under the same name.
    let rogue_certs = tempfile::tempdir().unwrap();
    store_client::tls::init_ca(rogue_certs.path()).unwrap();
    store_client::tls::issue(rogue_certs.path(), &node_id(2), rogue_certs.path()).unwrap();
    cluster.kill_daemon(2);
    let _rogue = cluster.spawn_daemon(2, rogue_certs.path(), &node_id(2), &[]).unwrap();
    let socket = cluster.socket(2);
    assert!(cluster.wait_until(Duration::from_secs(10), || std::os::unix::net::UnixStream::connect(&socket).is_ok()));
    let rogue = store_client::StoreClient::connect(&socket).unwrap();

    // The scheduler refuses it: its node record expires and never comes back.
    assert!(
        cluster
            .wait_until(Duration::from_secs(10), || { cluster.client(0).unwrap().nodes().is_ok_and(|n| n.len() == 2) })
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.client(0).unwrap().nodes().unwrap().len(), 2);
    // And it gets nothing out of the cluster.
    let err = rogue.get("secret", Duration::from_secs(3)).unwrap_err();
    assert!(
        matches!(err.code(), Some(store_client::ErrorCode::ClusterUnavailable | store_client::ErrorCode::Timeout)),
        "{err}"
    );
    // Peers refuse it too: asked to pull from the cluster, a good node cannot reach it, and
    // a good node's replicate to it fails.
    let r =
        cluster.client(0).unwrap().replicate("secret", Some(vec![node_id(2)]), Duration::from_secs(5), true).unwrap();
    assert!(r[0].result.is_err(), "{r:?}");
}

#[test]
fn one_name_holds_one_content_across_the_cluster() {
    if !requires_root() {
        return;
    }
    let cluster = TestCluster::start(ClusterSpec::new(2, LinkSpec::unshaped(1500))).unwrap();
    let first = payload(2 * MIB, 7);
    let other = payload(2 * MIB, 8);
    cluster.client(0).unwrap().put("models/w.bin", &first).unwrap();
    assert!(cluster.wait_until(Duration::from_secs(5), || {
        cluster.client(1).unwrap().locate("models/w.bin").is_ok_and(|l| l.len() == 1)
    }));

    // Node 1 may not bind the name to other bytes: refused with the holder named, nothing kept.
    let refused = cluster.client(1).unwrap().put("models/w.bin", &other).unwrap_err();
    assert_eq!(refused.code(), Some(store_client::ErrorCode::AlreadyExists), "{refused}");
    assert!(refused.to_string().contains(&node_id(0)), "the holder is named: {refused}");
    assert!(cluster.client(1).unwrap().stat("models/w.bin").is_err(), "the refused object was kept");
    // The same through create/seal: the sealed object is dropped.
    let mut object =
        cluster.client(1).unwrap().create("models/w.bin", other.len() as u64, PutOptions::default()).unwrap();
    object.as_mut_slice().unwrap().copy_from_slice(&other);
    let refused = object.seal().unwrap_err();
    assert_eq!(refused.code(), Some(store_client::ErrorCode::AlreadyExists), "{refused}");
    assert!(cluster.client(1).unwrap().stat("models/w.bin").is_err(), "the refused object was kept");

    // The same bytes are welcome, and then both copies are listed with one root.
    cluster.client(1).unwrap().put("models/w.bin", &first).unwrap();
    assert!(cluster.wait_until(Duration::from_secs(5), || {
        cluster.client(0).unwrap().locate("models/w.bin").is_ok_and(|l| l.len() == 2 && l[0].root == l[1].root)
    }));
    assert_eq!(held_blake3(&cluster.client(1).unwrap(), "models/w.bin").unwrap(), digest(&first));
}

#[test]
fn a_node_shutting_down_withdraws_its_holdings_at_once() {
    if !requires_root() {
        return;
    }
    let mut cluster = TestCluster::start(ClusterSpec::new(3, LinkSpec::unshaped(1500))).unwrap();
    let data = payload(4 * MIB, 9);
    cluster.client(0).unwrap().put("models/d.bin", &data).unwrap();
    drop(cluster.client(1).unwrap().get("models/d.bin", Duration::from_secs(30)).unwrap());
    let observer = cluster.client(2).unwrap();
    let holders = |c: &store_client::StoreClient| {
        c.locate("models/d.bin").map(|l| l.iter().filter(|l| l.is_complete()).count()).unwrap_or(0)
    };
    assert!(cluster.wait_until(Duration::from_secs(5), || holders(&observer) == 2), "node-1 never listed");

    // Without a withdrawal the scheduler would list node-1 until its lease ran out (3 s
    // after its last heartbeat), and pulls would keep asking it.
    let asked_to_stop = Instant::now();
    let watcher = std::thread::spawn(move || {
        while holders(&observer) != 1 {
            assert!(asked_to_stop.elapsed() < Duration::from_secs(10), "node-1 still listed after 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        asked_to_stop.elapsed()
    });
    cluster.stop_daemon(1, Duration::from_secs(20)).unwrap();
    let withdrawn = watcher.join().unwrap();
    assert!(withdrawn < Duration::from_secs(1), "node-1 was listed for {withdrawn:?} after it began to stop");
    let located = cluster.client(2).unwrap().locate("models/d.bin").unwrap();
    assert_eq!(located.iter().map(|l| l.node.as_str()).collect::<Vec<_>>(), [node_id(0)]);
}
