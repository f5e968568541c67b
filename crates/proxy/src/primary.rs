//! Who the primary is, as the proxy sees it. Role sources (static, LiteFS, Raft) live
//! outside this crate and feed a `watch::Sender<Primary>`; the request path only reads it.

use std::fmt;

/// The current primary as known by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Primary {
    /// This node is the primary: writes go to the local app.
    Local,
    /// Another node is the primary; `url` is the base URL of its litefs-proxy
    /// (scheme + authority, e.g. `http://10.0.0.1:8080`).
    Remote { node: String, url: http::Uri },
    /// No primary is known (election in progress, LiteFS disconnected): writes are held.
    Unknown,
}

impl Primary {
    /// A remote primary from a node name and a proxy base URL.
    pub fn remote(node: impl Into<String>, url: &str) -> Result<Self, http::uri::InvalidUri> {
        Ok(Primary::Remote {
            node: node.into(),
            url: url.parse()?,
        })
    }

    /// The role name reported in status and metrics.
    pub fn role(&self) -> &'static str {
        match self {
            Primary::Local => "primary",
            Primary::Remote { .. } => "replica",
            Primary::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Primary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Primary::Local => f.write_str("local"),
            Primary::Remote { node, url } => write!(f, "{node} ({url})"),
            Primary::Unknown => f.write_str("unknown"),
        }
    }
}
