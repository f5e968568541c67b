//! Rules 1, 2, 5, 6: writes reach the primary's app exactly once, the token is minted
//! there, writes are held while no primary is reachable, and loops cannot happen.

use std::time::Duration;

use bytes::Bytes;
use litefs_proxy::{Primary, ProxyConfig};
use litefs_proxy_tests::{
    client::{self, get, minted, post},
    eventually,
    node::{pair, test_config, ProxyNode},
};

#[tokio::test]
async fn write_on_replica_reaches_primary_app_exactly_once_with_response_intact() {
    let (a, b) = pair(test_config()).await;
    let resp = post(
        b.addr,
        "/items?x=1",
        &[("x-test-status", "201"), ("content-type", "text/plain")],
        "hello",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "node-a POST /items 5");
    assert_eq!(resp.header("x-app"), Some("node-a"));
    let cookies: Vec<_> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies.contains(&"app-session=abc; Path=/"),
        "app cookie kept: {cookies:?}"
    );
    assert_eq!(a.app.count(), 1, "primary app got it once");
    assert_eq!(b.app.count(), 0, "replica app never sees a write");
    let seen = &a.app.seen()[0];
    assert_eq!(seen.body, Bytes::from_static(b"hello"));
    assert_eq!(seen.headers["content-type"], "text/plain");
    assert_eq!(
        seen.headers["host"], "example.test",
        "Host kept across the hop"
    );
}

#[tokio::test]
async fn write_on_primary_mints_token_from_position() {
    let (a, b) = pair(test_config()).await;
    a.sim.set_txid(41);
    let resp = post(a.addr, "/items", &[], "x").await.unwrap();
    assert_eq!(a.sim.txid(), 42, "the app committed");
    let cookie = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("litefs-txid="));
    // The position, TXID and checksum, as in `<db>-pos` with `-` for `/`.
    let (_, checksum) = a.sim.pos();
    let value = format!("000000000000002a-{checksum:016x}");
    assert_eq!(
        cookie,
        Some(format!(
            "litefs-txid={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=300"
        ))
    );
    assert_eq!(resp.header("litefs-txid"), Some(value.as_str()));

    // Through the replica the primary's proxy mints it, and it comes back intact.
    let resp = post(b.addr, "/items", &[], "y").await.unwrap();
    let (_, checksum) = a.sim.pos();
    assert_eq!(
        minted(&resp),
        Some(format!("000000000000002b-{checksum:016x}"))
    );

    // A write carrying a token at or above the position gets no new one.
    let resp = post(
        a.addr,
        "/noop",
        &[
            ("x-test-status", "200"),
            ("cookie", "litefs-txid=00000000000000ff"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(minted(&resp), None);
    // A token at the TXID the write reaches, but of another history, is replaced.
    let next = a.sim.txid() + 1;
    let elsewhere = format!("litefs-txid={next:016x}-8000000000000bad");
    let resp = post(a.addr, "/items", &[("cookie", elsewhere.as_str())], "z")
        .await
        .unwrap();
    let (txid, checksum) = a.sim.pos();
    assert_eq!(txid, next);
    assert_eq!(minted(&resp), Some(format!("{next:016x}-{checksum:016x}")));
    // Reads never mint.
    let resp = get(a.addr, "/items", &[]).await.unwrap();
    assert_eq!(minted(&resp), None);
}

#[tokio::test]
async fn always_forward_paths_and_methods_are_writes() {
    let cfg = ProxyConfig {
        always_forward: vec!["/api/refresh*".into()],
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    get(b.addr, "/api/refresh/now", &[]).await.unwrap();
    assert_eq!(
        (a.app.count(), b.app.count()),
        (1, 0),
        "GET on an always_forward path goes to the primary"
    );
    for m in ["PUT", "PATCH", "DELETE"] {
        client::send(
            b.addr,
            client::request(m, "/x").body(client::empty()).unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!(a.app.count(), 4);
    // OPTIONS (CORS preflight) and HEAD are reads, served locally.
    for m in ["OPTIONS", "HEAD", "GET"] {
        client::send(
            b.addr,
            client::request(m, "/x").body(client::empty()).unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!((a.app.count(), b.app.count()), (4, 3));
}

#[tokio::test]
async fn write_is_held_while_no_primary_is_known_then_delivered() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", Primary::Unknown, test_config()).await;
    let pending = tokio::spawn(post(b.addr, "/items", &[], "held"));
    let proxy = b.proxy.clone();
    assert!(eventually(Duration::from_secs(2), || proxy.held_requests() == 1).await);
    assert_eq!(a.app.count(), 0);
    b.primary.send_replace(a.as_remote());
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "node-a POST /items 4");
    assert_eq!(a.app.count(), 1);
    assert_eq!(b.proxy.held_requests(), 0);
}

#[tokio::test]
async fn write_held_past_primary_redirect_timeout_gets_503_with_retry_after() {
    let cfg = ProxyConfig {
        primary_redirect_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let b = ProxyNode::start("node-b", Primary::Unknown, cfg).await;
    let start = std::time::Instant::now();
    let resp = post(b.addr, "/items", &[], "x").await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(b.app.count(), 0);
}

#[tokio::test]
async fn primary_refusing_connections_is_retried_until_it_comes_up() {
    // Reserve a port, free it: the "primary" is down.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = reserved.local_addr().unwrap();
    drop(reserved);
    let remote = Primary::remote("node-a", &format!("http://{port}")).unwrap();
    let b = ProxyNode::start("node-b", remote, test_config()).await;
    let pending = tokio::spawn(post(b.addr, "/items", &[], "late"));
    let proxy = b.proxy.clone();
    assert!(eventually(Duration::from_secs(2), || proxy.held_requests() == 1).await);
    // The primary's proxy starts on that port.
    let listener = tokio::net::TcpListener::bind(port).await.unwrap();
    let a = ProxyNode::start_on(listener, "node-a", Primary::Local, test_config()).await;
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(a.app.count(), 1);
}

/// A primary that reads the request and then drops the connection: the request may have
/// been applied, so it must be answered 502 and never sent again.
#[tokio::test]
async fn request_that_may_have_reached_the_primary_is_never_resent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            drop(s);
        }
    });
    let remote = Primary::remote("flaky", &format!("http://{addr}")).unwrap();
    let b = ProxyNode::start("node-b", remote, test_config()).await;
    let resp = post(b.addr, "/items", &[], "once").await.unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("litefs-proxy-error"), Some("1"));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sent exactly once"
    );
}

