//! A LiteFS stand-in for tests, the demo and benches (LiteFS needs FUSE): mount files in
//! LiteFS's exact formats (`<db>-pos`, `.primary`, `.lag`), its HTTP API (`/info`,
//! `/events`), real SQLite databases replicated from the primary with a lag a test
//! controls, read-only replicas, and a small demo app.
//!
//! - [`Node`]: one node's mount, position and role; [`serve_api`] serves its LiteFS API.
//! - [`Cluster`]: N nodes in one process; replication follows [`Cluster::promote`].
//! - [`Member`]: one node per process (the demo), following a leader elected elsewhere;
//!   built from [`ReplicaLink`] and [`CommitWatcher`].
//! - [`serve_demo_app`]: an app that writes to SQLite and advances the TXID before it
//!   answers.
#![forbid(unsafe_code)]

mod api;
mod app;
mod cluster;
pub mod dbfile;
mod event;
mod fdcache;
mod lag;
mod member;
mod node;
mod pos;
mod replicate;
mod serve;
mod watch;

pub use api::serve_api;
pub use app::{serve_demo_app, Fnv64};
pub use cluster::{Cluster, ClusterConfig};
pub use event::{rfc3339_millis, Event};
pub use lag::{Lag, LagControl};
pub use member::Member;
pub use node::{Node, NodeConfig, Role, EVENT_BUFFER, PAGE_SIZE};
pub use pos::{
    fake_checksum, format_lag, format_pos, parse_pos, pos_path, write_lag, write_pos, write_primary,
};
pub use replicate::{ReplicaLink, Upstream};
pub use watch::{CommitWatcher, DEFAULT_INTERVAL};
