//! Issue 11, the request path: hostile bytes sent over a raw socket, and what the client
//! and the app saw. One test per row of the issue's table.

use std::time::Duration;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use litefs_proxy::{
    trust::{Cidrs, PeerAuth},
    Primary, Proxy, ProxyConfig,
};
use litefs_proxy_tests::{
    client::{get, post},
    cluster::{Cluster, Options},
    eventually,
    node::{pair, pair_with, test_config, ProxyNode},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

/// Sends `bytes` on a new connection and reads until the proxy closes it (every request
/// here asks for `Connection: close`, or is one the proxy ends the connection after).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything.
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s, Duration::from_secs(10)).await
}

/// [`exchange`] from the local address `from` (any of 127.0.0.0/8 is this machine).
async fn exchange_from(from: [u8; 4], addr: SocketAddr, bytes: &[u8]) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind the client's address");
    let mut s = socket.connect(addr).await.expect("connect");
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

const CLUSTER_SECRET: &str = "a-cluster-secret-for-tests";
/// A client on this machine that is not 127.0.0.1.
const OUTSIDER: [u8; 4] = [127, 0, 0, 2];
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn signed_peers() -> PeerAuth {
    PeerAuth::new(Some(CLUSTER_SECRET), Cidrs::default())
}

/// A write with `litefs-proxy-hop: <hop>`.
fn write_with_hop(hop: &str) -> String {
    format!(
        "POST /items HTTP/1.1\r\nHost: x\r\nlitefs-proxy-hop: {hop}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nw"
    )
}

/// No app of `nodes` ever saw a hop header.
fn no_app_saw_a_hop_header(nodes: &[&ProxyNode]) {
    for n in nodes {
        for seen in n.app.seen() {
            assert!(
                !seen.headers.contains_key("litefs-proxy-hop"),
                "{}'s app saw {} {} with {:?}",
                n.name,
                seen.method,
                seen.path,
                seen.headers
            );
        }
    }
}

