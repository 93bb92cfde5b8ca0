//! What a soak run is given: its settings, and the environment that makes a process a victim.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Environment of a victim process: the daemon's socket (its presence selects victim mode).
pub const VICTIM_SOCKET_ENV: &str = "STORE_SOAK_VICTIM_SOCKET";
/// Environment of a victim process: the seed of its random choices.
pub const VICTIM_SEED_ENV: &str = "STORE_SOAK_VICTIM_SEED";
/// Environment of a victim process: the size of the worker name pool it reads from.
pub const VICTIM_NAMES_ENV: &str = "STORE_SOAK_VICTIM_NAMES";
/// Environment of a victim process: the largest object it writes.
pub const VICTIM_MAX_SIZE_ENV: &str = "STORE_SOAK_VICTIM_MAX_SIZE";

/// Names the victims write (they read the workers' names too, but never write them, so
/// that every object a worker maps has a writer who knows its digest).
pub(super) const VICTIM_NAMES: u64 = 64;
/// Starts a victim's stderr line about a `WritableMapping` refusal ([`victim_busy`]).
pub(super) const VICTIM_BUSY: &str = "SOAK-VICTIM-BUSY";
/// Printed by a victim before its markers, one byte per step (see [`victim`]).
pub(super) const MARKS: &str = "SOAK-MARKS:";
/// Longest a get waits for the writer of the object it mapped to register its digest.
pub(super) const REGISTRATION_WAIT: Duration = Duration::from_secs(30);
/// Failure messages kept in the report (all are counted).
pub(super) const KEPT_FAILURES: usize = 100;
/// Guards a worker holds at most at once.
pub(super) const MAX_HELD: usize = 6;
/// After a `WritableMapping` refusal the soak did not cause, when it tries once more.
pub(super) const BUSY_RETRY_AFTER: Duration = Duration::from_millis(100);

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * 1024;

/// How to start a victim process: the running binary, re-executed so that it calls
/// [`victim_from_env`] first (the bench) or runs the `#[ignore]`d helper test that does (the
/// test binary). The soak adds the victim's environment.
#[derive(Debug, Clone)]
pub struct VictimCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Length of the mixed phase.
    pub duration: Duration,
    /// Concurrent worker clients (threads of this process, one connection each).
    pub clients: usize,
    /// The daemon's capacity in bytes.
    pub capacity: u64,
    /// Names the workers use (`soak/w/0` ..): small enough that gets find objects.
    pub names: u64,
    /// Largest object written, bytes.
    pub max_size: u64,
    /// Victim processes alive at once.
    pub victims_at_once: usize,
    /// Shortest and longest life of a victim before it is killed.
    pub victim_life: (Duration, Duration),
    pub victim: VictimCommand,
    /// Longest wait after the run for leases, objects and descriptors to come back.
    pub settle: Duration,
    /// How far above the baseline the daemon's RSS may end.
    pub rss_slack: u64,
    /// Seed of every random choice (workers, victims, sizes, contents).
    pub seed: u64,
    /// How often a progress line is reported.
    pub progress_every: Duration,
    /// Count a `WritableMapping` refusal of a put or seal that the client did not cause (it
    /// held no writable mapping) and that the same request 100 ms later did not get, as the
    /// known daemon issue of docs/reliability.md ("Soak") instead of a failure. Either way
    /// it is reported.
    pub tolerate_transient_busy: bool,
}

impl SoakConfig {
    /// The defaults: 64 clients, 256 MiB capacity, 1024 names, objects up to 8 MiB, 4
    /// victims at once living 30-800 ms each, 10 s to settle, 16 MiB RSS slack.
    pub fn new(duration: Duration, victim: VictimCommand) -> Self {
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Self {
            duration,
            clients: 64,
            capacity: 256 * MIB,
            names: 1024,
            max_size: 8 * MIB,
            victims_at_once: 4,
            victim_life: (Duration::from_millis(30), Duration::from_millis(800)),
            victim,
            settle: Duration::from_secs(10),
            rss_slack: 16 * MIB,
            seed,
            progress_every: Duration::from_secs(10),
            tolerate_transient_busy: false,
        }
    }
}
