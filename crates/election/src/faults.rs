//! Fault injection for tests: cut this node off from chosen peers (both directions: outgoing
//! RPCs fail as unreachable, incoming ones are refused). Never set in production.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Shared switchboard of blocked peers; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    blocked: Arc<RwLock<HashSet<String>>>,
}

impl Faults {
    /// Drop all traffic to and from `peer`.
    pub fn block(&self, peer: &str) {
        self.write().insert(peer.to_string());
    }

    /// Restore traffic with `peer`.
    pub fn unblock(&self, peer: &str) {
        self.write().remove(peer);
    }

    /// Restore all traffic.
    pub fn heal(&self) {
        self.write().clear();
    }

    pub fn is_blocked(&self, peer: &str) -> bool {
        self.blocked
            .read()
            .map(|s| s.contains(peer))
            .unwrap_or_else(|p| p.into_inner().contains(peer))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.blocked.write().unwrap_or_else(|p| p.into_inner())
    }
}