#[tokio::test]
async fn a_clients_hop_header_gets_normal_treatment_and_never_reaches_an_app() {
    let (a, b) = pair_with(test_config(), signed_peers()).await;
    // Believed, `2` on a replica would hold the write (a request that made two hops is never
    // sent on) and then 503; `3` or garbage would be a loop (508).
    let forged = [
        "2",
        "1",
        "3",
        "garbage",
        "2.1700000000000.00000000000000000000000000000000",
    ];
    for hop in forged {
        let resp = exchange(b.addr, write_with_hop(hop).as_bytes()).await;
        assert_eq!(status(&resp), "200", "hop {hop}: {resp}");
        assert!(head(&resp).contains("x-app: node-a"), "hop {hop}: {resp}");
    }
    let resp = exchange(a.addr, write_with_hop("3").as_bytes()).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert_eq!(a.app.count(), forged.len() + 1);

    // Believed, `1` on a read would skip its wait and go to the primary.
    b.sim.set_txid(3);
    let proxy = b.proxy.clone();
    assert!(
        eventually(Duration::from_secs(2), || proxy.local_txid().current().0
            == 3)
        .await
    );
    let addr = b.addr;
    let read = tokio::spawn(async move {
        exchange(
            addr,
            b"GET /items HTTP/1.1\r\nHost: x\r\nCookie: litefs-txid=0000000000000005\r\n\
              litefs-proxy-hop: 1\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(2), || proxy.waiting_reads() == 1).await,
        "the read waits like any client's"
    );
    b.sim.set_txid(5);
    let resp = read.await.unwrap();
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(head(&resp).contains("x-app: node-b"), "{resp}");

    no_app_saw_a_hop_header(&[&a, &b]);
    let m = metrics(&b).await;
    assert!(
        m.contains(&format!(
            "litefs_proxy_untrusted_hop_headers_total {}",
            forged.len() + 1
        )),
        "{m}"
    );
    // b's own (signed) forwards were believed by a; only the direct one was not.
    assert!(
        metrics(&a)
            .await
            .contains("litefs_proxy_untrusted_hop_headers_total 1"),
        "{}",
        metrics(&a).await
    );
}

/// Signed forwards between proxies are believed: the hop limit still ends a loop (each
/// node thinks the other is primary), and a node that knows better sends a forward on once.
#[tokio::test]
async fn signed_forwards_keep_their_hop_count() {
    let cfg = ProxyConfig {
        primary_redirect_timeout: Duration::from_millis(400),
        ..test_config()
    };
    let bind = || TcpListener::bind("127.0.0.1:0");
    let start = |name: &'static str, primary: Primary, cfg: ProxyConfig| async move {
        ProxyNode::start_with(bind().await.unwrap(), name, primary, cfg, signed_peers()).await
    };
    let a = start("node-a", Primary::Unknown, cfg.clone()).await;
    let b = start("node-b", a.as_remote(), cfg.clone()).await;
    a.primary.send_replace(b.as_remote());
    let resp = post(b.addr, "/items", &[], "loop").await.unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!((a.app.count(), b.app.count()), (0, 0));
    let m = metrics(&b).await;
    assert!(
        m.contains(r#"litefs_proxy_requests_total{class="write",outcome="no_primary"} 1"#),
        "b held the write that came back after two hops:\n{m}"
    );

    let c = start("node-c", Primary::Local, cfg.clone()).await;
    a.primary.send_replace(c.as_remote());
    let d = start("node-d", a.as_remote(), cfg).await;
    let resp = post(d.addr, "/items", &[], "stale view").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some("node-c"));
    no_app_saw_a_hop_header(&[&a, &b, &c, &d]);
    for n in [&a, &c] {
        assert!(
            metrics(n)
                .await
                .contains("litefs_proxy_untrusted_hop_headers_total 0"),
            "{}",
            n.name
        );
    }
}

#[tokio::test]
async fn without_a_secret_hop_headers_are_believed_from_peer_addresses_only() {
    let peers = PeerAuth::new(None, Cidrs::default().with_addrs([LOCALHOST]));
    let (a, b) = pair_with(test_config(), peers).await;
    let resp = exchange_from(OUTSIDER, b.addr, write_with_hop("2").as_bytes()).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(head(&resp).contains("x-app: node-a"), "{resp}");
    // From a peer's address the count is believed: three hops is a loop.
    let resp = exchange(a.addr, write_with_hop("3").as_bytes()).await;
    assert_eq!(status(&resp), "508", "{resp}");
    assert_eq!(a.app.count(), 1);
    no_app_saw_a_hop_header(&[&a, &b]);
}

/// The binary wires `election.cluster_secret` into the proxy: a real forward between two
/// processes is signed and served, and a loopback client's hop header (which an unsigned,
/// loopback-trusting proxy would believe) is not.
#[tokio::test]
async fn the_binary_signs_forwards_with_the_cluster_secret() {
    let c = Cluster::start(Options {
        proxy_extra: "primary_redirect_timeout = \"1s\"\n".into(),
        election_extra: format!("cluster_secret = \"{CLUSTER_SECRET}\"\n"),
        ..Options::default()
    })
    .await;
    let leader = c
        .wait_leader(&[0, 1, 2], Duration::from_secs(20))
        .await
        .expect("a leader");
    let replica = (leader + 1) % 3;
    let resp = post(c.nodes[replica].proxy, "/items", &[], "x")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some(c.nodes[leader].id.as_str()));
    let resp = exchange(c.nodes[replica].proxy, write_with_hop("2").as_bytes()).await;
    assert_eq!(status(&resp), "200", "{resp}");
    assert!(
        head(&resp).contains(&format!("x-app: {}", c.nodes[leader].id)),
        "{resp}"
    );
    for n in &c.nodes {
        for seen in n.app.seen() {
            assert!(
                !seen.headers.contains_key("litefs-proxy-hop"),
                "{:?}",
                seen.headers
            );
        }
    }
    assert_eq!(c.nodes[leader].app.count(), 2);
}

