//! Scenario 8: CPU per proxied GET, litefs-proxy against nginx in front of the same hello
//! app, under `wrk` (Debian's, a C load generator much lighter than the bench's own, so it
//! hides less of the difference on two shared cores), at 32 and 256 connections,
//! interleaved A B A B, 3 rounds. Each proxy's own CPU (utime + stime from /proc, nginx's
//! master and workers summed) over the run, divided by the requests wrk completed; the table
//! keeps wrk's throughput too. Skipped (a row says so) without wrk or nginx.

use std::{net::SocketAddr, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    procs::{self, free_port},
    report::{median, ratio, thousands, Group, Panel, Row},
    Ctx, Section,
};

/// `wrk` on PATH.
fn wrk_binary() -> Option<std::path::PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v wrk"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| std::path::PathBuf::from(s))
}

/// Requests completed and req/s from wrk's summary (`N requests in Xs, ...`,
/// `Requests/sec: R`).
fn parse_wrk(out: &str) -> Option<(u64, f64)> {
    let n = out
        .lines()
        .find(|l| l.contains(" requests in "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    Some((n, rps))
}

/// CPU ticks of `pid` and its children (nginx's workers).
fn tree_ticks(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(procs::children(pid))
        .filter_map(procs::cpu_ticks)
        .sum()
}

/// One wrk run against `addr`: (requests, req/s, µs of the proxy's CPU per request).
fn measure(
    wrk: &Path,
    addr: SocketAddr,
    conns: usize,
    secs: u64,
    pid: u32,
) -> Result<(u64, f64, f64)> {
    let before = tree_ticks(pid);
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
        .arg(format!("http://{addr}/"))
        .output()
        .context("run wrk")?;
    let after = tree_ticks(pid);
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((n, rps)) = parse_wrk(&text) else {
        bail!("cannot read wrk's output: {text}");
    };
    if n == 0 {
        bail!("wrk completed no request: {text}");
    }
    let us = (after - before) as f64 * 1e6 / procs::clk_tck() as f64 / n as f64;
    Ok((n, rps, us))
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let scen = "8. GET CPU, wrk";
    let (Some(wrk), Some(nginx_bin)) = (wrk_binary(), ctx.nginx.as_ref()) else {
        let mut r = Row::new(scen, "CPU per request");
        r.proxy = "skipped: needs wrk and nginx (apt-get install wrk nginx-light)".into();
        return Ok(Section {
            rows: vec![r],
            json: json!({"skipped": true}),
            panels: vec![],
        });
    };
    let (proxy, paddr) =
        procs::spawn_static_primary(&ctx.bin, ctx.dir.path(), "s8", ctx.hello).await?;
    let naddr = free_port();
    let nginx = procs::spawn_nginx(nginx_bin, ctx.dir.path(), naddr, ctx.hello, ctx.cores)?;
    nginx.wait_ready(naddr, "/").await?;
    let targets = [
        ("litefs-proxy", paddr, proxy.pid()),
        ("nginx", naddr, nginx.pid()),
    ];
    let (secs, rounds) = if ctx.quick { (1, 1) } else { (4, 3) };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut groups = Vec::new();
    for conns in [32usize, 256] {
        // per target: [(rps, µs per request)] per round
        let mut res: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for (ti, (name, addr, pid)) in targets.iter().enumerate() {
                // wrk blocks; the proxies are other processes.
                let (wrk, addr, pid) = (wrk.clone(), *addr, *pid);
                let (n, rps, us) =
                    tokio::task::spawn_blocking(move || measure(&wrk, addr, conns, secs, pid))
                        .await??;
                eprintln!(
                    "  s8 {name:>12} conns={conns:>3} round={round}: {rps:>8.0} req/s, {us:.1} µs CPU per request ({n} requests)"
                );
                raw.push(json!({"target": name, "conns": conns, "round": round,
                    "requests": n, "rps": rps, "cpu_us_per_request": us}));
                res[ti].push((rps, us));
            }
        }
        let med = |ti: usize, f: fn(&(f64, f64)) -> f64| {
            median(&res[ti].iter().map(f).collect::<Vec<_>>())
        };
        let (p_rps, p_us, n_rps, n_us) = (
            med(0, |x| x.0),
            med(0, |x| x.1),
            med(1, |x| x.0),
            med(1, |x| x.1),
        );
        let s = format!("{scen}, {conns} conns");
        let mut r = Row::new(&s, "CPU per request");
        r.proxy = format!("{p_us:.1} µs");
        r.baseline = format!("nginx {n_us:.1} µs");
        r.ratio = ratio(p_us, n_us);
        r.goal = "≤ 1.0× nginx".into();
        r.met = Some(p_us <= n_us);
        rows.push(r);
        let mut r = Row::new(&s, "throughput");
        r.proxy = format!("{} req/s", thousands(p_rps));
        r.baseline = format!("nginx {} req/s", thousands(n_rps));
        r.ratio = ratio(p_rps, n_rps);
        r.goal = "≥ nginx".into();
        r.met = Some(p_rps >= n_rps);
        rows.push(r);
        groups.push(Group {
            label: format!("{conns} connections"),
            bars: vec![("litefs-proxy".into(), p_us), ("nginx".into(), n_us)],
        });
    }
    Ok(Section {
        rows,
        json: json!({"runs": raw}),
        panels: vec![Panel {
            title: "CPU per GET (wrk)".into(),
            unit: "µs, median".into(),
            groups,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_summary() {
        let out = "Running 4s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.00ms  \
                   0.20ms   5.00ms   90.00%\n  123456 requests in 4.00s, 12.34MB read\n\
                   Requests/sec:  30864.00\nTransfer/sec:      3.08MB\n";
        assert_eq!(parse_wrk(out), Some((123_456, 30_864.0)));
        assert_eq!(parse_wrk("garbage"), None);
    }
}
