//! The lease state machine: Consul-style sessions and KV entries, changed only by [`Command`]s
//! applied in Raft log order, so every node holds the same state once it has applied the same
//! entries.
//!
//! Time: a command carries the proposing leader's wall clock (`now_ms`) and id. The state keeps
//! `clock_ms = max(clock_ms, now_ms)`, so time never runs backwards across leaders, and every
//! deadline (TTL, lock-delay) is compared with that clock, never with a local one. Sessions expire
//! when a command is applied at or after their deadline; the leader proposes an empty `Tick` when
//! its own clock says a deadline passed (see `lease::reaper`).
//!
//! The lock never changes hands while its holder may still believe in it: a session lives until
//! it is destroyed, handed off, or until [`believed_ms`] (how long LiteFS's lease loop keeps
//! acting as primary after its last successful renewal) plus [`CLOCK_MARGIN_MS`] have passed
//! since the last renewal the leader granted. A change of Raft leader invalidates nothing.
//!
//! Leadership: `acquire` only succeeds when the receiving node is the stamping leader, for a
//! session of its own, or for the session that already holds the key (LiteFS's handoff: the
//! old primary passed it on its stream and stepped down; the session moves to the new node).
//! A renewal of another node's session is granted only while the leader has a handoff open
//! or does not act as primary yet (`foreign_ok`, stamped by the leader): otherwise the old
//! holder is told it is gone and steps down.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::node_num;
use crate::types::NodeId;

/// Margin on top of [`believed_ms`] for the renewal's answer reaching LiteFS after the
/// leader granted it, and for the nodes' clocks disagreeing.
pub const CLOCK_MARGIN_MS: u64 = 300;

/// LiteFS's `monitorLeaseAsPrimary` between its last successful renewal and the moment it
/// stops acting as primary, when every later renewal fails at once: renew at TTL/2, then
/// every second while (elapsed + 1 s) <= TTL; the first attempt past that waits one more
/// second and gives up. TTL 1 s: 1.5 s; 10 s: 11 s.
pub fn believed_ms(ttl_ms: u64) -> u64 {
    const RETRY_MS: u64 = 1_000;
    let mut t = ttl_ms / 2;
    while t + RETRY_MS <= ttl_ms {
        t += RETRY_MS;
    }
    t + RETRY_MS
}

/// What a session does to its locks when it is invalidated (destroyed, expired, or its node lost
/// leadership).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    #[default]
    Release,
    Delete,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    /// The cluster node (Raft `node_id`) the session belongs to; only the leader's may lock.
    pub node: String,
    pub lock_delay_ms: u64,
    pub behavior: Behavior,
    /// 0: no TTL.
    pub ttl_ms: u64,
    /// `clock_ms` after which the session is invalid (None without TTL).
    pub expires_at_ms: Option<u64>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One KV entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    /// None for an empty value (Consul answers `"Value": null`).
    pub value: Option<Vec<u8>>,
    pub flags: u64,
    /// The session holding the lock, if any.
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a client asked for; turned into a [`Command`] by the leader, which stamps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LeaseRequest {
    /// No change; lets time (expiry) and a new leader's invalidation take effect.
    Tick,
    SessionCreate {
        id: String,
        name: String,
        node: String,
        lock_delay_ms: u64,
        behavior: Behavior,
        ttl_ms: u64,
    },
    SessionRenew {
        id: String,
        /// Stamped by the leader: it has a handoff open, so the old holder's renewal (the
        /// last one LiteFS makes before handing its session on) is granted.
        #[serde(default)]
        foreign_ok: bool,
    },
    SessionDestroy {
        id: String,
    },
    /// Plain PUT, with optional check-and-set on ModifyIndex (0: only if absent).
    KvSet {
        key: String,
        value: Option<Vec<u8>>,
        flags: u64,
        cas: Option<u64>,
    },
    KvAcquire {
        key: String,
        session: String,
        value: Option<Vec<u8>>,
        flags: u64,
        /// The node whose endpoint received the request: it must be the leader too, so a
        /// session id handed to another node's LiteFS (LiteFS's `promote` handoff) cannot lock.
        origin: String,
    },
    KvRelease {
        key: String,
        session: String,
        value: Option<Vec<u8>>,
        flags: u64,
    },
    KvDelete {
        key: String,
        cas: Option<u64>,
    },
}

