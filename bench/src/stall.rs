//! Scenario 3: stalled-read release. K reads carry a token one TXID ahead of a replica;
//! once all K wait, the bench advances the replica's position (litefs-sim writes the pos
//! file and publishes the `tx` event) and measures, from that instant, when each request
//! reached the app and when each response was back. Both TXID sources, interleaved.
//! Next to each release, the burst floor: the same K requests on the same connections with
//! a token the replica already holds, sent at once (no wait), timed from the send; the
//! ratio of the two p99s is what the wake-up adds to serving K requests at once here.
//! Then the proxy's CPU while 1,000 reads wait.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    client::{self, Sender},
    hello::{self, Stamps},
    load::{histogram, Lat},
    procs::{self, free_port, Proc},
    report::{ms, Group, Panel, Row},
    Ctx, Section,
};

struct Replica {
    source: &'static str,
    addr: SocketAddr,
    proc: Proc,
    node: litefs_sim::Node,
    pool: Vec<Sender>,
    txid: u64,
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let dir = ctx.dir.path();
    let stamps: Stamps = Arc::new(Mutex::new(Vec::new()));
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    let app_task = tokio::spawn(hello::serve(
        app,
        Some(stamps.clone()),
        Bytes::from_static(b"hello"),
    ));
    let max_k = if ctx.quick { 100 } else { 1000 };

    let mut reps = Vec::new();
    for source in ["pos-file", "events"] {
        let mount = dir.join(format!("s3-{source}"));
        let node = litefs_sim::Node::new(litefs_sim::NodeConfig {
            mount: mount.clone(),
            db: "db.sqlite3".into(),
            hostname: format!("replica-{source}"),
            is_primary: false,
            primary_hostname: Some("primary".into()),
        });
        node.set_txid(1);
        let mut extra = String::from(
            "read_wait_timeout = \"30s\"\nheader_read_timeout = \"120s\"\nidle_timeout = \"10m\"\n",
        );
        if source == "events" {
            let api = TcpListener::bind("127.0.0.1:0").await?;
            extra.push_str(&format!(
                "txid_source = \"events\"\nlitefs_api = \"http://{}\"\n",
                api.local_addr()?
            ));
            tokio::spawn(litefs_sim::serve_api(
                node.clone(),
                api,
                std::future::pending(),
            ));
        }
        let addr = free_port();
        let proc = procs::spawn_proxy(
            &ctx.bin,
            dir,
            &format!("s3-{source}"),
            &procs::static_toml(
                addr,
                app_addr,
                &mount,
                "replica",
                // Never reached: every wait is released well before read_wait_timeout.
                Some("http://127.0.0.1:9"),
                &extra,
            ),
        )?;
        proc.wait_ready(addr, "/litefs/health").await?;
        let mut pool = Vec::with_capacity(max_k);
        for _ in 0..max_k {
            pool.push(client::connect(addr).await?);
        }
        let mut rep = Replica {
            source,
            addr,
            proc,
            node,
            pool,
            txid: 1,
        };
        wait_txid(&rep, 1).await?;
        // One untimed trial so both proxies have warm app connections.
        trial(&mut rep, 10.min(max_k), &stamps).await?;
        reps.push(rep);
    }

