//! Read replicas that never lead (issue 14, item 1): 3 voters and 2 non-voters
//! (`voter = false` in `peers`, openraft learners; their LiteFS no candidate, as
//! `litefs-config` prints it), real processes with the sim's LiteFS. The leader is killed
//! (whole node) again and again: a non-voter is never Raft leader nor LiteFS primary, and
//! writes sent through it land on the voter that leads. With two of the three voters dead
//! nothing is acknowledged, although three of five nodes run: non-voters do not count for
//! the quorum.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use litefs_proxy_tests::{
    client::{get, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

const VOTERS: [usize; 3] = [0, 1, 2];
const NON_VOTERS: [usize; 2] = [3, 4];
/// Rounds of "kill the leader, write through a non-voter, restore".
const ROUNDS: usize = 3;
/// How often the sampler asks the non-voters' LiteFS and proxies, and how long each may take.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const ASK_WITHIN: Duration = Duration::from_millis(300);

async fn start() -> Cluster {
    Cluster::start(Options {
        nodes: 5,
        non_voters: NON_VOTERS.to_vec(),
        proxy_extra: "primary_redirect_timeout = \"3s\"\nshutdown_grace = \"2s\"\n".into(),
        litefs: Some(LiteFsOptions::with_lag(0)),
        ..Options::default()
    })
    .await
}

/// Asks the non-voters' LiteFS (`/info`) and proxies (`/litefs/status`) every 100 ms until
/// `stop` whether they act as primary; what it saw.
fn sample_non_voters(
    nodes: Vec<(String, SocketAddr, SocketAddr)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (id, api, proxy) in &nodes {
                if let Ok(Ok(a)) = tokio::time::timeout(ASK_WITHIN, get(*api, "/info", &[])).await {
                    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                    if v["isPrimary"] == true {
                        seen.push(format!("{id}: LiteFS primary"));
                    }
                }
                let status = tokio::time::timeout(ASK_WITHIN, get(*proxy, "/litefs/status", &[]));
                if let Ok(Ok(a)) = status.await {
                    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                    if v["role"] == "primary" || v["election"]["role"] == "leader" {
                        seen.push(format!("{id}: proxy primary or Raft leader"));
                    }
                }
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        seen
    })
}

fn non_voter_addrs(c: &Cluster) -> Vec<(String, SocketAddr, SocketAddr)> {
    NON_VOTERS
        .iter()
        .map(|&i| {
            let n = &c.nodes[i];
            (
                n.id.clone(),
                n.litefs.as_ref().expect("LiteFS").api,
                n.proxy,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_voters_never_lead_forward_writes_through_failovers_and_do_not_count_for_the_quorum() {
    let mut c = start().await;
    let l = settled(&c).await;
    for i in NON_VOTERS {
        let s = c.status(i).await.expect("status");
        assert_eq!(s["election"]["voter"], false, "{s}");
        assert_eq!(s["role"], "replica", "{s}");
    }
    let s = c.status(l).await.expect("status");
    assert_eq!(s["election"]["voter"], true, "{s}");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_non_voters(non_voter_addrs(&c), stop.clone());
    for round in 0..ROUNDS {
        let l = settled(&c).await;
        c.kill_node(l);
        let via = NON_VOTERS[round % NON_VOTERS.len()];
        let body = format!("round-{round}");
        let resp = post(c.nodes[via].proxy, "/items", &[], &body)
            .await
            .expect("POST through a non-voter");
        assert_eq!(resp.status, 201, "round {round}: {}", resp.text());
        let by = resp.header("x-sim-node").unwrap_or_default().to_owned();
        assert!(
            VOTERS.iter().any(|&v| v != l && c.nodes[v].id == by),
            "round {round}: written by a surviving voter's app, not {by:?}"
        );
        c.spawn_litefs(l);
        c.spawn(l);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.await.expect("sampler");
    assert!(seen.is_empty(), "a non-voter acted as primary: {seen:?}");

    // Two voters dead, three nodes (two of them non-voters) alive: no quorum, so a write is
    // not acknowledged (it would be if the non-voters counted: 3 of 5).
    let l = settled(&c).await;
    let other = VOTERS.iter().copied().find(|&v| v != l).expect("a voter");
    c.kill_node(l);
    c.kill_node(other);
    let resp = post(c.nodes[NON_VOTERS[0]].proxy, "/items", &[], "no-quorum")
        .await
        .expect("POST through a non-voter");
    assert_ne!(resp.status, 201, "acknowledged without a quorum of voters");
}

/// The Raft leader once its LiteFS holds the lease and every other LiteFS streams from it.
async fn settled(c: &Cluster) -> usize {
    let l = c
        .wait_litefs_settled(Duration::from_secs(30))
        .await
        .expect("LiteFS settled on a leader");
    assert!(VOTERS.contains(&l), "a voter leads, not {}", c.nodes[l].id);
    l
}