impl LeaseRequest {
    /// Whether applying it twice does what applying it once does: such a request may be sent
    /// again when it is not known whether the first one arrived.
    pub fn is_idempotent(&self) -> bool {
        match self {
            LeaseRequest::Tick
            | LeaseRequest::SessionRenew { .. }
            | LeaseRequest::SessionDestroy { .. }
            | LeaseRequest::KvAcquire { .. }
            | LeaseRequest::KvRelease { .. } => true,
            // A second session; a set or delete whose check-and-set now fails, or that
            // overwrites a later one.
            LeaseRequest::SessionCreate { .. }
            | LeaseRequest::KvSet { .. }
            | LeaseRequest::KvDelete { .. } => false,
        }
    }
}

/// A log entry's payload: the request plus the proposing leader's stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Raft id of the leader that appended this entry (it stamps itself; followers forward
    /// unstamped requests).
    pub leader: NodeId,
    /// That leader's wall clock, ms since the Unix epoch.
    pub now_ms: u64,
    pub req: LeaseRequest,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LeaseResponse {
    /// Entries that are not lease commands (blank, membership).
    #[default]
    None,
    Bool(bool),
    Created(String),
    /// Renew: the session, or None when it does not exist (HTTP 404).
    Renewed(Option<Session>),
    /// A request Consul answers with an error status.
    Failed {
        status: u16,
        message: String,
    },
}

/// Everything the lease endpoint serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    pub sessions: BTreeMap<String, Session>,
    pub kv: BTreeMap<String, KvEntry>,
    /// key -> `clock_ms` before which it cannot be acquired (Consul's lock-delay).
    pub lock_delays: BTreeMap<String, u64>,
    /// The leader that stamped the last applied command.
    pub leader: Option<NodeId>,
    pub clock_ms: u64,
    /// Raft index of the last change to the KV table / the sessions (X-Consul-Index).
    pub kv_index: u64,
    pub session_index: u64,
}

/// Keys whose last path segment is this are write-once (LiteFS's cluster id,
/// `<key>/clusterid`): a later PUT with another value answers `false`, as a failed cas would.
pub const WRITE_ONCE_SEGMENT: &str = "clusterid";

fn is_write_once(key: &str) -> bool {
    key.rsplit('/').next() == Some(WRITE_ONCE_SEGMENT)
}

