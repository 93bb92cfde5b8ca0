//! What a chaos run is given: the fault kinds and the settings.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use serde::Serialize;

pub(super) const MIB: usize = 1 << 20;
/// What a daemon logs when it refuses a chunk that does not match the manifest.
pub(super) const CORRUPT_LOG_LINE: &str = "corrupt chunk rejected";
/// Pause before a failed get is tried again (and between connection attempts to a daemon
/// that is down).
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// A get is not started again with less than this left of the pull window.
pub(super) const MIN_ATTEMPT: Duration = Duration::from_secs(3);
/// Failed attempts kept in the report with their messages (all are counted).
pub(super) const KEPT_FAILURES: usize = 200;

/// A kind of fault the chaos injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FaultKind {
    /// SIGKILL a daemon (not the source) during the pulls, restart it after a pause.
    DaemonKill,
    /// A daemon (not the source) serves every chunk with a flipped byte for a round.
    CorruptChunks,
    /// A host's link goes down for a moment during the pulls.
    LinkDown,
    /// SIGKILL the scheduler during the pulls, start a new one after a pause.
    SchedulerRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] =
        [FaultKind::DaemonKill, FaultKind::CorruptChunks, FaultKind::LinkDown, FaultKind::SchedulerRestart];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DaemonKill => "daemon-kill",
            FaultKind::CorruptChunks => "corrupt-chunks",
            FaultKind::LinkDown => "link-down",
            FaultKind::SchedulerRestart => "scheduler-restart",
        }
    }

    /// Parses [`FaultKind::name`].
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|k| k.name() == s) {
            Some(kind) => Ok(kind),
            None => bail!("unknown fault {s:?} (one of {})", Self::ALL.map(Self::name).join(", ")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Emulated hosts (network namespaces), at least 3.
    pub hosts: usize,
    /// Size of each round's object, bytes.
    pub object_size: usize,
    /// Stop after this many rounds (if set).
    pub rounds: Option<u64>,
    /// Start no round after this much time (if set). One of `rounds` and `duration` must be set.
    pub duration: Option<Duration>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Rate of every host's link in each direction (tbf), Mbit/s; `None`: unshaped.
    pub rate_mbit: Option<u32>,
    pub mtu: u32,
    /// Each daemon's capacity, e.g. "1GiB".
    pub capacity: String,
    /// The scheduler's lease, ms (heartbeats every quarter of it).
    pub lease_ms: u64,
    /// Timeout of each get.
    pub get_timeout: Duration,
    /// How far past its timeout a get may return before it counts as past its deadline.
    pub deadline_grace: Duration,
    /// Failed gets are tried again until this long after the round's gets began.
    pub pull_window: Duration,
    /// The kinds of fault to inject.
    pub faults: Vec<FaultKind>,
    /// Chance (percent) of a second fault kind in a round.
    pub extra_fault_percent: u64,
    /// After a round's faults, how long the cluster may take to have every daemon
    /// registered again.
    pub recovery_limit: Duration,
    /// Where the daemons' and the scheduler's logs go (kept); `None`: a temporary directory,
    /// kept only when the run fails.
    pub log_dir: Option<PathBuf>,
    /// Log filter of the daemons and the scheduler.
    pub log_filter: String,
}

impl ChaosConfig {
    /// 5 hosts, 64 MiB objects, 200 Mbit/s links, every fault kind, gets with a 30 s
    /// timeout and a 5 s grace, a 40 s pull window; run length to be set.
    pub fn new() -> Self {
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Self {
            hosts: 5,
            object_size: 64 * MIB,
            rounds: None,
            duration: None,
            seed,
            rate_mbit: Some(200),
            mtu: 1500,
            capacity: "1GiB".into(),
            lease_ms: 3000,
            get_timeout: Duration::from_secs(30),
            deadline_grace: Duration::from_secs(5),
            pull_window: Duration::from_secs(40),
            faults: FaultKind::ALL.to_vec(),
            extra_fault_percent: 50,
            recovery_limit: Duration::from_secs(20),
            log_dir: None,
            log_filter: "warn,store_daemon::cluster::announce=info".into(),
        }
    }

    /// The longest a get may take: its timeout plus the grace.
    pub fn pull_deadline(&self) -> Duration {
        self.get_timeout + self.deadline_grace
    }
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self::new()
    }
}
