//! The demo app on a 3-node sim cluster, over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{call, request, DEADLINE};
use http_body_util::BodyExt;
use litefs_sim::{serve_demo_app, Cluster, ClusterConfig, Fnv64, Node};
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Apps {
    cluster: Cluster,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
}

async fn start(dir: &std::path::Path) -> Apps {
    let cluster = Cluster::start(ClusterConfig::new(dir, 3)).unwrap();
    let (stop, _) = watch::channel(false);
    let mut addrs = Vec::new();
    for node in cluster.nodes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let mut rx = stop.subscribe();
        tokio::spawn(serve_demo_app(node.clone(), listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    Apps {
        cluster,
        addrs,
        stop,
    }
}

fn pos_txid(node: &Node) -> u64 {
    let text = std::fs::read_to_string(node.pos_path()).unwrap();
    litefs_sim::parse_pos(&text).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_advance_txid_before_the_response_and_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let apps = start(dir.path()).await;
    let primary = apps.cluster.nodes()[0].clone();
    for i in 0..10 {
        let resp = request(apps.addrs[0], "POST", "/items", format!("item {i}")).await;
        // The position is already there when the response head arrives.
        let on_disk = pos_txid(&primary);
        assert_eq!(resp.status(), 201);
        let header_txid =
            u64::from_str_radix(resp.headers()["x-sim-txid"].to_str().unwrap(), 16).unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let txid = u64::from_str_radix(v["txid"].as_str().unwrap(), 16).unwrap();
        assert!(
            on_disk >= txid && header_txid >= txid,
            "{on_disk} {header_txid} {txid}"
        );
        assert_eq!(v["node"], "node-1");
        // Read it back on a replica once its position reaches the write's TXID.
        let replica = &apps.cluster.nodes()[1 + i % 2];
        assert!(replica.wait_for_txid(txid, DEADLINE).await);
        let id = v["id"].as_i64().unwrap();
        let (status, item) = call(apps.addrs[1 + i % 2], "GET", &format!("/items/{id}"), "").await;
        assert_eq!(status, 200, "{item}");
        assert!(item.contains(&format!("item {i}")), "{item}");
    }
    let (status, list) = call(apps.addrs[2], "GET", "/items", "").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 10);
    let _ = apps.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_writes_fail_and_reads_before_any_data_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let apps = start(dir.path()).await;
    // No database anywhere yet: reads are empty, replica writes fail.
    assert_eq!(
        call(apps.addrs[1], "GET", "/items", "").await,
        (200, "[]\n".into())
    );
    let (status, _) = call(apps.addrs[1], "POST", "/items", "x").await;
    assert_eq!(status, 500);
    assert!(
        !apps.cluster.nodes()[1].db_path().exists(),
        "a replica created the db"
    );
    // With data replicated: SQLite's own read-only error.
    assert_eq!(call(apps.addrs[0], "POST", "/items", "a").await.0, 201);
    assert!(apps.cluster.wait_replicated(DEADLINE).await);
    let (status, body) = call(apps.addrs[1], "POST", "/items", "x").await;
    assert_eq!(status, 500);
    assert!(body.contains("readonly"), "{body}");
    // After a promotion the new primary's app writes.
    apps.cluster.promote("node-2").await.unwrap();
    assert_eq!(call(apps.addrs[1], "POST", "/items", "b").await.0, 201);
    assert_eq!(call(apps.addrs[0], "POST", "/items", "c").await.0, 500);
    let _ = apps.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_arrives_in_pieces_and_upload_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let apps = start(dir.path()).await;
    let interval = Duration::from_millis(100);
    let start = Instant::now();
    let resp = request(apps.addrs[1], "GET", "/stream?n=4&interval_ms=100", "").await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(Instant::now());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    // One frame per piece (the server never buffers the whole response), the last one
    // produced at least three intervals after the first.
    assert!(arrivals.len() >= 4, "pieces were coalesced");
    assert!(arrivals[arrivals.len() - 1] - start >= 3 * interval);

    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut want = Fnv64::new();
    want.update(&data);
    let (status, body) = call(apps.addrs[0], "POST", "/upload", "").await;
    assert_eq!(status, 201, "{body}");
    let resp = request(apps.addrs[0], "POST", "/upload", data).await;
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["bytes"], 5 * 1024 * 1024);
    assert_eq!(v["fnv64"], format!("{:016x}", want.0));
    let _ = apps.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let apps = start(dir.path()).await;
    let resp = request(apps.addrs[0], "GET", "/stream?n=1000&interval_ms=50", "").await;
    let mut body = resp.into_body();
    assert!(body.frame().await.is_some());
    let _ = apps.stop.send(true);
    let rest = tokio::time::timeout(DEADLINE, body.collect()).await;
    assert!(rest.is_ok(), "stream still open after shutdown");
}
