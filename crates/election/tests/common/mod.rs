//! Helpers for in-process clusters on 127.0.0.1: reserve ports, start/stop nodes, wait for
//! conditions with a deadline.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use litefs_election::{Config, Election, Faults, Leadership, PeerSpec};

pub const PROXY_PORT: u16 = 18080;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Free loopback ports for nodes about to start, below Linux's ephemeral range (10000–
/// 32767): a port the kernel picked for port 0 is, once released, free for another test's
/// `127.0.0.1:0` listener or outgoing connection to take before the node binds it. Handed out
/// in turn from a start that differs per test process; each is checked free by binding it.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut out = Vec::new();
    while out.len() < n {
        let port = (FLOOR + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// One slot of a test cluster: its config and, while running, its node.
pub struct Slot {
    pub name: String,
    pub cfg: Config,
    pub faults: Faults,
    pub node: Option<Election>,
}

pub struct Cluster {
    pub slots: Vec<Slot>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new(n: usize, secret: Option<&str>, tune: impl Fn(&mut Config)) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(n);
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let peers: Vec<PeerSpec> = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| PeerSpec::Table {
                id: name.clone(),
                raft: format!("127.0.0.1:{port}"),
                proxy: Some(format!("http://{name}.test:{PROXY_PORT}")),
                voter: None,
            })
            .collect();
        let slots = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let mut cfg = Config {
                    node_id: name.clone(),
                    raft_addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                    data_dir: dir.path().join(name),
                    cluster_secret: secret.map(str::to_string),
                    peers: peers.clone(),
                    ..Config::default()
                };
                tune(&mut cfg);
                Slot {
                    name: name.clone(),
                    cfg,
                    faults: Faults::default(),
                    node: None,
                }
            })
            .collect();
        Cluster { slots, _dir: dir }
    }

    pub async fn start(&mut self, i: usize) {
        let s = &mut self.slots[i];
        assert!(s.node.is_none(), "{} already running", s.name);
        let node = Election::start_with_faults(s.cfg.clone(), PROXY_PORT, s.faults.clone())
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", s.name));
        s.node = Some(node);
    }

    pub async fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            self.start(i).await;
        }
    }

    pub async fn kill(&mut self, i: usize) {
        if let Some(n) = self.slots[i].node.take() {
            n.kill().await;
        }
    }

    pub async fn shutdown(&mut self, i: usize) -> Option<Duration> {
        match self.slots[i].node.take() {
            Some(n) => n.shutdown().await,
            None => None,
        }
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            self.kill(i).await;
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].node.is_some())
            .collect()
    }

    pub fn leadership(&self, i: usize) -> Option<Leadership> {
        self.slots[i]
            .node
            .as_ref()
            .map(|n| n.leadership().borrow().clone())
    }

    /// Indices of running nodes whose watch says Leader.
    pub fn leaders(&self) -> Vec<usize> {
        self.running()
            .into_iter()
            .filter(|i| self.leadership(*i) == Some(Leadership::Leader))
            .collect()
    }

    /// Some(i) when exactly node i leads and every other running node follows it.
    pub fn agreed_leader(&self) -> Option<usize> {
        let leaders = self.leaders();
        let [l] = leaders[..] else { return None };
        let name = &self.slots[l].name;
        let all_follow = self.running().into_iter().filter(|i| *i != l).all(|i| {
            matches!(self.leadership(i), Some(Leadership::Follower { leader, .. }) if &leader == name)
        });
        all_follow.then_some(l)
    }

    /// Wait (polling every 5 ms) until the running nodes agree on a leader.
    pub async fn wait_agreed(&self, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(l) = self.agreed_leader() {
                return l;
            }
            assert!(
                start.elapsed() < within,
                "no agreed leader within {within:?}: {:?}",
                self.running()
                    .iter()
                    .map(|i| (self.slots[*i].name.clone(), self.leadership(*i)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn primary_path(&self, i: usize) -> PathBuf {
        self.slots[i].cfg.primary_path()
    }

    /// `.primary` of node i: None when absent.
    pub fn primary_file(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.primary_path(i)).ok()
    }

    /// Isolate node i from every other node (both directions).
    pub fn isolate(&self, i: usize) {
        for (j, s) in self.slots.iter().enumerate() {
            if j != i {
                s.faults.block(&self.slots[i].name);
                self.slots[i].faults.block(&s.name);
            }
        }
    }

    pub fn heal(&self) {
        for s in &self.slots {
            s.faults.heal();
        }
    }
}

/// Poll `cond` every 5 ms until true; panics with `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Send one raw HTTP/1.1 request over a fresh TCP connection and return the status code
/// (None if the server closed without answering). `extra` are full header lines.
pub async fn raw_post(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
}

/// One HTTP/1.1 exchange over a fresh connection: (status, headers lower-cased, body).
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("answer within 15 s")
        .expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The body hashicorp's Go client sends for LiteFS's `Session().CreateNoChecks` (no key prefix
/// in the consul URL, so no Node).
pub const GO_CREATE: &[u8] =
    br#"{"NodeChecks":[],"Name":"litefs","LockDelay":"1000ms","Behavior":"delete","TTL":"10s"}"#;

/// Three nodes serving the lease endpoint on a port of their own.
pub fn lease_cluster() -> Cluster {
    Cluster::new(3, None, |cfg| {
        cfg.lease_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
}

pub fn lease_addr(c: &Cluster, i: usize) -> SocketAddr {
    c.slots[i]
        .node
        .as_ref()
        .and_then(|n| n.lease_local_addr())
        .expect("lease endpoint bound")
}

pub fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// `PUT path` that must answer 200; its JSON.
pub async fn put(addr: SocketAddr, path: &str, body: &[u8]) -> serde_json::Value {
    let (st, _, b) = http_call(addr, "PUT", path, body).await;
    assert_eq!(st, 200, "PUT {path}: {}", String::from_utf8_lossy(&b));
    json_of(&b)
}

/// GET `path` on `addr` until `ok(status, body)` holds (followers apply shortly after the
/// leader answers; a lapsing lock goes within seconds), at most 5 s.
pub async fn get_until(
    addr: SocketAddr,
    path: &str,
    ok: impl Fn(u16, &[u8]) -> bool,
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    let start = Instant::now();
    loop {
        let r = http_call(addr, "GET", path, b"").await;
        if ok(r.0, &r.2) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "GET {path}: still {} {}",
            r.0,
            String::from_utf8_lossy(&r.2)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
