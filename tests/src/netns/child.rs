//! Processes inside hosts, killed and reaped when their guard drops.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::command::describe;

/// A child process that is killed (SIGKILL) and reaped when the guard drops. Derefs to
/// [`Child`] for its pid, pipes and `wait`.
#[derive(Debug)]
pub struct NsChild {
    pub(super) child: Child,
    pub(super) desc: String,
}

impl NsChild {
    /// Spawns `cmd` (typically from [`Host::command`]); errors name the command.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let desc = describe(cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start `{desc}`"))?;
        Ok(Self { child, desc })
    }

    /// The command line it was started with.
    pub fn description(&self) -> &str {
        &self.desc
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs; returns the exit status.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        match kill(pid, Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("SIGTERM to `{}`", self.desc)),
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill().with_context(|| format!("SIGKILL to `{}`", self.desc))?;
        Ok(self.child.wait()?)
    }
}

impl Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
