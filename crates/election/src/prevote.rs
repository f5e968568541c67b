//! Pre-vote (openraft 0.9 has none), with LiteFS positions: before campaigning, a node asks
//! every voter whether it would vote for it, changing no state (no term bump). A voter grants
//! only while it has not heard from a live leader within `election_timeout_min`, when the
//! candidate's Raft log is at least as up to date as its own, and when the candidate's LiteFS
//! TXID is at least its own. The same RPC, as a probe, tells a handing-over leader its
//! followers' positions (`handover`). The timer that runs rounds is `election_timer`.
//!
//! Two survivors whose timers fire within one round trip of each other would both win a
//! pre-vote (each grants the other) and split the vote in the same term: with one of three
//! voters dead, nobody wins that term, and each split costs another election timeout (seen:
//! two in a row, 0.86 s to a leader instead of 0.36 s, long enough for the old primary's
//! LiteFS to give up the lease it was about to hand over). So a voter that is itself running
//! for the same term (its own round or campaign began within `election_timeout_min`) grants
//! only a candidate that is strictly ahead of it by (Raft log, LiteFS position, name): of two
//! such candidates exactly one is granted. And a voter that granted a pre-vote does not
//! start a round of its own for `election_timeout_min` after: the candidate it granted is
//! about to campaign (a round begun just after granting would be granted in turn, before
//! the other's vote request arrived).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Peer;
use crate::network::RpcClient;
use crate::position::{InHistory, LocalPosition, Position};
use crate::rpc_server::PATH_PRE_VOTE;
use crate::status::StatusCell;
use crate::types::{NodeId, Raft};

/// "Would you vote for me?", sent to every voter before campaigning (or, with `probe`, by a
/// handing-over leader that only wants the answer's position).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// Name of the would-be candidate.
    pub candidate: String,
    /// The term it would campaign in (informational: openraft's vote settles terms).
    pub term: u64,
    /// Its last Raft log id.
    pub last_log_id: Option<LogId<NodeId>>,
    /// Its LiteFS position; `None` while unknown.
    pub position: Option<Position>,
    /// Only asking for the voter's position and log: nothing is granted or counted.
    #[serde(default)]
    pub probe: bool,
}

/// The voter's answer; it always carries the voter's own position and log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// Why not, when refused (empty when granted).
    pub reason: String,
    /// Granted although the candidate's position is behind (see [`Refusal::PositionBehind`]).
    #[serde(default)]
    pub position_waived: bool,
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
    pub position: Option<Position>,
    /// Whether the voter could lead now (eligible, not shutting down): a handover skips it
    /// otherwise.
    pub can_lead: bool,
    /// Whether the requester's position is one the voter went through: only the voter can
    /// tell that a position ahead of the requester's is of another history.
    #[serde(default)]
    pub has_your_position: Option<InHistory>,
    /// The voter's `election.priority` (see `priority`).
    #[serde(default)]
    pub priority: u32,
}

/// Why a voter refuses a pre-vote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("candidate {0:?} is not a voter")]
    UnknownCandidate(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("heard from a live leader {0:?} ago")]
    LeaderAlive(Duration),
    #[error("candidate's Raft log {cand} is behind mine {mine}")]
    LogBehind { cand: String, mine: String },
    #[error("candidate's LiteFS position {cand} is behind mine {mine}")]
    PositionBehind { cand: String, mine: String },
    #[error("running for term {0} myself, and the candidate is not ahead of me")]
    Campaigning(u64),
}

/// `a` is at least as caught up as `b`, by TXID alone (the checksum names the history, but
/// two histories cannot be ordered). A known position is ahead of an unknown one.
pub fn position_ge(a: Option<Position>, b: Option<Position>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a.txid >= b.txid,
    }
}

/// Orders positions for picking the most caught-up node (unknown lowest).
pub fn position_key(p: Option<Position>) -> (bool, u64) {
    (p.is_some(), p.map_or(0, |p| p.txid))
}

struct Show<T>(T);

impl fmt::Display for Show<Option<Position>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "txid {}", p.txid),
            None => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Show<Option<LogId<NodeId>>> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, "{}-{}", l.leader_id.term, l.index),
            None => f.write_str("empty"),
        }
    }
}

