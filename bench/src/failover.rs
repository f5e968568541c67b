//! Scenario 4: failover of a 3-process Raft cluster (`litefs_proxy_tests::cluster`):
//! under a write every 10 ms through the survivors, kill -9 the leader and time the first
//! successful write sent after the kill; then SIGTERM (planned handover) the same way.
//! The killed node is restarted and rejoins before the next trial. Then, on a cluster with a
//! LiteFS process per node (the sim's LiteFS: its lease loop against the node's lease
//! endpoint, LiteFS's lease timing as litefs-config prints it), five faults of the leader's
//! node, 10 trials each: SIGTERM of its proxy, kill -9 of its proxy, of its LiteFS, of both,
//! and a partition; every LiteFS is asked every 100 ms whether it is primary.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use bytes::Bytes;
use http::Method;
use litefs_proxy_tests::cluster::{Cluster, LiteFsOptions, Options};
use serde_json::json;

use crate::{
    client,
    report::{percentile, secs, Group, Panel, Row},
    Ctx, Section,
};

/// LiteFS + Consul: 10 s session TTL + 1 s lock delay (documented, not measured here).
const LITEFS_CONSUL_S: f64 = 11.0;

/// The harness's 3-process Raft cluster, with the timeouts of a production config.
async fn start_cluster() -> Cluster {
    Cluster::start(Options {
        proxy_extra: "primary_redirect_timeout = \"5s\"\nshutdown_grace = \"2s\"\n".into(),
        ..Options::default()
    })
    .await
}

/// One write: when it was sent, when it finished, and which node's app took it (2xx: the
/// recording app answers with its node's name first), or why it failed.
struct Write {
    sent: Instant,
    done: Instant,
    result: Result<String, String>,
}

