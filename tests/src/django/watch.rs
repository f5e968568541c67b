//! Django's commits turned into TXIDs, and the counter published for the WSGI gate.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// The commit watcher's poll (see `litefs_sim::CommitWatcher`'s race window): a commit is
/// counted at most this long (plus a thread wake-up) after Django wrote it.
const WATCH_EVERY: Duration = Duration::from_micros(250);

/// Turns Django's commits on a node's database into TXIDs (`Node::commit`, so the sim stays
/// the only writer of the position), like `litefs_sim::CommitWatcher`, and also publishes
/// the change counter it has counted for `litefs_sim_gate.py`, which holds Django's
/// response until its commit is counted. It reads the header through a descriptor kept
/// open for the node's whole life: closing any descriptor of a file would drop every POSIX
/// lock this process holds on it, including those of the sim's replication connections
/// here (the sim's own watcher keeps its descriptors open for the same reason). Rollback-
/// journal databases only (Django's default; the sim keeps replicas in that mode anyway):
/// the header's change counter moves on every commit.
pub struct Watcher {
    shared: Arc<WatchShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WatchShared {
    node: litefs_sim::Node,
    /// Where the last change counter seen is published for `litefs_sim_gate.py`.
    counted: PathBuf,
    stop: AtomicBool,
    /// The open database file (once it exists) and the header bytes 24..32 last seen.
    state: Mutex<(Option<std::fs::File>, Option<[u8; 8]>)>,
}

impl Watcher {
    pub(super) fn spawn(node: litefs_sim::Node, counted: PathBuf) -> Watcher {
        let shared = Arc::new(WatchShared {
            node,
            counted,
            stop: AtomicBool::new(false),
            state: Mutex::new((None, None)),
        });
        shared.check();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("commit-watch-{}", s.node.hostname()))
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    s.check();
                    std::thread::sleep(WATCH_EVERY);
                }
            })
            .expect("watcher thread");
        Watcher {
            shared,
            thread: Some(thread),
        }
    }

    /// Counts every commit made so far; returns the TXID.
    pub fn sync(&self) -> u64 {
        self.shared.check();
        self.shared.node.txid()
    }
}

impl WatchShared {
    fn check(&self) {
        use std::os::unix::fs::FileExt;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.is_none() {
            st.0 = std::fs::File::open(self.node.db_path()).ok();
        }
        let Some(f) = st.0.as_ref() else { return };
        let mut h = [0u8; 8];
        if f.read_exact_at(&mut h, 24).is_err() {
            return;
        }
        if st.1 == Some(h) {
            return;
        }
        // The first sighting (the file appearing) is a commit too: on the primary it is
        // the migration creating the database.
        st.1 = Some(h);
        // On a replica, changes are replication's.
        if self.node.is_primary() {
            self.node.commit();
        }
        // Only now may the committing request answer (see `litefs_sim_gate.py`).
        let tmp = self.counted.with_extension("tmp");
        let counter = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if std::fs::write(&tmp, counter.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &self.counted);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
