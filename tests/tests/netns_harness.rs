//! Tests of the multi-host harness (`store_tests::netns`): emulated hosts reach each other and
//! nothing else, links are shaped to the configured rate in both directions, and teardown
//! leaves nothing behind, also after a panic. Reachability and throughput are measured with
//! the workspace's `netprobe` (no ping or iperf3). They need root and iproute2 and report a
//! skip otherwise.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use store_tests::netns::{
    self, BENCH_NET, DEFAULT_PREFIX, LinkSpec, NetnsCluster, NsChild, TbfParams, list_namespaces, requires_root,
};

const SHAPED_MBIT: u32 = 200;
const SHAPED_SECS: f64 = 3.0;

fn in_bench_net(addr: Ipv4Addr) -> bool {
    u32::from(addr) & 0xfffe_0000 == u32::from(BENCH_NET)
}

/// Prints past the test harness's capture, so measured figures show in every run.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn root_links() -> Vec<String> {
    let out = netns::run_checked(Command::new("ip").args(["-o", "link", "show"]), Duration::from_secs(10))
        .expect("ip link show");
    let mut links: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    links.sort();
    links
}

fn leftovers(name: &str) -> Vec<String> {
    list_namespaces().expect("ip netns list").into_iter().filter(|ns| ns.starts_with(name)).collect()
}

#[test]
fn hosts_reach_each_other_and_nothing_outside_the_bench_range() {
    if !requires_root() {
        return;
    }
    let root_before = root_links();
    let cluster = NetnsCluster::new(2, LinkSpec::default()).expect("cluster");
    let (h0, h1) = (cluster.host(0), cluster.host(1));
    assert!(in_bench_net(h0.addr()) && in_bench_net(h1.addr()), "{} {}", h0.addr(), h1.addr());
    assert_eq!(h0.addr().octets()[3], 10);
    assert_eq!(h1.addr().octets()[3], 11);
    assert!(h0.ns().ends_with("-h0") && h1.ns().ends_with("-h1"));

    // A four-byte TCP exchange each way, bounded in time.
    let limit = Duration::from_secs(10);
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(cluster.reaches(from, to).expect("netprobe"), "h{from} does not reach h{to}");
    }

    // Only the connected /24: no default route, so every other destination is unreachable
    // (a route lookup sends nothing).
    for host in cluster.hosts() {
        let routes = host.run("ip", &["-4", "route", "show", "table", "all"], limit).expect("ip route");
        let routes = String::from_utf8_lossy(&routes.stdout);
        let main: Vec<&str> = routes.lines().filter(|l| !l.contains("table local")).collect();
        assert_eq!(main.len(), 1, "routes of {}: {routes}", host.ns());
        assert!(main[0].starts_with(&format!("{}/24 dev eth0", cluster.subnet())), "{routes}");
        assert!(!routes.contains("default"), "{routes}");
        for outside in ["192.0.2.1", "10.0.0.1", "8.8.8.8", "198.20.0.1", "127.0.0.1"] {
            let out =
                netns::run_output(host.command("ip").args(["route", "get", outside]), limit).expect("ip route get");
            let text = String::from_utf8_lossy(&out.stdout);
            if outside == "127.0.0.1" {
                // The host's own loopback.
                assert!(text.contains("dev lo"), "{text}");
            } else {
                assert!(!out.status.success(), "{} routes to {outside}: {text}", host.ns());
                assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"), "{out:?}");
            }
        }
        let addrs = host.run("ip", &["-o", "addr", "show"], limit).expect("ip addr");
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(
            !addrs.lines().any(|l| l.contains("eth0") && l.contains("inet6")),
            "IPv6 on eth0 of {}: {addrs}",
            host.ns()
        );
        assert_eq!(addrs.matches("inet ").count(), 2, "{addrs}");
    }

    // Nothing was created in the root namespace.
    assert_eq!(root_links(), root_before);
    cluster.teardown().expect("teardown");
}

