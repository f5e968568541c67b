//! The proxy's settings: the `[proxy]` table of litefs-proxy.toml. Plain data with
//! defaults; the server crate layers file, env and flags on top and calls `validate`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::trust::Cidrs;

/// What a read does when its token is still ahead of the local position after
/// `read_wait_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnReadTimeout {
    /// Forward the read to the primary: never stale, costs a hop.
    Primary,
    /// Answer 504.
    Error,
}

/// What a write on the primary does when fewer than `sync_replicas` replicas hold it after
/// `sync_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnSyncTimeout {
    /// Answer 503 with `litefs-write: applied-not-replicated`: the client learns its write
    /// may not survive a failover (and must not blindly retry it).
    Fail,
    /// Answer the app's response anyway, counted and logged: availability over durability,
    /// chosen explicitly, never as a silent fall-back.
    Degrade,
}

/// Where the local TXID comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxidSource {
    /// Re-read `<mount>/<db>-pos` (FUSE has no inotify).
    PosFile,
    /// LiteFS `GET /events` stream, falling back to the pos file while it is down.
    Events,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listen address; LiteFS's `:8080` form means all interfaces.
    pub addr: String,
    /// The local app, `host:port` or `http://host:port`.
    pub target: String,
    /// Database whose position gates reads, e.g. `db.sqlite3`.
    pub db: String,
    /// LiteFS FUSE mount holding `<db>-pos` and `.lag`.
    pub mount: PathBuf,
    /// Globs (LiteFS syntax) sent straight to the app with no token logic.
    pub passthrough: Vec<String>,
    /// Globs whose requests are always sent to the primary, whatever the method.
    pub always_forward: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub primary_redirect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_wait_timeout: Duration,
    pub on_read_timeout: OnReadTimeout,
    /// `/litefs/health` answers 503 above this replication lag.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    pub cookie_name: String,
    #[serde(with = "humantime_serde")]
    pub cookie_max_age: Duration,
    /// When set, tokens are `<txid>.<mac>` and unsigned or forged ones are ignored.
    pub token_secret: Option<String>,
    pub txid_source: TxidSource,
    /// LiteFS HTTP API, for `txid_source = "events"` and the `litefs` role source.
    pub litefs_api: String,
    /// Prefix of the proxy's own endpoints.
    pub endpoint_prefix: String,
    /// This node's name in status output.
    pub node_name: String,
    /// Largest accepted request head; larger gets 431.
    pub max_header_size: usize,
    /// A client must send a whole request head within this (also bounds keep-alive idle).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long, while the proxy is not
    /// handling one of its requests, is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most header fields in a request head; more gets 431.
    pub max_headers: usize,
    /// A request body on which no byte arrives for this long, while the proxy is waiting
    /// for one, is abandoned: 408 to the client, the upstream request aborted.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Requests this node handles at once (own endpoints excepted); past it, 503 with
    /// `Retry-After`.
    pub max_in_flight: usize,
    /// Reads waiting for replication at once; past it a read goes straight to the fallback.
    pub max_waiting_reads: usize,
    /// While the app refuses connections (booting), retry every 100 ms for this long.
    #[serde(with = "humantime_serde")]
    pub target_connect_retry: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the pos file is re-read while reads are waiting on it.
    #[serde(with = "humantime_serde")]
    pub pos_poll_interval: Duration,
    /// Replicas that must hold a write before the primary answers it. Unset: the server
    /// decides (1 with the Raft role source and at least 3 voters, else 0); 0: answer as
    /// soon as the app did (asynchronous replication).
    pub sync_replicas: Option<usize>,
    /// How long a write waits for `sync_replicas` replicas. Right after a failover they
    /// first reconnect to the new primary (LiteFS retries every second), hence 5 s.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    pub on_sync_timeout: OnSyncTimeout,
    /// Networks of the proxies in front (load balancers) whose `X-Forwarded-For/-Proto/-Host`
    /// are believed: kept, the client appended. From anyone else (peer proxies aside, see
    /// `crate::trust`) they are replaced with what this proxy saw. Default: loopback.
    pub trusted_proxies: Vec<String>,
    /// Networks that may read `/litefs/status` and `/litefs/metrics` (others get 403);
    /// `/litefs/health` is open to all. Default: everyone.
    pub admin_allow: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            addr: ":8080".into(),
            target: "127.0.0.1:8000".into(),
            db: "db.sqlite3".into(),
            mount: PathBuf::from("/litefs"),
            passthrough: Vec::new(),
            always_forward: Vec::new(),
            primary_redirect_timeout: Duration::from_secs(5),
            read_wait_timeout: Duration::from_secs(2),
            on_read_timeout: OnReadTimeout::Primary,
            max_lag: Duration::from_secs(10),
            cookie_name: "litefs-txid".into(),
            cookie_max_age: Duration::from_secs(300),
            token_secret: None,
            txid_source: TxidSource::PosFile,
            litefs_api: "http://127.0.0.1:20202".into(),
            endpoint_prefix: "/litefs".into(),
            node_name: String::new(),
            max_header_size: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_headers: 100,
            body_read_timeout: Duration::from_secs(30),
            max_in_flight: 10_000,
            max_waiting_reads: 10_000,
            target_connect_retry: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(25),
            pos_poll_interval: Duration::from_millis(1),
            sync_replicas: None,
            sync_timeout: Duration::from_secs(5),
            on_sync_timeout: OnSyncTimeout::Fail,
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1/128".into()],
            admin_allow: vec!["0.0.0.0/0".into(), "::/0".into()],
        }
    }
}

