//! Eligibility to lead, set by the server (ineligible while the node's LiteFS is down). An
//! ineligible node does not act as leader (`leadership::decide`), refuses a `timeout-now`
//! (`handover`), does not campaign on its own (`election_timer` skips it), and, whenever it
//! finds itself Raft leader, hands leadership over with the same handover as a shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::ServerState;
use tokio::sync::{watch, Notify};

use crate::handover::{self, HandoverCtx};
use crate::leadership::Leadership;
use crate::network::RpcClient;
use crate::status::StatusCell;

/// Sets whether this node may lead; cheap to clone, harmless after the election stopped.
#[derive(Clone)]
pub struct Eligibility {
    tx: Arc<watch::Sender<bool>>,
    /// The tracker re-evaluates at once, so the role stops being `Leader` without a tick.
    wake: Arc<Notify>,
    status: StatusCell,
}

impl Eligibility {
    pub(crate) fn new(wake: Arc<Notify>, status: StatusCell) -> Eligibility {
        Eligibility {
            tx: Arc::new(watch::channel(true).0),
            wake,
            status,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// `false`: stop leading (hand over) and stay a follower until set `true` again.
    pub fn set(&self, eligible: bool) {
        let changed = self.tx.send_if_modified(|cur| {
            let changed = *cur != eligible;
            *cur = eligible;
            changed
        });
        if changed {
            tracing::info!(eligible, "eligibility to lead changed");
            self.status.set_eligible(eligible);
            self.wake.notify_one();
        }
    }
}

/// What the watcher needs besides the handover context.
pub(crate) struct Watcher {
    pub handover: HandoverCtx,
    pub client: RpcClient,
    pub eligible: watch::Receiver<bool>,
    pub leadership: watch::Receiver<Leadership>,
    pub wake: Arc<Notify>,
    /// A shutdown's handover owns the timers from then on.
    pub stepping_down: Arc<AtomicBool>,
}

impl Watcher {
    /// Runs until aborted: while ineligible, hands over whenever this node is Raft leader;
    /// eligible again, turns heartbeats back on (a handover turned them off).
    pub async fn run(mut self) {
        let raft = self.handover.raft.clone();
        let mut metrics = raft.metrics();
        loop {
            if self.eligible.wait_for(|e| !*e).await.is_err() {
                return;
            }
            loop {
                if *self.eligible.borrow_and_update() {
                    break;
                }
                let leading = metrics.borrow_and_update().state == ServerState::Leader;
                if leading && !self.stepping_down.load(Ordering::SeqCst) {
                    tracing::info!("ineligible to lead: handing leadership over");
                    let took = handover::step_down(
                        &self.handover,
                        &self.client,
                        &self.wake,
                        &mut self.leadership,
                    )
                    .await;
                    if took.is_none() {
                        // Nobody took over (no eligible follower answered): try again later,
                        // unless eligibility changes first.
                        let pause = self.handover.election_timeout_max * 2;
                        let _ = tokio::time::timeout(pause, self.eligible.changed()).await;
                    }
                    continue;
                }
                tokio::select! {
                    r = self.eligible.changed() => if r.is_err() { return },
                    r = metrics.changed() => if r.is_err() { return },
                }
            }
            if !self.stepping_down.load(Ordering::SeqCst) {
                tracing::info!("eligible to lead again");
                raft.runtime_config().heartbeat(true);
            }
        }
    }
}
