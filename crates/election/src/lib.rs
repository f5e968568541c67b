//! Embedded Raft leader election for litefs-proxy: openraft over our own HTTP transport, vote
//! and log in SQLite, the leader is the primary; owns the `.primary` file and role hooks.
//!
//! ```no_run
//! # async fn demo(cfg: litefs_election::Config) -> Result<(), litefs_election::Error> {
//! use litefs_election::{Election, Leadership};
//! let election = Election::start(cfg, 8080).await?; // binds raft_addr, bootstraps itself
//! let mut role = election.leadership();
//! while role.changed().await.is_ok() {
//!     match &*role.borrow() {
//!         Leadership::Leader => { /* take writes */ }
//!         Leadership::Follower { proxy_url, .. } => { /* forward writes to proxy_url */ let _ = proxy_url; }
//!         Leadership::Unknown => { /* hold writes */ }
//!     }
//! }
//! election.shutdown().await; // a leader hands over first
//! # Ok(()) }
//! ```
//!
//! Design notes:
//! - Node ids are `SHA-256(name)[..8]`, so editing the peer list never renumbers a node; the
//!   membership stores names, addresses come from the config. Every node calls `initialize`
//!   with the same membership when its log is empty (openraft allows identical initializes).
//! - openraft's `single-term-leader` feature is on: classic Raft, at most one leader per term.
//! - `Leader` needs a quorum ack younger than `election_timeout_min`; followers refuse votes for
//!   `election_timeout_max` after a heartbeat, so an old leader stops acting as primary before
//!   a new one can exist (given no process pause longer than max - min - heartbeat/2).
//! - Handover (`shutdown` on the leader): stop acting, stop heartbeats, send a signed
//!   `timeout-now` to the most up-to-date follower, which campaigns at once. In a 3-node
//!   cluster the old leader's vote suffices (a few ms) once it has led for longer than
//!   `election_timeout_max`; otherwise, and in 5-node clusters, the followers' leases bound it
//!   to about `election_timeout_max`.
//! - Eligibility (`Election::eligibility`): the server marks the node ineligible while its
//!   LiteFS is down; it then does not act as leader, refuses `timeout-now`, does not campaign,
//!   and hands over (as on shutdown) whenever it finds itself leading.
//! - Lease endpoint (`lease_addr`): a Consul-compatible subset for LiteFS's consul leaser, its
//!   sessions and KV in the Raft state machine; only the Raft leader's node can lock. See
//!   [`lease`].
#![forbid(unsafe_code)]

mod auth;
mod config;
mod conn_timer;
mod election;
mod election_timer;
mod eligibility;
mod faults;
mod handover;
mod hooks;
mod http_server;
mod leadership;
pub mod lease;
mod network;
mod position;
mod prevote;
mod primary_file;
mod reachability;
mod rpc_server;
mod status;
mod store;
mod types;

pub use auth::AuthError;
pub use config::{node_num, Config, ConfigError, Peer, PeerSpec};
pub use election::{Election, Error};
pub use eligibility::Eligibility;
pub use faults::Faults;
pub use leadership::Leadership;
pub use position::{LocalPosition, Position};
pub use prevote::{PreVoteRequest, PreVoteResponse};
pub use primary_file::PrimaryFileError;
pub use rpc_server::{
    MAX_BODY, PATH_APPEND, PATH_LEASE, PATH_PRE_VOTE, PATH_READ_INDEX, PATH_SNAPSHOT,
    PATH_TIMEOUT_NOW, PATH_VOTE,
};
pub use status::Status;
pub use store::OpenError;
pub use types::NodeId;

/// Header names of the signed RPC protocol (for tests and tools).
pub mod wire {
    pub use crate::auth::{FROM_HEADER, MAC_HEADER, MAX_SKEW, TS_HEADER};
}
