//! Durable Raft state in one SQLite file: the vote, the log, the committed pointer and the
//! (tiny: membership and lease state) state machine with its snapshot. WAL + `synchronous=FULL`, and every
//! call returns only after its transaction committed, so a vote is on disk before it is answered.
//!
//! The SQLite calls run inline on the Raft task: each is one short transaction (one fsync), and
//! openraft serializes storage IO anyway.

// StorageError is openraft's (large) error type, imposed by the storage traits.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lease::state::{LeaseResponse, LeaseState};
use crate::lease::LeaseShared;
use crate::types::{NodeId, TypeConfig};

type StResult<T> = Result<T, StorageError<NodeId>>;

/// File name of the database under `data_dir`.
pub const DB_FILE: &str = "raft.sqlite3";

/// Failure to open the database.
#[derive(Debug, thiserror::Error)]
#[error("opening raft store {path}: {source}")]
pub struct OpenError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

/// Shared handle to the SQLite connection; cloned into the log store, its readers and the
/// state machine (openraft serializes writes; the mutex serializes readers against them).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Open (or create) `<data_dir>/raft.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        let path = data_dir.join(DB_FILE);
        let wrap = |source| OpenError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(wrap)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);",
        )
        .map_err(wrap)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions), so a
        // poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        let conn = self.lock();
        let raw: Option<Vec<u8>> = conn
            .query_row("SELECT v FROM kv WHERE k = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| AnyError::new(&e))?;
        match raw {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AnyError::new(&e)),
        }
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AnyError> {
        let b = serde_json::to_vec(value).map_err(|e| AnyError::new(&e))?;
        let conn = self.lock();
        conn.execute(
            "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            params![key, b],
        )
        .map_err(|e| AnyError::new(&e))?;
        Ok(())
    }

    /// The persisted vote, read directly (tests and status).
    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.get(K_VOTE).ok().flatten()
    }
}

const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";
const K_SM: &str = "state_machine";
const K_SNAPSHOT: &str = "snapshot";

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: AnyError) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, e),
    }
}

fn sql_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: rusqlite::Error,
) -> StorageError<NodeId> {
    io_err(subject, verb, AnyError::new(&e))
}