/// What the voter knows when it judges a request.
pub(crate) struct VoterView {
    pub last_log_id: Option<LogId<NodeId>>,
    pub position: Option<Position>,
    /// Since a live leader (this node included) was last heard from; `None`: never.
    pub leader_heard: Option<Duration>,
    /// How long this node has been without a leader (since start when it never had one).
    pub leaderless: Duration,
    pub shutting_down: bool,
    /// This voter's name.
    pub me: String,
    /// The term this voter is itself running for, while that round or campaign is fresh.
    pub campaign: Option<u64>,
}

/// The rules' knobs.
pub(crate) struct Rules {
    /// A leader heard from more recently than this is alive: refuse.
    pub leader_fresh: Duration,
    /// Leaderless this long, a voter grants a candidate whose Raft log is strictly ahead of
    /// its own even if its position is behind: the voter itself can never win against that
    /// log, and without the waiver the two would refuse each other for good.
    pub waive_after: Duration,
}

/// The voter's decision: `Ok(waived)` to grant (waived: the position rule was set aside).
pub(crate) fn judge(req: &PreVoteRequest, v: &VoterView, rules: &Rules) -> Result<bool, Refusal> {
    if v.shutting_down {
        return Err(Refusal::ShuttingDown);
    }
    if let Some(ago) = v.leader_heard.filter(|ago| *ago < rules.leader_fresh) {
        return Err(Refusal::LeaderAlive(ago));
    }
    if req.last_log_id < v.last_log_id {
        return Err(Refusal::LogBehind {
            cand: Show(req.last_log_id).to_string(),
            mine: Show(v.last_log_id).to_string(),
        });
    }
    let waived = if position_ge(req.position, v.position) {
        false
    } else if req.last_log_id > v.last_log_id && v.leaderless >= rules.waive_after {
        true
    } else {
        return Err(Refusal::PositionBehind {
            cand: Show(req.position).to_string(),
            mine: Show(v.position).to_string(),
        });
    };
    if let Some(term) = v.campaign.filter(|t| *t >= req.term) {
        let theirs = (req.last_log_id, position_key(req.position), &req.candidate);
        let mine = (v.last_log_id, position_key(v.position), &v.me);
        if theirs <= mine {
            return Err(Refusal::Campaigning(term));
        }
    }
    Ok(waived)
}

/// What both sides of a pre-vote need; cheap to clone.
#[derive(Clone)]
pub struct PreVoteCtx {
    pub raft: Raft,
    pub me: NodeId,
    pub peers: Arc<BTreeMap<NodeId, Peer>>,
    /// Leader contacts (followers: AppendEntries; leader: fresh quorum acks) and counters.
    pub status: StatusCell,
    pub position: LocalPosition,
    /// Set by a shutdown's handover: refuse pre-votes, never campaign.
    pub stepping_down: Arc<AtomicBool>,
    pub eligible: watch::Receiver<bool>,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// When this node started (leaderless time before any leader was heard from).
    pub started: Instant,
    /// This node's own candidacy and the last pre-vote it granted.
    pub candidacy: Arc<Candidacy>,
    /// This node's `election.priority`.
    pub priority: u32,
}

/// What keeps two simultaneous candidates from splitting a vote (see the module docs): the
/// term this node last ran for and when, and when it last granted a pre-vote; each counts for
/// `window` (`election_timeout_min`).
#[derive(Debug)]
pub struct Candidacy {
    window: Duration,
    running: Mutex<Option<(u64, Instant)>>,
    granted: Mutex<Option<Instant>>,
}

impl Candidacy {
    pub fn new(window: Duration) -> Candidacy {
        Candidacy {
            window,
            running: Mutex::new(None),
            granted: Mutex::new(None),
        }
    }

    /// This node runs for `term` from `now` (its pre-vote round, then its campaign).
    pub(crate) fn run_for(&self, term: u64, now: Instant) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((term, now));
    }

    /// The term this node runs for, if it began within the window before `now`.
    pub(crate) fn running(&self, now: Instant) -> Option<u64> {
        let r = *self.running.lock().unwrap_or_else(|p| p.into_inner());
        r.filter(|(_, at)| now.saturating_duration_since(*at) < self.window)
            .map(|(term, _)| term)
    }

    /// This node granted a pre-vote at `now`.
    pub(crate) fn granted(&self, now: Instant) {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// Whether it did within the window before `now` (its own round waits: the candidate
    /// it granted is about to campaign).
    pub(crate) fn granted_recently(&self, now: Instant) -> bool {
        let g = *self.granted.lock().unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|at| now.saturating_duration_since(at) < self.window)
    }
}

