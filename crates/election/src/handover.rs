//! Planned leadership handover, since openraft 0.9 has no `transfer_leader`.
//!
//! The leader (already no longer acting as primary) stops heartbeats and elections, asks its
//! followers for their LiteFS positions (a pre-vote probe, `prevote`), and sends a signed
//! `timeout-now` to the most caught-up one: the highest TXID, ties by Raft log. It waits (up
//! to `election_timeout_min`) for one to reach its own position first; it no longer takes
//! writes, so that is a matter of milliseconds; if none does, it picks the best anyway (the
//! position rule of the pre-vote would pick the same node later). That follower, after checking the
//! request comes from the leader it follows in that term, campaigns at once
//! (`trigger().elect()`), repeating every few heartbeats until some leader exists.
//! The old leader's own lease on itself has expired (it is never refreshed after election),
//! so it grants the vote: in a 3-node cluster that is a quorum right away; larger clusters
//! win once the other followers' leases (one `election_timeout_max`) run out.
//! A follower that is not eligible to lead (its LiteFS is down, see `eligibility`) or is itself
//! shutting down refuses, and the leader tries its next follower.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::config::Peer;
use crate::leadership::Leadership;
use crate::network::RpcClient;
use crate::position::Relation;
use crate::prevote::{self, position_ge, position_key, PreVoteCtx, PreVoteResponse};
use crate::reports::ReportTable;
use crate::rpc_server::PATH_TIMEOUT_NOW;
use crate::types::{NodeId, Raft};

/// "Campaign now": sent by a stepping-down leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNowRequest {
    /// Name of the leader sending it.
    pub leader: String,
    /// Its term; stale requests are ignored.
    pub term: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeoutNowResponse {
    pub accepted: bool,
    pub reason: String,
}

/// What both sides need.
#[derive(Clone)]
pub struct HandoverCtx {
    pub raft: Raft,
    pub me: NodeId,
    pub peers: Arc<BTreeMap<NodeId, Peer>>,
    pub heartbeat: Duration,
    pub election_timeout_max: Duration,
    /// Whether this node may lead (`eligibility`): an ineligible one refuses to campaign.
    pub eligible: watch::Receiver<bool>,
    /// Positions of the followers (probe), our own, and whether we are shutting down.
    pub pre_vote: PreVoteCtx,
    /// The followers' probed positions go here too, so writes waiting for `sync_replicas`
    /// as the leader steps down count the follower it waits for.
    pub reports: ReportTable,
}

/// Why a follower refuses a `timeout-now` while it may not lead.
pub const REFUSED_INELIGIBLE: &str = "not eligible to lead (local LiteFS down)";

/// Follower side: validate, then campaign in the background.
pub async fn on_timeout_now(ctx: &HandoverCtx, req: TimeoutNowRequest) -> TimeoutNowResponse {
    let reject = |reason: String| {
        tracing::info!(from = %req.leader, term = req.term, %reason, "timeout-now refused");
        TimeoutNowResponse {
            accepted: false,
            reason,
        }
    };
    let Some((&leader_id, _)) = ctx.peers.iter().find(|(_, p)| p.id == req.leader) else {
        return reject("unknown sender".into());
    };
    let m = ctx.raft.metrics().borrow().clone();
    if m.current_leader != Some(leader_id) || m.current_term != req.term {
        return reject(format!(
            "sender is not my leader in term {} (I follow {:?} in term {})",
            req.term, m.current_leader, m.current_term
        ));
    }
    if m.state == ServerState::Leader || m.state == ServerState::Learner {
        return reject(format!("state {:?}", m.state));
    }
    if !*ctx.eligible.borrow() {
        return reject(REFUSED_INELIGIBLE.into());
    }
    if ctx
        .pre_vote
        .stepping_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return reject("shutting down".into());
    }
    let ctx = ctx.clone();
    let old_term = req.term;
    tokio::spawn(async move { campaign(ctx, leader_id, old_term).await });
    TimeoutNowResponse {
        accepted: true,
        reason: String::new(),
    }
}

