//! The benchmark harness: runs every scenario of the performance issue in one go against
//! real `litefs-proxy` processes on loopback, prints one markdown table, and writes the
//! raw numbers (bench/results/latest.json), the table (latest.md) and a chart (latest.svg).
//!
//! `cargo run -p litefs-proxy-bench --release [-- --quick] [-- --only 1,3]`
#![forbid(unsafe_code)]

mod client;
mod cpu;
mod durability;
mod failover;
mod forward;
mod hello;
mod load;
mod memory;
mod nagle;
mod procs;
mod report;
mod stall;
mod throughput;

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use serde_json::json;

/// What the scenarios share.
pub struct Ctx {
    pub bin: PathBuf,
    pub nginx: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    /// Short runs for development; numbers are not worth reporting.
    pub quick: bool,
    pub cores: usize,
    /// The hello app process every throughput-type scenario proxies to.
    pub hello: SocketAddr,
}

/// One scenario's share of the report.
pub struct Section {
    pub rows: Vec<report::Row>,
    pub json: serde_json::Value,
    pub panels: Vec<report::Panel>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hello") {
        return hello::main_child();
    }
    if args.first().map(String::as_str) == Some("load") {
        return load_child(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    // 10,000 client connections here, as many in the proxy (children inherit the limit).
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(quick, only, nofile))
}

/// `litefs-proxy-bench load <addr> <conns> <secs>`: the load generator alone, for profiling
/// a server by hand.
fn load_child(args: &[String]) -> Result<()> {
    let usage = "usage: litefs-proxy-bench load <addr> <conns> <secs>";
    let addr: SocketAddr = args.first().context(usage)?.parse()?;
    let conns: usize = args.get(1).context(usage)?.parse()?;
    let secs: f64 = args.get(2).context(usage)?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(load::run(&load::Spec {
        addr,
        conns,
        warmup: std::time::Duration::from_millis(500),
        duration: std::time::Duration::from_secs_f64(secs),
        method: http::Method::GET,
        path: "/".into(),
        body: bytes::Bytes::new(),
    }));
    println!(
        "{:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, errors {}",
        out.rps, out.lat.p50, out.lat.p99, out.errors
    );
    Ok(())
}

async fn run(quick: bool, only: Option<Vec<u32>>, nofile: u64) -> Result<()> {
    let started = Instant::now();
    let bin = procs::proxy_binary()?;
    let nginx = procs::nginx_binary();
    if nginx.is_none() {
        eprintln!("warning: nginx not found (apt-get install -y nginx-light); comparing with the app only");
    }
    let (cores, model) = procs::machine();
    let dir = tempfile::Builder::new()
        .prefix("litefs-proxy-bench")
        .tempdir()?;
    let (_hello, hello) = procs::spawn_hello(dir.path())?;
    let ctx = Ctx {
        bin,
        nginx,
        dir,
        quick,
        cores,
        hello,
    };
    eprintln!(
        "litefs-proxy bench: {cores} cores ({model}), open files {nofile}{}",
        if quick { ", QUICK run" } else { "" }
    );
    let want = |n: u32| only.as_ref().map_or(true, |o| o.contains(&n));
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    let mut raw = serde_json::Map::new();
    type Scenario = for<'a> fn(
        &'a Ctx,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Section>> + 'a>,
    >;
    let scenarios: [(u32, &str, Scenario); 8] = [
        (1, "throughput", |c| Box::pin(throughput::run(c))),
        (2, "forwarded_write", |c| Box::pin(forward::run(c))),
        (3, "stalled_reads", |c| Box::pin(stall::run(c))),
        (4, "failover", |c| Box::pin(failover::run(c))),
        (5, "memory", |c| Box::pin(memory::run(c))),
        (6, "durability", |c| Box::pin(durability::run(c))),
        (7, "nagle_app", |c| Box::pin(nagle::run(c))),
        (8, "cpu_per_request", |c| Box::pin(cpu::run(c))),
    ];
    for (n, name, f) in scenarios {
        if !want(n) {
            continue;
        }
        let t = Instant::now();
        eprintln!("scenario {n}: {name}");
        let s = f(&ctx)
            .await
            .with_context(|| format!("scenario {n} ({name})"))?;
        eprintln!("scenario {n} took {:.1} s", t.elapsed().as_secs_f64());
        rows.extend(s.rows);
        panels.extend(s.panels);
        raw.insert(name.into(), s.json);
    }

    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let machine = format!("{cores} cores ({model}), loopback, {date}");
    let table = report::table(&rows);
    println!("\n{table}");
    println!(
        "Machine: {machine}. Bench took {:.0} s.",
        started.elapsed().as_secs_f64()
    );

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&out)?;
    // Only a complete, full-length run is `latest`; --quick / --only runs go to `partial`.
    let stem = if quick || only.is_some() {
        "partial"
    } else {
        "latest"
    };
    let json = json!({
        "machine": {"nproc": cores, "cpu": model, "date": date},
        "quick": quick,
        "seconds": started.elapsed().as_secs_f64(),
        "table_markdown": table,
        "scenarios": raw,
    });
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(
        out.join(format!("{stem}.md")),
        format!("Machine: {machine}.\n\n{table}"),
    )?;
    std::fs::write(
        out.join(format!("{stem}.svg")),
        report::svg(&format!("litefs-proxy bench — {machine}"), &panels),
    )?;
    eprintln!("wrote {}/{stem}.{{json,md,svg}}", out.display());
    Ok(())
}
