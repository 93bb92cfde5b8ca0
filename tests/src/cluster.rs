//! A whole cluster for tests and benches: certificates from a fresh CA, a `store-scheduler`
//! and one `store-daemon` per emulated host (network namespaces from [`crate::netns`]),
//! each daemon's unix socket reachable from the test process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

use crate::netns::{LinkSpec, NetnsCluster, NsChild, describe};
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
    /// Where the processes' output goes: `None` inherits this process's stderr; `Some(dir)`
    /// appends each process's stdout and stderr to `dir/node-<i>.log` or
    /// `dir/scheduler.log`, one file per role across restarts (each start adds a `===` line).
    pub log_dir: Option<PathBuf>,
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
            log_dir: None,
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
        self.log_output(&mut cmd, "scheduler")?;
        self.scheduler = Some(NsChild::spawn(&mut cmd)?);
        Ok(())
    }

    /// Kills the scheduler (SIGKILL).
    pub fn kill_scheduler(&mut self) {
        self.scheduler = None;
    }

    /// Kills the scheduler (SIGKILL), waits `pause` and starts a new one on host 0 with an
    /// empty table: the daemons find out (`UnknownNode`) and register again.
    pub fn restart_scheduler(&mut self, pause: Duration) -> anyhow::Result<()> {
        self.kill_scheduler();
        std::thread::sleep(pause);
        self.start_scheduler()
    }

    /// Processes of the cluster that exited although nobody stopped them (a crash, a
    /// panic), with their exit status. Each is reported once: its guard is dropped.
    pub fn exited_by_themselves(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (i, slot) in self.daemons.iter_mut().enumerate() {
            if let Some(child) = slot
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push(format!("{} exited: {status}", node_id(i)));
                *slot = None;
            }
        }
        if let Some(child) = &mut self.scheduler
            && let Ok(Some(status)) = child.try_wait()
        {
            exited.push(format!("the scheduler exited: {status}"));
            self.scheduler = None;
        }
        exited
    }

    /// Whether daemon `i` has a process (started and not killed or stopped since).
    pub fn daemon_running(&self, i: usize) -> bool {
        self.daemons.get(i).is_some_and(Option::is_some)
    }

    /// Whether the scheduler has a process (started and not killed since).
    pub fn scheduler_running(&self) -> bool {
        self.scheduler.is_some()
    }

    /// The log file of `role` (`node-<i>` or `scheduler`) when [`ClusterSpec::log_dir`] is set.
    pub fn log_path(&self, role: &str) -> Option<PathBuf> {
        self.spec.log_dir.as_ref().map(|dir| dir.join(format!("{role}.log")))
    }

    /// Sends `cmd`'s output to the log file of `role`, if the spec asks for files.
    fn log_output(&self, cmd: &mut std::process::Command, role: &str) -> anyhow::Result<()> {
        let Some(path) = self.log_path(role) else { return Ok(()) };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        writeln!(file, "=== {role} started at {:.3} (unix s): {}", since_epoch.as_secs_f64(), describe(cmd))?;
        cmd.stdout(file.try_clone()?).stderr(file);
        Ok(())
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
        self.log_output(&mut cmd, node)?;
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
