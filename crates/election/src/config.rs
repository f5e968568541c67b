//! The `[election]` configuration table: who the peers are, where to listen, timing,
//! and the checks that turn a bad value into an error naming the key, the value and why.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Election settings, embedded by the server as the `[election]` TOML table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name; must match one peer's `id` (or is added to the peers).
    pub node_id: String,
    /// Where the Raft RPC listener binds.
    pub raft_addr: SocketAddr,
    /// The address other nodes use to reach this one, if `raft_addr` is a wildcard;
    /// only used when this node is not listed in `peers`.
    pub advertise_raft: Option<String>,
    /// Directory of the SQLite file holding the vote and the log.
    pub data_dir: PathBuf,
    /// The LiteFS-style `.primary` file; default `<data_dir>/.primary`.
    pub primary_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Shared secret; when set every RPC carries an HMAC-SHA256 and unsigned ones are refused.
    /// Required when `raft_addr` is not loopback, unless `allow_insecure_raft`.
    pub cluster_secret: Option<String>,
    /// Accept an unsigned Raft port off loopback (anyone reaching it can vote, append and
    /// depose the leader): only for a network nobody else can reach.
    pub allow_insecure_raft: bool,
    /// Shell command run (via `sh -c`) when this node becomes leader.
    pub on_promote: Option<String>,
    /// Shell command run when this node stops being leader.
    pub on_demote: Option<String>,
    /// Where to serve the Consul-compatible lease endpoint for LiteFS (`lease.type: consul`,
    /// `lease.consul.url: http://<this>`), e.g. "127.0.0.1:8500". None: not served.
    pub lease_addr: Option<SocketAddr>,
    /// Required when `lease_addr` is not loopback: requests must carry it as
    /// `X-Consul-Token` (LiteFS sends `CONSUL_HTTP_TOKEN`).
    pub lease_token: Option<String>,
    /// `lease_addr` is served by a lease keeper, a process of its own that outlives this one
    /// and forwards every request here (`lease::keeper`), so LiteFS can still hand its lease
    /// over after this process crashed; the election then does not bind `lease_addr`.
    /// `litefs-proxy run` starts the keeper, and defaults this to true; false here.
    pub lease_keeper: bool,
    /// LiteFS's session TTL (`lease.consul.ttl`), printed by `litefs-proxy litefs-config`;
    /// the endpoint itself takes each session's TTL from the create request.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// LiteFS's `lease.consul.lock-delay`: how long a lost lock stays unavailable.
    #[serde(with = "humantime_serde")]
    pub lease_lock_delay: Duration,
    /// Among healthy voters holding everything the leader holds, the one with the highest
    /// priority leads: a leader that finds such a voter above its own priority hands
    /// leadership to it (the planned handover), so the primary can be kept near the writers.
    /// Equal priorities (the default, 0 everywhere) never move leadership.
    pub priority: u32,
    pub peers: Vec<PeerSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::new(),
            raft_addr: SocketAddr::from(([0, 0, 0, 0], 4321)),
            advertise_raft: None,
            data_dir: PathBuf::from("/var/lib/litefs-proxy"),
            primary_file: None,
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            cluster_secret: None,
            allow_insecure_raft: false,
            on_promote: None,
            on_demote: None,
            lease_addr: None,
            lease_token: None,
            lease_keeper: false,
            lease_ttl: Duration::from_secs(1),
            lease_lock_delay: Duration::ZERO,
            priority: 0,
            peers: Vec::new(),
        }
    }
}

/// One peer as written in the config: a table, or the short `"host:port"` string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PeerSpec {
    /// `"node-1:4321"`: id = host, proxy = `http://host:<local proxy port>`.
    Short(String),
    /// `{ id = "node-1", raft = "10.0.0.1:4321", proxy = "http://10.0.0.1:8080" }`, with
    /// `voter = false` for a read replica that never leads (an openraft learner).
    Table {
        id: String,
        raft: String,
        proxy: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        voter: Option<bool>,
    },
}