    let plan: &[(usize, usize)] = if ctx.quick {
        &[(1, 5), (100, 2)]
    } else {
        &[(1, 30), (100, 10), (1000, 5)]
    };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut panel = Panel {
        title: "Stalled-read release p99".into(),
        unit: "ms after the position moved".into(),
        groups: vec![],
    };
    for &(k, trials) in plan {
        let mut resp = [histogram(), histogram()];
        let mut arrive = [histogram(), histogram()];
        let mut floor = [histogram(), histogram()];
        let mut errors = [0u64; 2];
        for _ in 0..trials {
            for (i, rep) in reps.iter_mut().enumerate() {
                let t = trial(rep, k, &stamps).await?;
                for v in t.response_us {
                    let _ = resp[i].record(v.max(1));
                }
                for v in t.arrival_us {
                    let _ = arrive[i].record(v.max(1));
                }
                errors[i] += t.errors;
                let b = burst(rep, k).await?;
                for v in b.response_us {
                    let _ = floor[i].record(v.max(1));
                }
                errors[i] += b.errors;
            }
        }
        let mut group = Group {
            label: format!("{k} waiting"),
            bars: vec![],
        };
        for (i, rep) in reps.iter().enumerate() {
            let (r, a, f) = (Lat::of(&resp[i]), Lat::of(&arrive[i]), Lat::of(&floor[i]));
            let vs_floor = r.p99 / f.p99;
            eprintln!(
                "  s3 {:>8} k={k:>4}: response p50 {:.0} p99 {:.0} max {:.0} µs; at app min {:.0} p50 {:.0} p99 {:.0} µs; burst floor p50 {:.0} p99 {:.0} µs (release/floor p99 {vs_floor:.2}); errors {}",
                rep.source, r.p50, r.p99, r.max, a.min, a.p50, a.p99, f.p50, f.p99, errors[i]
            );
            raw.push(json!({"source": rep.source, "waiting": k, "trials": trials,
                "response": r.json(), "reached_app": a.json(), "burst_floor": f.json(),
                "release_over_floor_p99": vs_floor, "errors": errors[i]}));
            let mut row = Row::new(
                &format!("3. stalled reads, {}", rep.source),
                &format!("release, {k} waiting"),
            );
            row.proxy = format!("p50 {} / p99 {}", ms(r.p50), ms(r.p99));
            row.baseline = format!(
                "reached app: first {} / p50 {} / p99 {}",
                ms(a.min),
                ms(a.p50),
                ms(a.p99)
            );
            rows.push(row);
            let mut row = Row::new(
                &format!("3. stalled reads, {}", rep.source),
                &format!("release p99 vs burst floor, {k}"),
            );
            row.proxy = ms(r.p99);
            row.baseline = format!(
                "{k} sent at once, no wait: p50 {} / p99 {}",
                ms(f.p50),
                ms(f.p99)
            );
            row.ratio = crate::report::ratio(r.p99, f.p99);
            if k == 1000 {
                row.goal = "≤ 1.1× floor".into();
                row.met = Some(vs_floor <= 1.1 && errors[i] == 0);
            }
            rows.push(row);
            group.bars.push((rep.source.to_string(), r.p99 / 1000.0));
        }
        panel.groups.push(group);
    }

    // CPU of the proxy process: idle, then while max_k reads wait.
    let tck = procs::clk_tck() as f64;
    let window = if ctx.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let mut cpu = Vec::new();
    for rep in reps.iter_mut() {
        let pid = rep.proc.pid();
        let idle = cpu_over(pid, window, tck).await?;
        let target = rep.txid + 1;
        let pending = start_waiters(rep, max_k, target).await?;
        wait_waiting(rep.addr, max_k).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let busy = cpu_over(pid, window, tck).await?;
        rep.node.set_txid(target);
        rep.txid = target;
        finish(rep, pending).await;
        eprintln!(
            "  s3 {:>8} CPU: idle {idle:.2}% , {max_k} waiting {busy:.2}% of a core",
            rep.source
        );
        cpu.push(json!({"source": rep.source, "idle_pct": idle, "waiting": max_k, "waiting_pct": busy, "window_s": window.as_secs_f64()}));
        let mut row = Row::new(
            &format!("3. stalled reads, {}", rep.source),
            &format!("CPU while {max_k} wait"),
        );
        row.proxy = format!("{busy:.1} % of a core");
        row.baseline = format!("idle: {idle:.1} %");
        row.goal = "< 5 %".into();
        row.met = Some(busy < 5.0);
        rows.push(row);
    }
    app_task.abort();
    Ok(Section {
        rows,
        json: json!({"release": raw, "cpu": cpu}),
        panels: vec![panel],
    })
}

