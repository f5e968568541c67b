//! The openraft type configuration: u64 node ids (hashed from names), `BasicNode` whose
//! `addr` holds the node *name* (addresses come from the config); the application log carries
//! only the lease endpoint's commands.

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the election cluster.
    pub TypeConfig:
        D = crate::lease::state::Command,
        R = crate::lease::state::LeaseResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Numeric Raft node id.
pub type NodeId = u64;

/// The openraft handle.
pub type Raft = openraft::Raft<TypeConfig>;
