//! The chaos run of `tests/tests/chaos.rs` and the bench: a black-box history check over
//! real processes (per node a litefs-proxy and the sim's LiteFS, replication over its
//! stream with a 100 ms lag): clients write items with unique
//! bodies through every node and read each acknowledged one back, with its token, through
//! another node, while the leader's node is killed (-9, then restarted), cut off from its
//! peers (each node runs in a network namespace of its own; the cut drops packets, no
//! resets, and clients still reach it) and paused
//! (SIGSTOP of its proxy and its LiteFS). At the end every acknowledged write must be in
//! the primary's database once, and no read-your-writes read may have missed its write.
//! With `sync_replicas = 0` the same run loses writes, so the check can fail.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::{
    client::{get, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

/// The replication lag every replica sees.
pub const LAG_MS: u64 = 100;
/// Per request: a paused node's socket accepts and never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// One acknowledged write.
#[derive(Debug)]
struct Acked {
    body: String,
    /// For the log: the node it was sent to, the time of the answer, the token.
    how: String,
    /// When the client sent it.
    sent: std::time::Instant,
    /// The node whose app applied it (the app's answer names it).
    applied_by: String,
}

#[derive(Default, Debug)]
struct History {
    acked: Vec<Acked>,
    /// Acknowledged writes whose read through another node, with their token, answered
    /// without them (404 or another item).
    ryw_violations: Vec<String>,
    /// Reads that got an answer at all (so the check above had something to check).
    reads_answered: usize,
    /// Writes not acknowledged, by status (or "timeout"/"error"), for the log.
    unacked: HashMap<String, usize>,
}

/// What a run saw.
#[derive(Debug)]
pub struct Outcome {
    /// Writes answered 2xx.
    pub acked: usize,
    /// Acknowledged writes missing from the primary's database at the end, each with the node,
    /// time and token of its answer.
    pub lost: Vec<String>,
    /// Bodies found more than once at the end.
    pub duplicated: Vec<String>,
    /// Reads (with the write's token, through another node) that missed their write.
    pub ryw_violations: Vec<String>,
    /// Reads answered 200 or 404 (what the check above checked).
    pub reads_answered: usize,
    /// Writes not acknowledged, by status (or "timeout"/"error").
    pub unacked: HashMap<String, usize>,
    /// Writes sent while their node was paused or cut off (from 50 ms into the fault, so
    /// none was already at the app) and acknowledged as applied by that node's app: a
    /// leader that a newer one superseded (or was about to) answered them.
    pub by_superseded: Vec<String>,
}

/// One client: write `c<id>-<n>` through node `n % 3`, then read it back through the next
/// node with the token the write minted.
async fn client(
    id: usize,
    c: Arc<Vec<std::net::SocketAddr>>,
    stop: Arc<AtomicBool>,
    h: Arc<Mutex<History>>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = format!("c{id}-{n}");
        let w = c[(n + id) % c.len()];
        let r = c[(n + id + 1) % c.len()];
        let sent = std::time::Instant::now();
        let a = match tokio::time::timeout(REQUEST_TIMEOUT, post(w, "/items", &[], &body)).await {
            Ok(Ok(a)) if a.status.is_success() => a,
            other => {
                let why = match other {
                    Ok(Ok(a)) => format!("{} {}", a.status.as_u16(), a.text().trim()),
                    Ok(Err(_)) => "error".into(),
                    Err(_) => "timeout".into(),
                };
                *h.lock().unwrap().unacked.entry(why).or_default() += 1;
                continue;
            }
        };
        let item: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let token = a.headers.get("litefs-txid").and_then(|v| v.to_str().ok());
        let how = format!(
            "via node-{} at {} token {}",
            (n + id) % c.len() + 1,
            utc_now(),
            token.unwrap_or("-")
        );
        h.lock().unwrap().acked.push(Acked {
            body: body.clone(),
            how,
            sent,
            applied_by: item["node"].as_str().unwrap_or_default().to_owned(),
        });
        let (Some(item_id), Some(token)) = (item["id"].as_i64(), token) else {
            continue;
        };
        let path = format!("/items/{item_id}");
        let read =
            tokio::time::timeout(REQUEST_TIMEOUT, get(r, &path, &[("litefs-txid", token)])).await;
        let Ok(Ok(a)) = read else { continue };
        let found: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let mut h = h.lock().unwrap();
        match a.status.as_u16() {
            200 if found["body"] == body.as_str() => h.reads_answered += 1,
            200 | 404 => {
                h.reads_answered += 1;
                h.ryw_violations
                    .push(format!("{body}: {} {}", a.status, a.text().trim()));
            }
            _ => {}
        }
    }
}

