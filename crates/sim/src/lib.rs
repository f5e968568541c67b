//! A model of LiteFS v0.5.14 for tests, the demo and benches (LiteFS needs FUSE): what the
//! proxy and the election can observe of LiteFS behaves as `../shared/litefs-facts.md`
//! records it. Mount files in LiteFS's formats (`<db>-pos`, `.primary`, `.lag`), its HTTP
//! API (`/info`, `/events`, `/promote`, `/handoff`), replication only over a stream from
//! the primary's API (real SQLite, a lag a test controls, read-only replicas), and
//! LiteFS's consul lease loop with its timers.
//!
//! Checksums: a commit an app makes through the model (the demo app's
//! [`Node::commit_content`], a foreign app's commit seen by the [`CommitWatcher`]) gets a
//! checksum computed from the database's content ([`content_checksum`]), so divergent
//! histories get different checksums at the same TXID, as in LiteFS; replicas take the
//! primary's checksum from the frames they apply. Test-driven moves ([`Node::set_txid`],
//! and [`Node::commit`] for tests' in-process apps that then move other nodes with
//! `set_txid`) use a checksum that is deterministic per TXID ([`fake_checksum`]), which
//! models "the same history on every node"; [`Node::set_pos`] sets one explicitly.
//!
//! Not modelled (named in README too): LTX files and page-level diffs (a frame carries the
//! whole database), LiteFS's exact checksum algorithm (CRC64 over pages; the sim's is another
//! hash of the content, and the deterministic one above for test-driven moves), HTTP/2 on
//! the stream, the halt lock and write forwarding, backups, and FUSE itself (see [`dbfile`]
//! for how replicas refuse writes without it).
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
    content_checksum, counted_path, fake_checksum, format_lag, format_pos, parse_pos, pos_path,
    write_lag, write_pos, write_primary,
};
pub use replicate::{LinkEvent, ReplicaLink, Upstream, RECONNECT_DELAY};
pub use watch::{CommitWatcher, DEFAULT_INTERVAL};
