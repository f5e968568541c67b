//! The local position of one database: a single watcher task per database feeds a
//! `watch` channel that waiting reads subscribe to, and records every position it observes
//! in a [`History`] against which a token's (TXID, checksum) is checked. The pos file lives on FUSE, where
//! inotify does not work, so it is re-read: every `pos_poll_interval` while reads are
//! waiting, every `IDLE_POLL` otherwise. The `events` source follows LiteFS's `/events`
//! stream and falls back to the pos file while the API is down.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

use crate::{
    config::TxidSource,
    history::{History, Seen, HISTORY_LEN},
    litefs_api::{Event, LitefsApi},
    token::Token,
    txid::{Position, TxId},
};

/// Re-read interval when nobody waits (keeps /litefs/status and metrics fresh).
const IDLE_POLL: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The local position of one database and the positions it has been at; cheap to clone.
#[derive(Clone)]
pub struct LocalTxid {
    inner: Arc<Inner>,
}

/// How a read's token compares with this node's database.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// The local TXID is below the token's: wait for replication.
    Behind,
    /// This node's database is at or past the token's position, in the token's history
    /// (or the token is a legacy one and the TXID is reached).
    Satisfied,
    /// This node was at the token's TXID with another checksum: another history. The read
    /// goes to the primary.
    Diverged,
    /// The TXID is reached but this node never observed its checksum (the poller skipped
    /// it, or it is older than the history kept). The read goes to the primary.
    Unverified,
}