impl LeaseState {
    /// Apply the command of log entry `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> LeaseResponse {
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        self.leader = Some(cmd.leader);
        self.expire(index);
        self.lock_delays.retain(|_, until| *until > self.clock_ms);
        match &cmd.req {
            LeaseRequest::Tick => LeaseResponse::Bool(true),
            LeaseRequest::SessionCreate {
                id,
                name,
                node,
                lock_delay_ms,
                behavior,
                ttl_ms,
            } => {
                if self.sessions.contains_key(id) {
                    return failed(500, format!("session {id:?} already exists"));
                }
                let s = Session {
                    id: id.clone(),
                    name: name.clone(),
                    node: node.clone(),
                    lock_delay_ms: *lock_delay_ms,
                    behavior: *behavior,
                    ttl_ms: *ttl_ms,
                    expires_at_ms: self.deadline(*ttl_ms),
                    create_index: index,
                    modify_index: index,
                };
                self.sessions.insert(id.clone(), s);
                self.session_index = index;
                LeaseResponse::Created(id.clone())
            }
            LeaseRequest::SessionRenew { id, foreign_ok } => {
                let Some(ttl) = self.sessions.get(id).map(|s| s.ttl_ms) else {
                    return LeaseResponse::Renewed(None);
                };
                let deadline = self.deadline(ttl);
                let Some(s) = self.sessions.get_mut(id) else {
                    return LeaseResponse::Renewed(None);
                };
                if node_num(&s.node) != cmd.leader && !foreign_ok {
                    // Raft has moved on: the holder must step down (it then releases and
                    // destroys); until it does or its belief runs out, nobody else locks.
                    tracing::info!(session = %id, node = %s.node, "lease: renewal of a session of a node that is not the leader refused");
                    return LeaseResponse::Renewed(None);
                }
                s.expires_at_ms = deadline;
                LeaseResponse::Renewed(Some(s.clone()))
            }
            LeaseRequest::SessionDestroy { id } => {
                self.invalidate(index, id);
                LeaseResponse::Bool(true)
            }
            LeaseRequest::KvSet {
                key,
                value,
                flags,
                cas,
            } => {
                let existing = self.kv.get(key);
                if !cas_ok(existing, *cas) {
                    return LeaseResponse::Bool(false);
                }
                if let Some(e) = existing {
                    if is_write_once(key) && e.value != *value {
                        return LeaseResponse::Bool(false);
                    }
                }
                let session = existing.and_then(|e| e.session.clone());
                self.put(index, key, value.clone(), *flags, session, false);
                LeaseResponse::Bool(true)
            }
            LeaseRequest::KvAcquire {
                key,
                session,
                value,
                flags,
                origin,
            } => {
                let Some(s) = self.sessions.get(session) else {
                    return failed(500, format!("invalid session {session:?}"));
                };
                let holder = self.kv.get(key).and_then(|e| e.session.clone());
                let handed_off = holder.as_deref() == Some(session.as_str());
                if node_num(origin) != cmd.leader
                    || (node_num(&s.node) != cmd.leader && !handed_off)
                {
                    tracing::debug!(key, session, node = %s.node, origin, "lease: acquire refused, not the raft leader's node");
                    return LeaseResponse::Bool(false);
                }
                if node_num(&s.node) != cmd.leader {
                    tracing::info!(key, session, from = %s.node, to = %origin, "lease: session handed off to the leader's node");
                    if let Some(s) = self.sessions.get_mut(session) {
                        s.node = origin.clone();
                        s.modify_index = index;
                    }
                    self.session_index = index;
                }
                if self.lock_delays.contains_key(key) && !handed_off {
                    return LeaseResponse::Bool(false);
                }
                match holder {
                    Some(h) if h != *session => LeaseResponse::Bool(false),
                    Some(_) => {
                        self.put(
                            index,
                            key,
                            value.clone(),
                            *flags,
                            Some(session.clone()),
                            false,
                        );
                        LeaseResponse::Bool(true)
                    }
                    None => {
                        self.put(
                            index,
                            key,
                            value.clone(),
                            *flags,
                            Some(session.clone()),
                            true,
                        );
                        LeaseResponse::Bool(true)
                    }
                }
            }
            LeaseRequest::KvRelease {
                key,
                session,
                value,
                flags,
            } => {
                let held = self
                    .kv
                    .get(key)
                    .is_some_and(|e| e.session.as_deref() == Some(session.as_str()));
                if !held {
                    return LeaseResponse::Bool(false);
                }
                self.put(index, key, value.clone(), *flags, None, false);
                LeaseResponse::Bool(true)
            }
            LeaseRequest::KvDelete { key, cas } => {
                let existing = self.kv.get(key);
                if !cas_ok(existing, *cas) || (existing.is_some() && is_write_once(key)) {
                    return LeaseResponse::Bool(false);
                }
                if self.kv.remove(key).is_some() {
                    self.kv_index = index;
                }
                LeaseResponse::Bool(true)
            }
        }
    }

    fn deadline(&self, ttl_ms: u64) -> Option<u64> {
        (ttl_ms > 0).then(|| {
            self.clock_ms
                .saturating_add(believed_ms(ttl_ms))
                .saturating_add(CLOCK_MARGIN_MS)
        })
    }

    /// The earliest session deadline (the reaper's alarm).
    pub fn next_deadline(&self) -> Option<u64> {
        self.sessions.values().filter_map(|s| s.expires_at_ms).min()
    }

    fn put(
        &mut self,
        index: u64,
        key: &str,
        value: Option<Vec<u8>>,
        flags: u64,
        session: Option<String>,
        new_lock: bool,
    ) {
        let value = value.filter(|v| !v.is_empty());
        let e = self.kv.entry(key.to_string()).or_insert_with(|| KvEntry {
            key: key.to_string(),
            value: None,
            flags: 0,
            session: None,
            lock_index: 0,
            create_index: index,
            modify_index: index,
        });
        e.value = value;
        e.flags = flags;
        e.session = session;
        if new_lock {
            e.lock_index += 1;
        }
        e.modify_index = index;
        self.kv_index = index;
    }

    /// Sessions whose deadline is at or before `now_ms` (the reaper's question).
    pub fn has_expired(&self, now_ms: u64) -> bool {
        let now = now_ms.max(self.clock_ms);
        self.sessions
            .values()
            .any(|s| s.expires_at_ms.is_some_and(|d| d <= now))
    }

    fn expire(&mut self, index: u64) {
        let clock = self.clock_ms;
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires_at_ms.is_some_and(|d| d <= clock))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            tracing::info!(session = %id, "lease: session TTL expired");
            self.invalidate(index, &id);
        }
    }

    /// Remove a session; its locks are released or deleted, and lock-delay starts on them.
    fn invalidate(&mut self, index: u64, id: &str) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        self.session_index = index;
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        for key in held {
            if s.lock_delay_ms > 0 {
                self.lock_delays
                    .insert(key.clone(), self.clock_ms.saturating_add(s.lock_delay_ms));
            }
            match s.behavior {
                Behavior::Delete => {
                    self.kv.remove(&key);
                }
                Behavior::Release => {
                    if let Some(e) = self.kv.get_mut(&key) {
                        e.session = None;
                        e.modify_index = index;
                    }
                }
            }
            self.kv_index = index;
        }
    }
}