/// The table form, strict: an unknown key is an error naming it (serde's untagged enums
/// would only say that nothing matched).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerTable {
    id: String,
    raft: String,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    voter: Option<bool>,
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = PeerSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""host:port" or { id, raft, proxy, voter }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PeerSpec, E> {
                Ok(PeerSpec::Short(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<PeerSpec, A::Error> {
                let t = PeerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PeerSpec::Table {
                    id: t.id,
                    raft: t.raft,
                    proxy: t.proxy,
                    voter: t.voter,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A peer with every field resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    /// `host:port` of its Raft listener (resolved at connect time, so names work).
    pub raft: String,
    /// Base URL of its proxy, where forwarded writes go.
    pub proxy: String,
    /// A voter may lead and counts for the quorum; a non-voter (openraft learner) follows
    /// the leader only: it forwards writes and serves reads, never leads, never counts.
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

/// A config value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("election.{key} = {value:?}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

fn err(key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Minimum length of `cluster_secret`, so a typo'd one-letter secret is not accepted.
const MIN_SECRET_LEN: usize = 16;
/// `lease_ttl` bounds. LiteFS renews every TTL/2 and, after a failed renew, retries every 1 s
/// (its reconnect delay) and gives up once (time since the last renew + 1 s) > TTL: under 1 s
/// the first failed renew already ends the lease. Above a minute a crashed primary's lease
/// only blocks writes for longer.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

impl Config {
    /// The `.primary` path actually used.
    pub fn primary_path(&self) -> PathBuf {
        self.primary_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(".primary"))
    }

    /// Check every value; the error names the key, the value and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() {
            return Err(err("node_id", "", "must not be empty"));
        }
        if self.node_id.contains(char::is_whitespace) {
            return Err(err("node_id", &self.node_id, "must not contain whitespace"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(err("heartbeat_interval", "0s", "must be above zero"));
        }
        if self.cluster_secret.is_none()
            && !self.raft_addr.ip().is_loopback()
            && !self.allow_insecure_raft
        {
            return Err(err(
                "cluster_secret",
                "",
                format!(
                    "required when raft_addr ({}) is not loopback: anyone reaching the Raft port could vote, append and depose the leader; set it (16+ characters, the same on every node), or allow_insecure_raft = true on a network nobody else reaches",
                    self.raft_addr
                ),
            ));
        }
        if self.election_timeout_min <= self.heartbeat_interval {
            return Err(err(
                "election_timeout_min",
                fmt_dur(self.election_timeout_min),
                format!(
                    "must be above heartbeat_interval ({})",
                    fmt_dur(self.heartbeat_interval)
                ),
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(err(
                "election_timeout_max",
                fmt_dur(self.election_timeout_max),
                format!(
                    "must be above election_timeout_min ({})",
                    fmt_dur(self.election_timeout_min)
                ),
            ));
        }
        // The old leader stops acting at (last quorum ack + min + re-check tick); nobody can be
        // elected before (last heartbeat + max). Keep a heartbeat of margin between the two.
        if self.election_timeout_max - self.election_timeout_min < self.heartbeat_interval {
            return Err(err(
                "election_timeout_max",
                fmt_dur(self.election_timeout_max),
                format!(
                    "must exceed election_timeout_min by at least heartbeat_interval ({}), the margin that keeps an old leader from overlapping a new one",
                    fmt_dur(self.heartbeat_interval)
                ),
            ));
        }
        if let Some(addr) = self.lease_addr {
            if !addr.ip().is_loopback() && self.lease_token.is_none() {
                return Err(err(
                    "lease_token",
                    "",
                    format!(
                        "required when lease_addr ({addr}) is not loopback: anyone reaching it could destroy or take over LiteFS sessions; set it and give LiteFS the same as CONSUL_HTTP_TOKEN"
                    ),
                ));
            }
        }
        if self
            .lease_token
            .as_ref()
            .is_some_and(|t| t.len() < MIN_SECRET_LEN)
        {
            return Err(err(
                "lease_token",
                "(hidden)",
                "must be at least 16 characters",
            ));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(err(
                "lease_ttl",
                fmt_dur(self.lease_ttl),
                "must be at least 1s: LiteFS retries a failed renew after 1 s and gives up when (time since the last renew + 1 s) > TTL, so a shorter TTL ends the lease on the first failed renew",
            ));
        }
        if self.lease_ttl > MAX_LEASE_TTL {
            return Err(err(
                "lease_ttl",
                fmt_dur(self.lease_ttl),
                "must be at most 60s: a crashed primary's LiteFS lease holds writes up to TTL, and a longer one buys nothing (LiteFS renews every TTL/2)",
            ));
        }
        if let Some(secret) = &self.cluster_secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(err(
                    "cluster_secret",
                    "<redacted>",
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        for (key, cmd) in [
            ("on_promote", &self.on_promote),
            ("on_demote", &self.on_demote),
        ] {
            if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(err(key, "", "must not be empty when set"));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "", "must not be empty"));
        }
        if self.peers.is_empty() {
            return Err(err(
                "peers",
                "[]",
                "list every node of the cluster (3 or 5 for fault tolerance)",
            ));
        }
        for (i, spec) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            match spec {
                PeerSpec::Short(s) => {
                    let (host, port) =
                        split_host_port(s).ok_or_else(|| err(&key, s, "expected \"host:port\""))?;
                    check_id(&key, host)?;
                    check_port(&key, s, port)?;
                }
                PeerSpec::Table {
                    id, raft, proxy, ..
                } => {
                    check_id(&format!("{key}.id"), id)?;
                    let (_, port) = split_host_port(raft).ok_or_else(|| {
                        err(format!("{key}.raft"), raft, "expected \"host:port\"")
                    })?;
                    check_port(&format!("{key}.raft"), raft, port)?;
                    if let Some(p) = proxy {
                        if !(p.starts_with("http://") || p.starts_with("https://")) {
                            return Err(err(
                                format!("{key}.proxy"),
                                p,
                                "must be an http:// or https:// URL",
                            ));
                        }
                    }
                }
            }
        }
        let peers = self.resolve_peers(0);
        if !peers.iter().any(|p| p.voter) {
            return Err(err(
                "peers",
                "",
                "no voter: at least one peer must have voter = true (the default)",
            ));
        }
        let mut names = HashSet::new();
        let mut nums: BTreeMap<u64, &str> = BTreeMap::new();
        for p in &peers {
            if !names.insert(p.id.as_str()) {
                return Err(err("peers", &p.id, "this id is listed twice"));
            }
            if let Some(other) = nums.insert(node_num(&p.id), &p.id) {
                return Err(err(
                    "peers",
                    &p.id,
                    format!("its hashed Raft id collides with {other:?}; rename one"),
                ));
            }
        }
        Ok(())
    }

    /// Every member of the cluster, this node included, sorted by id.
    ///
    /// Short-form peers get `http://<host>:<local_proxy_port>` as proxy URL. If this node is
    /// not listed it is added with `advertise_raft` (or `raft_addr`).
    pub fn resolve_peers(&self, local_proxy_port: u16) -> Vec<Peer> {
        let mut out: Vec<Peer> = self
            .peers
            .iter()
            .map(|spec| match spec {
                PeerSpec::Short(s) => {
                    let host = split_host_port(s).map(|(h, _)| h).unwrap_or(s.as_str());
                    Peer {
                        id: host.to_string(),
                        raft: s.clone(),
                        proxy: format!("http://{}:{local_proxy_port}", bracket(host)),
                        voter: true,
                    }
                }
                PeerSpec::Table {
                    id,
                    raft,
                    proxy,
                    voter,
                } => {
                    let host = split_host_port(raft)
                        .map(|(h, _)| h)
                        .unwrap_or(raft.as_str());
                    Peer {
                        id: id.clone(),
                        raft: raft.clone(),
                        proxy: proxy.clone().unwrap_or_else(|| {
                            format!("http://{}:{local_proxy_port}", bracket(host))
                        }),
                        voter: voter.unwrap_or(true),
                    }
                }
            })
            .collect();
        if !self.node_id.is_empty() && !out.iter().any(|p| p.id == self.node_id) {
            let raft = self
                .advertise_raft
                .clone()
                .unwrap_or_else(|| self.raft_addr.to_string());
            out.push(Peer {
                id: self.node_id.clone(),
                raft,
                proxy: format!("http://{}:{local_proxy_port}", bracket(&self.node_id)),
                voter: true,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// The numeric Raft id of a node name: the first 8 bytes of SHA-256(name).
///
/// Derived from the name (not the position in `peers`) so editing the peer list never
/// renumbers a node whose vote is already on disk.
pub fn node_num(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

fn check_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(err(
            key,
            id,
            "must be a non-empty name without spaces or '/'",
        ));
    }
    Ok(())
}

fn check_port(key: &str, value: &str, port: &str) -> Result<(), ConfigError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(err(key, value, "port must be 1..65535")),
    }
}

/// Split `host:port`, `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = tail.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host, port))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn fmt_dur(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            node_id: "node-1".into(),
            cluster_secret: Some("a-test-secret-16-chars".into()),
            peers: vec![
                PeerSpec::Short("node-1:4321".into()),
                PeerSpec::Short("node-2:4321".into()),
                PeerSpec::Table {
                    id: "node-3".into(),
                    raft: "10.0.0.3:4321".into(),
                    proxy: Some("http://10.0.0.3:8080".into()),
                    voter: None,
                },
            ],
            ..Config::default()
        }
    }

    /// `voter = false` marks a non-voting peer; voters are the default; a cluster needs one.
    #[test]
    fn a_peer_table_may_be_a_non_voter_but_not_every_peer() {
        let cfg: Config = toml::from_str(
            r#"
            node_id = "node-1"
            raft_addr = "127.0.0.1:4321"
            peers = ["node-1:4321", { id = "r-1", raft = "127.0.0.1:4322", voter = false }]
            "#,
        )
        .expect("parse");
        cfg.validate().expect("valid");
        let voters: Vec<(String, bool)> = cfg
            .resolve_peers(8080)
            .into_iter()
            .map(|p| (p.id, p.voter))
            .collect();
        assert_eq!(
            voters,
            [("node-1".to_owned(), true), ("r-1".to_owned(), false)]
        );
        let none: Config = toml::from_str(
            r#"
            node_id = "node-1"
            raft_addr = "127.0.0.1:4321"
            peers = [{ id = "node-1", raft = "127.0.0.1:4321", voter = false }]
            "#,
        )
        .expect("parse");
        assert_eq!(none.validate().unwrap_err().key, "peers");
        let typo = toml::from_str::<Config>(
            r#"
            node_id = "node-1"
            peers = [{ id = "node-1", raft = "127.0.0.1:4321", votr = false }]
            "#,
        );
        assert!(typo.unwrap_err().to_string().contains("votr"));
    }

    #[test]
    fn toml_accepts_short_and_table_peers_and_humantime() {
        let cfg: Config = toml::from_str(
            r#"
            node_id = "node-1"
            raft_addr = "127.0.0.1:4321"
            data_dir = "/tmp/x"
            heartbeat_interval = "40ms"
            election_timeout_min = "200ms"
            election_timeout_max = "1s"
            peers = ["node-1:4321", { id = "node-2", raft = "10.0.0.2:4321", proxy = "http://10.0.0.2:8080" }]
            "#,
        )
        .expect("parse");
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(40));
        assert_eq!(cfg.election_timeout_max, Duration::from_secs(1));
        cfg.validate().expect("valid");
        let peers = cfg.resolve_peers(8080);
        assert_eq!(
            peers,
            vec![
                Peer {
                    id: "node-1".into(),
                    raft: "node-1:4321".into(),
                    proxy: "http://node-1:8080".into(),
                    voter: true,
                },
                Peer {
                    id: "node-2".into(),
                    raft: "10.0.0.2:4321".into(),
                    proxy: "http://10.0.0.2:8080".into(),
                    voter: true,
                },
            ]
        );
        assert_eq!(cfg.primary_path(), PathBuf::from("/tmp/x/.primary"));
    }

    #[test]
    fn defaults_are_lan_tuned() {
        let c = Config::default();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.election_timeout_min, Duration::from_millis(150));
        assert_eq!(c.election_timeout_max, Duration::from_millis(300));
    }

    /// Off loopback the Raft port needs the secret (or an explicit waiver); on loopback
    /// nobody else can reach it.
    #[test]
    fn an_unsigned_raft_port_off_loopback_is_refused() {
        let mut c = base();
        c.cluster_secret = None;
        assert_eq!(c.validate().unwrap_err().key, "cluster_secret");
        c.allow_insecure_raft = true;
        c.validate().expect("waived");
        c.allow_insecure_raft = false;
        c.raft_addr = "127.0.0.1:4321".parse().unwrap();
        c.validate().expect("loopback");
    }

    /// The lease endpoint off loopback needs a token.
    #[test]
    fn a_lease_endpoint_off_loopback_needs_a_token() {
        let mut c = base();
        c.lease_addr = Some("0.0.0.0:8500".parse().unwrap());
        assert_eq!(c.validate().unwrap_err().key, "lease_token");
        c.lease_token = Some("a-lease-token-of-16+".into());
        c.validate().expect("with a token");
        c.lease_addr = Some("127.0.0.1:8500".parse().unwrap());
        c.lease_token = None;
        c.validate().expect("loopback");
    }

    #[test]
    fn validate_names_key_value_and_reason() {
        base().validate().expect("base is valid");

        let mut c = base();
        c.election_timeout_max = Duration::from_millis(100);
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "election_timeout_max");
        assert_eq!(e.value, "100ms");
        assert!(e.reason.contains("election_timeout_min"), "{e}");

        let mut c = base();
        c.election_timeout_max = Duration::from_millis(180);
        let e = c.validate().unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("election_timeout_max", "180ms")
        );

        let mut c = base();
        c.peers.push(PeerSpec::Short("node-2:4322".into()));
        assert_eq!(c.validate().unwrap_err().value, "node-2");

        let mut c = base();
        c.peers[1] = PeerSpec::Short("node-2".into());
        let e = c.validate().unwrap_err();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("peers[1]", "node-2"));

        let mut c = base();
        c.cluster_secret = Some("short".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "cluster_secret");
        assert!(
            !e.to_string().contains("short"),
            "secret must not leak: {e}"
        );

        let mut c = base();
        c.peers.clear();
        assert_eq!(c.validate().unwrap_err().key, "peers");

        for (ttl, ok) in [(999, false), (1000, true), (60_000, true), (60_001, false)] {
            let mut c = base();
            c.lease_ttl = Duration::from_millis(ttl);
            match c.validate() {
                Ok(()) => assert!(ok, "{ttl} ms accepted"),
                Err(e) => {
                    assert!(!ok, "{ttl} ms refused: {e}");
                    assert_eq!(e.key, "lease_ttl");
                }
            }
        }
    }

    #[test]
    fn self_is_added_when_missing_from_peers() {
        let mut c = base();
        c.node_id = "node-4".into();
        c.advertise_raft = Some("10.0.0.4:4321".into());
        let peers = c.resolve_peers(8080);
        assert_eq!(peers.len(), 4);
        let me = peers.iter().find(|p| p.id == "node-4").expect("self added");
        assert_eq!(me.raft, "10.0.0.4:4321");
    }

    #[test]
    fn node_num_is_stable() {
        assert_eq!(node_num("node-1"), node_num("node-1"));
        assert_ne!(node_num("node-1"), node_num("node-2"));
    }
}