#[tokio::test]
async fn forwarded_write_on_a_non_primary_is_held_not_bounced() {
    let cfg = ProxyConfig {
        primary_redirect_timeout: Duration::from_millis(400),
        ..test_config()
    };
    // Each thinks the other is primary: the classic loop. b -> a (hop 1) -> b (hop 2), and
    // there it stops: a request that made two hops is held, never sent on.
    let a = ProxyNode::start("node-a", Primary::Unknown, cfg.clone()).await;
    let b = ProxyNode::start("node-b", a.as_remote(), cfg).await;
    a.primary.send_replace(b.as_remote());
    let resp = post(b.addr, "/items", &[], "loop").await.unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!((a.app.count(), b.app.count()), (0, 0));
    let m = metrics(&a).await;
    assert!(
        m.contains(r#"litefs_proxy_requests_total{class="write",outcome="forwarded"} 1"#),
        "{m}"
    );
    let m = metrics(&b).await;
    for line in [
        r#"litefs_proxy_requests_total{class="write",outcome="forwarded"} 1"#,
        r#"litefs_proxy_requests_total{class="write",outcome="no_primary"} 1"#,
    ] {
        assert!(m.contains(line), "{line}:\n{m}");
    }

    // Once the node holding it becomes primary, the held write is served there, once.
    let pending = tokio::spawn(post(b.addr, "/items", &[], "later"));
    let proxy = b.proxy.clone();
    assert!(eventually(Duration::from_secs(2), || proxy.held_requests() == 1).await);
    b.primary.send_replace(Primary::Local);
    assert_eq!(pending.await.unwrap().unwrap().status, 200);
    assert_eq!((a.app.count(), b.app.count()), (0, 1));
}

#[tokio::test]
async fn hop_limit_rejects_looping_requests() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    for hop in ["3", "garbage"] {
        let resp = post(a.addr, "/items", &[("litefs-proxy-hop", hop)], "x")
            .await
            .unwrap();
        assert_eq!(resp.status, 508, "hop {hop}");
    }
    assert_eq!(a.app.count(), 0);
    for hop in ["1", "2"] {
        let resp = post(a.addr, "/items", &[("litefs-proxy-hop", hop)], "x")
            .await
            .unwrap();
        assert_eq!(
            resp.status, 200,
            "a forwarded write at hop {hop} is served by the primary"
        );
    }
}

