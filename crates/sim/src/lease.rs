//! LiteFS's lease loop (store.go `monitorLease`, `monitorLeaseAsPrimary`,
//! `monitorLeaseAsReplica`, `processHandoff`) with its timers, over any [`Leaser`]:
//!
//! - not connected: read the cluster ID, then the primary key; a named primary is
//!   streamed from (even if it names this node: LiteFS then fails with "cannot connect to
//!   self"); none, and this node is a candidate: create a session and acquire; any failure
//!   waits [`RECONNECT_DELAY`] before the next attempt;
//! - primary: renew every TTL/2; "session gone" ends it at once; another error retries
//!   every second until (time since the last successful renew + 1 s) > TTL, then it waits
//!   one more second and stops; on the way out the key is released and the session
//!   destroyed, except after a handoff;
//! - replica: stays on its primary until the stream breaks (it looks at no lease
//!   meanwhile), then waits [`RECONNECT_DELAY`]; a handoff frame makes it take the handed
//!   session over at once (renew, acquire with it).
//!
//! The loop drives a [`Node`] (role, `.primary`, events) and its [`ReplicaLink`]; it only
//! waits on tokio time, so tests run it under paused time with a fake leaser.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::consul::{LeaseError, Leaser, PrimaryInfo};
use crate::node::{HandoffRequest, Node};
use crate::replicate::{LinkEvent, ReplicaLink, Upstream};

/// LiteFS's `ReconnectDelay`: between attempts of every kind.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// The `timeout` of `monitorLeaseAsPrimary`: retry pace after a failed renew, and the
/// margin by which the primary gives up before its TTL.
pub const RENEW_RETRY: Duration = Duration::from_secs(1);

/// The loop's view, for tests and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Starting,
    /// Holds the lease (session ID).
    Primary(String),
    /// Connected (or connecting) to this primary.
    Replica(String),
    /// Between attempts.
    Waiting,
    Stopped,
}

/// Runs the loop until `stop` turns true; a primary then releases its lease.
pub async fn run<L: Leaser>(
    leaser: Arc<L>,
    node: Node,
    link: Arc<ReplicaLink>,
    candidate: bool,
    state: watch::Sender<LeaseState>,
    mut stop: watch::Receiver<bool>,
) {
    let (handoff_tx, mut handoffs) = mpsc::unbounded_channel();
    node.set_handoff_handler(handoff_tx);
    let mut handed: Option<String> = None;
    let mut cluster_id = String::new();
    loop {
        if *stop.borrow() || stop.has_changed().is_err() {
            break;
        }
        let remote_id = match leaser.cluster_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: cannot fetch cluster ID from \"consul\" lease, retrying");
                wait(&state, &mut stop, RECONNECT_DELAY).await;
                continue;
            }
        };
        if !remote_id.is_empty() && cluster_id.is_empty() {
            // LiteFS adopts the cluster's ID (from the primary's stream; the same value).
            cluster_id = remote_id.clone();
            node.set_cluster_id(&cluster_id);
        }
        if !remote_id.is_empty() && remote_id != cluster_id {
            tracing::info!(node = %node.hostname(), %remote_id, "litefs-sim: cannot connect, \"consul\" lease already initialized with different ID");
            wait(&state, &mut stop, RECONNECT_DELAY).await;
            continue;
        }
        let info = if let Some(lease_id) = handed.take() {
            tracing::info!(node = %node.hostname(), "litefs-sim: acquiring existing lease from handoff");
            match leaser.acquire_existing(&lease_id).await {
                Ok(()) => Err(lease_id),
                Err(e) => {
                    tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: cannot acquire existing lease from handoff, retrying");
                    wait(&state, &mut stop, RECONNECT_DELAY).await;
                    continue;
                }
            }
        } else {
            match acquire_or_primary_info(&*leaser, candidate).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: cannot acquire lease or find primary, retrying");
                    wait(&state, &mut stop, RECONNECT_DELAY).await;
                    continue;
                }
            }
        };
        match info {
            Err(lease_id) => {
                tracing::info!(node = %node.hostname(), "litefs-sim: primary lease acquired");
                if let Err(e) = as_primary(
                    &*leaser,
                    &node,
                    &lease_id,
                    &mut cluster_id,
                    &state,
                    &mut handoffs,
                    &mut stop,
                )
                .await
                {
                    tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: primary lease lost, retrying");
                }
            }
            Ok(info) => {
                tracing::info!(node = %node.hostname(), primary = %info.hostname, url = %info.advertise_url, "litefs-sim: existing primary found, connecting as replica");
                handed = as_replica(&node, &link, &info, &state, &mut stop, &mut handoffs).await;
                if handed.is_none() {
                    wait(&state, &mut stop, RECONNECT_DELAY).await;
                }
            }
        }
    }
    state.send_replace(LeaseState::Stopped);
}

