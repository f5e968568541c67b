//! Command line: `litefs-proxy run|check|cluster status|...` and the flags that override every other
//! config layer.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "litefs-proxy",
    version,
    about = "Consistency-aware HTTP proxy for LiteFS clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    #[command(after_help = file_only_keys_help())]
    Run(ConfigArgs),
    /// Validate the config and print the effective config as TOML (secrets redacted).
    Check(ConfigArgs),
    /// Print a litefs.yml for this node: fuse/data dirs, the lease (raft: LiteFS's consul
    /// lease against this node's lease endpoint; static: LiteFS's static lease), exec.
    LitefsConfig(LitefsConfigArgs),
    /// Look at a running cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A local demo cluster on 127.0.0.1: per node a process with litefs-proxy, Raft, a
    /// LiteFS stand-in and a demo app. Prints a curl session; Ctrl-C stops everything.
    Demo(DemoArgs),
    /// One node of the demo (started by `demo`; stops when `demo` goes away).
    #[command(hide = true)]
    DemoNode(DemoNodeArgs),
    /// The LiteFS stand-in as a process (crates/sim): mount files, API and replication
    /// stream, LiteFS's consul lease loop, optionally the demo app. For the demo and tests.
    #[command(hide = true)]
    SimLitefs(SimLitefsArgs),
    /// The node's lease endpoint as a process of its own (started by `run`, configured on
    /// stdin), so that it outlives a crash of `run`.
    #[command(hide = true)]
    LeaseKeeper,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// One row per peer: its proxy role, Raft role, LiteFS role and whether LiteFS is up,
    /// TXID, replication lag, term, leader, and when it last answered. A node that does not
    /// answer is listed `down`. Exits 1 when nothing could be asked.
    Status(ClusterStatusArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ClusterStatusArgs {
    /// Any node's litefs-proxy URL, e.g. `http://10.0.0.1:8080`: the cluster as that node
    /// sees it (it asks its peers every second), so only that node need be reachable.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub url: Option<String>,
    /// A litefs-proxy config: every peer of its `[election]` table is asked directly.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A JSON list of objects (`node`, `role`, `txid`, `lag_ms`, ...) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The proxy's endpoint prefix (with `--url`; a config says its own).
    #[arg(long, value_name = "PREFIX", default_value = "/litefs")]
    pub prefix: String,
    /// How long a node may take to answer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// A LiteFS node of the sim (see `litefs_sim::litefs`).
#[derive(Debug, Args, Clone)]
pub struct SimLitefsArgs {
    /// This node's hostname (what the lease key advertises).
    #[arg(long)]
    pub hostname: String,
    /// The mount directory (`<db>`, `<db>-pos`, `.primary`, `.lag`).
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,
    #[arg(long, default_value = "db.sqlite3")]
    pub db: String,
    /// LiteFS's `http.addr`: the API and the replication stream.
    #[arg(long, value_name = "ADDR")]
    pub api_addr: std::net::SocketAddr,
    /// `lease.advertise-url` (default: `http://<api-addr>`).
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// `lease.consul.url`: the node's lease endpoint.
    #[arg(long, value_name = "URL")]
    pub consul_url: String,
    /// `lease.consul.key`.
    #[arg(long, default_value = "litefs/primary")]
    pub lease_key: String,
    /// `lease.consul.ttl`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// `lease.consul.lock-delay`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub lock_delay: std::time::Duration,
    /// `lease.candidate`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub candidate: bool,
    /// Replication lag added to every transaction a replica receives, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub lag_ms: u64,
    /// Serve the demo app (an app writing through this node) on this address.
    #[arg(long, value_name = "ADDR")]
    pub app_addr: Option<std::net::SocketAddr>,
    /// A foreign app writes the database: poll it for commits.
    #[arg(long)]
    pub watch_commits: bool,
    /// Exit at once (without releasing anything, like a crash) when stdin closes: the
    /// process that started this node is gone.
    #[arg(long)]
    pub die_with_stdin: bool,
}

#[derive(Debug, Args, Clone)]
pub struct LitefsConfigArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// data.dir: LiteFS's own data directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/litefs")]
    pub data_dir: PathBuf,
    /// exec: the app command LiteFS starts once primary or connected to the primary.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
}

/// Ports are the first node's; node i uses port + i - 1.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Number of nodes: 1 to 7 (3 or 5 is what a real cluster runs: a quorum survives the
    /// loss of one or two).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Working directory (default: a fresh temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// First proxy port (the load balancer's targets).
    #[arg(long, default_value_t = 8081)]
    pub proxy_port: u16,
    /// First demo-app port.
    #[arg(long, default_value_t = 8001)]
    pub app_port: u16,
    /// First Raft port.
    #[arg(long, default_value_t = 4321)]
    pub raft_port: u16,
    /// First port of the LiteFS stand-in's API (/info, /events, replication stream).
    #[arg(long, default_value_t = 20202)]
    pub api_port: u16,
    /// First port of the lease endpoint each node's LiteFS uses as its Consul.
    #[arg(long, default_value_t = 8500)]
    pub lease_port: u16,
    /// Replication lag of the LiteFS stand-in, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub lag_ms: u64,
}

