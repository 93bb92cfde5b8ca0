//! The Speech2Text runner against a real daemon: a random model (s2t-small architecture,
//! 118 MB of weights) put under a prefix, transcribed from `store://` and from its directory
//! (identical transcripts), private memory of a store-backed runner below a tenth of the
//! weights, and two runners mapping one copy. With `--weights-digest` every runner reports the
//! BLAKE3 of the weight bytes it held, checked against the weights file's.

// Helpers outside #[test] functions panic on fixture errors too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use store_client::client::PutOptions;
use store_tests::verify::file_blake3;
use store_tests::{DaemonProcess, workspace_bin};

const PREFIX: &str = "models/s2t-small-random";

/// 16-bit mono 16 kHz WAV of a two-second chirp.
fn chirp_wav(path: &Path) {
    let rate = 16_000u32;
    let n = 2 * rate as usize;
    let mut pcm = Vec::with_capacity(2 * n);
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let phase = 2.0 * std::f64::consts::PI * (200.0 * t + 400.0 * t * t);
        pcm.extend_from_slice(&((0.4 * phase.sin() * 32767.0) as i16).to_le_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    b.extend_from_slice(&pcm);
    std::fs::write(path, b).unwrap();
}

fn runner() -> Command {
    Command::new(workspace_bin("s2t-runner").expect("s2t-runner binary"))
}

fn run_json(model: &str, audio: &Path, socket: &Path) -> Value {
    let out = runner()
        .args(["--model", model, "--audio"])
        .arg(audio)
        .args(["--json", "--max-length", "12", "--weights-digest"])
        .env("STORE_SOCKET", socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "runner failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Inodes of the memfd mappings of `pid` at least `min_len` long.
fn memfd_inodes(pid: u32, min_len: u64) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f[0].split_once('-')?;
            let len = u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?;
            (len >= min_len).then(|| f[4].parse().ok()).flatten()
        })
        .collect()
}

#[test]
fn store_and_directory_give_identical_transcripts_with_one_shared_copy() {
    let daemon = DaemonProcess::start("2GiB", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let status = runner().args(["gen-random", "--config", "small", "--out"]).arg(&model_dir).status().unwrap();
    assert!(status.success());
    let client = daemon.client().unwrap();
    for file in ["config.json", "model.safetensors", "vocab.json"] {
        client.put_file(&format!("{PREFIX}/{file}"), model_dir.join(file), PutOptions::default()).unwrap();
    }
    let weights = std::fs::metadata(model_dir.join("model.safetensors")).unwrap().len();
    let weights_blake3 = file_blake3(&model_dir.join("model.safetensors")).unwrap();
    let audio = dir.path().join("chirp.wav");
    chirp_wav(&audio);

    // Same transcript from both sources.
    let from_dir = run_json(model_dir.to_str().unwrap(), &audio, daemon.socket());
    let from_store = run_json(&format!("store://{PREFIX}"), &audio, daemon.socket());
    assert_eq!(from_dir["source_kind"], "dir");
    assert_eq!(from_store["source_kind"], "store");
    assert_eq!(from_dir["tokens"], from_store["tokens"]);
    assert_eq!(from_dir["transcript"], from_store["transcript"]);
    assert_eq!(from_store["random_weights"], true);
    assert_eq!(from_store["tensors_converted"].as_array().unwrap().len(), 0);
    // Each runner hashed the weight bytes it ran on: the file mapping, the store mapping.
    assert_eq!(from_dir["weights_blake3"].as_str(), Some(weights_blake3.as_str()));
    assert_eq!(from_store["weights_blake3"].as_str(), Some(weights_blake3.as_str()));

    // A store-backed runner adds less than a tenth of the weights in private memory, both
    // when ready and after inference has touched every weight.
    let limit = weights / 10;
    for key in ["memory_ready", "memory_after"] {
        let private = from_store[key]["private_bytes"].as_u64().unwrap();
        assert!(private < limit, "{key}: private {private} >= {limit} (weights {weights})");
    }

    // Two runners at once: two leases on the one object, and both map the same memfd.
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            runner()
                .args(["--model", &format!("store://{PREFIX}"), "--audio"])
                .arg(&audio)
                .args(["--json", "--max-length", "12", "--pause-when-ready", "--weights-digest"])
                .env("STORE_SOCKET", daemon.socket())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut readers = Vec::new();
    for child in &mut children {
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("READY "), "{line}");
        readers.push(reader);
    }
    let info = client.stat(&format!("{PREFIX}/model.safetensors")).unwrap();
    assert_eq!(info.leases, 2, "both runners hold the weights");
    let a = memfd_inodes(children[0].id(), weights);
    let b = memfd_inodes(children[1].id(), weights);
    assert_eq!(a.len(), 1, "runner 0 maps the weights once: {a:?}");
    assert_eq!(a, b, "both runners map the same memfd");
    let mut reports = Vec::new();
    for (child, mut reader) in children.iter_mut().zip(readers) {
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        assert!(child.wait().unwrap().success());
        reports.push(serde_json::from_str::<Value>(&rest).unwrap());
    }
    for r in &reports {
        assert_eq!(r["tokens"], from_dir["tokens"]);
        assert_eq!(r["weights_blake3"].as_str(), Some(weights_blake3.as_str()));
    }
    // Leases are returned when the runners exit.
    assert_eq!(client.stat(&format!("{PREFIX}/model.safetensors")).unwrap().leases, 0);
}

#[test]
fn s3_and_directory_give_identical_transcripts() {
    let s3 = store_tests::s3_server::TestS3::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let status = runner().args(["gen-random", "--config", "small", "--out"]).arg(&model_dir).status().unwrap();
    assert!(status.success());
    for file in ["config.json", "model.safetensors", "vocab.json"] {
        s3.put(&format!("models/small/{file}"), &std::fs::read(model_dir.join(file)).unwrap()).unwrap();
    }
    let audio = dir.path().join("chirp.wav");
    chirp_wav(&audio);
    let from_dir = run_json(model_dir.to_str().unwrap(), &audio, Path::new("/nonexistent"));
    let out = runner()
        .args(["--model", "s3://bucket/models/small", "--audio"])
        .arg(&audio)
        .args(["--json", "--max-length", "12", "--weights-digest"])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "runner failed: {}", String::from_utf8_lossy(&out.stderr));
    let from_s3: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_s3["source_kind"], "s3");
    assert_eq!(from_dir["tokens"], from_s3["tokens"]);
    // The runner hashed the buffer it downloaded from S3.
    let weights_blake3 = file_blake3(&model_dir.join("model.safetensors")).unwrap();
    assert_eq!(from_s3["weights_blake3"].as_str(), Some(weights_blake3.as_str()));
    assert_eq!(from_dir["weights_blake3"].as_str(), Some(weights_blake3.as_str()));

    let out = runner()
        .args(["--model", "s3://bucket/models/missing", "--audio"])
        .arg(&audio)
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://bucket/models/missing/config.json does not exist"), "{err}");
}
