//! Moves LiteFS's primary to this node the moment Raft makes it leader, through LiteFS's own
//! handoff: `POST /promote` on the local LiteFS, which asks the primary it streams from to
//! hand its lease (session) over on the stream and step down. While that runs, the lease
//! endpoint grants the old holder's renewals (its last one before handing off), see
//! `litefs_election::lease::LeaseShared::open_handoff`. When there is nobody to hand off
//! (the old primary is dead or cut off) the window closes and the lock moves when the old
//! session may no longer be believed in.

use std::time::Duration;

use litefs_election::lease::LeaseShared;
use litefs_proxy::litefs_api::LitefsApi;
use litefs_proxy::Primary;
use tokio::sync::watch;

/// How long one promotion may take (a handoff is a few round trips).
pub const WINDOW: Duration = Duration::from_secs(3);
/// Between `/promote` attempts while LiteFS is not yet streaming from a primary.
const RETRY: Duration = Duration::from_millis(100);

/// LiteFS's refusals while this node's LiteFS is not (yet) streaming from the primary, from
/// itself or from the primary: worth asking again. Any other refusal came from the old
/// primary's lease loop (its last renewal failed: its lease endpoint is gone), and asking
/// again would only restart its renew timer (LiteFS's primary loop re-arms it after every
/// handoff attempt) and keep it primary longer; its lease lapses instead.
const NOT_CONNECTED: [&str; 2] = [
    "no primary is currently available",
    "not currently connected",
];

/// Runs until either watch closes. `raft`: the election's view; `litefs`: LiteFS's own.
pub async fn drive(
    mut raft: watch::Receiver<Primary>,
    mut litefs: watch::Receiver<Primary>,
    api: LitefsApi,
    lease: LeaseShared,
) {
    loop {
        let wanted = |r: &watch::Receiver<Primary>, l: &watch::Receiver<Primary>| {
            *r.borrow() == Primary::Local && *l.borrow() != Primary::Local
        };
        if wanted(&raft, &litefs) {
            lease.open_handoff(WINDOW);
            let deadline = tokio::time::Instant::now() + WINDOW;
            let mut attempts = 0u32;
            while wanted(&raft, &litefs) && tokio::time::Instant::now() < deadline {
                attempts += 1;
                let answer = tokio::time::timeout(RETRY * 5, api.promote()).await;
                match answer {
                    Ok(Ok(())) => {
                        // Handed over: LiteFS says so on its events stream shortly.
                        let _ = tokio::time::timeout(RETRY, litefs.changed()).await;
                    }
                    Ok(Err(e)) if NOT_CONNECTED.iter().any(|m| e.to_string().contains(m)) => {
                        tracing::debug!(error = %e, attempts, "LiteFS not streaming yet; asking again");
                        tokio::time::sleep(RETRY).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "LiteFS handoff refused by the old primary");
                        break;
                    }
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
            }
            lease.close_handoff();
            if *litefs.borrow() == Primary::Local {
                tracing::info!(attempts, "LiteFS took the lease over by handoff");
            } else if *raft.borrow() == Primary::Local {
                tracing::info!(
                    attempts,
                    "no LiteFS handoff (nothing to hand over from); the lease moves when the old one lapses"
                );
            }
        }
        tokio::select! {
            r = raft.changed() => if r.is_err() { return },
            r = litefs.changed() => if r.is_err() { return },
        }
    }
}

/// After a handover at shutdown: wait (bounded) until the local LiteFS is no longer primary,
/// so the lease endpoint it renews through is still up while it hands its session on.
pub async fn wait_handed_off(mut litefs: watch::Receiver<Primary>, within: Duration) -> bool {
    tokio::time::timeout(within, litefs.wait_for(|p| *p != Primary::Local))
        .await
        .is_ok_and(|r| r.is_ok())
}
