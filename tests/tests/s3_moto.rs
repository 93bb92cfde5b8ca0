//! S3 compatibility against a second, independent S3 implementation: moto's server (PyPI
//! `moto[server]`), started by each test on a free loopback port beside the embedded
//! endpoint of `tests/s3.rs`. Real daemon processes and `storectl`: ingest, ranged reads,
//! push (single part and multipart), and the errors. Objects stay small (moto serves about
//! 0.25 Gbit/s); what moto does differently is listed in `store_tests::moto`.
//!
//! Source objects are stored with a plain SDK `PutObject` and pushed objects read back with a
//! plain SDK `GetObject` (not the engine's reader or writer); the request log of the server
//! shows the engine's ranged GETs.

use std::time::Duration;

use store_client::ErrorCode;
use store_client::client::PullS3Options;
use store_client::s3::{MIN_PART_SIZE, S3Error, S3Reader, S3Url};
use store_tests::moto::{self, MotoServer};
use store_tests::{DaemonProcess, payload};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const BUCKET: &str = "bucket";

/// moto with `BUCKET`, or `None` after reporting the skip when `moto_server` is missing.
#[track_caller]
fn start_moto() -> Option<MotoServer> {
    if !moto::available() {
        return None;
    }
    Some(MotoServer::start(&[BUCKET]).expect("moto_server starts"))
}

fn daemon_for(moto: &MotoServer, extra: &[(&str, String)]) -> DaemonProcess {
    let mut env = moto.env();
    env.push((store_client::s3::MAX_ATTEMPTS_ENV, "3".into()));
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.clone()));
    }
    DaemonProcess::start_with_env("1GiB", &[], &env).expect("daemon starts")
}

