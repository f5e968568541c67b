//! Scenario 5: resident memory of the proxy process idle and with 10,000 idle keep-alive
//! client connections (each has carried one request), per connection; then with 5,000
//! more opened the same way: what each adds once the process has served such a burst
//! before (the steady state: memory the allocator kept from the first burst is reused by
//! the next one). nginx the same way for context (PSS of master + workers, since they
//! share pages).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::{
    client::{self, Sender},
    procs::{self, free_port},
    report::{thousands, Group, Panel, Row},
    Ctx, Section,
};

/// Opens `n` connections, `batch` at a time, each carrying one GET; keeps them open.
async fn open(addr: SocketAddr, n: usize) -> Result<Vec<Sender>> {
    let batch = 200;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = batch.min(n - out.len());
        let tasks: Vec<_> = (0..k)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = client::connect(addr).await?;
                    let req = client::request(Method::GET, "/", &[], Bytes::new());
                    client::send(&mut s, req).await?;
                    anyhow::Ok(s)
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await??);
        }
    }
    Ok(out)
}

/// Memory of a server: its own RSS, or the PSS sum of a master and its workers.
fn mem_kib(pid: u32, with_children: bool) -> Option<u64> {
    if !with_children {
        return procs::rss_kib(pid);
    }
    let mut total = procs::pss_kib(pid)?;
    for c in procs::children(pid) {
        total += procs::pss_kib(c).unwrap_or(0);
    }
    Some(total)
}

/// How long nginx is given to settle after connections opened (it frees their buffers at
/// once; this covers the accepts still queued).
const NGINX_SETTLE: Duration = Duration::from_millis(500);
/// The longest litefs-proxy may take to park every idle connection (PARK_AFTER is 1 s).
const PARK_WITHIN: Duration = Duration::from_secs(10);

