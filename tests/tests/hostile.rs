//! Issue 11, the request path: hostile bytes sent over a raw socket, and what the client
//! and the app saw. One test per row of the issue's table.

use std::time::Duration;

use litefs_proxy::{Primary, Proxy, ProxyConfig};
use litefs_proxy_tests::{
    client::get,
    eventually,
    node::{pair, test_config, ProxyNode},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Sends `bytes` on a new connection and reads until the proxy closes it (every request
/// here asks for `Connection: close`, or is one the proxy ends the connection after).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything.
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, Duration::from_secs(10)).await
}

async fn read_to_close(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the proxy answered and closed the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn status(resp: &str) -> &str {
    resp.get(9..12).unwrap_or(resp)
}

/// The lower-cased head of a response.
fn head(resp: &str) -> String {
    resp.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// `/litefs/metrics` of a node.
async fn metrics(n: &ProxyNode) -> String {
    get(n.addr, "/litefs/metrics", &[]).await.unwrap().text()
}

#[tokio::test]
async fn connect_is_405_and_reaches_no_app() {
    let (a, b) = pair(test_config()).await;
    for node in [&b, &a] {
        let resp = exchange(
            node.addr,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        )
        .await;
        assert_eq!(status(&resp), "405", "{resp}");
    }
    assert_eq!((a.app.count(), b.app.count()), (0, 0));
    assert!(metrics(&b).await.contains(
        r#"litefs_proxy_requests_total{class="rejected",outcome="method_not_allowed"} 1"#
    ));
}

#[tokio::test]
async fn two_host_headers_or_none_in_http_1_1_is_400() {
    let (a, b) = pair(test_config()).await;
    for req in [
        &b"POST /items HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"[..],
        b"GET /items HTTP/1.1\r\nHost: a.test\r\nhost: b.test\r\nConnection: close\r\n\r\n",
        b"POST /items HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        b"GET /items HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let resp = exchange(b.addr, req).await;
        assert_eq!(status(&resp), "400", "{}: {resp}", String::from_utf8_lossy(req));
    }
    assert_eq!((a.app.count(), b.app.count()), (0, 0), "no app saw them");
    // HTTP/1.0 has no Host requirement; one Host is fine.
    let resp = exchange(b.addr, b"GET /items HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    let resp = exchange(
        b.addr,
        b"GET /items HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert_eq!(b.app.seen()[1].headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn own_endpoints_answer_only_get_and_head() {
    let (a, b) = pair(test_config()).await;
    for (method, path) in [
        ("POST", "/litefs/status"),
        ("DELETE", "/litefs/metrics"),
        ("PUT", "/litefs/health"),
        ("OPTIONS", "/litefs/status"),
    ] {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let resp = exchange(b.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), "405", "{method} {path}: {resp}");
        assert!(
            head(&resp).contains("\r\nallow: get, head"),
            "{method} {path}: {resp}"
        );
    }
    for (method, path) in [("GET", "/litefs/status"), ("HEAD", "/litefs/metrics")] {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = exchange(b.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), "200", "{method} {path}: {resp}");
    }
    assert_eq!((a.app.count(), b.app.count()), (0, 0));
}

/// An app that answers every request with `Content-Length: 50` and a chunked 3-byte body.
async fn lying_app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\
                          Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn app_content_length_beside_chunked_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ProxyConfig {
        target: lying_app().await.to_string(),
        mount: dir.path().to_path_buf(),
        ..test_config()
    };
    let (_tx, rx) = tokio::sync::watch::channel(Primary::Local);
    let proxy = Proxy::new(cfg, rx).unwrap();
    tokio::spawn(litefs_proxy::serve(
        listener,
        proxy,
        std::future::pending::<()>(),
    ));
    let resp = exchange(
        addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "200", "{resp}");
    let h = head(&resp);
    assert!(!h.contains("content-length: 50"), "{resp}");
    assert!(h.contains("transfer-encoding: chunked"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{resp:?}");
}

#[tokio::test]
async fn client_content_length_beside_chunked_is_dropped() {
    let (a, b) = pair(test_config()).await;
    let resp = exchange(
        b.addr,
        b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    // The chunked framing wins; the app sees the decoded body and no length of 50.
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = &a.app.seen()[0];
    assert_eq!(&seen.body[..], b"abc");
    assert_ne!(
        seen.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"50"[..]),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn malformed_chunked_body_is_400_and_no_upstream_is_blamed() {
    let (a, b) = pair(test_config()).await;
    for node in [&b, &a] {
        let resp = exchange(
            node.addr,
            b"POST /w HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nmore\r\n",
        )
        .await;
        assert_eq!(status(&resp), "400", "{resp}");
        assert!(resp.contains("bad request body"), "{resp}");
    }
    for node in [&b, &a] {
        let m = metrics(node).await;
        assert!(
            !m.contains("primary_error") && !m.contains("app_error"),
            "{}: {m}",
            node.name
        );
    }
    let m = metrics(&b).await;
    assert!(
        m.contains(r#"litefs_proxy_requests_total{class="write",outcome="client_body_error"} 1"#),
        "{m}"
    );
    // The primary's own direct one is the client's fault too.
    let m = metrics(&a).await;
    assert!(m.contains(r#"outcome="client_body_error"} "#), "{m}");
}

#[tokio::test]
async fn passthrough_matches_the_normalized_path() {
    let cfg = ProxyConfig {
        passthrough: vec!["/static/*".into()],
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let sneaky = [
        "/static/../api/items",
        "/static/%2e%2e/api/items",
        "/static/%2E%2e/api/items",
        "/static/..%2fapi/items",
        "/static/..%2Fapi/items",
        "/static/..;/api/items",
        "/static/.%2e/api/items",
        "/static/..\\api/items",
    ];
    for path in sneaky {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nw"
        );
        let resp = exchange(b.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), "200", "{path}: {resp}");
        assert!(
            head(&resp).contains("x-app: node-a"),
            "{path} is a write, for the primary: {resp}"
        );
    }
    assert_eq!(b.app.count(), 0, "no write reached the replica's app");
    let seen: Vec<String> = a.app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        seen.len(),
        sneaky.len(),
        "the paths are sent on as they came"
    );
    // Paths that normalize to themselves, or to another passthrough path, stay passthrough.
    for path in [
        "/static/site.css",
        "/static/a/./b.css",
        "/static/%7euser.css",
    ] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nw"
        );
        let resp = exchange(b.addr, req.as_bytes()).await;
        assert!(head(&resp).contains("x-app: node-b"), "{path}: {resp}");
    }
    // A path that only becomes passthrough once normalized is a write too.
    let resp = exchange(
        b.addr,
        b"POST /api/../static/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nw",
    )
    .await;
    assert!(head(&resp).contains("x-app: node-a"), "{resp}");
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut req = b"GET /items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..n {
        req.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert!(req.len() < 2048, "a small head: {}", req.len());
    req
}

#[tokio::test]
async fn header_count_limit_is_431_and_configurable() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let resp = exchange(a.addr, &many_headers(150)).await;
    assert_eq!(status(&resp), "431", "{resp}");
    let resp = exchange(a.addr, &many_headers(90)).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert_eq!(a.app.count(), 1);

    let cfg = ProxyConfig {
        max_headers: 200,
        ..test_config()
    };
    let wide = ProxyNode::start("node-w", Primary::Local, cfg).await;
    let resp = exchange(wide.addr, &many_headers(150)).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(wide.app.seen()[0].headers.len() > 150);
    let resp = exchange(wide.addr, &many_headers(205)).await;
    assert_eq!(status(&resp), "431", "{resp}");
}

/// Sends 10 bytes of a 1,000-byte upload to `node` and stalls: answered 408 within the
/// body timeout (even though the connection is "busy", so the idle timer is off), the
/// app that got the request (`app_node`) has its connection freed.
async fn stalled_upload_is_408(node: &ProxyNode, app_node: &ProxyNode) {
    app_node.app.state.upload_progress.send_replace(0);
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut progress = app_node.app.state.upload_progress.subscribe();
    tokio::time::timeout(Duration::from_secs(5), progress.wait_for(|n| *n == 10))
        .await
        .expect("the first bytes reach the app")
        .unwrap();
    assert_eq!(app_node.app.open_connections(), 1, "{}", app_node.name);
    let start = std::time::Instant::now();
    let resp = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status(&resp), "408", "{resp}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let app = app_node.app.state.clone();
    assert!(
        eventually(Duration::from_secs(2), || app
            .open
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0)
        .await,
        "the app's connection is freed"
    );
    assert_eq!(
        app_node.app.seen().last().map(|s| s.path.as_str()),
        Some("/upload")
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_408_and_frees_the_app_on_replica_and_primary() {
    let cfg = ProxyConfig {
        body_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    // Forwarded by the replica: the replica's timer ends it, the primary's app is freed.
    stalled_upload_is_408(&b, &a).await;
    // Straight to the primary.
    stalled_upload_is_408(&a, &a).await;
    for node in [&a, &b] {
        let m = metrics(node).await;
        assert!(
            !m.contains("primary_error") && !m.contains("app_error"),
            "{m}"
        );
    }
    assert!(metrics(&b)
        .await
        .contains(r#"litefs_proxy_requests_total{class="write",outcome="body_timeout"} 1"#));
    // A body that keeps moving is not cut, however long it takes in all.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // 6 bytes at 2 a second: 3 s in all, longer than the timeout, never a 2 s gap.
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    for byte in b"abcdef" {
        pace.tick().await;
        s.write_all(&[*byte]).await.unwrap();
    }
    let resp = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status(&resp), "200", "{resp}");
}

#[tokio::test]
async fn requests_past_max_in_flight_get_503() {
    let cfg = ProxyConfig {
        max_in_flight: 2,
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg).await;
    let addr = a.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/slow", &[]).await }))
        .collect();
    let app = a.app.state.clone();
    assert!(
        eventually(Duration::from_secs(2), || app.seen.lock().unwrap().len()
            == 2)
        .await
    );
    let resp = exchange(
        a.addr,
        b"GET /items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "503", "{resp}");
    assert!(head(&resp).contains("retry-after: 1"), "{resp}");
    assert_eq!(a.app.count(), 2, "the third never reached the app");
    // The proxy's own endpoints still answer.
    let m = metrics(&a).await;
    assert!(m.contains("litefs_proxy_in_flight_requests 2"), "{m}");
    assert!(
        m.contains(r#"litefs_proxy_requests_total{class="read",outcome="overloaded"} 1"#),
        "{m}"
    );
    a.app.state.release.notify_waiters();
    for r in slow {
        assert_eq!(r.await.unwrap().unwrap().status, 200);
    }
    let resp = get(a.addr, "/items", &[]).await.unwrap();
    assert_eq!(resp.status, 200);
}
