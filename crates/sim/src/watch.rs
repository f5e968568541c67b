//! Commit detection for a foreign app (e.g. Django) writing to the primary's database: a
//! thread polls the database file and advances the node's TXID after each commit it sees,
//! which makes the sim the only writer of `<db>-pos`, as LiteFS is.
//!
//! # Race window
//!
//! LiteFS advances the position inside the commit (FUSE sees the journal/WAL write), so the
//! app's response can never reach the proxy before the position moved. This watcher sees a
//! commit only at its next poll: from the moment the app's commit writes the database
//! header (rollback mode) or the WAL index (WAL mode) until the next poll plus the thread's
//! wake-up delay, normally at most `interval` + ~0.1 ms, more on an overloaded machine.
//! A response that reaches the proxy inside that window gets a token one commit short, and
//! a read routed to a replica on that token could miss the write. Django spends well over
//! a millisecond between a COMMIT and the response leaving gunicorn, but a request that
//! commits several times (the admin's transaction, then the session save) answers soon
//! after its last one, and an overloaded machine delays the poll: the window is real.
//! [`CommitWatcher::sync`] closes it exactly for callers in this process (e.g. call it
//! before asserting). Other processes (the Django harness's WSGI gate) cannot call it: on a
//! primary the watcher also writes the change counter it last accounted for to
//! `<db>-counted` ([`crate::pos::counted_path`]), after `<db>-pos`, so they can hold a
//! response until the counter their app's last commit wrote is counted, however late the
//! poll. Several commits inside one interval advance the TXID once, which the proxy does
//! not distinguish.
//!
//! The change is detected from the header's change counter (rollback journal) or the
//! WAL-index header in `<db>-shm` (WAL), read with plain file reads, so the poll takes no
//! SQLite lock and never delays the app's writers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::node::Node;

/// Default poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1);

/// Polls a node's database and records a commit after each change while the node is
/// primary, as [`Node::commit_content`] does (TXID + 1, the checksum of the database's
/// content). Stops when dropped.
pub struct CommitWatcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    node: Node,
    stop: AtomicBool,
    /// The fingerprint last seen; the mutex also serializes `sync` with the thread.
    last: Mutex<Option<Fingerprint>>,
    commits: AtomicU64,
}

/// What changes on every commit: the database header (change counter, page count) and,
/// in WAL mode, the WAL-index header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    header: [u8; 8],
    wal_index: Option<[u8; 96]>,
}

impl CommitWatcher {
    /// Starts watching `node`'s database every `interval` ([`DEFAULT_INTERVAL`] is 1 ms).
    /// The state at start is taken as already counted.
    pub fn spawn(node: Node, interval: Duration) -> CommitWatcher {
        let first = fingerprint(&node.db_path());
        let shared = Arc::new(Shared {
            node,
            stop: AtomicBool::new(false),
            last: Mutex::new(first),
            commits: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("litefs-sim-watch-{}", s.node.hostname()))
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    s.check();
                    std::thread::sleep(interval);
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("litefs-sim: cannot start the commit watcher thread");
        }
        CommitWatcher { shared, thread }
    }

    /// Checks the database now; returns the TXID after any commit it found. Call it to be
    /// sure every commit made so far is counted (closes the race window for this caller).
    pub fn sync(&self) -> u64 {
        self.shared.check();
        self.shared.node.txid()
    }

    /// Commits the watcher has turned into TXIDs.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn check(&self) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // The change counter of a change seen on a primary (a commit or the sim's marking).
        let mut accounted = None;
        // The file is read under the node's lock, so a promotion cannot land between the
        // read and the role check: a pre-promotion change would otherwise be judged
        // against the post-promotion role and counted as a commit.
        let committed = self.node.commit_if(|is_primary, own_patch| {
            let now = fingerprint(&self.node.db_path());
            if now == *last {
                return false;
            }
            if is_primary {
                accounted = now.as_ref().map(Fingerprint::counter);
            }
            // A database that disappeared is not a commit; on a replica, changes are
            // replication's (tracked, not counted); nor is the sim's own read-only marking
            // (a promotion bumps the change counter; an app commit after it bumps it
            // further).
            let commit = is_primary && now.as_ref().is_some_and(|f| Some(f.counter()) != own_patch);
            *last = now;
            commit
        });
        if let Some(txid) = committed {
            self.commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(txid, "litefs-sim: commit seen");
        }
        if let Some(counter) = accounted {
            let path = crate::pos::counted_path(self.node.mount(), self.node.db());
            if let Err(e) = crate::pos::write_atomic(&path, format!("{counter}\n").as_bytes()) {
                tracing::error!(error = %e, path = %path.display(), "litefs-sim: writing the counted change counter");
            }
        }
    }
}

