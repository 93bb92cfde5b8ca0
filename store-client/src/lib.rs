//! The contract crate of the object store.
//!
//! Everything two parts of the system must agree on lives here: object names
//! ([`name`]), BLAKE3 chunk manifests ([`manifest`], [`chunkset`]), the local socket
//! protocol and its framing ([`protocol`], [`frame`]), the cluster's wire types
//! ([`cluster`]) and QUIC request/response helpers ([`rpc`]), mutual-TLS identities
//! ([`tls`]), the only code that touches memfds, mappings and `SCM_RIGHTS` ([`sys`]), the
//! local client applications link ([`client`]) and the scheduler's async client
//! ([`scheduler_client`]). [`metrics`] names every Prometheus metric (and, with the
//! `metrics-server` feature, serves a registry on `/metrics`). `storectl` and its
//! microbenchmark ([`bench`], [`ctl`]) are thin layers over the client.

pub mod bench;
pub mod chunkset;
pub mod client;
pub mod cluster;
pub mod ctl;
pub mod frame;
pub mod manifest;
pub mod metrics;
pub mod name;
pub mod placement;
pub mod protocol;
pub mod rpc;
#[cfg(feature = "s3")]
pub mod s3;
pub mod scheduler_client;
pub mod sys;
pub mod tls;

pub use client::{ClientError, ObjectGuard, StoreClient, WritableObject};
pub use manifest::{Digest, Manifest};
pub use protocol::{ErrorCode, ObjectInfo, ObjectState};

/// Default chunk size of manifests and replication: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// Environment variable naming the daemon's socket, shared by the daemon and `storectl`.
pub const SOCKET_ENV: &str = "STORE_SOCKET";

/// The socket path a daemon or client uses when none is given.
///
/// Under systemd `$RUNTIME_DIRECTORY/store.sock`; else `/run/store/store.sock` for root;
/// else `$XDG_RUNTIME_DIR/store.sock` so that an unprivileged user can run a daemon.
pub fn default_socket_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may pass several directories separated by ':'; ours is the first.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return PathBuf::from(first).join("store.sock");
    }
    let run = PathBuf::from("/run/store");
    if nix::unistd::geteuid().is_root() || run.exists() {
        return run.join("store.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("store.sock"),
        None => run.join("store.sock"),
    }
}
