//! The cluster scheduler (`store-scheduler`).
//!
//! It hosts the global location table ([`table`]): which nodes are alive and which objects,
//! in whole or in part, each of them holds. The table is soft state, rebuilt from the
//! daemons' registrations after a restart, and a pure state machine; [`server`] drives it
//! over QUIC with mutual TLS. Daemons talk to it with
//! [`store_client::scheduler_client::SchedulerClient`].
//!
//! [`placement`] ranks nodes for a task by the bytes it still needs there, the bandwidth
//! observed into that node (daemons report every pull) and the work already placed there,
//! under hard constraints (labels, resources, a pinned node).

pub mod cli;
pub mod metrics;
pub mod placement;
pub mod server;
pub mod table;

pub use server::{Scheduler, SchedulerConfig, ServerError};
pub use table::{DEFAULT_LEASE, Effect, Table, TableError};
