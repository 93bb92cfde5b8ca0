//! Replication between daemons: the chunk plan ([`plan`]), one pull's whole policy as a
//! sans-IO state machine on top of it ([`pull_core`]), and a simulator that runs that policy
//! over a modelled network in virtual time ([`sim`]).

pub mod plan;
pub mod pull_core;
pub mod sim;

/// Chunk uploads a daemon serves at once; later requests wait their turn in order, so a
/// chunk being uploaded goes at a good share of the uplink and reaches its receiver, which
/// relays it, early, instead of every requested chunk crawling at once.
pub const UPLOAD_SLOTS: u32 = 8;
/// Requests that may wait for an upload slot; one beyond them is answered `Busy` at once,
/// and asked of another holder or again later.
pub const UPLOAD_QUEUE: usize = 32;
