//! The contract crate of the object store.
//!
//! Everything two parts of the system must agree on lives here: object names ([`name`]),
//! BLAKE3 chunk manifests ([`manifest`], [`chunkset`]), every message type of every wire, one
//! module per conversation ([`wire`]), their framing ([`frame`]) and QUIC request/response
//! helpers ([`rpc`]), mutual-TLS identities ([`tls`]), the only code that touches memfds,
//! mappings and `SCM_RIGHTS` ([`sys`]), the local client applications link ([`client`]) and
//! the scheduler's async client ([`scheduler_client`]). [`metrics`] names every Prometheus
//! metric (and, with the `metrics-server` feature, serves a registry on `/metrics`); the `s3`
//! feature adds the S3 engine (module `s3`).
//!
//! Every other part links this crate, so it holds no presentation: `storectl`'s tables,
//! progress bars and microbenchmark live in the `storectl` package.

pub mod chunkset;
pub mod client;
pub mod frame;
pub mod manifest;
pub mod metrics;
pub mod name;
pub mod rpc;
#[cfg(feature = "s3")]
pub mod s3;
pub mod scheduler_client;
pub mod sys;
pub mod tls;
pub mod wire;

pub use client::{ClientError, ObjectGuard, SOCKET_ENV, StoreClient, WritableObject, default_socket_path};
pub use manifest::{DEFAULT_CHUNK_SIZE, Digest, Manifest};
pub use wire::object::{ErrorCode, ObjectInfo, ObjectState};
