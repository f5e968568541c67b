//! Nodes that share nothing but their LiteFS APIs on loopback (as separate processes
//! would) follow a leader chosen elsewhere.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::DEADLINE;
use litefs_sim::{LagControl, Member, Node, NodeConfig};
use rusqlite::Connection;

async fn members(root: &std::path::Path) -> Vec<Member> {
    let mut listeners = Vec::new();
    let mut peers: HashMap<String, String> = HashMap::new();
    for i in 1..=3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(
            format!("node-{i}"),
            format!("http://{}", l.local_addr().unwrap()),
        );
        listeners.push(l);
    }
    let members: Vec<Member> = (1..=3)
        .map(|i| {
            let host = format!("node-{i}");
            Member::start(
                NodeConfig {
                    mount: root.join(&host),
                    db: "db.sqlite3".into(),
                    hostname: host,
                    is_primary: i == 1,
                    primary_hostname: (i != 1).then(|| "node-1".to_owned()),
                },
                peers.clone(),
                LagControl::default(),
                Some(litefs_sim::DEFAULT_INTERVAL),
            )
        })
        .collect();
    for (m, l) in members.iter().zip(listeners) {
        tokio::spawn(litefs_sim::serve_api(
            m.node().clone(),
            l,
            std::future::pending(),
        ));
    }
    members
}

/// A foreign app's write: plain SQLite; the commit watcher advances the TXID.
fn write(node: &Node, v: &str) -> rusqlite::Result<()> {
    let conn = Connection::open(node.db_path())?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v TEXT)")?;
    conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
    Ok(())
}

fn rows(node: &Node) -> Vec<String> {
    let conn = Connection::open(node.db_path()).unwrap();
    let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_move_hands_off_and_an_unplanned_one_loses_the_unshipped_tail() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path()).await;
    let n: Vec<Node> = m.iter().map(|m| m.node().clone()).collect();
    write(&n[0], "a").unwrap();
    let t = m[0].watcher().unwrap().sync();
    assert!(n[1].wait_for_txid(t, DEADLINE).await);
    assert!(n[2].wait_for_txid(t, DEADLINE).await);
    assert_eq!(rows(&n[2]), ["a"]);

    // Planned: node-2 falls behind, then takes over from a live node-1 (the handoff
    // frame comes behind everything node-1 committed, so nothing is lost).
    m[1].link().pause();
    write(&n[0], "b").unwrap();
    let t = m[0].watcher().unwrap().sync();
    m[1].set_leader(Some("node-2")).await.unwrap();
    m[1].link().resume();
    assert!(n[1].is_primary());
    assert!(
        !n[0].is_primary(),
        "the old primary stepped down in the handoff"
    );
    assert_eq!(n[1].txid(), t, "the handoff carried node-1's last commit");
    assert_eq!(rows(&n[1]), ["a", "b"]);
    for member in [&m[0], &m[2]] {
        member.set_leader(Some("node-2")).await.unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(n[0].mount().join(".primary")).unwrap(),
        "node-2\n"
    );
    assert!(write(&n[0], "refused").is_err());
    write(&n[1], "c").unwrap();
    let t = m[1].watcher().unwrap().sync();
    assert!(n[0].wait_for_txid(t, DEADLINE).await);
    assert!(n[2].wait_for_txid(t, DEADLINE).await);
    assert_eq!(rows(&n[0]), ["a", "b", "c"]);
    assert_eq!(rows(&n[2]), ["a", "b", "c"]);

    // Unplanned: node-3 falls behind and node-2 is demoted before node-3 wins (a
    // leaderless spell): nothing can hand off, node-3 takes over with what it had, "d"
    // is gone, and node-2 rejoins resynced to node-3's history.
    m[2].link().pause();
    write(&n[1], "d").unwrap();
    m[1].watcher().unwrap().sync();
    for member in &m {
        member.set_leader(None).await.unwrap();
    }
    assert!(!n[1].mount().join(".primary").exists());
    m[2].link().resume();
    m[2].set_leader(Some("node-3")).await.unwrap();
    assert!(n[2].is_primary());
    assert_eq!(
        rows(&n[2]),
        ["a", "b", "c"],
        "node-2's unshipped write is lost"
    );
    for member in [&m[0], &m[1]] {
        member.set_leader(Some("node-3")).await.unwrap();
    }
    write(&n[2], "e").unwrap();
    m[2].watcher().unwrap().sync();
    let end = std::time::Instant::now() + DEADLINE;
    while rows(&n[1]) != ["a", "b", "c", "e"] {
        assert!(
            std::time::Instant::now() < end,
            "node-2 not resynced: {:?}",
            rows(&n[1])
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
