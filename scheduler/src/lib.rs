//! The cluster scheduler (not built yet; see the cluster and scheduler issues).
//!
//! It will own the global location table (which node holds which object, which nodes are
//! alive, as soft state rebuilt from daemon heartbeats) and placement: ranking nodes for a
//! task by the bytes it still needs there, the bandwidth feeding that node, and its load.
//! Nothing here yet: the crate exists so the workspace has its final shape.
