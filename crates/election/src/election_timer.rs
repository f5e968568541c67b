//! The election timer, ours instead of openraft's (switched off at start): while this node is
//! a follower or candidate that has heard from no leader for a random timeout, it runs a
//! pre-vote round (`prevote`) and campaigns (`trigger().elect()`) only when a quorum grants.
//!
//! The timeout follows openraft's lease: while the vote is committed (a leader was known) it is
//! `election_timeout_max` (the voters' leader lease, before which openraft refuses any vote)
//! plus a random part in [0, max - min), up to `election_timeout_min` sooner than openraft's
//! own timer (lease + [min, max)); after a campaign that decided nothing (a split vote) or
//! before any leader, a random [min, max). Each attempt draws afresh, so two candidates that
//! collided once do not collide again (openraft 0.9 draws once, which let two survivors
//! campaign in the same millisecond for seconds). A vote change (this
//! node voted, or a term moved) and any contact with a live leader restart the timer; a
//! pre-vote just granted to another node skips this node's own round (`prevote::Candidacy`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use crate::network::RpcClient;
use crate::prevote::{self, PreVoteCtx};

/// Runs until aborted.
pub(crate) async fn run(ctx: PreVoteCtx, client: RpcClient) {
    let (min, max) = (ctx.election_timeout_min, ctx.election_timeout_max);
    let mut metrics = ctx.raft.metrics();
    let mut vote = metrics.borrow().vote;
    let mut base = Instant::now();
    'timer: loop {
        let (committed, single) = {
            let m = metrics.borrow_and_update();
            let mut voters = m.membership_config.voter_ids();
            let single = voters.next() == Some(ctx.me) && voters.next().is_none();
            (m.vote.is_committed(), single)
        };
        let may_run = !ctx.stepping_down.load(Ordering::SeqCst) && *ctx.eligible.borrow();
        let timeout = if single && may_run {
            // The only voter: nobody to ask, nobody to disturb.
            Duration::ZERO
        } else {
            draw(committed, min, max)
        };
        // Wait out the timeout since the latest of: the last attempt, the last vote change,
        // the last contact with a live leader.
        loop {
            let from = ctx
                .status
                .last_leader_contact()
                .map_or(base, |c| c.max(base));
            let deadline = from + timeout;
            if Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let v = metrics.borrow_and_update().vote;
                    if v != vote {
                        vote = v;
                        base = Instant::now();
                        continue 'timer;
                    }
                }
            }
        }
        base = Instant::now();
        let m = metrics.borrow_and_update().clone();
        let voter = m.membership_config.voter_ids().any(|id| id == ctx.me);
        if m.state == ServerState::Leader || !voter {
            // Nothing to time while leading (or as a learner): wait for a change.
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        }
        if ctx.stepping_down.load(Ordering::SeqCst) || !*ctx.eligible.borrow() {
            continue;
        }
        if !single {
            if ctx.candidacy.granted_recently(Instant::now()) {
                // Another candidate was just granted: give its campaign the time to arrive.
                continue;
            }
            let asked = Instant::now();
            if !prevote::round(&ctx, &client).await {
                continue;
            }
            // A leader spoke up while we were asking: stand down.
            if ctx.status.last_leader_contact().is_some_and(|c| c > asked) {
                continue;
            }
        }
        ctx.status
            .counters()
            .pre_vote_elections
            .fetch_add(1, Ordering::Relaxed);
        // Running from now, for the term the campaign will ask for (see `prevote`).
        ctx.candidacy
            .run_for(metrics.borrow().current_term + 1, Instant::now());
        if let Err(e) = ctx.raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot trigger an election");
            return;
        }
        base = Instant::now();
        if single {
            // Elected at once (or failing): do not spin; wait for the next change.
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A fresh election timeout (see the module docs).
fn draw(committed: bool, min: Duration, max: Duration) -> Duration {
    let spread = max.saturating_sub(min).max(Duration::from_millis(1));
    let random = rand::thread_rng().gen_range(Duration::ZERO..spread);
    if committed {
        max + random
    } else {
        min + random
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_openrafts_lease_and_spread() {
        let (min, max) = (Duration::from_millis(150), Duration::from_millis(300));
        for _ in 0..200 {
            let t = draw(true, min, max);
            assert!(t >= max && t < max * 2 - min, "{t:?}");
            let t = draw(false, min, max);
            assert!(t >= min && t < max, "{t:?}");
        }
    }
}
