//! What the node knows about the election, for `/litefs/status` (JSON) and
//! `/litefs/metrics` (Prometheus text, `litefs_election_` prefix).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// A snapshot of the election state of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub node_id: String,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node acts on (None while unknown).
    pub leader: Option<String>,
    /// "leader", "follower" or "unknown".
    pub role: &'static str,
    /// Distinct (term, leader) pairs observed since start.
    pub elections_seen: u64,
    /// Time from the last contact with the previous leader to knowing the next one.
    pub last_failover_ms: Option<u64>,
    /// On the leader: age of the last quorum acknowledgement.
    pub quorum_ack_age_ms: Option<u64>,
    /// Whether this node may lead (false while its LiteFS is down).
    pub eligible: bool,
    /// A voter (may lead, counts for the quorum) or a non-voter (`voter = false`: an openraft
    /// learner, a read replica that never leads); as the membership says once it holds this
    /// node, as configured before.
    pub voter: bool,
    /// Role hook runs started.
    pub hook_runs: u64,
    /// Role hook runs that failed.
    pub hook_failures: u64,
    /// RPCs refused for a missing or bad MAC.
    pub rpc_rejected: u64,
    /// Pre-vote requests this node sent as a would-be candidate (see `prevote`).
    pub pre_votes_requested: u64,
    /// Pre-votes this node granted as a voter.
    pub pre_votes_granted: u64,
    /// Pre-votes this node refused as a voter (the reason is logged at debug).
    pub pre_votes_refused: u64,
    /// Elections this node started after winning a pre-vote quorum.
    pub pre_vote_elections: u64,
    /// Times this node began acting as primary.
    pub promotions: u64,
    /// Times this node won an election behind a voter's LiteFS position and handed
    /// leadership to that voter instead of acting as primary (see `catch_up`).
    pub catch_up_handovers: u64,
}

#[derive(Default)]
struct Inner {
    status: Status,
    /// Per leader name, the last moment we knew it alive: a successful AppendEntries from it
    /// (follower) or a fresh quorum ack (leader). Failover time is measured from the previous
    /// leader's entry.
    contacts: HashMap<String, Instant>,
    /// The (term, leader) pair last counted in `elections_seen`.
    last_pair: Option<(u64, String)>,
}

/// Event counters bumped from several tasks, read live by [`StatusCell::get`].
#[derive(Debug, Default)]
pub struct Counters {
    pub hook_runs: AtomicU64,
    pub hook_failures: AtomicU64,
    pub rpc_rejected: AtomicU64,
    pub pre_votes_requested: AtomicU64,
    pub pre_votes_granted: AtomicU64,
    pub pre_votes_refused: AtomicU64,
    pub pre_vote_elections: AtomicU64,
    pub promotions: AtomicU64,
    pub catch_up_handovers: AtomicU64,
}

/// Shared, lock-protected status; cheap to clone.
#[derive(Clone, Default)]
pub struct StatusCell {
    inner: Arc<Mutex<Inner>>,
    counters: Arc<Counters>,
}