#[test]
fn links_are_shaped_in_both_directions() {
    if !requires_root() {
        return;
    }
    let goodput = |mtu: u32| f64::from(SHAPED_MBIT) * 1e6 * f64::from(mtu - 52) / f64::from(mtu + 14);
    let check = |what: &str, bps: f64| {
        let rate = f64::from(SHAPED_MBIT) * 1e6;
        report(&format!(
            "netns shaping: {what}: {:.1} Mbit/s ({:.1} % of {SHAPED_MBIT})",
            bps / 1e6,
            100.0 * bps / rate
        ));
        assert!((0.85 * rate..=1.05 * rate).contains(&bps), "{what}: {bps} bit/s, not within 85-105 % of {rate}");
    };

    for mtu in [1500, 9000] {
        let cluster = NetnsCluster::new(2, LinkSpec::shaped(SHAPED_MBIT, mtu)).expect("cluster");
        // Every host's link carries a tbf at both ends.
        let tbf = TbfParams::for_link(SHAPED_MBIT, mtu);
        for host in cluster.hosts() {
            for (ns, dev) in
                [(host.ns().to_string(), "eth0".to_string()), (cluster.switch_ns().to_string(), host.port())]
            {
                let out = netns::run_checked(
                    Command::new("tc").args(["-n", &ns, "qdisc", "show", "dev", &dev]),
                    Duration::from_secs(10),
                )
                .expect("tc qdisc show");
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.contains("qdisc tbf") && text.contains(&format!("rate {SHAPED_MBIT}Mbit")),
                    "{ns} {dev}: {text}"
                );
                let mtu_out = netns::run_checked(
                    Command::new("ip").args(["-n", &ns, "link", "show", &dev]),
                    Duration::from_secs(10),
                )
                .expect("ip link show");
                assert!(String::from_utf8_lossy(&mtu_out.stdout).contains(&format!("mtu {mtu} ")));
            }
        }
        let result = cluster.tcp_stream(0, 1, SHAPED_SECS).expect("tcp stream");
        check(
            &format!(
                "{SHAPED_MBIT} Mbit/s, MTU {mtu}, tbf burst {} limit {}, {} retransmits (ideal goodput {:.1})",
                tbf.burst_bytes,
                tbf.limit_bytes,
                result.retransmits,
                goodput(mtu) / 1e6
            ),
            result.received_bps,
        );
        cluster.teardown().expect("teardown");
    }

    // Per-host links: only host 0 shaped. h0 -> h1 passes h0's egress tbf, h1 -> h0 the
    // switch port's; the same cluster unshaped (set_rate) is much faster.
    let mut cluster =
        NetnsCluster::with_links(vec![LinkSpec::shaped(SHAPED_MBIT, 1500), LinkSpec::unshaped(1500)]).expect("cluster");
    let up = cluster.tcp_stream(0, 1, SHAPED_SECS).expect("tcp stream h0 -> h1");
    check("host -> switch only (h0 -> h1, h1 unshaped)", up.received_bps);
    let down = cluster.tcp_stream(1, 0, SHAPED_SECS).expect("tcp stream h1 -> h0");
    check("switch -> host only (h1 -> h0, h1 unshaped)", down.received_bps);
    cluster.set_rate(0, None).expect("unshape");
    let fast = cluster.tcp_stream(0, 1, 2.0).expect("tcp stream unshaped");
    report(&format!("netns shaping: unshaped, MTU 1500: {:.1} Mbit/s", fast.received_bps / 1e6));
    assert!(fast.received_bps > 3.0 * f64::from(SHAPED_MBIT) * 1e6, "unshaped only {} bit/s", fast.received_bps);
    cluster.teardown().expect("teardown");
}