/// `storectl ARGS` against `daemon` with `env`; (success, stdout, stderr).
fn storectl(env: &[(&str, String)], daemon: &DaemonProcess, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(store_tests::workspace_bin("storectl").expect("storectl is built"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("storectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("a JSON report")
}

fn url(key: &str) -> S3Url {
    S3Url { bucket: BUCKET.into(), key: key.into() }
}

/// BLAKE3 of what the daemon maps for `name`.
fn mapped_digest(daemon: &DaemonProcess, name: &str) -> blake3::Hash {
    let client = daemon.client().expect("client");
    let guard = client.get(name, Duration::ZERO).expect("the object is stored");
    blake3::hash(&guard)
}

#[test]
fn pulls_of_sizes_around_the_part_size_match_what_was_uploaded() {
    let Some(moto) = start_moto() else { return };
    let daemon = daemon_for(&moto, &[]);
    let client = daemon.client().unwrap();
    let part = MIN_PART_SIZE as usize; // 64 KiB: the smallest ranged GET the engine makes
    for (i, len) in [0, 1, part - 1, part, part + 1, 3 * MIB + 7].into_iter().enumerate() {
        let data = payload(len, 40 + i as u64);
        let key = format!("sizes/{len}.bin");
        let etag = moto.put(BUCKET, &key, &data).unwrap();
        let opts = PullS3Options { part_size: Some(part as u64), concurrency: Some(4), ..Default::default() };
        let name = format!("sizes/{len}");
        let p = client.pull_s3(&format!("s3://{BUCKET}/{key}"), &name, opts).unwrap();
        assert_eq!(p.info.size, len as u64);
        assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes(), "len {len}");
        assert_eq!(mapped_digest(&daemon, &name), blake3::hash(&data), "len {len}");
        assert_eq!((p.origin.etag.as_str(), p.retries), (etag.as_str(), 0), "len {len}");
        // One ranged GET per part (none for an empty object), each answered 206.
        let gets = moto.count_requests("GET", &format!("/{BUCKET}/{key}"), 206);
        assert_eq!(gets, len.div_ceil(part), "ranged GETs of {len} bytes:\n{}", moto.log());
    }

    // An object stored with a CRC32 checksum (what current SDKs send by default, in an
    // aws-chunked trailer): moto keeps it and names the algorithm on every GET, ranged ones
    // included; the engine's client validates no response checksum and reads it like any other.
    let data = payload(MIB + 11, 48);
    let put = moto
        .reader()
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("crc.bin")
        .checksum_algorithm("CRC32".into())
        .body(data.clone().into())
        .send();
    assert!(moto.block_on(put).unwrap().checksum_crc32().is_some(), "moto stored no CRC32");
    let opts = PullS3Options { part_size: Some(256 * KIB as u64), concurrency: Some(4), ..Default::default() };
    let p = client.pull_s3("s3://bucket/crc.bin", "crc", opts).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());
    assert_eq!(moto.count_requests("GET", "/bucket/crc.bin", 206), 5);

    // The same through `storectl pull`.
    let data = payload(2 * MIB + 3, 49);
    moto.put(BUCKET, "cli.bin", &data).unwrap();
    let (ok, stdout, stderr) = storectl(
        &moto.env(),
        &daemon,
        &["--json", "pull", "s3://bucket/cli.bin", "--name", "cli", "--part-size", "128KiB", "--concurrency", "3"],
    );
    assert!(ok, "pull failed: {stderr}");
    let report = json(&stdout);
    assert_eq!(report["digest"].as_str(), Some(blake3::hash(&data).to_hex().as_str()), "{report}");
    assert_eq!(mapped_digest(&daemon, "cli"), blake3::hash(&data));
    assert_eq!(moto.count_requests("GET", "/bucket/cli.bin", 206), 17);
}

#[test]
fn ranged_reads_cover_a_multi_mib_object_in_many_parts() {
    let Some(moto) = start_moto() else { return };
    let data = payload(8 * MIB + 5, 50);
    moto.put(BUCKET, "big.bin", &data).unwrap();

    // The engine in this process: 65 ranged GETs of 128 KiB, 8 in flight.
    let config = store_client::s3::S3Config { part_size: 128 * KIB as u64, concurrency: 8, ..moto.config() };
    let (got, stats) =
        moto.block_on(async { S3Reader::new(config).await?.download_to_vec(&url("big.bin")).await }).unwrap();
    assert!(got == data, "downloaded bytes differ");
    assert_eq!((stats.parts, stats.retries), (65, 0), "{stats:?}");
    assert_eq!(moto.count_requests("GET", "/bucket/big.bin", 206), 65);
    eprintln!("engine: 8 MiB from moto in {:?} (65 parts)", stats.elapsed);

    // The daemon straight into its memfd, with its own flags: 17 ranged GETs of 512 KiB, 6 in
    // flight.
    let args = ["--s3-part-size", "512KiB", "--s3-concurrency", "6"];
    let daemon = DaemonProcess::start_with_env("1GiB", &args, &moto.env()).unwrap();
    let p = daemon.client().unwrap().pull_s3("s3://bucket/big.bin", "big", PullS3Options::default()).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());
    assert_eq!(mapped_digest(&daemon, "big"), blake3::hash(&data));
    assert_eq!(moto.count_requests("GET", "/bucket/big.bin", 206), 65 + 17);
    eprintln!("daemon: 8 MiB from moto in {:.3} s (17 parts)", p.download_seconds);
}

#[test]
fn an_object_replaced_during_a_pull_is_detected_by_if_match() {
    let Some(moto) = start_moto() else { return };
    moto.put(BUCKET, "k", &payload(8 * MIB, 60)).unwrap();
    let daemon = daemon_for(&moto, &[]);
    let client = daemon.client().unwrap();
    // 128 ranged GETs one after the other: the pull takes far longer than the replacement.
    let opts = PullS3Options { part_size: Some(MIN_PART_SIZE), concurrency: Some(1), ..Default::default() };
    std::thread::scope(|scope| {
        let pull = scope.spawn(|| client.pull_s3("s3://bucket/k", "k", opts));
        assert!(
            store_tests::wait_until(Duration::from_secs(20), || moto.count_requests("GET", "/bucket/k", 206) >= 3),
            "the pull made no ranged GETs:\n{}",
            moto.log()
        );
        moto.put(BUCKET, "k", b"replaced").unwrap();
        let e = pull.join().unwrap().unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::OriginFailed), "{e}");
        assert!(e.to_string().contains("changed during the download"), "{e}");
    });
    // moto refused the GET after the replacement with 412 (If-Match), it did not serve the
    // new bytes.
    assert!(moto.count_requests("GET", "/bucket/k", 412) >= 1, "{}", moto.log());
    assert!(client.list().unwrap().is_empty(), "something was bound: {:?}", client.list().unwrap());
}

