//! One simulated LiteFS node: its mount directory (`<db>-pos`, `.primary`, `.lag`), its
//! position and role, and the event feed behind its `/events` API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::dbfile;
use crate::event::{now_ms, Event};
use crate::pos;

/// Events buffered per `/events` subscriber before it is cut off (LiteFS's
/// `EventChannelBufferSize`).
pub const EVENT_BUFFER: usize = 1024;

/// SQLite page size the sim reports in `tx` events (and uses for the databases it creates).
pub const PAGE_SIZE: u32 = 4096;

/// How a node starts.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The mount directory (created if missing); holds `<db>`, `<db>-pos`, `.primary`, `.lag`.
    pub mount: PathBuf,
    /// Database name, e.g. `db.sqlite3`.
    pub db: String,
    /// This node's hostname (what other nodes' `.primary` holds when this one is primary).
    pub hostname: String,
    pub is_primary: bool,
    /// The primary this replica is connected to; `None` = not connected. Ignored on a primary.
    pub primary_hostname: Option<String>,
}

/// A cheaply cloneable handle on one simulated LiteFS node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    mount: PathBuf,
    db: String,
    hostname: String,
    /// LiteFS's node ID (`Litefs-Id` on the stream, `nodeID` of `/handoff`).
    id: u64,
    /// Replicas connected to this node's stream, by node ID: where a handoff frame goes.
    subscribers: Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>,
    /// Where `/handoff` requests go while a lease loop runs this node; without one the
    /// node hands off at once with an empty lease ID (a static cluster's planned move).
    handoff_handler: Mutex<Option<mpsc::UnboundedSender<HandoffRequest>>>,
    /// The advertise URL of the primary this replica streams from, for `/promote`.
    primary_url: Mutex<Option<String>>,
    /// The cluster ID once known (`/info`'s `clusterID`), set by the lease loop.
    cluster_id: Mutex<Option<String>>,
    /// Position, role and lag; also serializes file writes and event sends so the files
    /// and the event stream always agree on the order of changes.
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    /// The TXID for in-process waiters (replication, tests), without parsing files.
    txid: watch::Sender<u64>,
    /// Bumped on every role change, for in-process followers (replication).
    role: watch::Sender<Role>,
    /// The change counter the sim's own header patch (read-only marking) last wrote, so
    /// the commit watcher does not mistake it for an app's commit. 0: none.
    own_counter: AtomicU64,
    /// Held (write) by a delivery into this node's database, whose backup lifts the
    /// read-only mark for a moment; held (read) by writes of apps in this process.
    delivery: RwLock<()>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    txid: u64,
    checksum: u64,
    role: Role,
    lag_ms: i64,
}

/// A `POST /handoff` for the lease loop: hand the lease to replica `node_id`, answer on
/// `done` once the handoff frame is on its stream (or why not).
pub struct HandoffRequest {
    pub node_id: u64,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// A node's role as LiteFS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub is_primary: bool,
    /// The primary this node is connected to; always `None` on the primary.
    pub primary_hostname: Option<String>,
}

impl Node {
    /// Creates the node and its mount directory, writes `.primary` and `.lag` for the
    /// configured role, and marks an existing database read-only on a replica (writable on
    /// the primary; see [`crate::dbfile`]). A `<db>-pos` already in the mount (a restarted node) is resumed;
    /// otherwise there is none until the first commit, as with a database LiteFS has not
    /// seen created yet.
    ///
    /// Panics if the mount directory cannot be created or written (test support).
    pub fn new(config: NodeConfig) -> Node {
        std::fs::create_dir_all(&config.mount).unwrap_or_else(|e| {
            panic!(
                "litefs-sim: cannot create mount {}: {e}",
                config.mount.display()
            )
        });
        let (txid, checksum) = std::fs::read_to_string(pos::pos_path(&config.mount, &config.db))
            .ok()
            .and_then(|text| pos::parse_pos(&text))
            .unwrap_or((0, 0));
        let role = Role {
            is_primary: config.is_primary,
            primary_hostname: if config.is_primary {
                None
            } else {
                config.primary_hostname.clone()
            },
        };
        let lag_ms = 0;
        let node = Node {
            inner: Arc::new(Inner {
                mount: config.mount,
                db: config.db,
                id: node_id_of(&config.hostname),
                hostname: config.hostname,
                subscribers: Mutex::new(HashMap::new()),
                handoff_handler: Mutex::new(None),
                primary_url: Mutex::new(None),
                cluster_id: Mutex::new(None),
                state: Mutex::new(State {
                    txid,
                    checksum,
                    role: role.clone(),
                    lag_ms,
                }),
                events: broadcast::channel(EVENT_BUFFER).0,
                txid: watch::channel(txid).0,
                role: watch::channel(role.clone()).0,
                own_counter: AtomicU64::new(0),
                delivery: RwLock::new(()),
            }),
        };
        let written = pos::write_primary(&node.inner.mount, role.primary_hostname.as_deref())
            .and_then(|()| pos::write_lag(&node.inner.mount, lag_ms));
        if let Err(e) = written {
            panic!(
                "litefs-sim: cannot write to mount {}: {e}",
                node.inner.mount.display()
            );
        }
        node.mark_db(role.is_primary);
        node
    }

