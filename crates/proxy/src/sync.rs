//! `sync_replicas`: the primary answers a write only once k replicas hold its position. The
//! replicas' positions come from the role source (the election collects them over the Raft
//! port); a replica counts only at a position of this primary's own history: the TXID the
//! write reached with the same checksum, or a later TXID whose checksum the primary saw too.
//! Without k in time, `on_sync_timeout` decides; there is no silent fall-back to async.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

use crate::config::OnSyncTimeout;

/// One replica's last reported position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaPos {
    pub txid: u64,
    pub checksum: u64,
}

/// The replicas' positions as reported to this node while it leads; `term` names the
/// leadership the reports were addressed to (a change means no more will come; those kept
/// are still facts about this history).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaView {
    pub term: u64,
    pub replicas: Vec<ReplicaPos>,
}

/// How a write's wait for its replicas ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// `sync_replicas = 0`, or nothing to wait for.
    Off,
    Replicated,
    /// Not enough replicas in time (or the leadership moved); answered 503.
    Failed,
    /// Not enough replicas in time; answered anyway (`on_sync_timeout = "degrade"`).
    Degraded,
}

impl SyncOutcome {
    pub fn label(self) -> &'static str {
        match self {
            SyncOutcome::Off => "off",
            SyncOutcome::Replicated => "replicated",
            SyncOutcome::Failed => "failed",
            SyncOutcome::Degraded => "degraded",
        }
    }
}

/// The settings and the replicas' positions.
pub(crate) struct SyncWait {
    pub k: usize,
    pub timeout: Duration,
    pub on_timeout: OnSyncTimeout,
    pub replicas: Option<watch::Receiver<ReplicaView>>,
}

impl SyncWait {
    pub fn enabled(&self) -> bool {
        self.k > 0
    }

    /// Waits until `k` replicas hold `target` (TXID, checksum). `seen(txid, checksum)`: this
    /// primary observed that position (it is in its history).
    pub async fn wait(
        &self,
        target: ReplicaPos,
        seen: &(dyn Fn(u64, u64) -> bool + Sync),
    ) -> SyncOutcome {
        if self.k == 0 {
            return SyncOutcome::Off;
        }
        let deadline = Instant::now() + self.timeout;
        let reached = match &self.replicas {
            Some(rx) => {
                let mut rx = rx.clone();
                let term = rx.borrow_and_update().term;
                loop {
                    let (held, moved) = {
                        let v = rx.borrow_and_update();
                        // 0: none seen yet.
                        (
                            holders(&v.replicas, target, seen),
                            term != 0 && v.term != term,
                        )
                    };
                    if held >= self.k {
                        break true;
                    }
                    // The leadership moved: no report will come to us any more. Positions
                    // kept from our term still count (above): a step-down's handover
                    // waits for a follower to reach the primary's position, and its report
                    // may land just as the term moves.
                    if moved {
                        break false;
                    }
                    match tokio::time::timeout_at(deadline, rx.changed()).await {
                        Ok(Ok(())) => {}
                        _ => break false,
                    }
                }
            }
            None => {
                tokio::time::sleep_until(deadline).await;
                false
            }
        };
        match (reached, self.on_timeout) {
            (true, _) => SyncOutcome::Replicated,
            (false, OnSyncTimeout::Fail) => SyncOutcome::Failed,
            (false, OnSyncTimeout::Degrade) => SyncOutcome::Degraded,
        }
    }
}

