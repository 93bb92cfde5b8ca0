//! Running commands (`ip`, `tc`, processes in hosts) with time limits and readable errors.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::skip::find_on_path;

/// Time limit of one `ip`/`tc` invocation.
pub(super) const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// The command line of `cmd`, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

pub(super) fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Runs `cmd` to completion (stdin null, output captured) within `timeout`, killing it when
/// it takes longer. Fails, naming the command and quoting its stderr (or stdout when stderr
/// is empty), when it cannot start, times out or exits unsuccessfully.
///
/// Do not use it for programs that daemonize: a grandchild holding the output pipes makes
/// this wait until `timeout`.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let desc = describe(cmd);
    let output = run_output(cmd, timeout)?;
    if !output.status.success() {
        bail!("`{desc}` failed ({}): {}", output.status, output_text(&output));
    }
    Ok(output)
}

/// Like [`run_checked`] but returns the output whatever the exit status.
pub fn run_output(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{desc}`"))?;
    let out_rx = spawn_reader(child.stdout.take());
    let err_rx = spawn_reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).with_context(|| format!("waiting for `{desc}`"));
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_rx.recv_timeout(Duration::from_millis(200)).unwrap_or_default();
            bail!("`{desc}` did not finish within {timeout:?}; stderr: {}", String::from_utf8_lossy(&stderr).trim());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
    let stdout =
        out_rx.recv_timeout(remaining).with_context(|| format!("`{desc}` exited but its stdout stayed open"))?;
    let stderr =
        err_rx.recv_timeout(remaining).with_context(|| format!("`{desc}` exited but its stderr stayed open"))?;
    Ok(Output { status, stdout, stderr })
}

pub(super) fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        return stderr.to_string();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stdout = stdout.trim();
    if stdout.is_empty() {
        "(no output)".to_string()
    } else {
        format!("(stderr empty) stdout: {}", stdout.chars().take(2000).collect::<String>())
    }
}

/// Runs `program args...` (an `ip` or `tc` call) and returns its stdout.
pub(super) fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = run_checked(Command::new(program).args(args), CMD_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether multi-host tests can run here: root and iproute2's `ip` and `tc`. When not,
/// reports the skip ([`crate::skip::skip`]) and returns `false`; the test should then return
/// early.
#[track_caller]
pub fn requires_root() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (euid 0)".to_string());
    }
    for tool in ["ip", "tc"] {
        if !find_on_path(tool) {
            missing.push(format!("`{tool}` (Debian package iproute2)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    crate::skip::skip(&format!("multi-host test needs {}", missing.join(", ")));
    false
}
