//! The openraft type configuration: u64 node ids (hashed from names), `BasicNode` whose
//! `addr` holds the node *name* (addresses come from the config), an empty application log.

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the election cluster.
    pub TypeConfig:
        D = String,
        R = String,
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
