//! litefs-proxy's request path: forwards writes to the primary, stalls reads until the
//! local LiteFS TXID reaches the client's token, mints the token after writes.
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
mod serve;
pub mod sync;
pub mod token;
pub mod txid;
pub mod upstream;

pub use config::{ConfigError, OnReadTimeout, OnSyncTimeout, ProxyConfig, TxidSource};
pub use connection::PARK_AFTER;
pub use error::ProxyError;
pub use handler::{Fence, Proxy, StatusExtension};
pub use primary::Primary;
pub use serve::serve;
pub use token::Token;
pub use txid::{Position, TxId};

/// Response body: an upstream's streamed body, or a small one of the proxy's own.
pub type ProxyBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;