/// a thinks b leads, b knows c took over (as an old leader does while handing over): b
/// sends the write on to c instead of holding it until it fails.
#[tokio::test]
async fn a_forward_reaching_a_node_that_knows_better_goes_on_once() {
    let c = ProxyNode::start("node-c", Primary::Local, test_config()).await;
    let b = ProxyNode::start("node-b", c.as_remote(), test_config()).await;
    let a = ProxyNode::start("node-a", b.as_remote(), test_config()).await;
    let resp = post(a.addr, "/items", &[], "stale view").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some("node-c"));
    assert_eq!((a.app.count(), b.app.count(), c.app.count()), (0, 0, 1));
    let seen = &c.app.seen()[0];
    assert!(
        !seen.headers.contains_key("litefs-proxy-hop"),
        "the hop header is the proxies' own: {:?}",
        seen.headers
    );
    assert_eq!(seen.body, Bytes::from_static(b"stale view"));
}

/// Each forwarded write has a connection of its own (see `litefs_proxy::forward`). Were the
/// replica to close them with a FIN, each would hold one of its ephemeral ports in
/// TIME_WAIT for a minute, and ~470 writes/s to one primary would exhaust them. The
/// primary closes first and the replica resets: no TIME_WAIT on either side.
#[tokio::test]
async fn forwarded_writes_leave_no_time_wait_behind() {
    let (a, b) = pair(test_config()).await;
    let port = a.addr.port();
    // Sockets of earlier processes that used the same port number may still linger.
    let before = time_wait_with(port);
    for i in 0..100 {
        let resp = post(b.addr, "/items", &[], &format!("w{i}")).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(a.app.count(), 100);
    let after = time_wait_with(port);
    assert!(
        after.0 <= before.0 && after.1 <= before.1,
        "TIME_WAIT sockets on the primary's port / towards it: {before:?} before, {after:?} after"
    );
}

/// TCP socket states in /proc/net/tcp*.
const TIME_WAIT: &str = "06";
const SYN_SENT: &str = "02";

/// Sockets on this machine in TIME_WAIT whose local / remote port is `port`.
fn time_wait_with(port: u16) -> (usize, usize) {
    sockets(TIME_WAIT, port)
}

/// Sockets on this machine in `state` whose local / remote port is `port`.
fn sockets(state: &str, port: u16) -> (usize, usize) {
    let port_of = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let (mut local, mut remote) = (0, 0);
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != state {
                continue;
            }
            local += usize::from(port_of(f[1]) == Some(port));
            remote += usize::from(port_of(f[2]) == Some(port));
        }
    }
    (local, remote)
}

/// A listener whose accept queue is full, so new connections to it hang in SYN_SENT, as
/// they do towards a host that went away. Keep the returned value alive.
async fn black_hole() -> (
    std::net::SocketAddr,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => queued.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break, // full: this connect hung
        }
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    (addr, queued, listener)
}

/// Rule 5, "sent as soon as a primary appears": the known primary's host is gone (its
/// SYNs go unanswered, a connect would take its full 1 s timeout). When the new primary is
/// announced the pending connect is abandoned (nothing had been sent) and the write goes
/// to the new primary at once; with a redirect timeout shorter than that connect timeout,
/// waiting the connect out would have answered 503.
#[tokio::test]
async fn a_write_stuck_connecting_to_a_vanished_primary_goes_to_the_new_one() {
    let (hole, _queued, _listener) = black_hole().await;
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let b = ProxyNode::start(
        "node-b",
        Primary::remote("gone", &format!("http://{hole}")).unwrap(),
        ProxyConfig {
            primary_redirect_timeout: Duration::from_millis(900),
            ..test_config()
        },
    )
    .await;
    let addr = b.addr;
    let write = tokio::spawn(async move { post(addr, "/items", &[], "x").await });
    assert!(
        eventually(Duration::from_secs(2), || sockets(SYN_SENT, hole.port()).1
            > 0)
        .await,
        "the replica is connecting to the vanished primary"
    );
    assert_eq!(a.app.count(), 0);
    b.primary.send_replace(a.as_remote());
    let resp = write.await.unwrap().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-app"), Some("node-a"));
    assert_eq!(a.app.count(), 1);
}

async fn metrics(n: &ProxyNode) -> String {
    get(n.addr, "/litefs/metrics", &[]).await.unwrap().text()
}
