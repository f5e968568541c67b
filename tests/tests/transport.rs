//! Rules 4, 7, 8: passthrough, header rewriting, streaming both ways, WebSocket
//! upgrades, and the app being down or booting.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use litefs_proxy::{Primary, Proxy, ProxyConfig};
use litefs_proxy_tests::{
    app::TestApp,
    client::{self, get, minted, post},
    eventually,
    node::{pair, test_config, ProxyNode},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn passthrough_goes_to_the_local_app_with_no_token_logic() {
    let cfg = ProxyConfig {
        passthrough: vec!["/static/*".into(), "/health".into()],
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let resp = post(b.addr, "/static/upload", &[], "x").await.unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-b"),
        "a passthrough write stays local"
    );
    let resp = get(
        b.addr,
        "/health",
        &[("cookie", "litefs-txid=00000000000000ff")],
    )
    .await
    .unwrap();
    assert_eq!(
        resp.header("x-app"),
        Some("node-b"),
        "a passthrough read never stalls"
    );
    assert_eq!(b.proxy.waiting_reads(), 0);
    let resp = post(a.addr, "/static/x", &[], "x").await.unwrap();
    assert_eq!(minted(&resp), None, "no token minted for passthrough");
    // Anchored: /static without the slash and /x/health are not passthrough.
    post(b.addr, "/static", &[], "x").await.unwrap();
    post(b.addr, "/x/health", &[], "x").await.unwrap();
    assert_eq!((a.app.count(), b.app.count()), (3, 2));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let (a, b) = pair(test_config()).await;
    let resp = post(
        b.addr,
        "/hop",
        &[
            ("connection", "keep-alive, x-conn-secret"),
            ("x-conn-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-custom", "kept"),
        ],
        "x",
    )
    .await
    .unwrap();
    let seen = &a.app.seen()[0];
    for h in ["x-conn-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} reached the app: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["host"], "example.test");
    assert_eq!(
        seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1, 127.0.0.1",
        "client, then each proxy's peer"
    );
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "the load balancer's value is kept"
    );
    assert_eq!(seen.headers["x-forwarded-host"], "example.test");
    // And on the way back.
    for h in ["x-conn-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !resp.headers.contains_key(h),
            "{h} reached the client: {:?}",
            resp.headers
        );
    }
    // A plain request gets the defaults.
    get(b.addr, "/plain", &[]).await.unwrap();
    let seen = b.app.seen().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn uploads_stream_through_the_replica_without_buffering() {
    let (a, b) = pair(test_config()).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed();
    let req = client::request("POST", "/upload").body(body).unwrap();
    let pending = tokio::spawn(client::send(b.addr, req));
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    let mut progress = a.app.state.upload_progress.subscribe();
    tokio::time::timeout(
        Duration::from_secs(5),
        progress.wait_for(|n| *n >= 64 * 1024),
    )
    .await
    .expect("the first chunk reached the primary's app before the upload finished")
    .unwrap();
    for _ in 0..15 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    let expected_sum = (0..16 * 64 * 1024).fold(0u64, |s, _| s.wrapping_mul(31).wrapping_add(7));
    assert_eq!(resp.text(), format!("{} {expected_sum}", 16 * 64 * 1024));
}

/// Reads `/stream` through `via`: the first piece must arrive before `app` releases the second.
async fn streams_in_pieces(via: std::net::SocketAddr, app: &TestApp) {
    let req = client::request("GET", "/stream")
        .body(client::empty())
        .unwrap();
    let resp = client::send_streaming(via, req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first piece before the end");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: first\n\n"
    );
    app.state.release.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "data: second\n\n");
}

#[tokio::test]
async fn chunked_responses_stream_in_pieces_locally_and_from_the_primary() {
    let (a, b) = pair(test_config()).await;
    // A read on the replica: its own app.
    streams_in_pieces(b.addr, &b.app).await;
    // Through two proxies: a replica whose /stream is always forwarded.
    let cfg = ProxyConfig {
        always_forward: vec!["/stream".into()],
        ..test_config()
    };
    let c = ProxyNode::start("node-c", a.as_remote(), cfg).await;
    streams_in_pieces(c.addr, &a.app).await;
    assert_eq!(c.app.count(), 0);
}