/// The node whose app answered: the recording app names it first; the sim's demo app
/// answers `{"id":…,"body":…,"node":"node-2"}`.
fn node_of(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["node"].is_string() => v["node"].as_str().unwrap_or_default().to_owned(),
        _ => String::from_utf8_lossy(body)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Sends a POST every 10 ms, alternating between `targets`, each on its own connection
/// and task (a held write does not delay the next one).
struct Writer {
    log: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn start(targets: Vec<SocketAddr>) -> Writer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0usize;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let addr = targets[n % targets.len()];
                n += 1;
                let l = l.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let req =
                        client::request(Method::POST, "/items", &[], Bytes::from_static(b"x"));
                    let result = match client::once(addr, req, Duration::from_secs(10)).await {
                        Ok((st, body)) if st.is_success() => Ok(node_of(&body)),
                        Ok((st, body)) => Err(format!(
                            "{} {}",
                            st.as_u16(),
                            String::from_utf8_lossy(&body).trim()
                        )),
                        Err(e) => Err(format!("client error: {e:#}")),
                    };
                    if let Ok(mut v) = l.lock() {
                        v.push(Write {
                            sent,
                            done: Instant::now(),
                            result,
                        });
                    }
                });
            }
        });
        Writer { log, stop }
    }

    /// The first write sent at or after `t` that a node other than `old` took (`None`: any
    /// successful write).
    fn first_ok_after(&self, t: Instant, old: Option<&str>) -> Option<Duration> {
        let v = self.log.lock().ok()?;
        v.iter()
            .filter(|w| w.sent >= t && w.result.as_deref().is_ok_and(|n| Some(n) != old))
            .map(|w| w.done - t)
            .min()
    }

    /// Why writes sent at or after `t` failed.
    fn failures_after(&self, t: Instant) -> Vec<String> {
        self.log.lock().map_or(Vec::new(), |v| {
            v.iter()
                .filter(|w| w.sent >= t)
                .filter_map(|w| {
                    let e = w.result.as_ref().err()?;
                    Some(format!(
                        "sent +{} ms, failed +{} ms: {e}",
                        (w.sent - t).as_millis(),
                        (w.done - t).as_millis()
                    ))
                })
                .collect()
        })
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Let the last writes land before the next trial.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct TrialResult {
    took: Duration,
    failed: Vec<String>,
    exit: Option<Duration>,
}

async fn trial(c: &mut Cluster, sigterm: bool) -> Result<TrialResult> {
    let all = [0, 1, 2];
    let Some(l) = c.wait_leader(&all, Duration::from_secs(20)).await else {
        bail!("no leader among 3");
    };
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    let writer = Writer::start(survivors.iter().map(|&i| c.nodes[i].proxy).collect());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let old = c.nodes[l].id.clone();
    let t0 = Instant::now();
    let mut exit = None;
    if sigterm {
        c.signal(l, "TERM");
    } else {
        c.kill(l);
    }
    let end = t0 + Duration::from_secs(15);
    let mut took = None;
    while Instant::now() < end {
        if took.is_none() {
            took = writer.first_ok_after(t0, Some(&old));
        }
        if sigterm && exit.is_none() && c.exited(l).is_some() {
            exit = Some(t0.elapsed());
        }
        if took.is_some() && (!sigterm || exit.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Give late completions a moment, then re-read the minimum.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let took = writer.first_ok_after(t0, Some(&old)).or(took);
    let failed = writer.failures_after(t0);
    writer.stop().await;
    c.kill(l);
    c.spawn(l);
    let Some(took) = took else {
        bail!("no successful write within 15 s of stopping the leader");
    };
    Ok(TrialResult { took, failed, exit })
}

/// What a LiteFS-cluster trial does to the settled leader's node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGTERM of its proxy: the planned handover (LiteFS's handoff).
    Sigterm,
    /// kill -9 of its proxy; its LiteFS lives on.
    ProxyKill,
    /// kill -9 of its LiteFS; its proxy lives on.
    LitefsKill,
    /// kill -9 of both: the whole node.
    NodeKill,
    /// Its Raft traffic and the replication streams from its LiteFS cut.
    Partition,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Sigterm,
        Fault::ProxyKill,
        Fault::LitefsKill,
        Fault::NodeKill,
        Fault::Partition,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::Sigterm => "SIGTERM of the leader's proxy",
            Fault::ProxyKill => "kill -9 of the leader's proxy",
            Fault::LitefsKill => "kill -9 of the leader's LiteFS",
            Fault::NodeKill => "kill -9 of the whole leader node",
            Fault::Partition => "leader node cut off",
        }
    }

    /// The goal (seconds) from the failover issue.
    fn goal_s(self) -> f64 {
        match self {
            Fault::Sigterm => 0.3,
            Fault::ProxyKill => 1.0,
            _ => 2.5,
        }
    }

    /// What litefs-proxy aea0a44 did with an unmodified LiteFS v0.5.14 (litefs-facts.md).
    fn before(self) -> &'static str {
        match self {
            Fault::Sigterm => "3.6–9.1 s",
            Fault::ProxyKill => "8.7–10.9 s (TTL 10 s)",
            Fault::LitefsKill => "never",
            Fault::NodeKill => "2.1–2.2 s",
            Fault::Partition => "two LiteFS primaries for 4.3 s",
        }
    }
}

struct LitefsTrial {
    took: Duration,
    failed: Vec<String>,
    /// The most LiteFS primaries seen at one 100 ms sample.
    most_primaries: usize,
}

