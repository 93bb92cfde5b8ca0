//! A whole cluster for tests and benches: certificates from a fresh CA, a `store-scheduler`
//! and one `store-daemon` per emulated host (network namespaces from [`crate::netns`]),
//! each daemon's unix socket reachable from the test process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

use crate::netns::{LinkSpec, NetnsCluster, NsChild};
use crate::workspace_bin;

pub const SCHEDULER_PORT: u16 = 7700;
pub const PEER_PORT: u16 = 7701;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// One link per host; host 0 also runs the scheduler.
    pub links: Vec<LinkSpec>,
    /// Each daemon's capacity, e.g. "2GiB".
    pub capacity: String,
    /// Scheduler lease in milliseconds.
    pub lease_ms: u64,
    /// Extra daemon arguments for every host.
    pub daemon_args: Vec<String>,
    /// Log filter of the daemons and the scheduler.
    pub log: String,
    /// Extra environment of every daemon (e.g. S3 credentials).
    pub daemon_env: Vec<(String, String)>,
    /// Extra daemon arguments per host (index = host), after `daemon_args`: labels,
    /// resources.
    pub host_args: Vec<Vec<String>>,
    /// Extra scheduler arguments.
    pub scheduler_args: Vec<String>,
}

impl ClusterSpec {
    pub fn new(hosts: usize, link: LinkSpec) -> Self {
        Self {
            links: vec![link; hosts],
            capacity: "2GiB".into(),
            lease_ms: 3000,
            daemon_args: Vec::new(),
            log: "warn".into(),
            daemon_env: Vec::new(),
            host_args: Vec::new(),
            scheduler_args: Vec::new(),
        }
    }
}

/// A running cluster. Processes die before the namespaces are removed.
#[derive(Debug)]
pub struct TestCluster {
    daemons: Vec<Option<NsChild>>,
    scheduler: Option<NsChild>,
    spec: ClusterSpec,
    dir: tempfile::TempDir,
    net: NetnsCluster,
}

pub fn node_id(i: usize) -> String {
    format!("node-{i}")
}

impl TestCluster {
    /// Creates the hosts, certificates, scheduler and daemons, and waits until every
    /// daemon is registered.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        let net = NetnsCluster::with_links(spec.links.clone())?;
        let dir = tempfile::Builder::new().prefix("store-cluster").tempdir()?;
        let certs = dir.path().join("certs");
        store_client::tls::init_ca(&certs)?;
        store_client::tls::issue(&certs, "scheduler", &certs)?;
        for i in 0..net.len() {
            store_client::tls::issue(&certs, &node_id(i), &certs)?;
        }
        let mut cluster = Self { daemons: Vec::new(), scheduler: None, spec, dir, net };
        cluster.start_scheduler()?;
        for i in 0..cluster.net.len() {
            let child = cluster.spawn_daemon(i, &cluster.certs_dir(), &node_id(i), &[])?;
            cluster.daemons.push(Some(child));
        }
        for i in 0..cluster.net.len() {
            cluster.wait_socket(i)?;
        }
        cluster.wait_registered(cluster.net.len(), Duration::from_secs(20))?;
        Ok(cluster)
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn net(&self) -> &NetnsCluster {
        &self.net
    }

    pub fn len(&self) -> usize {
        self.net.len()
    }

    pub fn is_empty(&self) -> bool {
        self.net.is_empty()
    }

    pub fn scheduler_addr(&self) -> SocketAddr {
        SocketAddr::new(self.net.host(0).addr().into(), SCHEDULER_PORT)
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.sock", node_id(i)))
    }

    pub fn client(&self, i: usize) -> anyhow::Result<StoreClient> {
        StoreClient::connect(self.socket(i)).with_context(|| format!("connecting to {}", node_id(i)))
    }

    /// Starts (or restarts) the scheduler on host 0.
    pub fn start_scheduler(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.net.host(0).command(workspace_bin("store-scheduler")?);
        cmd.arg("--listen")
            .arg(self.scheduler_addr().to_string())
            .arg("--cert-dir")
            .arg(self.certs_dir())
            .arg("--name")
            .arg("scheduler")
            .arg("--lease-ms")
            .arg(self.spec.lease_ms.to_string())
            .args(&self.spec.scheduler_args)
            .env("STORE_LOG", &self.spec.log)
            .stdin(Stdio::null());
        self.scheduler = Some(NsChild::spawn(&mut cmd)?);
        Ok(())
    }

    /// Kills the scheduler (SIGKILL).
    pub fn kill_scheduler(&mut self) {
        self.scheduler = None;
    }

    /// Spawns a daemon on host `i` under `node` with the certificates in `certs`.
    pub fn spawn_daemon(&self, i: usize, certs: &Path, node: &str, extra: &[&str]) -> anyhow::Result<NsChild> {
        let host = self.net.host(i);
        let socket = self.dir.path().join(format!("{node}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = host.command(workspace_bin("store-daemon")?);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--capacity")
            .arg(&self.spec.capacity)
            .arg("--node-id")
            .arg(node)
            .arg("--listen")
            .arg(SocketAddr::new(host.addr().into(), PEER_PORT).to_string())
            .arg("--scheduler")
            .arg(self.scheduler_addr().to_string())
            .arg("--cert-dir")
            .arg(certs)
            .arg("--heartbeat-ms")
            .arg((self.spec.lease_ms / 4).max(50).to_string())
            .args(&self.spec.daemon_args)
            .args(self.spec.host_args.get(i).into_iter().flatten())
            .args(extra)
            .envs(self.spec.daemon_env.iter().map(|(k, v)| (k, v)))
            .env("STORE_LOG", &self.spec.log)
            .stdin(Stdio::null());
        NsChild::spawn(&mut cmd)
    }

    /// The environment of daemons started from now on.
    pub fn set_daemon_env(&mut self, env: Vec<(String, String)>) {
        self.spec.daemon_env = env;
    }

    /// Replaces daemon `i` with one started with `extra` arguments.
    pub fn restart_daemon(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        self.daemons[i] = None;
        let child = self.spawn_daemon(i, &self.certs_dir(), &node_id(i), extra)?;
        self.daemons[i] = Some(child);
        self.wait_socket(i)
    }

    /// Kills daemon `i` (SIGKILL).
    pub fn kill_daemon(&mut self, i: usize) {
        self.daemons[i] = None;
    }

    /// Stops daemon `i` with SIGTERM and returns its exit status.
    pub fn stop_daemon(&mut self, i: usize, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        match self.daemons[i].take() {
            Some(child) => child.stop(grace),
            None => bail!("{} is not running", node_id(i)),
        }
    }

    fn wait_socket(&self, i: usize) -> anyhow::Result<()> {
        let socket = self.socket(i);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{} did not listen on {}", node_id(i), socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits until the scheduler lists `n` nodes (asked through daemon 0).
    pub fn wait_registered(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(nodes) = self.client(0).and_then(|c| Ok(c.nodes()?))
                && nodes.len() >= n
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("fewer than {n} nodes registered within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `check` every 50 ms until it returns true or `limit` passes.
    pub fn wait_until(&self, limit: Duration, check: impl FnMut() -> bool) -> bool {
        crate::wait_until(limit, check)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.daemons.clear();
        self.scheduler = None;
    }
}
