//! The daemon binary's argument handling. (Also makes `cargo test` build the binary that
//! the cross-process tests in `tests/` start.)

use std::process::Command;

fn daemon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_store-daemon"))
}

#[test]
fn rejects_a_malformed_capacity() {
    let out = daemon().args(["--capacity", "lots", "--socket", "/nonexistent/x.sock"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capacity"));
}

#[test]
fn rejects_a_chunk_size_that_is_not_a_power_of_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = daemon().args(["--chunk-size", "3MiB", "--socket"]).arg(dir.path().join("s.sock")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn refuses_to_replace_a_live_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut first = daemon().arg("--socket").arg(&sock).spawn().unwrap();
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(start.elapsed().as_secs() < 20, "first daemon never listened");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = daemon().arg("--socket").arg(&sock).output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
}
