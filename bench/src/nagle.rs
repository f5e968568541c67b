//! Scenario 7: GET latency in front of an app that writes its answer's head and body in two
//! writes without TCP_NODELAY (as Python's `http.server` and Django's `runserver` do): on a
//! pooled keep-alive connection the body waits (Nagle) for the ACK of the head, which a
//! receiver that delays ACKs sends after 40 ms. One client connection, sequential GETs,
//! through litefs-proxy and through nginx (`keepalive 64`), against the app straight on a
//! fresh connection per request; interleaved A B C, 3 rounds. The app runs in this process.

use std::{net::SocketAddr, time::Instant};

use anyhow::Result;
use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::{
    client,
    procs::{self, free_port},
    report::{median, ms, percentile, Group, Panel, Row},
    Ctx, Section,
};

/// Per-request latencies (µs) of `n` sequential GETs: on one keep-alive connection, or on
/// a fresh connection each (`fresh`).
async fn sample(addr: SocketAddr, n: usize, fresh: bool) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    let mut kept = None;
    for _ in 0..n {
        let t = Instant::now();
        if fresh || kept.is_none() {
            kept = Some(client::connect(addr).await?);
        }
        let sender = kept.as_mut().expect("connected");
        let req = client::request(Method::GET, "/", &[], Bytes::new());
        client::send(sender, req).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        if fresh {
            kept = None;
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let app = litefs_proxy_tests::nagle_app::start().await?;
    let (_proxy, paddr) = procs::spawn_static_primary(&ctx.bin, ctx.dir.path(), "s7", app).await?;
    // (name, address, a fresh connection per request)
    let mut targets = vec![
        ("direct, fresh conn", app, true),
        ("litefs-proxy", paddr, false),
    ];
    let _nginx = match &ctx.nginx {
        Some(bin) => {
            let naddr = free_port();
            let n = procs::spawn_nginx(bin, ctx.dir.path(), naddr, app, ctx.cores)?;
            n.wait_ready(naddr, "/").await?;
            targets.push(("nginx", naddr, false));
            Some(n)
        }
        None => None,
    };
    let (n, rounds) = if ctx.quick { (20, 1) } else { (60, 3) };
    let mut res: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    let mut raw = Vec::new();
    for round in 0..rounds {
        for (ti, (name, addr, fresh)) in targets.iter().enumerate() {
            // The first request opens the upstream connection: not the case measured.
            sample(*addr, 2, *fresh).await?;
            let lat = sample(*addr, n, *fresh).await?;
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            eprintln!("  s7 {name:>18} round={round}: p50 {p50:.0} µs p99 {p99:.0} µs");
            raw.push(json!({"target": name, "round": round, "p50_us": p50, "p99_us": p99}));
            res[ti].push((p50, p99));
        }
    }
    let p50 = |ti: usize| median(&res[ti].iter().map(|x| x.0).collect::<Vec<_>>());
    let direct = p50(0);
    let scen = "7. GET, app with Nagle, 1 conn";
    let mut rows = Vec::new();
    let mut r = Row::new(scen, "added latency p50");
    r.proxy = format!("+{}", ms(p50(1) - direct));
    r.baseline = match targets.get(2) {
        Some(_) => format!(
            "nginx +{} (direct, fresh conn {})",
            ms(p50(2) - direct),
            ms(direct)
        ),
        None => format!("direct, fresh conn {} (no nginx)", ms(direct)),
    };
    if targets.len() > 2 {
        r.ratio = crate::report::ratio(p50(1) - direct, p50(2) - direct);
    }
    r.goal = "< 2 ms, < nginx".into();
    r.met = Some(p50(1) - direct < 2000.0 && (targets.len() < 3 || p50(1) < p50(2)));
    rows.push(r);
    let bars = targets
        .iter()
        .enumerate()
        .map(|(ti, (name, _, _))| (name.to_string(), p50(ti) / 1000.0))
        .collect();
    Ok(Section {
        rows,
        json: json!({"runs": raw, "p50_us": targets.iter().enumerate()
            .map(|(ti, (name, _, _))| (name.to_string(), json!(p50(ti))))
            .collect::<serde_json::Map<_, _>>()}),
        panels: vec![Panel {
            title: "GET in front of a Nagle app (1 conn)".into(),
            unit: "ms p50, median".into(),
            groups: vec![Group {
                label: "p50".into(),
                bars,
            }],
        }],
    })
}