#[test]
fn pushes_single_part_and_multipart_read_back_independently() {
    let Some(moto) = start_moto() else { return };
    let daemon = daemon_for(&moto, &[]);
    let client = daemon.client().unwrap();
    let env = moto.env();
    // (name, size, --part-size, multipart, parts)
    let cases: [(&str, usize, &str, bool, u64); 4] = [
        ("empty", 0, "8MiB", false, 1),
        ("single", MIB + 3, "8MiB", false, 1),
        ("multi", 12 * MIB + 7, "5MiB", true, 3),
        // 1 MiB parts would be refused by moto at completion (EntityTooSmall): raised to 5 MiB.
        ("raised", 11 * MIB, "1MiB", true, 3),
    ];
    for (i, (name, len, part_size, multipart, parts)) in cases.into_iter().enumerate() {
        let data = payload(len, 70 + i as u64);
        client.put(name, &data).unwrap();
        let target = format!("s3://bucket/up/{name}");
        let (ok, stdout, stderr) =
            storectl(&env, &daemon, &["--json", "push", name, &target, "--part-size", part_size]);
        assert!(ok, "push of {name} failed: {stderr}");
        let report = json(&stdout);
        assert_eq!(report["multipart"], multipart, "{report}");
        assert_eq!(report["parts"], parts, "{report}");
        let stored = moto.get(BUCKET, &format!("up/{name}")).unwrap();
        assert_eq!(stored.len(), len, "{name}");
        assert!(stored == data, "{name}: the object in moto differs");
        let etag = moto.etag(BUCKET, &format!("up/{name}")).unwrap().unwrap();
        assert_eq!(report["etag"].as_str(), Some(etag.as_str()), "{name}");
        if multipart {
            // An S3 multipart ETag: MD5 of the part MD5s, then `-<parts>`.
            assert!(etag.trim_matches('"').ends_with(&format!("-{parts}")), "{name}: {etag}");
        }
    }
    assert_eq!(moto.open_uploads().unwrap(), Vec::<String>::new());

    // A fresh daemon pulls the multipart object back: the same BLAKE3.
    let fresh = daemon_for(&moto, &[]);
    let p = fresh.client().unwrap().pull_s3("s3://bucket/up/multi", "multi", PullS3Options::default()).unwrap();
    assert_eq!(p.info.digest, client.stat("multi").unwrap().digest);
    assert_eq!(mapped_digest(&fresh, "multi"), mapped_digest(&daemon, "multi"));
}

#[test]
fn missing_keys_and_buckets_are_clear_errors_and_leave_nothing() {
    let Some(moto) = start_moto() else { return };
    moto.put(BUCKET, "k", &payload(MIB, 80)).unwrap();
    let daemon = daemon_for(&moto, &[]);
    let client = daemon.client().unwrap();

    let e = client.pull_s3("s3://bucket/missing", "obj", PullS3Options::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("s3://bucket/missing does not exist"), "{e}");
    let e = client.pull_s3("s3://nobucket/k", "obj", PullS3Options::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("bucket `nobucket` does not exist"), "{e}");
    let (ok, _, stderr) = storectl(&moto.env(), &daemon, &["pull", "s3://bucket/missing", "--name", "obj"]);
    assert!(!ok && stderr.contains("s3://bucket/missing does not exist"), "{stderr}");
    assert!(client.list().unwrap().is_empty(), "something was bound: {:?}", client.list().unwrap());

    // The engine's reader names the error precisely too (moto's HEAD 404 has no body).
    moto.block_on(async {
        let reader = S3Reader::new(moto.config()).await.unwrap();
        let e = reader.head(&url("missing")).await.unwrap_err();
        assert!(matches!(e, S3Error::NoSuchKey { .. }), "{e}");
        let e = reader.head(&S3Url { bucket: "nobucket".into(), key: "k".into() }).await.unwrap_err();
        assert!(matches!(e, S3Error::NoSuchBucket { ref bucket } if bucket == "nobucket"), "{e}");
    });

    // Pushes to a missing bucket, multipart-sized and single-part: the bucket is named, and
    // no multipart upload is left anywhere (nor a bucket created).
    client.put("large", &payload(12 * MIB, 81)).unwrap();
    client.put("small", &payload(KIB, 82)).unwrap();
    for name in ["large", "small"] {
        let (ok, _, stderr) = storectl(&moto.env(), &daemon, &["push", name, "s3://nobucket/k", "--part-size", "5MiB"]);
        assert!(!ok);
        assert!(stderr.contains("bucket `nobucket` does not exist"), "{name}: {stderr}");
    }
    assert_eq!(moto.buckets().unwrap(), vec![BUCKET.to_owned()]);
    assert_eq!(moto.open_uploads().unwrap(), Vec::<String>::new());
}

