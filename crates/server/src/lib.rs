//! The `litefs-proxy` binary as a library: CLI, layered config, role sources feeding the
//! proxy's `Primary` watch, signals and drain.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster_status;
pub mod config;
pub mod demo;
pub mod demo_watch;
pub mod lease_keeper;
pub mod litefs_config;
pub mod litefs_yml;
pub mod peer_view;
pub mod role;
pub mod run;
pub mod signals;

use std::{ffi::OsString, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ConfigArgs};

/// Exit code for a bad command line or config (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Parses `args` and runs the command.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Cluster(cli::ClusterCommand::Status(a)) => cluster_status::main(a),
        Command::Demo(a) => demo::supervise(a),
        Command::DemoNode(a) => demo::node(a),
        Command::SimLitefs(a) => demo::sim_litefs(a),
        Command::LeaseKeeper => lease_keeper::main(),
        Command::Check(args) => with_config(&args, |cfg| {
            for w in config::warnings(&cfg) {
                eprintln!("litefs-proxy: warning: {w}");
            }
            print!("{}", config::to_redacted_toml(&cfg));
            ExitCode::SUCCESS
        }),
        Command::Run(args) => with_config(&args, |cfg| block_on(run::run(cfg))),
        Command::LitefsConfig(a) => with_config(&a.config, |cfg| {
            let opts = litefs_config::Options {
                data_dir: a.data_dir.clone(),
                exec: a.exec.clone(),
            };
            match litefs_config::render(&cfg, &opts) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("litefs-proxy: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }),
    }
}

/// Sets up logging and loads the layered config, or exits 64 naming the bad key.
fn with_config(args: &ConfigArgs, then: impl FnOnce(config::Config) -> ExitCode) -> ExitCode {
    if let Err(e) = init_tracing(args.log.as_deref()) {
        eprintln!(
            "litefs-proxy: invalid config: --log = {:?}: {e}",
            args.log.as_deref().unwrap_or("")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match config::load(args) {
        Ok(cfg) => then(cfg),
        Err(e) => {
            eprintln!("litefs-proxy: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Runs `fut` on a multi-threaded runtime.
pub fn block_on(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    block_on_value(fut).unwrap_or_else(|code| code)
}

/// Runs `fut` on a multi-threaded runtime; `Err` (said on stderr) when there is none.
pub fn block_on_value<T>(fut: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(fut)),
        Err(e) => {
            eprintln!("litefs-proxy: cannot start the runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Writes to stdout; a closed stdout (piped into `head`, say) is not a reason to stop.
pub fn say(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes()).and_then(|()| out.flush());
}

/// The log filter when neither `--log` nor `RUST_LOG` is given. openraft logs every vote
/// and state change (with whole state dumps) at `info`; its warnings still show, and the
/// election's own role changes are logged by `litefs_election` at `info`. openraft's lines about
/// single failed RPCs are dropped too (see [`per_rpc_openraft_line`]).
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// openraft logs each failed RPC to a peer at WARN/ERROR: every replication attempt
/// (`openraft::replication`: "error replication to target", "RPCError"; the engine's
/// replication handler: "update progress error", "heartbeat error"; snapshot sends) and, in its
/// core, each vote request and leadership check that a peer did not answer (the events with a
/// `target` field). While one peer is down that is tens of lines a second. The election's
/// transport logs the peer going down and coming back instead, once each (`peer unreachable`,
/// `peer reachable again`), so with the default filter these are dropped; `--log` / `RUST_LOG`
/// show them. openraft's other warnings and errors (storage, fatal) stay.
pub fn per_rpc_openraft_line(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let warn = *meta.level() == tracing::Level::WARN;
    meta.is_event()
        && (target.starts_with("openraft::replication")
            || (warn && target.starts_with("openraft::engine::handler::replication_handler"))
            || (warn && target.starts_with("openraft::network::snapshot_transport"))
            || (target.starts_with("openraft::core") && meta.fields().field("target").is_some()))
}

/// Logs to stderr, filtered by `--log`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`].
pub fn init_tracing(filter: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::{
        filter::filter_fn, layer::SubscriberExt as _, util::SubscriberInitExt as _, Layer as _,
    };
    let (filter, default) = match filter {
        Some(f) => (EnvFilter::try_new(f).map_err(|e| e.to_string())?, false),
        None => match EnvFilter::try_from_default_env() {
            Ok(f) => (f, false),
            Err(_) => (EnvFilter::new(DEFAULT_LOG_FILTER), true),
        },
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter)
        .with_filter(filter_fn(move |meta| {
            !(default && per_rpc_openraft_line(meta))
        }));
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| e.to_string())
}
