//! The S3 engine and the daemon's S3 ingest against the embedded S3-compatible endpoint,
//! started by each test on a free loopback port (never a mock).

use std::time::Duration;

use store_client::ErrorCode;
use store_client::client::PullS3Options;
use store_client::s3::{
    MIN_UPLOAD_PART_SIZE, S3Config, S3Error, S3Reader, S3Url, S3Writer, StaticCredentials, UploadStats,
};
use store_tests::DaemonProcess;
use store_tests::s3_server::TestS3;
use store_tests::verify::held_blake3;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn url(key: &str) -> S3Url {
    S3Url { bucket: TestS3::BUCKET.into(), key: key.into() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn download(config: S3Config, key: &str) -> Result<(Vec<u8>, store_client::s3::DownloadStats), S3Error> {
    runtime().block_on(async { S3Reader::new(config).await?.download_to_vec(&url(key)).await })
}

/// The error of a download that must fail (without printing the bytes of one that did not).
fn must_fail<T>(result: Result<T, S3Error>, what: &str) -> S3Error {
    match result {
        Ok(_) => panic!("{what}: the download succeeded"),
        Err(e) => e,
    }
}

fn fast_retries(mut c: S3Config) -> S3Config {
    c.max_attempts = 4;
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(100);
    c
}

#[test]
fn sizes_around_the_part_size_round_trip() {
    let s3 = TestS3::start().unwrap();
    let part = 256 * KIB;
    let config = S3Config { part_size: part as u64, concurrency: 4, ..s3.config() };
    for (i, len) in [0, 1, part - 1, part, part + 1, 3 * part + 7].into_iter().enumerate() {
        let data = pattern(len, i as u64);
        let key = format!("sizes/{len}.bin");
        s3.put(&key, &data).unwrap();
        let (got, stats) = download(config.clone(), &key).unwrap();
        assert_eq!(blake3::hash(&got), blake3::hash(&data), "len {len}");
        assert_eq!(stats.bytes, len as u64);
        assert_eq!(stats.parts, len.div_ceil(part) as u64, "len {len}");
    }
}

#[test]
fn a_100_mib_object_round_trips_with_the_defaults() {
    let s3 = TestS3::start().unwrap();
    let data = pattern(100 * MIB, 7);
    s3.put("big.bin", &data).unwrap();
    let (got, stats) = download(s3.config(), "big.bin").unwrap();
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
    assert_eq!(stats.retries, 0);
    eprintln!("100 MiB in {:?} ({:.2} Gbit/s)", stats.elapsed, stats.bytes_per_second() * 8.0 / 1e9);
}

#[test]
fn missing_bucket_key_and_bad_credentials_are_clear_errors() {
    let s3 = TestS3::start().unwrap();
    s3.put("k", b"x").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let reader = S3Reader::new(s3.config()).await.unwrap();
        let e = reader.head(&S3Url { bucket: "nope".into(), key: "k".into() }).await.unwrap_err();
        assert!(matches!(e, S3Error::NoSuchBucket { ref bucket } if bucket == "nope"), "{e}");
        let e = reader.head(&url("missing")).await.unwrap_err();
        assert!(matches!(e, S3Error::NoSuchKey { .. }), "{e}");
        assert!(e.to_string().contains("s3://bucket/missing"), "{e}");

        let wrong = S3Config {
            credentials: Some(StaticCredentials {
                access_key_id: "store-test-access".into(),
                secret_access_key: "wrong".into(),
            }),
            ..s3.config()
        };
        let e = S3Reader::new(wrong).await.unwrap().head(&url("k")).await.unwrap_err();
        assert!(matches!(e, S3Error::AccessDenied { .. }), "{e}");
        let unknown = S3Config {
            credentials: Some(StaticCredentials { access_key_id: "who".into(), secret_access_key: "x".into() }),
            ..s3.config()
        };
        let e = S3Reader::new(unknown).await.unwrap().head(&url("k")).await.unwrap_err();
        assert!(matches!(e, S3Error::AccessDenied { .. }), "{e}");
    });
}

