//! Rules 9 and 13 and bad input: the proxy's own endpoints, limits on heads, slow and
//! idle clients, the waiting-read cap, graceful drain, and garbage of every kind.

use std::time::{Duration, Instant};

use litefs_proxy::{Primary, ProxyConfig};
use litefs_proxy_tests::{
    client::{self, get, post},
    eventually,
    node::{test_config, ProxyNode},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("server closed the connection in time")
        .ok();
    out
}

#[tokio::test]
async fn health_status_and_metrics_endpoints() {
    let cfg = ProxyConfig {
        max_lag: Duration::from_secs(10),
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg.clone()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), cfg).await;
    let h = get(b.addr, "/litefs/health", &[]).await.unwrap();
    assert_eq!((h.status.as_u16(), h.text().as_str()), (200, "OK\n"));
    b.sim.set_lag_ms(15_000);
    let h = get(b.addr, "/litefs/health", &[]).await.unwrap();
    assert_eq!(h.status, 503, "{}", h.text());
    b.sim.set_lag_ms(20);

    b.sim.set_txid(0x1f);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == 0x1f)
        .await
    );
    let s = get(b.addr, "/litefs/status", &[]).await.unwrap();
    assert_eq!(s.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v["node"], "node-b");
    assert_eq!(v["role"], "replica");
    assert_eq!(v["primary"], "node-a");
    assert_eq!(v["primary_url"], format!("{}/", a.url()));
    assert_eq!(v["txid"], "000000000000001f");
    assert_eq!(v["lag_ms"], 20);
    assert_eq!(v["held_requests"], 0);
    assert_eq!(v["waiting_reads"], 0);
    let s: serde_json::Value =
        serde_json::from_slice(&get(a.addr, "/litefs/status", &[]).await.unwrap().body).unwrap();
    assert_eq!(s["role"], "primary");

    post(b.addr, "/w", &[], "x").await.unwrap();
    get(b.addr, "/r", &[("cookie", "litefs-txid=garbage")])
        .await
        .unwrap();
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    for line in [
        r#"litefs_proxy_requests_total{class="write",outcome="forwarded"} 1"#,
        r#"litefs_proxy_requests_total{class="read",outcome="local"} 1"#,
        "litefs_proxy_invalid_tokens_total 1",
        "litefs_proxy_local_txid 31",
        "litefs_proxy_held_requests 0",
        "litefs_proxy_waiting_reads 0",
        "litefs_proxy_is_primary 0",
        "litefs_proxy_forward_seconds_count 1",
        "# TYPE litefs_proxy_stall_wait_seconds histogram",
    ] {
        assert!(m.contains(line), "missing {line}:\n{m}");
    }
    assert!(m.ends_with("# EOF\n"));
    assert_eq!(get(b.addr, "/litefs/nope", &[]).await.unwrap().status, 404);
    assert_eq!(b.app.count(), 1, "own endpoints never reach the app");
}

#[tokio::test]
async fn endpoint_prefix_is_configurable() {
    let cfg = ProxyConfig {
        endpoint_prefix: "/_proxy".into(),
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg).await;
    assert_eq!(
        get(a.addr, "/_proxy/health", &[]).await.unwrap().text(),
        "OK\n"
    );
    let r = get(a.addr, "/litefs/health", &[]).await.unwrap();
    assert_eq!(
        r.header("x-app"),
        Some("node-a"),
        "the old prefix is the app's now"
    );
}

#[tokio::test]
async fn oversized_header_gets_431_and_the_proxy_keeps_serving() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let big = "x".repeat(64 * 1024);
    let mut s = TcpStream::connect(a.addr).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: litefs-txid={big}\r\n\r\n");
    // The server may answer and close before it has read all of it.
    let _ = s.write_all(req.as_bytes()).await;
    let out = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.app.count(), 0);
    assert_eq!(get(a.addr, "/", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn malformed_huge_and_duplicate_cookies_are_ignored_not_errors() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), test_config()).await;
    let huge = format!("litefs-txid={}", "9".repeat(20_000));
    for cookie in [
        "litefs-txid=nothex!!!!!!!!!!!",
        "litefs-txid=",
        "=;;;litefs-txid",
        huge.as_str(),
        "litefs-txid=00000000000000000000001",
        "litefs-txid=\u{1}",
    ] {
        let mut r = client::request("GET", "/items");
        r = r.header(
            "cookie",
            http::HeaderValue::from_bytes(cookie.as_bytes())
                .unwrap_or(http::HeaderValue::from_static("x")),
        );
        let resp = client::send(b.addr, r.body(client::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{cookie:.40}");
        assert_eq!(resp.header("x-app"), Some("node-b"));
    }
    // Duplicates: the highest valid one counts.
    let cookie = "litefs-txid=0000000000000001; litefs-txid=0000000000000003; litefs-txid=zz";
    let pending = b.waiting_read_with("cookie", cookie.into()).await;
    let proxy = b.proxy.clone();
    b.sim.set_txid(2);
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == 2)
        .await
    );
    assert_eq!(
        proxy.waiting_reads(),
        1,
        "still waiting: the highest valid token is 3"
    );
    b.sim.set_txid(3);
    assert_eq!(
        pending.await.unwrap().unwrap().header("x-app"),
        Some("node-b")
    );
    let m = get(b.addr, "/litefs/metrics", &[]).await.unwrap().text();
    assert!(m.contains("litefs_proxy_invalid_tokens_total 5"), "{m}");
}

