//! The lease endpoint over raw HTTP: Consul's status codes, JSON field names, base64 values and
//! `X-Consul-*` headers, on leader and follower, and what a leader change does to the lock.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{get_until, http_call, json_of, lease_addr, lease_cluster, put, GO_CREATE};
use serde_json::{json, Value};

const KEY: &str = "litefs/primary";

async fn create(addr: SocketAddr, body: &[u8]) -> String {
    let (st, h, b) = http_call(addr, "PUT", "/v1/session/create", body).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/json");
    let v = json_of(&b);
    let id = v["ID"].as_str().expect("ID").to_string();
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    assert_eq!(id.len(), 36, "{id}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_shapes_on_leader_and_follower_and_leader_change() {
    common::init_tracing();
    let mut c = lease_cluster();
    c.start_all().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let f = (0..3).find(|i| *i != l).expect("follower");
    let (la, fa) = (lease_addr(&c, l), lease_addr(&c, f));
    let (lname, fname) = (c.slots[l].name.clone(), c.slots[f].name.clone());

    // Missing key: 404, empty body, index headers present (the Go client parses them).
    let (st, h, b) = http_call(fa, "GET", "/v1/kv/litefs/primary/clusterid", b"").await;
    assert_eq!((st, b.len()), (404, 0));
    assert!(h["x-consul-index"].parse::<u64>().expect("index") >= 1);
    assert_eq!(h["x-consul-knownleader"], "true");
    assert_eq!(h["x-consul-lastcontact"], "0");

    // LiteFS on the leader: session (owned by the receiving node), acquire, cluster id.
    let sid = create(la, GO_CREATE).await;
    let (_, h, b) = get_until(fa, &format!("/v1/session/info/{sid}"), |s, b| {
        s == 200 && b != b"[]"
    })
    .await;
    let info = json_of(&b);
    let s = &info[0];
    assert_eq!(s["ID"], json!(sid));
    assert_eq!(s["Name"], "litefs");
    assert_eq!(s["Node"], json!(lname));
    assert_eq!(s["LockDelay"], json!(1_000_000_000u64), "nanoseconds");
    assert_eq!(s["Behavior"], "delete");
    assert_eq!(s["TTL"], "10s");
    assert!(s["CreateIndex"].as_u64().expect("CreateIndex") >= 1);
    assert_eq!(s["CreateIndex"], s["ModifyIndex"]);
    assert!(h.contains_key("x-consul-index"));

    let primary = br#"{"hostname":"node-x","advertiseURL":"http://node-x:20202"}"#;
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?acquire={sid}"), primary).await,
        json!(true)
    );
    let (_, h, b) = get_until(fa, &format!("/v1/kv/{KEY}"), |s, _| s == 200).await;
    let kv = json_of(&b);
    let e = &kv[0];
    assert_eq!(e["Key"], KEY);
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(e["Flags"], 0);
    assert_eq!(e["Session"], json!(sid));
    assert_eq!(
        e["Value"],
        json!(base64::engine::general_purpose::STANDARD.encode(primary))
    );
    let mi = e["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert_eq!(e["CreateIndex"].as_u64(), Some(mi));
    assert_eq!(h["x-consul-index"], mi.to_string());
    // ?raw answers the value itself.
    let (st, _, raw) = http_call(fa, "GET", &format!("/v1/kv/{KEY}?raw"), b"").await;
    assert_eq!((st, raw.as_slice()), (200, &primary[..]));

    // The cluster id is set once (LiteFS writes it with a plain PUT).
    let cid = "/v1/kv/litefs/primary/clusterid";
    assert_eq!(put(la, cid, b"LFSC0123456789ABCDEF").await, json!(true));
    assert_eq!(
        put(fa, cid, b"LFSC0123456789ABCDEF").await,
        json!(true),
        "same value"
    );
    assert_eq!(put(fa, cid, b"LFSCFFFFFFFFFFFFFFFF").await, json!(false));
    assert_eq!(put(la, &format!("{cid}?cas=0"), b"x").await, json!(false));
    let (st, _, _) = http_call(la, "DELETE", cid, b"").await;
    assert_eq!(st, 200);
    let (_, _, raw) = http_call(fa, "GET", &format!("{cid}?raw"), b"").await;
    assert_eq!(raw, b"LFSC0123456789ABCDEF");

    // LiteFS on a follower: its session is its node's, and cannot lock.
    let fsid = create(fa, GO_CREATE).await;
    let (_, _, b) = http_call(fa, "GET", &format!("/v1/session/info/{fsid}"), b"").await;
    assert_eq!(json_of(&b)[0]["Node"], json!(fname));
    assert_eq!(
        put(fa, &format!("/v1/kv/{KEY}?acquire={fsid}"), b"{}").await,
        json!(false)
    );
    assert_eq!(
        put(fa, &format!("/v1/kv/{KEY}?release={fsid}"), b"").await,
        json!(false)
    );
    // A node's endpoint makes, lists and destroys only its own node's sessions: an explicit
    // Node naming another member is refused there, the leader's session is neither listed
    // nor destroyable through a follower's endpoint.
    let explicit = format!(r#"{{"Node":"{lname}","TTL":"10s","LockDelay":"1s"}}"#);
    let (st, _, _) = http_call(fa, "PUT", "/v1/session/create", explicit.as_bytes()).await;
    assert_eq!(st, 403);
    let (_, _, b) = http_call(fa, "GET", "/v1/session/list", b"").await;
    let listed: Vec<Value> = serde_json::from_slice(&b).expect("list");
    assert!(
        listed.iter().all(|s| s["Node"] == json!(fname)),
        "{listed:?}"
    );
    let (st, _, _) = http_call(fa, "PUT", &format!("/v1/session/destroy/{sid}"), b"").await;
    assert_eq!(st, 403);
    // Through its own endpoint it is honoured, and may lock.
    let xsid = create(la, explicit.as_bytes()).await;
    assert_eq!(
        put(la, &format!("/v1/kv/other?acquire={xsid}"), b"v").await,
        json!(true)
    );

    // Renew: the session as a one-element list; unknown: 404.
    let v = put(fa, &format!("/v1/session/renew/{sid}"), b"").await;
    assert_eq!(v[0]["ID"], json!(sid));
    let (st, _, b) = http_call(fa, "PUT", "/v1/session/renew/no-such-session", b"").await;
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&b));

    // Blocking query: held until the KV index passes, answered by the release.
    let (_, h, _) = http_call(fa, "GET", &format!("/v1/kv/{KEY}"), b"").await;
    let idx: u64 = h["x-consul-index"].parse().expect("index");
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = http_call(fa, "GET", &format!("/v1/kv/{KEY}?index={idx}&wait=5s"), b"").await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?release={sid}"), b"").await,
        json!(true)
    );
    let ((st, h, b), took) = waiter.await.expect("waiter");
    assert_eq!(st, 200);
    assert!(
        took >= Duration::from_millis(150),
        "did not block: {took:?}"
    );
    assert!(h["x-consul-index"].parse::<u64>().expect("index") > idx);
    let e = &json_of(&b)[0];
    assert!(e.get("Session").is_none(), "released: {e}");
    assert_eq!(
        e["Value"],
        Value::Null,
        "release with an empty body clears the value"
    );
    assert_eq!(e["LockIndex"], 1);
    // Re-acquire bumps LockIndex.
    assert_eq!(
        put(la, &format!("/v1/kv/{KEY}?acquire={sid}"), primary).await,
        json!(true)
    );
    let (_, _, b) = get_until(fa, &format!("/v1/kv/{KEY}"), |_, b| {
        b.windows(13).any(|w| w == b"\"LockIndex\":2")
    })
    .await;
    assert_eq!(json_of(&b)[0]["Session"], json!(sid));

    // Errors and what is not served.
    let (st, _, _) = http_call(la, "GET", "/v1/session/create", b"").await;
    assert_eq!(st, 405);
    let (st, _, _) = http_call(la, "GET", "/v1/agent/self", b"").await;
    assert_eq!(st, 404);
    let (st, _, b) = http_call(la, "PUT", "/v1/session/create", br#"{"TTL":"50ms"}"#).await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    let (st, _, _) = http_call(la, "PUT", &format!("/v1/kv/{KEY}?acquire=nope"), b"").await;
    assert_eq!(st, 500, "unknown session");
    assert_eq!(
        put(la, "/v1/catalog/register", br#"{"Node":"litefs"}"#).await,
        json!(true)
    );
    let (st, _, b) = http_call(fa, "GET", "/v1/status/leader", b"").await;
    assert_eq!(st, 200);
    assert!(json_of(&b)
        .as_str()
        .is_some_and(|s| s.starts_with("127.0.0.1:")));

    // The leader dies. Its LiteFS may still act as primary until its last renewal plus what
    // LiteFS's lease loop believes after it (TTL 10 s: 11 s), so the new leader keeps the old
    // session's lock, refuses its renewals (the holder must step down) and lets nobody else
    // lock meanwhile; the state machine's tests pin the moment it is released.
    c.kill(l).await;
    let l2 = c.wait_agreed(Duration::from_secs(3)).await;
    let l2a = lease_addr(&c, l2);
    let (_, _, b) = get_until(l2a, &format!("/v1/kv/{KEY}"), |s, _| s == 200).await;
    assert_eq!(json_of(&b)[0]["Session"], json!(sid), "the lock stays");
    let (st, _, _) = http_call(l2a, "PUT", &format!("/v1/session/renew/{sid}"), b"").await;
    assert_eq!(st, 404, "the old leader's session may not be renewed");
    let nsid = create(l2a, GO_CREATE).await;
    assert_eq!(
        put(l2a, &format!("/v1/kv/{KEY}?acquire={nsid}"), b"new").await,
        json!(false),
        "nobody locks while the old holder may still believe in its lease"
    );
    c.stop_all().await;
}

/// With `lease_token` (required off loopback), a request without it, or with another, is
/// refused before anything is read or written; with it (`X-Consul-Token`, or Consul's
/// `?token=`) the endpoint answers as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_lease_token_only_requests_carrying_it_are_answered() {
    common::init_tracing();
    const TOKEN: &str = "a-lease-token-of-16-chars";
    let mut c = common::Cluster::new(3, None, |cfg| {
        cfg.lease_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.lease_token = Some(TOKEN.into());
    });
    c.start_all().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let la = lease_addr(&c, l);
    for path in [
        "/v1/session/create",
        "/v1/session/create?token=wrong-token-000000",
    ] {
        let (st, _, b) = http_call(la, "PUT", path, GO_CREATE).await;
        assert_eq!(st, 403, "{}", String::from_utf8_lossy(&b));
    }
    let (st, _, _) = http_call(la, "GET", "/v1/session/list", b"").await;
    assert_eq!(st, 403);
    let (st, _, b) = http_call(
        la,
        "PUT",
        &format!("/v1/session/create?token={TOKEN}"),
        GO_CREATE,
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert!(json_of(&b)["ID"].is_string());
}

/// The lock goes only to a node that acts as primary: a Raft leader that does not (here
/// ineligible, as while its LiteFS is down; after an election until its catch-up check
/// passed) refuses its LiteFS's `acquire`, and grants it once it acts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_is_refused_while_the_leader_does_not_act_as_primary() {
    common::init_tracing();
    let mut c = common::Cluster::new(1, None, |cfg| {
        cfg.lease_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    c.start_all().await;
    c.wait_agreed(Duration::from_secs(5)).await;
    let a = lease_addr(&c, 0);
    let sid = create(a, GO_CREATE).await;
    let node = c.slots[0].node.as_ref().expect("running");
    node.eligibility().set(false);
    common::wait_for("the leader stops acting", Duration::from_secs(2), || {
        c.leadership(0) == Some(litefs_election::Leadership::Unknown)
    })
    .await;
    assert_eq!(
        node.raft_metrics().borrow().current_leader,
        Some(node.raft_id())
    );
    let path = format!("/v1/kv/{KEY}?acquire={sid}");
    assert_eq!(put(a, &path, b"{}").await, json!(false));
    node.eligibility().set(true);
    c.wait_agreed(Duration::from_secs(2)).await;
    assert_eq!(put(a, &path, b"{}").await, json!(true));
    c.stop_all().await;
}
