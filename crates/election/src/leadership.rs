//! Turns openraft's metrics into the role this node acts on, and applies role changes:
//! the `Leadership` watch, the `.primary` file, the hooks and the status.
//!
//! A leader is `Leader` only while a quorum acknowledged it less than `election_timeout_min`
//! ago. Followers refuse to vote for `election_timeout_max` after their last heartbeat, so the
//! old leader stops acting as primary before anybody else can be elected (assuming no process
//! pause longer than max - min - tick). A partitioned leader keeps reporting `Leader` in the
//! metrics, hence the re-check on a timer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use tokio::sync::{watch, Notify};

use crate::config::Peer;
use crate::fence::AckClock;
use crate::hooks::{HookKind, Hooks};
use crate::lease::LeaseShared;
use crate::primary_file;
use crate::status::StatusCell;
use crate::types::{NodeId, Raft};

/// The role this node acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node is the primary.
    Leader,
    /// Another node is; forward writes to `proxy_url`.
    Follower { leader: String, proxy_url: String },
    /// No leader known (election running, partitioned, or shutting down).
    Unknown,
}

impl Leadership {
    pub fn role(&self) -> &'static str {
        match self {
            Leadership::Leader => "leader",
            Leadership::Follower { .. } => "follower",
            Leadership::Unknown => "unknown",
        }
    }
}

/// Inputs of the decision besides the metrics.
pub(crate) struct View<'a> {
    pub me: NodeId,
    pub peers: &'a BTreeMap<NodeId, Peer>,
    /// When a quorum last acknowledged us as leader.
    pub ack_at: Option<Instant>,
    pub now: Instant,
    /// How long an acknowledgement keeps us leader (`election_timeout_min`).
    pub lease: Duration,
    /// Set during a graceful shutdown: never act as leader again.
    pub stepping_down: bool,
    /// Cleared while the node may not lead (its LiteFS is down, see `eligibility`).
    pub eligible: bool,
    /// This leader found no voter ahead of its LiteFS position in its term (`catch_up`).
    pub caught_up: bool,
}

/// The role to act on, from openraft's metrics.
pub(crate) fn decide(m: &RaftMetrics<NodeId, openraft::BasicNode>, v: &View<'_>) -> Leadership {
    if m.running_state.is_err() {
        return Leadership::Unknown;
    }
    match m.current_leader {
        Some(l) if l == v.me => {
            let single = m.membership_config.voter_ids().count() == 1;
            let fresh = v
                .ack_at
                .is_some_and(|t| v.now.saturating_duration_since(t) < v.lease);
            if m.state == ServerState::Leader
                && !v.stepping_down
                && v.eligible
                && v.caught_up
                && (single || fresh)
            {
                Leadership::Leader
            } else {
                Leadership::Unknown
            }
        }
        Some(l) if m.state != ServerState::Leader => match v.peers.get(&l) {
            Some(p) => Leadership::Follower {
                leader: p.id.clone(),
                proxy_url: p.proxy.clone(),
            },
            None => Leadership::Unknown,
        },
        _ => Leadership::Unknown,
    }
}

/// Everything the background task owns.
pub(crate) struct Tracker {
    pub raft: Raft,
    pub me: NodeId,
    pub peers: Arc<BTreeMap<NodeId, Peer>>,
    pub tx: watch::Sender<Leadership>,
    pub status: StatusCell,
    pub hooks: Hooks,
    pub primary_path: PathBuf,
    pub lease: Duration,
    pub tick: Duration,
    pub stepping_down: Arc<AtomicBool>,
    /// Read on each evaluation; a change pokes `wake`.
    pub eligible: watch::Receiver<bool>,
    /// Poked to re-evaluate at once (e.g. when stepping down starts).
    pub wake: Arc<Notify>,
    /// Our transport's record of accepted AppendEntries (see `fence`).
    pub acks: AckClock,
    /// The term in which this node passed the catch-up check (`catch_up`).
    pub caught_up: watch::Receiver<Option<u64>>,
    /// Told whether this node acts as primary (only then may its LiteFS take the lock).
    pub lease_shared: LeaseShared,
}

impl Tracker {
    /// Run until aborted.
    pub async fn run(self) {
        let mut metrics = self.raft.metrics();
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current = Leadership::Unknown;
        // Start from a clean slate: no leader known yet.
        self.write_primary(&current);
        loop {
            tokio::select! {
                r = metrics.changed() => if r.is_err() { break },
                _ = interval.tick() => {},
                _ = self.wake.notified() => {},
            }
            let now = Instant::now();
            let m = metrics.borrow_and_update().clone();
            // Measured by our transport at send time, never from the snapshot's own age
            // (which is counted from when it was published, possibly before a pause).
            let ack_at = if m.state == ServerState::Leader {
                self.acks
                    .quorum_ack_at(&m.vote, self.me, || m.membership_config.voter_ids(), now)
            } else {
                None
            };
            let next = decide(
                &m,
                &View {
                    me: self.me,
                    peers: &self.peers,
                    ack_at,
                    now,
                    lease: self.lease,
                    stepping_down: self.stepping_down.load(Ordering::SeqCst),
                    eligible: *self.eligible.borrow(),
                    caught_up: *self.caught_up.borrow() == Some(m.current_term),
                },
            );
            if next == Leadership::Leader {
                if let (Some(t), Some(p)) = (ack_at, self.peers.get(&self.me)) {
                    self.status.leader_contact(&p.id, t);
                }
            }
            let raft_leader = m
                .current_leader
                .and_then(|l| self.peers.get(&l))
                .map(|p| p.id.clone());
            let acted_leader = match &next {
                Leadership::Leader => self.peers.get(&self.me).map(|p| p.id.clone()),
                Leadership::Follower { leader, .. } => Some(leader.clone()),
                Leadership::Unknown => None,
            };
            let ack_age = match (&next, ack_at) {
                (Leadership::Leader, Some(t)) => {
                    Some(now.saturating_duration_since(t).as_millis() as u64)
                }
                _ => None,
            };
            self.status.update(
                m.current_term,
                next.role(),
                acted_leader,
                raft_leader,
                ack_age,
                now,
            );
            if next != current {
                self.transition(&current, &next, m.current_term);
                current = next;
            }
        }
    }