/// The request with every client-description header a client might forge.
const FORGED_FORWARDED: &[u8] = b"GET /items HTTP/1.1\r\nHost: shop.test\r\n\
    X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.test\r\n\
    Forwarded: for=203.0.113.9;proto=https\r\nX-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn x_forwarded_headers_are_believed_only_from_trusted_proxies() {
    let cfg = ProxyConfig {
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg).await;
    // Not a trusted proxy: replaced with what the proxy saw.
    let resp = exchange_from(OUTSIDER, a.addr, FORGED_FORWARDED).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = a.app.seen().pop().unwrap();
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.2", "{h:?}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h:?}");
    assert_eq!(h["x-forwarded-host"], "shop.test", "{h:?}");
    assert!(
        !h.contains_key("forwarded") && !h.contains_key("x-real-ip"),
        "{h:?}"
    );
    // A trusted proxy's are kept, the client appended.
    let resp = exchange(a.addr, FORGED_FORWARDED).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = a.app.seen().pop().unwrap();
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{h:?}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h:?}");
    assert_eq!(h["x-forwarded-host"], "admin.test", "{h:?}");
    assert_eq!(h["x-real-ip"], "203.0.113.9", "{h:?}");
}

#[tokio::test]
async fn a_peer_proxys_forwarded_headers_are_kept_but_not_what_its_client_forged() {
    // No trusted proxy at all: only the peer's forward is believed.
    let cfg = ProxyConfig {
        trusted_proxies: vec![],
        ..test_config()
    };
    let (a, b) = pair_with(cfg, signed_peers()).await;
    let write = b"POST /items HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.test\r\nContent-Length: 1\r\n\
        Connection: close\r\n\r\nw";
    let resp = exchange(b.addr, write).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = a.app.seen().pop().unwrap();
    let h = &seen.headers;
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1, 127.0.0.1",
        "the client as b saw it, then b as a saw it: {h:?}"
    );
    assert_eq!(h["x-forwarded-proto"], "http", "{h:?}");
    assert_eq!(h["x-forwarded-host"], "shop.test", "{h:?}");
}

#[tokio::test]
async fn status_and_metrics_can_be_limited_to_admin_allow_health_stays_open() {
    let get_from = |from: [u8; 4], addr: SocketAddr, path: &'static str| async move {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        exchange_from(from, addr, req.as_bytes()).await
    };
    // Default: everyone, as before.
    let open = ProxyNode::start("node-o", Primary::Local, test_config()).await;
    for path in ["/litefs/status", "/litefs/metrics", "/litefs/health"] {
        let resp = get_from(OUTSIDER, open.addr, path).await;
        assert_eq!(status(&resp), "200", "{path}: {resp}");
    }
    let cfg = ProxyConfig {
        admin_allow: vec!["127.0.0.1/32".into()],
        ..test_config()
    };
    let a = ProxyNode::start("node-a", Primary::Local, cfg).await;
    for path in ["/litefs/status", "/litefs/metrics"] {
        let resp = get_from(OUTSIDER, a.addr, path).await;
        assert_eq!(status(&resp), "403", "{path}: {resp}");
        assert!(!resp.contains("litefs_proxy_requests_total"), "{resp}");
        assert!(!resp.contains("\"node\""), "{resp}");
        let resp = get_from([127, 0, 0, 1], a.addr, path).await;
        assert_eq!(status(&resp), "200", "{path}: {resp}");
    }
    let resp = get_from(OUTSIDER, a.addr, "/litefs/health").await;
    assert_eq!(status(&resp), "200", "{resp}");
    // Still 405 for other methods, whoever asks; and no app saw any of it.
    let resp = exchange_from(
        OUTSIDER,
        a.addr,
        b"DELETE /litefs/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "405", "{resp}");
    assert_eq!((open.app.count(), a.app.count()), (0, 0));
    assert!(metrics(&a)
        .await
        .contains(r#"litefs_proxy_requests_total{class="rejected",outcome="forbidden"} 2"#));
}