impl Fingerprint {
    /// The rollback-mode file change counter (header offset 24).
    fn counter(&self) -> u32 {
        u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }
}

impl Drop for CommitWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fingerprint(db: &Path) -> Option<Fingerprint> {
    let mut h = [0u8; 100];
    crate::fdcache::read_start(db, &mut h).ok()?;
    let mut header = [0u8; 8];
    header.copy_from_slice(&h[24..32]);
    let wal_index = (h[19] == 2)
        .then(|| {
            let mut shm = PathBuf::from(db).into_os_string();
            shm.push("-shm");
            let mut idx = [0u8; 96];
            crate::fdcache::read_start(Path::new(&shm), &mut idx).ok()?;
            Some(idx)
        })
        .flatten();
    Some(Fingerprint { header, wal_index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;
    use std::time::Instant;

    fn wait(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn primary(dir: &Path) -> Node {
        Node::new(NodeConfig {
            mount: dir.to_path_buf(),
            db: "db.sqlite3".into(),
            hostname: "node-1".into(),
            is_primary: true,
            primary_hostname: None,
        })
    }

    #[test]
    fn each_commit_advances_txid_in_both_journal_modes() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let node = primary(dir.path());
            let watcher = CommitWatcher::spawn(node.clone(), DEFAULT_INTERVAL);
            let conn = rusqlite::Connection::open(node.db_path()).unwrap();
            if wal {
                conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                    .unwrap();
            }
            conn.execute_batch("CREATE TABLE t(x)").unwrap();
            wait(|| node.txid() >= 1);
            for i in 0..20 {
                let before = watcher.sync();
                conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
                // sync() counts the commit exactly, whatever the poll timing.
                assert!(watcher.sync() > before, "wal={wal} i={i}");
            }
            // Without sync: the thread alone notices.
            let before = node.txid();
            conn.execute("INSERT INTO t VALUES (99)", []).unwrap();
            wait(|| node.txid() > before);
            // No commits: no TXID movement.
            let settled = watcher.sync();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(node.txid(), settled, "wal={wal}");
        }
    }

    /// Two primaries whose apps write different rows reach the same TXID with different
    /// checksums (of the content, as LiteFS's). (Equal content is not asserted to give equal
    /// checksums here: the poll may hash a commit whose pages are still being written.)
    #[test]
    fn commits_are_checksummed_from_the_content() {
        let pos_after = |rows: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            let node = primary(dir.path());
            let watcher = CommitWatcher::spawn(node.clone(), DEFAULT_INTERVAL);
            let conn = rusqlite::Connection::open(node.db_path()).unwrap();
            conn.execute_batch("CREATE TABLE t(x)").unwrap();
            for r in rows {
                conn.execute("INSERT INTO t VALUES (?1)", [r]).unwrap();
                watcher.sync();
            }
            assert_eq!(node.txid(), 1 + rows.len() as u64);
            node.pos()
        };
        let a = pos_after(&["a", "b"]);
        let b = pos_after(&["a", "c"]);
        assert_eq!(a.0, b.0);
        assert_ne!(a.1, b.1, "same TXID, other history");
        assert!(a.1 >> 63 == 1 && b.1 >> 63 == 1, "ltx.ChecksumFlag");
    }

    #[test]
    fn the_counted_change_counter_follows_the_commits() {
        let dir = tempfile::tempdir().unwrap();
        let node = primary(dir.path());
        let watcher = CommitWatcher::spawn(node.clone(), DEFAULT_INTERVAL);
        let conn = rusqlite::Connection::open(node.db_path()).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let counted = || {
            let path = crate::pos::counted_path(node.mount(), node.db());
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        };
        for i in 0..5 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            watcher.sync();
            let header = crate::dbfile::change_counter(&node.db_path()).unwrap();
            assert_eq!(counted(), header, "after commit {i}");
        }
    }

    #[test]
    fn replica_changes_are_not_commits() {
        let dir = tempfile::tempdir().unwrap();
        let node = primary(dir.path());
        node.set_role(false, Some("node-2"));
        let watcher = CommitWatcher::spawn(node.clone(), DEFAULT_INTERVAL);
        let conn = rusqlite::Connection::open(node.db_path()).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert_eq!(watcher.sync(), 0);
        assert_eq!(watcher.commits(), 0);
        let counted = crate::pos::counted_path(node.mount(), node.db());
        assert!(!counted.exists(), "a replica accounts for nothing");
    }
}
