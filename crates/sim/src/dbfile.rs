//! The SQLite database file of a node: snapshots of the primary's database, delivery into a
//! replica's file with the backup API, and the read-only marking of replica files.
//!
//! LiteFS refuses writes on a replica at the FUSE layer, so the app's SQLite reports
//! "attempt to write a readonly database". The sim has no FUSE and runs as any user
//! (root ignores file modes), so it marks a replica's file through SQLite itself: a file
//! whose header "write version" (byte 18) is above 2 is read-only to every SQLite
//! connection, in any process, while it stays readable. Replica files are therefore kept
//! in rollback-journal mode with header bytes 18/19 = 3/1.
//!
//! Limits: a connection that has read the file while it was read-only stays read-only
//! after a promotion (SQLite keeps the flag per connection), so an app should open a new
//! connection per request or reopen on that error, as Django does by default. The patch
//! and un-patch of byte 18 are raw writes outside SQLite's locks: a write racing the
//! moment in which a delivery re-opens the file can slip through (and is then
//! overwritten by the delivery, which counts it as a foreign write). Only an app in
//! another process can: one in the sim's process takes [`crate::Node::app_write`], which
//! deliveries exclude.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

/// Offset of the write version / read version bytes in the SQLite header.
const WRITE_VERSION: u64 = 18;
/// Offset of the file change counter (incremented by every rollback-mode commit).
const CHANGE_COUNTER: u64 = 24;
/// Offset of "version-valid-for", which SQLite expects to equal the change counter.
const VERSION_VALID_FOR: u64 = 92;
/// Write version that makes a file read-only to SQLite.
const READ_ONLY_VERSION: u8 = 3;
/// Write/read version of a rollback-journal database.
const LEGACY_VERSION: u8 = 1;

