//! The demo's cluster: certificates, one scheduler, one daemon per node and the S3 endpoint,
//! every one a process of the demo's executable ([`super::roles`]), either on loopback with
//! rate limits (the default: no root needed) or on shaped network-namespace hosts from
//! [`store_tests::netns`] (`--netns`).
//!
//! How each node's 200 Mbit/s NIC is emulated:
//! - loopback: the daemon's `--max-egress-rate` limits what it sends to peers, and the S3
//!   endpoint has one paced listener per node for what the node downloads from S3
//!   ([`super::pace`]). Peer traffic a node receives is limited by its senders' egress only.
//! - netns: `tbf` on each host's link, both directions (as in `cluster-bench`); the S3
//!   endpoint runs in a host of its own with an unshaped link, like S3 that is never the
//!   bottleneck.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

use store_tests::cluster::{PEER_PORT, SCHEDULER_PORT, node_id};
use store_tests::netns::{LinkSpec, NetnsCluster, NsChild};
use store_tests::s3_server::{TEST_ACCESS_KEY, TEST_SECRET_KEY};

use super::roles::{NodeFlags, SchedulerFlags};

/// TCP port of the S3 endpoint in its netns host.
const S3_PORT: u16 = 9000;
/// The bucket holding the model.
pub const BUCKET: &str = "demo";

/// What to start.
#[derive(Clone, Debug)]
pub struct FabricSpec {
    /// Daemons, node-0 .. node-(nodes-1).
    pub nodes: usize,
    pub rate_mbit: u32,
    pub netns: bool,
    pub mtu: u32,
    /// Each daemon's byte budget.
    pub capacity: u64,
    /// The executable that plays the roles.
    pub exe: PathBuf,
    pub log: String,
}

/// A running cluster; processes stop (SIGKILL) before the namespaces go.
#[derive(Debug)]
pub struct Fabric {
    daemons: Vec<NsChild>,
    scheduler: Option<NsChild>,
    s3: Option<NsChild>,
    spec: FabricSpec,
    dir: tempfile::TempDir,
    s3_endpoints: Vec<String>,
    net: Option<NetnsCluster>,
}

/// `n` distinct free loopback ports. The sockets are held until all are chosen, so the
/// kernel cannot hand out one port twice; another program may still take one before the
/// daemon binds it, which [`Fabric::start_with_retries`] covers.
fn free_ports(n: usize, udp: bool) -> anyhow::Result<Vec<u16>> {
    let mut udp_held = Vec::new();
    let mut tcp_held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        if udp {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            ports.push(s.local_addr()?.port());
            udp_held.push(s);
        } else {
            let s = std::net::TcpListener::bind("127.0.0.1:0")?;
            ports.push(s.local_addr()?.port());
            tcp_held.push(s);
        }
    }
    Ok(ports)
}

