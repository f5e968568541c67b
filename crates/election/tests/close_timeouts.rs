//! Liveness with nearly equal election timeouts (openraft 0.9 draws each node's timeout once,
//! here all within 150-160 ms) and a rejoining node whose log lags: after every crash of the
//! leader the survivors must still elect a leader within 3 s.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_elect_despite_close_election_timeouts() {
    common::init_tracing();
    let mut c = Cluster::new(3, None, |cfg| {
        cfg.heartbeat_interval = Duration::from_millis(10);
        cfg.election_timeout_min = Duration::from_millis(150);
        cfg.election_timeout_max = Duration::from_millis(160);
    });
    c.start_all().await;
    let mut worst = Duration::ZERO;
    for round in 0..6 {
        let leader = c.wait_agreed(Duration::from_secs(5)).await;
        let t = Instant::now();
        c.kill(leader).await;
        c.wait_agreed(Duration::from_secs(3)).await;
        let took = t.elapsed();
        println!("round {round}: failover in {took:?}");
        worst = worst.max(took);
        c.start(leader).await;
    }
    println!("worst failover: {worst:?}");
    c.stop_all().await;
}
