//! The node-local object store daemon.
//!
//! It owns the node's objects, one sealed memfd each ([`store`] keeps their names, sizes,
//! leases and the capacity budget as plain state; [`node`] is the handle the rest holds,
//! with the events that flow out of the store), and serves local clients over a unix
//! socket with descriptor passing ([`server`], [`connection`]). Filling, sealing and
//! hashing objects is in [`ingest`]; configuration in [`config`]. Prometheus metrics are in
//! [`metrics`]; talking to systemd (readiness, watchdog), signals and journald-friendly logs
//! are the shared `store_service` crate's. With a cluster configured it also replicates objects with its peers over QUIC
//! ([`cluster`]), deciding which chunk to fetch from whom with the pure state machine in
//! [`replication`].

pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod s3_ingest;
pub mod server;
pub mod store;

pub use config::DaemonConfig;
pub use server::Daemon;
