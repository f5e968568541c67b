//! The `litefs-proxy` binary as a library: CLI, layered config, role sources feeding the
//! proxy's `Primary` watch, signals and drain.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod demo;
pub mod litefs_config;
pub mod litefs_yml;
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
        Command::Demo(a) => demo::supervise(a),
        Command::DemoNode(a) => demo::node(a),
        Command::Check(args) => with_config(&args, |cfg| {
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
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("litefs-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter when neither `--log` nor `RUST_LOG` is given. openraft logs every vote
/// and state change (with whole state dumps) at `info`; its warnings still show, and the
/// election's own role changes are logged by `litefs_election` at `info`.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// Logs to stderr, filtered by `--log`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`].
pub fn init_tracing(filter: Option<&str>) -> Result<(), String> {
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|e| e.to_string())?,
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| e.to_string())
}
