//! When a quorum last acknowledged this node as leader, measured by our own transport: each
//! AppendEntries a follower accepts records the instant the request was *sent* (the follower
//! heard from us after that), so the quorum's ack time never comes from a metrics snapshot
//! of unknown age. [`Fence::may_write`] asks it at the moment a write goes to the app: a
//! leader that was paused or cut off answers `false` as soon as its lease ran out, whatever
//! the role watch still says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{ServerState, Vote};

use crate::types::{NodeId, Raft};

/// The vote (term and leader) a follower accepted and when that request left us.
type Ack = (Vote<NodeId>, Instant);

/// Per follower, its latest [`Ack`].
#[derive(Clone, Default)]
pub struct AckClock {
    acks: Arc<Mutex<HashMap<NodeId, Ack>>>,
}

impl AckClock {
    /// `peer` accepted an AppendEntries carrying `vote` that we sent at `sent_at`.
    pub(crate) fn record(&self, peer: NodeId, vote: Vote<NodeId>, sent_at: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = acks.entry(peer).or_insert((vote, sent_at));
        if entry.0 != vote || entry.1 < sent_at {
            *entry = (vote, sent_at);
        }
    }

    /// When a quorum of `voters` (this node, `me`, counting as acked `now`) last accepted
    /// `vote`; `None` when no quorum ever did. Allocates nothing (it runs per write).
    pub(crate) fn quorum_ack_at<I>(
        &self,
        vote: &Vote<NodeId>,
        me: NodeId,
        voters: impl Fn() -> I,
        now: Instant,
    ) -> Option<Instant>
    where
        I: Iterator<Item = NodeId>,
    {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let at = |v: NodeId| {
            if v == me {
                return Some(now);
            }
            acks.get(&v).filter(|(got, _)| got == vote).map(|(_, t)| *t)
        };
        let quorum = voters().count() / 2 + 1;
        // The latest time that at least a quorum of acks reaches: the quorum-th most recent.
        voters()
            .filter_map(at)
            .filter(|t| voters().filter_map(at).filter(|u| u >= t).count() >= quorum)
            .max()
    }
}

/// Answers "may this node take a write now?" from the Raft state and the [`AckClock`].
#[derive(Clone)]
pub struct Fence {
    pub(crate) raft: Raft,
    pub(crate) me: NodeId,
    pub(crate) clock: AckClock,
    /// How long a quorum ack keeps this node leader (`election_timeout_min`).
    pub(crate) lease: Duration,
    /// Read on every check: an ineligible or stepping-down node takes no writes.
    pub(crate) acting: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Fence {
    /// True only while this node is Raft leader, may act as one, and a quorum accepted its
    /// current vote less than the lease ago, measured now.
    pub fn may_write(&self) -> bool {
        let now = Instant::now();
        if !(self.acting)() {
            return false;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.me) {
            return false;
        }
        self.clock
            .quorum_ack_at(&m.vote, self.me, || m.membership_config.voter_ids(), now)
            .is_some_and(|t| now.saturating_duration_since(t) < self.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn vote(term: u64, leader: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, leader)
    }

    #[test]
    fn quorum_ack_is_the_time_the_quorum_th_ack_was_sent() {
        let clock = AckClock::default();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(500);
        let v = vote(5, 1);
        assert_eq!(
            clock.quorum_ack_at(&v, 1, || voters.iter().copied(), now),
            None,
            "only me"
        );
        clock.record(2, v, t0 + Duration::from_millis(100));
        assert_eq!(
            clock.quorum_ack_at(&v, 1, || voters.iter().copied(), now),
            Some(t0 + Duration::from_millis(100))
        );
        clock.record(3, v, t0 + Duration::from_millis(300));
        assert_eq!(
            clock.quorum_ack_at(&v, 1, || voters.iter().copied(), now),
            Some(t0 + Duration::from_millis(300)),
            "the most recent quorum"
        );
        // An older send arriving late does not move the time back.
        clock.record(3, v, t0 + Duration::from_millis(200));
        assert_eq!(
            clock.quorum_ack_at(&v, 1, || voters.iter().copied(), now),
            Some(t0 + Duration::from_millis(300))
        );
    }

    #[test]
    fn acks_of_another_vote_do_not_count() {
        let clock = AckClock::default();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let t0 = Instant::now();
        clock.record(2, vote(4, 1), t0);
        clock.record(3, vote(4, 1), t0);
        assert_eq!(
            clock.quorum_ack_at(&vote(5, 1), 1, || voters.iter().copied(), t0),
            None
        );
        let five: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into_iter().collect();
        clock.record(2, vote(5, 1), t0);
        assert_eq!(
            clock.quorum_ack_at(&vote(5, 1), 1, || five.iter().copied(), t0),
            None,
            "2 of 5 is no quorum"
        );
        clock.record(4, vote(5, 1), t0);
        assert_eq!(
            clock.quorum_ack_at(&vote(5, 1), 1, || five.iter().copied(), t0),
            Some(t0)
        );
    }
}
