//! Non-voting members (`voter = false` in `peers`): openraft learners. Only the voters make
//! the initial membership; the leader adds each configured non-voter as a learner (a Raft
//! membership entry), after which it is replicated to like any follower: it knows the leader,
//! so its proxy forwards writes there and serves reads, but it never campaigns, never counts
//! for a quorum or for `sync_replicas`, and never leads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};

use crate::config::Peer;
use crate::types::{NodeId, Raft};

/// After a failed attempt to add a learner, the next one waits this.
const RETRY: Duration = Duration::from_millis(500);

/// The configured non-voters the membership does not hold yet.
fn missing(raft: &Raft, peers: &BTreeMap<NodeId, Peer>) -> Vec<(NodeId, String)> {
    let m = raft.metrics();
    let m = m.borrow();
    let known: Vec<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
    peers
        .iter()
        .filter(|(id, p)| !p.voter && !known.contains(id))
        .map(|(id, p)| (*id, p.id.clone()))
        .collect()
}

/// Runs until aborted: while this node leads, adds the configured non-voters the membership
/// lacks as learners.
pub(crate) async fn run(raft: Raft, peers: Arc<BTreeMap<NodeId, Peer>>) {
    let mut metrics = raft.metrics();
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        let mut failed = false;
        if leading {
            for (id, name) in missing(&raft, &peers) {
                // Not blocking: committed is enough; the learner catches up on its own.
                match raft.add_learner(id, BasicNode::new(&name), false).await {
                    Ok(_) => {
                        tracing::info!(node = %name, "non-voter added to the membership (learner)")
                    }
                    Err(e) => {
                        tracing::debug!(node = %name, error = %e, "cannot add the non-voter yet");
                        failed = true;
                    }
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