impl PreVoteCtx {
    fn rules(&self) -> Rules {
        Rules {
            leader_fresh: self.election_timeout_min,
            waive_after: self.election_timeout_max * 2,
        }
    }

    fn name(&self) -> String {
        self.peers
            .get(&self.me)
            .map(|p| p.id.clone())
            .unwrap_or_default()
    }

    fn can_lead(&self) -> bool {
        *self.eligible.borrow() && !self.stepping_down.load(Ordering::SeqCst)
    }

    /// Since a live leader was last heard from: a follower's last good AppendEntries, or this
    /// node's own quorum ack while it leads.
    pub(crate) fn leader_heard(&self, now: Instant) -> Option<Duration> {
        let m = self.raft.metrics().borrow().clone();
        let own = (m.state == ServerState::Leader)
            .then_some(m.millis_since_quorum_ack)
            .flatten()
            .map(Duration::from_millis);
        let other = self
            .status
            .last_leader_contact()
            .map(|t| now.saturating_duration_since(t));
        match (own, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many voters there are, and how many make a quorum.
    pub(crate) fn voters_and_quorum(&self) -> (usize, usize) {
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .count();
        (voters, voters / 2 + 1)
    }

    /// This node's request, as a candidate for the next term (or as a probe).
    pub(crate) fn request(&self, probe: bool) -> PreVoteRequest {
        PreVoteRequest {
            candidate: self.name(),
            term: self.raft.metrics().borrow().current_term + 1,
            last_log_id: self.raft.data_metrics().borrow().last_log,
            position: self.position.get(),
            probe,
        }
    }
}

/// Voter side of `POST /raft/pre-vote`.
pub async fn on_pre_vote(ctx: &PreVoteCtx, req: PreVoteRequest) -> PreVoteResponse {
    let now = Instant::now();
    let m = ctx.raft.metrics().borrow().clone();
    let last_log_id = ctx.raft.data_metrics().borrow().last_log;
    let position = ctx.position.get();
    let mut resp = PreVoteResponse {
        granted: false,
        reason: String::new(),
        position_waived: false,
        term: m.current_term,
        last_log_id,
        position,
        can_lead: ctx.can_lead(),
        has_your_position: req.position.map(|p| ctx.position.in_history(p)),
        priority: ctx.priority,
    };
    if req.probe {
        resp.reason = "probe".into();
        return resp;
    }
    let is_voter = m
        .membership_config
        .voter_ids()
        .any(|id| ctx.peers.get(&id).is_some_and(|p| p.id == req.candidate));
    let leader_heard = ctx.leader_heard(now);
    let view = VoterView {
        last_log_id,
        position,
        leader_heard,
        leaderless: leader_heard.unwrap_or_else(|| now.saturating_duration_since(ctx.started)),
        shutting_down: ctx.stepping_down.load(Ordering::SeqCst),
        me: ctx.name(),
        campaign: ctx.candidacy.running(now),
    };
    let verdict = if is_voter {
        judge(&req, &view, &ctx.rules())
    } else {
        Err(Refusal::UnknownCandidate(req.candidate.clone()))
    };
    let counters = ctx.status.counters();
    match verdict {
        Ok(waived) => {
            counters.pre_votes_granted.fetch_add(1, Ordering::Relaxed);
            if waived {
                tracing::warn!(
                    candidate = %req.candidate,
                    candidate_position = %Show(req.position),
                    my_position = %Show(position),
                    "pre-vote granted to a candidate behind my LiteFS position: its Raft log is ahead of mine and no leader for a while"
                );
            } else {
                tracing::debug!(candidate = %req.candidate, term = req.term, "pre-vote granted");
            }
            resp.granted = true;
            resp.position_waived = waived;
            ctx.candidacy.granted(now);
        }
        Err(why) => {
            counters.pre_votes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(candidate = %req.candidate, term = req.term, reason = %why, "pre-vote refused");
            resp.reason = why.to_string();
        }
    }
    resp
}

/// Sends `req` to every other voter at once; answers as they arrive (unreachable voters are
/// left out), until `enough` says stop or `timeout`.
pub(crate) async fn ask(
    ctx: &PreVoteCtx,
    client: &RpcClient,
    req: &PreVoteRequest,
    timeout: Duration,
    mut enough: impl FnMut(&BTreeMap<NodeId, PreVoteResponse>) -> bool,
) -> BTreeMap<NodeId, PreVoteResponse> {
    let voters: Vec<NodeId> = ctx
        .raft
        .metrics()
        .borrow()
        .membership_config
        .voter_ids()
        .filter(|id| *id != ctx.me)
        .collect();
    let mut set = JoinSet::new();
    for id in voters {
        let (client, req) = (client.clone(), req.clone());
        set.spawn(async move {
            let r: Result<PreVoteResponse, _> = client.call(id, PATH_PRE_VOTE, &req, timeout).await;
            (id, r)
        });
    }
    if !req.probe {
        let n = set.len() as u64;
        ctx.status
            .counters()
            .pre_votes_requested
            .fetch_add(n, Ordering::Relaxed);
    }
    let mut answers = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        match joined {
            Ok((id, Ok(r))) => {
                answers.insert(id, r);
                if enough(&answers) {
                    break;
                }
            }
            Ok((id, Err(e))) => tracing::debug!(voter = id, error = %e, "pre-vote: no answer"),
            Err(e) => tracing::debug!(error = %e, "pre-vote task"),
        }
    }
    set.abort_all();
    answers
}

/// One pre-vote round as candidate: true when a quorum of voters (this node included) grants.
pub(crate) async fn round(ctx: &PreVoteCtx, client: &RpcClient) -> bool {
    let (_, quorum) = ctx.voters_and_quorum();
    let req = ctx.request(false);
    ctx.candidacy.run_for(req.term, Instant::now());
    let granted =
        |a: &BTreeMap<NodeId, PreVoteResponse>| 1 + a.values().filter(|r| r.granted).count();
    let answers = ask(ctx, client, &req, ctx.election_timeout_min, |a| {
        granted(a) >= quorum
    })
    .await;
    let won = granted(&answers) >= quorum;
    let refusals: Vec<String> = answers
        .iter()
        .filter(|(_, r)| !r.granted)
        .map(|(id, r)| {
            let name = ctx.peers.get(id).map_or("?", |p| p.id.as_str());
            format!("{name}: {}", r.reason)
        })
        .collect();
    if won {
        if answers.values().any(|r| r.position_waived) {
            tracing::warn!(position = %Show(req.position), "pre-vote won only because a more caught-up voter waived its position (it cannot win against this Raft log)");
        }
        tracing::info!(term = req.term, position = %Show(req.position), granted = granted(&answers), quorum, "pre-vote won; campaigning");
    } else {
        tracing::debug!(
            term = req.term,
            granted = granted(&answers),
            quorum,
            ?refusals,
            "pre-vote lost"
        );
    }
    won
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn pos(txid: u64) -> Option<Position> {
        Some(Position { txid, checksum: 7 })
    }

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn req(l: Option<LogId<NodeId>>, p: Option<Position>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: "n1".into(),
            term: 3,
            last_log_id: l,
            position: p,
            probe: false,
        }
    }