/// A setting that cannot work, naming the key, its value and why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid config: {key} = {value:?}: {why}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub why: String,
}

impl ConfigError {
    pub fn new(key: &str, value: impl ToString, why: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

impl ProxyConfig {
    /// The listen address, accepting LiteFS's `:8080` form.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen_addr(&self.addr).ok_or_else(|| {
            ConfigError::new("proxy.addr", &self.addr, listen_addr_problem(&self.addr))
        })
    }

    /// The app's base URI, `http://host:port`.
    pub fn target_uri(&self) -> Result<http::Uri, ConfigError> {
        let with_scheme = if self.target.contains("://") {
            self.target.clone()
        } else {
            format!("http://{}", self.target)
        };
        let uri: http::Uri = with_scheme.parse().map_err(|e| {
            ConfigError::new(
                "proxy.target",
                &self.target,
                format!("not a host:port: {e}"),
            )
        })?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(a)) if a.port_u16().is_some() => Ok(uri),
            _ => Err(ConfigError::new(
                "proxy.target",
                &self.target,
                "expected host:port (plain http)",
            )),
        }
    }

    /// Checks every setting; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.target_uri()?;
        if self.db.is_empty() || self.db.contains('/') {
            return Err(ConfigError::new(
                "proxy.db",
                &self.db,
                "expected a database file name such as db.sqlite3",
            ));
        }
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::new(
                "proxy.cookie_name",
                &self.cookie_name,
                "expected letters, digits, '-', '_' or '.'",
            ));
        }
        if !self.endpoint_prefix.starts_with('/') || self.endpoint_prefix.ends_with('/') {
            return Err(ConfigError::new(
                "proxy.endpoint_prefix",
                &self.endpoint_prefix,
                "expected a path like /litefs",
            ));
        }
        if self.sync_replicas.unwrap_or(0) > 0 && self.sync_timeout.is_zero() {
            return Err(ConfigError::new(
                "proxy.sync_timeout",
                "0s",
                "must be above zero while sync_replicas is above zero",
            ));
        }
        if let Some(secret) = &self.token_secret {
            if secret.len() < 16 {
                return Err(ConfigError::new(
                    "proxy.token_secret",
                    "(hidden)",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.txid_source == TxidSource::Events || !self.litefs_api.is_empty() {
            let ok = self
                .litefs_api
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(ConfigError::new(
                    "proxy.litefs_api",
                    &self.litefs_api,
                    "expected http://host:port",
                ));
            }
        }
        if self.max_header_size < 8192 {
            return Err(ConfigError::new(
                "proxy.max_header_size",
                self.max_header_size,
                "must be at least 8192",
            ));
        }
        if !(16..=10_000).contains(&self.max_headers) {
            return Err(ConfigError::new(
                "proxy.max_headers",
                self.max_headers,
                "must be between 16 and 10000",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "proxy.max_in_flight",
                0,
                "must be at least 1",
            ));
        }
        Cidrs::parse("proxy.trusted_proxies", &self.trusted_proxies)?;
        Cidrs::parse("proxy.admin_allow", &self.admin_allow)?;
        for (key, d) in [
            ("proxy.header_read_timeout", self.header_read_timeout),
            ("proxy.body_read_timeout", self.body_read_timeout),
            ("proxy.idle_timeout", self.idle_timeout),
            ("proxy.pos_poll_interval", self.pos_poll_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "0s", "must be above zero"));
            }
        }
        Ok(())
    }
}

