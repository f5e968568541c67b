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
//! - Pre-vote (`prevote`, `election_timer`; openraft 0.9 has none, its own timer is off): a
//!   node that heard from no leader for `election_timeout_max` + random [0, max - min) sends
//!   a signed `POST /raft/pre-vote` to every voter and campaigns only with a quorum of
//!   grants; a pre-vote changes no state. A voter grants iff it is not shutting down, heard
//!   from no live leader within `election_timeout_min`, and the candidate's Raft log and its
//!   LiteFS TXID are each at least its own (a known position beats an unknown one). So a node
//!   back from a pause or a partition cannot depose a healthy leader, and the winner is at
//!   least as caught up as a quorum: with `sync_replicas` >= N - quorum, every quorum holds
//!   every acknowledged write, so the winner does. Liveness: a voter leaderless for 2 x max
//!   waives the position rule for a candidate whose Raft log is strictly ahead of its own
//!   (it could never win against that log, and the two would refuse each other for good);
//!   that candidate may lack the voter's newest writes, so it does not act on its win alone:
//! - Catch-up (`catch_up`): a new leader acts as primary, and its LiteFS may take the lock
//!   (an `acquire` waits up to `lease::ACQUIRE_WAIT` for that), only after a quorum of voters
//!   answered a position probe with none that could lead ahead of it; otherwise it lets that
//!   voter's Raft log catch up and hands leadership to it (`catch_up_handovers_total`).
//!   Positions are compared with their histories where the server gave the proxy's ring of
//!   past positions (`LocalPosition::set_history`): a voter with a higher TXID of another
//!   history (a returning primary with writes it never shipped) is not ahead, and a leader
//!   whose history a quorum does not share hands over to one whose history it is. The
//!   pre-vote still compares TXIDs alone, so such a node can win an election, but it never
//!   acts on it. Unknown (a position polled past, or older than the ring) counts as the same
//!   history.
//! - Handover (`shutdown` on the leader): stop acting, stop heartbeats, probe the followers'
//!   LiteFS positions (a pre-vote probe; up to `election_timeout_min` for one to reach the
//!   leader's own), send a signed `timeout-now` to the most caught-up follower (TXID, then
//!   Raft log), which campaigns at once (no pre-vote: the leader chose it). In a 3-node
//!   cluster the old leader's vote suffices (a few ms) once it has led for longer than
//!   `election_timeout_max`; otherwise, and in 5-node clusters, the followers' leases bound it
//!   to about `election_timeout_max`.
//! - Eligibility (`Election::eligibility`): the server marks the node ineligible while its
//!   LiteFS is down; it then does not act as leader, refuses `timeout-now`, does not campaign
//!   (it still answers pre-votes), and hands over (as on shutdown) whenever it finds itself
//!   leading. A node shutting down refuses `timeout-now` and pre-votes.
//! - Fencing (`fence`, `Election::fence`): the quorum-ack time is measured by our transport
//!   (the send time of each AppendEntries a follower accepted), never taken from openraft's
//!   metrics snapshot, whose age runs from when it was published; the proxy asks
//!   `Fence::may_write` right before each request goes to the app as the primary's.
//! - Position reports (`reports`, `Election::replica_positions`): followers send their LiteFS
//!   position (`Election::local_position`, set by the server) to the leader over the Raft
//!   port; the leader keeps those addressed to itself in its term, for `sync_replicas`.
//! - Lease endpoint (`lease_addr`): a Consul-compatible subset for LiteFS's consul leaser, its
//!   sessions and KV in the Raft state machine; only the Raft leader's node can lock. See
//!   [`lease`].
#![forbid(unsafe_code)]

mod auth;
mod catch_up;
mod config;
mod conn_timer;
mod election;
mod election_timer;
mod eligibility;
mod faults;
mod fence;
mod handover;
mod hooks;
mod http_server;
mod leadership;
mod learners;
pub mod lease;
mod network;
mod position;
mod prevote;
mod primary_file;
mod priority;
mod reachability;
mod reports;
mod rpc_server;
mod status;
mod store;
mod types;

pub use auth::AuthError;
pub use config::{node_num, Config, ConfigError, Peer, PeerSpec};
pub use election::{Election, Error};
pub use eligibility::Eligibility;
pub use faults::Faults;
pub use fence::Fence;
pub use leadership::Leadership;
pub use position::{InHistory, LocalPosition, Position};
pub use prevote::{PreVoteRequest, PreVoteResponse};
pub use primary_file::PrimaryFileError;
pub use priority::Quiesce;
pub use reports::{ReplicaPositions, REPORT_EVERY};
pub use rpc_server::{
    MAX_BODY, PATH_APPEND, PATH_LEASE, PATH_PRE_VOTE, PATH_READ_INDEX, PATH_SNAPSHOT,
    PATH_TIMEOUT_NOW, PATH_VOTE,
};
pub use status::Status;
pub use store::OpenError;
pub use types::NodeId;

/// Header names of the signed RPC protocol (for tests and tools).
pub mod wire {
    pub use crate::auth::{FROM_HEADER, MAC_HEADER, MAX_SKEW, NONCE_HEADER, TS_HEADER};
}
