//! Replicas report their LiteFS position to the Raft leader over the Raft port (signed like
//! every RPC), and the leader keeps the latest report per node for `proxy.sync_replicas`: a
//! write is answered once enough replicas hold it. A report is addressed to a leader and a
//! term; the leader keeps only those naming itself in its current term, so a report meant
//! for another leader never counts here, and only those of voters (a non-voter's copy of a
//! write does not make it survive a failover).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Peer;
use crate::network::RpcClient;
use crate::position::{LocalPosition, Position};
use crate::types::{NodeId, Raft};

/// A replica sends its position again after this long even when it did not move, so the
/// leader's view of it stays fresh (and a new leader learns it soon).
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// `POST /raft/position`: the sender's LiteFS position, for the leader `leader` of `term`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PositionReport {
    pub term: u64,
    pub leader: NodeId,
    pub position: Position,
}

/// The answer: whether the report was kept (false: we are not that leader in that term).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportAck {
    pub kept: bool,
}

/// `POST /raft/keeper-position`: a node's lease keeper, its litefs-proxy gone, reports that
/// node's LiteFS position to whichever voter leads (it knows neither leader nor term; the
/// receiver counts it in its own term, as a probed position).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeeperReport {
    pub position: Position,
}

/// The answer: whether it was kept, and otherwise the leader the receiver knows of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeeperReportAck {
    pub kept: bool,
    pub leader: Option<NodeId>,
}

/// What the leader knows of its replicas: their last reported positions, in `fresh_term`;
/// `term` is the node's current term.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaPositions {
    /// The term the reports were addressed to; 0 before any.
    pub term: u64,
    /// Node name → last reported position.
    pub positions: BTreeMap<String, Position>,
    /// The term `positions` were reported in (behind `term` until the first report of it).
    pub fresh_term: u64,
}

/// The leader's table of reports; followers' tables stay empty.
#[derive(Clone)]
pub struct ReportTable {
    tx: Arc<watch::Sender<ReplicaPositions>>,
}

impl Default for ReportTable {
    fn default() -> Self {
        ReportTable {
            tx: Arc::new(watch::channel(ReplicaPositions::default()).0),
        }
    }
}

impl ReportTable {
    pub fn subscribe(&self) -> watch::Receiver<ReplicaPositions> {
        self.tx.subscribe()
    }

    /// Handles a report from peer `from` (authenticated by the RPC layer).
    pub(crate) fn on_report(
        &self,
        raft: &Raft,
        me: NodeId,
        peers: &BTreeMap<NodeId, Peer>,
        from: &str,
        report: PositionReport,
    ) -> ReportAck {
        let (state, term, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
            (m.state, m.current_term, voters)
        };
        // Only a voter's copy makes an acknowledged write survive a failover (the next
        // leader is a voter a quorum granted); a non-voter's does not count.
        let known = peers
            .iter()
            .any(|(id, p)| p.id == from && voters.contains(id));
        if !known || state != ServerState::Leader || report.leader != me || report.term != term {
            return ReportAck { kept: false };
        }
        self.tx.send_if_modified(|v| {
            if v.term != term || v.fresh_term != term {
                v.term = term;
                v.fresh_term = term;
                v.positions.clear();
            }
            let changed = v.positions.get(from) != Some(&report.position);
            v.positions.insert(from.to_owned(), report.position);
            changed
        });
        ReportAck { kept: true }
    }

    /// Moves the table to the current term (run by the reporter task on every node as the
    /// term changes). The positions of the earlier term stay until the first report of the
    /// new one replaces them: they are facts about this node's history (a write waiting as
    /// the term moves may still count them), and a change of term alone must not hide them
    /// from a waiter that has not looked yet.
    fn forget_before(&self, term: u64) {
        self.tx.send_if_modified(|v| {
            if v.term < term {
                v.term = term;
                return true;
            }
            false
        });
    }

    /// Records `from`'s position learnt from a probe answer (a step-down's handover asks
    /// its followers), as if `from` had reported it to this leader in its current term.
    pub(crate) fn note(
        &self,
        raft: &Raft,
        me: NodeId,
        peers: &BTreeMap<NodeId, Peer>,
        from: &str,
        position: Position,
    ) -> ReportAck {
        let term = raft.metrics().borrow().current_term;
        let report = PositionReport {
            term,
            leader: me,
            position,
        };
        self.on_report(raft, me, peers, from, report)
    }
}

/// Runs until aborted: while a follower of a known leader, sends that leader this node's
/// position whenever it moves and every [`REPORT_EVERY`]; one report in flight at a time.
pub(crate) async fn run(
    raft: Raft,
    me: NodeId,
    client: RpcClient,
    position: LocalPosition,
    table: ReportTable,
    timeout: Duration,
) {
    let mut metrics = raft.metrics();
    let mut pos_rx = position.subscribe();
    let mut last: Option<(PositionReport, Instant)> = None;
    loop {
        let (state, term, leader) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term, m.current_leader)
        };
        table.forget_before(term);
        let pos = *pos_rx.borrow_and_update();
        let target = match (state, leader, pos) {
            (ServerState::Leader, _, _) => None,
            (_, Some(l), Some(p)) if l != me => Some((l, p)),
            _ => None,
        };
        if let Some((leader, position)) = target {
            let report = PositionReport {
                term,
                leader,
                position,
            };
            let due = match &last {
                Some((r, at)) => {
                    r.term != term
                        || r.leader != leader
                        || r.position != position
                        || at.elapsed() >= REPORT_EVERY
                }
                None => true,
            };
            if due {
                let sent = client
                    .call::<_, ReportAck>(
                        leader,
                        crate::rpc_server::PATH_POSITION,
                        &report,
                        timeout,
                    )
                    .await;
                match sent {
                    Ok(_) => last = Some((report, Instant::now())),
                    Err(e) => {
                        tracing::debug!(error = %e, "position report failed");
                        last = None;
                    }
                }
                if last.is_none() {
                    // Do not spin on a leader that is down; the next tick retries.
                    tokio::time::sleep(REPORT_EVERY / 4).await;
                }
                continue;
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = pos_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}
