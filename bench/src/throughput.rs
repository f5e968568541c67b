//! Scenario 1: GET throughput and latency at 32 and 256 keep-alive connections, direct to
//! the app, through litefs-proxy (static primary) and through nginx, interleaved A B C A B C.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::{
    load,
    procs::{self, free_port},
    report::{median, ratio, thousands, Group, Panel, Row},
    Ctx, Section,
};

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let (_proxy, paddr) =
        procs::spawn_static_primary(&ctx.bin, ctx.dir.path(), "s1", ctx.hello).await?;
    let mut targets = vec![("direct", ctx.hello), ("litefs-proxy", paddr)];
    let _nginx = match &ctx.nginx {
        Some(bin) => {
            let naddr = free_port();
            let n = procs::spawn_nginx(bin, ctx.dir.path(), naddr, ctx.hello, ctx.cores)?;
            n.wait_ready(naddr, "/").await?;
            targets.push(("nginx", naddr));
            Some(n)
        }
        None => None,
    };
    let (warmup, duration, rounds) = if ctx.quick {
        (Duration::from_millis(300), Duration::from_secs(1), 1)
    } else {
        (Duration::from_secs(1), Duration::from_secs(4), 3)
    };

    let mut raw = Vec::new();
    let mut rows = Vec::new();
    let mut panels = vec![
        Panel {
            title: "GET throughput".into(),
            unit: "req/s, median".into(),
            groups: vec![],
        },
        Panel {
            title: "GET p99 latency".into(),
            unit: "ms, median".into(),
            groups: vec![],
        },
    ];
    for conns in [32usize, 256] {
        // results[target] = [(rps, p50, p99)] per round
        let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for (ti, (name, addr)) in targets.iter().enumerate() {
                let spec = load::Spec {
                    addr: *addr,
                    conns,
                    warmup,
                    duration,
                    method: Method::GET,
                    path: "/".into(),
                    body: Bytes::new(),
                };
                let out = load::run(&spec).await;
                eprintln!(
                    "  s1 {name:>12} conns={conns:>3} round={round}: {:>8.0} req/s p50 {:.0} µs p99 {:.0} µs errors {}",
                    out.rps, out.lat.p50, out.lat.p99, out.errors
                );
                raw.push(json!({"target": name, "conns": conns, "round": round,
                    "rps": out.rps, "latency": out.lat.json(), "errors": out.errors}));
                results[ti].push((out.rps, out.lat.p50, out.lat.p99));
            }
        }
        let med = |ti: usize, f: fn(&(f64, f64, f64)) -> f64| {
            median(&results[ti].iter().map(f).collect::<Vec<_>>())
        };
        let m: Vec<(f64, f64, f64)> = (0..targets.len())
            .map(|ti| (med(ti, |r| r.0), med(ti, |r| r.1), med(ti, |r| r.2)))
            .collect();
        let (direct, proxy) = (m[0], m[1]);
        let nginx = m.get(2).copied();
        let base = |f: fn(&(f64, f64, f64)) -> String| {
            let d = f(&direct);
            match nginx {
                Some(n) => format!("nginx {} (direct {d})", f(&n)),
                None => format!("direct {d} (nginx not installed)"),
            }
        };
        let scen = format!("1. GET, {conns} conns");
        let mut r = Row::new(&scen, "throughput");
        r.proxy = format!("{} req/s", thousands(proxy.0));
        r.baseline = base(|x| format!("{} req/s", thousands(x.0)));
        if let Some(n) = nginx {
            r.ratio = ratio(proxy.0, n.0);
            r.met = Some(proxy.0 >= n.0);
        }
        r.goal = "≥ nginx".into();
        rows.push(r);
        let mut r = Row::new(&scen, "latency p50");
        r.proxy = crate::report::ms(proxy.1);
        r.baseline = base(|x| crate::report::ms(x.1));
        if let Some(n) = nginx {
            r.ratio = ratio(proxy.1, n.1);
        }
        rows.push(r);
        let mut r = Row::new(&scen, "latency p99");
        r.proxy = crate::report::ms(proxy.2);
        r.baseline = base(|x| crate::report::ms(x.2));
        if let Some(n) = nginx {
            r.ratio = ratio(proxy.2, n.2);
            r.met = Some(proxy.2 <= n.2);
        }
        r.goal = "≤ nginx".into();
        rows.push(r);
        panels[0].groups.push(Group {
            label: format!("{conns} connections"),
            bars: targets
                .iter()
                .zip(&m)
                .map(|((n, _), v)| (n.to_string(), v.0))
                .collect(),
        });
        panels[1].groups.push(Group {
            label: format!("{conns} connections"),
            bars: targets
                .iter()
                .zip(&m)
                .map(|((n, _), v)| (n.to_string(), v.2 / 1000.0))
                .collect(),
        });
    }
    Ok(Section {
        rows,
        json: json!({"warmup_s": warmup.as_secs_f64(), "duration_s": duration.as_secs_f64(),
            "rounds": rounds, "runs": raw}),
        panels,
    })
}
