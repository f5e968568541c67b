//! `litefs-proxy litefs-config`: prints a `litefs.yml` for this node from the litefs-proxy
//! config, so LiteFS and litefs-proxy agree on names, mount and who may be primary.
//!
//! - `role.source = "raft"`: `lease.type: consul` against this node's lease endpoint
//!   (`[election] lease_addr`), `hostname` = the election `node_id` (the name the endpoint
//!   compares with the Raft leader's), `advertise-url` = this node's address in `peers` (as the
//!   other nodes reach it) with the port of `proxy.litefs_api`, `candidate: true`,
//!   `promote: false` (a LiteFS handoff would move the lock off the Raft leader; the endpoint
//!   refuses it anyway), `ttl` / `lock-delay` from `election.lease_ttl` / `lease_lock_delay`.
//! - `role.source = "static"`: `lease.type: static`, `candidate` = `role.is_primary`, and the
//!   primary's hostname and API URL (LiteFS's static lease names the primary on every node).
//! - `http.addr` listens on every interface at the port of `proxy.litefs_api` (litefs-proxy
//!   reaches LiteFS there, the other nodes at `advertise-url`).
//! - No `proxy:` section: litefs-proxy serves the app port instead of LiteFS's proxy.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, InvalidConfig};
use crate::role::{raft_source, RoleSource};

/// The KV key LiteFS locks (its `lease.consul.key`).
pub const LEASE_KEY: &str = "litefs/primary";

/// What the litefs-proxy config does not say.
#[derive(Debug, Clone)]
pub struct Options {
    /// `data.dir`: LiteFS's own data directory.
    pub data_dir: PathBuf,
    /// `exec`: the command LiteFS starts once it is primary or connected to the primary.
    pub exec: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from("/var/lib/litefs"),
            exec: None,
        }
    }
}

/// YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A duration as Go's `time.ParseDuration` reads it.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The lease endpoint as a URL this node's LiteFS can call (a wildcard bind means loopback).
fn lease_url(addr: SocketAddr) -> String {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{a}")
}

fn host_of_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    uri.host().map(|h| h.trim_matches(['[', ']']).to_string())
}

/// The port LiteFS's API listens on: the one litefs-proxy is configured to reach it at.
fn litefs_api_port(cfg: &Config) -> Result<u16, InvalidConfig> {
    let api = &cfg.proxy.litefs_api;
    let bad = |why: &str| InvalidConfig::new("proxy.litefs_api", q(api), why);
    let uri: http::Uri = api
        .parse()
        .map_err(|_| bad("not a URL; expected http://host:port"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad("expected http://host:port (LiteFS serves plain HTTP)"));
    }
    Ok(uri.port_u16().unwrap_or(80))
}

