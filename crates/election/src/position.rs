//! This node's LiteFS position as the election sees it: set by the server from the proxy's
//! position watcher, read by the election (pre-votes, handover targets, reports to the
//! leader for `sync_replicas`). Unknown until the server sets it. With the proxy's history
//! of positions (`LocalPosition::set_history`) it also tells whether another node's
//! position is one this node went through: TXIDs repeat across histories after a
//! divergence, so a higher TXID alone does not mean "holds everything I hold".

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A LiteFS position: TXID and post-apply checksum, as in `<db>-pos`. The checksum names the
/// history: the same TXID with another checksum is another write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub txid: u64,
    pub checksum: u64,
}

/// Whether a position is one this node's database went through, as far as it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InHistory {
    /// This node was at that TXID with that checksum.
    Yes,
    /// This node was at that TXID with another checksum: another history.
    No,
    /// Not known: above this node's position, or not observed (polled past, or older than
    /// the history kept).
    Unknown,
}

type Lookup = Arc<dyn Fn(Position) -> InHistory + Send + Sync>;

/// Sets and follows this node's position; cheap to clone.
#[derive(Clone)]
pub struct LocalPosition {
    tx: Arc<watch::Sender<Option<Position>>>,
    history: Arc<RwLock<Option<Lookup>>>,
}

impl Default for LocalPosition {
    fn default() -> Self {
        LocalPosition {
            tx: Arc::new(watch::channel(None).0),
            history: Arc::default(),
        }
    }
}

/// How another node's position relates to this node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relation {
    /// In this node's history at or below its position (or not comparable: unknown).
    NotAhead,
    /// A later TXID, and as far as anyone knows the same history.
    Ahead,
    /// Another history: the other node saw a different write at some TXID.
    Diverged,
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

    /// Installs the lookup of this node's past positions (the server passes the proxy's).
    pub fn set_history(&self, lookup: impl Fn(Position) -> InHistory + Send + Sync + 'static) {
        *self.history.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(lookup));
    }

    /// Whether `p` is a position this node went through.
    pub fn in_history(&self, p: Position) -> InHistory {
        if self.get() == Some(p) {
            return InHistory::Yes;
        }
        let lookup = self
            .history
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match lookup {
            Some(f) => f(p),
            None => InHistory::Unknown,
        }
    }

    /// How `theirs` relates to this node's position; `they_have_mine`: what the other node
    /// said of this node's position (it alone can tell when `theirs` is ahead).
    pub(crate) fn relate(
        &self,
        theirs: Option<Position>,
        they_have_mine: Option<InHistory>,
    ) -> Relation {
        match (self.get(), theirs) {
            (_, None) => Relation::NotAhead,
            (None, Some(_)) => Relation::Ahead,
            (Some(m), Some(t)) if t.txid <= m.txid => {
                if self.in_history(t) == InHistory::No {
                    Relation::Diverged
                } else {
                    Relation::NotAhead
                }
            }
            (Some(_), Some(_)) => {
                if they_have_mine == Some(InHistory::No) {
                    Relation::Diverged
                } else {
                    Relation::Ahead
                }
            }
        }
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

    fn at(txid: u64, checksum: u64) -> Position {
        Position { txid, checksum }
    }

    /// A later TXID is ahead unless its node says our position is not in its history; an
    /// earlier one is behind unless we saw another checksum at its TXID. Without a history
    /// lookup only TXIDs count (as before histories were known).
    #[test]
    fn relations_follow_histories_not_txids_alone() {
        let p = LocalPosition::default();
        p.set(at(10, 0xa10));
        assert_eq!(p.relate(Some(at(8, 0xb8)), None), Relation::NotAhead);
        assert_eq!(p.relate(Some(at(12, 0xb12)), None), Relation::Ahead);
        p.set_history(|q| match (q.txid, q.checksum) {
            (8, 0xa8) | (10, 0xa10) => InHistory::Yes,
            (8, _) | (10, _) => InHistory::No,
            _ => InHistory::Unknown,
        });
        assert_eq!(p.relate(Some(at(8, 0xa8)), None), Relation::NotAhead);
        assert_eq!(p.relate(Some(at(8, 0xb8)), None), Relation::Diverged);
        assert_eq!(p.relate(Some(at(10, 0xb10)), None), Relation::Diverged);
        assert_eq!(
            p.relate(Some(at(9, 0xb9)), None),
            Relation::NotAhead,
            "unknown"
        );
        let ahead = Some(at(12, 0xb12));
        assert_eq!(p.relate(ahead, Some(InHistory::Yes)), Relation::Ahead);
        assert_eq!(p.relate(ahead, Some(InHistory::Unknown)), Relation::Ahead);
        assert_eq!(p.relate(ahead, Some(InHistory::No)), Relation::Diverged);
        assert_eq!(p.relate(None, None), Relation::NotAhead);
        assert_eq!(p.in_history(at(10, 0xa10)), InHistory::Yes);
    }
}