fn cas_ok(existing: Option<&KvEntry>, cas: Option<u64>) -> bool {
    match (cas, existing) {
        (None, _) => true,
        (Some(0), e) => e.is_none(),
        (Some(n), Some(e)) => e.modify_index == n,
        (Some(_), None) => false,
    }
}

fn failed(status: u16, message: String) -> LeaseResponse {
    LeaseResponse::Failed { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sm {
        st: LeaseState,
        index: u64,
    }

    impl Sm {
        fn new() -> Self {
            Sm {
                st: LeaseState::default(),
                index: 0,
            }
        }
        fn run(&mut self, leader: &str, now_ms: u64, req: LeaseRequest) -> LeaseResponse {
            self.index += 1;
            let cmd = Command {
                leader: node_num(leader),
                now_ms,
                req,
            };
            self.st.apply(self.index, &cmd)
        }
    }

    fn create(id: &str, node: &str, ttl_ms: u64, lock_delay_ms: u64) -> LeaseRequest {
        LeaseRequest::SessionCreate {
            id: id.into(),
            name: "litefs".into(),
            node: node.into(),
            lock_delay_ms,
            behavior: Behavior::Delete,
            ttl_ms,
        }
    }

    fn acquire(key: &str, session: &str, v: &str) -> LeaseRequest {
        acquire_via(key, session, v, if session == "s2" { "n2" } else { "n1" })
    }

    fn acquire_via(key: &str, session: &str, v: &str, origin: &str) -> LeaseRequest {
        LeaseRequest::KvAcquire {
            key: key.into(),
            session: session.into(),
            value: Some(v.as_bytes().to_vec()),
            flags: 0,
            origin: origin.into(),
        }
    }

    const K: &str = "litefs/primary";

    fn renew(id: &str, foreign_ok: bool) -> LeaseRequest {
        LeaseRequest::SessionRenew {
            id: id.into(),
            foreign_ok,
        }
    }

    #[test]
    fn only_the_leaders_node_acquires_and_a_new_leader_waits_for_the_old_belief() {
        let mut sm = Sm::new();
        assert_eq!(
            sm.run("n1", 1000, create("s1", "n1", 1_000, 0)),
            LeaseResponse::Created("s1".into())
        );
        sm.run("n1", 1000, create("s2", "n2", 0, 0));
        // A follower's session cannot lock, the leader's can; it is re-entrant.
        assert_eq!(
            sm.run("n1", 1001, acquire(K, "s2", "b")),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.run("n1", 1002, acquire(K, "s1", "a")),
            LeaseResponse::Bool(true)
        );
        assert_eq!(
            sm.run("n1", 1003, acquire(K, "s1", "a2")),
            LeaseResponse::Bool(true)
        );
        let e = &sm.st.kv[K];
        assert_eq!((e.lock_index, e.session.as_deref()), (1, Some("s1")));
        assert_eq!(e.value.as_deref(), Some(&b"a2"[..]));
        assert_eq!(
            sm.run("n1", 1004, renew("s1", false)),
            LeaseResponse::Renewed(Some(sm.st.sessions["s1"].clone()))
        );
        // LiteFS with TTL 1 s believes for 1.5 s after that renewal: the session lives
        // until then plus the margin.
        let until = 1004 + believed_ms(1_000) + CLOCK_MARGIN_MS;
        assert_eq!(sm.st.sessions["s1"].expires_at_ms, Some(until));

        // n2 becomes leader. Nothing is invalidated: n1's LiteFS may still act as primary.
        sm.run("n2", 1100, LeaseRequest::Tick);
        assert_eq!(sm.st.kv[K].session.as_deref(), Some("s1"));
        assert_eq!(
            sm.run("n2", 1200, acquire(K, "s2", "b")),
            LeaseResponse::Bool(false)
        );
        // n1's next renewal is refused: it is told its session is gone and steps down...
        assert_eq!(
            sm.run("n2", 1500, renew("s1", false)),
            LeaseResponse::Renewed(None)
        );
        // ...which does not shorten what it may still believe.
        assert_eq!(sm.st.sessions["s1"].expires_at_ms, Some(until));
        assert_eq!(
            sm.run("n2", until - 1, acquire(K, "s2", "b")),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.run("n2", until, acquire(K, "s2", "b")),
            LeaseResponse::Bool(true)
        );
        assert_eq!(sm.st.kv[K].lock_index, 1, "a deleted key starts over");
        // n1's session is gone for good.
        assert!(matches!(
            sm.run("n2", until + 1, acquire(K, "s1", "a")),
            LeaseResponse::Failed { status: 500, .. }
        ));
    }

    #[test]
    fn a_handed_off_session_moves_to_the_new_leaders_node() {
        let mut sm = Sm::new();
        sm.run("n1", 1000, create("s1", "n1", 1_000, 0));
        sm.run("n1", 1000, acquire(K, "s1", "a"));
        // n2 leads and has a handoff open: n1's LiteFS renews once more before it hands
        // its session over, and n2's LiteFS renews it and acquires with it.
        assert!(matches!(
            sm.run("n2", 1100, renew("s1", true)),
            LeaseResponse::Renewed(Some(_))
        ));
        assert!(matches!(
            sm.run("n2", 1110, renew("s1", true)),
            LeaseResponse::Renewed(Some(_))
        ));
        assert_eq!(
            sm.run("n2", 1120, acquire_via(K, "s1", "b", "n2")),
            LeaseResponse::Bool(true)
        );
        assert_eq!(sm.st.sessions["s1"].node, "n2");
        assert_eq!(sm.st.kv[K].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(sm.st.kv[K].lock_index, 1, "the same lock, not a new one");
        // From now on its renewals need no handoff.
        assert!(matches!(
            sm.run("n2", 1600, renew("s1", false)),
            LeaseResponse::Renewed(Some(_))
        ));
        // A session that does not hold the key cannot be taken over that way.
        sm.run("n2", 1700, create("s3", "n3", 1_000, 0));
        assert_eq!(
            sm.run("n2", 1701, acquire_via(K, "s3", "c", "n2")),
            LeaseResponse::Bool(false)
        );
        // Nor can the old node's endpoint acquire with it.
        assert_eq!(
            sm.run("n2", 1702, acquire_via(K, "s1", "x", "n1")),
            LeaseResponse::Bool(false)
        );
    }

    #[test]
    fn belief_follows_litefs_lease_loop() {
        assert_eq!(believed_ms(1_000), 1_500);
        assert_eq!(believed_ms(2_000), 3_000);
        assert_eq!(believed_ms(5_000), 5_500);
        assert_eq!(believed_ms(10_000), 11_000);
    }

    #[test]
    fn same_node_reelected_keeps_its_sessions() {
        let mut sm = Sm::new();
        sm.run("n1", 0, create("s1", "n1", 0, 0));
        assert_eq!(
            sm.run("n1", 1, acquire(K, "s1", "a")),
            LeaseResponse::Bool(true)
        );
        // A new term led by the same node stamps the same id: nothing is invalidated.
        sm.run("n1", 2, LeaseRequest::Tick);
        assert!(sm.st.sessions.contains_key("s1"));
        assert_eq!(sm.st.kv[K].session.as_deref(), Some("s1"));
    }

    #[test]
    fn ttl_expiry_uses_the_stamped_clock_and_never_runs_backwards() {
        let mut sm = Sm::new();
        let life = believed_ms(1000) + CLOCK_MARGIN_MS;
        sm.run("n1", 10_000, create("s1", "n1", 1000, 0));
        assert_eq!(sm.st.sessions["s1"].expires_at_ms, Some(10_000 + life));
        assert!(!sm.st.has_expired(10_000 + life - 1));
        assert!(sm.st.has_expired(10_000 + life));
        sm.run("n1", 11_000, renew("s1", false));
        assert_eq!(sm.st.sessions["s1"].expires_at_ms, Some(11_000 + life));
        // A leader whose clock is behind does not move the clock back.
        sm.run("n1", 5_000, LeaseRequest::Tick);
        assert_eq!(sm.st.clock_ms, 11_000);
        assert!(sm.st.sessions.contains_key("s1"));
        sm.run("n1", 11_000 + life, LeaseRequest::Tick);
        assert!(sm.st.sessions.is_empty());
        assert_eq!(
            sm.run("n1", 11_001 + life, renew("s1", false)),
            LeaseResponse::Renewed(None)
        );
    }

    #[test]
    fn release_destroy_cas_and_write_once_cluster_id() {
        let mut sm = Sm::new();
        let mut s = create("s1", "n1", 0, 5000);
        if let LeaseRequest::SessionCreate { behavior, .. } = &mut s {
            *behavior = Behavior::Release;
        }
        sm.run("n1", 0, s);
        sm.run("n1", 0, acquire(K, "s1", "a"));
        let rel = |sess: &str| LeaseRequest::KvRelease {
            key: K.into(),
            session: sess.into(),
            value: None,
            flags: 0,
        };
        assert_eq!(sm.run("n1", 1, rel("other")), LeaseResponse::Bool(false));
        assert_eq!(sm.run("n1", 1, rel("s1")), LeaseResponse::Bool(true));
        let e = &sm.st.kv[K];
        assert_eq!((e.session.as_deref(), e.value.as_deref()), (None, None));
        // Released explicitly: no lock-delay, re-acquire at once bumps LockIndex.
        assert_eq!(
            sm.run("n1", 2, acquire(K, "s1", "a")),
            LeaseResponse::Bool(true)
        );
        assert_eq!(sm.st.kv[K].lock_index, 2);
        // Destroy with the lock held: released (behavior release) and lock-delay applies.
        sm.run("n1", 3, LeaseRequest::SessionDestroy { id: "s1".into() });
        assert_eq!(sm.st.kv[K].session, None);
        assert_eq!(sm.st.lock_delays.get(K), Some(&5003));

        let set = |v: &str, cas| LeaseRequest::KvSet {
            key: "litefs/primary/clusterid".into(),
            value: Some(v.as_bytes().to_vec()),
            flags: 0,
            cas,
        };
        assert_eq!(
            sm.run("n1", 4, set("LFSC1", Some(0))),
            LeaseResponse::Bool(true)
        );
        assert_eq!(
            sm.run("n1", 4, set("LFSC1", Some(0))),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.run("n1", 4, set("LFSC1", None)),
            LeaseResponse::Bool(true)
        );
        assert_eq!(
            sm.run("n1", 4, set("LFSC2", None)),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.run(
                "n1",
                4,
                LeaseRequest::KvDelete {
                    key: "litefs/primary/clusterid".into(),
                    cas: None
                }
            ),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.st.kv["litefs/primary/clusterid"].value.as_deref(),
            Some(&b"LFSC1"[..])
        );
        // cas on ModifyIndex for ordinary keys.
        let plain = |v: &str, cas| LeaseRequest::KvSet {
            key: "x".into(),
            value: Some(v.as_bytes().to_vec()),
            flags: 7,
            cas,
        };
        assert_eq!(sm.run("n1", 5, plain("1", None)), LeaseResponse::Bool(true));
        let mi = sm.st.kv["x"].modify_index;
        assert_eq!(
            sm.run("n1", 5, plain("2", Some(mi + 1))),
            LeaseResponse::Bool(false)
        );
        assert_eq!(
            sm.run("n1", 5, plain("2", Some(mi))),
            LeaseResponse::Bool(true)
        );
        assert_eq!(sm.st.kv["x"].flags, 7);
    }
}