struct Inner {
    pos_path: PathBuf,
    db: String,
    /// The local TXID (what waiting reads follow); set after `pos` and `history`.
    tx: watch::Sender<TxId>,
    /// The local position, TXID and checksum.
    pos: watch::Sender<Position>,
    /// Every position observed, for [`LocalTxid::check`]; written before the watches.
    history: RwLock<History>,
    /// Reads currently waiting; the poller speeds up while this is above zero.
    waiters: AtomicUsize,
    wake: Notify,
    /// Pos-file reads that found garbage (kept the last good value).
    bad_reads: AtomicU64,
    /// Poll at the fast pace even with no read waiting (`keep_fast`).
    fast: AtomicBool,
    /// Held across a pos-file read and its publication (`refresh_now`).
    refreshing: std::sync::Mutex<()>,
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
        let mut history = History::new(HISTORY_LEN);
        history.observe(start);
        LocalTxid {
            inner: Arc::new(Inner {
                pos_path,
                db: db.to_owned(),
                tx: watch::Sender::new(start.txid),
                pos: watch::Sender::new(start),
                history: RwLock::new(history),
                waiters: AtomicUsize::new(0),
                wake: Notify::new(),
                bad_reads: AtomicU64::new(0),
                fast: AtomicBool::new(false),
                refreshing: std::sync::Mutex::new(()),
            }),
        }
    }

    /// The local TXID.
    pub fn current(&self) -> TxId {
        *self.inner.tx.borrow()
    }

    /// Follows the local TXID.
    pub fn subscribe(&self) -> watch::Receiver<TxId> {
        self.inner.tx.subscribe()
    }

    /// The local position: TXID and post-apply checksum.
    pub fn position(&self) -> Position {
        *self.inner.pos.borrow()
    }

    /// Follows the local position (TXID and checksum); changes with every position the
    /// watcher observes.
    pub fn subscribe_position(&self) -> watch::Receiver<Position> {
        self.inner.pos.subscribe()
    }

    /// Compares a read's token with this node's database. Takes a read lock and a binary
    /// search; allocates nothing.
    pub fn check(&self, token: Token) -> TokenCheck {
        if self.current() < token.txid {
            return TokenCheck::Behind;
        }
        let Some(checksum) = token.checksum else {
            return TokenCheck::Satisfied;
        };
        let seen = self
            .inner
            .history
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .at(token.txid);
        match seen {
            Seen::Checksum(c) if c == checksum => TokenCheck::Satisfied,
            Seen::Checksum(_) => TokenCheck::Diverged,
            Seen::Unknown => TokenCheck::Unverified,
        }
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

    /// A fresh read of the pos file's TXID (after a write, the watch may not have caught
    /// up). `Ok(None)`: the database does not exist yet.
    pub fn read_file(&self) -> Result<Option<TxId>, ReadError> {
        Ok(self.read_position()?.map(|p| p.txid))
    }

    /// A fresh read of the pos file: TXID and checksum, what a token is minted from.
    /// `Ok(None)`: the database does not exist yet.
    pub fn read_position(&self) -> Result<Option<Position>, ReadError> {
        read_pos(&self.inner.pos_path)
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

    /// Records an observed position: history first, so a read released by the TXID watch
    /// finds the position's checksum already there.
    fn publish(&self, pos: Position) {
        self.inner
            .history
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(pos);
        self.inner.pos.send_if_modified(|cur| {
            let changed = *cur != pos;
            *cur = pos;
            changed
        });
        self.inner.tx.send_if_modified(|cur| {
            let changed = *cur != pos.txid;
            *cur = pos.txid;
            changed
        });
    }

    /// Re-reads the pos file and publishes it; garbage keeps the last good value.
    fn refresh(&self) {
        if let Err(e) = self.refresh_now() {
            let n = self.inner.bad_reads.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(error = %e, path = %self.inner.pos_path.display(), "ignoring bad position file");
            }
        }
    }

    /// A fresh read of the pos file, also recorded as observed (the poller's step, also
    /// taken by a write on the primary so its history holds the position it minted). Reads
    /// and records are serialized, so an older reading never lands after a newer one.
    pub fn refresh_now(&self) -> Result<Option<Position>, ReadError> {
        let _order = self
            .inner
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pos = self.read_position()?;
        self.publish(pos.unwrap_or_default());
        Ok(pos)
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
                            Ok(Event::Tx { db, position }) if db == self.inner.db => {
                                self.publish(position)
                            }
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

fn read_pos(path: &Path) -> Result<Option<Position>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Position::parse(&bytes)?)),
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

    fn pos(txid: u64, checksum: u64) -> Position {
        Position {
            txid: TxId(txid),
            post_apply_checksum: checksum,
        }
    }

    fn v2(txid: u64, checksum: u64) -> Token {
        Token::from(pos(txid, checksum))
    }

    #[test]
    fn tokens_are_checked_against_the_positions_observed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0000000000000003/8000000000000003\n");
        let t = LocalTxid::new(dir.path(), "db.sqlite3");
        assert_eq!(
            t.position(),
            pos(3, 0x8000_0000_0000_0003),
            "the start is observed"
        );
        assert_eq!(t.check(v2(3, 0x8000_0000_0000_0003)), TokenCheck::Satisfied);
        for p in [pos(4, 0x8004), pos(5, 0x8005), pos(9, 0x8009)] {
            t.publish(p);
        }
        assert_eq!(t.current(), TxId(9));
        assert_eq!(
            t.check(v2(5, 0x8005)),
            TokenCheck::Satisfied,
            "in our history"
        );
        assert_eq!(t.check(v2(9, 0x8009)), TokenCheck::Satisfied);
        assert_eq!(
            t.check(v2(5, 0xbad5)),
            TokenCheck::Diverged,
            "same TXID, other write"
        );
        assert_eq!(
            t.check(v2(7, 0x8007)),
            TokenCheck::Unverified,
            "skipped by the poller"
        );
        assert_eq!(
            t.check(v2(1, 0x8001)),
            TokenCheck::Unverified,
            "before the watcher"
        );
        assert_eq!(t.check(v2(10, 0x800a)), TokenCheck::Behind);
        // Legacy tokens: TXID only, whatever the history.
        assert_eq!(t.check(Token::legacy(TxId(7))), TokenCheck::Satisfied);
        assert_eq!(t.check(Token::legacy(TxId(9))), TokenCheck::Satisfied);
        assert_eq!(t.check(Token::legacy(TxId(10))), TokenCheck::Behind);

        // A snapshot of another history at 8: what was observed above it is forgotten.
        t.publish(pos(8, 0xb008));
        assert_eq!(t.check(v2(9, 0x8009)), TokenCheck::Behind);
        assert_eq!(t.check(v2(8, 0xb008)), TokenCheck::Satisfied);
        assert_eq!(
            t.check(v2(5, 0x8005)),
            TokenCheck::Satisfied,
            "the shared past"
        );
        assert_eq!(*t.subscribe_position().borrow(), pos(8, 0xb008));
        assert_eq!(*t.subscribe().borrow(), TxId(8));
    }

    /// The pos-file poller records what it reads, checksum included.
    #[test]
    fn pos_file_reads_are_observed() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTxid::new(dir.path(), "db.sqlite3");
        let mut rx = t.subscribe_position();
        write(dir.path(), "0000000000000002/95af056ca07d8ad1\n");
        t.refresh();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), pos(2, 0x95af_056c_a07d_8ad1));
        assert_eq!(t.check(v2(2, 0x95af_056c_a07d_8ad1)), TokenCheck::Satisfied);
        assert_eq!(t.check(v2(2, 0x95af_056c_a07d_8ad2)), TokenCheck::Diverged);
        assert_eq!(
            t.read_position().unwrap(),
            Some(pos(2, 0x95af_056c_a07d_8ad1))
        );
        t.refresh();
        assert!(
            !rx.has_changed().unwrap(),
            "a re-read of the same file is no change"
        );
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
