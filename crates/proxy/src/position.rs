//! The local TXID of one database: a single watcher task per database feeds a
//! `watch` channel that waiting reads subscribe to. The pos file lives on FUSE, where
//! inotify does not work, so it is re-read: every `pos_poll_interval` while reads are
//! waiting, every `IDLE_POLL` otherwise. The `events` source follows LiteFS's `/events`
//! stream and falls back to the pos file while the API is down.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

use crate::{
    config::TxidSource,
    litefs_api::{Event, LitefsApi},
    txid::{Position, TxId},
};

/// Re-read interval when nobody waits (keeps /litefs/status and metrics fresh).
const IDLE_POLL: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct LocalTxid {
    inner: Arc<Inner>,
}

struct Inner {
    pos_path: PathBuf,
    db: String,
    tx: watch::Sender<TxId>,
    /// Reads currently waiting; the poller speeds up while this is above zero.
    waiters: AtomicUsize,
    wake: Notify,
    /// Pos-file reads that found garbage (kept the last good value).
    bad_reads: AtomicU64,
    /// Poll at the fast pace even with no read waiting (`keep_fast`).
    fast: AtomicBool,
}

/// The pos file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading position file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Format(#[from] crate::txid::PositionError),
}

impl LocalTxid {
    /// Starts at the pos file's current value (0 when the database does not exist yet).
    pub fn new(mount: &Path, db: &str) -> LocalTxid {
        let pos_path = mount.join(format!("{db}-pos"));
        let start = read_pos(&pos_path).ok().flatten().unwrap_or_default();
        LocalTxid {
            inner: Arc::new(Inner {
                pos_path,
                db: db.to_owned(),
                tx: watch::Sender::new(start),
                waiters: AtomicUsize::new(0),
                wake: Notify::new(),
                bad_reads: AtomicU64::new(0),
                fast: AtomicBool::new(false),
            }),
        }
    }

