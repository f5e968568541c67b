//! A new leader acts as primary (and lets its LiteFS take the lock, `lease::ACQUIRE_WAIT`)
//! only once it has heard the LiteFS positions of a quorum of voters, itself included, and
//! none that could lead is ahead of its own. When one is, it hands leadership to that voter
//! (`handover`) instead, after that voter's Raft log has caught up with its own, so the voter
//! can win the vote.
//!
//! Positions are compared with their histories (`position::Relation`): a voter whose TXID
//! is higher but whose history is another (a primary that was cut off or paused, back with
//! writes it never shipped) is not ahead; and a leader whose own history a quorum does not
//! share (that returning primary, elected by TXID) hands over to the quorum's instead.
//!
//! Pre-votes already keep a candidate that is behind a quorum from campaigning; this check
//! covers the ways one still wins: a voter's liveness waiver (`prevote::Rules::waive_after`,
//! a voter ahead in LiteFS but behind in the Raft log cannot win itself, so it lets the
//! candidate win), and voters whose position was unknown when they granted. With
//! `sync_replicas` >= N - quorum every quorum holds each acknowledged write, so the node that
//! ends up primary holds it too.

use openraft::ServerState;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

use crate::handover::{self, HandoverCtx};
use crate::network::RpcClient;
use std::collections::BTreeMap;

use crate::position::Relation;
use crate::prevote::{self, position_key, PreVoteResponse};
use crate::types::NodeId;

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nobody that could lead is ahead: act as primary.
    Passed,
    /// This voter is ahead (or of the history a quorum shares, when this node's is not) and
    /// could lead: hand over to it.
    Ahead(NodeId),
    /// Fewer than a quorum answered: ask again.
    NoQuorum,
}

/// The background task.
pub(crate) struct CatchUp {
    pub handover: HandoverCtx,
    pub client: RpcClient,
    /// The term in which this node passed the check (the role tracker reads it).
    pub passed: watch::Sender<Option<u64>>,
    /// Pokes the role tracker.
    pub wake: Arc<Notify>,
}

impl CatchUp {
    /// Runs until aborted.
    pub async fn run(self) {
        let raft = self.handover.raft.clone();
        let me = self.handover.me;
        let mut metrics = raft.metrics();
        loop {
            let (term, leading) = {
                let m = metrics.borrow_and_update();
                (
                    m.current_term,
                    m.state == ServerState::Leader && m.current_leader == Some(me),
                )
            };
            let pv = &self.handover.pre_vote;
            // Stepping down or ineligible: the handover of `handover`/`eligibility` runs.
            let may_lead = !pv.stepping_down.load(std::sync::atomic::Ordering::SeqCst)
                && *pv.eligible.borrow();
            if leading && may_lead && *self.passed.borrow() != Some(term) {
                match self.check().await {
                    Verdict::Passed => {
                        self.passed.send_replace(Some(term));
                        self.wake.notify_one();
                    }
                    Verdict::Ahead(id) => self.hand_to(id).await,
                    Verdict::NoQuorum => tokio::time::sleep(self.handover.heartbeat).await,
                }
                continue;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    async fn check(&self) -> Verdict {
        let pv = &self.handover.pre_vote;
        let (voters, quorum) = pv.voters_and_quorum();
        if voters <= 1 {
            return Verdict::Passed;
        }
        let relation = |r: &PreVoteResponse| pv.position.relate(r.position, r.has_your_position);
        // Voters of this node's history, itself included.
        let same = |a: &BTreeMap<NodeId, PreVoteResponse>| {
            1 + a
                .values()
                .filter(|r| relation(r) != Relation::Diverged)
                .count()
        };
        let req = pv.request(true);
        let answers = prevote::ask(pv, &self.client, &req, pv.election_timeout_min, |a| {
            same(a) >= quorum || a.len() + 1 >= voters
        })
        .await;
        if 1 + answers.len() < quorum {
            tracing::debug!(
                answered = answers.len(),
                quorum,
                "catch-up: too few voters answered"
            );
            return Verdict::NoQuorum;
        }
        let mine = pv.position.get();
        let name = |id: &NodeId| pv.peers.get(id).map(|p| p.id.clone());
        if same(&answers) < quorum {
            // A quorum went through another history (this node was cut off or paused as
            // primary, and another took over): its writes, not ours, may be acknowledged.
            let best = answers
                .iter()
                .filter(|(_, r)| r.can_lead && relation(r) == Relation::Diverged)
                .max_by_key(|(_, r)| position_key(r.position));
            tracing::warn!(
                mine = ?mine.map(|p| p.txid),
                to = ?best.and_then(|(id, _)| name(id)),
                "elected on a LiteFS history a quorum does not share: handing over instead of acting as primary"
            );
            return match best {
                Some((id, _)) => Verdict::Ahead(*id),
                None => Verdict::NoQuorum,
            };
        }
        let ahead = answers
            .iter()
            .filter(|(_, r)| relation(r) == Relation::Ahead)
            .max_by_key(|(_, r)| (r.can_lead, position_key(r.position)));
        match ahead {
            None => Verdict::Passed,
            Some((id, r)) if r.can_lead => {
                tracing::warn!(
                    mine = ?mine.map(|p| p.txid),
                    ahead = ?r.position.map(|p| p.txid),
                    voter = ?name(id),
                    "elected behind a voter's LiteFS position: handing over to it instead of acting as primary"
                );
                Verdict::Ahead(*id)
            }
            Some((id, r)) => {
                tracing::warn!(
                    mine = ?mine.map(|p| p.txid),
                    ahead = ?r.position.map(|p| p.txid),
                    voter = ?name(id),
                    "a voter ahead of this node's LiteFS position cannot lead; acting as primary without its newest writes"
                );
                Verdict::Passed
            }
        }
    }

    /// Lets `id`'s Raft log catch up with ours (heartbeats carry it), then hands over; on
    /// failure heartbeats resume and the next check decides again.
    async fn hand_to(&self, id: NodeId) {
        let raft = &self.handover.raft;
        let last = raft.data_metrics().borrow().last_log.map(|l| l.index);
        let mut metrics = raft.metrics();
        let caught_up = matches!(
            tokio::time::timeout(
                self.handover.election_timeout_max,
                metrics.wait_for(|m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .map(|l| l.index)
                        >= last
                }),
            )
            .await,
            Ok(Ok(_))
        );
        if !caught_up {
            tracing::info!(
                voter = id,
                "catch-up: its Raft log did not catch up; asking again"
            );
            return;
        }
        self.handover
            .pre_vote
            .status
            .counters()
            .catch_up_handovers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let took = handover::hand_over_to(&self.handover, &self.client, Some(id)).await;
        // The handover turned heartbeats off; a follower sends none anyway, and a leader
        // whose handover failed must keep its followers.
        raft.runtime_config().heartbeat(true);
        if took.is_none() {
            tokio::time::sleep(self.handover.heartbeat).await;
        }
    }
}
