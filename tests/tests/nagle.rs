//! An app that writes its response head and its body in two writes on a socket without
//! TCP_NODELAY (Python's `http.server`, Django's `runserver`), behind the proxy's pooled
//! keep-alive connection: the body waits in the app's kernel (Nagle) for the ACK of the
//! head, which a receiver that delays ACKs sends only after its 40 ms timer. The proxy
//! acknowledges at once on its upstream connections (quick ACKs), so reads through it stay
//! far from that timer. (How far, against nginx, is the bench's row.)

use std::{net::SocketAddr, time::Duration, time::Instant};

use litefs_proxy::{Primary, Proxy, ProxyConfig};
use litefs_proxy_tests::client::get;
use tokio::{net::TcpListener, sync::watch};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_the_proxy_do_not_wait_for_a_nagle_apps_delayed_ack() {
    let app = litefs_proxy_tests::nagle_app::start().await.expect("app");
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = ProxyConfig {
        addr: addr.to_string(),
        target: app.to_string(),
        mount: dir.path().to_path_buf(),
        node_name: "n1".into(),
        sync_replicas: Some(0),
        ..litefs_proxy_tests::node::test_config()
    };
    let (_tx, rx) = watch::channel(Primary::Local);
    let proxy = Proxy::new(cfg, rx).expect("valid config");
    tokio::spawn(litefs_proxy::serve(listener, proxy, std::future::pending()));

    let time = |to: SocketAddr| async move {
        let t = Instant::now();
        let a = get(to, "/items", &[]).await.expect("answer");
        assert_eq!(a.status, 200);
        t.elapsed()
    };
    // Warm the proxy's pooled connection to the app; then alternate.
    time(addr).await;
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        via.push(time(addr).await);
        direct.push(time(app).await);
    }
    let (via, direct) = (median(via), median(direct));
    println!(
        "median: through the proxy {via:?}, straight to the app (fresh connection) {direct:?}"
    );
    // The delayed-ACK timer is 40 ms: a stall puts every read at or past it.
    assert!(
        via < Duration::from_millis(20),
        "reads through the proxy waited for the delayed ACK: median {via:?} (direct {direct:?})"
    );
}