#[test]
fn a_down_endpoint_is_reported_as_unreachable() {
    let mut s3 = TestS3::start().unwrap();
    let config = fast_retries(s3.config());
    s3.server.kill();
    let e = must_fail(download(config, "k"), "unreachable endpoint");
    assert!(matches!(e, S3Error::Unreachable { attempts: 4, .. }), "{e}");
}

#[test]
fn slow_down_answers_are_retried() {
    let s3 = TestS3::start().unwrap();
    let data = pattern(3 * MIB + 5, 3);
    s3.put("k", &data).unwrap();
    let config = S3Config { part_size: MIB as u64, concurrency: 2, ..fast_retries(s3.config()) };
    s3.server.faults().fail_next(3);
    let (got, _) = download(config.clone(), "k").unwrap();
    assert!(got == data);
    assert_eq!(s3.server.faults().served_503(), 3);
    s3.server.faults().fail_next_gets(3);
    let (got, stats) = download(config.clone(), "k").unwrap();
    assert!(got == data);
    assert_eq!(s3.server.faults().served_503(), 6);
    assert_eq!(stats.retries, 3, "{stats:?}");

    // Throttled beyond the attempts: a clear error.
    s3.server.faults().fail_next(1000);
    let e = must_fail(download(config, "k"), "endless 503");
    assert!(matches!(e, S3Error::GaveUp { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
}

#[test]
fn a_server_killed_mid_download_is_resumed_after_restart() {
    let mut s3 = TestS3::start().unwrap();
    let data = pattern(48 * MIB, 11);
    s3.put("k", &data).unwrap();
    s3.server.faults().set_block_delay(Duration::from_millis(40));
    let mut config = S3Config { part_size: 8 * MIB as u64, concurrency: 3, ..s3.config() };
    config.initial_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(400);
    let fetch = std::thread::spawn(move || download(config, "k"));
    std::thread::sleep(Duration::from_millis(150));
    s3.server.kill();
    std::thread::sleep(Duration::from_millis(300));
    s3.restart().unwrap();
    let (got, stats) = fetch.join().unwrap().unwrap();
    assert!(got == data, "content differs after resuming");
    assert!(stats.retries > 0, "{stats:?}");
}

#[test]
fn an_object_replaced_mid_download_is_detected() {
    let s3 = TestS3::start().unwrap();
    s3.put("k", &pattern(32 * MIB, 1)).unwrap();
    let replacement = pattern(32 * MIB, 2);
    // 32 parts, 2 at a time, 50 ms each: the download takes > 800 ms.
    s3.server.faults().set_block_delay(Duration::from_millis(50));
    let config = S3Config { part_size: MIB as u64, concurrency: 2, ..s3.config() };
    let fetch = std::thread::spawn(move || download(config, "k"));
    std::thread::sleep(Duration::from_millis(200));
    s3.put("k", &replacement).unwrap();
    let e = must_fail(fetch.join().unwrap(), "replaced object");
    assert!(matches!(e, S3Error::Changed { .. }), "{e}");
}

fn daemon_for(s3: &TestS3, extra: &[(&str, String)]) -> DaemonProcess {
    let mut env = s3.env();
    env.push(("STORE_S3_MAX_ATTEMPTS", "3".into()));
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.clone()));
    }
    DaemonProcess::start_with_env("1GiB", &[], &env).expect("daemon starts")
}

