//! The reusable parts of `storectl`, kept out of `store-client` so that the crates linking
//! the client do not also link clap, indicatif or serde_json.
//!
//! This crate owns how `storectl` presents the store: tables, JSON and progress bars
//! ([`ctl`]), and the microbenchmark of the local store behind `storectl bench` ([`bench`]).
//! The command line itself lives in the binary (`src/main.rs` and its modules).

pub mod bench;
pub mod ctl;