#[tokio::test]
async fn a_client_sending_headers_one_byte_a_second_is_cut_off_without_hurting_others() {
    let cfg = ProxyConfig {
        header_read_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg).await;
    let mut slow = TcpStream::connect(a.addr).await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        // The slowloris pace under test: one byte a second.
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        for b in b"GET / HTTP/1.1\r\nHost: slow\r\n\r\n" {
            pace.tick().await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        slow
    });
    // Meanwhile others are served.
    assert_eq!(get(a.addr, "/", &[]).await.unwrap().status, 200);
    let mut slow = writer.await.unwrap();
    let out = read_to_close(&mut slow, Duration::from_secs(5)).await;
    assert!(
        !out.starts_with(b"HTTP/1.1 200"),
        "the slow request was never served"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "closed long before the 30 s request could finish"
    );
    assert_eq!(a.app.count(), 1);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let cfg = ProxyConfig {
        idle_timeout: Duration::from_millis(1200),
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg.clone()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), cfg).await;
    // A read the proxy stalls for longer than idle_timeout is not cut: the proxy is the
    // one waiting, not the client.
    let stalled = b.waiting_read(0x1).await;
    let waited_from = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || waited_from.elapsed()
            > Duration::from_millis(1800))
        .await
    );
    b.sim.set_txid(1);
    assert_eq!(
        stalled.await.unwrap().unwrap().status,
        200,
        "stalled past idle_timeout, still answered"
    );

    let mut s = TcpStream::connect(a.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle_from = Instant::now();
    let rest = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(rest.is_empty());
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1000),
        "not closed before the idle timeout"
    );
}

#[tokio::test]
async fn garbage_position_file_keeps_the_last_good_txid() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), test_config()).await;
    b.sim.set_txid(4);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == 4)
        .await
    );
    std::fs::write(b.sim.pos_path(), b"\x00\xffgarbage").unwrap();
    assert!(
        eventually(Duration::from_secs(2), || proxy.local_txid().bad_reads()
            > 0)
        .await
    );
    assert_eq!(proxy.local_txid().current().0, 4);
    let resp = get(
        b.addr,
        "/items",
        &[("cookie", "litefs-txid=0000000000000004")],
    )
    .await
    .unwrap();
    assert_eq!(resp.header("x-app"), Some("node-b"));
    b.sim.set_txid(5);
    assert!(
        eventually(Duration::from_secs(1), || proxy.local_txid().current().0
            == 5)
        .await
    );
}

#[tokio::test]
async fn missing_database_is_txid_zero_and_reads_wait_for_its_creation() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), test_config()).await;
    assert!(!b.sim.pos_path().exists());
    assert_eq!(b.proxy.local_txid().current().0, 0);
    assert_eq!(get(b.addr, "/items", &[]).await.unwrap().status, 200);
    let pending = b.waiting_read(0x1).await;
    b.sim.commit();
    assert_eq!(
        pending.await.unwrap().unwrap().header("x-app"),
        Some("node-b")
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let mut a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let addr = a.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    let app = a.app.state.clone();
    assert!(
        eventually(Duration::from_secs(2), || app.seen.lock().unwrap().len()
            == 1)
        .await
    );
    a.shutdown();
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await,
        "no new connections once draining"
    );
    assert!(!a.served.is_finished(), "still draining the slow request");
    a.app.state.release.notify_one();
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status, 200, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(5), &mut a.served)
        .await
        .expect("serve returned")
        .unwrap();
}

/// Requests already sent on connections the proxy had not read from yet when its shutdown
/// began (still in the listener's accept queue, or accepted and unread) are answered, with
/// `Connection: close`, rather than reset or closed unanswered: a load balancer or a peer
/// proxy cannot tell whether such a request was handled.
#[tokio::test]
async fn shutdown_answers_requests_sent_on_connections_not_yet_read() {
    let mut a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let mut socks = Vec::new();
    for _ in 0..32 {
        let mut s = TcpStream::connect(a.addr).await.expect("connect");
        s.write_all(b"GET /items HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .expect("write");
        socks.push(s);
    }
    a.shutdown();
    let mut answered = 0;
    let mut unanswered = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        let out = read_to_close(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&out);
        if text.starts_with("HTTP/1.1 200") {
            answered += 1;
        } else {
            unanswered.push((i, text.chars().take(40).collect::<String>()));
        }
    }
    assert!(
        unanswered.is_empty(),
        "{answered} answered; not: {unanswered:?}"
    );
}