/// Why `s` is not a listen address: a port that is a number but not one a socket can have
/// (`:99999`) is named as such.
fn listen_addr_problem(s: &str) -> &'static str {
    match s.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            if port.parse::<u16>().is_err() {
                "port out of range (0 to 65535)"
            } else {
                "expected host:port or :port (host: an IP address or localhost)"
            }
        }
        _ => "expected host:port or :port",
    }
}

/// `host:port`, `[v6]:port` or LiteFS's `:port` (all interfaces).
pub fn parse_listen_addr(s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        return Some(SocketAddr::from(([0, 0, 0, 0], port.parse().ok()?)));
    }
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host == "localhost" {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_port_out_of_range_is_named() {
        let bad = |addr: &str| {
            ProxyConfig {
                addr: addr.into(),
                ..ProxyConfig::default()
            }
            .listen_addr()
            .unwrap_err()
            .to_string()
        };
        assert!(
            bad(":99999").contains("port out of range"),
            "{}",
            bad(":99999")
        );
        assert!(bad("127.0.0.1:70000").contains("port out of range"));
        assert!(bad(":http").contains("expected host:port or :port"));
        assert!(bad("example.com:80").contains("an IP address or localhost"));
    }

    #[test]
    fn defaults_are_valid() {
        ProxyConfig::default().validate().unwrap();
    }

    #[test]
    fn litefs_style_addr() {
        assert_eq!(
            parse_listen_addr(":8080"),
            Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:9"),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
        assert_eq!(parse_listen_addr("8080"), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cfg = ProxyConfig {
            target: "nope".into(),
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "proxy.target");
        let cfg = ProxyConfig {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "proxy.idle_timeout");
        for (cfg, key) in [
            (
                ProxyConfig {
                    body_read_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "proxy.body_read_timeout",
            ),
            (
                ProxyConfig {
                    max_headers: 3,
                    ..Default::default()
                },
                "proxy.max_headers",
            ),
            (
                ProxyConfig {
                    max_in_flight: 0,
                    ..Default::default()
                },
                "proxy.max_in_flight",
            ),
            (
                ProxyConfig {
                    trusted_proxies: vec!["10.0.0.0/8".into(), "lb.internal".into()],
                    ..Default::default()
                },
                "proxy.trusted_proxies",
            ),
            (
                ProxyConfig {
                    admin_allow: vec!["10.0.0.1/40".into()],
                    ..Default::default()
                },
                "proxy.admin_allow",
            ),
        ] {
            assert_eq!(cfg.validate().unwrap_err().key, key);
        }
        let cfg = ProxyConfig {
            token_secret: Some("short".into()),
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.key, "proxy.token_secret");
        assert!(
            !err.to_string().contains("short"),
            "the secret must not be echoed"
        );
    }
}
