//! The Consul-compatible lease endpoint: the few Consul HTTP calls LiteFS's consul leaser makes
//! (sessions, KV get/put/acquire/release), backed by Raft so that only the Raft leader's LiteFS
//! can hold the primary lock.
//!
//! - State ([`state::LeaseState`]) lives in the Raft state machine: persisted with it in SQLite
//!   and in its snapshot; every node answers GETs from its own applied copy, once that copy
//!   includes the leader's read index (`http/consistent.rs`).
//! - Writes go through the log: the leader stamps each request with its id and wall clock
//!   ([`state::Command`]) and calls `client_write`; a follower forwards the unstamped request to
//!   the leader over the signed RPC transport (`/raft/lease`).
//! - The leader's reaper proposes an empty `Tick` when a session's deadline passed on its clock,
//!   and right after it is elected (if sessions exist), so other nodes' sessions are invalidated
//!   at once and their LiteFS sees its next renew fail (404) and demotes.
//! - Sessions belong to a node: the `Node` of the create request when it names a cluster member,
//!   otherwise the node whose endpoint received the request (Consul's own rule: no `Node` means
//!   the local agent's node). LiteFS sends no `Node` (or, with a key prefix in its consul URL, a
//!   shared `<prefix>/litefs`), so a LiteFS talking to its local endpoint gets its node's name.
//! - `acquire` also requires the receiving node to be the leader: a session id handed to another
//!   node's LiteFS (LiteFS `promote: true` handoffs) cannot take the lock from there. Configure
//!   LiteFS with `promote: false`; the lock follows Raft, not LiteFS handoffs.

pub(crate) mod http;
pub mod keeper;
pub use http::{renew_answer_within, RENEW_ANSWER_MAX, RENEW_ANSWER_WITHIN};
pub mod state;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::now_ms;
use crate::network::{RpcClient, TransportError};
use crate::rpc_server::PATH_LEASE;
use crate::types::{NodeId, Raft};
use state::{Command, LeaseRequest, LeaseResponse, LeaseState};

/// How long one write (including forwarding and commit) may take before it fails with 500.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The applied lease state, shared by the state machine (writer) and the HTTP endpoint.
#[derive(Clone)]
pub struct LeaseShared {
    state: Arc<RwLock<LeaseState>>,
    /// Last applied log index that carried a lease command; wakes blocking queries.
    applied: watch::Sender<u64>,
    /// This node's own (not replicated) handoff window: while it is open and this node
    /// leads, renewals of another node's session are granted, so that node's LiteFS can
    /// hand its session to this node's LiteFS (see [`LeaseShared::open_handoff`]).
    handoff_until: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Whether this node acts as primary (`Leadership::Leader`, set by the role tracker):
    /// only then may its LiteFS take the lock, so a Raft leader that has not yet checked
    /// that no voter is ahead of it (`catch_up`) cannot make its LiteFS primary.
    acting: Arc<watch::Sender<bool>>,
}

/// How long an `acquire` on the Raft leader waits for it to act as primary (one position
/// probe, normally a few ms) before it is refused (LiteFS retries a second later).
pub const ACQUIRE_WAIT: Duration = Duration::from_millis(500);

impl Default for LeaseShared {
    fn default() -> Self {
        LeaseShared {
            state: Arc::default(),
            applied: watch::channel(0).0,
            handoff_until: Arc::default(),
            acting: Arc::new(watch::channel(false).0),
        }
    }
}

impl LeaseShared {
    pub fn read<T>(&self, f: impl FnOnce(&LeaseState) -> T) -> T {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Replace the state (after it was persisted) and wake waiters.
    pub fn publish(&self, st: &LeaseState, index: u64) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = st.clone();
        self.applied.send_replace(index);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Grants renewals of other nodes' sessions for `window` (this node's LiteFS is asking
    /// the old primary for a handoff); [`LeaseShared::close_handoff`] ends it early.
    pub fn open_handoff(&self, window: Duration) {
        *self.handoff_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + window);
    }

    pub fn close_handoff(&self) {
        *self.handoff_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records whether this node acts as primary (see the field).
    pub(crate) fn set_acting(&self, acting: bool) {
        self.acting.send_replace(acting);
    }

    /// Waits up to `wait` for this node to act as primary.
    async fn wait_acting(&self, wait: Duration) -> bool {
        let mut rx = self.acting.subscribe();
        let acting = matches!(
            tokio::time::timeout(wait, rx.wait_for(|a| *a)).await,
            Ok(Ok(_))
        );
        acting
    }

    fn handoff_open(&self) -> bool {
        self.handoff_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t)
    }
}