/// The last lines of a process's log, for an error message.
fn log_tail(logs: &Path, name: &str) -> String {
    let path = logs.join(format!("{name}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    format!("{}: {}", path.display(), lines[lines.len().saturating_sub(3)..].join(" | "))
}

impl Fabric {
    /// [`Fabric::start`], again up to twice if it fails (on loopback a port chosen free may
    /// have been taken by another program in between).
    pub fn start_with_retries(spec: FabricSpec, logs: &Path) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start(spec.clone(), logs) {
                Ok(f) => return Ok(f),
                Err(e) if attempt < 3 && !spec.netns => {
                    tracing::warn!(error = %format!("{e:#}"), attempt, "cluster start failed; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts everything and waits until every daemon is registered with the scheduler.
    pub fn start(spec: FabricSpec, logs: &Path) -> anyhow::Result<Self> {
        if spec.nodes < 2 {
            bail!("the demo needs at least 2 nodes (a source and a receiver)");
        }
        let dir = tempfile::Builder::new().prefix("store-demo").tempdir()?;
        std::fs::create_dir_all(dir.path().join("s3").join(BUCKET))?;
        std::fs::create_dir_all(logs)?;
        let certs = dir.path().join("certs");
        store_client::tls::init_ca(&certs)?;
        store_client::tls::issue(&certs, "scheduler", &certs)?;
        for i in 0..spec.nodes {
            store_client::tls::issue(&certs, &node_id(i), &certs)?;
        }
        let net = if spec.netns {
            // Hosts 0..nodes are the nodes; the last host serves S3 over an unshaped link.
            let mut links = vec![LinkSpec::shaped(spec.rate_mbit, spec.mtu); spec.nodes];
            links.push(LinkSpec::unshaped(spec.mtu));
            Some(NetnsCluster::with_links(links)?)
        } else {
            None
        };
        let mut fabric =
            Self { daemons: Vec::new(), scheduler: None, s3: None, spec, dir, s3_endpoints: Vec::new(), net };

        // Addresses.
        let (sched_addr, peer_addrs, s3_listen) = match &fabric.net {
            Some(net) => {
                let host = |i: usize| IpAddr::V4(net.host(i).addr());
                let s3 = SocketAddr::new(host(fabric.spec.nodes), S3_PORT);
                (
                    SocketAddr::new(host(0), SCHEDULER_PORT),
                    (0..fabric.spec.nodes).map(|i| SocketAddr::new(host(i), PEER_PORT)).collect::<Vec<_>>(),
                    vec![s3; fabric.spec.nodes],
                )
            }
            None => {
                let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
                let udp = free_ports(fabric.spec.nodes + 1, true)?;
                let tcp = free_ports(fabric.spec.nodes, false)?;
                let peers = udp[1..].iter().map(|&p| SocketAddr::new(lo, p)).collect();
                let s3 = tcp.iter().map(|&p| SocketAddr::new(lo, p)).collect();
                (SocketAddr::new(lo, udp[0]), peers, s3)
            }
        };
        fabric.s3_endpoints = s3_listen.iter().map(|a| format!("http://{a}")).collect();

        // S3 endpoint: in netns one unpaced listener in its own host; on loopback one paced
        // listener per node.
        let mut cmd = fabric.command(fabric.s3_host(), "s3", logs)?;
        cmd.arg("role-s3").arg("--root").arg(fabric.dir.path().join("s3"));
        let mut unique = s3_listen.clone();
        unique.dedup();
        for a in &unique {
            cmd.arg("--listen").arg(a.to_string());
        }
        if fabric.net.is_none() {
            cmd.arg("--rate").arg(fabric.spec.bytes_per_second().to_string());
        }
        cmd.env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY);
        fabric.s3 = Some(NsChild::spawn(&mut cmd)?);

        let mut cmd = fabric.command(0, "scheduler", logs)?;
        let flags = SchedulerFlags { listen: sched_addr, cert_dir: certs.clone(), log: fabric.spec.log.clone() };
        cmd.arg("role-scheduler").args(flags.argv());
        fabric.scheduler = Some(NsChild::spawn(&mut cmd)?);

        for (i, peer) in peer_addrs.iter().enumerate() {
            let mut cmd = fabric.command(i, &node_id(i), logs)?;
            let flags = NodeFlags {
                socket: fabric.socket(i),
                capacity: fabric.spec.capacity,
                node_id: node_id(i),
                listen: *peer,
                scheduler: sched_addr,
                cert_dir: certs.clone(),
                // On loopback the daemon's egress limit is the node's NIC toward peers.
                max_egress_rate: fabric.net.is_none().then(|| fabric.spec.bytes_per_second()),
                log: fabric.spec.log.clone(),
            };
            cmd.arg("role-node").args(flags.argv()).envs(fabric.s3_env(i));
            fabric.daemons.push(NsChild::spawn(&mut cmd)?);
        }
        for i in 0..fabric.spec.nodes {
            fabric.wait_socket(i, logs)?;
        }
        fabric.wait_s3(&unique, logs)?;
        fabric.wait_registered(Duration::from_secs(30))?;
        Ok(fabric)
    }

    pub fn nodes(&self) -> usize {
        self.spec.nodes
    }

    pub fn is_netns(&self) -> bool {
        self.net.is_some()
    }

    fn s3_host(&self) -> usize {
        if self.net.is_some() { self.spec.nodes } else { 0 }
    }

    /// Directory of the S3 endpoint's buckets.
    pub fn s3_root(&self) -> PathBuf {
        self.dir.path().join("s3")
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.sock", node_id(i)))
    }

    pub fn client(&self, i: usize) -> anyhow::Result<StoreClient> {
        StoreClient::connect(self.socket(i)).with_context(|| format!("connecting to {}", node_id(i)))
    }

    /// Environment for anything on node `i` that talks to S3 (daemon, downloader, runner).
    pub fn s3_env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            (store_client::s3::ENDPOINT_ENV, self.s3_endpoints[i].clone()),
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// A command running the demo's executable on host `i` (inside its namespace with
    /// `--netns`), stderr appended to `logs/NAME.log` so that it never garbles the terminal.
    pub fn command(&self, i: usize, name: &str, logs: &Path) -> anyhow::Result<Command> {
        let mut cmd = match &self.net {
            Some(net) => net.host(i).command(&self.spec.exe),
            None => Command::new(&self.spec.exe),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .with_context(|| format!("opening the log of {name}"))?;
        cmd.stdin(Stdio::null()).stderr(log).env("RUST_BACKTRACE", "0");
        Ok(cmd)
    }

    fn wait_socket(&mut self, i: usize, logs: &Path) -> anyhow::Result<()> {
        let socket = self.socket(i);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = self.daemons[i].try_wait()? {
                bail!("{} exited during start-up ({status}); {}", node_id(i), log_tail(logs, &node_id(i)));
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{} did not listen on {}", node_id(i), socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn wait_s3(&mut self, listeners: &[SocketAddr], logs: &Path) -> anyhow::Result<()> {
        let start = Instant::now();
        for addr in listeners {
            loop {
                let up = match &self.net {
                    // The root namespace cannot reach the hosts: ask from inside.
                    Some(net) => net
                        .host(self.spec.nodes)
                        .command("bash")
                        .arg("-c")
                        .arg(format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()))
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success()),
                    None => std::net::TcpStream::connect(addr).is_ok(),
                };
                if up {
                    break;
                }
                if let Some(s3) = self.s3.as_mut()
                    && let Some(status) = s3.try_wait()?
                {
                    bail!("the S3 endpoint exited during start-up ({status}); {}", log_tail(logs, "s3"));
                }
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("the S3 endpoint did not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn wait_registered(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(nodes) = self.client(0).and_then(|c| Ok(c.nodes()?))
                && nodes.len() >= self.spec.nodes
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("fewer than {} nodes registered with the scheduler within {limit:?}", self.spec.nodes);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `check` every 50 ms until it returns true or `limit` passes.
    pub fn wait_until(&self, limit: Duration, check: impl FnMut() -> bool) -> bool {
        store_tests::wait_until(limit, check)
    }
}

impl FabricSpec {
    pub fn bytes_per_second(&self) -> u64 {
        u64::from(self.rate_mbit) * 1_000_000 / 8
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Processes first: a namespace lives as long as a process is inside it.
        self.daemons.clear();
        self.scheduler = None;
        self.s3 = None;
    }
}
