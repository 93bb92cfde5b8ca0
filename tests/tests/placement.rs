//! Data-aware placement across hosts: real scheduler and daemons in network-namespace hosts,
//! `storectl place` and the client's `place`. They need root; without it each test says
//! SKIPPED.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::process::Command;
use std::time::Duration;

use store_client::ObjectState;
use store_client::wire::placement::PlaceSpec;
use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{LinkSpec, requires_root};
use store_tests::verify::held_blake3;
use store_tests::{payload, workspace_bin};

const MIB: usize = 1 << 20;

/// Hosts with `labels[i]` (and `resources[i]`) as their daemon flags.
fn start(links: Vec<LinkSpec>, labels: &[&str], resources: &[&str]) -> TestCluster {
    let mut spec = ClusterSpec::new(links.len(), LinkSpec::unshaped(1500));
    spec.links = links;
    spec.host_args = labels
        .iter()
        .zip(resources)
        .map(|(l, r)| {
            let mut args = vec!["--label".to_owned(), (*l).to_owned()];
            if !r.is_empty() {
                args.extend(["--resource".to_owned(), (*r).to_owned()]);
            }
            args
        })
        .collect();
    TestCluster::start(spec).unwrap()
}

/// Puts `name` on host `i` and waits until the scheduler lists it complete.
fn put_on(cluster: &TestCluster, i: usize, name: &str, data: &[u8]) {
    cluster.client(i).unwrap().put(name, data).unwrap();
    let listed = cluster.wait_until(Duration::from_secs(10), || {
        cluster.client(i).unwrap().locate(name).is_ok_and(|l| l.iter().any(|l| l.is_complete()))
    });
    assert!(listed, "{name} not listed");
}

fn storectl(cluster: &TestCluster, i: usize, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_bin("storectl").unwrap())
        .arg("--socket")
        .arg(cluster.socket(i))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn place_with_prefetch_brings_the_input_to_the_chosen_host() {
    if !requires_root() {
        return;
    }
    // The input is on host 0; the task must run in the cloud (hosts 1 and 2, 200 Mbit/s).
    let links = vec![LinkSpec::unshaped(1500), LinkSpec::shaped(200, 1500), LinkSpec::shaped(200, 1500)];
    let cluster = start(links, &["site=hpc", "site=cloud", "site=cloud"], &["cpu=2", "cpu=2", "cpu=2"]);
    let data = payload(24 * MIB, 7);
    put_on(&cluster, 0, "inputs/a.bin", &data);

    let (ok, stdout, stderr) = storectl(
        &cluster,
        0,
        &["place", "--needs", "inputs/a.bin", "--label", "site=cloud", "--task-seconds", "5", "--prefetch", "--json"],
    );
    assert!(ok, "storectl place failed: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let chosen = answer["tasks"][0]["node"].as_str().unwrap().to_owned();
    assert!(chosen == node_id(1) || chosen == node_id(2), "{answer}");
    assert_eq!(answer["tasks"][0]["missing_bytes"], 24 * MIB as u64);
    assert_eq!(answer["ranked"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(answer["prefetch"][0]["node"], chosen.as_str());
    assert_eq!(answer["prefetch"][0]["ok"], true, "{answer}");

    // Nobody asked the chosen host for the object: the prefetch alone brings it there.
    let i: usize = chosen.trim_start_matches("node-").parse().unwrap();
    // Sealed, not just bound: a receiver's pending object already carries the manifest's
    // digest while its bytes are still arriving.
    let arrived = cluster.wait_until(Duration::from_secs(30), || {
        cluster.client(i).unwrap().stat("inputs/a.bin").is_ok_and(|s| s.state == ObjectState::Sealed)
    });
    assert!(arrived, "{chosen} does not hold the input after the prefetch");
    let stat = cluster.client(i).unwrap().stat("inputs/a.bin").unwrap();
    assert_eq!(stat.digest.unwrap().to_hex(), blake3::hash(&data).to_hex().to_string());
    // The copy itself: the bytes a consumer on the chosen host maps.
    assert_eq!(
        held_blake3(&cluster.client(i).unwrap(), "inputs/a.bin").unwrap(),
        blake3::hash(&data).to_hex().as_str()
    );
    let other = if i == 1 { 2 } else { 1 };
    assert!(cluster.client(other).unwrap().stat("inputs/a.bin").is_err(), "the other cloud host got it too");

    // The pull was reported: the chosen host's bandwidth is an observation now, and the
    // input counts as held there.
    let observed = cluster.wait_until(Duration::from_secs(10), || {
        let spec = PlaceSpec { needs: vec!["inputs/a.bin".into()], pinned: Some(chosen.clone()), ..Default::default() };
        cluster
            .client(0)
            .unwrap()
            .place(&spec, false)
            .is_ok_and(|o| o.placement.tasks[0].missing_bytes == 0 && !o.placement.tasks[0].bandwidth_assumed)
    });
    assert!(observed, "the scheduler did not take the prefetch into account");

    // The table: a header and one row per task, then the ranking.
    let (ok, table, stderr) = storectl(&cluster, 1, &["place", "--needs", "inputs/a.bin"]);
    assert!(ok, "{stderr}");
    assert!(table.starts_with("TASK"), "{table}");
    assert!(table.contains("MISSING") && table.contains("START"), "{table}");
}

#[test]
fn place_over_the_real_scheduler_respects_label_and_resource_constraints() {
    if !requires_root() {
        return;
    }
    let links = vec![LinkSpec::unshaped(1500); 3];
    let cluster = start(links, &["site=hpc", "site=cloud", "site=cloud"], &["cpu=4", "cpu=1,gpu=1", ""]);
    put_on(&cluster, 0, "inputs/b.bin", &payload(8 * MIB, 3));
    let client = cluster.client(2).unwrap();
    let base = PlaceSpec { needs: vec!["inputs/b.bin".into()], task_seconds: 1.0, ..Default::default() };
    let nodes = |spec: &PlaceSpec| -> Vec<String> {
        client.place(spec, false).unwrap().placement.tasks.into_iter().map(|t| t.node).collect()
    };

    // Unconstrained, the holder wins.
    assert_eq!(nodes(&base), [node_id(0)]);
    // A label the holder lacks: only the cloud hosts, though neither holds the input.
    let mut cloud = base.clone();
    cloud.labels.insert("site".into(), "cloud".into());
    cloud.count = 4;
    let placed = nodes(&cloud);
    assert_eq!(placed.len(), 4);
    assert!(placed.iter().all(|n| *n == node_id(1) || *n == node_id(2)), "{placed:?}");
    // A resource only host 1 has.
    let mut gpu = cloud.clone();
    gpu.resources.insert("gpu".into(), 1);
    gpu.count = 3;
    assert_eq!(nodes(&gpu), [node_id(1), node_id(1), node_id(1)]);
    // A label nobody has: no placement (and storectl says so with a failure).
    let mut nowhere = base.clone();
    nowhere.labels.insert("site".into(), "moon".into());
    assert!(nodes(&nowhere).is_empty());
    let (ok, _, stderr) = storectl(&cluster, 0, &["place", "--needs", "inputs/b.bin", "--label", "site=moon"]);
    assert!(!ok && stderr.contains("no node"), "{stderr}");
    // An input nobody holds is an error, not a guess.
    let err = client.place(&PlaceSpec { needs: vec!["inputs/none".into()], ..base.clone() }, false).unwrap_err();
    assert!(err.to_string().contains("no node holds"), "{err}");
}
