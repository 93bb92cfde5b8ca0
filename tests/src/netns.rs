//! Multi-host harness: emulated hosts as network namespaces on this machine.
//!
//! A [`NetnsCluster`] is N hosts joined by one Ethernet switch, every host's link optionally
//! rate-shaped. Tests start daemons inside the hosts with [`Host::command`] (a
//! [`std::process::Command`] that runs under `ip netns exec`), preferably through
//! [`NsChild::spawn`], which kills the process when the guard drops. Everything is created
//! by the test and removed again on drop, also when the test panics. Root and iproute2
//! (`ip`, `tc`) are required: start a test with [`requires_root`], which prints a visible
//! `SKIPPED` line and returns `false` where they are missing.
//!
//! # Topology and naming
//!
//! ```text
//!  netns <name>-h0             netns <name>-sw (the "switch")            netns <name>-h1
//!  eth0 198.18.X.10/24 ==veth== h0 --+                  +-- h1 ==veth== eth0 198.18.X.11/24
//!  (tbf: host -> switch)             +--- br0 (bridge) -+   (tbf on h1: switch -> host)
//! ```
//!
//! - The cluster name is `<prefix>-<pid>-<seq>` ([`DEFAULT_PREFIX`] is `storetest`; pid of
//!   the creating process; seq counts clusters within that process). Host `i` is the
//!   namespace `<name>-h<i>`, the switch is `<name>-sw`. Inside a host the interface is
//!   `eth0`; in the switch, the bridge is `br0` and host `i`'s port is `h<i>`.
//! - The bridge lives in its own switch namespace, not in the root namespace: the harness
//!   creates no interface, address, route or sysctl in the root namespace, so it cannot
//!   disturb the machine's own networking or firewall (bridged traffic never meets the root
//!   namespace's iptables/br_netfilter rules), interface names never collide between
//!   parallel clusters (each switch has its own `br0`, `h0`, ...), and no packet of a
//!   cluster can leave it: the switch has no uplink and no address.
//! - Addresses: every cluster takes its own /24 from the benchmarking range 198.18.0.0/15
//!   (512 subnets: 198.18.0.0/24 ... 198.19.255.0/24); host `i` is `.(10 + i)`, so at most
//!   245 hosts. The subnet is claimed with an `flock` on `/run/store-tests-netns/subnet-<n>.lock`
//!   (released automatically when the process dies), starting at an index derived from the
//!   pid and seq, so concurrent test processes get distinct subnets. Since the switches are
//!   isolated, even equal subnets would not interfere; distinct ones just keep captures and
//!   logs unambiguous. Hosts have only the connected /24 route: no default route, so nothing
//!   outside the cluster is reachable (`connect` fails with `ENETUNREACH` without sending).
//!   IPv6 link-local addresses are not generated (`addrgenmode none`), so the bridge carries
//!   no IPv6 chatter.
//!
//! # Shaping
//!
//! With `rate_mbit: Some(R)`, both directions of the host's link are shaped with a token
//! bucket: egress of `eth0` inside the host (host -> switch) and egress of the switch port
//! `h<i>` (switch -> host), each `tc qdisc replace dev X root tbf rate Rmbit burst B limit Q`
//! ([`TbfParams::for_link`]):
//!
//! - `B = max(R/8 bytes/s * 2 ms, 2 * (MTU + 14))`: two milliseconds of the rate, at least two
//!   full frames. Smaller buckets starve fast links (at 1 Gbit/s a 3000 B bucket gave 779
//!   Mbit/s, 64 KiB gave 929) and make tbf split every 64 KiB GSO super-packet; larger ones
//!   inflate short measurements at slow rates (the first B bytes go at wire speed: 256 KiB at
//!   10 Mbit/s added 0.7 Mbit/s to a 3 s run).
//! - `Q = B + max(R/8 bytes/s * 20 ms, 256 KiB)`: the queue (tbf's `limit`), 20 ms of the rate
//!   but room for at least four GSO super-packets. With `latency 5ms` TCP saw thousands of
//!   retransmissions; with 20 ms of queue but no floor, 10 Mbit/s at MTU 9000 reached only
//!   8.5 Mbit/s.
//!
//! tbf counts Ethernet frames (IP packet + 14 bytes), so TCP goodput (what iperf3 or `NetnsCluster::tcp_stream` reports) is
//! `R * (MTU - 52) / (MTU + 14)` with timestamps: 95.6 % of R at MTU 1500, 99.3 % at MTU 9000.
//! Measured on this machine (2 cores, iperf3 3.12, one TCP stream, 3 s), these parameters gave
//! 9.6 / 47.8 / 191.4 / 955 Mbit/s at 10 / 50 / 200 / 1000 Mbit/s and MTU 1500, and
//! 9.9 / 49.6 / 198.6 / 993 Mbit/s at MTU 9000, each with 0-1 retransmissions; an unshaped
//! veth pair through the bridge carried ~22 Gbit/s (CPU-bound).
//!
//! Links of one cluster may have different rates ([`NetnsCluster::with_links`], e.g. a fast
//! S3 host). Their MTUs should match: like a real switch, the bridge drops frames larger than
//! the egress port's MTU without telling anyone (TCP negotiates its MSS and is fine; UDP and
//! QUIC need path-MTU discovery).
//!
//! # Processes and teardown
//!
//! A namespace lives as long as a process is inside it, so callers should stop what they
//! spawned before the cluster drops: [`NsChild`] (kill on drop) does it when it is declared
//! after the cluster (locals drop in reverse order). As a fallback, teardown SIGKILLs every
//! process still inside the cluster's namespaces (`ip netns pids`), then deletes the veth
//! pairs and the bridge explicitly (namespace destruction is asynchronous in the kernel) and
//! finally the namespaces. [`NetnsCluster::teardown`] does this and reports errors; `Drop`
//! does it when the test did not, printing errors to stderr. Leftovers of crashed runs
//! (namespaces `<prefix>-<pid>-...` whose pid is gone) are removed by [`cleanup_stale`],
//! which every new cluster runs for its prefix first.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod child;
mod command;
mod link;