#[test]
fn storectl_pull_fills_seals_and_records_the_origin() {
    let s3 = TestS3::start().unwrap();
    let data = pattern(100 * MIB, 5);
    s3.put("models/m.bin", &data).unwrap();
    s3.put("empty", b"").unwrap();
    let daemon = daemon_for(&s3, &[]);
    let client = daemon.client().unwrap();
    let p = client.pull_s3("s3://bucket/models/m.bin", "m/model", PullS3Options::default()).unwrap();
    assert_eq!(p.info.size, data.len() as u64);
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());
    assert_eq!(p.origin.url, "s3://bucket/models/m.bin");
    let guard = client.get("m/model", Duration::ZERO).unwrap();
    assert!(guard[..] == data[..]);
    assert_eq!(client.origin("m/model").unwrap(), Some(p.origin.clone()));
    eprintln!("daemon pull of 100 MiB: download {:.3} s, total {:.3} s", p.download_seconds, p.total_seconds);

    // Small parts, every edge of the manifest's chunking.
    let opts = PullS3Options { part_size: Some(3 * MIB as u64), concurrency: Some(3), ..Default::default() };
    let p = client.pull_s3("s3://bucket/models/m.bin", "m/model-3mib-parts", opts).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());
    assert_eq!(held_blake3(&client, "m/model-3mib-parts").unwrap(), blake3::hash(&data).to_hex().as_str());
    let p = client.pull_s3("s3://bucket/empty", "empty", PullS3Options::default()).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(b"").as_bytes());
    assert_eq!(held_blake3(&client, "empty").unwrap(), blake3::hash(b"").to_hex().as_str());

    // The same name and content again is a no-op; an object put locally has no origin.
    client.pull_s3("s3://bucket/models/m.bin", "m/model", PullS3Options::default()).unwrap();
    client.put("local", b"abc").unwrap();
    assert_eq!(client.origin("local").unwrap(), None);
}