/// Replicas at `target` or later in this primary's history.
fn holders(replicas: &[ReplicaPos], target: ReplicaPos, seen: &dyn Fn(u64, u64) -> bool) -> usize {
    replicas
        .iter()
        .filter(|r| {
            r.txid >= target.txid
                && ((r.txid == target.txid && r.checksum == target.checksum)
                    || seen(r.txid, r.checksum))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, checksum: u64) -> ReplicaPos {
        ReplicaPos { txid, checksum }
    }

    fn wait(k: usize, on_timeout: OnSyncTimeout, rx: watch::Receiver<ReplicaView>) -> SyncWait {
        SyncWait {
            k,
            timeout: Duration::from_secs(2),
            on_timeout,
            replicas: Some(rx),
        }
    }

    #[test]
    fn only_positions_of_this_history_count() {
        let history = |t: u64, c: u64| matches!((t, c), (5, 0xa5) | (6, 0xa6));
        let target = pos(5, 0xa5);
        assert_eq!(holders(&[pos(5, 0xa5)], target, &history), 1);
        assert_eq!(
            holders(&[pos(6, 0xa6)], target, &history),
            1,
            "later, same history"
        );
        assert_eq!(
            holders(&[pos(5, 0xb5)], target, &history),
            0,
            "same TXID, another write"
        );
        assert_eq!(
            holders(&[pos(6, 0xb6)], target, &history),
            0,
            "another history"
        );
        assert_eq!(
            holders(&[pos(7, 0xa7)], target, &history),
            0,
            "unverifiable"
        );
        assert_eq!(holders(&[pos(4, 0xa4)], target, &history), 0, "behind");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_k_replicas_then_answers() {
        let (tx, rx) = watch::channel(ReplicaView {
            term: 3,
            replicas: vec![pos(4, 0xa4), pos(3, 0xa3)],
        });
        let w = wait(2, OnSyncTimeout::Fail, rx);
        let start = Instant::now();
        let waiting = tokio::spawn(async move { w.wait(pos(5, 0xa5), &|_, _| false).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send_modify(|v| v.replicas[0] = pos(5, 0xa5));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "one of two is not enough");
        tx.send_modify(|v| v.replicas[1] = pos(5, 0xa5));
        assert_eq!(waiting.await.unwrap(), SyncOutcome::Replicated);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_fails_or_degrades_as_configured_and_a_new_term_ends_the_wait_at_once() {
        let (tx, rx) = watch::channel(ReplicaView {
            term: 3,
            replicas: vec![pos(4, 0xa4)],
        });
        let start = Instant::now();
        let failed = wait(1, OnSyncTimeout::Fail, rx.clone());
        assert_eq!(
            failed.wait(pos(5, 0xa5), &|_, _| false).await,
            SyncOutcome::Failed
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let degraded = wait(1, OnSyncTimeout::Degrade, rx.clone());
        assert_eq!(
            degraded.wait(pos(5, 0xa5), &|_, _| false).await,
            SyncOutcome::Degraded
        );
        // The term moves: no more reports will come, so the wait ends at once...
        let moved = wait(1, OnSyncTimeout::Fail, rx.clone());
        let start = Instant::now();
        let waiting = tokio::spawn(async move { moved.wait(pos(5, 0xa5), &|_, _| false).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(ReplicaView {
            term: 4,
            replicas: vec![pos(4, 0xa4)],
        });
        assert_eq!(waiting.await.unwrap(), SyncOutcome::Failed);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        // ...but a position of this history that a replica holds still counts (the report
        // the step-down's handover waited for, kept as the term moved).
        tx.send_replace(ReplicaView {
            term: 3,
            replicas: vec![pos(4, 0xa4)],
        });
        let moved = wait(1, OnSyncTimeout::Fail, rx);
        let waiting = tokio::spawn(async move { moved.wait(pos(5, 0xa5), &|_, _| false).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(ReplicaView {
            term: 4,
            replicas: vec![pos(5, 0xa5)],
        });
        assert_eq!(waiting.await.unwrap(), SyncOutcome::Replicated);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_replicas_is_off() {
        let w = SyncWait {
            k: 0,
            timeout: Duration::from_secs(2),
            on_timeout: OnSyncTimeout::Fail,
            replicas: None,
        };
        assert_eq!(w.wait(pos(1, 1), &|_, _| false).await, SyncOutcome::Off);
    }
}