pub use child::NsChild;
use command::sh;
pub use command::{describe, requires_root, run_checked, run_output};
pub use link::{LinkSpec, TbfParams};

/// Prefix of the namespaces created by [`NetnsCluster::new`] and [`NetnsCluster::with_links`].
pub const DEFAULT_PREFIX: &str = "storetest";
/// The benchmarking range (RFC 2544): 198.18.0.0/15, the only addresses the harness uses.
pub const BENCH_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Number of /24 subnets in [`BENCH_NET`].
pub const SUBNETS: u32 = 512;
/// Last octet of host 0's address; host `i` is `.(HOST_OFFSET + i)`.
pub const HOST_OFFSET: u32 = 10;
/// Most hosts one cluster can have (addresses `.10` to `.254`).
pub const MAX_HOSTS: usize = (255 - HOST_OFFSET) as usize;
/// The host's interface name inside its namespace.
pub const HOST_IF: &str = "eth0";
/// The bridge's name inside the switch namespace.
pub const BRIDGE: &str = "br0";

const LOCK_DIR: &str = "/run/store-tests-netns";
/// How long teardown waits for killed processes to leave a namespace.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Clusters of this process, by name, that are alive: [`cleanup_stale`] must not take a
/// cluster of this very process for the leftover of a crashed run that had the same pid.
static LIVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static SEQ: AtomicU32 = AtomicU32::new(0);

fn live_set<R>(f: impl FnOnce(&mut HashSet<String>) -> R) -> R {
    let mut guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashSet::new))
}

// ---------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------

/// One emulated host: a network namespace with `eth0` on the cluster's switch.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    ns: String,
    addr: Ipv4Addr,
    link: LinkSpec,
}

impl Host {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The namespace's name (for `ip -n NAME ...`, `ip netns exec NAME ...`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The host's address on the cluster's /24.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The link as currently configured.
    pub fn link(&self) -> LinkSpec {
        self.link
    }

    /// The switch port of this host (interface name inside the switch namespace).
    pub fn port(&self) -> String {
        format!("h{}", self.index)
    }

    /// `ip netns exec <ns> <program>`: add arguments, environment, pipes, then spawn (ideally
    /// with [`NsChild::spawn`]). `ip netns exec` execs the program in place, so the child's
    /// pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(&self.ns).arg(program);
        cmd
    }

    /// Runs `program args...` in the host to completion within `timeout`, failing (with the
    /// command and its stderr) on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        run_checked(self.command(program).args(args), timeout)
    }
}

/// One TCP stream measurement ([`NetnsCluster::tcp_stream`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpResult {
    /// Goodput at the receiver, bit/s.
    pub received_bps: f64,
    /// Bytes the receiver read.
    pub received_bytes: u64,
    /// TCP retransmissions seen by the sender.
    pub retransmits: u64,
}

