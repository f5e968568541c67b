//! Raw reads and writes of database files without closing descriptors. POSIX record locks
//! belong to the process and the file: closing *any* descriptor of a file drops every lock
//! the process holds on it, including those of SQLite connections in the same process (the
//! sim's replication, an in-process app), which then corrupt each other. So descriptors
//! opened here stay open for the life of the process; a file replaced on disk (another
//! inode) gets a new descriptor, and the old one is kept as well.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

type Key = (PathBuf, bool);

fn cache() -> &'static Mutex<HashMap<Key, Vec<Arc<File>>>> {
    static FILES: OnceLock<Mutex<HashMap<Key, Vec<Arc<File>>>>> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// An open descriptor of `path` (for writing too when `write`), never closed.
fn descriptor(path: &Path, write: bool) -> io::Result<Arc<File>> {
    // stat() opens nothing, so it cannot drop locks.
    let ino = std::fs::metadata(path)?.ino();
    let mut files = cache().lock().unwrap_or_else(|p| p.into_inner());
    let list = files.entry((path.to_path_buf(), write)).or_default();
    if let Some(f) = list.last() {
        if f.metadata().map(|m| m.ino()).ok() == Some(ino) {
            return Ok(f.clone());
        }
    }
    let f = Arc::new(OpenOptions::new().read(true).write(write).open(path)?);
    list.push(f.clone());
    Ok(f)
}

/// Fills `buf` from offset 0 of `path`.
pub(crate) fn read_start(path: &Path, buf: &mut [u8]) -> io::Result<()> {
    descriptor(path, false)?.read_exact_at(buf, 0)
}

/// Writes `bytes` at `offset` of `path`.
pub(crate) fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
    descriptor(path, true)?.write_all_at(bytes, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether another process can read `db` right now (it cannot while we hold a lock).
    fn other_process_can_read(db: &Path) -> bool {
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=0)\nc.execute('SELECT count(*) FROM t').fetchall()";
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("python3 runs")
            .success()
    }

    /// The point of this module: raw access while a SQLite connection holds a lock must
    /// not release it. Locks are per process, so only another process can tell.
    #[test]
    fn raw_access_keeps_sqlite_locks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite3");
        let a = rusqlite::Connection::open(&db).unwrap();
        a.execute_batch("CREATE TABLE t(x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(
            !other_process_can_read(&db),
            "locked by the open transaction"
        );
        let mut h = [0u8; 100];
        for _ in 0..3 {
            read_start(&db, &mut h).unwrap();
        }
        write_at(&db, 18, &h[18..19]).unwrap();
        assert!(
            !other_process_can_read(&db),
            "raw access must not drop the lock"
        );
        a.execute_batch("COMMIT").unwrap();
        assert!(other_process_can_read(&db));
    }
}
