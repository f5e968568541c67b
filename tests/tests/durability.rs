//! `proxy.sync_replicas` and write fencing over real processes: per node a litefs-proxy
//! (Raft, lease endpoint) and the sim's LiteFS (lease loop, replication over its stream with
//! a lag the test sets). A write is answered only once a replica holds it; without any
//! replica it is refused as "applied, not replicated" (or answered, counted, with
//! `on_sync_timeout = "degrade"`); a leader paused past its lease answers no write itself.

use std::time::Duration;

use litefs_proxy_tests::{
    client::{get, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

async fn start(lag_ms: u64, extra: &str) -> Cluster {
    Cluster::start(Options {
        proxy_extra: format!("primary_redirect_timeout = \"5s\"\n{extra}"),
        litefs: Some(LiteFsOptions::with_lag(lag_ms)),
        ..Options::default()
    })
    .await
}

async fn settled_leader(c: &Cluster) -> usize {
    c.wait_litefs_settled(Duration::from_secs(30))
        .await
        .expect("LiteFS settled on the Raft leader")
}

/// Node `i`'s LiteFS TXID, from its `<db>-pos` file.
fn litefs_txid(c: &Cluster, i: usize) -> u64 {
    let mount = &c.nodes[i].litefs.as_ref().expect("LiteFS node").mount;
    std::fs::read_to_string(litefs_sim::pos_path(mount, "db.sqlite3"))
        .ok()
        .and_then(|t| litefs_sim::parse_pos(&t))
        .map_or(0, |(txid, _)| txid)
}

/// The node among `among` whose election says it leads, once one does.
async fn raft_leader_among(c: &Cluster, among: &[usize], within: Duration) -> Option<usize> {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        for &i in among {
            if c.status(i)
                .await
                .is_some_and(|s| s["election"]["role"] == "leader")
            {
                return Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The TXID the app reported for its write (`x-sim-txid`, 16 hex).
fn written_txid(a: &litefs_proxy_tests::client::Answer) -> u64 {
    let hex = a.headers["x-sim-txid"].to_str().expect("ascii");
    u64::from_str_radix(hex, 16).expect("hex txid")
}

/// Writes through the leader; right after each answer, how many replicas hold that write.
async fn replicas_holding_each_write(c: &Cluster, leader: usize, rounds: usize) -> Vec<usize> {
    let mut held = Vec::new();
    for round in 0..rounds {
        let a = post(c.nodes[leader].proxy, "/items", &[], &format!("w{round}"))
            .await
            .expect("write answered");
        assert!(
            a.status.is_success(),
            "write {round}: {} {}",
            a.status,
            a.text()
        );
        let txid = written_txid(&a);
        held.push(
            (0..c.nodes.len())
                .filter(|&j| j != leader && litefs_txid(c, j) >= txid)
                .count(),
        );
    }
    held
}

/// With a replication lag of 400 ms, an answer given as soon as the app committed would
/// reach the client long before any replica has the write; with the default
/// `sync_replicas = 1` (3 voters) every answer waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_is_answered_only_once_a_replica_holds_it() {
    let c = start(400, "").await;
    let leader = settled_leader(&c).await;
    let held = replicas_holding_each_write(&c, leader, 5).await;
    assert!(
        held.iter().all(|&n| n >= 1),
        "replicas holding each write when answered: {held:?}"
    );
    let m = get(c.nodes[leader].proxy, "/litefs/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("litefs_proxy_syncs_total{outcome=\"replicated\"} 5"),
        "{m}"
    );
}

/// The same check with `sync_replicas = 0` (asynchronous, as before): the answers come
/// before any replica holds the write, so the check above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sync_replicas_0_a_write_is_answered_before_any_replica_holds_it() {
    let c = start(400, "sync_replicas = 0\n").await;
    let leader = settled_leader(&c).await;
    let held = replicas_holding_each_write(&c, leader, 5).await;
    assert!(
        held.iter().all(|&n| n == 0),
        "replicas holding each write when answered: {held:?}"
    );
}

/// Both replicas' LiteFS gone: the primary's app applies the write, but no replica can hold
/// it, so after `sync_timeout` the client gets 503 saying so (and no Retry-After: a blind
/// retry would apply it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_replica_a_write_is_refused_as_applied_not_replicated() {
    let mut c = start(0, "sync_timeout = \"500ms\"\n").await;
    let leader = settled_leader(&c).await;
    for j in (0..c.nodes.len()).filter(|&j| j != leader) {
        c.kill_litefs(j);
    }
    let before = litefs_txid(&c, leader);
    let started = std::time::Instant::now();
    let a = post(c.nodes[leader].proxy, "/items", &[], "lonely")
        .await
        .unwrap();
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.headers["litefs-write"], "applied-not-replicated");
    assert!(a.headers.get("retry-after").is_none());
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(litefs_txid(&c, leader) > before, "the primary applied it");
    let m = get(c.nodes[leader].proxy, "/litefs/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("litefs_proxy_syncs_total{outcome=\"failed\"} 1"),
        "{m}"
    );
}

/// `on_sync_timeout = "degrade"`: the same write is answered after the timeout, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn degrade_answers_without_a_replica_and_counts_it() {
    let mut c = start(
        0,
        "sync_timeout = \"300ms\"\non_sync_timeout = \"degrade\"\n",
    )
    .await;
    let leader = settled_leader(&c).await;
    for j in (0..c.nodes.len()).filter(|&j| j != leader) {
        c.kill_litefs(j);
    }
    let a = post(c.nodes[leader].proxy, "/items", &[], "lonely")
        .await
        .unwrap();
    assert!(a.status.is_success(), "{} {}", a.status, a.text());
    let m = get(c.nodes[leader].proxy, "/litefs/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("litefs_proxy_syncs_total{outcome=\"degraded\"} 1"),
        "{m}"
    );
}

