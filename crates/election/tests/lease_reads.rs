//! What the lease endpoint answers without a Raft write, and what it refuses to answer: reads
//! wait until the node has applied the leader's read index (a restarted node never answers from
//! its persisted state), and refused acquires and releases cost no log entry.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{get_until, http_call, json_of, lease_addr, lease_cluster, put, Cluster, GO_CREATE};
use serde_json::json;

const KEY: &str = "litefs/primary";
/// LiteFS's create with the TTL litefs-config prints (1 s): its lock outlives a dead holder by
/// LiteFS's own belief (1.5 s) plus the margin, not 11 s.
const GO_CREATE_1S: &[u8] =
    br#"{"NodeChecks":[],"Name":"litefs","LockDelay":"0s","Behavior":"delete","TTL":"1s"}"#;

async fn create(addr: SocketAddr) -> String {
    create_with(addr, GO_CREATE).await
}

async fn create_with(addr: SocketAddr, body: &[u8]) -> String {
    let (st, _, b) = http_call(addr, "PUT", "/v1/session/create", body).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    json_of(&b)["ID"].as_str().expect("ID").to_string()
}

fn last_log_index(c: &Cluster, i: usize) -> Option<u64> {
    let node = c.slots[i].node.as_ref().expect("running");
    let idx = node.raft_metrics().borrow().last_log_index;
    idx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_answers_no_read_until_it_has_caught_up_with_the_leader() {
    common::init_tracing();
    let mut c = lease_cluster();
    c.start_all().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let la = lease_addr(&c, l);
    // The leader's LiteFS holds the lock.
    let sid = create_with(la, GO_CREATE_1S).await;
    let value = br#"{"hostname":"old","advertiseURL":"http://old:20202"}"#;
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?acquire={sid}"), value).await,
        json!(true)
    );

    // The leader crashes; once its LiteFS can no longer believe in the lease, its session
    // expires and the key is deleted.
    c.kill(l).await;
    let l2 = c.wait_agreed(Duration::from_secs(3)).await;
    get_until(lease_addr(&c, l2), &format!("/v1/kv/{KEY}"), |s, _| {
        s == 404
    })
    .await;

    // The old leader restarts cut off from the others, so it cannot catch up: its persisted
    // state still shows its own session holding the key (what `?stale` reads, and what every
    // read used to answer: LiteFS then tried to replicate from itself).
    c.isolate(l);
    c.start(l).await;
    let oa = lease_addr(&c, l);
    let (st, _, b) = http_call(oa, "GET", &format!("/v1/kv/{KEY}?stale"), b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)[0]["Session"], json!(sid), "the persisted state");
    for path in [
        format!("/v1/kv/{KEY}"),
        format!("/v1/session/info/{sid}"),
        "/v1/session/list".to_string(),
    ] {
        let (st, _, b) = http_call(oa, "GET", &path, b"").await;
        assert_eq!(
            (st, String::from_utf8_lossy(&b).as_ref()),
            (500, "No cluster leader"),
            "GET {path}"
        );
    }
    // Neither does it refuse a release from that state.
    let (st, _, _) = http_call(oa, "PUT", &format!("/v1/kv/{KEY}?release={sid}"), b"").await;
    assert_eq!(st, 500);

    // Reconnected, it catches up and answers what the leader committed.
    c.heal();
    get_until(oa, &format!("/v1/kv/{KEY}"), |s, _| s == 404).await;
    let (st, _, b) = http_call(oa, "GET", &format!("/v1/session/info/{sid}"), b"").await;
    assert_eq!((st, json_of(&b)), (200, json!([])));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_acquires_and_releases_append_nothing_to_the_log() {
    common::init_tracing();
    let mut c = lease_cluster();
    c.start_all().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let f = (0..3).find(|i| *i != l).expect("follower");
    let (la, fa) = (lease_addr(&c, l), lease_addr(&c, f));
    let holder = create(la).await;
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?acquire={holder}"), b"a").await,
        json!(true)
    );
    // Another LiteFS session on the leader's node, and one on a follower (LiteFS's retry loop:
    // create, acquire, release, destroy).
    let other = create(la).await;
    let on_follower = create(fa).await;
    let before = last_log_index(&c, l);

    for _ in 0..10 {
        // Held by another valid session.
        assert_eq!(
            put(la, &format!("/v1/kv/{KEY}?acquire={other}"), b"b").await,
            json!(false)
        );
        assert_eq!(
            put(la, &format!("/v1/kv/{KEY}?release={other}"), b"").await,
            json!(false)
        );
        // This node does not lead.
        assert_eq!(
            put(fa, &format!("/v1/kv/{KEY}?acquire={on_follower}"), b"c").await,
            json!(false)
        );
        assert_eq!(
            put(fa, &format!("/v1/kv/{KEY}?release={on_follower}"), b"").await,
            json!(false)
        );
        assert_eq!(
            put(fa, &format!("/v1/kv/free?acquire={on_follower}"), b"c").await,
            json!(false)
        );
    }
    assert_eq!(last_log_index(&c, l), before, "50 refusals, no log entry");

    // What can succeed still goes through the log.
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?acquire={holder}"), b"a2").await,
        json!(true)
    );
    assert!(last_log_index(&c, l) > before);
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?release={holder}"), b"").await,
        json!(true)
    );
    c.stop_all().await;
}