/// The log half: [`RaftLogStorage`] and its reader.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        LogStore { store }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let read = |e| sql_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let conn = self.store.lock();
        // SQLite integers are i64; clamp so u64::MAX stays a valid upper bound.
        let (s, e) = (
            start.min(i64::MAX as u64) as i64,
            end.min(i64::MAX as u64) as i64,
        );
        let mut stmt = conn
            .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
            .map_err(read)?;
        let rows = stmt
            .query_map(params![s, e], |r| r.get::<_, Vec<u8>>(0))
            .map_err(read)?;
        let mut out = Vec::new();
        for row in rows {
            let raw = row.map_err(read)?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(&raw)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, AnyError::new(&e)))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self
            .store
            .get(K_PURGED)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_raw: Option<Vec<u8>> = {
            let conn = self.store.lock();
            conn.query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sql_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
        };
        let last = match last_raw {
            Some(raw) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(&raw)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, AnyError::new(&e)))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        self.store
            .put(K_VOTE, vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        self.store
            .get(K_VOTE)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        self.store
            .put(K_COMMITTED, &committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        Ok(self
            .store
            .get::<Option<LogId<NodeId>>>(K_COMMITTED)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = |e| sql_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        {
            let mut conn = self.store.lock();
            let tx = conn.transaction().map_err(write)?;
            {
                let mut stmt = tx
                    .prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                    .map_err(write)?;
                for entry in entries {
                    let raw = serde_json::to_vec(&entry).map_err(|e| {
                        io_err(ErrorSubject::Logs, ErrorVerb::Write, AnyError::new(&e))
                    })?;
                    stmt.execute(params![entry.log_id.index as i64, raw])
                        .map_err(write)?;
                }
            }
            tx.commit().map_err(write)?;
        }
        // Committed with synchronous=FULL: durable now.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let conn = self.store.lock();
        conn.execute("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(|e| sql_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        // Record the purge point first: a crash in between leaves extra entries, never a hole.
        self.store
            .put(K_PURGED, &Some(log_id))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let conn = self.store.lock();
        conn.execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(|e| sql_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}

/// What the state machine holds: where it is, the membership, and the lease endpoint's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// Absent in databases written before the lease endpoint existed.
    #[serde(default)]
    lease: LeaseState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The state machine half: [`RaftStateMachine`] persisted in the same database.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    /// The applied lease state, published after each persisted change for the HTTP endpoint.
    lease: LeaseShared,
}

impl StateMachine {
    /// Opens the state machine and publishes its stored lease state to `lease`.
    pub fn new(store: Store, lease: LeaseShared) -> StResult<Self> {
        let sm = StateMachine { store, lease };
        let st = sm.state()?;
        sm.publish(&st);
        Ok(sm)
    }

    fn publish(&self, st: &SmState) {
        self.lease
            .publish(&st.lease, st.last_applied.map(|l| l.index).unwrap_or(0));
    }

    fn state(&self) -> StResult<SmState> {
        Ok(self
            .store
            .get(K_SM)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
            .unwrap_or_default())
    }

    fn set_state(&self, st: &SmState) -> StResult<()> {
        self.store
            .put(K_SM, st)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let st = self.state()?;
        let data = serde_json::to_vec(&st).map_err(|e| {
            io_err(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                AnyError::new(&e),
            )
        })?;
        let snapshot_id = match &st.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: st.last_applied,
            last_membership: st.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.store
            .put(K_SNAPSHOT, &stored)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let st = self.state()?;
        Ok((st.last_applied, st.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<LeaseResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut st = self.state()?;
        let mut out = Vec::new();
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            let resp = match &entry.payload {
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    LeaseResponse::None
                }
                EntryPayload::Normal(cmd) => st.lease.apply(entry.log_id.index, cmd),
                EntryPayload::Blank => LeaseResponse::None,
            };
            out.push(resp);
        }
        self.set_state(&st)?;
        self.publish(&st);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        // The snapshot data is a serialized SmState; only its lease part is taken (position and
        // membership come from the meta).
        let lease = if data.is_empty() {
            LeaseState::default()
        } else {
            serde_json::from_slice::<SmState>(&data)
                .map_err(|e| {
                    io_err(
                        ErrorSubject::Snapshot(Some(meta.signature())),
                        ErrorVerb::Read,
                        AnyError::new(&e),
                    )
                })?
                .lease
        };
        let st = SmState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            lease,
        };
        self.set_state(&st)?;
        self.publish(&st);
        self.store
            .put(
                K_SNAPSHOT,
                &StoredSnapshot {
                    meta: meta.clone(),
                    data,
                },
            )
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self
            .store
            .get(K_SNAPSHOT)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn vote(term: u64, node: u64) -> Vote<NodeId> {
        Vote::new(term, node)
    }

    #[tokio::test]
    async fn vote_and_log_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut ls = LogStore::new(Store::open(dir.path()).expect("open"));
            assert_eq!(ls.read_vote().await.expect("read"), None);
            ls.save_vote(&vote(7, 42)).await.expect("save");
            let st = ls.get_log_state().await.expect("state");
            assert_eq!(st.last_log_id, None);
        }
        let mut ls = LogStore::new(Store::open(dir.path()).expect("reopen"));
        assert_eq!(ls.read_vote().await.expect("read"), Some(vote(7, 42)));
    }

    #[tokio::test]
    async fn lease_state_survives_reopen_and_travels_in_snapshots() {
        use crate::lease::state::{Command, LeaseRequest};
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), 3),
            payload: EntryPayload::Normal(Command {
                leader: 7,
                now_ms: 1000,
                req: LeaseRequest::KvSet {
                    key: "litefs/primary/clusterid".into(),
                    value: Some(b"LFSC1".to_vec()),
                    flags: 0,
                    cas: None,
                },
            }),
        };
        let snap = {
            let shared = LeaseShared::default();
            let mut sm = StateMachine::new(Store::open(dir.path()).expect("open"), shared.clone())
                .expect("sm");
            let out = sm.apply([entry]).await.expect("apply");
            assert_eq!(out, vec![LeaseResponse::Bool(true)]);
            assert_eq!(shared.read(|st| st.kv_index), 3);
            sm.build_snapshot().await.expect("snapshot")
        };
        // Reopened: the stored state is published before any apply.
        let shared = LeaseShared::default();
        let _sm = StateMachine::new(Store::open(dir.path()).expect("reopen"), shared.clone())
            .expect("sm");
        assert!(shared.read(|st| st.kv.contains_key("litefs/primary/clusterid")));
        // A fresh node installing the snapshot gets the lease state too.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let shared2 = LeaseShared::default();
        let mut sm2 = StateMachine::new(Store::open(dir2.path()).expect("open"), shared2.clone())
            .expect("sm");
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");
        assert_eq!(
            shared2.read(|st| st.kv["litefs/primary/clusterid"].value.clone()),
            Some(b"LFSC1".to_vec())
        );
        assert_eq!(shared2.read(|st| st.leader), Some(7));
    }

    #[tokio::test]
    async fn truncate_and_purge_leave_no_hole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut ls = LogStore::new(store.clone());
        let mk = |i| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), i),
            payload: EntryPayload::Blank,
        };
        {
            let conn = store.lock();
            for i in 0..5u64 {
                let raw = serde_json::to_vec(&mk(i)).expect("ser");
                conn.execute(
                    "INSERT INTO log (idx, entry) VALUES (?1, ?2)",
                    params![i as i64, raw],
                )
                .expect("insert");
            }
        }
        ls.truncate(LogId::new(CommittedLeaderId::new(1, 0), 3))
            .await
            .expect("truncate");
        let got = ls.try_get_log_entries(0..).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        ls.purge(LogId::new(CommittedLeaderId::new(1, 0), 1))
            .await
            .expect("purge");
        let st = ls.get_log_state().await.expect("state");
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(2));
        let got = ls.try_get_log_entries(..=2).await.expect("read");
        assert_eq!(got.len(), 1);
    }
}