/// The time of day (UTC, as in the nodes' logs), for lining the history up with them.
fn utc_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

async fn settled(c: &Cluster) -> usize {
    c.wait_litefs_settled(Duration::from_secs(30))
        .await
        .expect("LiteFS settled on the Raft leader")
}

/// The chaos run: 6 clients, then kill, partition and pause of the leader's node, twice.
pub async fn run(sync_replicas: usize) -> Outcome {
    let mut c = Cluster::start(Options {
        netns: true,
        proxy_extra: format!(
            "primary_redirect_timeout = \"5s\"\nsync_replicas = {sync_replicas}\n"
        ),
        litefs: Some(LiteFsOptions::with_lag(LAG_MS)),
        ..Options::default()
    })
    .await;
    settled(&c).await;
    let addrs = Arc::new(c.nodes.iter().map(|n| n.proxy).collect::<Vec<_>>());
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let clients: Vec<_> = (0..6)
        .map(|id| tokio::spawn(client(id, addrs.clone(), stop.clone(), history.clone())))
        .collect();
    // (node, start, end) of each pause and partition.
    let mut cut_off = Vec::new();
    for round in 0..2 {
        for fault in ["kill", "partition", "pause"] {
            let l = settled(&c).await;
            let start = std::time::Instant::now();
            eprintln!(
                "{} chaos round {round}: {fault} {}",
                utc_now(),
                c.nodes[l].id
            );
            match fault {
                "kill" => {
                    c.kill(l);
                    c.kill_litefs(l);
                }
                "partition" => c.isolate(l, true),
                _ => {
                    c.signal(l, "STOP");
                    c.signal_litefs(l, "STOP");
                }
            }
            // The fault lasts this long: past the election and the LiteFS lease.
            tokio::time::sleep(Duration::from_secs(3)).await;
            match fault {
                "kill" => {
                    c.spawn_litefs(l);
                    c.spawn(l);
                }
                "partition" => c.isolate(l, false),
                _ => {
                    c.signal_litefs(l, "CONT");
                    c.signal(l, "CONT");
                }
            }
            if fault != "kill" {
                cut_off.push((c.nodes[l].id.clone(), start, std::time::Instant::now()));
            }
        }
    }
    let l = settled(&c).await;
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        let _ = cl.await;
    }
    let all = get(c.nodes[l].proxy, "/items", &[])
        .await
        .expect("final read");
    let items: Vec<serde_json::Value> = serde_json::from_slice(&all.body).expect("item list");
    let mut count: HashMap<String, usize> = HashMap::new();
    for it in &items {
        *count
            .entry(it["body"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let h = history.lock().unwrap();
    Outcome {
        acked: h.acked.len(),
        lost: h
            .acked
            .iter()
            .filter(|a| !count.contains_key(&a.body))
            .map(|a| format!("{} {}", a.body, a.how))
            .collect(),
        by_superseded: h
            .acked
            .iter()
            .filter(|a| {
                cut_off.iter().any(|(node, start, end)| {
                    a.applied_by == *node
                        && a.sent > *start + Duration::from_millis(50)
                        && a.sent < *end
                })
            })
            .map(|a| format!("{} applied by {} {}", a.body, a.applied_by, a.how))
            .collect(),
        duplicated: count
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(b, _)| b.clone())
            .collect(),
        ryw_violations: h.ryw_violations.clone(),
        reads_answered: h.reads_answered,
        unacked: h.unacked.clone(),
    }
}