struct Trial {
    response_us: Vec<u64>,
    arrival_us: Vec<u64>,
    errors: u64,
}

type Pending = Vec<tokio::task::JoinHandle<(Option<Sender>, bool, Instant)>>;

async fn start_waiters(rep: &mut Replica, k: usize, target: u64) -> Result<Pending> {
    if rep.pool.len() < k {
        bail!("pool has {} connections, need {k}", rep.pool.len());
    }
    let token = format!("{target:016x}");
    Ok(rep
        .pool
        .drain(..k)
        .map(|mut s| {
            let req = client::request(
                Method::GET,
                "/item",
                &[("litefs-txid", token.clone())],
                Bytes::new(),
            );
            tokio::spawn(async move {
                let r = client::send(&mut s, req).await;
                let ok = matches!(r, Ok(st) if st.is_success());
                (r.is_ok().then_some(s), ok, Instant::now())
            })
        })
        .collect())
}

/// Collects the answers and returns the connections to the pool; (done instants, errors).
async fn finish(rep: &mut Replica, pending: Pending) -> (Vec<Instant>, u64) {
    let mut done = Vec::new();
    let mut errors = 0;
    for h in pending {
        match h.await {
            Ok((s, ok, at)) => {
                if ok {
                    done.push(at);
                } else {
                    errors += 1;
                }
                match s {
                    Some(s) => rep.pool.push(s),
                    None => {
                        if let Ok(s) = client::connect(rep.addr).await {
                            rep.pool.push(s);
                        }
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    (done, errors)
}

async fn trial(rep: &mut Replica, k: usize, stamps: &Stamps) -> Result<Trial> {
    let target = rep.txid + 1;
    let pending = start_waiters(rep, k, target).await?;
    wait_waiting(rep.addr, k).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    stamps
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();
    let t0 = Instant::now();
    rep.node.set_txid(target);
    rep.txid = target;
    let (done, errors) = finish(rep, pending).await;
    let arrivals = std::mem::take(&mut *stamps.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let us = |t: Instant| t.saturating_duration_since(t0).as_micros() as u64;
    Ok(Trial {
        response_us: done.into_iter().map(us).collect(),
        arrival_us: arrivals.into_iter().map(us).collect(),
        errors,
    })
}

/// The burst floor: `k` requests whose token the replica holds, sent at once on the pooled
/// connections; response times from the instant before the first is sent.
async fn burst(rep: &mut Replica, k: usize) -> Result<Trial> {
    let t0 = Instant::now();
    let pending = start_waiters(rep, k, rep.txid).await?;
    let (done, errors) = finish(rep, pending).await;
    let us = |t: Instant| t.saturating_duration_since(t0).as_micros() as u64;
    Ok(Trial {
        response_us: done.into_iter().map(us).collect(),
        arrival_us: Vec::new(),
        errors,
    })
}

async fn wait_waiting(addr: SocketAddr, k: usize) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = client::status(addr).await {
            if s["waiting_reads"].as_u64() == Some(k as u64) {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!("{k} reads never all waited on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_txid(rep: &Replica, txid: u64) -> Result<()> {
    let want = format!("{txid:016x}");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Some(s) = client::status(rep.addr).await {
            if s["txid"].as_str() == Some(want.as_str()) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{} proxy never saw txid {want}", rep.source)
}

/// CPU of `pid` over `window`, as % of one core.
async fn cpu_over(pid: u32, window: Duration, tck: f64) -> Result<f64> {
    let a = procs::cpu_ticks(pid).context("reading /proc stat")?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let b = procs::cpu_ticks(pid).context("reading /proc stat")?;
    Ok((b - a) as f64 / tck / t.elapsed().as_secs_f64() * 100.0)
}