#[test]
fn an_upload_aborted_on_the_server_fails_the_push_and_leaves_nothing() {
    let Some(moto) = start_moto() else { return };
    let daemon = daemon_for(&moto, &[]);
    daemon.client().unwrap().put("obj", &payload(32 * MIB, 90)).unwrap();
    let mut env = moto.env();
    env.push((store_client::s3::MAX_ATTEMPTS_ENV, "3".into()));
    // 7 parts of 5 MiB one after the other (about a second against moto); the upload is
    // aborted from outside once its first part is in.
    std::thread::scope(|scope| {
        let push = scope.spawn(|| {
            storectl(
                &env,
                &daemon,
                &["push", "obj", "s3://bucket/aborted", "--part-size", "5MiB", "--concurrency", "1"],
            )
        });
        assert!(
            store_tests::wait_until(Duration::from_secs(20), || moto.count_requests("PUT", "/bucket/aborted", 200)
                >= 1),
            "no part was uploaded:\n{}",
            moto.log()
        );
        assert_eq!(moto.abort_uploads(BUCKET).unwrap(), 1);
        let (ok, stdout, stderr) = push.join().unwrap();
        assert!(!ok, "the push succeeded: {stdout}");
        // moto answers UploadPart to the aborted upload with 500 (AWS: 404 NoSuchUpload),
        // which the engine retries as a server error until it gives up.
        eprintln!("push to an aborted upload: {}", stderr.trim());
        assert!(stderr.contains("pushing `obj` to s3://bucket/aborted"), "{stderr}");
        let gave_up = stderr.contains("failed after 3 attempts") && stderr.contains("HTTP 500");
        assert!(gave_up || stderr.contains("NoSuchUpload"), "{stderr}");
    });
    assert_eq!(moto.etag(BUCKET, "aborted").unwrap(), None, "a failed upload created the object");
    assert_eq!(moto.open_uploads().unwrap(), Vec::<String>::new());
}

#[test]
fn wrong_credentials_are_refused_and_nothing_is_stored() {
    if !moto::available() {
        return;
    }
    // By default moto accepts any credentials; with authentication switched on it checks
    // the access key and the SigV4 signature of every request.
    let moto = MotoServer::start_with_auth(&[BUCKET]).expect("moto_server starts");
    let data = payload(6 * MIB, 100);
    moto.put(BUCKET, "k", &data).unwrap();
    let good = daemon_for(&moto, &[]);
    let p = good.client().unwrap().pull_s3("s3://bucket/k", "k", PullS3Options::default()).unwrap();
    assert_eq!(p.info.digest.unwrap().0, *blake3::hash(&data).as_bytes());

    let wrong_secret = [("AWS_SECRET_ACCESS_KEY", "wrong".to_owned())];
    let unknown_key = [("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000".to_owned())];
    for (what, extra) in [("wrong secret", &wrong_secret), ("unknown key", &unknown_key)] {
        let daemon = daemon_for(&moto, extra);
        let client = daemon.client().unwrap();
        let e = client.pull_s3("s3://bucket/k", "k", PullS3Options::default()).unwrap_err();
        eprintln!("pull with {what}: {e}");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{what}: {e}");
        assert!(e.to_string().contains("denied"), "{what}: {e}");
        assert!(client.list().unwrap().is_empty(), "{what}: something was bound");

        // A push with the same credentials (from the good daemon's object), multipart-sized.
        let mut env = moto.env();
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra.iter().cloned());
        let (ok, _, stderr) = storectl(&env, &good, &["push", "k", "s3://bucket/pushed", "--part-size", "5MiB"]);
        assert!(!ok, "{what}: the push succeeded");
        eprintln!("push with {what}: {}", stderr.trim());
        assert!(stderr.contains("denied"), "{what}: {stderr}");
    }
    assert_eq!(moto.etag(BUCKET, "pushed").unwrap(), None);
    assert_eq!(moto.open_uploads().unwrap(), Vec::<String>::new());
}
