//! The effective config: one figment stack, lowest first: defaults < `--litefs-config`
//! (LiteFS's `proxy:` section) < `--config` TOML < env `LITEFS_PROXY_<TABLE>__<KEY>` <
//! flags. Every problem becomes one [`InvalidConfig`] naming the key, its value and why.

use std::{fmt, path::Path};

use figment::{
    error::Kind,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Map, Value},
    Figment, Metadata, Profile, Provider,
};
use litefs_proxy::{patterns::Patterns, ConfigError, ProxyConfig};
use serde::{Deserialize, Serialize};

use crate::{
    cli::ConfigArgs,
    litefs_yml,
    role::{RoleConfig, RoleSource},
};

/// Env variables are `LITEFS_PROXY_<TABLE>__<KEY>`, e.g. `LITEFS_PROXY_PROXY__ADDR`.
pub const ENV_PREFIX: &str = "LITEFS_PROXY_";
/// Separates table and key in env names.
pub const ENV_SPLIT: &str = "__";
/// Shown instead of secrets.
pub const REDACTED: &str = "(redacted)";

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub role: RoleConfig,
    /// Raft election settings; parsed by the election wiring (not yet in this binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<toml::Table>,
}

/// A config that cannot work. Printed as `invalid config: <key> = <value>: <why>`; the
/// binary exits 64 (EX_USAGE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidConfig {
    pub key: String,
    /// Already rendered (strings quoted); secrets are never echoed.
    pub value: String,
    pub why: String,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config: {} = {}: {}",
            self.key, self.value, self.why
        )
    }
}

impl InvalidConfig {
    pub fn new(key: impl Into<String>, value: impl Into<String>, why: impl Into<String>) -> Self {
        InvalidConfig {
            key: key.into(),
            value: value.into(),
            why: why.into(),
        }
    }
}

impl From<ConfigError> for InvalidConfig {
    fn from(e: ConfigError) -> Self {
        let value = if is_secret(&e.key) {
            REDACTED.to_owned()
        } else {
            format!("{:?}", e.value)
        };
        InvalidConfig::new(e.key, value, e.why)
    }
}

/// Keys never echoed: in errors and in `check`'s output.
const SECRET_KEYS: [&str; 3] = ["token_secret", "cluster_secret", "lease_token"];

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| key.ends_with(k))
}

/// A provider under a name that says where its values came from, for error messages.
struct Named<P> {
    name: String,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Builds the figment stack for `args` (without extracting it).
pub fn figment(args: &ConfigArgs) -> Result<Figment, InvalidConfig> {
    let mut fig = Figment::from(Named {
        name: "defaults".into(),
        inner: Serialized::defaults(Config::default()),
    });
    if let Some(path) = &args.litefs_config {
        let proxy = litefs_yml::read(path)?;
        fig = fig.merge(Named {
            name: format!("--litefs-config {}", path.display()),
            inner: Serialized::default("proxy", proxy),
        });
    }
    if let Some(path) = &args.config {
        if !path.is_file() {
            return Err(InvalidConfig::new(
                "--config",
                format!("{:?}", path.display().to_string()),
                "no such file",
            ));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(env_provider());
    for (key, flag, value) in args.overrides() {
        fig = fig.merge(Named {
            name: format!("flag {flag}"),
            inner: Serialized::default(key, value),
        });
    }
    Ok(fig)
}

/// Keys whose type is text but whose default is unset, so the defaults cannot tell.
const OPTIONAL_TEXT_KEYS: &[&str] = &[
    "proxy.token_secret",
    "role.primary_url",
    "role.primary_name",
    "election.node_id",
    "election.raft_addr",
    "election.advertise_raft",
    "election.data_dir",
    "election.primary_file",
    "election.cluster_secret",
    "election.on_promote",
    "election.on_demote",
    "election.lease_addr",
    "election.lease_ttl",
    "election.lease_lock_delay",
];

/// `LITEFS_PROXY_<TABLE>__<KEY>`. Names without `__` (such as `LITEFS_PROXY_ROLE`, which
/// role-change hooks receive) are not config and are left alone.
fn env_provider() -> EnvLayer {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            if !rest.contains(ENV_SPLIT) {
                tracing::debug!(
                    var = %name,
                    "not a config variable (config variables are LITEFS_PROXY_<TABLE>__<KEY>)"
                );
            }
        }
    }
    EnvLayer(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains(ENV_SPLIT))
            .split(ENV_SPLIT),
    )
}

/// figment's `Env`, except that a text setting keeps its value as text: figment alone
/// would turn `LITEFS_PROXY_PROXY__NODE_NAME=1` into a number and reject it. Other values
/// are parsed as figment does (`true`, `5`, `[a, b]`).
struct EnvLayer(Env);

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let key = key.as_str();
            let text = OPTIONAL_TEXT_KEYS.contains(&key)
                || matches!(defaults.find_value(key), Ok(Value::String(..)));
            let value = if text {
                Value::from(raw)
            } else {
                raw.parse::<Value>().unwrap_or_else(|never| match never {})
            };
            insert_path(&mut dict, key, value);
        }
        // Values must stay untagged here so that figment tags them as ours (errors then
        // name the variable).
        let mut data = Map::new();
        data.insert(Profile::Default, dict);
        Ok(data)
    }
}