    pub fn current(&self) -> TxId {
        *self.inner.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<TxId> {
        self.inner.tx.subscribe()
    }

    pub fn waiting(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
    }

    /// From now on, re-reads the pos file every `pos_poll_interval` even when no read waits
    /// (a replica whose primary waits for its position, see `sync_replicas`).
    pub fn keep_fast(&self) {
        self.inner.fast.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    pub fn bad_reads(&self) -> u64 {
        self.inner.bad_reads.load(Ordering::Relaxed)
    }

    /// A fresh read of the pos file (after a write, the watch may not have caught up).
    /// `Ok(None)`: the database does not exist yet.
    pub fn read_file(&self) -> Result<Option<TxId>, ReadError> {
        read_pos(&self.inner.pos_path)
    }

    /// A fresh read of the whole position (TXID and checksum); `Ok(None)` when the database
    /// does not exist yet.
    pub fn read_position(&self) -> Result<Option<Position>, ReadError> {
        match std::fs::read(&self.inner.pos_path) {
            Ok(bytes) => Ok(Some(Position::parse(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the local TXID reaches `target`, at most `timeout`. True if it did.
    pub async fn wait_for(&self, target: TxId, timeout: Duration) -> bool {
        let mut rx = self.inner.tx.subscribe();
        if *rx.borrow_and_update() >= target {
            return true;
        }
        let _waiting = WaiterGuard::enter(&self.inner);
        let reached = tokio::time::timeout(timeout, rx.wait_for(|t| *t >= target)).await;
        matches!(reached, Ok(Ok(_)))
    }

    fn publish(&self, txid: TxId) {
        self.inner.tx.send_if_modified(|cur| {
            let changed = *cur != txid;
            *cur = txid;
            changed
        });
    }

    /// Re-reads the pos file and publishes it; garbage keeps the last good value.
    fn refresh(&self) {
        match self.read_file() {
            Ok(t) => self.publish(t.unwrap_or_default()),
            Err(e) => {
                let n = self.inner.bad_reads.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(error = %e, path = %self.inner.pos_path.display(), "ignoring bad position file");
                }
            }
        }
    }

    /// Polls the pos file until `until` fires.
    async fn poll_file(&self, poll: Duration, until: impl std::future::Future<Output = ()>) {
        tokio::pin!(until);
        loop {
            self.refresh();
            let idle = self.inner.waiters.load(Ordering::Acquire) == 0
                && !self.inner.fast.load(Ordering::Relaxed);
            let pause = if idle { IDLE_POLL } else { poll };
            tokio::select! {
                _ = &mut until => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.inner.wake.notified(), if idle => {}
            }
        }
    }

    /// The watcher task: runs until `shutdown`.
    pub async fn run(
        self,
        source: TxidSource,
        api: Option<LitefsApi>,
        poll: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        match (source, api) {
            (TxidSource::Events, Some(api)) => {
                tokio::select! {
                    _ = shutdown => {}
                    _ = self.follow_events(api, poll) => {}
                }
            }
            _ => self.poll_file(poll, shutdown).await,
        }
    }

    async fn follow_events(&self, api: LitefsApi, poll: Duration) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match api.events().await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    // Commits between the fallback's last read and the stream's start.
                    self.refresh();
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(Event::Tx { db, txid }) if db == self.inner.db => self.publish(txid),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "LiteFS event stream failed");
                                break;
                            }
                        }
                    }
                    tracing::warn!(
                        "LiteFS event stream ended; polling the position file meanwhile"
                    );
                }
                Err(e) => tracing::debug!(error = %e, "LiteFS API down; polling the position file"),
            }
            self.poll_file(poll, tokio::time::sleep(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Counts a waiting read and wakes the poller for the duration of the wait.
struct WaiterGuard<'a>(&'a Inner);

impl<'a> WaiterGuard<'a> {
    fn enter(inner: &'a Inner) -> Self {
        if inner.waiters.fetch_add(1, Ordering::AcqRel) == 0 {
            inner.wake.notify_one();
        }
        WaiterGuard(inner)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

fn read_pos(path: &Path) -> Result<Option<TxId>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Position::parse(&bytes)?.txid)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `<mount>/.lag` in milliseconds (`%+010d\n`); `None` when absent or unreadable.
pub fn read_lag_ms(mount: &Path) -> Option<i64> {
    let s = std::fs::read_to_string(mount.join(".lag")).ok()?;
    s.trim_end_matches('\n').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, s: &str) {
        std::fs::write(dir.join("db.sqlite3-pos"), s).unwrap();
    }

    #[test]
    fn missing_db_is_txid_zero_and_garbage_keeps_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTxid::new(dir.path(), "db.sqlite3");
        assert_eq!(t.current(), TxId(0));
        assert!(matches!(t.read_file(), Ok(None)));
        write(dir.path(), "0000000000000003/0000000000000000\n");
        t.refresh();
        assert_eq!(t.current(), TxId(3));
        write(dir.path(), "garbage\n");
        t.refresh();
        assert_eq!(t.current(), TxId(3));
        assert_eq!(t.bad_reads(), 1);
    }

    #[test]
    fn lag_file_format() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_lag_ms(dir.path()), None);
        std::fs::write(dir.path().join(".lag"), "+000001500\n").unwrap();
        assert_eq!(read_lag_ms(dir.path()), Some(1500));
        std::fs::write(dir.path().join(".lag"), "-000000001\n").unwrap();
        assert_eq!(read_lag_ms(dir.path()), Some(-1));
    }

    /// Under paused time: a waiter is released by the poller once the file moves, and a
    /// waiter whose target never arrives times out at exactly its deadline.
    #[tokio::test(start_paused = true)]
    async fn waiters_are_released_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0000000000000001/0000000000000000\n");
        let t = LocalTxid::new(dir.path(), "db.sqlite3");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(t.clone().run(
            TxidSource::PosFile,
            None,
            Duration::from_millis(1),
            async {
                let _ = stop_rx.await;
            },
        ));
        assert!(t.wait_for(TxId(1), Duration::ZERO).await, "already there");

        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_for(TxId(2), Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(t.waiting(), 1);
        write(dir.path(), "0000000000000002/0000000000000000\n");
        assert!(waiter.await.unwrap());
        let released_after = start.elapsed();
        assert!(
            released_after < Duration::from_millis(303),
            "released {released_after:?} after start"
        );

        let start = tokio::time::Instant::now();
        assert!(!t.wait_for(TxId(9), Duration::from_secs(2)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(t.waiting(), 0);
        stop_tx.send(()).unwrap();
        watcher.await.unwrap();
    }
}