#[derive(Debug, Args, Clone)]
pub struct DemoNodeArgs {
    #[command(flatten)]
    pub demo: DemoArgs,
    /// This node's number, from 1.
    #[arg(long)]
    pub index: u16,
}

/// Where the config comes from, and flags that override it. Layers, lowest first:
/// defaults < `--litefs-config` < `--config` < `LITEFS_PROXY_<TABLE>__<KEY>` env < flags.
/// Flag values are passed through as text so that a bad one is reported by the same
/// validation, naming its config key.
#[derive(Debug, Args, Default, Clone)]
pub struct ConfigArgs {
    /// litefs-proxy TOML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An existing LiteFS config (litefs.yml): its `proxy:` section and `fuse.dir` are read.
    #[arg(long, value_name = "FILE")]
    pub litefs_config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,litefs_proxy=debug`); default
    /// RUST_LOG, else `info,openraft=warn`.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,

    /// [proxy] addr: listen address, `host:port` or `:port`.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// [proxy] target: the local app, `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// [proxy] db: database whose position gates reads.
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// [proxy] mount: LiteFS FUSE mount directory.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<String>,
    /// [proxy] node_name: this node's name (default: the machine's hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// [proxy] litefs_api: LiteFS HTTP API base URL.
    #[arg(long, value_name = "URL")]
    pub litefs_api: Option<String>,
    /// [proxy] txid_source: `pos-file` or `events`.
    #[arg(long, value_name = "SOURCE")]
    pub txid_source: Option<String>,
    /// [proxy] on_read_timeout: `primary` or `error`.
    #[arg(long, value_name = "ACTION")]
    pub on_read_timeout: Option<String>,
    /// [proxy] read_wait_timeout, e.g. `2s`.
    #[arg(long, value_name = "DURATION")]
    pub read_wait_timeout: Option<String>,
    /// [proxy] primary_redirect_timeout, e.g. `5s`.
    #[arg(long, value_name = "DURATION")]
    pub primary_redirect_timeout: Option<String>,

    /// [role] source: `static`, `litefs` or `raft`.
    #[arg(long, value_name = "SOURCE")]
    pub role_source: Option<String>,
    /// [role] is_primary (static): `--is-primary`, `--is-primary=false`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub is_primary: Option<bool>,
    /// [role] primary_url (static replica): the primary's litefs-proxy URL.
    #[arg(long, value_name = "URL")]
    pub primary_url: Option<String>,
    /// [role] primary_name (static replica): the primary's node name.
    #[arg(long, value_name = "NAME")]
    pub primary_name: Option<String>,
    /// [role] primary_url_template (litefs): e.g. `http://{hostname}:8080`.
    #[arg(long, value_name = "TEMPLATE")]
    pub primary_url_template: Option<String>,

