//! Embedded Raft leader election for litefs-proxy: openraft over our own HTTP transport, vote
//! and log in SQLite, the leader is the primary; owns the `.primary` file and role hooks.
#![forbid(unsafe_code)]

mod auth;
mod config;
mod election;
mod faults;
mod handover;
mod hooks;
mod leadership;
mod network;
mod primary_file;
mod rpc_server;
mod status;
mod store;
mod types;

pub use auth::AuthError;
pub use config::{node_num, Config, ConfigError, Peer, PeerSpec};
pub use election::{Election, Error};
pub use faults::Faults;
pub use leadership::Leadership;
pub use primary_file::PrimaryFileError;
pub use rpc_server::{MAX_BODY, PATH_APPEND, PATH_SNAPSHOT, PATH_TIMEOUT_NOW, PATH_VOTE};
pub use status::Status;
pub use store::OpenError;
pub use types::NodeId;

/// Header names of the signed RPC protocol (for tests and tools).
pub mod wire {
    pub use crate::auth::{FROM_HEADER, MAC_HEADER, MAX_SKEW, TS_HEADER};
}
