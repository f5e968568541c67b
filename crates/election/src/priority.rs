//! `election.priority`: among healthy voters holding everything the leader holds, the one
//! with the highest priority leads. A leader checks every [`CHECK_EVERY`] (once it has led
//! for [`SETTLE`]): it asks the voters (the handover's position probe, whose answer carries
//! each voter's priority) and, when one above its own priority can lead and is of its LiteFS
//! history, yields to it: it stops acting as primary, lets the writes already at the app
//! finish (the server's quiesce, as for a SIGTERM), waits (up to `election_timeout_max`) for
//! that voter's LiteFS to reach its position, and hands leadership over to it with the
//! planned handover (LiteFS's handoff follows). If the voter does not catch up in time the
//! leader takes its place back and tries again later. Equal priorities never move anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::handover::{self, HandoverCtx};
use crate::leadership::Leadership;
use crate::network::RpcClient;
use crate::position::Relation;
use crate::prevote::{self, position_ge, PreVoteResponse};
use crate::types::NodeId;

/// How often a leader looks for a voter of higher priority.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a leader leads before it first looks (an election just happened: let the
/// cluster settle, and do not chase a voter that is flapping).
pub const SETTLE: Duration = Duration::from_secs(2);

/// What the server runs before a planned handover: wait for the writes already at the app.
pub type Quiesce = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The leader's side of `election.priority`.
pub(crate) struct Preference {
    pub handover: HandoverCtx,
    pub client: RpcClient,
    pub wake: Arc<Notify>,
    pub leadership: watch::Receiver<Leadership>,
    pub stepping_down: Arc<AtomicBool>,
    /// Set once a shutdown began: a yield then leaves `stepping_down` set.
    pub shutdown: Arc<AtomicBool>,
    pub quiesce: Arc<Mutex<Option<Quiesce>>>,
}

impl Preference {
    /// Runs until aborted.
    pub async fn run(mut self) {
        let raft = self.handover.raft.clone();
        let mut led_since: Option<(u64, Instant)> = None;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let (state, term) = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.state, m.current_term)
            };
            if state != ServerState::Leader || self.stepping_down.load(Ordering::SeqCst) {
                led_since = None;
                continue;
            }
            let since = match led_since {
                Some((t, at)) if t == term => at,
                _ => {
                    let now = Instant::now();
                    led_since = Some((term, now));
                    now
                }
            };
            if since.elapsed() < SETTLE {
                continue;
            }
            let answers = self.probe().await;
            if let Some(target) = self.preferred(&answers, false) {
                self.yield_to(target).await;
                led_since = None;
            }
        }
    }

    async fn probe(&self) -> std::collections::BTreeMap<NodeId, PreVoteResponse> {
        let pv = &self.handover.pre_vote;
        let req = pv.request(true);
        prevote::ask(pv, &self.client, &req, pv.election_timeout_min, |_| false).await
    }

    /// The voter of highest priority above ours that can lead and is of our history;
    /// `caught_up`: it must also hold our LiteFS position.
    fn preferred(
        &self,
        answers: &std::collections::BTreeMap<NodeId, PreVoteResponse>,
        caught_up: bool,
    ) -> Option<NodeId> {
        let pv = &self.handover.pre_vote;
        let mine = pv.position.get();
        let voters: Vec<NodeId> = self
            .handover
            .raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .collect();
        answers
            .iter()
            .filter(|(id, r)| {
                voters.contains(id)
                    && r.priority > pv.priority
                    && r.can_lead
                    && r.position.is_some()
                    && pv.position.relate(r.position, r.has_your_position) != Relation::Diverged
                    && (!caught_up || position_ge(r.position, mine))
            })
            .max_by_key(|(id, r)| (r.priority, **id))
            .map(|(id, _)| *id)
    }

    /// Hands leadership to `target` once it holds everything this node's LiteFS holds.
    async fn yield_to(&mut self, target: NodeId) {
        if self.stepping_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let name = self
            .client
            .peer(target)
            .map_or_else(|| target.to_string(), |p| p.id.clone());
        tracing::info!(to = %name, "a voter of higher priority can lead: handing leadership over");
        // No new write reaches the app from here on; those already there finish.
        self.wake.notify_one();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.leadership.wait_for(|l| *l != Leadership::Leader),
        )
        .await;
        let quiesce = self
            .quiesce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(q) = quiesce {
            q().await;
        }
        let until = Instant::now() + self.handover.election_timeout_max;
        let ready = loop {
            let answers = self.probe().await;
            if self.preferred(&answers, true) == Some(target) {
                break true;
            }
            if Instant::now() >= until {
                break false;
            }
            tokio::time::sleep(self.handover.heartbeat).await;
        };
        if ready {
            handover::step_down_to(
                &self.handover,
                &self.client,
                &self.wake,
                &mut self.leadership,
                Some(target),
            )
            .await;
        } else {
            tracing::info!(to = %name, "the voter of higher priority did not catch up in time; leading on");
        }
        if !self.shutdown.load(Ordering::SeqCst) {
            self.stepping_down.store(false, Ordering::SeqCst);
            self.handover.raft.runtime_config().heartbeat(true);
            self.wake.notify_one();
        }
    }
}