    /// [election] lease_ttl: LiteFS's lease.consul.ttl (1s..60s).
    #[arg(long, value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// [election] lease_lock_delay: LiteFS's lease.consul.lock-delay.
    #[arg(long, value_name = "DURATION", alias = "lock-delay")]
    pub lease_lock_delay: Option<String>,
}

/// The config keys that have a flag (see [`ConfigArgs::overrides`]).
const FLAGGED_KEYS: &[&str] = &[
    "proxy.addr",
    "proxy.target",
    "proxy.db",
    "proxy.mount",
    "proxy.node_name",
    "proxy.litefs_api",
    "proxy.txid_source",
    "proxy.on_read_timeout",
    "proxy.read_wait_timeout",
    "proxy.primary_redirect_timeout",
    "role.source",
    "role.is_primary",
    "role.primary_url",
    "role.primary_name",
    "role.primary_url_template",
    "election.lease_ttl",
    "election.lease_lock_delay",
];

/// `run --help`'s closing note: the keys without a flag, from the example config (which
/// lists every key, set or commented out; a test in tests/cli.rs keeps it so).
fn file_only_keys_help() -> String {
    const EXAMPLE: &str = include_str!("../../../config/litefs-proxy.toml");
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for line in EXAMPLE.lines() {
        let body = line.strip_prefix("# ").unwrap_or(line);
        if let Some(t) = body.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            tables.push((t.to_owned(), Vec::new()));
            continue;
        }
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if let Some((table, keys)) = tables.last_mut() {
            let name = format!("{table}.{key}");
            if plain && !FLAGGED_KEYS.contains(&name.as_str()) && !keys.iter().any(|k| k == key) {
                keys.push(key.to_owned());
            }
        }
    }
    let mut lines = vec![
        "These keys have no flag; they are set only in the config file or the environment \
         (LITEFS_PROXY_<TABLE>__<KEY>, e.g. LITEFS_PROXY_PROXY__SYNC_REPLICAS=1):"
            .to_owned(),
    ];
    for (table, keys) in tables.iter().filter(|(_, k)| !k.is_empty()) {
        lines.push(format!("  [{table}] {}", keys.join(", ")));
    }
    lines.push("`litefs-proxy check` prints every key with its effective value.".to_owned());
    lines.join("\n")
}

impl ConfigArgs {
    /// The flags that were given, as (config key path, flag, value).
    pub fn overrides(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let text =
            |key, flag, v: &Option<String>| v.clone().map(|v| (key, flag, toml::Value::String(v)));
        [
            text("proxy.addr", "--addr", &self.addr),
            text("proxy.target", "--target", &self.target),
            text("proxy.db", "--db", &self.db),
            text("proxy.mount", "--mount", &self.mount),
            text("proxy.node_name", "--node-name", &self.node_name),
            text("proxy.litefs_api", "--litefs-api", &self.litefs_api),
            text("proxy.txid_source", "--txid-source", &self.txid_source),
            text(
                "proxy.on_read_timeout",
                "--on-read-timeout",
                &self.on_read_timeout,
            ),
            text(
                "proxy.read_wait_timeout",
                "--read-wait-timeout",
                &self.read_wait_timeout,
            ),
            text(
                "proxy.primary_redirect_timeout",
                "--primary-redirect-timeout",
                &self.primary_redirect_timeout,
            ),
            text("role.source", "--role-source", &self.role_source),
            self.is_primary
                .map(|b| ("role.is_primary", "--is-primary", toml::Value::Boolean(b))),
            text("role.primary_url", "--primary-url", &self.primary_url),
            text("role.primary_name", "--primary-name", &self.primary_name),
            text(
                "role.primary_url_template",
                "--primary-url-template",
                &self.primary_url_template,
            ),
            text("election.lease_ttl", "--lease-ttl", &self.lease_ttl),
            text(
                "election.lease_lock_delay",
                "--lease-lock-delay",
                &self.lease_lock_delay,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
