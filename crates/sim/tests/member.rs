//! Nodes that share nothing but the filesystem (as separate processes would) follow a
//! leader chosen elsewhere.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::DEADLINE;
use litefs_sim::{LagControl, Member, Node, NodeConfig};
use rusqlite::Connection;

fn members(root: &std::path::Path) -> Vec<Member> {
    let peers: HashMap<String, PathBuf> = (1..=3)
        .map(|i| (format!("node-{i}"), root.join(format!("node-{i}"))))
        .collect();
    (1..=3)
        .map(|i| {
            let host = format!("node-{i}");
            Member::start(
                NodeConfig {
                    mount: peers[&host].clone(),
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
        .collect()
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
async fn leader_change_moves_the_source_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path());
    let n: Vec<Node> = m.iter().map(|m| m.node().clone()).collect();
    write(&n[0], "a").unwrap();
    let t = m[0].watcher().unwrap().sync();
    assert!(n[1].wait_for_txid(t, DEADLINE).await);
    assert!(n[2].wait_for_txid(t, DEADLINE).await);
    assert_eq!(rows(&n[2]), ["a"]);

    // node-2 falls behind, then the leader is lost and node-2 wins the election.
    m[1].link().pause();
    write(&n[0], "b").unwrap();
    let t = m[0].watcher().unwrap().sync();
    for member in &m {
        member.set_leader(None).await.unwrap();
    }
    assert!(!n[0].mount().join(".primary").exists());
    m[1].link().resume();
    m[1].set_leader(Some("node-2")).await.unwrap();
    assert!(n[1].is_primary());
    assert_eq!(n[1].txid(), t, "caught up from node-1's files");
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
    assert!(t > 0);
    assert!(n[0].wait_for_txid(t, DEADLINE).await);
    assert!(n[2].wait_for_txid(t, DEADLINE).await);
    assert_eq!(rows(&n[0]), ["a", "b", "c"]);
    assert_eq!(rows(&n[2]), ["a", "b", "c"]);
}
