//! Role sources: who the primary is, fed into the proxy's `watch::Sender<Primary>`.
//! `static` is fixed at startup; `litefs` follows LiteFS's API and `.primary` file;
//! `raft` runs the embedded election.

pub mod confirm;
pub mod litefs_source;
pub mod promote;
pub mod raft_source;
pub mod static_source;

use litefs_proxy::ConfigError;
use serde::{Deserialize, Serialize};

/// Which role source decides who the primary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoleSource {
    /// Fixed at startup, like LiteFS's static lease.
    #[default]
    Static,
    /// Follow LiteFS itself (for LiteFS + Consul setups).
    Litefs,
    /// Embedded Raft election (`[election]` table).
    Raft,
}

/// The `[role]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleConfig {
    pub source: RoleSource,
    /// static: this node is the primary. Defaults to true so a single node just works.
    pub is_primary: bool,
    /// static replica: base URL of the primary's litefs-proxy, e.g. `http://10.0.0.1:8080`.
    pub primary_url: Option<String>,
    /// static replica: the primary's node name in status output (default: the URL's host).
    pub primary_name: Option<String>,
    /// litefs: maps the primary's hostname (from LiteFS) to its litefs-proxy URL.
    pub primary_url_template: String,
    /// raft: act as primary only while LiteFS's API (`proxy.litefs_api`) also says this node
    /// is primary, holding writes while its LiteFS acquires the lease; while that LiteFS is
    /// down the node is not eligible to lead and `/litefs/health` answers 503. Default: on when
    /// `election.lease_addr` is set (LiteFS follows Raft through the lease endpoint).
    pub confirm_litefs: Option<bool>,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            source: RoleSource::Static,
            is_primary: true,
            primary_url: None,
            primary_name: None,
            primary_url_template: "http://{hostname}:8080".into(),
            confirm_litefs: None,
        }
    }
}

impl RoleConfig {
    /// Checks the settings the chosen source needs. `election` is the `[election]` table.
    pub fn validate(&self, election: Option<&toml::Table>) -> Result<(), ConfigError> {
        match self.source {
            RoleSource::Static => {
                static_source::initial(self)?;
            }
            RoleSource::Litefs => {
                let t = &self.primary_url_template;
                if !t.contains("{hostname}") {
                    return Err(ConfigError::new(
                        "role.primary_url_template",
                        t,
                        "must contain {hostname}",
                    ));
                }
                proxy_url(&t.replace("{hostname}", "node-1"))
                    .map_err(|why| ConfigError::new("role.primary_url_template", t, why))?;
            }
            RoleSource::Raft => {
                raft_source::election_config(election)?;
            }
        }
        Ok(())
    }
}

/// Parses a litefs-proxy base URL: plain `http://host[:port]`, no path.
pub fn proxy_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("expected an http:// URL".into());
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => {}
        _ => return Err("expected http://host:port".into()),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("expected a base URL without a path (http://host:port)".into());
    }
    Ok(uri)
}
