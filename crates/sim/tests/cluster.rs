//! Replication, lag, read-only replicas and promotion in an in-process cluster.

mod common;

use std::time::{Duration, Instant};

use common::{until, DEADLINE};
use litefs_sim::{Cluster, ClusterConfig, Lag, Node};
use rusqlite::Connection;

fn cluster(dir: &std::path::Path, lag: Lag, watch: bool) -> Cluster {
    let mut cfg = ClusterConfig::new(dir, 3);
    cfg.lag = lag;
    cfg.watch_commits = watch.then_some(litefs_sim::DEFAULT_INTERVAL);
    Cluster::start(cfg).unwrap()
}

/// Writes a row on `node`'s database the way an app does, then reports the commit.
fn app_write(node: &Node, value: &str) -> rusqlite::Result<u64> {
    let conn = Connection::open(node.db_path())?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v TEXT)")?;
    conn.execute("INSERT INTO t (v) VALUES (?1)", [value])?;
    Ok(node.commit_content())
}

fn rows(node: &Node) -> Vec<String> {
    let Ok(conn) =
        Connection::open_with_flags(node.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT v FROM t ORDER BY rowid") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn read_file(node: &Node, name: &str) -> Option<String> {
    std::fs::read_to_string(node.mount().join(name)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_get_real_sqlite_and_position_and_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::None, false);
    let [n1, n2, n3] = [0, 1, 2].map(|i| c.nodes()[i].clone());
    assert_eq!(read_file(&n1, ".primary"), None);
    assert_eq!(read_file(&n2, ".primary").as_deref(), Some("node-1\n"));
    assert_eq!(read_file(&n3, ".primary").as_deref(), Some("node-1\n"));

    let t = app_write(&n1, "a").unwrap();
    assert!(c.wait_replicated(DEADLINE).await);
    for n in [&n2, &n3] {
        assert_eq!(n.txid(), t);
        assert_eq!(rows(n), ["a"]);
        assert_eq!(
            read_file(n, "db.sqlite3-pos"),
            read_file(&n1, "db.sqlite3-pos")
        );
        let err = app_write(n, "nope").unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        assert!(litefs_sim::dbfile::is_marked_read_only(&n.db_path()).unwrap());
    }
    // The refused writes did not move anything.
    assert_eq!(n2.txid(), t);
    for i in 0..20 {
        app_write(&n1, &format!("r{i}")).unwrap();
    }
    assert!(c.wait_replicated(DEADLINE).await);
    assert_eq!(rows(&n3).len(), 21);
    assert_eq!(c.foreign_writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_lag_delays_data_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let lag = Duration::from_millis(300);
    let c = cluster(dir.path(), Lag::Fixed(lag), false);
    let (n1, n2) = (c.nodes()[0].clone(), c.nodes()[1].clone());
    let start = Instant::now();
    let t = app_write(&n1, "x").unwrap();
    let early = n2.txid();
    if start.elapsed() < lag {
        assert_eq!(early, 0, "applied before its lag");
    }
    // While the transaction waits, `.lag` (LiteFS's `%+010d\n`) reports it.
    let lag_ms = |n: &Node| {
        let text = read_file(n, ".lag").unwrap();
        assert_eq!(text.len(), 11, "{text:?}");
        text.trim().parse::<i64>().unwrap()
    };
    until(".lag to report the wait", || lag_ms(&n2) >= 100).await;
    assert!(n2.wait_for_txid(t, DEADLINE).await);
    assert!(
        start.elapsed() >= lag,
        "applied after {:?}",
        start.elapsed()
    );
    assert_eq!(rows(&n2), ["x"]);
    until(".lag back to zero once caught up", || lag_ms(&n2) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lag_stays_in_range_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::random_ms(20, 60), false);
    let (n1, n2) = (c.nodes()[0].clone(), c.nodes()[1].clone());
    let mut seen = n2.watch_txid();
    let history = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let history = history.clone();
        tokio::spawn(async move {
            while seen.changed().await.is_ok() {
                let t = *seen.borrow_and_update();
                history.lock().unwrap().push(t);
            }
        })
    };
    for i in 0..10 {
        let start = Instant::now();
        let t = app_write(&n1, &format!("{i}")).unwrap();
        assert!(n2.wait_for_txid(t, DEADLINE).await);
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
    }
    recorder.abort();
    let history = history.lock().unwrap().clone();
    assert!(history.windows(2).all(|w| w[0] < w[1]), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replica_waits_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::None, false);
    let (n1, n2, n3) = (
        c.nodes()[0].clone(),
        c.nodes()[1].clone(),
        c.nodes()[2].clone(),
    );
    let link = c.link("node-2").unwrap();
    link.pause();
    let t1 = app_write(&n1, "held-1").unwrap();
    let t2 = app_write(&n1, "held-2").unwrap();
    // node-3 is not paused.
    assert!(n3.wait_for_txid(t2, DEADLINE).await);
    until("node-2 to see the held transactions", || {
        link.pending() >= 1
    })
    .await;
    until("the lag file to grow", || {
        read_file(&n2, ".lag").is_some_and(|l| l.trim().parse::<i64>().unwrap_or(0) > 0)
    })
    .await;
    assert!(n2.txid() < t1);
    assert!(rows(&n2).is_empty());
    link.resume();
    assert!(n2.wait_for_txid(t2, DEADLINE).await);
    assert_eq!(rows(&n2), ["held-1", "held-2"]);
    until("lag back to zero", || {
        read_file(&n2, ".lag").as_deref() == Some("+000000000\n")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_catches_up_and_moves_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::None, false);
    let (n1, n2, n3) = (
        c.nodes()[0].clone(),
        c.nodes()[1].clone(),
        c.nodes()[2].clone(),
    );
    app_write(&n1, "before").unwrap();
    assert!(c.wait_replicated(DEADLINE).await);
    // node-2 misses the last writes; a planned handoff must still carry them.
    c.link("node-2").unwrap().pause();
    let last = app_write(&n1, "unreplicated").unwrap();
    c.promote("node-2").await.unwrap();
    assert_eq!(c.primary().unwrap().hostname(), "node-2");
    assert!(n2.is_primary() && !n1.is_primary());
    assert_eq!(n2.txid(), last);
    assert_eq!(rows(&n2), ["before", "unreplicated"]);
    assert_eq!(read_file(&n2, ".primary"), None);
    assert_eq!(read_file(&n1, ".primary").as_deref(), Some("node-2\n"));
    assert_eq!(read_file(&n3, ".primary").as_deref(), Some("node-2\n"));
    // The new primary takes writes, the old one refuses them, and everyone follows node-2.
    let t = app_write(&n2, "after").unwrap();
    assert_eq!(t, last + 1);
    // Once deliveries settle (one in progress briefly lifts the read-only mark, see dbfile).
    assert!(c.wait_replicated(DEADLINE).await);
    assert!(app_write(&n1, "old primary")
        .unwrap_err()
        .to_string()
        .contains("readonly"));
    assert_eq!(rows(&n1), ["before", "unreplicated", "after"]);
    assert_eq!(rows(&n3), ["before", "unreplicated", "after"]);
    assert_eq!(c.foreign_writes(), 0);
    // And back (node-2's link is still paused from above: release it).
    c.link("node-2").unwrap().resume();
    c.promote("node-1").await.unwrap();
    app_write(&n1, "again").unwrap();
    assert!(c.wait_replicated(DEADLINE).await);
    assert_eq!(rows(&n2).last().map(String::as_str), Some("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_over_loses_what_was_in_flight_like_litefs() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::None, false);
    let (n1, n2) = (c.nodes()[0].clone(), c.nodes()[1].clone());
    app_write(&n1, "kept").unwrap();
    assert!(c.wait_replicated(DEADLINE).await);
    c.pause_replication();
    let lost = app_write(&n1, "lost").unwrap();
    let lost_pos = n1.pos();
    c.fail_over("node-2").await.unwrap();
    c.resume_replication();
    assert_eq!(rows(&n2), ["kept"]);
    let t = app_write(&n2, "new").unwrap();
    assert_eq!(t, lost, "the new primary continues from its own position");
    // The same TXID in two histories: the checksums, of the content, tell them apart.
    let new_pos = n2.pos();
    assert_ne!(
        lost_pos.1, new_pos.1,
        "divergent writes, divergent checksums"
    );
    // The old primary rejoins as a replica and is reset to the new primary's state,
    // checksum included.
    let end = std::time::Instant::now() + DEADLINE;
    while !(n1.pos() == new_pos && rows(&n1) == ["kept", "new"]) {
        assert!(
            std::time::Instant::now() < end,
            "old primary not reset: {:?} at {}",
            rows(&n1),
            n1.txid()
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_app_commits_are_watched() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), Lag::random_ms(1, 10), true);
    let (n1, n2) = (c.nodes()[0].clone(), c.nodes()[1].clone());
    // The "foreign app": plain SQLite, no commit calls.
    let conn = Connection::open(n1.db_path()).unwrap();
    conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
    let mut last = c.sync().unwrap();
    assert!(last >= 1);
    for i in 0..30 {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [i.to_string()])
            .unwrap();
        let now = c.sync().unwrap();
        assert!(now > last, "commit {i} not counted");
        last = now;
    }
    assert!(c.wait_replicated(DEADLINE).await);
    assert_eq!(rows(&n2).len(), 30);
    assert_eq!(c.foreign_writes(), 0);
    // A stray write on a replica fails.
    let r = Connection::open(n2.db_path()).unwrap();
    let err = r.execute("INSERT INTO t (v) VALUES ('x')", []).unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
}
