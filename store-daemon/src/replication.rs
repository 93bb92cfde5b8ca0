//! Replication between daemons: the pure chunk-scheduling state machine ([`plan`]).

pub mod plan;