/// Waits until the server holds `conns` idle connections at rest: for litefs-proxy, until
/// its status counts them all parked (an idle keep-alive connection then holds no buffers);
/// for nginx, a short settle.
async fn settle(addr: SocketAddr, nginx: bool, conns: usize) {
    if nginx {
        tokio::time::sleep(NGINX_SETTLE).await;
        return;
    }
    let end = tokio::time::Instant::now() + PARK_WITHIN;
    while tokio::time::Instant::now() < end {
        let parked = client::status(addr)
            .await
            .and_then(|s| s["client_connections"]["parked"].as_u64())
            .unwrap_or(0);
        if parked as usize >= conns {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("  s5: not every connection parked within {PARK_WITHIN:?}");
}

/// Memory idle, with `n` idle connections, and with `n / 2` more (the bench's and the
/// proxy's open files stay under 20,000); for litefs-proxy (`with_children` false) also its
/// `client_connections` status at the end (serving / parked).
async fn measure(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    with_children: bool,
) -> Result<(u64, u64, u64, serde_json::Value)> {
    // Warm: a few requests so pools and buffers of the steady state exist.
    let warm = open(addr, 8).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = mem_kib(pid, with_children).context("reading memory")?;
    let conns = open(addr, n).await?;
    settle(addr, with_children, n).await;
    let loaded = mem_kib(pid, with_children).context("reading memory")?;
    let more = open(addr, n / 2).await?;
    settle(addr, with_children, n + n / 2).await;
    let loaded2 = mem_kib(pid, with_children).context("reading memory")?;
    let conns_status = if with_children {
        serde_json::Value::Null
    } else {
        client::status(addr)
            .await
            .map_or(serde_json::Value::Null, |s| s["client_connections"].clone())
    };
    drop(conns);
    drop(more);
    Ok((idle, loaded, loaded2, conns_status))
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let n = if ctx.quick { 1000 } else { 10_000 };
    let dir = ctx.dir.path();
    let mount = dir.join("s5-mount");
    std::fs::create_dir_all(&mount)?;
    litefs_sim::write_pos(&mount, "db.sqlite3", 1, 0)?;
    let addr = free_port();
    let proxy = procs::spawn_proxy(
        &ctx.bin,
        dir,
        "s5-proxy",
        &procs::static_toml(
            addr,
            ctx.hello,
            &mount,
            "s5",
            None,
            "header_read_timeout = \"300s\"\nidle_timeout = \"10m\"\n",
        ),
    )?;
    proxy.wait_ready(addr, "/litefs/health").await?;
    let (idle, loaded, loaded2, conns_status) = measure(addr, proxy.pid(), n, false).await?;
    drop(proxy);
    let per = (loaded.saturating_sub(idle)) as f64 / n as f64;
    let more = n / 2;
    let per_next = (loaded2.saturating_sub(loaded)) as f64 / more as f64;
    eprintln!("  s5 litefs-proxy: idle {idle} KiB, {n} conns {loaded} KiB, {per:.2} KiB/conn; {} conns {loaded2} KiB, {per_next:.2} KiB/conn for the next {more}; connections {conns_status}", n + more);

    let mut nginx_json = serde_json::Value::Null;
    let mut nginx_txt = "nginx not installed".to_string();
    let mut nginx_per = f64::NAN;
    let mut nginx_next_txt = "nginx not installed".to_string();
    let mut nginx_next = f64::NAN;
    if let Some(bin) = &ctx.nginx {
        let naddr = free_port();
        let ng = procs::spawn_nginx(bin, &dir.join("s5"), naddr, ctx.hello, ctx.cores)?;
        ng.wait_ready(naddr, "/").await?;
        let (ni, nl, nl2, _) = measure(naddr, ng.pid(), n, true).await?;
        nginx_per = (nl.saturating_sub(ni)) as f64 / n as f64;
        nginx_next = (nl2.saturating_sub(nl)) as f64 / more as f64;
        eprintln!("  s5 nginx (PSS): idle {ni} KiB, {n} conns {nl} KiB, {nginx_per:.2} KiB/conn; next {more}: {nl2} KiB, {nginx_next:.2} KiB/conn");
        nginx_json = json!({"idle_pss_kib": ni, "loaded_pss_kib": nl, "kib_per_conn": nginx_per,
            "loaded2_pss_kib": nl2, "kib_per_conn_next": nginx_next});
        nginx_next_txt = format!(
            "nginx {nginx_next:.1} KiB/conn (PSS {} → {} KiB)",
            thousands(nl as f64),
            thousands(nl2 as f64)
        );
        nginx_txt = format!(
            "nginx {nginx_per:.1} KiB/conn (PSS {} → {} KiB)",
            thousands(ni as f64),
            thousands(nl as f64)
        );
    }
    let scen = "5. memory";
    let mut rows = Vec::new();
    let mut r = Row::new(scen, "RSS idle");
    r.proxy = format!("{} KiB", thousands(idle as f64));
    rows.push(r);
    let mut r = Row::new(
        scen,
        &format!("RSS with {} idle keep-alive conns", thousands(n as f64)),
    );
    r.proxy = format!("{} KiB", thousands(loaded as f64));
    rows.push(r);
    let mut r = Row::new(
        scen,
        &format!("per connection, first {}", thousands(n as f64)),
    );
    r.proxy = format!("{per:.1} KiB");
    r.baseline = nginx_txt;
    if nginx_per.is_finite() {
        r.ratio = crate::report::ratio(per, nginx_per);
    }
    rows.push(r);
    let mut r = Row::new(
        scen,
        &format!(
            "RSS with {} idle keep-alive conns",
            thousands((n + more) as f64)
        ),
    );
    r.proxy = format!("{} KiB", thousands(loaded2 as f64));
    rows.push(r);
    let mut r = Row::new(
        scen,
        &format!(
            "per connection, next {} (steady state)",
            thousands(more as f64)
        ),
    );
    r.proxy = format!("{per_next:.1} KiB");
    r.baseline = nginx_next_txt;
    if nginx_next.is_finite() {
        r.ratio = crate::report::ratio(per_next, nginx_next);
    }
    r.goal = "≤ 4 KiB".into();
    r.met = Some(per_next <= 4.0);
    rows.push(r);
    Ok(Section {
        rows,
        json: json!({"connections": n, "proxy": {"idle_rss_kib": idle, "loaded_rss_kib": loaded, "kib_per_conn": per,
            "more_connections": more, "loaded2_rss_kib": loaded2, "kib_per_conn_next": per_next, "client_connections": conns_status},
            "nginx": nginx_json}),
        panels: vec![Panel {
            title: format!("Memory per idle connection ({n})"),
            unit: "KiB".into(),
            groups: vec![
                Group {
                    label: "per connection".into(),
                    bars: vec![("litefs-proxy".into(), per), ("nginx".into(), nginx_per)],
                },
                Group {
                    label: "next (steady state)".into(),
                    bars: vec![
                        ("litefs-proxy".into(), per_next),
                        ("nginx".into(), nginx_next),
                    ],
                },
            ],
        }],
    })
}