/// `Ok(primary)` to connect to, or `Err(lease)` when this node acquired the lease.
async fn acquire_or_primary_info<L: Leaser>(
    leaser: &L,
    candidate: bool,
) -> Result<Result<PrimaryInfo, String>, LeaseError> {
    match leaser.primary_info().await {
        Ok(info) => return Ok(Ok(info)),
        Err(LeaseError::NoPrimary) if candidate => {}
        Err(e) => return Err(e),
    }
    match leaser.acquire().await {
        Ok(lease) => return Ok(Err(lease)),
        Err(LeaseError::PrimaryExists) => {}
        Err(e) => return Err(LeaseError::Transport(format!("acquire lease: {e}"))),
    }
    leaser.primary_info().await.map(Ok)
}

async fn as_primary<L: Leaser>(
    leaser: &L,
    node: &Node,
    lease_id: &str,
    cluster_id: &mut String,
    state: &watch::Sender<LeaseState>,
    handoffs: &mut mpsc::UnboundedReceiver<HandoffRequest>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LeaseError> {
    // LiteFS's lease is "renewed" at creation, before the acquire.
    let mut renewed_at = Instant::now();
    // Ok(true): leave and destroy the lease; Ok(false): handed off, keep it.
    let result: Result<bool, LeaseError> = async {
        if leaser.cluster_id().await?.is_empty() {
            if cluster_id.is_empty() {
                *cluster_id = format!("LFSC{:016X}", rand::random::<u64>());
                node.set_cluster_id(cluster_id);
            }
            leaser.set_cluster_id(cluster_id).await?;
        }
        node.set_role(true, None);
        node.set_primary_url(None);
        state.send_replace(LeaseState::Primary(lease_id.to_owned()));
        let ttl = leaser.ttl();
        let mut wait_for = ttl / 2;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait_for) => {
                    match leaser.renew(lease_id).await {
                        Ok(()) => {
                            renewed_at = Instant::now();
                            wait_for = ttl / 2;
                        }
                        Err(LeaseError::Expired) => return Err(LeaseError::Expired),
                        Err(e) => {
                            if renewed_at.elapsed() + RENEW_RETRY > ttl {
                                tokio::time::sleep(RENEW_RETRY).await;
                                return Err(LeaseError::Expired);
                            }
                            tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: lease renewal error, retrying");
                            wait_for = RENEW_RETRY;
                        }
                    }
                }
                req = handoffs.recv() => {
                    let Some(req) = req else { return Ok(true) };
                    match process_handoff(leaser, node, lease_id, req.node_id).await {
                        Ok(()) => {
                            let _ = req.done.send(Ok(()));
                            return Ok(false);
                        }
                        Err(e) => {
                            tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: handoff unsuccessful, continuing as primary");
                            let _ = req.done.send(Err(e));
                        }
                    }
                }
                () = stopped(stop) => return Ok(true),
            }
        }
    }
    .await;
    // Stop being primary first, then (unless handed off) release and destroy.
    node.set_role(false, None);
    let close = !matches!(result, Ok(false));
    if close {
        tracing::info!(node = %node.hostname(), "litefs-sim: exiting primary, destroying lease");
        if let Err(e) = leaser.close(lease_id).await {
            tracing::info!(node = %node.hostname(), error = %e, "litefs-sim: cannot remove lease");
        }
    } else {
        tracing::info!(node = %node.hostname(), "litefs-sim: exiting primary, preserving lease for handoff");
    }
    result.map(|_| ())
}

async fn process_handoff<L: Leaser>(
    leaser: &L,
    node: &Node,
    lease_id: &str,
    to: u64,
) -> Result<(), String> {
    if !node.has_subscriber(to) {
        return Err("node is no longer connected".into());
    }
    leaser.renew(lease_id).await.map_err(|e| e.to_string())?;
    node.send_handoff(to, lease_id)
}

