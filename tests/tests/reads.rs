//! Rules 3, 11, 12: a read carrying a token ahead of the local TXID waits for it, is
//! released when the position moves (pos file or LiteFS events), and falls back to the
//! primary or 504 after `read_wait_timeout`. Signed tokens resist forgery.

use std::time::Duration;

use litefs_proxy::{OnReadTimeout, Primary, ProxyConfig, TxidSource};
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
    assert!(token.starts_with("0000000000000001."), "{token}");
    assert_eq!(token.len(), 16 + 1 + 32);

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