#[test]
fn failed_pulls_seal_nothing() {
    let mut s3 = TestS3::start().unwrap();
    s3.put("k", &pattern(16 * MIB, 9)).unwrap();
    let daemon = daemon_for(&s3, &[]);
    let client = daemon.client().unwrap();
    let pull = |url: &str| client.pull_s3(url, "obj", PullS3Options::default()).unwrap_err();

    let e = pull("s3://bucket/missing");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("s3://bucket/missing does not exist"), "{e}");
    let e = pull("s3://nobucket/k");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("bucket `nobucket` does not exist"), "{e}");
    let e = pull("not-a-url");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");

    s3.server.faults().fail_next(1000);
    let e = pull("s3://bucket/k");
    assert_eq!(e.code(), Some(ErrorCode::OriginFailed), "{e}");
    s3.server.faults().fail_next(0);

    // Replaced mid-download.
    let replacement = pattern(16 * MIB, 10);
    s3.server.faults().set_block_delay(Duration::from_millis(50));
    std::thread::scope(|scope| {
        let replace = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            s3.put("k", &replacement).unwrap();
        });
        let opts = PullS3Options { part_size: Some(MIB as u64), concurrency: Some(2), ..Default::default() };
        let e = client.pull_s3("s3://bucket/k", "obj", opts).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::OriginFailed), "{e}");
        assert!(e.to_string().contains("changed during the download"), "{e}");
        replace.join().unwrap();
    });
    s3.server.faults().set_block_delay(Duration::ZERO);

    let wrong = daemon_for(&s3, &[("AWS_SECRET_ACCESS_KEY", "wrong".into())]);
    let e = wrong.client().unwrap().pull_s3("s3://bucket/k", "obj", PullS3Options::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    assert!(wrong.client().unwrap().list().unwrap().is_empty());

    s3.server.kill();
    let e = pull("s3://bucket/k");
    assert_eq!(e.code(), Some(ErrorCode::OriginFailed), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");

    assert!(client.list().unwrap().is_empty(), "something was bound: {:?}", client.list().unwrap());
}

// ---------------------------------------------------------------------------------------
// Uploads: `storectl push` and the S3 writer
// ---------------------------------------------------------------------------------------

/// `storectl ARGS` against `daemon` with the endpoint's environment; (success, stdout, stderr).
fn storectl(s3: &TestS3, daemon: &DaemonProcess, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(store_tests::workspace_bin("storectl").expect("storectl is built"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .envs(s3.env())
        .output()
        .expect("storectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn upload(config: S3Config, key: &str, data: Vec<u8>) -> Result<UploadStats, S3Error> {
    runtime()
        .block_on(async { S3Writer::new(config).await?.upload(&url(key), bytes::Bytes::from(data), &|_, _| {}).await })
}

#[test]
fn storectl_push_round_trips_100_mib_through_s3() {
    let s3 = TestS3::start().unwrap();
    let daemon = daemon_for(&s3, &[]);
    let client = daemon.client().unwrap();
    let data = pattern(100 * MIB, 21);
    let digest = blake3::hash(&data);
    client.put("models/pushed.bin", &data).unwrap();

    let (ok, stdout, stderr) =
        storectl(&s3, &daemon, &["--json", "push", "models/pushed.bin", "s3://bucket/up/pushed.bin"]);
    assert!(ok, "push failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["multipart"], true, "{report}");
    assert_eq!(report["parts"], 13, "100 MiB in 8 MiB parts: {report}");
    eprintln!("push of 100 MiB: {:.3} s", report["seconds"].as_f64().unwrap_or_default());
    assert!(s3.read("up/pushed.bin").unwrap() == data, "the stored object differs");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // The ETag the upload reported is the one HEAD and GET give.
    let meta = runtime()
        .block_on(async { S3Reader::new(s3.config()).await.unwrap().head(&url("up/pushed.bin")).await.unwrap() });
    assert_eq!(report["etag"].as_str(), Some(meta.etag.as_str()));

    let (ok, stdout, stderr) =
        storectl(&s3, &daemon, &["--json", "pull", "s3://bucket/up/pushed.bin", "--name", "models/pulled.bin"]);
    assert!(ok, "pull failed: {stderr}");
    let pulled: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(pulled["digest"].as_str(), Some(digest.to_hex().as_str()), "{pulled}");
    let info = client.stat("models/pulled.bin").unwrap();
    assert_eq!(info.digest.unwrap().0, *digest.as_bytes());
    assert_eq!(held_blake3(&client, "models/pulled.bin").unwrap(), digest.to_hex().as_str());
}

#[test]
fn uploads_of_sizes_around_the_part_size_round_trip() {
    let s3 = TestS3::start().unwrap();
    let part = MIN_UPLOAD_PART_SIZE as usize;
    let config = S3Config { part_size: part as u64, concurrency: 3, ..s3.config() };
    for (i, len) in [0, 1, part - 1, part, part + 1, 3 * part + 7].into_iter().enumerate() {
        let data = pattern(len, 100 + i as u64);
        let key = format!("up/{len}.bin");
        let stats = upload(config.clone(), &key, data.clone()).unwrap();
        assert_eq!(stats.bytes, len as u64);
        assert_eq!(stats.multipart, len > part, "len {len}");
        assert_eq!(stats.parts, len.div_ceil(part).max(1) as u64, "len {len}");
        let (got, _) = download(config.clone(), &key).unwrap();
        assert_eq!(blake3::hash(&got), blake3::hash(&data), "len {len}");
    }
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // Parts below S3's 5 MiB minimum are raised to it (S3 would refuse them at completion).
    let small = S3Config { part_size: MIB as u64, ..s3.config() };
    let stats = upload(small, "up/raised.bin", pattern(12 * MIB, 3)).unwrap();
    assert_eq!((stats.part_size, stats.parts), (MIN_UPLOAD_PART_SIZE, 3));
}

#[test]
fn failed_uploads_are_clear_errors_and_leave_no_multipart_upload() {
    let s3 = TestS3::start().unwrap();
    let daemon = daemon_for(&s3, &[]);
    let client = daemon.client().unwrap();
    client.put("obj", &pattern(20 * MIB, 4)).unwrap();

    let (ok, _, stderr) = storectl(&s3, &daemon, &["push", "no/such/object", "s3://bucket/k"]);
    assert!(!ok);
    assert!(stderr.contains("cannot push `no/such/object`") && stderr.contains("NotFound"), "{stderr}");

    let (ok, _, stderr) = storectl(&s3, &daemon, &["push", "obj", "s3://nobucket/k"]);
    assert!(!ok);
    assert!(stderr.contains("bucket `nobucket` does not exist"), "{stderr}");
    let (ok, _, stderr) = storectl(&s3, &daemon, &["push", "obj", "s3://bucket/"]);
    assert!(!ok);
    assert!(stderr.contains("invalid S3 URL"), "{stderr}");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // Parts refused for longer than the retries last: the upload is aborted.
    let config = S3Config { part_size: MIN_UPLOAD_PART_SIZE, concurrency: 2, ..fast_retries(s3.config()) };
    s3.server.faults().fail_next_parts(1000);
    let e = upload(config.clone(), "up/refused.bin", pattern(12 * MIB, 5)).unwrap_err();
    assert!(matches!(e, S3Error::GaveUp { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert!(s3.open_uploads().is_empty(), "left behind: {:?}", s3.open_uploads());
    assert!(s3.read("up/refused.bin").is_err(), "a failed upload created the object");

    // A few refusals are retried from the same memory.
    s3.server.faults().fail_next_parts(2);
    let data = pattern(12 * MIB, 6);
    let stats = upload(config, "up/retried.bin", data.clone()).unwrap();
    assert_eq!(stats.retries, 2, "{stats:?}");
    assert!(s3.read("up/retried.bin").unwrap() == data);
    assert!(s3.open_uploads().is_empty());
}

#[test]
fn daemon_s3_flags_override_the_environment_and_metrics_count_parts() {
    let s3 = TestS3::start().unwrap();
    let data = pattern(24 * MIB, 8);
    s3.put("k", &data).unwrap();
    // The environment names an endpoint that does not answer; the flag wins.
    let dead = "http://127.0.0.1:9".to_string();
    let mut env = s3.env();
    env.retain(|(k, _)| *k != store_client::s3::ENDPOINT_ENV);
    env.push((store_client::s3::ENDPOINT_ENV, dead));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics_addr = format!("127.0.0.1:{port}");
    let endpoint = s3.endpoint();
    let args = [
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-region",
        "us-east-1",
        "--s3-path-style",
        "--s3-part-size",
        "4MiB",
        "--s3-concurrency",
        "2",
        "--metrics-addr",
        metrics_addr.as_str(),
    ];
    let daemon = DaemonProcess::start_with_env("1GiB", &args, &env).expect("daemon starts");
    let p = daemon.client().unwrap().pull_s3("s3://bucket/k", "k", PullS3Options::default()).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());
    assert_eq!(held_blake3(&daemon.client().unwrap(), "k").unwrap(), blake3::hash(&data).to_hex().as_str());
    let scrape = {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&metrics_addr).unwrap();
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    };
    // Counted once (per part as it landed), not again at the seal.
    let line = format!("store_transfer_bytes_total{{direction=\"in\",source=\"s3\"}} {}", data.len());
    assert!(scrape.contains(&line), "missing {line} in\n{scrape}");

    // A bad flag is refused at start-up.
    let bad = DaemonProcess::start_with_env("1GiB", &["--s3-concurrency", "0"], &s3.env());
    assert!(bad.is_err(), "a daemon started with --s3-concurrency 0");
}

#[test]
fn metrics_show_an_s3_download_while_it_runs() {
    let s3 = TestS3::start().unwrap();
    let data = pattern(32 * MIB, 12);
    s3.put("slow", &data).unwrap();
    // 8 parts of 4 MiB, one block each, 1 at a time, 300 ms per block: ~2.4 s.
    s3.server.faults().set_block_delay(Duration::from_millis(300));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics_addr = format!("127.0.0.1:{port}");
    let args = ["--s3-part-size", "4MiB", "--s3-concurrency", "1", "--metrics-addr", metrics_addr.as_str()];
    let daemon = DaemonProcess::start_with_env("1GiB", &args, &s3.env()).expect("daemon starts");
    let counted = || -> u64 {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&metrics_addr).unwrap();
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let prefix = "store_transfer_bytes_total{direction=\"in\",source=\"s3\"} ";
        text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let socket = daemon.socket().to_owned();
    let pull = std::thread::spawn(move || {
        store_client::StoreClient::connect(&socket).unwrap().pull_s3(
            "s3://bucket/slow",
            "slow",
            PullS3Options::default(),
        )
    });
    let mut seen_partial = false;
    while !pull.is_finished() {
        let n = counted();
        if n > 0 && n < data.len() as u64 {
            seen_partial = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pull.join().unwrap().unwrap();
    assert!(seen_partial, "the counter never showed a download under way");
    assert_eq!(counted(), data.len() as u64);
}