    fn view(l: Option<LogId<NodeId>>, p: Option<Position>) -> VoterView {
        VoterView {
            last_log_id: l,
            position: p,
            leader_heard: Some(Duration::from_millis(400)),
            leaderless: Duration::from_millis(400),
            shutting_down: false,
            me: "n2".into(),
            campaign: None,
        }
    }

    const RULES: Rules = Rules {
        leader_fresh: Duration::from_millis(150),
        waive_after: Duration::from_millis(600),
    };

    #[test]
    fn positions_order_by_txid_and_known_beats_unknown() {
        assert!(position_ge(None, None));
        assert!(position_ge(pos(0), None));
        assert!(!position_ge(None, pos(0)));
        assert!(position_ge(pos(5), pos(5)));
        assert!(!position_ge(pos(4), pos(5)));
        assert!(position_key(pos(0)) > position_key(None));
        assert!(position_key(pos(9)) > position_key(pos(8)));
    }

    #[test]
    fn grants_only_a_caught_up_candidate_without_a_live_leader() {
        let v = view(log(2, 10), pos(5));
        assert_eq!(judge(&req(log(2, 10), pos(5)), &v, &RULES), Ok(false));
        assert_eq!(judge(&req(log(2, 11), pos(6)), &v, &RULES), Ok(false));
        assert!(matches!(
            judge(&req(log(2, 10), pos(4)), &v, &RULES),
            Err(Refusal::PositionBehind { .. })
        ));
        assert!(matches!(
            judge(&req(log(2, 10), None), &v, &RULES),
            Err(Refusal::PositionBehind { .. })
        ));
        assert!(matches!(
            judge(&req(log(2, 9), pos(9)), &v, &RULES),
            Err(Refusal::LogBehind { .. })
        ));
        assert!(matches!(
            judge(&req(log(1, 20), pos(9)), &v, &RULES),
            Err(Refusal::LogBehind { .. })
        ));
        let live = VoterView {
            leader_heard: Some(Duration::from_millis(100)),
            ..view(log(2, 10), pos(5))
        };
        assert_eq!(
            judge(&req(log(2, 10), pos(5)), &live, &RULES),
            Err(Refusal::LeaderAlive(Duration::from_millis(100)))
        );
        let leaving = VoterView {
            shutting_down: true,
            ..view(None, None)
        };
        assert_eq!(
            judge(&req(log(2, 10), pos(5)), &leaving, &RULES),
            Err(Refusal::ShuttingDown)
        );
    }

