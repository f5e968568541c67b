//! Calibration: today's failover, run on the sim's LiteFS (a process per node running
//! LiteFS's consul lease loop against the node's lease endpoint, replicas streaming from
//! the primary), shows what an unmodified LiteFS v0.5.14 did under litefs-proxy
//! (`../shared/litefs-facts.md`, "Measured failover"): LiteFS's primary does not follow a
//! Raft leader change until its own lease loop lets go, and a LiteFS crash on the Raft
//! leader's node leaves the cluster without any primary.
//!
//! These pin the model, not the product: the fixes of "LiteFS and Raft move together"
//! change both outcomes, and these tests then move to the new behaviour.

use std::time::{Duration, Instant};

use litefs_proxy_tests::{
    client::{get, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

/// A cluster whose LiteFS uses lease TTL `ttl_s` (lock-delay 1 s, LiteFS's default):
/// short enough to watch a whole lease run out.
async fn start(ttl_s: u64) -> Cluster {
    Cluster::start(Options {
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

/// The index of the node whose proxy is primary, once its LiteFS holds the lease too
/// and every node agrees.
async fn settled_leader(c: &Cluster) -> usize {
    let l = c
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .expect("a leader");
    let end = Instant::now() + Duration::from_secs(30);
    while !c.litefs_settled_on(l).await {
        assert!(
            Instant::now() < end,
            "LiteFS primary never settled on node {l}: {:?}\n{}",
            c.litefs_primaries().await,
            c.litefs_log(l)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_litefs_primary_stays_primary_until_its_lease_loop_lets_go() {
    // TTL 4 s: the old primary renews every 2 s and, its endpoint gone, lets go 3 to 5 s
    // after the kill; the checks below all happen within about 2 s of it.
    let mut c = start(4).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_litefs_crash_on_the_leaders_node_leaves_the_cluster_without_a_primary() {
    let mut c = start(2).await;
    let leader = settled_leader(&c).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.kill_litefs(leader);

    // Watched for several lease lifetimes (TTL 2 s, so the endpoint drops the dead
    // session after 4 s, then lock-delay 1 s), sampled every 100 ms:
    // the Raft leader stays where it is, no LiteFS becomes primary (only the leader's node
    // may lock, and its LiteFS is gone), every write fails, and the leader's health says OK.
    let watch = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch {
        assert_eq!(c.litefs_primaries().await, Vec::<usize>::new());
        for &i in &survivors {
            assert_eq!(
                c.raft_leader(i).await.as_deref(),
                Some(c.nodes[leader].id.as_str())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &i in &survivors {
        let log = c.litefs_log(i);
        assert!(
            log.contains("cannot acquire lease or find primary"),
            "{} kept trying for the lease:\n{log}",
            c.nodes[i].id
        );
    }
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "x")
        .await
        .unwrap();
    assert_eq!(w.status, 503, "{}", w.text());
    let h = get(c.nodes[leader].proxy, "/litefs/health", &[])
        .await
        .unwrap();
    assert_eq!(
        h.status, 200,
        "the dead LiteFS's node still reports healthy"
    );
}
