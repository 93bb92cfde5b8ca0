//! Operations: the systemd units (checked by systemd's own tools), readiness over
//! `$NOTIFY_SOCKET`, graceful SIGTERM, and the Prometheus metrics, scraped and queried by a
//! real Prometheus server while a daemon replicates. Tests that need a tool the machine
//! lacks (systemd-analyze, promtool, prometheus: Debian's `systemd` and `prometheus`) report
//! a skip (`./run-tests` installs them); multi-host tests need root as in `cluster.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use store_client::ErrorCode;
use store_tests::cluster::{ClusterSpec, TestCluster, node_id};
use store_tests::netns::{Host, LinkSpec, NsChild, requires_root};
use store_tests::payload;
use store_tests::{DaemonProcess, workspace_bin};

const MIB: usize = 1 << 20;

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn systemd_dir() -> PathBuf {
    repo_dir().join("systemd")
}

/// Whether `program` is installed; reports a skip ([`store_tests::skip`]) if not.
#[track_caller]
fn requires_tool(program: &str, package: &str) -> bool {
    store_tests::skip::requires_program(program, package)
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// `GET path` over plain HTTP/1.1; returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no header end in {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// The value of the sample `series` (name with labels, exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `promtool check metrics` on an exposition; returns its complaints (empty if none).
fn promtool_check(exposition: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { complaints.trim().to_owned() } else { format!("exit {}: {complaints}", out.status) }
}

// ---------------------------------------------------------------------------------------
// The units
// ---------------------------------------------------------------------------------------

const UNITS: [&str; 3] = ["store-daemon.service", "store-scheduler.service", "s2t-runner@.service"];

/// Copies the units into `dir` with `/usr/local/bin/NAME` pointing at the binaries this
/// build made (systemd-analyze checks that ExecStart= is executable).
fn units_with_built_binaries(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|unit| {
            let mut text = std::fs::read_to_string(systemd_dir().join(unit)).unwrap();
            for bin in ["store-daemon", "store-scheduler", "s2t-runner"] {
                let built = workspace_bin(bin).unwrap_or_else(|_| PathBuf::from("/bin/true"));
                text = text.replace(&format!("/usr/local/bin/{bin}"), &built.to_string_lossy());
            }
            let path = dir.join(unit);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_a_warning() {
    if !requires_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binaries(dir.path());
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no", "--generators=no"]).args(&units).output().unwrap();
    // verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);
}

#[test]
fn every_unit_is_hardened_by_systemd_analyze_security() {
    if !requires_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in units_with_built_binaries(dir.path()) {
        // Exposure 0 (locked down) to 10 (unprotected); 2.0 is the top of systemd's "OK".
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let overall = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("no overall line");
        assert!(out.status.success(), "{}: {overall}\n{}", unit.display(), String::from_utf8_lossy(&out.stderr));
        eprintln!("{overall}");
    }
}

#[test]
fn sysusers_and_tmpfiles_entries_apply_to_a_fresh_root() {
    if !requires_tool("systemd-sysusers", "systemd") || !requires_tool("systemd-tmpfiles", "systemd") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{cmd:?}: {}\n{said}", out.status);
    };
    run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_dir().join("sysusers.d/store.conf")));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let gid_of_store = group.lines().find_map(|l| l.strip_prefix("store:x:")).unwrap().split(':').next().unwrap();
    for user in ["store", "s2t-runner"] {
        let entry = passwd.lines().find(|l| l.starts_with(&format!("{user}:"))).unwrap();
        // Primary group `store`: the daemon admits clients by their primary group.
        assert_eq!(entry.split(':').nth(3), Some(gid_of_store), "{entry}");
    }

    let tmpfiles = || {
        let mut cmd = Command::new("systemd-tmpfiles");
        cmd.arg(format!("--root={}", root.path().display()))
            .arg("--create")
            .arg(systemd_dir().join("tmpfiles.d/store.conf"));
        cmd
    };
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        run(&mut tmpfiles());
    } else {
        // Without root the directories are made but cannot be given to `store`: every
        // error must be that refused chown, and ownership is checked only as root.
        let out = tmpfiles().output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        let other: Vec<&str> =
            said.lines().filter(|l| !(l.starts_with("fchownat()") && l.ends_with("Operation not permitted"))).collect();
        assert!(other.is_empty(), "systemd-tmpfiles as uid {}: {}\n{said}", nix::unistd::geteuid(), out.status);
        store_tests::skip::skip("the tmpfiles entries' owner group is checked only as root (chown needs it)");
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for (dir, mode) in [("etc/store/certs", 0o750), ("etc/store/s2t-runner", 0o750), ("var/lib/s2t-runner", 0o750)] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{dir}");
        if as_root {
            assert_eq!(meta.gid().to_string(), gid_of_store, "{dir} belongs to group store");
        }
    }
}

