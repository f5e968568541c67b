//! `election.priority` (issue 14, item 3), over real processes with the sim's LiteFS: the
//! voter of highest priority leads once it is healthy and caught up. It takes leadership
//! from whoever won the first election; killed, another voter leads; back and caught up, it
//! gets leadership (and LiteFS's primary) back through the planned handover. Equal
//! priorities would leave leadership where the last election put it.

use std::time::{Duration, Instant};

use litefs_proxy_tests::{
    client::post,
    cluster::{Cluster, LiteFsOptions, Options},
};

/// The preferred node (index) and its priority; the others keep the default 0.
const PREFERRED: usize = 2;
const PRIORITY: &str = "priority = 10\n";
/// How long leadership may take to reach the preferred node: it waits `SETTLE` (2 s) after
/// an election before looking, then checks every second.
const MOVES_WITHIN: Duration = Duration::from_secs(20);

async fn start() -> Cluster {
    let mut per_node = vec![String::new(); 3];
    per_node[PREFERRED] = PRIORITY.into();
    Cluster::start(Options {
        proxy_extra: "primary_redirect_timeout = \"5s\"\nshutdown_grace = \"2s\"\n".into(),
        litefs: Some(LiteFsOptions::with_lag(0)),
        election_extra_per_node: per_node,
        ..Options::default()
    })
    .await
}

/// Waits until node `want` is the settled leader (its LiteFS primary, the others its
/// replicas); the leader seen last when it never is.
async fn settles_on(c: &Cluster, want: usize, within: Duration) -> Result<(), Option<usize>> {
    let end = Instant::now() + within;
    let mut last = None;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        last = c.wait_litefs_settled(left).await;
        if last == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voter_of_highest_priority_leads_and_gets_leadership_back_after_a_failover() {
    let mut c = start().await;
    settles_on(&c, PREFERRED, MOVES_WITHIN)
        .await
        .unwrap_or_else(|l| panic!("the preferred node never led; last leader {l:?}"));
    let via = 0;
    let w = post(c.nodes[via].proxy, "/items", &[], "first")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
    assert_eq!(w.header("x-sim-node"), Some(c.nodes[PREFERRED].id.as_str()));

    // Killed, another voter leads and takes writes.
    c.kill_node(PREFERRED);
    let w = post(c.nodes[via].proxy, "/items", &[], "during")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
    let other = w.header("x-sim-node").unwrap_or_default().to_owned();
    assert_ne!(other, c.nodes[PREFERRED].id);

    // Back, it catches up and leadership returns to it.
    c.spawn_litefs(PREFERRED);
    c.spawn(PREFERRED);
    settles_on(&c, PREFERRED, MOVES_WITHIN)
        .await
        .unwrap_or_else(|l| panic!("leadership never returned to the preferred node; last {l:?}"));
    let w = post(c.nodes[via].proxy, "/items", &[], "after")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{}", w.text());
    assert_eq!(w.header("x-sim-node"), Some(c.nodes[PREFERRED].id.as_str()));
    // It got it back through the planned handover, not by an election the other lost.
    let o = (0..3)
        .find(|&i| c.nodes[i].id == other)
        .expect("the other leader");
    let log = c.log(o);
    assert!(
        log.contains("a voter of higher priority can lead: handing leadership over"),
        "{log}"
    );
}
