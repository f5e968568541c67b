//! The sim's LiteFS API over a real socket: `/info` shapes, the `/events` stream, shutdown.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use litefs_sim::{serve_api, Node, NodeConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(10);

struct Api {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(node: &Node) -> Api {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(serve_api(node.clone(), listener, async {
        let _ = rx.await;
    }));
    Api {
        addr,
        stop: Some(stop),
        task,
    }
}

fn node(dir: &std::path::Path, host: &str, is_primary: bool, primary: Option<&str>) -> Node {
    Node::new(NodeConfig {
        mount: dir.to_path_buf(),
        db: "db.sqlite3".into(),
        hostname: host.into(),
        is_primary,
        primary_hostname: primary.map(str::to_owned),
    })
}

async fn get(addr: std::net::SocketAddr, path: &str) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "litefs")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(req).await.unwrap()
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = get(addr, path).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Reads a response body line by line.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next full line, `None` at the end of the stream; panics after the deadline.
    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    return Some(String::from_utf8(line).unwrap());
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(mut data) = frame.into_data() {
                            while data.has_remaining() {
                                let chunk = data.chunk().to_vec();
                                data.advance(chunk.len());
                                self.buf.extend(chunk);
                            }
                        }
                    }
                    Some(Err(_)) | None => {
                        assert!(self.buf.is_empty(), "partial line at end: {:?}", self.buf);
                        return None;
                    }
                }
            }
        })
        .await
        .expect("event stream stalled past the deadline")
    }
}

async fn events(addr: std::net::SocketAddr) -> Lines {
    let resp = get(addr, "/events").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    Lines {
        body: resp.into_body(),
        buf: Vec::new(),
    }
}

#[tokio::test]
async fn info_has_litefs_shape_for_each_role() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "node-1", true, None);
    let api = start(&n).await;
    let path = dir.path().display().to_string();
    let expect = |is_primary: bool, host: &str| {
        format!(
            "{{\n  \"isPrimary\": {is_primary},\n  \"candidate\": true,\n  \"path\": {},\n  \"primary\": {{\n    \"hostname\": \"{host}\"\n  }}\n}}\n",
            serde_json::to_string(&path).unwrap()
        )
    };
    // Primary: empty, as measured on LiteFS v0.5.14 (litefs-facts.md), whatever its
    // server.go suggests.
    assert_eq!(get_text(api.addr, "/info").await, (200, expect(true, "")));
    // Connected replica: the primary's.
    n.set_role(false, Some("node-3"));
    assert_eq!(
        get_text(api.addr, "/info").await,
        (200, expect(false, "node-3"))
    );
    // Disconnected replica: empty, never null (LiteFS's struct).
    n.set_role(false, None);
    assert_eq!(get_text(api.addr, "/info").await, (200, expect(false, "")));
    // Once a cluster ID is known it comes first, as LiteFS's `clusterID`.
    n.set_cluster_id("LFSC27EAD211D3B3D5CC");
    let (_, body) = get_text(api.addr, "/info").await;
    assert!(
        body.starts_with("{\n  \"clusterID\": \"LFSC27EAD211D3B3D5CC\",\n  \"isPrimary\": false,"),
        "{body}"
    );
    assert_eq!(get_text(api.addr, "/nope").await.0, 404);
}

#[tokio::test]
async fn events_stream_init_tx_and_primary_change() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "node-2", false, Some("node-1"));
    let api = start(&n).await;
    let mut lines = events(api.addr).await;
    assert_eq!(
        lines.next().await.unwrap(),
        "{\"type\":\"init\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-1\"}}\n"
    );
    n.commit();
    n.commit();
    for want in 1..=2u64 {
        let line = lines.next().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "tx");
        assert_eq!(v["db"], "db.sqlite3");
        assert_eq!(v["data"]["txID"], format!("{want:016x}"));
        let checksum = format!("{:016x}", litefs_sim::fake_checksum("db.sqlite3", want));
        assert_eq!(v["data"]["postApplyChecksum"], checksum);
        assert_eq!(v["data"]["pageSize"], 4096);
        assert!(v["data"]["commit"].as_u64().unwrap() >= 1);
        let ts = v["data"]["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() >= 20, "{ts}");
        // The position file is written before the event is sent.
        let pos = std::fs::read_to_string(dir.path().join("db.sqlite3-pos")).unwrap();
        assert!(litefs_sim::parse_pos(&pos).unwrap().0 >= want);
    }
    n.set_role(true, None);
    assert_eq!(
        lines.next().await.unwrap(),
        "{\"type\":\"primaryChange\",\"data\":{\"isPrimary\":true}}\n"
    );
    n.set_role(false, Some("node-3"));
    assert_eq!(
        lines.next().await.unwrap(),
        "{\"type\":\"primaryChange\",\"data\":{\"isPrimary\":false,\"hostname\":\"node-3\"}}\n"
    );
    // A second subscriber's init reflects the current role; on the primary, no hostname.
    n.set_role(true, None);
    let mut second = events(api.addr).await;
    assert_eq!(
        second.next().await.unwrap(),
        "{\"type\":\"init\",\"data\":{\"isPrimary\":true}}\n"
    );
}

#[tokio::test]
async fn shutdown_ends_streams_and_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "node-1", true, None);
    let mut api = start(&n).await;
    let mut lines = events(api.addr).await;
    assert!(lines.next().await.unwrap().contains("\"init\""));
    api.stop.take().unwrap().send(()).unwrap();
    // The stream ends (no more lines) well before the deadline.
    assert_eq!(lines.next().await, None);
    tokio::time::timeout(DEADLINE, &mut api.task)
        .await
        .expect("serve_api returns after shutdown")
        .unwrap();
    assert!(TcpStream::connect(api.addr).await.is_err());
    // Commits keep working with the API down.
    assert_eq!(n.commit(), 1);
}

#[tokio::test]
async fn slow_subscriber_never_blocks_commits() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "node-1", true, None);
    let api = start(&n).await;
    // Subscribed but never read.
    let _idle = events(api.addr).await;
    let total = 3 * litefs_sim::EVENT_BUFFER as u64;
    let committer = {
        let n = n.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..total {
                n.commit();
            }
        })
    };
    tokio::time::timeout(DEADLINE, committer)
        .await
        .expect("commits stalled behind a slow subscriber")
        .unwrap();
    assert_eq!(n.txid(), total);
    // The API still serves others.
    assert_eq!(get_text(api.addr, "/info").await.0, 200);
}