/// N emulated hosts on one switch; see the module documentation. Removes everything on drop.
#[derive(Debug)]
pub struct NetnsCluster {
    name: String,
    switch_ns: String,
    subnet: u32,
    hosts: Vec<Host>,
    /// Namespaces created so far, in creation order.
    created_ns: Vec<String>,
    /// Switch ports (veth pairs) created so far.
    created_ports: Vec<String>,
    bridge_created: bool,
    subnet_lock: Option<Flock<File>>,
    torn_down: bool,
}

impl NetnsCluster {
    /// `hosts` hosts, all with the same link.
    pub fn new(hosts: usize, link: LinkSpec) -> anyhow::Result<Self> {
        Self::with_links(vec![link; hosts])
    }

    /// One host per entry of `links`, host `i` with `links[i]`.
    pub fn with_links(links: Vec<LinkSpec>) -> anyhow::Result<Self> {
        Self::with_prefix(DEFAULT_PREFIX, links)
    }

    /// Like [`Self::with_links`] with namespaces named `<prefix>-<pid>-<seq>-...`. The prefix
    /// is ASCII letters, digits and `_`.
    pub fn with_prefix(prefix: &str, links: Vec<LinkSpec>) -> anyhow::Result<Self> {
        validate_prefix(prefix)?;
        if links.is_empty() || links.len() > MAX_HOSTS {
            bail!("a cluster has 1 to {MAX_HOSTS} hosts, not {}", links.len());
        }
        for link in &links {
            link.validate()?;
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root (check with netns::requires_root() first)");
        }
        if let Err(e) = cleanup_stale(prefix) {
            let _ = writeln!(std::io::stderr(), "warning: cleaning up stale {prefix} namespaces: {e:#}");
        }

        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{pid}-{seq}");
        live_set(|set| set.insert(name.clone()));
        let (subnet, subnet_lock) = match claim_subnet(pid, seq) {
            Ok(claim) => claim,
            Err(e) => {
                live_set(|set| set.remove(&name));
                return Err(e);
            }
        };
        let subnet_base = u32::from(BENCH_NET) + subnet * 256;
        let hosts = links
            .iter()
            .enumerate()
            .map(|(index, &link)| Host {
                index,
                ns: format!("{name}-h{index}"),
                addr: Ipv4Addr::from(subnet_base + HOST_OFFSET + index as u32),
                link,
            })
            .collect();
        let mut cluster = Self {
            switch_ns: format!("{name}-sw"),
            name,
            subnet,
            hosts,
            created_ns: Vec::new(),
            created_ports: Vec::new(),
            bridge_created: false,
            subnet_lock: Some(subnet_lock),
            torn_down: false,
        };
        // On an error, dropping `cluster` removes what was created so far.
        cluster.build().with_context(|| format!("creating netns cluster {}", cluster.name))?;
        Ok(cluster)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch_ns.clone();
        sh("ip", &["netns", "add", &sw])?;
        self.created_ns.push(sw.clone());
        sh("ip", &["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        self.bridge_created = true;
        for host in self.hosts.clone() {
            let ns = host.ns.as_str();
            let port = host.port();
            let mtu = host.link.mtu.to_string();
            let cidr = format!("{}/24", host.addr);
            sh("ip", &["netns", "add", ns])?;
            self.created_ns.push(ns.to_string());
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", HOST_IF, "mtu", &mtu,
                    "netns", ns,
                ],
            )?;
            self.created_ports.push(port.clone());
            sh("ip", &["-n", &sw, "link", "set", &port, "master", BRIDGE, "up"])?;
            sh("ip", &["-n", ns, "link", "set", HOST_IF, "addrgenmode", "none"])?;
            sh("ip", &["-n", ns, "addr", "add", &cidr, "dev", HOST_IF])?;
            sh("ip", &["-n", ns, "link", "set", HOST_IF, "up"])?;
            if let Some(tbf) = host.link.tbf() {
                apply_tbf(ns, HOST_IF, &tbf)?;
                apply_tbf(&sw, &port, &tbf)?;
            }
        }
        let bridge_mtu = self.hosts.iter().map(|h| h.link.mtu).max().unwrap_or(1500).to_string();
        sh("ip", &["-n", &sw, "link", "set", BRIDGE, "mtu", &bridge_mtu, "up"])?;
        Ok(())
    }

