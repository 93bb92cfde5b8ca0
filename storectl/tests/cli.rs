//! `storectl`'s argument handling and its error when no daemon listens. (Also makes
//! `cargo test` build the binary that the cross-process tests in `tests/` start.)

use std::process::Command;

fn storectl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storectl"))
}

#[test]
fn help_lists_the_commands() {
    let out = storectl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["put", "get", "ls", "rm", "locate", "replicate", "place", "certs", "bench"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[test]
fn no_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = storectl().arg("--socket").arg(dir.path().join("none.sock")).arg("ls").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is store-daemon running?"), "{stderr}");
}

#[test]
fn an_unknown_command_or_flag_is_refused_before_anything_runs() {
    for args in [&["frobnicate"][..], &["get"][..], &["put", "file", "--evictable=maybe"][..]] {
        let out = storectl().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!out.stderr.is_empty(), "{args:?} said nothing");
    }
}
