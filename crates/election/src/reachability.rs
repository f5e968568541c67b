//! One log line per change of a peer's reachability, from the RPC transport's point of view:
//! `peer unreachable` on the first failed RPC after a success (or at start), `peer reachable
//! again` on the first success after failures, with how long and how many RPCs it was down.
//! openraft itself logs every failed RPC (tens of lines a second while a peer is down); the
//! binary's default filter drops those, and this is what remains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::types::NodeId;

#[derive(Debug, Clone, Copy)]
enum Reach {
    Up,
    Down {
        since: Instant,
        /// Failed RPCs since it went down, for the "reachable again" line.
        failed: u64,
    },
}

/// The last known reachability of every peer; shared by every clone of the RPC client.
#[derive(Clone, Default)]
pub(crate) struct Reachability {
    peers: Arc<Mutex<HashMap<NodeId, Reach>>>,
}

impl Reachability {
    /// An RPC to `peer` (named `name`) was answered.
    pub(crate) fn answered(&self, peer: NodeId, name: &str) {
        let before = self.swap(peer, |_| Reach::Up);
        match before {
            Some(Reach::Down { since, failed }) => tracing::info!(
                peer = name,
                down_ms = since.elapsed().as_millis() as u64,
                failed_rpcs = failed,
                "peer reachable again"
            ),
            None => tracing::debug!(peer = name, "peer reachable"),
            Some(Reach::Up) => {}
        }
    }

    /// An RPC to `peer` failed on our side of the wire (connect, send, timeout, refusal).
    pub(crate) fn failed(&self, peer: NodeId, name: &str, error: &dyn std::fmt::Display) {
        let before = self.swap(peer, |b| match b {
            Some(Reach::Down { since, failed }) => Reach::Down {
                since,
                failed: failed + 1,
            },
            _ => Reach::Down {
                since: Instant::now(),
                failed: 1,
            },
        });
        if !matches!(before, Some(Reach::Down { .. })) {
            tracing::warn!(peer = name, error = %error, "peer unreachable");
        } else {
            tracing::debug!(peer = name, error = %error, "rpc to unreachable peer failed");
        }
    }

    fn swap(&self, peer: NodeId, f: impl FnOnce(Option<Reach>) -> Reach) -> Option<Reach> {
        let mut g = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let before = g.get(&peer).copied();
        g.insert(peer, f(before));
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex as StdMutex;

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buf(Arc<StdMutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        text.lines().map(str::to_string).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_change_not_per_rpc() {
        let r = Reachability::default();
        let lines = logged(|| {
            r.answered(2, "node-2");
            for _ in 0..50 {
                r.failed(2, "node-2", &"connection refused");
            }
            r.failed(3, "node-3", &"connection refused");
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("peer unreachable") && lines[0].contains("node-2"));
        assert!(lines[0].contains("connection refused"));
        assert!(lines[1].contains("peer unreachable") && lines[1].contains("node-3"));

        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        let lines = logged(|| {
            for _ in 0..5 {
                r.answered(2, "node-2");
            }
        });
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("peer reachable again"));
        assert!(lines[0].contains("down_ms=3000") && lines[0].contains("failed_rpcs=50"));
    }
}
