//! With real LiteFS following the Raft lease, the elected node acts as primary only once
//! its LiteFS says so (`role.confirm_litefs`): before that, writes are held, not sent to a
//! read-only database.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use litefs_proxy_tests::{
    app::TestApp,
    client::{get, post},
    cluster::{binary, free_port},
};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let a = tokio::time::timeout(Duration::from_millis(500), get(addr, "/litefs/status", &[]))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&a.body).ok()
}

async fn role(addr: std::net::SocketAddr) -> Option<String> {
    status(addr)
        .await
        .and_then(|v| v["role"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elected_node_waits_for_litefs_before_taking_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("litefs");
    let sim = litefs_sim::Node::new(litefs_sim::NodeConfig {
        mount: mount.clone(),
        db: "db.sqlite3".into(),
        hostname: "node-1".into(),
        is_primary: false,
        primary_hostname: None,
    });
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    tokio::spawn(litefs_sim::serve_api(
        sim.clone(),
        api,
        std::future::pending(),
    ));
    let app = TestApp::start("node-1", Some(sim.clone())).await;
    let (proxy, raft) = (free_port(), free_port());
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"[proxy]
addr = "{proxy}"
target = "{app}"
mount = "{mount}"
litefs_api = "http://{api_addr}"
primary_redirect_timeout = "10s"

[role]
source = "raft"
confirm_litefs = true

[election]
node_id = "node-1"
raft_addr = "{raft}"
data_dir = "{data}"
peers = [{{ id = "node-1", raft = "{raft}", proxy = "http://{proxy}" }}]
"#,
            app = app.addr,
            mount = mount.display(),
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let _p = Kill(
        Command::new(binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Elected (one voter), but LiteFS is still a replica: not primary yet.
    let mut elected = None;
    for _ in 0..250 {
        if let Some(s) = status(proxy).await {
            if s["election"]["role"] == "leader" {
                elected = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = elected.expect("the single node is elected");
    assert_eq!(
        s["role"], "unknown",
        "Raft leader, LiteFS replica: not acting as primary: {s}"
    );
    let pending = tokio::spawn(post(proxy, "/items", &[], "held until LiteFS is primary"));
    let mut held = false;
    for _ in 0..100 {
        if status(proxy).await.is_some_and(|s| s["held_requests"] == 1) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "the write is held");
    assert_eq!(
        app.count(),
        0,
        "no write reached the app while LiteFS was a replica"
    );
    // LiteFS acquires the lease.
    sim.set_role(true, None);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(app.count(), 1);
    let mut primary = false;
    for _ in 0..100 {
        if role(proxy).await.as_deref() == Some("primary") {
            primary = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(primary);
}