/// The leader's proxy is stopped (SIGSTOP) with writes queued on it until another node
/// leads, then resumed. Its role watch still says "primary" for a moment, and its LiteFS
/// may still hold the lease (TTL 1 s), but the fence sees the quorum ack too old: none of
/// those writes is answered by its app; they go to the new leader or fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_answers_no_write_after_a_newer_leader_exists() {
    // sync_replicas = 0: the fence alone (a write's wait for its replicas also stops a
    // superseded leader, since replicas report to the new one).
    let c = start(0, "sync_replicas = 0\n").await;
    let old = settled_leader(&c).await;
    let old_name = c.nodes[old].id.clone();
    let others: Vec<usize> = (0..c.nodes.len()).filter(|&j| j != old).collect();
    c.signal(old, "STOP");
    let writes: Vec<_> = (0..20)
        .map(|n| {
            let addr = c.nodes[old].proxy;
            tokio::spawn(async move { post(addr, "/items", &[], &format!("queued{n}")).await })
        })
        .collect();
    // Raft's new leader: its LiteFS cannot take the lease yet (the old LiteFS's renewal
    // hangs on the stopped endpoint, as Go's client has no timeout), so the proxies' roles
    // would not settle before the old one resumes.
    let newer = raft_leader_among(&c, &others, Duration::from_secs(10)).await;
    c.signal(old, "CONT");
    assert!(
        newer.is_some(),
        "another node leads while the old leader is stopped"
    );
    let mut by_old = 0;
    let mut answered = 0;
    for w in writes {
        if let Ok(Ok(a)) = w.await {
            if a.status.is_success() {
                answered += 1;
                if a.headers
                    .get("x-sim-node")
                    .is_some_and(|n| n == old_name.as_str())
                {
                    by_old += 1;
                }
            }
        }
    }
    assert_eq!(
        by_old, 0,
        "writes answered by the superseded leader ({answered} answered)"
    );
    assert!(answered > 0, "the queued writes reached the new leader");
}