/// Streams from `info` until the stream ends; the handed lease ID after a handoff frame.
async fn as_replica(
    node: &Node,
    link: &ReplicaLink,
    info: &PrimaryInfo,
    state: &watch::Sender<LeaseState>,
    stop: &mut watch::Receiver<bool>,
    handoffs: &mut mpsc::UnboundedReceiver<HandoffRequest>,
) -> Option<String> {
    node.set_primary_url(Some(info.advertise_url.clone()));
    node.set_role(false, Some(&info.hostname));
    state.send_replace(LeaseState::Replica(info.hostname.clone()));
    link.set_upstream(Some(Upstream {
        hostname: info.hostname.clone(),
        url: info.advertise_url.clone(),
    }));
    let handed = loop {
        tokio::select! {
            ev = link.next_event() => match ev {
                Some(LinkEvent::Connected(_)) => continue,
                Some(LinkEvent::Handoff(id)) => break Some(id),
                Some(LinkEvent::Ended(reason)) => {
                    tracing::info!(node = %node.hostname(), %reason, "litefs-sim: disconnected from primary, retrying");
                    break None;
                }
                None => break None,
            },
            // Only a primary hands off; refuse what reaches a replica.
            Some(req) = handoffs.recv() => {
                let _ = req.done.send(Err("node is not currently primary".into()));
            }
            () = stopped(stop) => break None,
        }
    };
    link.set_upstream(None);
    node.set_primary_url(None);
    node.set_role(false, None);
    handed
}

async fn wait(state: &watch::Sender<LeaseState>, stop: &mut watch::Receiver<bool>, d: Duration) {
    state.send_replace(LeaseState::Waiting);
    let _ = tokio::time::timeout(d, stopped(stop)).await;
}

