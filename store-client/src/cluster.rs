//! The old home of the daemon <-> scheduler and daemon <-> daemon wire types, now in
//! [`crate::wire`] ([`crate::wire::node`], [`crate::wire::scheduler`], [`crate::wire::peer`])
//! and [`crate::name`]. Only a re-export, kept while an uncommitted test still imports these
//! paths; new code imports `wire::…`.

pub use crate::name::{InvalidName, validate_all};
pub use crate::wire::node::*;
pub use crate::wire::peer::*;
pub use crate::wire::scheduler::*;
