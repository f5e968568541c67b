//! Eligibility (`Election::eligibility`, cleared by the server while the node's LiteFS is
//! down): an ineligible leader hands over, an ineligible follower neither takes a handover
//! nor campaigns, and an eligible-again node leads again when needed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use openraft::ServerState;

/// Records whether node `i` is ever Raft leader from now on (every metrics change is seen
/// by a task of its own, so a brief leadership is caught too).
fn watch_never_leads(c: &Cluster, i: usize) -> Arc<AtomicBool> {
    let led = Arc::new(AtomicBool::new(false));
    let mut m = c.slots[i].node.as_ref().expect("running").raft_metrics();
    let flag = led.clone();
    tokio::spawn(async move {
        loop {
            if m.borrow_and_update().state == ServerState::Leader {
                flag.store(true, Ordering::SeqCst);
            }
            if m.changed().await.is_err() {
                return;
            }
        }
    });
    led
}

fn set_eligible(c: &Cluster, i: usize, eligible: bool) {
    c.slots[i]
        .node
        .as_ref()
        .expect("running")
        .eligibility()
        .set(eligible);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_only_to_eligible_nodes() {
    common::init_tracing();
    let mut c = Cluster::new(3, None, |_| {});
    c.start_all().await;
    let a = c.wait_agreed(Duration::from_secs(10)).await;

    // The leader's LiteFS goes down: it hands over to one of the others.
    set_eligible(&c, a, false);
    assert!(!c.slots[a].node.as_ref().unwrap().status().eligible);
    let b = loop {
        let l = c.wait_agreed(Duration::from_secs(10)).await;
        if l != a {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let a_led = watch_never_leads(&c, a);

    // The new leader's LiteFS goes down too: the only eligible node takes over, `a` refuses.
    set_eligible(&c, b, false);
    let third = (0..3).find(|&i| i != a && i != b).expect("a third node");
    let got = loop {
        let l = c.wait_agreed(Duration::from_secs(10)).await;
        if l != b {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(got, third, "leadership went to the only eligible node");
    let b_led = watch_never_leads(&c, b);
    assert!(
        !a_led.load(Ordering::SeqCst),
        "an ineligible node took leadership"
    );

    // `a` is eligible again and the leader crashes: `a` campaigns on its own timer and wins;
    // `b`, still ineligible, never leads.
    set_eligible(&c, a, true);
    c.kill(third).await;
    let got = c.wait_agreed(Duration::from_secs(10)).await;
    assert_eq!(got, a, "the eligible survivor leads");
    assert!(
        !b_led.load(Ordering::SeqCst),
        "an ineligible node was Raft leader"
    );
    c.stop_all().await;
}
