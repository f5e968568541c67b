//! This node's LiteFS position as the election sees it: set by the server from the proxy's
//! position watcher, read by the election (pre-votes, handover targets, reports to the
//! leader for `sync_replicas`). Unknown until the server sets it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A LiteFS position: TXID and post-apply checksum, as in `<db>-pos`. The checksum names the
/// history: the same TXID with another checksum is another write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub txid: u64,
    pub checksum: u64,
}

/// Sets and follows this node's position; cheap to clone.
#[derive(Clone)]
pub struct LocalPosition {
    tx: Arc<watch::Sender<Option<Position>>>,
}

impl Default for LocalPosition {
    fn default() -> Self {
        LocalPosition {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl LocalPosition {
    /// Records the local LiteFS position (no-op when unchanged).
    pub fn set(&self, pos: Position) {
        self.tx.send_if_modified(|cur| {
            let changed = *cur != Some(pos);
            *cur = Some(pos);
            changed
        });
    }

    /// The last position set; `None` before the first.
    pub fn get(&self) -> Option<Position> {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Position>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_notifies_only_on_change() {
        let p = LocalPosition::default();
        assert_eq!(p.get(), None);
        let mut rx = p.subscribe();
        let a = Position {
            txid: 3,
            checksum: 0x8000_0000_0000_0001,
        };
        p.set(a);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        p.set(a);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(p.get(), Some(a));
    }
}
