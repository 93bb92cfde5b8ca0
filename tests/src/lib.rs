//! Test harness of the workspace: starts real daemons as processes (the binary built by cargo
//! next to the test executable) and cleans them up even when a test fails; emulated hosts
//! in network namespaces ([`netns`], [`cluster`]), an embedded S3 endpoint ([`s3_server`])
//! and moto's ([`moto`]). The demo and the benches, which use it, are the `store-demo` crate.

pub mod cluster;
pub mod moto;
pub mod netns;
pub mod rng;
pub mod s3_server;
pub mod skip;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use store_client::StoreClient;

/// Path of a workspace binary built by the same cargo invocation as the running test.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let mut dir = exe.parent().context("test binary has no parent")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not built: run the workspace's tests with `cargo test --workspace`", path.display());
    }
    Ok(path)
}

/// A `store-daemon` process with its own socket in a temporary directory.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts a daemon with `capacity` bytes and extra `args`, and waits until it accepts.
    pub fn start(capacity: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(capacity, args, &[])
    }

    /// [`DaemonProcess::start`] with extra environment variables (e.g. S3 settings).
    pub fn start_with_env(capacity: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-test").tempdir()?;
        let socket = dir.path().join("store.sock");
        let child = Command::new(workspace_bin("store-daemon")?)
            .arg("--socket")
            .arg(&socket)
            .arg("--capacity")
            .arg(capacity)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("STORE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("spawning store-daemon")?;
        let mut daemon = Self { child, socket, dir };
        daemon.wait_ready(Duration::from_secs(20))?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("store-daemon exited during start-up: {status}");
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("store-daemon did not listen within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> anyhow::Result<StoreClient> {
        Ok(StoreClient::connect(&self.socket)?)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("store-daemon ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon running inside this process on its own runtime: the embedded local setup of
/// the demo. Stops on drop.
#[derive(Debug)]
pub struct EmbeddedDaemon {
    socket: PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl EmbeddedDaemon {
    pub fn start(capacity: u64) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-embedded").tempdir()?;
        let socket = dir.path().join("store.sock");
        let config = store_daemon::DaemonConfig::new(socket.clone(), capacity);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new().name("store-daemon".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match store_daemon::Daemon::bind(config) {
                    Ok(daemon) => {
                        let _ = ready_tx.send(Ok(()));
                        daemon.run(token).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                    }
                }
            });
        })?;
        ready_rx.recv().context("embedded daemon thread died")??;
        Ok(Self { socket, shutdown, thread: Some(thread), _dir: dir })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn client(&self) -> anyhow::Result<StoreClient> {
        Ok(StoreClient::connect(&self.socket)?)
    }
}

impl Drop for EmbeddedDaemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic incompressible-looking content (xorshift64), for tests and benches.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// Polls `check` every 50 ms until it returns true (then true) or `limit` passes (false).
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
