//! Scenario 6: the price of durability. Two 3-node clusters of real processes on the sim's
//! LiteFS (20 ms replication lag), one with `sync_replicas = 0` (asynchronous), one with the
//! default 1; sequential writes through a replica (forwarded to the primary), alternating
//! rounds between the two clusters so both see the same machine. Reports write latency
//! p50/p99 for each and their ratio; then the chaos run (`litefs_proxy_tests::chaos`: kill,
//! partition and pause of the leader's node) with `sync_replicas` 1 and 0.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use litefs_proxy_tests::{
    client::post,
    cluster::{Cluster, LiteFsOptions, Options},
};
use serde_json::json;

use crate::{
    report::{ms, percentile, ratio, Row},
    Ctx, Section,
};

const LAG_MS: u64 = 20;

async fn start(sync: usize) -> Result<(Cluster, usize)> {
    let c = Cluster::start(Options {
        proxy_extra: format!("primary_redirect_timeout = \"5s\"\nsync_replicas = {sync}\n"),
        litefs: Some(LiteFsOptions::with_lag(LAG_MS)),
        ..Options::default()
    })
    .await;
    match c.wait_litefs_settled(Duration::from_secs(30)).await {
        Some(l) => Ok((c, l)),
        None => bail!("LiteFS did not settle (sync_replicas = {sync})"),
    }
}

/// `n` sequential writes through a replica of `c`; their latencies in µs.
async fn round(c: &Cluster, leader: usize, n: usize, out: &mut Vec<f64>) -> Result<()> {
    let replica = (leader + 1) % c.nodes.len();
    for i in 0..n {
        let t = Instant::now();
        let a = post(c.nodes[replica].proxy, "/items", &[], &format!("d{i}")).await?;
        if !a.status.is_success() {
            bail!("write through the replica: {} {}", a.status, a.text());
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let (rounds, per_round) = if ctx.quick { (2, 20) } else { (6, 50) };
    let (async_c, async_l) = start(0).await?;
    let (sync_c, sync_l) = start(1).await?;
    let (mut lat0, mut lat1) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        round(&async_c, async_l, per_round, &mut lat0).await?;
        round(&sync_c, sync_l, per_round, &mut lat1).await?;
    }
    let p = |v: &[f64], q| percentile(v, q);
    let scen = format!("6. Durability: write via a replica, {LAG_MS} ms replication lag");
    let mut rows = Vec::new();
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        let mut r = Row::new(
            &scen,
            &format!(
                "{label}, sync_replicas 1 (vs 0), {} writes each",
                lat1.len()
            ),
        );
        r.proxy = ms(p(&lat1, q));
        r.baseline = format!("sync_replicas 0: {}", ms(p(&lat0, q)));
        r.ratio = ratio(p(&lat1, q), p(&lat0, q));
        r.goal = format!("≈ +{LAG_MS} ms (one replication lag)");
        rows.push(r);
    }
    drop((async_c, sync_c));
    let scen = format!(
        "6. Durability: chaos (kill, partition, pause of the leader's node, twice; {} ms lag)",
        litefs_proxy_tests::chaos::LAG_MS
    );
    let mut chaos = serde_json::Map::new();
    for k in [1usize, 0] {
        let o = litefs_proxy_tests::chaos::run(k).await;
        let mut r = Row::new(
            &scen,
            &format!(
                "sync_replicas {k}: acknowledged / lost / duplicated / read-your-writes misses"
            ),
        );
        r.proxy = format!(
            "{} / {} / {} / {}",
            o.acked,
            o.lost.len(),
            o.duplicated.len(),
            o.ryw_violations.len()
        );
        r.goal = if k == 1 {
            "0 lost, 0 dup, 0 misses".into()
        } else {
            "losses (the check can fail)".into()
        };
        r.met = Some(if k == 1 {
            o.lost.is_empty() && o.duplicated.is_empty() && o.ryw_violations.is_empty()
        } else {
            !o.lost.is_empty()
        });
        rows.push(r);
        chaos.insert(
            format!("sync_replicas_{k}"),
            json!({"acked": o.acked, "lost": o.lost, "duplicated": o.duplicated,
                "ryw_violations": o.ryw_violations, "reads_answered": o.reads_answered,
                "unacked": o.unacked}),
        );
    }
    Ok(Section {
        rows,
        json: json!({"lag_ms": LAG_MS, "sync0_us": lat0, "sync1_us": lat1, "chaos": chaos}),
        panels: Vec::new(),
    })
}
