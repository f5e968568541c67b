//! Rules 3, 11, 12: a read carrying a token ahead of the local TXID waits for it, is
//! released when the position moves (pos file or LiteFS events), and falls back to the
//! primary or 504 after `read_wait_timeout`. Signed tokens resist forgery. A token names a
//! position in one history: a replica that was at its TXID with another checksum, or that
//! never observed its position, sends the read to the primary; legacy tokens compare TXIDs.

use std::time::Duration;

use litefs_proxy::{OnReadTimeout, Position, Primary, ProxyConfig, TxId, TxidSource};
use litefs_proxy_tests::{
    client::{get, minted, post},
    eventually,
    node::{pair, test_config, ProxyNode},
};

/// Issues a read whose token is `target` on `b` (at `target - 2`), waits until the proxy
/// reports it waiting, checks the app has not seen it, then moves the position to
/// `target` and expects the read answered by `b`'s app.
async fn stalls_until_position_moves(
    b: &ProxyNode,
    target: u64,
    name: &'static str,
    value: String,
) {
    b.sim.set_txid(target - 2);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == target - 2)
        .await
    );
    let before = b.app.count();
    let pending = b.waiting_read_with(name, value).await;
    assert_eq!(b.app.count(), before, "not sent to the app while behind");
    b.sim.set_txid(target);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-app"),
        Some("node-b"),
        "served locally once caught up"
    );
    assert_eq!(b.app.count(), before + 1);
}

#[tokio::test]
async fn read_with_token_ahead_waits_for_position_cookie_legacy_cookie_and_header() {
    let (_a, b) = pair(test_config()).await;
    stalls_until_position_moves(&b, 7, "cookie", "litefs-txid=0000000000000007".into()).await;
    stalls_until_position_moves(&b, 10, "cookie", "__txid=000000000000000a".into()).await;
    stalls_until_position_moves(&b, 13, "litefs-txid", "000000000000000d".into()).await;
}

#[tokio::test]
async fn read_with_token_at_or_below_position_or_without_token_goes_at_once() {
    let (a, b) = pair(test_config()).await;
    b.sim.set_txid(9);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == 9)
        .await
    );
    for h in [
        vec![],
        vec![("cookie", "litefs-txid=0000000000000009")],
        vec![("cookie", "litefs-txid=0000000000000001")],
    ] {
        let resp = get(b.addr, "/items", &h).await.unwrap();
        assert_eq!(resp.header("x-app"), Some("node-b"));
    }
    assert_eq!(a.app.count(), 0);
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    assert!(
        !m.contains("litefs_proxy_read_waits_total{"),
        "no read waited: {m}"
    );
}

#[tokio::test]
async fn read_your_write_through_two_replicas() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), test_config()).await;
    let c = ProxyNode::start("node-c", a.as_remote(), test_config()).await;
    let resp = post(b.addr, "/items", &[], "mine").await.unwrap();
    let token = minted(&resp).expect("token minted");
    // Replicate to c only later: the read on c must wait for it.
    let pending = c
        .waiting_read_with("cookie", format!("litefs-txid={token}"))
        .await;
    c.sim.set_txid(a.sim.txid());
    assert_eq!(
        pending.await.unwrap().unwrap().header("x-app"),
        Some("node-c")
    );
}

