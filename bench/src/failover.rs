//! Scenario 4: failover of a 3-process Raft cluster (`litefs_proxy_tests::cluster`):
//! under a write every 10 ms through the survivors, kill -9 the leader and time the first
//! successful write sent after the kill; then SIGTERM (planned handover) the same way.
//! The killed node is restarted and rejoins before the next trial. Then, on a cluster with a
//! LiteFS process per node (LiteFS's default lease timing as litefs-config prints it), kill -9
//! of the leader's LiteFS only: leadership and the lease move to a live LiteFS.

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
                        Ok((st, body)) if st.is_success() => Ok(String::from_utf8_lossy(&body)
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned()),
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
    /// successful write, e.g. from the sim's demo app, which does not name its node).
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

/// kill -9 of the settled leader's LiteFS under writes through the survivors: the time to the
/// first successful write sent after it. The LiteFS is restarted and rejoins afterwards.
async fn litefs_crash_trial(c: &mut Cluster) -> Result<TrialResult> {
    let Some(l) = c.wait_litefs_settled(Duration::from_secs(30)).await else {
        bail!("LiteFS never settled on the Raft leader");
    };
    let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let writer = Writer::start(survivors.iter().map(|&i| c.nodes[i].proxy).collect());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t0 = Instant::now();
    c.kill_litefs(l);
    let end = t0 + Duration::from_secs(20);
    while writer.first_ok_after(t0, None).is_none() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let took = writer.first_ok_after(t0, None);
    let failed = writer.failures_after(t0);
    writer.stop().await;
    c.spawn_litefs(l);
    let Some(took) = took else {
        bail!("no successful write within 20 s of killing the leader's LiteFS");
    };
    Ok(TrialResult {
        took,
        failed,
        exit: None,
    })
}

/// Scenario 4's LiteFS-crash rows: `trials` kills of the leader's LiteFS.
async fn litefs_crash(trials: usize) -> Result<(Vec<f64>, Vec<String>)> {
    let defaults = litefs_election::Config::default();
    let mut c = Cluster::start(Options {
        proxy_extra: "primary_redirect_timeout = \"5s\"\n".into(),
        litefs: Some(LiteFsOptions {
            ttl: defaults.lease_ttl,
            lock_delay: defaults.lease_lock_delay,
            lag_ms: 0,
        }),
        ..Options::default()
    })
    .await;
    let mut took = Vec::new();
    let mut failed = Vec::new();
    for i in 0..trials {
        let r = litefs_crash_trial(&mut c).await?;
        eprintln!(
            "  s4 LiteFS kill -9 trial {i}: first write after {:?}, failed writes {}",
            r.took,
            r.failed.len()
        );
        took.push(r.took.as_secs_f64());
        failed.extend(r.failed);
    }
    Ok((took, failed))
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
    let scen = "4. failover, 3 nodes";
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
    let (litefs_s, litefs_failed) = litefs_crash(if ctx.quick { 3 } else { 10 }).await?;
    let defaults = litefs_election::Config::default();
    let mut r = Row::new(
        scen,
        &format!(
            "kill -9 of the leader's LiteFS → first write, p50 / max ({} trials, TTL {} s / lock-delay {} s)",
            litefs_s.len(),
            defaults.lease_ttl.as_secs_f64(),
            defaults.lease_lock_delay.as_secs_f64(),
        ),
    );
    r.proxy = format!(
        "{} / {}",
        secs(percentile(&litefs_s, 0.5)),
        secs(percentile(&litefs_s, 1.0))
    );
    r.baseline = format!(
        "before: never (every write 503); writes failed: {}",
        litefs_failed.len()
    );
    rows.push(r);
    Ok(Section {
        rows,
        json: json!({"kill9_s": kill_s, "sigterm_s": term_s, "sigterm_exit_s": exit_s,
            "litefs_kill9_s": litefs_s, "litefs_kill9_failed_writes": litefs_failed,
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