#[test]
fn teardown_removes_everything_even_after_a_panic() {
    if !requires_root() {
        return;
    }
    let root_before = root_links();

    // Dropped normally, with a process still running inside a host and one in a guard.
    let cluster = NetnsCluster::new(3, LinkSpec::shaped(100, 1500)).expect("cluster");
    let name = cluster.name().to_string();
    let namespaces = cluster.namespaces();
    assert_eq!(namespaces.len(), 4);
    assert_eq!(leftovers(&name).len(), 4, "{:?}", list_namespaces());
    let mut stray = cluster.host(0).command("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
    let guarded = NsChild::spawn(cluster.host(1).command("sleep").arg("60")).expect("spawn sleep");
    let guarded_pid = guarded.id();
    drop(guarded);
    assert!(!std::path::Path::new(&format!("/proc/{guarded_pid}")).exists(), "NsChild killed and reaped its process");
    drop(cluster);
    assert!(leftovers(&name).is_empty(), "left behind: {:?}", leftovers(&name));
    let status = stray.wait().expect("wait for stray");
    assert!(!status.success(), "the stray process was killed by teardown: {status}");

    // Panicking inside a closure that owns a cluster.
    let seen = Mutex::new(String::new());
    let outcome = std::panic::catch_unwind(|| {
        let cluster = NetnsCluster::new(2, LinkSpec::shaped(50, 9000)).expect("cluster");
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = cluster.name().to_string();
        let _sleeper = NsChild::spawn(cluster.host(1).command("sleep").arg("60")).expect("spawn sleep");
        panic!("deliberate panic with a live cluster");
    });
    assert!(outcome.is_err());
    let name = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(name.starts_with(DEFAULT_PREFIX), "{name}");
    assert!(leftovers(&name).is_empty(), "left behind after panic: {:?}", leftovers(&name));

    // The root namespace never saw an interface of ours.
    assert_eq!(root_links(), root_before);
}

#[test]
fn cleanup_stale_removes_only_dead_runs() {
    if !requires_root() {
        return;
    }
    // A "crashed run": pid 2^31-1 can never exist (pid_max is at most 2^22).
    let prefix = "sttstale";
    let dead = format!("{prefix}-2147483647-0");
    let run = |args: &[&str]| {
        netns::run_checked(Command::new("ip").args(args), Duration::from_secs(10)).expect("ip");
    };
    let (sw, h0) = (format!("{dead}-sw"), format!("{dead}-h0"));
    run(&["netns", "add", &sw]);
    run(&["netns", "add", &h0]);
    run(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
    run(&["-n", &sw, "link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns", &h0]);
    run(&["-n", &sw, "link", "set", "h0", "master", "br0"]);
    // A live cluster with the same prefix must survive.
    let live = NetnsCluster::with_prefix(prefix, vec![LinkSpec::default()]).expect("cluster");
    // Creating the live cluster already cleaned the dead run up.
    assert!(leftovers(&dead).is_empty(), "{:?}", leftovers(&dead));

    run(&["netns", "add", &h0]);
    let removed = netns::cleanup_stale(prefix).expect("cleanup_stale");
    assert_eq!(removed, vec![h0.clone()]);
    assert!(leftovers(&dead).is_empty());
    assert_eq!(leftovers(live.name()).len(), 2, "the live cluster survives");
    let out = live.host(0).run("ip", &["-o", "addr", "show", "dev", "eth0"], Duration::from_secs(10)).expect("ip addr");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&live.host(0).addr().to_string()));
    let name = live.name().to_string();
    live.teardown().expect("teardown");
    assert!(leftovers(&name).is_empty());
}

#[test]
fn parallel_clusters_get_distinct_subnets() {
    if !requires_root() {
        return;
    }
    let a = NetnsCluster::new(1, LinkSpec::default()).expect("cluster a");
    let b = NetnsCluster::new(1, LinkSpec::default()).expect("cluster b");
    assert_ne!(a.subnet(), b.subnet());
    assert!(in_bench_net(a.subnet()) && in_bench_net(b.subnet()));
    assert_ne!(a.name(), b.name());
}
