//! Every message type of the system, one module per conversation. Each message is a
//! postcard-encoded frame ([`crate::frame`]); postcard encodes enum variants by index and
//! struct fields by order, so variants and fields are only ever appended.
//!
//! - [`object`]: what the store says about an object (ids, states, error codes, S3 origin);
//! - [`node`]: nodes and what they hold (node ids, holdings, locations, pull reports);
//! - [`local`]: client <-> daemon over the unix socket ([`local::Request`], [`local::Response`]);
//! - [`scheduler`]: daemon <-> scheduler over QUIC;
//! - [`peer`]: daemon <-> daemon over QUIC;
//! - [`placement`]: data-aware placement requests and answers, and transfer reports.

pub mod local;
pub mod node;
pub mod object;
pub mod peer;
pub mod placement;
pub mod scheduler;

pub use node::NodeId;
pub use object::{ErrorCode, ObjectId, ObjectInfo, ObjectState, S3Origin};
