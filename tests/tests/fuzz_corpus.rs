//! Replays the committed fuzz corpus: every file of `fuzz/corpus/<target>/` goes through the
//! same `run` function the cargo-fuzz target `<target>` calls (the bodies live in
//! `fuzz/harness/<target>.rs`, included here and by `fuzz/fuzz_targets/<target>.rs`), and so
//! does each harness's list of seed inputs. A panic on any input fails the test and names the
//! file; each test prints how many inputs it replayed.
//!
//! The fuzzing itself (nightly, libFuzzer) is described in docs/reliability.md.

// The harnesses assert with unwrap/expect outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A fuzz target: its name and its body.
type Target = (&'static str, fn(&[u8]));

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness/daemon_requests.rs"]
mod daemon_requests;
#[path = "../../fuzz/harness/local_frame.rs"]
mod local_frame;
#[path = "../../fuzz/harness/manifest.rs"]
mod manifest;
#[path = "../../fuzz/harness/peer_codec.rs"]
mod peer_codec;
#[path = "../../fuzz/harness/safetensors_header.rs"]
mod safetensors_header;
#[path = "../../fuzz/harness/scheduler_codec.rs"]
mod scheduler_codec;
#[path = "../../fuzz/harness/wav.rs"]
mod wav;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Feeds every corpus file of `target` and every seed to `run`; fails if any input panics.
fn replay(target: &str, run: fn(&[u8]), seeds: fn() -> Vec<Vec<u8>>) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    let mut bytes = 0;
    for path in &files {
        let input = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        bytes += input.len();
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    let seeds = seeds();
    for (i, seed) in seeds.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| run(seed))).is_err() {
            failed.push(format!("seed {i} of the harness"));
        }
    }
    // Straight to stderr, past the harness's capture, so every run shows what was replayed.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz corpus {target}: replayed {} files ({bytes} bytes) and {} seeds",
        files.len(),
        seeds.len()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panicked: {failed:#?}",
        failed.len(),
        files.len() + seeds.len()
    );
}

/// Open crash reproducers (`fuzz/crashes/<target>/`): inputs that still panic, kept out of
/// the corpus until the code is fixed (docs/reliability.md lists them). Once this passes,
/// move them into `fuzz/corpus/<target>/`.
#[test]
#[ignore = "open crash reproducers: fail until fixed (docs/reliability.md, Fuzzing)"]
fn open_crash_reproducers() {
    let targets: [Target; 7] = [
        ("local_frame", local_frame::run),
        ("daemon_requests", daemon_requests::run),
        ("peer_codec", peer_codec::run),
        ("scheduler_codec", scheduler_codec::run),
        ("manifest", manifest::run),
        ("safetensors_header", safetensors_header::run),
        ("wav", wav::run),
    ];
    let mut failed = Vec::new();
    for (target, run) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/crashes").join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for path in entries.map(|e| e.expect("crash entry").path()) {
            let input = std::fs::read(&path).expect("read a crash reproducer");
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "still crashing: {failed:#?}");
}

#[test]
fn local_frame_corpus() {
    replay("local_frame", local_frame::run, local_frame::seeds);
}

#[test]
fn daemon_requests_corpus() {
    replay("daemon_requests", daemon_requests::run, daemon_requests::seeds);
}

#[test]
fn peer_codec_corpus() {
    replay("peer_codec", peer_codec::run, peer_codec::seeds);
}

#[test]
fn scheduler_codec_corpus() {
    replay("scheduler_codec", scheduler_codec::run, scheduler_codec::seeds);
}

#[test]
fn manifest_corpus() {
    replay("manifest", manifest::run, manifest::seeds);
}

#[test]
fn safetensors_header_corpus() {
    replay("safetensors_header", safetensors_header::run, safetensors_header::seeds);
}

#[test]
fn wav_corpus() {
    replay("wav", wav::run, wav::seeds);
}