#[tokio::test]
async fn read_timeout_falls_back_to_primary_by_default() {
    let cfg = ProxyConfig {
        read_wait_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let resp = get(
        b.addr,
        "/items",
        &[("cookie", "litefs-txid=00000000000000ff")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-app"),
        Some("node-a"),
        "never stale: the primary answered"
    );
    assert_eq!((a.app.count(), b.app.count()), (1, 0));
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    assert!(
        m.contains(r#"litefs_proxy_read_waits_total{outcome="fallback"} 1"#),
        "{m}"
    );
    assert!(m.contains("litefs_proxy_stall_wait_seconds_count 1"), "{m}");
}

#[tokio::test]
async fn read_timeout_answers_504_in_error_mode() {
    let cfg = ProxyConfig {
        read_wait_timeout: Duration::from_millis(200),
        on_read_timeout: OnReadTimeout::Error,
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let resp = get(
        b.addr,
        "/items",
        &[("cookie", "litefs-txid=00000000000000ff")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 504);
    assert_eq!((a.app.count(), b.app.count()), (0, 0));
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    assert!(
        m.contains(r#"litefs_proxy_read_waits_total{outcome="timeout"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn waiting_reads_over_the_cap_go_straight_to_the_primary() {
    let cfg = ProxyConfig {
        max_waiting_reads: 1,
        ..test_config()
    };
    let (_a, b) = pair(cfg).await;
    let first = b.waiting_read(0x2).await;
    let second = get(
        b.addr,
        "/items",
        &[("cookie", "litefs-txid=0000000000000002")],
    )
    .await
    .unwrap();
    assert_eq!(
        second.header("x-app"),
        Some("node-a"),
        "over the cap: fallback at once"
    );
    b.sim.set_txid(2);
    assert_eq!(
        first.await.unwrap().unwrap().header("x-app"),
        Some("node-b")
    );
}

#[tokio::test]
async fn primary_serves_reads_without_waiting() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let resp = get(
        a.addr,
        "/items",
        &[("cookie", "litefs-txid=00000000000000ff")],
    )
    .await
    .unwrap();
    assert_eq!(resp.header("x-app"), Some("node-a"));
    assert_eq!(a.proxy.waiting_reads(), 0);
}

/// A read with token `target` on `b` waits, and the next commit releases it in time.
async fn released_by_next_commit(b: &ProxyNode, target: u64, how: &str) {
    let pending = b.waiting_read(target).await;
    b.sim.commit();
    let resp = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect(how);
    assert_eq!(resp.unwrap().unwrap().header("x-app"), Some("node-b"));
}

#[tokio::test]
async fn events_source_releases_reads_and_falls_back_to_pos_file_when_api_is_down() {
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api_listener.local_addr().unwrap();
    let cfg = ProxyConfig {
        txid_source: TxidSource::Events,
        litefs_api: format!("http://{api_addr}"),
        // Slow pos-file polling would hide whether events did the release.
        pos_poll_interval: Duration::from_secs(20),
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), cfg).await;
    let (stop_api, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(litefs_sim::serve_api(b.sim.clone(), api_listener, async {
        let _ = stopped.await;
    }));
    // Wait for the stream to be connected: a commit shows up in the proxy's TXID.
    b.sim.set_txid(1);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(3), || proxy.local_txid().current().0
            == 1)
        .await
    );

    released_by_next_commit(&b, 2, "released by the tx event").await;

    // API down: the watcher polls the pos file while it reconnects.
    stop_api.send(()).unwrap();
    api.await.unwrap();
    released_by_next_commit(&b, 3, "released by the pos file").await;
}

#[tokio::test]
async fn signed_tokens_are_minted_and_forged_ones_ignored() {
    let cfg = ProxyConfig {
        token_secret: Some("a-long-shared-secret-value".into()),
        read_wait_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let resp = post(b.addr, "/items", &[], "x").await.unwrap();
    let token = minted(&resp).expect("signed token");
    let (txid, checksum) = a.sim.pos();
    assert_eq!(txid, 1);
    assert!(
        token.starts_with(&format!("0000000000000001-{checksum:016x}.")),
        "{token}"
    );
    assert_eq!(token.len(), 33 + 1 + 32);

    // A forged pin and an unsigned value are ignored: served locally at once, not stalled.
    for forged in [
        "ffffffffffffffff",
        "ffffffffffffffff.00000000000000000000000000000000",
    ] {
        let cookie = format!("litefs-txid={forged}");
        let resp = get(b.addr, "/items", &[("cookie", cookie.as_str())])
            .await
            .unwrap();
        assert_eq!(resp.header("x-app"), Some("node-b"));
    }
    assert_eq!(a.app.count(), 1, "only the write reached the primary");
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    assert!(m.contains("litefs_proxy_invalid_tokens_total 2"), "{m}");

    // The genuine token makes the replica wait for replication.
    let pending = b
        .waiting_read_with("cookie", format!("litefs-txid={token}"))
        .await;
    b.sim.set_txid(1);
    assert_eq!(
        pending.await.unwrap().unwrap().header("x-app"),
        Some("node-b")
    );
}

/// Waits until `node`'s proxy has observed the position `(txid, checksum)`.
async fn observed(node: &ProxyNode, txid: u64, checksum: u64) {
    let proxy = node.proxy.clone();
    let want = Position {
        txid: TxId(txid),
        post_apply_checksum: checksum,
    };
    assert!(
        eventually(Duration::from_secs(3), || proxy.local_txid().position()
            == want)
        .await,
        "{} never observed {want:?}",
        node.name
    );
}

/// The value of one `litefs_proxy_token_checks_total` series.
async fn token_checks(node: &ProxyNode, result: &str) -> u64 {
    let m = get(node.addr, "/litefs/metrics", &[]).await.unwrap().text();
    let prefix = format!("litefs_proxy_token_checks_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {m}"))
}

/// A replica at the token's TXID in another history (another checksum) does not serve the
/// read: the primary does, whether the replica was there already or reached it while the
/// read waited. A legacy token at that TXID is still compared by TXID alone.
#[tokio::test]
async fn a_replica_in_another_history_sends_the_read_to_the_primary() {
    let (a, b) = pair(test_config()).await;
    let resp = post(b.addr, "/items", &[], "mine").await.unwrap();
    let token = minted(&resp).expect("token minted");
    let (txid, checksum) = a.sim.pos();
    assert_eq!(token, format!("{txid:016x}-{checksum:016x}"), "v2 token");
    // b reaches the same TXID with another write (the top bit stays set, as in LiteFS).
    let other = checksum ^ 0x5a5a;
    b.sim.set_pos(txid, other);
    observed(&b, txid, other).await;

    let cookie = format!("litefs-txid={token}");
    let before = (a.app.count(), b.app.count());
    let resp = get(b.addr, "/items", &[("cookie", cookie.as_str())])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-app"),
        Some("node-a"),
        "not served from another history"
    );
    assert_eq!((a.app.count(), b.app.count()), (before.0 + 1, before.1));
    assert_eq!(token_checks(&b, "diverged").await, 1);

    // The same TXID as a legacy token: TXID comparison only, as before.
    let legacy = format!("litefs-txid={txid:016x}");
    let resp = get(b.addr, "/items", &[("cookie", legacy.as_str())])
        .await
        .unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-b"),
        "legacy: served locally"
    );

    // A token ahead: the read waits, and the position it is released by is another history.
    let resp = post(b.addr, "/items", &[], "next").await.unwrap();
    let token = minted(&resp).expect("token minted");
    let (next, next_checksum) = a.sim.pos();
    assert_eq!(next, txid + 1);
    let pending = b
        .waiting_read_with("cookie", format!("litefs-txid={token}"))
        .await;
    b.sim.set_pos(next, next_checksum ^ 0x5a5a);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-a"),
        "re-checked after the wait"
    );
    assert_eq!(token_checks(&b, "diverged").await, 2);
    assert_eq!(token_checks(&b, "unverified").await, 0);
}

/// A v2 token whose position the replica has is served locally, at once or after waiting;
/// a legacy 16-hex token keeps working as before.
#[tokio::test]
async fn a_replica_in_the_tokens_history_serves_the_read() {
    let (a, b) = pair(test_config()).await;
    let resp = post(b.addr, "/items", &[], "mine").await.unwrap();
    let token = minted(&resp).expect("token minted");
    let (txid, checksum) = a.sim.pos();
    // Replicated: the primary's position, checksum included.
    b.sim.set_txid(txid);
    observed(&b, txid, checksum).await;
    let cookie = format!("litefs-txid={token}");
    let resp = get(b.addr, "/items", &[("cookie", cookie.as_str())])
        .await
        .unwrap();
    assert_eq!(resp.header("x-app"), Some("node-b"));

    let resp = post(b.addr, "/items", &[], "next").await.unwrap();
    let token = minted(&resp).expect("token minted");
    let pending = b
        .waiting_read_with("cookie", format!("litefs-txid={token}"))
        .await;
    b.sim.set_txid(a.sim.txid());
    assert_eq!(
        pending.await.unwrap().unwrap().header("x-app"),
        Some("node-b")
    );

    let legacy = format!("litefs-txid={:016x}", a.sim.txid());
    let resp = get(b.addr, "/items", &[("cookie", legacy.as_str())])
        .await
        .unwrap();
    assert_eq!(resp.header("x-app"), Some("node-b"));
    assert_eq!(a.app.count(), 2, "only the writes reached the primary");
    assert_eq!(token_checks(&b, "diverged").await, 0);
    assert_eq!(token_checks(&b, "unverified").await, 0);
}

/// The pos-file poller sees only some positions: a token for one it skipped cannot be
/// verified and goes to the primary. LiteFS's `/events` shows every position, so the same
/// token is served locally there.
#[tokio::test]
async fn a_position_never_observed_goes_to_the_primary_and_events_observe_every_one() {
    let cfg = test_config();
    let skipped = format!(
        "litefs-txid=0000000000000002-{:016x}",
        litefs_sim::fake_checksum(&cfg.db, 2)
    );
    let (a, b) = pair(cfg.clone()).await;
    b.sim.set_txid(3);
    observed(&b, 3, litefs_sim::fake_checksum(&cfg.db, 3)).await;
    let resp = get(b.addr, "/items", &[("cookie", skipped.as_str())])
        .await
        .unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-a"),
        "unverifiable: the primary"
    );
    assert_eq!(token_checks(&b, "unverified").await, 1);

    // With events: the same jump, one event per position.
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let events = ProxyConfig {
        txid_source: TxidSource::Events,
        litefs_api: format!("http://{}", api_listener.local_addr().unwrap()),
        pos_poll_interval: Duration::from_secs(20),
        ..cfg
    };
    let c = ProxyNode::start("node-c", a.as_remote(), events).await;
    let (_stop_api, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(litefs_sim::serve_api(c.sim.clone(), api_listener, async {
        let _ = stopped.await;
    }));
    let sim = c.sim.clone();
    assert!(
        eventually(Duration::from_secs(3), || sim.event_subscribers() > 0).await,
        "the proxy follows /events"
    );
    c.sim.set_txid(1);
    c.sim.set_txid(2);
    c.sim.set_txid(3);
    observed(&c, 3, litefs_sim::fake_checksum(c.sim.db(), 3)).await;
    let resp = get(c.addr, "/items", &[("cookie", skipped.as_str())])
        .await
        .unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-c"),
        "events saw position 2"
    );
    assert_eq!(token_checks(&c, "unverified").await, 0);
    assert_eq!(
        a.app.count(),
        1,
        "only b's unverifiable read reached the primary"
    );
}