/// Reads from `s` until `buf` ends with `end` (5 s at most).
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, end: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !buf.ends_with(end) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {:?} in {:?}",
                    String::from_utf8_lossy(end),
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parking (an idle keep-alive connection drops hyper's buffers): a stream that stays
/// quiet for longer than `PARK_AFTER` arrives whole, keep-alive; the connection parks
/// after it and serves the next request on the same socket.
#[tokio::test]
async fn a_quiet_stream_is_not_cut_and_the_idle_connection_parks_and_serves_again() {
    let (_a, b) = pair(test_config()).await;
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"data: first\n\n\r\n").await;
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // The stimulus: the stream stays quiet for longer than PARK_AFTER.
    let quiet_from = tokio::time::Instant::now();
    let quiet = litefs_proxy::PARK_AFTER + Duration::from_millis(500);
    assert!(eventually(quiet * 2, || quiet_from.elapsed() > quiet).await);
    assert_eq!(b.proxy.client_connections(), (1, 0), "parked mid-response");
    b.app.state.release.notify_one();
    read_until(&mut s, &mut buf, b"data: second\n\n\r\n0\r\n\r\n").await;
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(5), || proxy.client_connections()
            == (0, 1))
        .await,
        "never parked: {:?}",
        proxy.client_connections()
    );
    buf.clear();
    s.write_all(b"GET /litefs/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut buf, b"\r\n\r\nOK\n").await;
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    assert_eq!(b.proxy.client_connections(), (1, 0));
    assert!(b.proxy.connection_parks() >= 1);
}

#[tokio::test]
async fn websocket_upgrade_works_locally_and_through_the_primary() {
    let cfg = ProxyConfig {
        always_forward: vec!["/ws".into()],
        ..test_config()
    };
    let (a, b) = pair(cfg.clone()).await;
    // always_forward: B -> A's proxy -> A's app.
    assert_eq!(upgrade_echo(b.addr).await, "HELLO THROUGH");
    assert_eq!((a.app.count(), b.app.count()), (1, 0));
    // Without always_forward the upgrade is a read served by the local app.
    let c = ProxyNode::start("node-c", a.as_remote(), test_config()).await;
    assert_eq!(upgrade_echo(c.addr).await, "HELLO THROUGH");
    assert_eq!(c.app.count(), 1);
}

async fn upgrade_echo(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed mid-head: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"hello through").await.unwrap();
    let mut buf = vec![0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn app_down_gives_502_with_a_short_body() {
    let n = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    n.app.stop();
    // Let the aborted accept loop release its socket.
    let app_addr = n.app.addr;
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            app_addr
        )
        .is_err())
        .await
    );
    let start = std::time::Instant::now();
    let resp = get(n.addr, "/items", &[]).await.unwrap();
    assert_eq!(resp.status, 502);
    assert!(
        resp.text().starts_with("litefs-proxy: app unreachable"),
        "{}",
        resp.text()
    );
    assert!(resp.body.len() < 300);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "connect-refused was retried first"
    );
}

#[tokio::test]
async fn connect_refused_is_retried_while_the_app_boots() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProxyConfig {
        target: app_addr.to_string(),
        mount: dir.path().to_path_buf(),
        target_connect_retry: Duration::from_secs(5),
        ..test_config()
    };
    let (_tx, rx) = tokio::sync::watch::channel(Primary::Local);
    let proxy = Proxy::new(cfg, rx).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(litefs_proxy::serve(listener, proxy, std::future::pending()));
    let pending = tokio::spawn(get(addr, "/items", &[]));
    // The app comes up a little later, on the configured port.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let app = TestApp::start_on(
        tokio::net::TcpListener::bind(app_addr).await.unwrap(),
        "late-app",
        None,
    );
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-app"), Some("late-app"));
    assert_eq!(app.count(), 1);
}