/// Completes when `stop` turns true or its sender is gone (both mean: stop).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::lag::LagControl;
    use crate::node::NodeConfig;

    /// A leaser whose answers a test scripts, recording each call with the (paused) time.
    struct Fake {
        start: Instant,
        ttl: Duration,
        calls: Mutex<Vec<(Duration, String)>>,
        /// Answers for `renew`, in order; when empty, renewals succeed.
        renewals: Mutex<VecDeque<Result<(), LeaseError>>>,
        /// What `acquire` answers, in order; when empty, another node holds the key.
        acquire: Mutex<VecDeque<Result<String, LeaseError>>>,
    }

    impl Fake {
        fn new(ttl: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                start: Instant::now(),
                ttl,
                calls: Mutex::default(),
                renewals: Mutex::default(),
                acquire: Mutex::new(VecDeque::from([Ok("s1".into())])),
            })
        }

        fn log(&self, call: &str) {
            let at = self.start.elapsed();
            self.calls.lock().unwrap().push((at, call.to_owned()));
        }

        fn calls(&self) -> Vec<(Duration, String)> {
            self.calls.lock().unwrap().clone()
        }

        fn renew_fails_from_now(&self, e: LeaseError) {
            let mut r = self.renewals.lock().unwrap();
            r.clear();
            r.extend(std::iter::repeat_n(Err(e), 1000));
        }
    }

    impl Leaser for Fake {
        async fn cluster_id(&self) -> Result<String, LeaseError> {
            Ok("LFSC1".into())
        }
        async fn set_cluster_id(&self, _id: &str) -> Result<(), LeaseError> {
            Ok(())
        }
        async fn primary_info(&self) -> Result<PrimaryInfo, LeaseError> {
            self.log("primary_info");
            Err(LeaseError::NoPrimary)
        }
        async fn acquire(&self) -> Result<String, LeaseError> {
            self.log("acquire");
            let next = self.acquire.lock().unwrap().pop_front();
            next.unwrap_or(Err(LeaseError::PrimaryExists))
        }
        async fn acquire_existing(&self, id: &str) -> Result<(), LeaseError> {
            self.log(&format!("acquire_existing {id}"));
            Ok(())
        }
        async fn renew(&self, id: &str) -> Result<(), LeaseError> {
            self.log(&format!("renew {id}"));
            self.renewals.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
        async fn close(&self, id: &str) -> Result<(), LeaseError> {
            self.log(&format!("close {id}"));
            Ok(())
        }
        fn ttl(&self) -> Duration {
            self.ttl
        }
    }

    struct Running {
        node: Node,
        state: watch::Receiver<LeaseState>,
        stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
        _link: Arc<ReplicaLink>,
    }

    fn start(fake: &Arc<Fake>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::new(NodeConfig {
            mount: dir.path().to_path_buf(),
            db: "db.sqlite3".into(),
            hostname: "node-1".into(),
            is_primary: false,
            primary_hostname: None,
        });
        let link = Arc::new(ReplicaLink::spawn(
            node.clone(),
            None,
            LagControl::default(),
            false,
        ));
        let (state_tx, state) = watch::channel(LeaseState::Starting);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            fake.clone(),
            node.clone(),
            link.clone(),
            true,
            state_tx,
            stop_rx,
        ));
        Running {
            node,
            state,
            stop,
            _dir: dir,
            _link: link,
        }
    }

    /// Waits (in paused time) until the node's role is `primary`; the time it happened.
    async fn until_primary(node: &Node, want: bool, start: Instant) -> Duration {
        let mut role = node.watch_role();
        role.wait_for(|r| r.is_primary == want).await.unwrap();
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_whose_endpoint_is_gone_stays_primary_past_its_ttl() {
        // LiteFS's defaults: TTL 10 s. The endpoint refuses from the first renewal on.
        let fake = Fake::new(Duration::from_secs(10));
        fake.renew_fails_from_now(LeaseError::Transport("connection refused".into()));
        let r = start(&fake);
        let t0 = until_primary(&r.node, true, fake.start).await;
        let t1 = until_primary(&r.node, false, fake.start).await;
        // Renewals at +5 s, then every second while (since renew + 1 s) <= TTL; the one at
        // +10 s gives up, and LiteFS sleeps one more second before it lets go: +11 s.
        assert_eq!(t1 - t0, Duration::from_secs(11));
        let renews: Vec<Duration> = fake
            .calls()
            .into_iter()
            .filter(|(_, c)| c.starts_with("renew"))
            .map(|(at, _)| at - t0)
            .collect();
        assert_eq!(
            renews,
            (5..=10).map(Duration::from_secs).collect::<Vec<_>>()
        );
        // Leaving, it releases and destroys (the endpoint is gone, so both fail).
        assert!(fake.calls().iter().any(|(_, c)| c == "close s1"));
        drop(r.stop);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_one_second_ttl_the_first_failed_renewal_ends_it_a_second_later() {
        let fake = Fake::new(Duration::from_secs(1));
        fake.renew_fails_from_now(LeaseError::Transport("EOF".into()));
        let r = start(&fake);
        let t0 = until_primary(&r.node, true, fake.start).await;
        let t1 = until_primary(&r.node, false, fake.start).await;
        assert_eq!(t1 - t0, Duration::from_millis(1500));
        drop(r.stop);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_gone_ends_it_at_the_next_renewal_not_before() {
        let fake = Fake::new(Duration::from_secs(10));
        fake.renew_fails_from_now(LeaseError::Expired);
        let r = start(&fake);
        let t0 = until_primary(&r.node, true, fake.start).await;
        let t1 = until_primary(&r.node, false, fake.start).await;
        assert_eq!(t1 - t0, Duration::from_secs(5), "notices only at TTL/2");
        drop(r.stop);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_acquire_closes_the_session_and_waits_a_second() {
        let fake = Fake::new(Duration::from_secs(10));
        fake.acquire.lock().unwrap().clear();
        let r = start(&fake);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let acquires: Vec<Duration> = fake
            .calls()
            .into_iter()
            .filter(|(_, c)| c == "acquire")
            .map(|(at, _)| at)
            .collect();
        assert_eq!(
            acquires,
            (0..=3).map(Duration::from_secs).collect::<Vec<_>>(),
            "one attempt per ReconnectDelay"
        );
        assert!(!r.node.is_primary());
        assert_eq!(*r.state.borrow(), LeaseState::Waiting);
        drop(r.stop);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_primary_releases_its_lease() {
        let fake = Fake::new(Duration::from_secs(10));
        let mut r = start(&fake);
        until_primary(&r.node, true, fake.start).await;
        r.stop.send_replace(true);
        r.state
            .wait_for(|s| *s == LeaseState::Stopped)
            .await
            .unwrap();
        assert!(!r.node.is_primary());
        let calls: Vec<String> = fake.calls().into_iter().map(|(_, c)| c).collect();
        assert_eq!(calls.last().map(String::as_str), Some("close s1"));
    }
}
