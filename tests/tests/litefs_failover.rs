//! Failover over the sim's LiteFS (a process per node running LiteFS's consul lease loop
//! against the node's lease endpoint, replicas streaming from the primary):
//!
//! - calibration, still what an unmodified LiteFS v0.5.14 does (`../shared/litefs-facts.md`,
//!   "Measured failover"): after kill -9 of the leader's proxy its LiteFS stays primary
//!   until its own lease loop lets go. The new leader asks for LiteFS's handoff, but LiteFS
//!   renews once more before handing off, through the dead proxy's endpoint, and refuses
//!   (run without the lease keeper, which now outlives the proxy and lets the handoff
//!   through: `litefs_follows_raft.rs`);
//! - fixed: a LiteFS crash on the Raft leader's node moves leadership to a node whose
//!   LiteFS is up (it used to leave the cluster without any primary).

use std::time::{Duration, Instant};

use litefs_proxy_tests::{
    client::{get, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

/// A cluster whose LiteFS uses lease TTL `ttl_s` (lock-delay 1 s, LiteFS's default):
/// short enough to watch a whole lease run out.
async fn start(ttl_s: u64) -> Cluster {
    start_with(ttl_s, "").await
}

async fn start_with(ttl_s: u64, election_extra: &str) -> Cluster {
    Cluster::start(Options {
        election_extra: election_extra.into(),
        proxy_extra: "primary_redirect_timeout = \"1s\"\n".into(),
        litefs: Some(LiteFsOptions {
            ttl: Duration::from_secs(ttl_s),
            lock_delay: Duration::from_secs(1),
            lag_ms: 0,
        }),
        ..Options::default()
    })
    .await
}

/// The index of the node whose proxy is primary, once its LiteFS holds the lease too,
/// every other LiteFS streams from it, and every node agrees.
async fn settled_leader(c: &Cluster) -> usize {
    match c.wait_litefs_settled(Duration::from_secs(30)).await {
        Some(l) => l,
        None => panic!(
            "LiteFS never settled: primaries {:?}\n{}",
            c.litefs_primaries().await,
            (0..3)
                .map(|i| c.litefs_log(i))
                .collect::<Vec<_>>()
                .join("\n---\n")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_litefs_primary_stays_primary_until_its_lease_loop_lets_go() {
    // TTL 4 s: the old primary renews every 2 s and, its endpoint gone, lets go 3 to 5 s
    // after the kill; the checks below all happen within about 2 s of it.
    // The endpoint dies with the proxy, as it did when LiteFS was measured.
    let mut c = start_with(4, "lease_keeper = false\n").await;
    let old = settled_leader(&c).await;
    let w = post(c.nodes[old].proxy, "/items", &[], "before")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();

    // kill -9 of the leader's proxy: its LiteFS lives on, renewing against a dead endpoint.
    c.kill(old);
    let end = Instant::now() + Duration::from_secs(10);
    let new_leader = loop {
        let mut named = None;
        for &i in &survivors {
            if let Some(l) = c.raft_leader(i).await {
                if l != c.nodes[old].id {
                    named = Some(l);
                }
            }
        }
        if let Some(l) = named {
            break l;
        }
        assert!(Instant::now() < end, "no new Raft leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Raft has moved; LiteFS has not: the old node's LiteFS still holds the primary, and
    // every replica still streams from it (they look at no lease while connected).
    assert_eq!(
        c.litefs_primaries().await,
        [old],
        "LiteFS moved with Raft ({new_leader} leads): the sim is kinder than LiteFS"
    );
    for &i in &survivors {
        let info = c.litefs_info(i).await.expect("survivor's LiteFS answers");
        assert_eq!(info["primary"]["hostname"], c.nodes[old].id.as_str());
    }
    // Meanwhile a write through a survivor cannot land anywhere: the new Raft leader's
    // LiteFS is a replica, so its proxy holds the write and gives up (503).
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "during")
        .await
        .unwrap();
    assert_eq!(w.status, 503, "{}", w.text());

    // It lets go only when its renewals have failed long enough, and then the new leader's
    // LiteFS takes the lease on one of its own attempts.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let p = c.litefs_primaries().await;
        if !p.contains(&old) && p.len() == 1 {
            break;
        }
        assert!(Instant::now() < end, "LiteFS primaries stuck at {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = c.litefs_log(old);
    assert!(
        log.contains("primary lease lost"),
        "the old primary let go when its renewals had failed long enough:\n{log}"
    );
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "after")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
}

/// kill -9 of the Raft leader's LiteFS: its proxy sees the LiteFS go (events stream ends,
/// `/info` refused), says 503 on `/litefs/health`, and hands Raft leadership to a node whose
/// LiteFS is up, whose LiteFS then takes the lease (when depends on the lease rules; the
/// deadline is generous). Sampled every 100 ms throughout: never two LiteFS primaries, and
/// once leadership has moved, the survivors never name the dead LiteFS's node as leader.
/// Restarted, that LiteFS rejoins as a replica and its node is eligible again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_litefs_crash_on_the_leaders_node_moves_leadership_to_a_live_litefs() {
    let mut c = start(1).await;
    let old = settled_leader(&c).await;
    let old_id = c.nodes[old].id.clone();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.kill_litefs(old);

    let end = Instant::now() + Duration::from_secs(15);
    let mut moved = false;
    let mut unhealthy = false;
    let new = loop {
        let primaries = c.litefs_primaries().await;
        assert!(primaries.len() <= 1, "two LiteFS primaries: {primaries:?}");
        let mut named = Vec::new();
        for &i in &survivors {
            named.push(c.raft_leader(i).await);
        }
        if moved {
            assert!(
                !named.contains(&Some(old_id.clone())),
                "{old_id}, whose LiteFS is dead, leads again: {named:?}"
            );
        } else {
            moved = named
                .iter()
                .any(|n| n.is_some() && *n != Some(old_id.clone()));
        }
        let health = get(c.nodes[old].proxy, "/litefs/health", &[])
            .await
            .unwrap();
        if unhealthy {
            assert_eq!(health.status, 503, "healthy again with LiteFS dead");
        } else {
            unhealthy = health.status == 503;
        }
        let agreed = named[0].is_some() && named[0] == named[1];
        if let [p] = primaries[..] {
            if unhealthy && agreed && named[0].as_deref() == Some(c.nodes[p].id.as_str()) {
                break p;
            }
        }
        assert!(
            Instant::now() < end,
            "no LiteFS primary on a new leader: primaries {primaries:?}, leaders {named:?}, \
             {old_id} health 503: {unhealthy}\n{}",
            c.log(old)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new, old);
    let h = get(c.nodes[old].proxy, "/litefs/health", &[])
        .await
        .unwrap();
    assert_eq!(h.text(), "local LiteFS is down\n");
    let s = c.status(old).await.expect("the old node's proxy answers");
    assert_eq!(s["litefs"], "down", "{s}");
    assert_eq!(s["election"]["eligible"], false, "{s}");
    assert_ne!(s["role"], "primary", "{s}");
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "after")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());

    // Back: a replica of the new primary, healthy and eligible again; still one primary.
    c.spawn_litefs(old);
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let primaries = c.litefs_primaries().await;
        assert_eq!(primaries, [new], "the primary stays put");
        let replica = c
            .litefs_info(old)
            .await
            .is_some_and(|i| i["primary"]["hostname"] == c.nodes[new].id.as_str());
        let s = c.status(old).await.unwrap_or_default();
        let healthy = get(c.nodes[old].proxy, "/litefs/health", &[])
            .await
            .is_ok_and(|h| h.status == 200);
        if replica && healthy && s["litefs"] == "up" && s["election"]["eligible"] == true {
            break;
        }
        assert!(
            Instant::now() < end,
            "{old_id} did not rejoin: replica {replica}, healthy {healthy}, status {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = post(
        c.nodes[old].proxy,
        "/items",
        &[],
        "through the rejoined node",
    )
    .await
    .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
}
