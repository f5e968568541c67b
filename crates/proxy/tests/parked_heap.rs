//! What an idle keep-alive connection holds on the heap once parked: hyper's buffers
//! (8 KiB read, 8 KiB write, its connection state) are gone; what is left is its task,
//! its socket's registration and its activity record. Counted by dhat's allocator (live
//! bytes, so the number does not depend on what the allocator keeps from earlier bursts).

use std::time::Duration;

use litefs_proxy::{Primary, Proxy, ProxyConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Connections measured.
const CONNS: usize = 200;
/// The goal of issue 12 for an idle keep-alive connection (nginx: under 1 KiB).
const MAX_BYTES_PER_CONN: u64 = 4096;
/// How often the test looks whether every connection has parked, and for how long.
const POLL: Duration = Duration::from_millis(10);
const PARKED_WITHIN: Duration = Duration::from_secs(30);

/// A new connection that has carried one request (its whole answer read), kept open.
async fn served(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /litefs/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !complete(&got) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 "));
    s
}

/// Whether `got` holds a whole response with a `content-length` body.
fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    got.len() >= end + 4 + len
}

async fn until_parked(proxy: &Proxy, n: i64) {
    let end = tokio::time::Instant::now() + PARKED_WITHIN;
    while proxy.client_connections() != (0, n) {
        assert!(
            tokio::time::Instant::now() < end,
            "not all parked: {:?}",
            proxy.client_connections()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Live heap per parked connection, this test's client socket included, stays within
/// 4 KiB; served by hyper (not parked) it is over 16 KiB.
#[test]
fn a_parked_connection_holds_less_than_4_kib_of_heap() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig {
            mount: dir.path().to_path_buf(),
            ..ProxyConfig::default()
        };
        let (_tx, rx) = watch::channel(Primary::Local);
        let proxy = Proxy::new(cfg, rx).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(litefs_proxy::serve(
            listener,
            proxy.clone(),
            std::future::pending(),
        ));
        // One served and parked first: what is built once (metrics, pools) is not counted.
        let _warm = served(addr).await;
        until_parked(&proxy, 1).await;
        let mut conns = Vec::with_capacity(CONNS);
        let before = dhat::HeapStats::get().curr_bytes as u64;
        for _ in 0..CONNS {
            conns.push(served(addr).await);
        }
        let serving = dhat::HeapStats::get().curr_bytes as u64;
        until_parked(&proxy, CONNS as i64 + 1).await;
        let parked = dhat::HeapStats::get().curr_bytes as u64;
        let per = |b: u64| b.saturating_sub(before) / CONNS as u64;
        assert!(
            per(serving) > 4 * MAX_BYTES_PER_CONN,
            "served by hyper: {} bytes per connection",
            per(serving)
        );
        assert!(
            per(parked) <= MAX_BYTES_PER_CONN,
            "parked: {} bytes per connection",
            per(parked)
        );
        eprintln!(
            "heap per connection: served {} bytes, parked {} bytes",
            per(serving),
            per(parked)
        );
    });
}
