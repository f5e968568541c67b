//! A model of LiteFS v0.5.14 for tests, the demo and benches (LiteFS needs FUSE): what the
//! proxy and the election can observe of LiteFS behaves as `../shared/litefs-facts.md`
//! records it. Mount files in LiteFS's formats (`<db>-pos`, `.primary`, `.lag`), its HTTP
//! API (`/info`, `/events`, `/promote`, `/handoff`), replication only over a stream from
//! the primary's API (real SQLite, a lag a test controls, read-only replicas), and
//! LiteFS's consul lease loop with its timers.
//!
//! Not modelled (named in README too): LTX files and page-level diffs (a frame carries the
//! whole database), checksums (deterministic per TXID, so two histories with the same TXID
//! look alike), HTTP/2 on the stream, the halt lock and write forwarding, backups, and
//! FUSE itself (see [`dbfile`] for how replicas refuse writes without it).
//!
//! # Layout
//!
//! - `node`: one node's mount files, position, role and event feed ([`Node`]).
//! - `app`: the demo app, writing through a node ([`serve_demo_app`]); `watch`: commit
//!   detection for a foreign app ([`CommitWatcher`]).
//! - `api`: LiteFS's HTTP API ([`serve_api`]); `stream` its `POST /stream` (the primary's
//!   side), `wire` the frames, `replicate` the replica's side ([`ReplicaLink`]);
//!   `dbfile` snapshots and deliveries of the database file; `lag` the lag a test sets.
//! - `lease`: LiteFS's lease loop over a [`consul::Leaser`]; `consul`: its Consul calls;
//!   `client`: the HTTP client both use.
//! - [`litefs`]: one LiteFS node as a process (the demo's and e2e tests' LiteFS).
//! - [`Cluster`]: N nodes in one process, primary moved by the caller (static roles);
//!   [`Member`]: a node whose primary is chosen elsewhere (a role source outside LiteFS).
#![forbid(unsafe_code)]

mod api;
mod app;
mod client;
mod cluster;
pub mod consul;
pub mod dbfile;
mod event;
mod fdcache;
mod lag;
pub mod lease;
pub mod litefs;
mod member;
mod node;
mod pos;
mod replicate;
mod serve;
mod stream;
mod watch;
pub mod wire;

pub use api::serve_api;
pub use app::{serve_demo_app, Fnv64};
pub use cluster::{Cluster, ClusterConfig};
pub use event::{rfc3339_millis, Event};
pub use lag::{Lag, LagControl};
pub use member::Member;
pub use node::{node_id_of, HandoffRequest, Node, NodeConfig, Role, EVENT_BUFFER, PAGE_SIZE};
pub use pos::{
    fake_checksum, format_lag, format_pos, parse_pos, pos_path, write_lag, write_pos, write_primary,
};
pub use replicate::{LinkEvent, ReplicaLink, Upstream, RECONNECT_DELAY};
pub use watch::{CommitWatcher, DEFAULT_INTERVAL};