/// `http://<host>:<port>` for a host as `http::Uri` or a peer address spells it.
fn api_url(host: &str, port: u16) -> String {
    let host = host.trim_matches(['[', ']']);
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// This node's host as the other nodes reach it: its entry in `peers` (or `advertise_raft`).
fn advertised_host(e: &litefs_election::Config) -> Result<String, InvalidConfig> {
    let me = e
        .resolve_peers(0)
        .into_iter()
        .find(|p| p.id == e.node_id)
        .map(|p| p.raft)
        .unwrap_or_default();
    let host = host_of_url(&format!("http://{me}")).unwrap_or_default();
    let wildcard = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if host.is_empty() || wildcard {
        return Err(InvalidConfig::new(
            "election.advertise_raft",
            q(&me),
            "LiteFS's lease.advertise-url needs this node's address as the other nodes reach it: list this node in election.peers or set advertise_raft",
        ));
    }
    Ok(host)
}

/// Render the litefs.yml text.
pub fn render(cfg: &Config, opts: &Options) -> Result<String, InvalidConfig> {
    let api_port = litefs_api_port(cfg)?;
    let mut out = String::new();
    let mut lease = String::new();
    let node;
    match cfg.role.source {
        RoleSource::Raft => {
            let e = raft_source::election_config(cfg.election.as_ref())?;
            let Some(addr) = e.lease_addr else {
                return Err(InvalidConfig::new(
                    "election.lease_addr",
                    "(unset)",
                    "LiteFS follows the Raft leader through the lease endpoint; set it, e.g. \"127.0.0.1:8500\"",
                ));
            };
            node = e.node_id.clone();
            let advertise = api_url(&advertised_host(&e)?, api_port);
            let _ = writeln!(lease, "lease:");
            let _ = writeln!(lease, "  type: \"consul\"");
            let _ = writeln!(lease, "  hostname: {}", q(&node));
            let _ = writeln!(lease, "  advertise-url: {}", q(&advertise));
            // A non-voter (`voter = false`) never leads, so its LiteFS never takes the lease.
            let voter = e
                .resolve_peers(0)
                .into_iter()
                .find(|p| p.id == e.node_id)
                .is_none_or(|p| p.voter);
            let _ = writeln!(lease, "  candidate: {voter}");
            let _ = writeln!(
                lease,
                "  # LiteFS never promotes itself; litefs-proxy asks for its handoff when Raft moves."
            );
            let _ = writeln!(lease, "  promote: false");
            let _ = writeln!(lease, "  consul:");
            let _ = writeln!(lease, "    url: {}", q(&lease_url(addr)));
            let _ = writeln!(lease, "    key: {}", q(LEASE_KEY));
            let _ = writeln!(lease, "    ttl: {}", q(&go_duration(e.lease_ttl)));
            let _ = writeln!(
                lease,
                "    lock-delay: {}",
                q(&go_duration(e.lease_lock_delay))
            );
        }
        RoleSource::Static => {
            node = cfg.proxy.node_name.clone();
            // The primary's name, and its host as the other nodes reach it.
            let (primary, host) = if cfg.role.is_primary {
                (node.clone(), node.clone())
            } else {
                let from_url = cfg
                    .role
                    .primary_url
                    .as_deref()
                    .and_then(host_of_url)
                    .ok_or_else(|| {
                        InvalidConfig::new(
                            "role.primary_url",
                            "(unset)",
                            "a static replica needs the primary's address for LiteFS",
                        )
                    })?;
                let named = cfg.role.primary_name.clone();
                (named.unwrap_or_else(|| from_url.clone()), from_url)
            };
            let _ = writeln!(lease, "lease:");
            let _ = writeln!(lease, "  type: \"static\"");
            let _ = writeln!(lease, "  # The primary's hostname and API URL, on every node.");
            let _ = writeln!(lease, "  hostname: {}", q(&primary));
            let _ = writeln!(lease, "  advertise-url: {}", q(&api_url(&host, api_port)));
            let _ = writeln!(lease, "  candidate: {}", cfg.role.is_primary);
        }
        RoleSource::Litefs => {
            return Err(InvalidConfig::new(
                "role.source",
                "\"litefs\"",
                "litefs-config writes configs for \"raft\" and \"static\"; with \"litefs\" LiteFS's own lease (e.g. a real Consul) decides",
            ))
        }
    }
    let source = match cfg.role.source {
        RoleSource::Raft => "raft",
        _ => "static",
    };
    let _ = writeln!(
        out,
        "# litefs.yml for node {}, printed by `litefs-proxy litefs-config` (role.source = {}).",
        q(&node),
        q(source)
    );
    let _ = writeln!(
        out,
        "# No `proxy:` section: litefs-proxy serves the app's port instead of LiteFS's proxy."
    );
    let _ = writeln!(out, "fuse:");
    let _ = writeln!(out, "  dir: {}", q(&cfg.proxy.mount.display().to_string()));
    let _ = writeln!(out, "data:");
    let _ = writeln!(out, "  dir: {}", q(&opts.data_dir.display().to_string()));
    let _ = writeln!(out, "http:");
    let _ = writeln!(out, "  addr: {}", q(&format!(":{api_port}")));
    out.push_str(&lease);
    if let Some(cmd) = &opts.exec {
        let _ = writeln!(out, "exec:");
        let _ = writeln!(out, "  - cmd: {}", q(cmd));
    }
    Ok(out)
}

/// Every key LiteFS's strict parser (yaml.v3 with KnownFields) accepts, from the `yaml:`
/// struct tags in superfly/litefs cmd/litefs/config.go (Config, ExecConfig, DataConfig,
/// FUSEConfig, HTTPConfig, ProxyConfig, LeaseConfig with its Consul struct, BackupConfig,
/// LogConfig, TracingConfig). `[]` marks a list element.
pub const LITEFS_KEYS: &[&str] = &[
    "exit-on-error",
    "skip-sync",
    "strict-verify",
    "exec",
    "exec[].cmd",
    "exec[].if-candidate",
    "data",
    "data.dir",
    "data.compress",
    "data.retention",
    "data.retention-monitor-interval",
    "fuse",
    "fuse.dir",
    "fuse.allow-other",
    "fuse.debug",
    "http",
    "http.addr",
    "http.snapshot-timeout",
    "proxy",
    "proxy.addr",
    "proxy.target",
    "proxy.db",
    "proxy.max-lag",
    "proxy.debug",
    "proxy.passthrough",
    "proxy.always-forward",
    "proxy.primary-redirect-timeout",
    "proxy.read-timeout",
    "proxy.read-header-timeout",
    "proxy.write-timeout",
    "proxy.idle-timeout",
    "lease",
    "lease.type",
    "lease.hostname",
    "lease.advertise-url",
    "lease.candidate",
    "lease.promote",
    "lease.reconnect-delay",
    "lease.demote-delay",
    "lease.databases",
    "lease.consul",
    "lease.consul.url",
    "lease.consul.key",
    "lease.consul.ttl",
    "lease.consul.lock-delay",
    "backup",
    "backup.type",
    "backup.path",
    "backup.url",
    "backup.cluster",
    "backup.auth-token",
    "log",
    "log.format",
    "log.timestamp",
    "log.debug",
    "tracing",
    "tracing.enabled",
    "tracing.path",
    "tracing.max-size",
    "tracing.max-count",
    "tracing.compress",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Inputs of the files in config/: node-1 of a three-node Raft cluster, and a static
    /// replica.
    const RAFT_TOML: &str = r#"
[proxy]
mount = "/litefs"
node_name = "node-1"
[role]
source = "raft"
[election]
node_id = "node-1"
lease_addr = "127.0.0.1:8500"
cluster_secret = "a-test-secret-16-chars"
peers = ["node-1:4321", "node-2:4321", "node-3:4321"]
"#;
    const STATIC_TOML: &str = r#"
[proxy]
mount = "/litefs"
node_name = "node-2"
[role]
source = "static"
is_primary = false
primary_url = "http://node-1:8080"
"#;
    const EXEC: &str = "gunicorn --bind 127.0.0.1:8000 mysite.wsgi";

    fn cfg(toml_text: &str) -> Config {
        toml::from_str(toml_text).expect("test config")
    }

    fn opts() -> Options {
        Options {
            exec: Some(EXEC.into()),
            ..Options::default()
        }
    }

    fn parse_yaml(text: &str) -> serde_json::Value {
        use figment::providers::{Format, Yaml};
        figment::Figment::from(Yaml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
    }

    fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(p.clone());
                    key_paths(v, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for v in a {
                    key_paths(v, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn at<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
        path.split('.').fold(v, |v, k| &v[k])
    }

    #[test]
    fn every_key_is_one_litefs_accepts_and_values_match_the_proxy_config() {
        for (name, text) in [("raft", RAFT_TOML), ("static", STATIC_TOML)] {
            let yml = render(&cfg(text), &opts()).expect(name);
            let v = parse_yaml(&yml);
            let mut keys = Vec::new();
            key_paths(&v, "", &mut keys);
            for k in &keys {
                assert!(
                    LITEFS_KEYS.contains(&k.as_str()),
                    "{name}: LiteFS rejects {k}"
                );
            }
            assert!(v.get("proxy").is_none(), "{name}: no proxy section");
            assert_eq!(at(&v, "fuse.dir"), "/litefs");
            assert_eq!(at(&v, "data.dir"), "/var/lib/litefs");
            assert_eq!(v["exec"][0]["cmd"], EXEC);
        }
        let v = parse_yaml(&render(&cfg(RAFT_TOML), &opts()).expect("raft"));
        assert_eq!(at(&v, "lease.type"), "consul");
        assert_eq!(at(&v, "lease.hostname"), "node-1");
        assert_eq!(at(&v, "lease.advertise-url"), "http://node-1:20202");
        assert_eq!(at(&v, "lease.candidate"), true);
        assert_eq!(at(&v, "lease.promote"), false);
        assert_eq!(at(&v, "lease.consul.url"), "http://127.0.0.1:8500");
        assert_eq!(at(&v, "lease.consul.key"), "litefs/primary");
        assert_eq!(at(&v, "lease.consul.ttl"), "1s");
        assert_eq!(at(&v, "lease.consul.lock-delay"), "0s");
        assert_eq!(at(&v, "http.addr"), ":20202");

        let v = parse_yaml(&render(&cfg(STATIC_TOML), &Options::default()).expect("static"));
        assert_eq!(at(&v, "lease.type"), "static");
        assert_eq!(at(&v, "lease.hostname"), "node-1", "the primary's name");
        assert_eq!(at(&v, "lease.candidate"), false);
        assert!(v.get("exec").is_none());
        let mut primary = cfg(STATIC_TOML);
        primary.role.is_primary = true;
        let v = parse_yaml(&render(&primary, &Options::default()).expect("static primary"));
        assert_eq!(at(&v, "lease.hostname"), "node-2");
        assert_eq!(at(&v, "lease.candidate"), true);
    }

    /// A non-voter's LiteFS is no candidate: it never leads, so it must never take the lease.
    #[test]
    fn a_non_voters_litefs_is_no_candidate() {
        let text = RAFT_TOML.replace(
            r#"peers = ["node-1:4321", "node-2:4321", "node-3:4321"]"#,
            r#"peers = [{ id = "node-1", raft = "node-1:4321", voter = false }, "node-2:4321", "node-3:4321", "node-4:4321"]"#,
        );
        let v = parse_yaml(&render(&cfg(&text), &opts()).expect("raft"));
        assert_eq!(at(&v, "lease.candidate"), false);
        assert_eq!(at(&v, "lease.hostname"), "node-1");
    }

    /// Two nodes on one host (ports and dirs apart), the other nodes reaching node-1 at an
    /// address of its own: nothing in litefs.yml is a default.
    #[test]
    fn api_port_advertise_url_data_dir_and_lease_timing_follow_the_config() {
        let text = r#"
[proxy]
mount = "/srv/n1/litefs"
node_name = "node-1"
litefs_api = "http://127.0.0.1:20303"
[role]
source = "raft"
[election]
node_id = "node-1"
data_dir = "/srv/n1/proxy"
cluster_secret = "a-test-secret-16-chars"
lease_addr = "127.0.0.1:8501"
lease_ttl = "4s"
lease_lock_delay = "500ms"
peers = [
  { id = "node-1", raft = "10.0.0.1:4321", proxy = "http://10.0.0.1:8081" },
  { id = "node-2", raft = "[fd00::2]:4321" },
  "node-3:4321",
]
"#;
        let opts = Options {
            data_dir: "/srv/n1/litefs-data".into(),
            exec: None,
        };
        let v = parse_yaml(&render(&cfg(text), &opts).expect("render"));
        assert_eq!(at(&v, "http.addr"), ":20303");
        assert_eq!(at(&v, "lease.advertise-url"), "http://10.0.0.1:20303");
        assert_eq!(at(&v, "data.dir"), "/srv/n1/litefs-data");
        assert_eq!(at(&v, "fuse.dir"), "/srv/n1/litefs");
        assert_eq!(at(&v, "lease.consul.url"), "http://127.0.0.1:8501");
        assert_eq!(at(&v, "lease.consul.ttl"), "4s");
        assert_eq!(at(&v, "lease.consul.lock-delay"), "500ms");

        // node-2's address is IPv6.
        let v = parse_yaml(
            &render(
                &cfg(&text.replace("node_id = \"node-1\"", "node_id = \"node-2\"")),
                &opts,
            )
            .expect("node-2"),
        );
        assert_eq!(at(&v, "lease.advertise-url"), "http://[fd00::2]:20303");

        // A node missing from peers, on a wildcard address: nothing the others can reach.
        let lonely = text.replace("node_id = \"node-1\"", "node_id = \"node-9\"");
        let e = render(&cfg(&lonely), &opts).unwrap_err();
        assert_eq!(e.key, "election.advertise_raft");
        let adv = lonely.replace("lease_ttl", "advertise_raft = \"10.0.0.9:4321\"\nlease_ttl");
        let v = parse_yaml(&render(&cfg(&adv), &opts).expect("advertise_raft"));
        assert_eq!(at(&v, "lease.advertise-url"), "http://10.0.0.9:20303");

        // Static: the replica names the primary, whose API is at its proxy URL's host.
        let mut st = cfg(STATIC_TOML);
        st.proxy.litefs_api = "http://127.0.0.1:20303".into();
        st.role.primary_url = Some("http://10.0.0.1:8080".into());
        st.role.primary_name = Some("node-1".into());
        let v = parse_yaml(&render(&st, &opts).expect("static"));
        assert_eq!(at(&v, "lease.hostname"), "node-1");
        assert_eq!(at(&v, "lease.advertise-url"), "http://10.0.0.1:20303");
        assert_eq!(at(&v, "http.addr"), ":20303");
    }

    #[test]
    fn configs_that_cannot_work_name_the_key() {
        let mut no_lease = cfg(RAFT_TOML);
        if let Some(e) = &mut no_lease.election {
            e.remove("lease_addr");
        }
        let e = render(&no_lease, &opts()).unwrap_err();
        assert_eq!(e.key, "election.lease_addr");
        let mut litefs = cfg(RAFT_TOML);
        litefs.role.source = RoleSource::Litefs;
        assert_eq!(render(&litefs, &opts()).unwrap_err().key, "role.source");
        let mut wildcard = cfg(RAFT_TOML);
        if let Some(e) = &mut wildcard.election {
            e.insert("lease_addr".into(), "0.0.0.0:8500".into());
            e.insert("lease_token".into(), "a-lease-token-of-16-chars".into());
        }
        let v = parse_yaml(&render(&wildcard, &opts()).expect("wildcard"));
        assert_eq!(at(&v, "lease.consul.url"), "http://127.0.0.1:8500");
        let mut api = cfg(RAFT_TOML);
        api.proxy.litefs_api = "https://127.0.0.1:20202".into();
        assert_eq!(render(&api, &opts()).unwrap_err().key, "proxy.litefs_api");
        let mut ttl = cfg(RAFT_TOML);
        if let Some(e) = &mut ttl.election {
            e.insert("lease_ttl".into(), "500ms".into());
        }
        assert_eq!(render(&ttl, &opts()).unwrap_err().key, "election.lease_ttl");
    }

    /// config/litefs.raft.yml and config/litefs.static.yml are this output; regenerate them
    /// with `UPDATE_CONFIG_EXAMPLES=1 cargo test -p litefs-proxy-server litefs_config`.
    #[test]
    fn example_files_in_config_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        for (file, text) in [
            ("litefs.raft.yml", RAFT_TOML),
            ("litefs.static.yml", STATIC_TOML),
        ] {
            let want = render(&cfg(text), &opts()).expect(file);
            let path = dir.join(file);
            if std::env::var_os("UPDATE_CONFIG_EXAMPLES").is_some() {
                std::fs::write(&path, &want).expect("write example");
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                have, want,
                "config/{file} is stale; regenerate: UPDATE_CONFIG_EXAMPLES=1 cargo test -p litefs-proxy-server litefs_config"
            );
        }
    }
}