    /// The cluster's name, `<prefix>-<pid>-<seq>`; every namespace name starts with it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The switch namespace (holds the bridge `br0` and the ports `h<i>`).
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// Network address of the cluster's /24 (prefix length 24).
    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(BENCH_NET) + self.subnet * 256)
    }

    /// Host `i`; panics when out of range, like slice indexing.
    pub fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(host) => host,
            None => panic!("host {i} of a {}-host cluster", self.hosts.len()),
        }
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Every namespace of the cluster (switch first).
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.switch_ns.clone()).chain(self.hosts.iter().map(|h| h.ns.clone())).collect()
    }

    /// Changes host `i`'s rate (both directions) while the cluster runs; `None` removes the
    /// shaping.
    pub fn set_rate(&mut self, i: usize, rate_mbit: Option<u32>) -> anyhow::Result<()> {
        let Some(host) = self.hosts.get(i).cloned() else { bail!("no host {i}") };
        let link = LinkSpec { rate_mbit, mtu: host.link.mtu };
        link.validate()?;
        let sw = self.switch_ns.clone();
        match link.tbf() {
            Some(tbf) => {
                apply_tbf(&host.ns, HOST_IF, &tbf)?;
                apply_tbf(&sw, &host.port(), &tbf)?;
            }
            None if host.link.rate_mbit.is_some() => {
                sh("tc", &["-n", &host.ns, "qdisc", "del", "dev", HOST_IF, "root"])?;
                sh("tc", &["-n", &sw, "qdisc", "del", "dev", &host.port(), "root"])?;
            }
            None => {}
        }
        if let Some(h) = self.hosts.get_mut(i) {
            h.link = link;
        }
        Ok(())
    }

    /// Takes host `i`'s link down (`ip link set eth0 down` inside the host) or brings it up
    /// again: the veth stays, so nothing reaches or leaves the host while it is down, and
    /// its shaping (the qdisc) and address come back with it.
    pub fn set_link_up(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let Some(host) = self.hosts.get(i) else { bail!("no host {i}") };
        sh("ip", &["-n", &host.ns, "link", "set", HOST_IF, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// The root qdisc of host `i`'s `eth0` as `tc qdisc show` prints it (shaped links show
    /// `qdisc tbf ... rate <R>Mbit`).
    pub fn root_qdisc(&self, i: usize) -> anyhow::Result<String> {
        let Some(host) = self.hosts.get(i) else { bail!("no host {i}") };
        sh("tc", &["-n", &host.ns, "qdisc", "show", "dev", HOST_IF, "root"])
    }

    /// One TCP stream from host `from` to host `to` for `seconds`, measured at the receiver
    /// (what iperf3 reports as received bits per second), with the workspace's `netprobe`
    /// binary on both ends: nothing to install. Port 5201 on `to`.
    pub fn tcp_stream(&self, from: usize, to: usize, seconds: f64) -> anyhow::Result<TcpResult> {
        let netprobe = crate::workspace_bin("netprobe")?;
        let (client, server) = (self.host(from), self.host(to));
        let bind = format!("{}:5201", server.addr());
        let mut server_cmd = server.command(&netprobe);
        server_cmd.args(["serve", &bind]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut server_child = NsChild::spawn(&mut server_cmd)?;
        let mut first_line = String::new();
        if let Some(stdout) = server_child.stdout.take() {
            // `serve` prints one line once bound, or exits (EOF) when it cannot bind.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            first_line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        }
        if first_line.trim() != "listening" {
            let mut stderr = String::new();
            if let Some(mut err) = server_child.stderr.take() {
                let _ = server_child.kill();
                let _ = err.read_to_string(&mut stderr);
            }
            bail!("`{}` did not start listening within 10 s: {}", server_child.description(), stderr.trim());
        }
        let timeout = Duration::from_secs_f64(seconds + 40.0);
        let output = run_checked(client.command(&netprobe).args(["send", &bind, &format!("{seconds}")]), timeout)?;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("netprobe send printed no JSON report")?;
        let received_bps = report["received_bps"].as_f64().with_context(|| format!("no received_bps in {report}"))?;
        let received_bytes =
            report["received_bytes"].as_u64().with_context(|| format!("no received_bytes in {report}"))?;
        let retransmits = report["retransmits"].as_u64().unwrap_or(0);
        let _ = server_child.stop(Duration::from_secs(2));
        Ok(TcpResult { received_bps, received_bytes, retransmits })
    }

    /// Whether host `from` reaches host `to`: a four-byte TCP exchange ([`Self::tcp_stream`]
    /// of zero seconds), what `ping` checked.
    pub fn reaches(&self, from: usize, to: usize) -> anyhow::Result<bool> {
        Ok(self.tcp_stream(from, to, 0.0)?.received_bytes == 4)
    }

    /// Removes the cluster now and reports every failure (dropping it does the same but can
    /// only print failures to stderr).
    pub fn teardown(mut self) -> anyhow::Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> anyhow::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        // 1. Processes still inside: SIGKILL them and wait until they are gone.
        for ns in &self.created_ns {
            if let Err(e) = kill_ns_processes(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        // 2. Veth pairs and bridge, synchronously (namespace destruction is asynchronous).
        let sw = self.switch_ns.clone();
        for port in self.created_ports.drain(..).rev() {
            if let Err(e) = sh("ip", &["-n", &sw, "link", "del", &port]) {
                errors.push(format!("{e:#}"));
            }
        }
        if std::mem::take(&mut self.bridge_created)
            && let Err(e) = sh("ip", &["-n", &sw, "link", "del", BRIDGE])
        {
            errors.push(format!("{e:#}"));
        }
        // 3. The namespaces.
        for ns in self.created_ns.drain(..).rev() {
            if let Err(e) = sh("ip", &["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        live_set(|set| set.remove(&self.name));
        self.subnet_lock = None;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down netns cluster {}: {}", self.name, errors.join("; "))
        }
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            let _ = writeln!(std::io::stderr(), "warning: {e:#}");
        }
    }
}

fn apply_tbf(ns: &str, dev: &str, tbf: &TbfParams) -> anyhow::Result<()> {
    let mut args = vec!["-n".to_string(), ns.to_string()];
    args.extend(tbf.tc_args(dev));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("tc", &args)?;
    Ok(())
}

fn validate_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("namespace prefix {prefix:?} must be non-empty ASCII letters, digits or '_'");
    }
    Ok(())
}

/// Claims a free /24 (index into [`BENCH_NET`]) with an exclusive flock.
fn claim_subnet(pid: u32, seq: u32) -> anyhow::Result<(u32, Flock<File>)> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let start = pid.wrapping_mul(2_654_435_761).wrapping_add(seq.wrapping_mul(97)) % SUBNETS;
    for k in 0..SUBNETS {
        let index = (start + k) % SUBNETS;
        let path = format!("{LOCK_DIR}/subnet-{index}.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok((index, lock)),
            Err((_, Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => return Err(e).with_context(|| format!("flock {path}")),
        }
    }
    bail!("all {SUBNETS} subnets of 198.18.0.0/15 are in use by live clusters")
}

/// SIGKILLs every process inside namespace `ns` and waits until none is left.
fn kill_ns_processes(ns: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids: Vec<i32> =
            sh("ip", &["netns", "pids", ns])?.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {pids:?} still in namespace {ns} {KILL_WAIT:?} after SIGKILL");
        }
        for pid in pids {
            if pid > 0 && pid != std::process::id() as i32 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: i32) -> bool {
    pid > 0 && !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list_namespaces() -> anyhow::Result<Vec<String>> {
    Ok(sh("ip", &["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// Removes leftovers of crashed runs: namespaces `<prefix>-<pid>-<seq>-...` whose creating
/// process `pid` is gone (or is this process but has no such live cluster). Kills processes
/// still inside them, deletes their links and the namespaces; returns the namespaces removed.
pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    validate_prefix(prefix)?;
    let me = std::process::id();
    let mut stale = Vec::new();
    for ns in list_namespaces()? {
        let Some(rest) = ns.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else { continue };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(seq), Some(_role)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), seq.parse::<u32>()) else { continue };
        let cluster = format!("{prefix}-{rest}");
        let cluster = cluster.rsplit_once('-').map_or(cluster.as_str(), |(c, _)| c).to_string();
        let dead = match i32::try_from(pid) {
            Ok(p) => !pid_alive(p),
            Err(_) => true,
        };
        let orphan_of_mine = pid == me && !live_set(|set| set.contains(&cluster));
        if dead || orphan_of_mine {
            stale.push(ns);
        }
    }
    let mut errors = Vec::new();
    // Switches first: deleting their ports removes the hosts' ends too.
    stale.sort_by_key(|ns| !ns.ends_with("-sw"));
    for ns in &stale {
        let result = kill_ns_processes(ns).and_then(|()| {
            if ns.ends_with("-sw") {
                let links = sh("ip", &["-n", ns, "-o", "link", "show"])?;
                for link in links.lines().filter_map(|l| l.split(':').nth(1)) {
                    let link = link.trim().split('@').next().unwrap_or("");
                    if !link.is_empty() && link != "lo" {
                        sh("ip", &["-n", ns, "link", "del", link])?;
                    }
                }
            }
            sh("ip", &["netns", "del", ns]).map(drop)
        });
        if let Err(e) = result {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("removing stale namespaces: {}", errors.join("; "));
    }
    Ok(stale)
}