    fn transition(&self, old: &Leadership, new: &Leadership, term: u64) {
        tracing::info!(from = old.role(), to = new.role(), term, leader = ?leader_name(new), "role change");
        // Order matters for the proxy: stop acting as primary (watch) before anything else.
        self.tx.send_replace(new.clone());
        self.lease_shared.set_acting(*new == Leadership::Leader);
        self.write_primary(new);
        let me = self
            .peers
            .get(&self.me)
            .map(|p| p.id.as_str())
            .unwrap_or("");
        match (old, new) {
            (Leadership::Leader, Leadership::Leader) => {}
            (_, Leadership::Leader) => {
                self.status
                    .counters()
                    .promotions
                    .fetch_add(1, Ordering::Relaxed);
                self.hooks.fire(HookKind::Promote, "leader", me)
            }
            (Leadership::Leader, other) => self.hooks.fire(
                HookKind::Demote,
                other.role(),
                leader_name(other).unwrap_or(""),
            ),
            _ => {}
        }
    }

    fn write_primary(&self, l: &Leadership) {
        if let Err(e) = primary_file::update(&self.primary_path, leader_name(l)) {
            tracing::error!(error = %e, "cannot update .primary");
        }
    }
}

fn leader_name(l: &Leadership) -> Option<&str> {
    match l {
        Leadership::Follower { leader, .. } => Some(leader),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, Membership, StoredMembership};
    use std::collections::BTreeSet;

    fn peers() -> BTreeMap<NodeId, Peer> {
        (1..=3)
            .map(|i| {
                (
                    i,
                    Peer {
                        id: format!("n{i}"),
                        raft: format!("h{i}:1"),
                        proxy: format!("http://h{i}:8080"),
                        voter: true,
                    },
                )
            })
            .collect()
    }

    fn metrics(state: ServerState, leader: Option<NodeId>) -> RaftMetrics<NodeId, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        m.membership_config = Arc::new(StoredMembership::new(
            None,
            Membership::new(vec![voters], None),
        ));
        m.state = state;
        m.current_leader = leader;
        m
    }

    #[test]
    fn leader_only_while_quorum_ack_is_fresh() {
        let p = peers();
        let now = Instant::now();
        let lease = Duration::from_millis(150);
        let view = |ack_ms: Option<u64>, stepping_down| View {
            me: 1,
            peers: &p,
            ack_at: ack_ms.map(|ms| now - Duration::from_millis(ms)),
            now,
            lease,
            stepping_down,
            eligible: true,
            caught_up: true,
        };
        let m = metrics(ServerState::Leader, Some(1));
        assert_eq!(decide(&m, &view(Some(10), false)), Leadership::Leader);
        assert_eq!(decide(&m, &view(Some(149), false)), Leadership::Leader);
        // Partitioned leader: metrics still say Leader, the ack is stale.
        assert_eq!(decide(&m, &view(Some(150), false)), Leadership::Unknown);
        assert_eq!(decide(&m, &view(None, false)), Leadership::Unknown);
        assert_eq!(decide(&m, &view(Some(1), true)), Leadership::Unknown);

        let f = metrics(ServerState::Follower, Some(2));
        assert_eq!(
            decide(&f, &view(None, false)),
            Leadership::Follower {
                leader: "n2".into(),
                proxy_url: "http://h2:8080".into()
            }
        );
        let c = metrics(ServerState::Candidate, None);
        assert_eq!(decide(&c, &view(None, false)), Leadership::Unknown);
        let stranger = metrics(ServerState::Follower, Some(99));
        assert_eq!(decide(&stranger, &view(None, false)), Leadership::Unknown);
    }

    /// A node whose LiteFS is down, or that has not checked that no voter is ahead of it,
    /// does not act as leader, however fresh its quorum, and still follows another leader.
    #[test]
    fn an_ineligible_leader_does_not_act_as_leader() {
        let p = peers();
        let now = Instant::now();
        let view = |eligible| View {
            me: 1,
            peers: &p,
            ack_at: Some(now),
            now,
            lease: Duration::from_millis(150),
            stepping_down: false,
            eligible,
            caught_up: true,
        };
        let m = metrics(ServerState::Leader, Some(1));
        assert_eq!(decide(&m, &view(true)), Leadership::Leader);
        assert_eq!(decide(&m, &view(false)), Leadership::Unknown);
        // Nor one that has not passed its catch-up check in this term (`catch_up`).
        let unchecked = View {
            caught_up: false,
            ..view(true)
        };
        assert_eq!(decide(&m, &unchecked), Leadership::Unknown);
        let f = metrics(ServerState::Follower, Some(2));
        assert_eq!(
            decide(&f, &view(false)),
            Leadership::Follower {
                leader: "n2".into(),
                proxy_url: "http://h2:8080".into()
            }
        );
    }
}
