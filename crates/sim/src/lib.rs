//! A LiteFS stand-in for tests, the demo and benches: mount files in LiteFS's exact
//! formats, its HTTP API (`/info`, `/events`), and (later) real SQLite replication.
#![forbid(unsafe_code)]

mod api;
mod event;
mod node;
mod pos;

pub use api::serve_api;
pub use event::{rfc3339_millis, Event};
pub use node::{Node, NodeConfig, Role, EVENT_BUFFER, PAGE_SIZE};
pub use pos::{
    fake_checksum, format_lag, format_pos, parse_pos, pos_path, write_lag, write_pos, write_primary,
};