    /// A voter whose position is ahead but whose log is behind the candidate's can never win
    /// against it; after `waive_after` without a leader it grants, so the two do not refuse
    /// each other for good. Equal logs never waive: the voter can win itself.
    #[test]
    fn the_position_rule_yields_only_to_a_strictly_longer_log_after_a_while() {
        let long_ago = VoterView {
            leader_heard: Some(Duration::from_millis(700)),
            leaderless: Duration::from_millis(700),
            ..view(log(2, 10), pos(5))
        };
        assert_eq!(judge(&req(log(2, 11), pos(4)), &long_ago, &RULES), Ok(true));
        assert!(matches!(
            judge(&req(log(2, 10), pos(4)), &long_ago, &RULES),
            Err(Refusal::PositionBehind { .. })
        ));
        assert!(matches!(
            judge(&req(log(2, 11), pos(4)), &view(log(2, 10), pos(5)), &RULES),
            Err(Refusal::PositionBehind { .. })
        ));
    }

    /// Two voters running for the same term at once, equally caught up: exactly one grants
    /// the other (the name breaks the tie), so only one campaigns. A candidate strictly
    /// ahead is granted by a running voter; a later term is not held back; a voter not
    /// running grants as before.
    #[test]
    fn of_two_simultaneous_candidates_exactly_one_is_granted() {
        let running = |me: &str| VoterView {
            me: me.into(),
            campaign: Some(3),
            ..view(log(2, 10), pos(5))
        };
        let asks = |who: &str| PreVoteRequest {
            candidate: who.into(),
            ..req(log(2, 10), pos(5))
        };
        let n1_grants_n2 = judge(&asks("n2"), &running("n1"), &RULES);
        let n2_grants_n1 = judge(&asks("n1"), &running("n2"), &RULES);
        assert_eq!(n1_grants_n2, Ok(false));
        assert_eq!(n2_grants_n1, Err(Refusal::Campaigning(3)));
        // Ahead by log or by position: granted even by a running voter.
        let ahead_log = PreVoteRequest {
            candidate: "n1".into(),
            ..req(log(2, 11), pos(5))
        };
        assert_eq!(judge(&ahead_log, &running("n2"), &RULES), Ok(false));
        let ahead_pos = PreVoteRequest {
            candidate: "n1".into(),
            ..req(log(2, 10), pos(6))
        };
        assert_eq!(judge(&ahead_pos, &running("n2"), &RULES), Ok(false));
        // Asking for a later term than the voter runs for.
        let later = PreVoteRequest {
            term: 4,
            ..asks("n1")
        };
        assert_eq!(judge(&later, &running("n2"), &RULES), Ok(false));
        // Not running (or no longer fresh): granted.
        assert_eq!(
            judge(&asks("n1"), &view(log(2, 10), pos(5)), &RULES),
            Ok(false)
        );
    }

    /// A candidacy and a granted pre-vote count for the window only.
    #[test]
    fn a_candidacy_and_a_grant_count_for_the_window_only() {
        let c = Candidacy::new(Duration::from_millis(150));
        let t0 = Instant::now();
        assert_eq!(c.running(t0), None);
        assert!(!c.granted_recently(t0));
        c.run_for(7, t0);
        c.granted(t0);
        let soon = t0 + Duration::from_millis(149);
        let late = t0 + Duration::from_millis(150);
        assert_eq!(c.running(soon), Some(7));
        assert!(c.granted_recently(soon));
        assert_eq!(c.running(late), None);
        assert!(!c.granted_recently(late));
    }
}
