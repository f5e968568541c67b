//! Consul's default read consistency for the lease endpoint: a read is answered from the local
//! applied state only once that state includes everything the leader had committed when the
//! read arrived (its read index, confirmed by a quorum). Without it a restarted node answered
//! from its persisted state before catching up, naming its own LiteFS as primary (LiteFS then
//! logged `cannot connect to self`). Until it can, the answer is Consul's 500 "No cluster
//! leader". `?stale` (Consul's flag) skips the check.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};

use super::*;
use crate::lease::{WriteError, WRITE_TIMEOUT};
use crate::rpc_server::PATH_READ_INDEX;

/// The leader's answer to [`PATH_READ_INDEX`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndex {
    /// Leadership confirmed by a quorum; everything up to this log index is committed.
    Index(u64),
    /// Not the leader (the one it knows, if any).
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// On the leader: its read index, once a quorum confirmed it still leads.
pub(crate) async fn read_index_local(raft: &Raft) -> ReadIndex {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.get_read_log_id()).await {
        Ok(Ok((read, _))) => ReadIndex::Index(read.map(|l| l.index).unwrap_or(0)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            ReadIndex::NotLeader(f.leader_id)
        }
        Ok(Err(e)) => ReadIndex::Failed(e.to_string()),
        Err(_) => ReadIndex::Failed(format!("leadership not confirmed within {WRITE_TIMEOUT:?}")),
    }
}

/// Waits until the local state has applied the leader's read index; the error is the 500.
pub(super) async fn consistent(ctx: &HttpCtx, query: &HashMap<String, String>) -> Result<(), Resp> {
    if query.contains_key("stale") {
        return Ok(());
    }
    caught_up(ctx).await.map_err(|e| {
        tracing::debug!(error = %e, "lease read refused: not caught up with the leader");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            WriteError::NoLeader.to_string(),
        )
    })
}

/// The read barrier: learn the leader's read index (locally or over the RPC transport), then
/// wait for the local state machine to apply it.
async fn caught_up(ctx: &HttpCtx) -> Result<(), String> {
    let w = &ctx.writer;
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    let mut metrics = ctx.raft.metrics();
    let index = loop {
        let leader = metrics.borrow_and_update().current_leader;
        let answer = match leader {
            Some(l) if l == w.me => read_index_local(&ctx.raft).await,
            Some(l) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                w.client
                    .call::<_, ReadIndex>(l, PATH_READ_INDEX, &(), left)
                    .await
                    .map_err(|e| e.to_string())?
            }
            None => {
                if tokio::time::timeout_at(deadline, metrics.changed())
                    .await
                    .is_err()
                {
                    return Err("no leader known".into());
                }
                continue;
            }
        };
        match answer {
            ReadIndex::Index(i) => break i,
            ReadIndex::Failed(e) => return Err(e),
            ReadIndex::NotLeader(_) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err("leadership kept moving".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut applied = ctx.shared.subscribe();
    let reached = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        Ok(())
    } else {
        Err(format!("log not applied up to the leader's index {index}"))
    }
}
