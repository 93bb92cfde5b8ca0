//! What a simulated broadcast is (its schedule, network and failures) and what it measured.

use std::time::Duration;

use store_client::manifest::chunk_count;

use crate::replication::UPLOAD_SLOTS;
use crate::replication::pull_core::CoreConfig;

/// Who pulls from whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every receiver runs the production policy.
    Swarm,
    /// Receiver i pulls from receiver i-1 (the first from the source).
    Chain,
    /// Receiver i pulls from its parent in a binary tree rooted at the source.
    BinaryTree,
}

/// One simulated broadcast.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub receivers: usize,
    pub size: u64,
    pub chunk_size: u64,
    /// Uplink and downlink of every node, bytes per second.
    pub up_rate: f64,
    pub down_rate: f64,
    pub latency: Duration,
    /// Probability that a chunk fetch fails (the stream breaks; the peer is not lost).
    pub loss: f64,
    /// Fraction of the receivers that die, and when (in units of S/B).
    pub fail_fraction: f64,
    pub fail_at: f64,
    pub schedule: Schedule,
    pub core: CoreConfig,
    /// Chunk uploads a node serves at once; requests beyond are refused as busy (the
    /// daemon's upload slots). `None`: unlimited.
    pub upload_slots: Option<u32>,
    pub seed: u64,
    /// Give up after this many S/B of virtual time.
    pub limit: f64,
}

impl SimConfig {
    pub fn new(receivers: usize, size: u64, rate: f64) -> Self {
        Self {
            receivers,
            size,
            chunk_size: 4 << 20,
            up_rate: rate,
            down_rate: rate,
            latency: Duration::from_micros(500),
            loss: 0.0,
            fail_fraction: 0.0,
            fail_at: 0.3,
            schedule: Schedule::Swarm,
            core: CoreConfig::default(),
            upload_slots: Some(UPLOAD_SLOTS),
            seed: 1,
            limit: 20.0,
        }
    }

    /// S/B: the time of one transfer of the object over one link.
    pub fn transfer_time(&self) -> f64 {
        self.size as f64 / self.up_rate.min(self.down_rate)
    }

    /// The lower bound of a pipelined broadcast of M chunks to N receivers (Mundinger and
    /// Weber): (S/B)(1 + log2(N)/M).
    pub fn lower_bound(&self) -> f64 {
        let chunks = chunk_count(self.size, self.chunk_size).max(1) as f64;
        self.transfer_time() * (1.0 + (self.receivers.max(1) as f64).log2() / chunks)
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// Virtual seconds until the last surviving receiver held everything (the limit if
    /// one never did).
    pub slowest: f64,
    pub transfer_time: f64,
    pub lower_bound: f64,
    /// Bytes the source sent, over the object's size.
    pub source_egress: f64,
    pub receivers: usize,
    pub failed_nodes: usize,
    /// Surviving receivers that completed, and those whose every chunk matched the source's.
    pub completed: usize,
    pub verified: usize,
    pub corrupt_chunks: u64,
    pub retries: u64,
    /// Wall-clock time the simulation took.
    pub wall: Duration,
}

impl SimReport {
    /// Slowest receiver over S/B.
    pub fn ratio(&self) -> f64 {
        self.slowest / self.transfer_time
    }

    /// Every surviving receiver completed with the source's bytes.
    pub fn all_verified(&self) -> bool {
        self.completed == self.receivers - self.failed_nodes && self.verified == self.completed
    }
}