/// Trigger elections until a leader of a newer term exists, or give up after a while
/// (the election timer, with its pre-votes, still elects someone then).
async fn campaign(ctx: HandoverCtx, old_leader: NodeId, old_term: u64) {
    let started = Instant::now();
    let deadline = started + ctx.election_timeout_max * 4;
    let retry = ctx.heartbeat * 2;
    let mut metrics = ctx.raft.metrics();
    while Instant::now() < deadline {
        if !*ctx.eligible.borrow() {
            tracing::info!("timeout-now: no longer eligible to lead; not campaigning");
            return;
        }
        if let Err(e) = ctx.raft.trigger().elect().await {
            tracing::warn!(error = %e, "timeout-now: cannot trigger election");
            return;
        }
        let until = tokio::time::Instant::now() + retry;
        loop {
            {
                let m = metrics.borrow_and_update();
                let done =
                    m.current_term > old_term && m.current_leader.is_some_and(|l| l != old_leader);
                if done {
                    tracing::info!(
                        term = m.current_term,
                        leader = ?m.current_leader,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "timeout-now: new leader"
                    );
                    return;
                }
            }
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
    }
    tracing::warn!("timeout-now: no leader after campaigning");
}

/// Leader side, as a whole: the tracker is woken (it has already been told this node no
/// longer acts as leader) and must publish "not leader" before anyone else can lead; then
/// [`hand_over_to`], then the new leader is given a moment to reach the watch (and `.primary`).
pub(crate) async fn step_down(
    ctx: &HandoverCtx,
    client: &RpcClient,
    wake: &Notify,
    leadership: &mut watch::Receiver<Leadership>,
) -> Option<Duration> {
    step_down_to(ctx, client, wake, leadership, None).await
}

/// [`step_down`], trying `prefer` first.
pub(crate) async fn step_down_to(
    ctx: &HandoverCtx,
    client: &RpcClient,
    wake: &Notify,
    leadership: &mut watch::Receiver<Leadership>,
    prefer: Option<NodeId>,
) -> Option<Duration> {
    wake.notify_one();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        leadership.wait_for(|l| *l != Leadership::Leader),
    )
    .await;
    let took = hand_over_to(ctx, client, prefer).await;
    if took.is_some() {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            leadership.wait_for(|l| matches!(l, Leadership::Follower { .. })),
        )
        .await;
    }
    took
}

/// Leader side: returns how long until another node was seen leading, or None when this node
/// was not leader or nobody took over in time; `prefer` is tried first (the catch-up check's
/// or the priority's choice).
pub(crate) async fn hand_over_to(
    ctx: &HandoverCtx,
    client: &RpcClient,
    prefer: Option<NodeId>,
) -> Option<Duration> {
    let m = ctx.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return None;
    }
    if m.membership_config.voter_ids().all(|id| id == ctx.me) {
        tracing::info!("handover: no other voter to hand over to");
        return None;
    }
    let started = Instant::now();
    ctx.raft.runtime_config().heartbeat(false);
    ctx.raft.runtime_config().elect(false);

    let mut targets = targets(ctx, client, &m).await;
    if let Some(p) = prefer {
        targets.retain(|t| *t != p);
        targets.insert(0, p);
    }
    let me_name = ctx
        .peers
        .get(&ctx.me)
        .map(|p| p.id.clone())
        .unwrap_or_default();
    let req = TimeoutNowRequest {
        leader: me_name,
        term: m.current_term,
    };
    let mut sent = false;
    for target in &targets {
        let res: Result<TimeoutNowResponse, _> = client
            .call(*target, PATH_TIMEOUT_NOW, &req, ctx.election_timeout_max)
            .await;
        match res {
            Ok(r) if r.accepted => {
                tracing::info!(target_node = ?client.peer(*target).map(|p| &p.id), "handover: timeout-now accepted");
                sent = true;
                break;
            }
            Ok(r) => tracing::info!(target_node = *target, reason = %r.reason, "handover: refused"),
            Err(e) => tracing::info!(target_node = *target, error = %e, "handover: unreachable"),
        }
    }
    if !sent {
        tracing::warn!("handover: no follower accepted; the cluster will elect after the lease");
    }
    // Wait to see someone else lead (we voted for them, so we learn it from their heartbeat).
    let wait = ctx.election_timeout_max * 4;
    let mut metrics = ctx.raft.metrics();
    let seen = tokio::time::timeout(
        wait,
        metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != ctx.me)),
    )
    .await;
    match seen {
        Ok(Ok(_)) => {
            let took = started.elapsed();
            tracing::info!(took_ms = took.as_millis() as u64, "handover: new leader");
            Some(took)
        }
        _ => {
            tracing::warn!("handover: no new leader seen in {wait:?}");
            None
        }
    }
}

