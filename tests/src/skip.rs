//! Tests that cannot run here say so, never pass silently.
//!
//! libtest has no "skipped" outcome, so a test that lacks root, a program or a Python package
//! calls [`skip`] and returns early. The line goes straight to stderr (past the harness's
//! output capture, so it shows in every run) and, when the README's test command runs the
//! suite (`./run-tests`), is appended to the file named by [`SKIP_LOG_ENV`]; the runner prints
//! every such line in one summary at the end: how many, which, why.

use std::io::Write;

/// Environment variable naming the file the runner collects skips in.
pub const SKIP_LOG_ENV: &str = "STORE_TEST_SKIP_LOG";

/// Reports that the calling test did not run, and why. The caller then returns.
#[track_caller]
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let location = std::panic::Location::caller();
    let line = format!("SKIPPED {test} ({location}): {reason}");
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write per line with O_APPEND keeps lines whole across parallel test processes.
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// Whether the process runs as root; reports a skip naming `what` needs it otherwise.
#[track_caller]
pub fn requires_euid_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(&format!("{what} needs root (euid 0)"));
    false
}

/// Whether `program` is on the PATH (or in /usr/sbin, /sbin); reports a skip otherwise.
#[track_caller]
pub fn requires_program(program: &str, package: &str) -> bool {
    if find_on_path(program) {
        return true;
    }
    skip(&format!("needs `{program}` (Debian package {package}; `./run-tests` installs it as root)"));
    false
}

/// Whether `program` is on the PATH or in /usr/sbin or /sbin.
pub fn find_on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|dir| dir.join(program).is_file())
}