/// How long SQLite waits for another connection's lock during a snapshot or delivery.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first 100 bytes of a SQLite file, if it has that many.
fn read_header(path: &Path) -> io::Result<Option<[u8; 100]>> {
    let mut h = [0u8; 100];
    match crate::fdcache::read_start(path, &mut h) {
        Ok(()) if h.starts_with(b"SQLite format 3\0") => Ok(Some(h)),
        Ok(()) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn u32_at(h: &[u8; 100], off: u64) -> u32 {
    let o = usize::try_from(off).unwrap_or(0);
    u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}

/// The file change counter of a rollback-mode database (`None`: no database yet).
pub(crate) fn change_counter(path: &Path) -> io::Result<Option<u32>> {
    Ok(read_header(path)?.map(|h| u32_at(&h, CHANGE_COUNTER)))
}

/// Whether SQLite treats the file as read-only because of its header.
pub fn is_marked_read_only(path: &Path) -> io::Result<bool> {
    Ok(read_header(path)?.is_some_and(|h| h[WRITE_VERSION as usize] > 2))
}

/// Marks an existing database read-only (`true`) or writable again (`false`) and bumps
/// its change counter so other connections re-read the header. A database in WAL mode is
/// first switched to rollback mode, which needs every other connection closed. No-op when
/// there is no database yet.
/// Returns the change counter written, when the header was patched.
pub fn set_read_only(path: &Path, read_only: bool) -> anyhow::Result<Option<u32>> {
    let Some(h) = read_header(path)? else {
        return Ok(None);
    };
    let (write_v, read_v) = (h[WRITE_VERSION as usize], h[WRITE_VERSION as usize + 1]);
    if read_v == 2 {
        if !read_only {
            return Ok(None); // A WAL database is writable.
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .with_context(|| format!("switching {} out of WAL mode", path.display()))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("delete"),
            "{} stays in {mode} mode (other connections open?)",
            path.display()
        );
        drop(conn);
        return set_read_only(path, true);
    }
    let want = if read_only {
        READ_ONLY_VERSION
    } else {
        LEGACY_VERSION
    };
    if write_v == want {
        return Ok(None);
    }
    let new_counter = u32_at(&h, CHANGE_COUNTER).wrapping_add(1);
    let counter = new_counter.to_be_bytes();
    let write_at = |off, bytes: &[u8]| crate::fdcache::write_at(path, off, bytes);
    write_at(WRITE_VERSION, &[want])?;
    write_at(CHANGE_COUNTER, &counter)?;
    if u32_at(&h, VERSION_VALID_FOR) == u32_at(&h, CHANGE_COUNTER) {
        write_at(VERSION_VALID_FOR, &counter)?;
    }
    Ok(Some(new_counter))
}

/// Copies the database at `source` (a live primary database, any journal mode) into a
/// new file `dest` through the backup API, as one consistent read transaction, and marks
/// the copy as a read-only rollback-mode database, ready to be delivered to replicas.
/// Returns `false` when the source has no database yet.
pub(crate) fn snapshot(source: &Path, dest: &Path) -> anyhow::Result<bool> {
    if read_header(source)?.is_none() {
        return Ok(false);
    }
    let _ = fs::remove_file(dest);
    {
        let src = Connection::open_with_flags(
            source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(BUSY_TIMEOUT)?;
        let mut dst = Connection::open(dest)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        step_to_end(&backup).with_context(|| format!("snapshot of {}", source.display()))?;
    }
    // A fresh file no connection has open: a plain descriptor is fine (and not cached).
    std::fs::OpenOptions::new()
        .write(true)
        .open(dest)?
        .write_all_at(&[READ_ONLY_VERSION, LEGACY_VERSION], WRITE_VERSION)?;
    Ok(true)
}

/// The primary's whole database as bytes, for a stream frame: a [`snapshot`] into a
/// scratch file, read back. `None` when there is no database yet.
pub(crate) fn snapshot_bytes(source: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let scratch = tempfile::Builder::new()
        .prefix("litefs-sim-snapshot-")
        .tempdir()?;
    let dest = scratch.path().join("db");
    if !snapshot(source, &dest)? {
        return Ok(None);
    }
    Ok(Some(fs::read(&dest)?))
}

/// [`deliver`] for a database received as bytes.
pub(crate) fn deliver_bytes(bytes: &[u8], dest: &Path) -> anyhow::Result<u32> {
    let scratch = tempfile::Builder::new()
        .prefix("litefs-sim-delivery-")
        .tempdir()?;
    let file = scratch.path().join("db");
    fs::write(&file, bytes)?;
    deliver(&file, dest)
}

/// Replaces the content of the replica database at `dest` with the snapshot at `snapshot`
/// in place (readers with open connections see the new content, as on LiteFS), leaving it
/// read-only. Returns the change counter the file has afterwards.
pub(crate) fn deliver(snapshot: &Path, dest: &Path) -> anyhow::Result<u32> {
    // The backup needs a writable destination: lift the mark for the moment the backup
    // connection opens; the snapshot's page 1 brings it back inside the backup's commit.
    set_read_only(dest, false)?;
    {
        let src = Connection::open_with_flags(
            snapshot,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut dst = Connection::open(dest)?;
        dst.busy_timeout(BUSY_TIMEOUT)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        step_to_end(&backup).with_context(|| format!("delivery into {}", dest.display()))?;
    }
    // A replica database that was in WAL mode comes out of the backup in WAL mode again.
    set_read_only(dest, true)?;
    change_counter(dest)?.context("replica database vanished after delivery")
}

fn step_to_end(backup: &rusqlite::backup::Backup<'_, '_>) -> rusqlite::Result<()> {
    use rusqlite::backup::StepResult;
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => continue,
            StepResult::Busy | StepResult::Locked if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            StepResult::Busy | StepResult::Locked => {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("backup: database stayed locked".into()),
                ))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn replica_is_readable_not_writable_and_promotion_lifts_it() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("p.db");
        let snap = dir.path().join("snap.db");
        let replica = dir.path().join("r.db");
        let p = Connection::open(&primary).unwrap();
        p.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(snapshot(&primary, &snap).unwrap());
        deliver(&snap, &replica).unwrap();
        assert!(is_marked_read_only(&replica).unwrap());
        // A reader that stays open across deliveries sees the new content.
        let reader = Connection::open(&replica).unwrap();
        assert_eq!(count(&replica), 1);
        p.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert!(snapshot(&primary, &snap).unwrap());
        let counter = deliver(&snap, &replica).unwrap();
        assert_eq!(counter, change_counter(&replica).unwrap().unwrap());
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let err = reader.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        let err = Connection::open(&replica)
            .unwrap()
            .execute("INSERT INTO t VALUES (3)", [])
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        // Promotion: new connections can write; integrity holds.
        set_read_only(&replica, false).unwrap();
        let w = Connection::open(&replica).unwrap();
        w.execute("INSERT INTO t VALUES (4)", []).unwrap();
        let ok: String = w
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // Demotion again (rollback mode): read-only for new connections.
        set_read_only(&replica, true).unwrap();
        assert!(Connection::open(&replica)
            .unwrap()
            .execute("INSERT INTO t VALUES (5)", [])
            .is_err());
        assert_eq!(count(&replica), 3);
    }

    #[test]
    fn no_database_yet() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        assert!(!snapshot(&missing, &dir.path().join("s.db")).unwrap());
        assert_eq!(change_counter(&missing).unwrap(), None);
        set_read_only(&missing, true).unwrap();
        assert!(!missing.exists());
    }
}
