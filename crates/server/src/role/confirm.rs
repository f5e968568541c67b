//! With real LiteFS following the Raft lease, the Raft leader's LiteFS becomes primary only
//! once it has acquired the lease (after the old holder's lock-delay, about a second). Until
//! then its database is read-only, so the proxy must not send writes to the local app yet:
//! this gate lets `Local` through only while LiteFS itself also says this node is primary,
//! and holds writes (`Unknown`) in between. Remote and unknown primaries pass unchanged.

use litefs_proxy::Primary;
use tokio::sync::watch;

/// What the proxy acts on, given what Raft and LiteFS each say.
pub fn combine(raft: &Primary, litefs: &Primary) -> Primary {
    match (raft, litefs) {
        (Primary::Local, Primary::Local) => Primary::Local,
        (Primary::Local, _) => Primary::Unknown,
        (other, _) => other.clone(),
    }
}

/// A watch of `combine(raft, litefs)`, kept current by a task that ends with either input.
pub fn gate(
    mut raft: watch::Receiver<Primary>,
    mut litefs: watch::Receiver<Primary>,
) -> watch::Receiver<Primary> {
    let first = combine(&raft.borrow_and_update(), &litefs.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = raft.changed() => if r.is_err() { break },
                r = litefs.changed() => if r.is_err() { break },
            }
            let next = combine(&raft.borrow_and_update(), &litefs.borrow_and_update());
            tx.send_if_modified(|cur| {
                let changed = *cur != next;
                if changed {
                    tracing::info!(raft = %*raft.borrow(), litefs = %*litefs.borrow(), acting = %next, "role change (confirmed by LiteFS)");
                    *cur = next;
                }
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn remote(n: &str) -> Primary {
        Primary::remote(n, &format!("http://{n}:8080")).unwrap()
    }

    #[test]
    fn local_needs_both() {
        assert_eq!(combine(&Primary::Local, &Primary::Local), Primary::Local);
        assert_eq!(combine(&Primary::Local, &remote("old")), Primary::Unknown);
        assert_eq!(
            combine(&Primary::Local, &Primary::Unknown),
            Primary::Unknown
        );
        assert_eq!(
            combine(&remote("a"), &Primary::Local),
            remote("a"),
            "Raft decides where writes go"
        );
        assert_eq!(
            combine(&Primary::Unknown, &Primary::Local),
            Primary::Unknown
        );
    }

    #[tokio::test]
    async fn the_gate_opens_when_litefs_catches_up_and_closes_at_once() {
        let (raft_tx, raft_rx) = watch::channel(remote("old"));
        let (litefs_tx, litefs_rx) = watch::channel(remote("old"));
        let mut out = gate(raft_rx, litefs_rx);
        assert_eq!(*out.borrow(), remote("old"));
        raft_tx.send_replace(Primary::Local);
        tokio::time::timeout(Duration::from_secs(1), out.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *out.borrow_and_update(),
            Primary::Unknown,
            "elected, but LiteFS has no lease yet"
        );
        litefs_tx.send_replace(Primary::Local);
        tokio::time::timeout(Duration::from_secs(1), out.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*out.borrow_and_update(), Primary::Local);
        raft_tx.send_replace(remote("new"));
        tokio::time::timeout(Duration::from_secs(1), out.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *out.borrow_and_update(),
            remote("new"),
            "stepping down is never delayed"
        );
    }
}