/// Every `[env: NAME=` of `BIN --help` appears in the unit's environment file.
fn env_file_names_every_flag(bin: &str, env_file: &str) {
    let help = Command::new(workspace_bin(bin).unwrap()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let vars: Vec<&str> = help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).collect();
    assert!(vars.len() >= 5, "no env variables found in `{bin} --help`:\n{help}");
    let file = std::fs::read_to_string(systemd_dir().join("env").join(env_file)).unwrap();
    let missing: Vec<&&str> = vars.iter().filter(|v| !file.contains(&format!("{v}="))).collect();
    assert!(missing.is_empty(), "{env_file} lacks {missing:?}");
}

#[test]
fn environment_files_name_every_flag() {
    env_file_names_every_flag("store-daemon", "store-daemon.env");
    env_file_names_every_flag("store-scheduler", "store-scheduler.env");
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

/// A daemon started with `NOTIFY_SOCKET` pointing at a datagram socket of the test.
struct NotifiedDaemon {
    child: std::process::Child,
    socket: PathBuf,
    notify: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl NotifiedDaemon {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("store-notify").tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let socket = dir.path().join("store.sock");
        let child = Command::new(workspace_bin("store-daemon").unwrap())
            .arg("--socket")
            .arg(&socket)
            .args(["--capacity", "64MiB"])
            .args(extra)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("STORE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, socket, notify, _dir: dir }
    }

    /// The next notification datagram, as text.
    fn next_message(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).expect("no notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < limit, "the daemon did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NotifiedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ready_is_sent_only_once_the_daemon_accepts_and_stopping_on_sigterm() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut daemon = NotifiedDaemon::start(&["--metrics-addr", &metrics_addr]);
    let ready = daemon.next_message();
    // Connect at once: READY=1 must mean "accepting", with nothing left to bind.
    let connected = UnixStream::connect(&daemon.socket);
    let scraped = http_get(metrics_addr.parse().unwrap(), "/metrics");
    assert!(ready.lines().any(|l| l == "READY=1"), "first notification: {ready:?}");
    assert!(connected.is_ok(), "READY=1 came before the socket accepted: {connected:?}");
    assert_eq!(scraped.unwrap().0, 200, "READY=1 came before /metrics was served");
    let client = store_client::StoreClient::connect(&daemon.socket).unwrap();
    client.put("a", b"hello").unwrap();

    daemon.sigterm();
    let stopping = daemon.next_message();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "notification after SIGTERM: {stopping:?}");
    let status = daemon.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!daemon.socket.exists(), "the socket file outlived the daemon");
}

#[test]
fn sigterm_answers_waiting_clients_shutting_down_and_exits_0() {
    let daemon = DaemonProcess::start("64MiB", &[]).unwrap();
    let socket = daemon.socket().to_path_buf();
    let client = daemon.client().unwrap();
    client.put("kept", &payload(MIB, 1)).unwrap();
    let waiter = std::thread::spawn(move || {
        let c = store_client::StoreClient::connect(socket).unwrap();
        let started = Instant::now();
        let err = c.get("never-put", Duration::from_secs(60)).map(|_| ()).unwrap_err();
        (err, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let socket = daemon.socket().to_path_buf();
    let status = daemon.terminate().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let (err, took) = waiter.join().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::ShuttingDown), "{err}");
    assert!(took < Duration::from_secs(10), "the waiting get took {took:?}");
    assert!(!socket.exists());
    // The client that only held a connection learns it on its next request.
    assert!(client.stat("kept").is_err());
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[test]
fn local_puts_show_in_the_metrics_and_promtool_accepts_the_exposition() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let daemon = DaemonProcess::start("64MiB", &["--metrics-addr", &addr.to_string()]).unwrap();
    let client = daemon.client().unwrap();
    client.put("one", &payload(3 * MIB, 2)).unwrap();
    client.put("two", &payload(MIB, 3)).unwrap();
    let guard = client.get("one", Duration::ZERO).unwrap();
    let (status, text) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let want = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    want("store_transfer_bytes_total{direction=\"in\",source=\"local\"}", (4 * MIB) as f64);
    want("store_transfer_bytes_total{direction=\"in\",source=\"peer\"}", 0.0);
    want("store_transfers_total{source=\"local\"}", 2.0);
    want("store_transfer_duration_seconds_count{source=\"local\"}", 2.0);
    want("store_objects", 2.0);
    want("store_used_bytes", (4 * MIB) as f64);
    want("store_capacity_bytes", (64 * MIB) as f64);
    want("store_leases", 1.0);
    want("store_client_connections", 1.0);
    want("store_evictions_total", 0.0);
    drop(guard);
    assert_eq!(http_get(addr, "/nothing-here").unwrap().0, 404);
    if requires_tool("promtool", "prometheus") {
        assert_eq!(promtool_check(&text), "", "promtool check metrics");
    }
}

#[test]
fn the_scheduler_serves_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    store_client::tls::init_ca(dir.path()).unwrap();
    store_client::tls::issue(dir.path(), "scheduler", dir.path()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let quic = format!("127.0.0.1:{}", free_port());
    let mut child = NsChild::spawn(
        Command::new(workspace_bin("store-scheduler").unwrap())
            .args(["--listen", &quic, "--metrics-addr", &addr.to_string(), "--cert-dir"])
            .arg(dir.path())
            .env("STORE_LOG", "warn")
            .stdin(Stdio::null()),
    )
    .unwrap();
    let start = Instant::now();
    let text = loop {
        match http_get(addr, "/metrics") {
            Ok((200, text)) => break text,
            _ if start.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("no metrics from the scheduler: {other:?}"),
        }
    };
    for series in [
        "store_scheduler_nodes_alive",
        "store_scheduler_objects_tracked",
        "store_scheduler_lookups_total",
        "store_scheduler_placements_total",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
    if requires_tool("promtool", "prometheus") {
        assert_eq!(promtool_check(&text), "", "promtool check metrics");
    }
    assert!(child.try_wait().unwrap().is_none());
    let status = child.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A Prometheus server inside `host`, scraping `targets` every second.
struct PrometheusServer {
    _child: NsChild,
    host: Host,
    _dir: tempfile::TempDir,
}

const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

impl PrometheusServer {
    fn start(host: &Host, targets: &[String]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("store-prometheus").tempdir()?;
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: store\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let check = Command::new("promtool").arg("check").arg("config").arg(&config_path).output()?;
        anyhow::ensure!(check.status.success(), "promtool check config: {}", String::from_utf8_lossy(&check.stderr));
        let mut cmd = host.command("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = NsChild::spawn(&mut cmd)?;
        let server = Self { _child: child, host: host.clone(), _dir: dir };
        let start = Instant::now();
        while server.curl(&format!("http://{PROMETHEUS_ADDR}/-/ready"), &[]).is_err() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "prometheus not ready within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// `curl -sf URL ARGS..` inside the host's namespace.
    fn curl(&self, url: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.host.command("curl").args(["-sSf", "--max-time", "5", url]).args(args).output()?;
        anyhow::ensure!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }

    /// An instant PromQL query through the HTTP API: `(labels, value)` per series.
    fn query(&self, expr: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let body = self
            .curl(&format!("http://{PROMETHEUS_ADDR}/api/v1/query"), &["--data-urlencode", &format!("query={expr}")])?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        anyhow::ensure!(v["status"] == "success", "query {expr}: {body}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect())
    }

    /// The largest value `expr` returns (over its series), or 0 if it returns none.
    fn max(&self, expr: &str) -> f64 {
        self.query(expr).unwrap().iter().map(|(_, v)| *v).fold(0.0, f64::max)
    }
}

#[test]
fn prometheus_scrapes_a_replicating_daemon_and_sees_the_transfer_rate() {
    if !requires_root() || !requires_tool("prometheus", "prometheus") || !requires_tool("curl", "curl") {
        return;
    }
    // 80 Mbit/s links: 64 MiB take about 7 s, several scrapes and rate windows.
    let mut spec = ClusterSpec::new(2, LinkSpec::shaped(80, 1500));
    spec.daemon_args = vec!["--metrics-addr".into(), "0.0.0.0:9701".into()];
    let cluster = TestCluster::start(spec).unwrap();
    let receiver = cluster.net().host(1).clone();
    let sender_target = format!("{}:9701", cluster.net().host(0).addr());
    let prometheus = PrometheusServer::start(&receiver, &["127.0.0.1:9701".into(), sender_target.clone()]).unwrap();
    let start = Instant::now();
    while prometheus.max("sum(up)") < 2.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "targets not up: {:?}", prometheus.query("up"));
        std::thread::sleep(Duration::from_millis(250));
    }

    let data = payload(64 * MIB, 7);
    cluster.client(0).unwrap().put("models/weights.bin", &data).unwrap();
    let client = cluster.client(0).unwrap();
    let replicating = std::thread::spawn(move || {
        client.replicate("models/weights.bin", Some(vec![node_id(1)]), Duration::from_secs(120), true)
    });

    let rate_in = "rate(store_transfer_bytes_total{source=\"peer\",direction=\"in\"}[5s])";
    let rate_out = "rate(store_transfer_bytes_total{source=\"peer\",direction=\"out\"}[5s])";
    let (mut peak_in, mut peak_out, mut exposition) = (0.0f64, 0.0f64, String::new());
    let mut in_flight_seen = 0.0f64;
    while !replicating.is_finished() {
        peak_in = peak_in.max(prometheus.max(rate_in));
        peak_out = peak_out.max(prometheus.max(rate_out));
        in_flight_seen = in_flight_seen.max(prometheus.max("store_chunks_in_flight{direction=\"in\"}"));
        if exposition.is_empty() && peak_in > 0.0 {
            // A scrape of the receiver mid-transfer, for promtool.
            exposition = prometheus.curl("http://127.0.0.1:9701/metrics", &[]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let outcome = replicating.join().unwrap().unwrap();
    assert!(outcome[0].result.is_ok(), "{outcome:?}");
    let took = outcome[0].result.as_ref().unwrap().seconds;
    eprintln!(
        "transfer {:.1} s; PromQL peak {rate_in} = {:.1} MB/s, {rate_out} = {:.1} MB/s; chunks in flight up to {in_flight_seen}",
        took,
        peak_in / 1e6,
        peak_out / 1e6
    );
    assert!(took > 3.0, "the transfer was too short ({took:.1} s) to be watched");
    assert!(peak_in > 1e6, "no inbound peer transfer rate seen while replicating");
    assert!(peak_out > 1e6, "no outbound peer transfer rate seen on the sender");
    // The link is 80 Mbit/s = 10 MB/s: the observed rate cannot be far above it.
    assert!(peak_in < 20e6, "rate {peak_in} above what the link carries");

    // After the transfer: one completed pull, its bytes, its throughput in the histogram.
    std::thread::sleep(Duration::from_millis(2500));
    let bytes =
        prometheus.max("store_transfer_bytes_total{source=\"peer\",direction=\"in\",instance=\"127.0.0.1:9701\"}");
    assert_eq!(bytes, (64 * MIB) as f64);
    assert_eq!(prometheus.max("store_transfers_total{source=\"peer\",instance=\"127.0.0.1:9701\"}"), 1.0);
    let throughput = prometheus.max(
        "histogram_quantile(0.5, store_transfer_throughput_bytes_per_second_bucket{source=\"peer\",instance=\"127.0.0.1:9701\"})",
    );
    assert!((1e6..20e6).contains(&throughput), "median throughput {throughput}");
    assert_eq!(prometheus.max(&format!("store_objects{{instance=\"{sender_target}\"}}")), 1.0);
    assert!(!exposition.is_empty(), "no mid-transfer scrape");
    assert_eq!(promtool_check(&exposition), "", "promtool check metrics");
}

#[test]
fn sigterm_during_a_transfer_exits_0_seals_nothing_partial_and_peers_see_a_clean_error() {
    if !requires_root() {
        return;
    }
    // 40 Mbit/s: 48 MiB take about 10 s.
    let mut cluster = TestCluster::start(ClusterSpec::new(3, LinkSpec::shaped(40, 1500))).unwrap();
    let data = payload(48 * MIB, 9);
    cluster.client(0).unwrap().put("big", &data).unwrap();

    // 1. The receiver (node 1) is stopped mid-pull: its waiting client gets ShuttingDown,
    //    it exits 0 and never announces a complete copy.
    let socket = cluster.socket(1);
    let getter = std::thread::spawn(move || {
        let c = store_client::StoreClient::connect(socket).unwrap();
        c.get("big", Duration::from_secs(60)).map(|_| ()).unwrap_err()
    });
    std::thread::sleep(Duration::from_secs(2));
    let stopped = Instant::now();
    let status = cluster.stop_daemon(1, Duration::from_secs(40)).unwrap();
    let drain = stopped.elapsed();
    assert_eq!(status.code(), Some(0), "receiver: {status}");
    let err = getter.join().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::ShuttingDown), "{err}");
    assert!(drain < Duration::from_secs(10), "the receiver took {drain:?} to drain");
    let holders = cluster.client(0).unwrap().locate("big").unwrap();
    assert!(
        holders.iter().all(|l| l.node != node_id(1) || !l.is_complete()),
        "the stopped receiver is listed as a complete holder: {holders:?}"
    );

    // 2. The source (node 0) is stopped while node 2 pulls from it: it exits 0 after its
    //    chunk uploads under way finish; node 2's pull fails with a clear error and seals
    //    nothing.
    let socket = cluster.socket(2);
    let getter = std::thread::spawn(move || {
        let c = store_client::StoreClient::connect(socket).unwrap();
        let started = Instant::now();
        (c.get("big", Duration::from_secs(60)).map(|_| ()).unwrap_err(), started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = cluster.stop_daemon(0, Duration::from_secs(40)).unwrap();
    assert_eq!(status.code(), Some(0), "source: {status}");
    let (err, took) = getter.join().unwrap();
    assert!(
        matches!(err.code(), Some(ErrorCode::ClusterUnavailable | ErrorCode::NotFound | ErrorCode::Timeout)),
        "the receiver's get failed with {err} ({:?})",
        err.code()
    );
    eprintln!("receiver's get after the source stopped: {err} after {took:?}");
    let c2 = cluster.client(2).unwrap();
    assert_eq!(c2.stat("big").unwrap_err().code(), Some(ErrorCode::NotFound), "a partial object is visible");
    assert!(c2.list().unwrap().iter().all(|o| o.name != "big"));
}
