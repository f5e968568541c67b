//! Scenario 2: a write through a replica (forwarded to the primary's proxy) vs the same
//! write sent to the primary: the latency the extra hop adds. One connection, closed loop,
//! interleaved A B A B.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::{
    load,
    procs::{self, free_port},
    report::{median, ms, Group, Panel, Row},
    Ctx, Section,
};

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let dir = ctx.dir.path();
    let (pm, rm) = (dir.join("s2-primary"), dir.join("s2-replica"));
    for m in [&pm, &rm] {
        std::fs::create_dir_all(m)?;
        litefs_sim::write_pos(m, "db.sqlite3", 7, 0)?;
    }
    let (pa, ra) = (free_port(), free_port());
    let _p = procs::spawn_proxy(
        &ctx.bin,
        dir,
        "s2-primary",
        &procs::static_toml(pa, ctx.hello, &pm, "primary", None, ""),
    )?;
    let _r = procs::spawn_proxy(
        &ctx.bin,
        dir,
        "s2-replica",
        &procs::static_toml(
            ra,
            ctx.hello,
            &rm,
            "replica",
            Some(&format!("http://{pa}")),
            "",
        ),
    )?;
    _p.wait_ready(pa, "/litefs/health").await?;
    _r.wait_ready(ra, "/litefs/health").await?;
    let (warmup, duration, rounds) = if ctx.quick {
        (Duration::from_millis(200), Duration::from_secs(1), 1)
    } else {
        (Duration::from_millis(500), Duration::from_secs(3), 3)
    };
    let targets = [("on the primary", pa), ("through a replica", ra)];
    let mut res: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 2];
    let mut raw = Vec::new();
    for round in 0..rounds {
        for (ti, (name, addr)) in targets.iter().enumerate() {
            let spec = load::Spec {
                addr: *addr,
                conns: 1,
                warmup,
                duration,
                method: Method::POST,
                path: "/items".into(),
                body: Bytes::from_static(b"name=bench"),
            };
            let out = load::run(&spec).await;
            eprintln!(
                "  s2 {name:>18} round={round}: p50 {:.0} µs p99 {:.0} µs ({} writes, {} errors)",
                out.lat.p50, out.lat.p99, out.lat.count, out.errors
            );
            raw.push(json!({"target": name, "round": round, "rps": out.rps,
                "latency": out.lat.json(), "errors": out.errors}));
            res[ti].push((out.lat.p50, out.lat.p99));
        }
    }
    let m =
        |ti: usize, f: fn(&(f64, f64)) -> f64| median(&res[ti].iter().map(f).collect::<Vec<_>>());
    let (p50p, p99p, p50r, p99r) = (m(0, |x| x.0), m(0, |x| x.1), m(1, |x| x.0), m(1, |x| x.1));
    let scen = "2. write via replica, 1 conn";
    let mut rows = Vec::new();
    let mut r = Row::new(scen, "added latency p50");
    r.proxy = format!("+{}", ms(p50r - p50p));
    r.baseline = format!("replica {} vs primary {}", ms(p50r), ms(p50p));
    r.ratio = crate::report::ratio(p50r, p50p);
    r.goal = "< 0.3 ms".into();
    r.met = Some(p50r - p50p < 300.0);
    rows.push(r);
    let mut r = Row::new(scen, "added latency p99");
    r.proxy = format!("+{}", ms(p99r - p99p));
    r.baseline = format!("replica {} vs primary {}", ms(p99r), ms(p99p));
    r.ratio = crate::report::ratio(p99r, p99p);
    rows.push(r);
    Ok(Section {
        rows,
        json: json!({"runs": raw, "median_us": {"primary_p50": p50p, "primary_p99": p99p,
            "replica_p50": p50r, "replica_p99": p99r, "added_p50": p50r - p50p, "added_p99": p99r - p99p}}),
        panels: vec![Panel {
            title: "Write latency (1 conn)".into(),
            unit: "ms, median".into(),
            groups: vec![
                Group {
                    label: "p50".into(),
                    bars: vec![
                        ("on the primary".into(), p50p / 1000.0),
                        ("through a replica".into(), p50r / 1000.0),
                    ],
                },
                Group {
                    label: "p99".into(),
                    bars: vec![
                        ("on the primary".into(), p99p / 1000.0),
                        ("through a replica".into(), p99r / 1000.0),
                    ],
                },
            ],
        }],
    })
}