impl StatusCell {
    pub fn new(node_id: &str) -> Self {
        let cell = StatusCell::default();
        cell.with(|i| {
            i.status.node_id = node_id.to_string();
            i.status.role = "unknown";
            i.status.eligible = true;
            i.status.voter = true;
        });
        cell
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn get(&self) -> Status {
        let mut s = self.with(|i| i.status.clone());
        s.hook_runs = self.counters.hook_runs.load(Ordering::Relaxed);
        s.hook_failures = self.counters.hook_failures.load(Ordering::Relaxed);
        s.rpc_rejected = self.counters.rpc_rejected.load(Ordering::Relaxed);
        let c = &self.counters;
        s.pre_votes_requested = c.pre_votes_requested.load(Ordering::Relaxed);
        s.pre_votes_granted = c.pre_votes_granted.load(Ordering::Relaxed);
        s.pre_votes_refused = c.pre_votes_refused.load(Ordering::Relaxed);
        s.pre_vote_elections = c.pre_vote_elections.load(Ordering::Relaxed);
        s.promotions = c.promotions.load(Ordering::Relaxed);
        s.catch_up_handovers = c.catch_up_handovers.load(Ordering::Relaxed);
        s
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn set_eligible(&self, eligible: bool) {
        self.with(|i| i.status.eligible = eligible);
    }

    /// Leader `name` was known alive at `at`.
    pub fn leader_contact(&self, name: &str, at: Instant) {
        self.with(|i| match i.contacts.get_mut(name) {
            Some(t) if *t >= at => {}
            Some(t) => *t = at,
            None => {
                i.contacts.insert(name.to_string(), at);
            }
        });
    }

    /// The last moment any leader was known alive (this node included, while it led with a
    /// fresh quorum): the election timer and the pre-vote rule start from it.
    pub fn last_leader_contact(&self) -> Option<Instant> {
        self.with(|i| i.contacts.values().max().copied())
    }

    /// Record the current view; `leader` is the acted-on leader, `raft_leader` what openraft says.
    pub fn update(
        &self,
        term: u64,
        role: &'static str,
        leader: Option<String>,
        raft_leader: Option<String>,
        quorum_ack_age_ms: Option<u64>,
        now: Instant,
    ) {
        self.with(|i| {
            if let Some(l) = &raft_leader {
                let pair = (term, l.clone());
                if i.last_pair.as_ref() != Some(&pair) {
                    let previous = i.last_pair.replace(pair);
                    i.status.elections_seen += 1;
                    if let Some((_, prev)) = previous {
                        if let Some(&t) = i.contacts.get(&prev) {
                            let ms = now.saturating_duration_since(t).as_millis() as u64;
                            i.status.last_failover_ms = Some(ms);
                            tracing::info!(term, leader = %l, failover_ms = ms, "new leader observed");
                        }
                    }
                }
            }
            i.status.term = term;
            i.status.role = role;
            i.status.leader = leader;
            i.status.quorum_ack_age_ms = quorum_ack_age_ms;
        });
    }

    /// Append Prometheus text lines.
    pub fn encode_metrics(&self, out: &mut String) {
        let s = self.get();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP litefs_election_{name} {help}");
            let _ = writeln!(out, "# TYPE litefs_election_{name} {kind}");
            let _ = writeln!(out, "litefs_election_{name} {value}");
        };
        line("term", "gauge", "Current Raft term.", s.term.to_string());
        line(
            "is_leader",
            "gauge",
            "1 while this node acts as primary.",
            u8::from(s.role == "leader").to_string(),
        );
        line(
            "eligible",
            "gauge",
            "1 while this node may lead (0 while its LiteFS is down).",
            u8::from(s.eligible).to_string(),
        );
        line(
            "leader_known",
            "gauge",
            "1 while some leader is known.",
            u8::from(s.leader.is_some()).to_string(),
        );
        line(
            "elections_seen_total",
            "counter",
            "Distinct (term, leader) pairs observed.",
            s.elections_seen.to_string(),
        );
        line(
            "last_failover_seconds",
            "gauge",
            "Last contact with the previous leader to knowing the next one.",
            secs(s.last_failover_ms),
        );
        line(
            "quorum_ack_age_seconds",
            "gauge",
            "Leader only: age of the last quorum acknowledgement.",
            secs(s.quorum_ack_age_ms),
        );
        line(
            "hook_runs_total",
            "counter",
            "Role hooks started.",
            s.hook_runs.to_string(),
        );
        line(
            "hook_failures_total",
            "counter",
            "Role hooks that failed.",
            s.hook_failures.to_string(),
        );
        line(
            "rpc_rejected_total",
            "counter",
            "Raft RPCs refused for a missing or bad MAC.",
            s.rpc_rejected.to_string(),
        );
        line(
            "pre_votes_requested_total",
            "counter",
            "Pre-vote requests sent by this node before campaigning.",
            s.pre_votes_requested.to_string(),
        );
        line(
            "pre_votes_granted_total",
            "counter",
            "Pre-votes this node granted.",
            s.pre_votes_granted.to_string(),
        );
        line(
            "pre_votes_refused_total",
            "counter",
            "Pre-votes this node refused (live leader, log or LiteFS position behind, shutting down).",
            s.pre_votes_refused.to_string(),
        );
        line(
            "pre_vote_elections_total",
            "counter",
            "Elections this node started after a pre-vote quorum.",
            s.pre_vote_elections.to_string(),
        );
        line(
            "promotions_total",
            "counter",
            "Times this node began acting as primary.",
            s.promotions.to_string(),
        );
        line(
            "catch_up_handovers_total",
            "counter",
            "Elections this node won behind a voter's LiteFS position and handed over to that voter.",
            s.catch_up_handovers.to_string(),
        );
    }
}

fn secs(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.3}", ms as f64 / 1000.0),
        None => "NaN".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_elections_and_failover_time() {
        let c = StatusCell::new("n1");
        let t0 = Instant::now();
        c.update(
            1,
            "follower",
            Some("n2".into()),
            Some("n2".into()),
            None,
            t0,
        );
        c.leader_contact("n2", t0);
        // Contact with the *new* leader must not shorten the measured failover.
        c.leader_contact("n1", t0 + Duration::from_millis(440));
        c.update(
            1,
            "follower",
            Some("n2".into()),
            Some("n2".into()),
            None,
            t0,
        );
        assert_eq!(c.get().elections_seen, 1);
        assert_eq!(c.get().last_failover_ms, None);
        c.update(
            2,
            "unknown",
            None,
            None,
            None,
            t0 + Duration::from_millis(300),
        );
        c.update(
            3,
            "leader",
            None,
            Some("n1".into()),
            Some(5),
            t0 + Duration::from_millis(450),
        );
        let s = c.get();
        assert_eq!(s.elections_seen, 2);
        assert_eq!(s.last_failover_ms, Some(450));
        assert_eq!(
            (s.term, s.role, s.quorum_ack_age_ms),
            (3, "leader", Some(5))
        );

        let mut out = String::new();
        c.encode_metrics(&mut out);
        assert!(out.contains("litefs_election_term 3\n"), "{out}");
        assert!(out.contains("litefs_election_is_leader 1\n"), "{out}");
        assert!(
            out.contains("litefs_election_last_failover_seconds 0.450\n"),
            "{out}"
        );
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("litefs_election_"), "{l}");
        }
    }
}
