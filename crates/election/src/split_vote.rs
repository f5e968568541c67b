//! Breaks split votes. openraft 0.9 draws a node's election timeout once, at startup, and
//! checks it on a tick; two candidates whose timeouts fall into the same tick therefore
//! collide on every retry, and a cluster that lost its leader can stay leaderless for good
//! (seen: two survivors campaigning in the same millisecond every ~305 ms for 5 s).
//! While this node is a candidate, it campaigns again after a fresh random delay each
//! attempt, so one of the candidates goes first and wins.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use openraft::ServerState;
use rand::Rng;

use crate::types::Raft;

/// Runs until aborted.
pub(crate) async fn run(raft: Raft, min: Duration, max: Duration, stepping_down: Arc<AtomicBool>) {
    let mut metrics = raft.metrics();
    loop {
        // Wait until we are a candidate.
        let term = loop {
            let m = metrics.borrow_and_update().clone();
            if m.state == ServerState::Candidate {
                break m.current_term;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        };
        let delay = rand::thread_rng().gen_range(min..max.max(min + Duration::from_millis(1)));
        tokio::time::sleep(delay).await;
        let m = metrics.borrow_and_update().clone();
        // Still campaigning in the same term: the round did not decide anything.
        if m.state == ServerState::Candidate
            && m.current_term == term
            && !stepping_down.load(Ordering::SeqCst)
        {
            tracing::info!(
                term,
                delay_ms = delay.as_millis() as u64,
                "election undecided; campaigning again"
            );
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "cannot trigger an election");
            }
        }
    }
}