    pub fn mount(&self) -> &Path {
        &self.inner.mount
    }

    pub fn db(&self) -> &str {
        &self.inner.db
    }

    /// The path of the database file, `<mount>/<db>`.
    pub fn db_path(&self) -> PathBuf {
        self.inner.mount.join(&self.inner.db)
    }

    /// The path of the position file, `<mount>/<db>-pos`.
    pub fn pos_path(&self) -> PathBuf {
        pos::pos_path(&self.inner.mount, &self.inner.db)
    }

    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    pub fn txid(&self) -> u64 {
        self.state().txid
    }

    /// LiteFS's node ID of this node (stable: derived from the hostname).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Registers replica `node_id` as connected to this node's stream; handoff frames for
    /// it arrive on the receiver. It stays registered until [`Node::unsubscribe`].
    pub(crate) fn subscribe_stream(&self, node_id: u64) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).insert(node_id, tx);
        rx
    }

    pub(crate) fn unsubscribe_stream(&self, node_id: u64) {
        lock(&self.inner.subscribers).remove(&node_id);
    }

    /// Whether replica `node_id` is connected to this node's stream.
    pub fn has_subscriber(&self, node_id: u64) -> bool {
        lock(&self.inner.subscribers).contains_key(&node_id)
    }

    /// Puts a handoff frame carrying `lease_id` on replica `node_id`'s stream (which then
    /// ends). The caller stops being primary.
    pub(crate) fn send_handoff(&self, node_id: u64, lease_id: &str) -> Result<(), String> {
        let subs = lock(&self.inner.subscribers);
        let tx = subs
            .get(&node_id)
            .ok_or_else(|| "target node is not currently connected".to_owned())?;
        tx.send(lease_id.to_owned())
            .map_err(|_| "node is no longer connected".to_owned())
    }

    /// The API URL of the primary this replica streams from (what `/promote` asks).
    pub fn primary_url(&self) -> Option<String> {
        lock(&self.inner.primary_url).clone()
    }

    pub(crate) fn set_primary_url(&self, url: Option<String>) {
        *lock(&self.inner.primary_url) = url;
    }

    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.inner.cluster_id).clone()
    }

    pub fn set_cluster_id(&self, id: &str) {
        *lock(&self.inner.cluster_id) = Some(id.to_owned());
    }

    /// Routes `/handoff` requests to a lease loop from now on.
    pub(crate) fn set_handoff_handler(&self, tx: mpsc::UnboundedSender<HandoffRequest>) {
        *lock(&self.inner.handoff_handler) = Some(tx);
    }

    /// LiteFS's `Store.Handoff`: this node must be primary and `node_id` connected. With a
    /// lease loop, the loop renews, sends the lease and steps down; without one, the node
    /// sends an empty lease ID and becomes a disconnected replica at once.
    pub async fn handoff(&self, node_id: u64) -> Result<(), String> {
        if !self.is_primary() {
            return Err("node is not currently primary".into());
        }
        if !self.has_subscriber(node_id) {
            return Err("target node is not currently connected".into());
        }
        let handler = lock(&self.inner.handoff_handler).clone();
        match handler {
            Some(h) => {
                let (done, rx) = oneshot::channel();
                h.send(HandoffRequest { node_id, done })
                    .map_err(|_| "lease loop is gone".to_owned())?;
                rx.await.map_err(|_| "lease loop is gone".to_owned())?
            }
            None => {
                // LiteFS's order: the lease goes on the stream, then the primary steps down.
                self.send_handoff(node_id, "")?;
                self.set_role(false, None);
                Ok(())
            }
        }
    }

    /// TXID and post-apply checksum, as in `<db>-pos`.
    pub fn pos(&self) -> (u64, u64) {
        let s = self.state();
        (s.txid, s.checksum)
    }

    pub fn is_primary(&self) -> bool {
        self.state().role.is_primary
    }

    /// The primary this node is connected to (`None` on the primary and when disconnected).
    pub fn primary_hostname(&self) -> Option<String> {
        self.state().role.primary_hostname.clone()
    }

    pub fn role(&self) -> Role {
        self.state().role.clone()
    }

    pub fn lag_ms(&self) -> i64 {
        self.state().lag_ms
    }

    /// Moves the position to `txid` with the deterministic per-TXID checksum
    /// ([`pos::fake_checksum`]): writes `<db>-pos`, then publishes a `tx` event. A test-driven
    /// move that models "the same history on every node": a replica moved with `set_txid`
    /// to a TXID a primary reached with [`Node::commit`] is at the primary's position,
    /// checksum included. Not what LiteFS does for an app's commit (see
    /// [`Node::commit_content`]).
    pub fn set_txid(&self, txid: u64) {
        let mut state = self.state();
        self.apply_txid(&mut state, txid);
    }

    /// Records one committed transaction with the deterministic per-TXID checksum: TXID + 1,
    /// `<db>-pos` written, `tx` event sent. Returns the new TXID. For tests' in-process apps
    /// that then move other nodes with [`Node::set_txid`], keeping them in one history; the
    /// demo app and the commit watcher use [`Node::commit_content`].
    pub fn commit(&self) -> u64 {
        let mut state = self.state();
        let txid = state.txid + 1;
        self.apply_txid(&mut state, txid);
        txid
    }

    /// Records one commit an app made to the database file, as LiteFS does: TXID + 1, with a
    /// post-apply checksum computed from the database's content ([`pos::content_checksum`]
    /// of the file and its `-wal`), so two histories that reach the same TXID with different
    /// writes have different checksums. Replicas take this checksum from the frames they
    /// apply. Returns the new TXID.
    pub fn commit_content(&self) -> u64 {
        let mut state = self.state();
        let txid = state.txid + 1;
        self.apply_content(&mut state, txid);
        txid
    }

    /// For the commit watcher: calls `seen(is_primary, own_patch)` while no role change
    /// can land (so the database it reads and the role it is told belong together), and
    /// records one commit when it returns `true` on the primary. `own_patch` is
    /// [`Node::own_header_counter`]. Returns the new TXID when a commit was recorded.
    pub(crate) fn commit_if(&self, seen: impl FnOnce(bool, Option<u32>) -> bool) -> Option<u64> {
        let mut state = self.state();
        let is_primary = state.role.is_primary;
        if !seen(is_primary, self.own_header_counter()) || !is_primary {
            return None;
        }
        let txid = state.txid + 1;
        self.apply_content(&mut state, txid);
        Some(txid)
    }

    /// Moves the position to `txid` with `checksum` as given: what replication does with the
    /// primary's checksum from a frame, and a test's way to put this node at a position of
    /// another history than its peers' (e.g. a replica that kept a write the new primary
    /// never saw). Writes `<db>-pos`, then publishes a `tx` event.
    pub fn set_pos(&self, txid: u64, checksum: u64) {
        let mut state = self.state();
        self.apply_pos(&mut state, txid, checksum);
    }

    fn apply_txid(&self, state: &mut State, txid: u64) {
        let checksum = pos::fake_checksum(&self.inner.db, txid);
        self.apply_pos(state, txid, checksum);
    }

    fn apply_content(&self, state: &mut State, txid: u64) {
        let db = self.db_path();
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let checksum = pos::content_checksum(&[&db, Path::new(&wal)]);
        self.apply_pos(state, txid, checksum);
    }

    fn apply_pos(&self, state: &mut State, txid: u64, checksum: u64) {
        state.txid = txid;
        state.checksum = checksum;
        if let Err(e) = pos::write_pos(&self.inner.mount, &self.inner.db, txid, checksum) {
            tracing::error!(error = %e, mount = %self.inner.mount.display(), "litefs-sim: writing position");
        }
        let _ = self.inner.events.send(Event::Tx {
            db: self.inner.db.clone(),
            txid,
            post_apply_checksum: checksum,
            page_size: PAGE_SIZE,
            commit: self.page_count(),
            timestamp_ms: now_ms(),
        });
        self.inner.txid.send_replace(txid);
    }

    /// Database size in pages, as the LTX header's `commit` field reports it.
    fn page_count(&self) -> u32 {
        std::fs::metadata(self.db_path())
            .map(|m| u32::try_from(m.len() / u64::from(PAGE_SIZE)).unwrap_or(u32::MAX))
            .unwrap_or(0)
            .max(1)
    }

    /// Changes the role with LiteFS's `.primary` semantics: on a replica connected to a
    /// primary (`primary_hostname` `Some`) the file holds `<hostname>\n`; on the primary and
    /// on a disconnected replica it is absent. Publishes a `primaryChange` event
    /// The database file becomes writable on promotion and read-only on demotion.
    pub fn set_role(&self, is_primary: bool, primary_hostname: Option<&str>) {
        let mut state = self.state();
        let role = Role {
            is_primary,
            primary_hostname: if is_primary {
                None
            } else {
                primary_hostname.map(str::to_owned)
            },
        };
        if let Err(e) = pos::write_primary(&self.inner.mount, role.primary_hostname.as_deref()) {
            tracing::error!(error = %e, mount = %self.inner.mount.display(), "litefs-sim: writing .primary");
        }
        self.mark_db(is_primary);
        if is_primary {
            // The primary has no lag by definition (LiteFS reports 0).
            self.apply_lag(&mut state, 0);
        }
        state.role = role.clone();
        let _ = self.inner.events.send(Event::PrimaryChange {
            is_primary,
            hostname: role.primary_hostname.clone(),
        });
        self.inner.role.send_replace(role);
    }

    /// Makes the database file writable on the primary and read-only on a replica, as
    /// LiteFS does (see [`crate::dbfile`]).
    fn mark_db(&self, is_primary: bool) {
        match dbfile::set_read_only(&self.db_path(), !is_primary) {
            Ok(Some(counter)) => self
                .inner
                .own_counter
                .store(u64::from(counter) + 1, Ordering::SeqCst),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), db = %self.db_path().display(), "litefs-sim: marking the database")
            }
        }
    }

    /// For an app running in this process (the bundled demo app): hold it while writing,
    /// so the write never lands in the instant a delivery has lifted a replica's read-only
    /// mark. It then meets the mark and fails as on LiteFS, whose FUSE layer refuses a
    /// replica's writes at every instant. A foreign app (another process) cannot take it;
    /// see [`crate::dbfile`] for that window.
    pub fn app_write(&self) -> RwLockReadGuard<'_, ()> {
        self.inner
            .delivery
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Held by replication while it replaces this node's database.
    pub(crate) fn delivering(&self) -> RwLockWriteGuard<'_, ()> {
        self.inner
            .delivery
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database change counter the sim's own last header patch wrote (not a commit).
    pub(crate) fn own_header_counter(&self) -> Option<u32> {
        match self.inner.own_counter.load(Ordering::SeqCst) {
            0 => None,
            n => u32::try_from(n - 1).ok(),
        }
    }

    /// Sets the replication lag LiteFS reports in `<mount>/.lag` (`%+010d\n`).
    pub fn set_lag_ms(&self, lag_ms: i64) {
        let mut state = self.state();
        self.apply_lag(&mut state, lag_ms);
    }

    fn apply_lag(&self, state: &mut State, lag_ms: i64) {
        state.lag_ms = lag_ms;
        if let Err(e) = pos::write_lag(&self.inner.mount, lag_ms) {
            tracing::error!(error = %e, mount = %self.inner.mount.display(), "litefs-sim: writing .lag");
        }
    }

    /// The `init` event for a new subscriber and the feed of later events, taken at one
    /// instant so nothing is missed or seen twice.
    pub fn subscribe(&self) -> (Event, broadcast::Receiver<Event>) {
        let state = self.state();
        let rx = self.inner.events.subscribe();
        let init = Event::Init {
            is_primary: state.role.is_primary,
            hostname: state.role.primary_hostname.clone(),
        };
        (init, rx)
    }

    /// Event feeds open on this node (one per `/events` stream): lets a test wait until a
    /// follower of `/events` will see every later event.
    pub fn event_subscribers(&self) -> usize {
        self.inner.events.receiver_count()
    }

    /// Follows the TXID without reading files.
    pub fn watch_txid(&self) -> watch::Receiver<u64> {
        self.inner.txid.subscribe()
    }

    /// Follows role changes.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.inner.role.subscribe()
    }

    /// Waits until the TXID is at least `txid`; `false` if `timeout` passed first.
    pub async fn wait_for_txid(&self, txid: u64, timeout: Duration) -> bool {
        let mut rx = self.watch_txid();
        tokio::time::timeout(timeout, rx.wait_for(|t| *t >= txid))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that
        // matters to a test double; keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// LiteFS generates a random node ID once per data directory; the sim derives it from
/// the hostname (FNV-1a), so it is stable across restarts as LiteFS's is.
pub fn node_id_of(hostname: &str) -> u64 {
    let mut h = crate::app::Fnv64::new();
    h.update(hostname.as_bytes());
    h.0.max(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Node")
            .field("hostname", &self.inner.hostname)
            .field("mount", &self.inner.mount)
            .field("db", &self.inner.db)
            .field("txid", &s.txid)
            .field("role", &s.role)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, is_primary: bool, primary: Option<&str>) -> Node {
        Node::new(NodeConfig {
            mount: dir.to_path_buf(),
            db: "db.sqlite3".into(),
            hostname: "node-2".into(),
            is_primary,
            primary_hostname: primary.map(str::to_owned),
        })
    }

    fn read(dir: &Path, name: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(name)).ok()
    }

    #[test]
    fn primary_file_follows_litefs_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A primary has no .primary even if told a primary hostname.
        let n = node(d, true, Some("node-9"));
        assert_eq!(read(d, ".primary"), None);
        assert_eq!(n.primary_hostname(), None);
        // Replica connected to node-1.
        n.set_role(false, Some("node-1"));
        assert_eq!(read(d, ".primary").as_deref(), Some("node-1\n"));
        // Disconnected replica: absent.
        n.set_role(false, None);
        assert_eq!(read(d, ".primary"), None);
        n.set_role(false, Some("node-3"));
        assert_eq!(read(d, ".primary").as_deref(), Some("node-3\n"));
        // Promoted: absent again.
        n.set_role(true, Some("node-3"));
        assert_eq!(read(d, ".primary"), None);
        assert!(n.is_primary());
        // Starting as a connected replica writes it at once.
        let dir2 = tempfile::tempdir().unwrap();
        node(dir2.path(), false, Some("node-1"));
        assert_eq!(read(dir2.path(), ".primary").as_deref(), Some("node-1\n"));
    }

    #[test]
    fn commits_write_pos_and_resume_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let n = node(d, true, None);
        assert_eq!(n.txid(), 0);
        assert_eq!(
            read(d, "db.sqlite3-pos"),
            None,
            "no position before the db exists"
        );
        assert_eq!(n.commit(), 1);
        assert_eq!(n.commit(), 2);
        let text = read(d, "db.sqlite3-pos").unwrap();
        assert_eq!(
            text,
            pos::format_pos(2, pos::fake_checksum("db.sqlite3", 2))
        );
        assert_eq!(pos::parse_pos(&text).unwrap(), n.pos());
        n.set_txid(0x10);
        assert!(read(d, "db.sqlite3-pos")
            .unwrap()
            .starts_with("0000000000000010/"));
        drop(n);
        let again = node(d, true, None);
        assert_eq!(again.txid(), 0x10);
        assert_eq!(again.commit(), 0x11);
    }

    #[test]
    fn lag_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let n = node(d, false, Some("node-1"));
        assert_eq!(read(d, ".lag").as_deref(), Some("+000000000\n"));
        n.set_lag_ms(1234);
        assert_eq!(read(d, ".lag").as_deref(), Some("+000001234\n"));
        assert_eq!(n.lag_ms(), 1234);
        n.set_role(true, None);
        assert_eq!(read(d, ".lag").as_deref(), Some("+000000000\n"));
    }

    #[test]
    fn events_in_order_and_slow_subscriber_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path(), false, Some("node-1"));
        let (init, mut rx) = n.subscribe();
        assert_eq!(
            init,
            Event::Init {
                is_primary: false,
                hostname: Some("node-1".into())
            }
        );
        n.commit();
        n.set_role(true, None);
        match rx.try_recv().unwrap() {
            Event::Tx { txid: 1, db, .. } => assert_eq!(db, "db.sqlite3"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::PrimaryChange {
                is_primary: true,
                hostname: None
            }
        );
        // A subscriber that never reads: commits go on, the subscriber is told it lagged.
        for _ in 0..(EVENT_BUFFER + 10) {
            n.commit();
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[tokio::test]
    async fn wait_for_txid_wakes_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path(), true, None);
        assert!(!n.wait_for_txid(1, Duration::from_millis(10)).await);
        let n2 = n.clone();
        let waiter =
            tokio::spawn(async move { n2.wait_for_txid(3, Duration::from_secs(10)).await });
        for _ in 0..3 {
            n.commit();
        }
        assert!(waiter.await.unwrap());
    }
}