/// Outcome of proposing on one node; also the answer of the `/raft/lease` RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProposeOutcome {
    /// Applied at log `index`.
    Done {
        resp: LeaseResponse,
        index: u64,
    },
    /// Not applied: this node is not the leader (the one it knows, if any).
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// Stamp `req` as leader `me` and append it; waits until applied. A renewal is stamped with
/// whether this leader has a handoff open or does not act as primary yet. An `acquire` is refused, without touching the
/// log, unless this node acts as primary within [`ACQUIRE_WAIT`].
pub async fn propose_local(
    raft: &Raft,
    me: NodeId,
    shared: &LeaseShared,
    mut req: LeaseRequest,
) -> ProposeOutcome {
    // Until this leader acts as primary (its catch-up check takes a probe), the old holder's
    // renewals are granted too: refusing them would only end its lease before this node's
    // LiteFS can take the handoff that follows.
    if let LeaseRequest::SessionRenew { foreign_ok, .. } = &mut req {
        *foreign_ok = shared.handoff_open() || !*shared.acting.borrow();
    }
    if let LeaseRequest::KvAcquire { key, origin, .. } = &req {
        if !shared.wait_acting(ACQUIRE_WAIT).await {
            tracing::info!(
                key,
                origin,
                "lease: acquire refused, this node does not act as primary"
            );
            return ProposeOutcome::Done {
                resp: LeaseResponse::Bool(false),
                index: 0,
            };
        }
    }
    let cmd = Command {
        leader: me,
        now_ms: now_ms(),
        req,
    };
    let res = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(cmd)).await;
    match res {
        Ok(Ok(r)) => ProposeOutcome::Done {
            resp: r.data,
            index: r.log_id.index,
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            ProposeOutcome::NotLeader(f.leader_id)
        }
        Ok(Err(e)) => ProposeOutcome::Failed(e.to_string()),
        Err(_) => ProposeOutcome::Failed(format!("not committed within {WRITE_TIMEOUT:?}")),
    }
}

/// Why a write failed; the HTTP layer answers 500 with this text, as Consul does.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("rpc error: {0}")]
    Failed(String),
}

/// Sends lease writes to the leader: locally when this node leads, else over the RPC transport.
#[derive(Clone)]
pub struct LeaseWriter {
    pub raft: Raft,
    pub me: NodeId,
    pub client: RpcClient,
    /// Local applied state: a forwarded write returns once it is applied here too.
    pub shared: LeaseShared,
}

impl LeaseWriter {
    pub async fn write(&self, req: LeaseRequest) -> Result<LeaseResponse, WriteError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            let outcome = match leader {
                Some(l) if l == self.me => {
                    propose_local(&self.raft, self.me, &self.shared, req.clone()).await
                }
                Some(l) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self
                        .client
                        .call::<_, ProposeOutcome>(l, PATH_LEASE, &req, left)
                        .await
                    {
                        Ok(o) => o,
                        // Never sent (the leader's process is gone, say), or sent and lost
                        // with a request that may be applied twice (the old primary's
                        // renewal, which it needs for its handoff): retry once another
                        // leader is known, within the same deadline.
                        Err(TransportError::Connect { .. }) => ProposeOutcome::NotLeader(None),
                        Err(TransportError::Send { .. }) if req.is_idempotent() => {
                            ProposeOutcome::NotLeader(None)
                        }
                        // It may or may not have been applied: do not send it again.
                        Err(e) => ProposeOutcome::Failed(e.to_string()),
                    }
                }
                None => {
                    // Wait for a leader to be known.
                    if tokio::time::timeout_at(deadline, metrics.changed())
                        .await
                        .is_err()
                    {
                        return Err(WriteError::NoLeader);
                    }
                    continue;
                }
            };
            match outcome {
                ProposeOutcome::Done { resp, index } => {
                    // Read-your-writes on this node: a GET after the answer sees the change.
                    let mut applied = self.shared.subscribe();
                    let _ =
                        tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await;
                    return Ok(resp);
                }
                ProposeOutcome::Failed(e) => return Err(WriteError::Failed(e)),
                // Not applied anywhere: safe to retry once the leader is known.
                ProposeOutcome::NotLeader(_) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(WriteError::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Leader-only background task: propose a `Tick` when a session deadline passed on our clock.
pub(crate) async fn reaper(raft: Raft, me: NodeId, shared: LeaseShared, tick: Duration) {
    let mut applied = shared.subscribe();
    loop {
        // Wake at the next session deadline (a lock must change hands the moment it may),
        // at the latest after `tick`, and whenever the state changes.
        let next = shared
            .read(LeaseState::next_deadline)
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms())))
            .map_or(tick, |d| d.min(tick));
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = applied.changed() => continue,
        }
        let leading = {
            let m = raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Leader && m.current_leader == Some(me)
        };
        if !leading {
            continue;
        }
        if shared.read(|st| st.has_expired(now_ms())) {
            match propose_local(&raft, me, &shared, LeaseRequest::Tick).await {
                ProposeOutcome::Done { .. } => {}
                other => tracing::debug!(outcome = ?other, "lease reaper tick not applied"),
            }
        }
    }
}