/// Followers in the order to try: those that can lead first, then by LiteFS position, then by
/// how much of our Raft log they hold, then by id.
async fn targets(
    ctx: &HandoverCtx,
    client: &RpcClient,
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
) -> Vec<NodeId> {
    // Voters only: a non-voter (learner) is replicated to but can never lead.
    let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
    let matched: BTreeMap<NodeId, Option<u64>> = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != ctx.me && voters.contains(id))
                .map(|(id, l)| (*id, l.map(|l| l.index)))
                .collect()
        })
        .unwrap_or_default();
    let answers = positions(ctx, client).await;
    let mut order: Vec<NodeId> = matched.keys().copied().collect();
    order.sort_by_key(|id| {
        let a = answers.get(id);
        // Unanswered: probably unreachable, tried after those that answered and can lead.
        let can_lead = a.map_or(1, |a| if a.can_lead { 2 } else { 0 });
        // Another history (a higher TXID does not make it more caught up): last.
        let ours = a.map_or(true, |a| {
            ctx.pre_vote
                .position
                .relate(a.position, a.has_your_position)
                != Relation::Diverged
        });
        let pos = position_key(a.and_then(|a| a.position));
        std::cmp::Reverse((
            can_lead,
            ours,
            pos,
            matched.get(id).copied().flatten(),
            std::cmp::Reverse(*id),
        ))
    });
    tracing::info!(
        mine = ?ctx.pre_vote.position.get().map(|p| p.txid),
        followers = ?order
            .iter()
            .map(|id| (client.peer(*id).map(|p| p.id.clone()), answers.get(id).and_then(|a| a.position).map(|p| p.txid)))
            .collect::<Vec<_>>(),
        "handover: followers by LiteFS position"
    );
    order
}

/// The followers' probe answers; re-asked every heartbeat (at most `election_timeout_min`)
/// until one that can lead has reached this node's own position.
async fn positions(ctx: &HandoverCtx, client: &RpcClient) -> BTreeMap<NodeId, PreVoteResponse> {
    let mine = ctx.pre_vote.position.get();
    let req = ctx.pre_vote.request(true);
    let until = Instant::now() + ctx.pre_vote.election_timeout_min;
    let mut known = BTreeMap::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let answers = prevote::ask(&ctx.pre_vote, client, &req, left.max(ctx.heartbeat), |_| {
            false
        })
        .await;
        for (id, r) in &answers {
            if let (Some(p), Some(peer)) = (r.position, ctx.peers.get(id)) {
                ctx.reports.note(&ctx.raft, ctx.me, &ctx.peers, &peer.id, p);
            }
        }
        known.extend(answers);
        let caught_up = known
            .values()
            .any(|r: &PreVoteResponse| r.can_lead && position_ge(r.position, mine));
        if caught_up || Instant::now() + ctx.heartbeat >= until {
            if !caught_up {
                tracing::warn!(
                    mine = ?mine.map(|p| p.txid),
                    "handover: no follower reached this node's LiteFS position; picking the most caught-up"
                );
            }
            return known;
        }
        tokio::time::sleep(ctx.heartbeat).await;
    }
}
