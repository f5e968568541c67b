//! litefs-proxy's request path: forwards writes to the primary, stalls reads until the
//! local LiteFS TXID reaches the client's token, mints the token after writes.
//!
//! # Layout
//!
//! - `serve`, `connection`, `activity`: accept, serve and time out client connections.
//! - `handler`: the request path (classify, stall reads, send writes to the primary, mint);
//!   `patterns` the globs, `headers` hop-by-hop and forwarded headers, `body` the client's
//!   body with its read timer; `trust` whom the hop header, `X-Forwarded-*` and the admin
//!   endpoints are believed from or open to.
//! - `token`: the token's format; `position`, `history`, `txid`: the local position, the
//!   positions observed (a token names one history), the pos-file format; `litefs_api` the
//!   LiteFS `/events` client.
//! - `sync`: `sync_replicas`, writes waiting for their replicas.
//! - `upstream`, `forward`: the app's pooled connections, a connection per forward to the
//!   primary; `primary`: who the primary is.
//! - `replay`: the app's signal that a read must be served by the primary.
//! - `endpoints`, `metrics`, `error`: `/litefs/*`, Prometheus, errors to status codes.
#![forbid(unsafe_code)]

mod activity;
pub mod body;
pub mod config;
mod connection;
mod endpoints;
pub mod error;
pub mod forward;
mod handler;
pub mod headers;
pub mod history;
pub mod litefs_api;
pub mod metrics;
pub mod patterns;
pub mod position;
pub mod primary;
pub mod replay;
mod serve;
pub mod sync;
pub mod token;
pub mod trust;
pub mod txid;
pub mod upstream;

pub use config::{ConfigError, OnReadTimeout, OnSyncTimeout, ProxyConfig, TxidSource};
pub use connection::PARK_AFTER;
pub use error::ProxyError;
pub use handler::{Fence, Proxy, StatusExtension, WritesInFlight};
pub use primary::Primary;
pub use serve::{bind, serve, serve_on_cores};
pub use token::Token;
pub use txid::{Position, TxId};

/// Response body: an upstream's streamed body, or a small one of the proxy's own.
pub type ProxyBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;