/// Sets `a.b.c` in `dict`, creating the tables on the way.
fn insert_path(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Loads, completes (node name) and validates the effective config.
pub fn load(args: &ConfigArgs) -> Result<Config, InvalidConfig> {
    let fig = figment(args)?;
    let mut cfg: Config = fig.extract().map_err(|e| from_figment(&fig, e))?;
    if cfg.proxy.node_name.is_empty() {
        cfg.proxy.node_name = hostname();
    }
    if cfg.proxy.sync_replicas.is_none() {
        cfg.proxy.sync_replicas = Some(default_sync_replicas(&cfg));
    }
    validate(&cfg)?;
    Ok(cfg)
}

/// Everything `run` would reject, checked without binding or connecting.
pub fn validate(cfg: &Config) -> Result<(), InvalidConfig> {
    cfg.proxy.validate()?;
    for (key, globs) in [
        ("proxy.passthrough", &cfg.proxy.passthrough),
        ("proxy.always_forward", &cfg.proxy.always_forward),
    ] {
        Patterns::new(globs).map_err(|e| {
            InvalidConfig::new(key, format!("{globs:?}"), format!("bad pattern: {e}"))
        })?;
    }
    cfg.role.validate(cfg.election.as_ref())?;
    validate_sync(cfg)?;
    if cfg.role.source == RoleSource::Litefs && cfg.proxy.litefs_api.is_empty() {
        return Err(InvalidConfig::new(
            "proxy.litefs_api",
            "\"\"",
            "role.source = \"litefs\" follows LiteFS's API: set its URL, e.g. http://127.0.0.1:20202",
        ));
    }
    Ok(())
}

/// What `check` points out in a config that works but is weaker than it should be.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.role.source == RoleSource::Raft && cfg.proxy.token_secret.is_none() {
        out.push(
            "proxy.token_secret is not set: anyone can send a forged litefs-txid cookie (e.g. ffffffffffffffff) that makes each of their reads wait read_wait_timeout on a replica and then go to the primary; set it (16+ characters, the same on every node)"
                .into(),
        );
    }
    out
}

/// Voters in the `[election]` table when the role source is Raft.
fn raft_peers(cfg: &Config) -> Option<usize> {
    (cfg.role.source == RoleSource::Raft)
        .then(|| crate::role::raft_source::election_config(cfg.election.as_ref()).ok())
        .flatten()
        .map(|e| e.resolve_peers(0).iter().filter(|p| p.voter).count())
}

/// `proxy.sync_replicas` when unset: 1 with the Raft role source and at least 3 voters
/// (every quorum then holds each acknowledged write), else 0.
pub fn default_sync_replicas(cfg: &Config) -> usize {
    match raft_peers(cfg) {
        Some(n) if n >= 3 => 1,
        _ => 0,
    }
}

fn validate_sync(cfg: &Config) -> Result<(), InvalidConfig> {
    let k = cfg.proxy.sync_replicas.unwrap_or(0);
    if k == 0 {
        return Ok(());
    }
    match raft_peers(cfg) {
        None => Err(InvalidConfig::new(
            "proxy.sync_replicas",
            k.to_string(),
            "needs role.source = \"raft\": replicas report their positions to the Raft leader",
        )),
        Some(n) if k >= n => Err(InvalidConfig::new(
            "proxy.sync_replicas",
            k.to_string(),
            format!(
                "the cluster has {} other voter(s) (only voters' copies count); set at most that, or 0",
                n.saturating_sub(1)
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The first figment error, as key, value and why (with where the value came from).
fn from_figment(fig: &Figment, err: figment::Error) -> InvalidConfig {
    let Some(e) = err.into_iter().next() else {
        return InvalidConfig::new("config", "?", "unknown error");
    };
    let mut path = e.path.clone();
    let why = match &e.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            if expected.is_empty() {
                "unknown key".to_owned()
            } else {
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown value; expected one of: {}", expected.join(", "))
        }
        // Parser messages span several lines (a source excerpt); keep the words.
        kind => kind
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains('|') && !l.starts_with('^'))
            .collect::<Vec<_>>()
            .join("; "),
    };
    let file = e.metadata.as_ref().and_then(|md| match &md.source {
        Some(figment::Source::File(p)) => Some(p.display().to_string()),
        _ => None,
    });
    let (key, value) = if path.is_empty() {
        // Not about one key: the file itself does not parse.
        match &file {
            Some(f) => ("--config".to_owned(), format!("{f:?}")),
            None => ("config".to_owned(), "?".to_owned()),
        }
    } else {
        let key = path.join(".");
        let value = if is_secret(&key) {
            REDACTED.to_owned()
        } else {
            fig.find_value(&key)
                .map(|v| render(&v))
                .unwrap_or_else(|_| "?".to_owned())
        };
        (key, value)
    };
    let origin = e.metadata.as_ref().map(|md| match &file {
        Some(f) => f.clone(),
        None if md.name.contains("environment variable") => {
            format!("{ENV_PREFIX}{}", path.join(ENV_SPLIT).to_uppercase())
        }
        None => md.name.to_string(),
    });
    let why = match origin {
        Some(origin) => format!("{why} (from {origin})"),
        None => why,
    };
    InvalidConfig::new(key, value, why)
}

/// A config value as TOML would show it (strings quoted).
fn render(v: &Value) -> String {
    match toml::Value::try_from(v) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{v:?}"),
    }
}

/// The effective config as TOML, with secrets redacted.
pub fn to_redacted_toml(cfg: &Config) -> String {
    let mut cfg = cfg.clone();
    if cfg.proxy.token_secret.is_some() {
        cfg.proxy.token_secret = Some(REDACTED.into());
    }
    if let Some(election) = &mut cfg.election {
        for key in SECRET_KEYS {
            if election.contains_key(key) {
                election.insert(key.into(), REDACTED.into());
            }
        }
    }
    toml::to_string(&cfg).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// This machine's hostname, the default node name (LiteFS's `.primary` holds hostnames).
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(Path::new(p)).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