/// One fault under writes through the survivors: the time to the first successful write
/// sent after it, with every LiteFS asked every 100 ms whether it is primary. The node is
/// restored afterwards and rejoins before the next trial.
async fn litefs_trial(c: &mut Cluster, fault: Fault) -> Result<LitefsTrial> {
    let Some(l) = c.wait_litefs_settled(Duration::from_secs(30)).await else {
        bail!("LiteFS never settled on the Raft leader");
    };
    let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let writer = Writer::start(survivors.iter().map(|&i| c.nodes[i].proxy).collect());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The old primary may still serve writes for a moment (a cut-off one until it steps
    // down): the failover is over when another node's app takes one.
    let old = c.nodes[l].id.clone();
    let t0 = Instant::now();
    match fault {
        Fault::Sigterm => c.signal(l, "TERM"),
        Fault::ProxyKill => c.kill(l),
        Fault::LitefsKill => c.kill_litefs(l),
        Fault::NodeKill => c.kill_node(l),
        Fault::Partition => c.isolate(l, true),
    }
    let end = t0 + Duration::from_secs(20);
    let mut most_primaries = 0;
    let mut next_sample = t0;
    // Past the first write, keep sampling a little: a second primary would show late.
    let mut settle_until = None;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            most_primaries = most_primaries.max(c.litefs_primaries().await.len());
            next_sample = Instant::now() + Duration::from_millis(100);
        }
        if settle_until.is_none() && writer.first_ok_after(t0, Some(&old)).is_some() {
            settle_until = Some(Instant::now() + Duration::from_millis(500));
        }
        if settle_until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = writer.first_ok_after(t0, Some(&old));
    let failed = writer.failures_after(t0);
    writer.stop().await;
    match fault {
        Fault::Sigterm | Fault::ProxyKill => {
            c.kill(l);
            c.spawn(l);
        }
        Fault::LitefsKill => c.spawn_litefs(l),
        Fault::NodeKill => {
            c.spawn_litefs(l);
            c.spawn(l);
        }
        Fault::Partition => c.isolate(l, false),
    }
    let Some(took) = took else {
        bail!("no successful write within 20 s of: {}", fault.label());
    };
    Ok(LitefsTrial {
        took,
        failed,
        most_primaries,
    })
}

