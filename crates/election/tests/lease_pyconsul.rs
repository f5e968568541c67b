//! The lease endpoint driven by a Consul client nobody here wrote (py-consul, installed by
//! .ci/run from tests/requirements-consul.txt), with the call sequence of LiteFS's consul
//! leaser on the leader and a follower, before and after the leader is killed.
//! Skipped (with a message) only when py-consul is missing and `CI` is unset.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Cluster;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lease_client.py");

fn py_consul_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import consul"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn script(args: &[String]) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(SCRIPT)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("script finished within 60 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lease_client.py {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("output {stdout:?}: {e}"))
}

fn lease_addr(c: &Cluster, i: usize) -> String {
    c.slots[i]
        .node
        .as_ref()
        .and_then(|n| n.lease_local_addr())
        .expect("lease endpoint")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litefs_call_sequence_with_py_consul_across_a_leader_kill() {
    if !py_consul_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `python3 -c 'import consul'` fails: \
             pip install -r tests/requirements-consul.txt"
        );
        eprintln!(
            "SKIPPED lease_pyconsul: python3 cannot import consul \
             (pip install -r tests/requirements-consul.txt); under CI this test fails instead"
        );
        return;
    }
    common::init_tracing();
    let mut c = Cluster::new(3, None, |cfg| {
        cfg.lease_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    c.start_all().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let f = (0..3).find(|i| *i != l).expect("follower");
    let out = script(&[
        "primary".into(),
        lease_addr(&c, l),
        lease_addr(&c, f),
        c.slots[l].name.clone(),
        c.slots[f].name.clone(),
    ])
    .await;
    println!("primary phase: {out}");
    let session = out["session"].as_str().expect("session").to_string();
    let cluster_id = out["cluster_id"].as_str().expect("cluster_id").to_string();

    c.kill(l).await;
    let l2 = c.wait_agreed(Duration::from_secs(3)).await;
    let other = c.running().into_iter().find(|i| *i != l2).expect("other");
    let out = script(&[
        "failover".into(),
        lease_addr(&c, l2),
        lease_addr(&c, other),
        session,
        c.slots[l2].name.clone(),
        c.slots[other].name.clone(),
        cluster_id,
    ])
    .await;
    println!("failover phase: {out}");
    c.stop_all().await;
}
