//! The positions this node has been at: a bounded ring, sorted by TXID, of every position
//! the watcher observed, so a v2 token's (TXID, checksum) can be checked against what this
//! node's database really went through. The pos file is polled, so it shows only some
//! positions; LiteFS's `/events` stream shows every one.

use std::collections::VecDeque;

use crate::txid::{Position, TxId};

/// Positions kept per database: 65,536 × 16 bytes = 1 MiB at most.
pub const HISTORY_LEN: usize = 65_536;

/// What this node knows of the checksum at a TXID.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// This node was at that TXID with this checksum.
    Checksum(u64),
    /// Not observed: skipped by the poller, older than the ring, or above this node.
    Unknown,
}

/// The observed positions, oldest first, TXIDs strictly increasing.
#[derive(Debug)]
pub struct History {
    ring: VecDeque<Position>,
    cap: usize,
}

impl History {
    /// An empty history keeping at most `cap` positions (at least one).
    pub fn new(cap: usize) -> History {
        History {
            ring: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Records that the database is at `pos`. A position at or below the newest one ends
    /// the history above it: the database went back (a snapshot from another history, a
    /// database re-created), so what was observed at those TXIDs is no longer this node's.
    pub fn observe(&mut self, pos: Position) {
        if self.ring.back() == Some(&pos) {
            return;
        }
        while self.ring.back().is_some_and(|b| b.txid >= pos.txid) {
            self.ring.pop_back();
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(pos);
    }

    /// The checksum observed at `txid`, by binary search (no allocation).
    pub fn at(&self, txid: TxId) -> Seen {
        match self.ring.binary_search_by_key(&txid, |p| p.txid) {
            Ok(i) => self
                .ring
                .get(i)
                .map_or(Seen::Unknown, |p| Seen::Checksum(p.post_apply_checksum)),
            Err(_) => Seen::Unknown,
        }
    }

    /// Positions kept.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing was observed yet.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, checksum: u64) -> Position {
        Position {
            txid: TxId(txid),
            post_apply_checksum: checksum,
        }
    }

    #[test]
    fn finds_observed_positions_only() {
        let mut h = History::new(HISTORY_LEN);
        assert_eq!(h.at(TxId(1)), Seen::Unknown);
        for t in [1, 2, 3, 7, 8] {
            h.observe(pos(t, 0x8000 + t));
        }
        h.observe(pos(8, 0x8008)); // a re-read of the same file
        assert_eq!(h.len(), 5);
        assert_eq!(h.at(TxId(3)), Seen::Checksum(0x8003));
        assert_eq!(h.at(TxId(8)), Seen::Checksum(0x8008));
        assert_eq!(h.at(TxId(5)), Seen::Unknown, "skipped");
        assert_eq!(h.at(TxId(9)), Seen::Unknown, "ahead");
        assert_eq!(h.at(TxId(0)), Seen::Unknown);
    }

    #[test]
    fn going_back_drops_the_abandoned_history() {
        let mut h = History::new(HISTORY_LEN);
        for t in 1..=10 {
            h.observe(pos(t, 0xa000 + t));
        }
        // A snapshot of another history at TXID 8.
        h.observe(pos(8, 0xb008));
        assert_eq!(h.at(TxId(7)), Seen::Checksum(0xa007));
        assert_eq!(h.at(TxId(8)), Seen::Checksum(0xb008));
        assert_eq!(h.at(TxId(9)), Seen::Unknown);
        assert_eq!(h.at(TxId(10)), Seen::Unknown);
        // The same TXID with another checksum replaces it.
        h.observe(pos(8, 0xc008));
        assert_eq!(h.at(TxId(8)), Seen::Checksum(0xc008));
        assert_eq!(h.len(), 8);
        // A database re-created from nothing.
        h.observe(Position::default());
        assert_eq!(h.len(), 1);
        assert_eq!(h.at(TxId(3)), Seen::Unknown);
    }

    #[test]
    fn is_bounded_and_forgets_the_oldest() {
        let mut h = History::new(4);
        for t in 1..=6 {
            h.observe(pos(t, t));
        }
        assert_eq!(h.len(), 4);
        assert_eq!(h.at(TxId(2)), Seen::Unknown, "older than the ring");
        assert_eq!(h.at(TxId(3)), Seen::Checksum(3));
        assert_eq!(h.at(TxId(6)), Seen::Checksum(6));
        assert!(!h.is_empty());
    }
}