/// Scenario 4's LiteFS rows: `trials` of each fault on a cluster with a LiteFS process per
/// node and LiteFS's lease timing as litefs-config prints it.
async fn litefs_rows(trials: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    let defaults = litefs_election::Config::default();
    let mut c = Cluster::start(Options {
        relays: true,
        proxy_extra: "primary_redirect_timeout = \"5s\"\nshutdown_grace = \"2s\"\n".into(),
        litefs: Some(LiteFsOptions {
            ttl: defaults.lease_ttl,
            lock_delay: defaults.lease_lock_delay,
            lag_ms: 0,
        }),
        ..Options::default()
    })
    .await;
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    for fault in Fault::ALL {
        let mut took = Vec::new();
        let mut failed = Vec::new();
        let mut most = 0;
        for i in 0..trials {
            let r = litefs_trial(&mut c, fault).await?;
            eprintln!(
                "  s4 LiteFS {} trial {i}: first write after {:?}, failed writes {}, most primaries {}",
                fault.label(),
                r.took,
                r.failed.len(),
                r.most_primaries
            );
            took.push(r.took.as_secs_f64());
            failed.extend(r.failed);
            most = most.max(r.most_primaries);
        }
        let (p50, max) = (percentile(&took, 0.5), percentile(&took, 1.0));
        let mut r = Row::new(
            "4. failover, LiteFS sim",
            &format!(
                "{} → first write, p50 / max ({} trials)",
                fault.label(),
                took.len()
            ),
        );
        r.proxy = format!("{} / {}", secs(p50), secs(max));
        r.baseline = format!(
            "before: {}; writes failed: {}; most LiteFS primaries at once: {most}",
            fault.before(),
            failed.len()
        );
        r.goal = format!("< {} s, one primary", fault.goal_s());
        r.met = Some(max < fault.goal_s() && most <= 1);
        rows.push(r);
        raw.insert(
            format!("{fault:?}"),
            json!({"first_write_s": took, "failed_writes": failed, "most_primaries": most}),
        );
    }
    Ok((rows, serde_json::Value::Object(raw)))
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let (kills, terms) = if ctx.quick { (3, 2) } else { (20, 5) };
    let mut c = start_cluster().await;
    let mut kill_s = Vec::new();
    let mut term_s = Vec::new();
    let mut exit_s = Vec::new();
    let mut failed = [0usize; 2];
    let mut reasons: Vec<String> = Vec::new();
    for i in 0..kills + terms {
        let sigterm = i >= kills;
        let r = trial(&mut c, sigterm).await?;
        eprintln!(
            "  s4 {} trial {i}: first write after {:?}, failed writes {}, exit {:?}",
            if sigterm { "SIGTERM" } else { "kill -9" },
            r.took,
            r.failed.len(),
            r.exit
        );
        failed[usize::from(sigterm)] += r.failed.len();
        for f in r.failed {
            let kind = if sigterm { "SIGTERM" } else { "kill -9" };
            reasons.push(format!("{kind}: {f}"));
        }
        if sigterm {
            term_s.push(r.took.as_secs_f64());
            if let Some(e) = r.exit {
                exit_s.push(e.as_secs_f64());
            }
        } else {
            kill_s.push(r.took.as_secs_f64());
        }
    }
    let (k50, k99) = (percentile(&kill_s, 0.5), percentile(&kill_s, 0.99));
    let (t50, tmax) = (percentile(&term_s, 0.5), percentile(&term_s, 1.0));
    let mut rows = Vec::new();
    let scen = "4. Raft election alone (no LiteFS)";
    let mut r = Row::new(
        scen,
        &format!("kill -9 → first write, p50 ({} trials)", kill_s.len()),
    );
    r.proxy = secs(k50);
    r.baseline = format!("LiteFS+Consul ≈ {LITEFS_CONSUL_S} s (documented)");
    r.ratio = crate::report::ratio(k50, LITEFS_CONSUL_S);
    r.goal = "< 0.6 s".into();
    r.met = Some(k50 < 0.6);
    rows.push(r);
    let mut r = Row::new(scen, "kill -9 → first write, p99");
    r.proxy = secs(k99);
    r.baseline = format!(
        "writes failed: {} (held, not failed, is the goal)",
        failed[0]
    );
    r.goal = "< 1 s".into();
    r.met = Some(k99 < 1.0);
    rows.push(r);
    let mut r = Row::new(
        scen,
        &format!("SIGTERM → first write, p50 / max ({} trials)", term_s.len()),
    );
    r.proxy = format!("{} / {}", secs(t50), secs(tmax));
    r.baseline = format!(
        "old leader exited after {} (median); writes failed: {}",
        secs(percentile(&exit_s, 0.5)),
        failed[1]
    );
    r.goal = "< 0.2 s".into();
    r.met = Some(tmax < 0.2);
    rows.push(r);
    drop(c);
    let (litefs, litefs_raw) = litefs_rows(if ctx.quick { 2 } else { 10 }).await?;
    rows.extend(litefs);
    Ok(Section {
        rows,
        json: json!({"kill9_s": kill_s, "sigterm_s": term_s, "sigterm_exit_s": exit_s,
            "litefs": litefs_raw,
            "failed_writes": {"kill9": failed[0], "sigterm": failed[1], "why": reasons},
            "litefs_consul_documented_s": LITEFS_CONSUL_S}),
        panels: vec![Panel {
            title: "Failover: kill → first write".into(),
            unit: "s".into(),
            groups: vec![
                Group {
                    label: "p50".into(),
                    bars: vec![
                        ("litefs-proxy kill -9".into(), k50),
                        ("LiteFS+Consul (documented)".into(), LITEFS_CONSUL_S),
                    ],
                },
                Group {
                    label: "p99".into(),
                    bars: vec![
                        ("litefs-proxy kill -9".into(), k99),
                        ("LiteFS+Consul (documented)".into(), LITEFS_CONSUL_S),
                    ],
                },
            ],
        }],
    })
}
