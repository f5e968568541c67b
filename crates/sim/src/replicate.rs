//! Replication into one replica node: follow the primary's position, copy its database
//! (SQLite backup API, so the replica file is real SQLite), and apply copy and position
//! after the lag a test sets. Pull-based over the primary's mount directory, so the primary
//! may live in this process or another one on the same machine.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::dbfile;
use crate::lag::{Lag, LagControl};
use crate::node::Node;
use crate::pos;

/// How often the replica looks at the primary's position (LiteFS streams; 1 ms is close).
const POLL: Duration = Duration::from_millis(1);
/// How often `.lag` is rewritten while transactions are pending.
const LAG_WRITE_EVERY: Duration = Duration::from_millis(20);

/// Where a replica pulls from: the primary's mount directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub hostname: String,
    pub mount: PathBuf,
}

impl Upstream {
    pub fn of(node: &Node) -> Upstream {
        Upstream {
            hostname: node.hostname().to_owned(),
            mount: node.mount().to_path_buf(),
        }
    }
}

/// Handle on the replication task of one replica node. Dropping it stops the task.
pub struct ReplicaLink {
    hostname: String,
    upstream: watch::Sender<Option<Upstream>>,
    control: watch::Sender<LagControl>,
    commands: mpsc::UnboundedSender<CatchUp>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

/// Request to apply the upstream's current state at once, whatever the lag or pause.
type CatchUp = oneshot::Sender<anyhow::Result<u64>>;

#[derive(Default)]
struct Stats {
    deliveries: AtomicU64,
    /// Changes to the replica's database that the sim did not make: an app wrote to a
    /// replica (which must not happen behind a correct proxy).
    foreign_writes: AtomicU64,
    pending: AtomicUsize,
}

/// One transaction (or several, coalesced) seen on the primary, waiting for its lag.
struct Pending {
    txid: u64,
    seen_at: Instant,
    due: Instant,
    /// `None` when the primary has a position but no database file (position-only tests).
    snapshot: Option<PathBuf>,
}

impl ReplicaLink {
    /// Starts replicating into `node` from `upstream` (none: idle). Must run inside a
    /// tokio runtime.
    pub fn spawn(node: Node, upstream: Option<Upstream>, control: LagControl) -> ReplicaLink {
        let (upstream_tx, upstream_rx) = watch::channel(upstream);
        let (control_tx, control_rx) = watch::channel(control);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let hostname = node.hostname().to_owned();
        let task = tokio::spawn(
            Task {
                node,
                upstream: upstream_rx,
                control: control_rx,
                commands: commands_rx,
                stats: stats.clone(),
                queue: VecDeque::new(),
                seen: None,
                expected_counter: None,
                seq: 0,
                last_lag: None,
            }
            .run(),
        );
        ReplicaLink {
            hostname,
            upstream: upstream_tx,
            control: control_tx,
            commands,
            stats,
            task,
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Follows another primary (or none). Transactions still pending from the previous one
    /// are dropped, as LiteFS drops a stream when the primary changes.
    pub fn set_upstream(&self, upstream: Option<Upstream>) {
        self.upstream.send_if_modified(|u| {
            let changed = *u != upstream;
            *u = upstream;
            changed
        });
    }

    pub fn upstream(&self) -> Option<Upstream> {
        self.upstream.borrow().clone()
    }

    /// Lag for transactions seen from now on.
    pub fn set_lag(&self, lag: Lag) {
        self.control.send_modify(|c| c.lag = lag);
    }

    /// Holds every transaction until [`ReplicaLink::resume`].
    pub fn pause(&self) {
        self.control.send_modify(|c| c.paused = true);
    }

    pub fn resume(&self) {
        self.control.send_modify(|c| c.paused = false);
    }

    pub fn control(&self) -> LagControl {
        *self.control.borrow()
    }

    /// Applies the upstream's current database and position now, ignoring lag and pause;
    /// returns the TXID applied.
    pub async fn catch_up(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(tx)
            .map_err(|_| anyhow::anyhow!("replication task of {} stopped", self.hostname))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("replication task of {} stopped", self.hostname))?
    }

    /// Transactions applied so far (coalesced ones count once).
    pub fn deliveries(&self) -> u64 {
        self.stats.deliveries.load(Ordering::Relaxed)
    }

    /// Writes to the replica's database that did not come from replication (see
    /// [`crate::dbfile`] for why they are rare but possible).
    pub fn foreign_writes(&self) -> u64 {
        self.stats.foreign_writes.load(Ordering::Relaxed)
    }

    /// Transactions seen on the primary and not yet applied.
    pub fn pending(&self) -> usize {
        self.stats.pending.load(Ordering::Relaxed)
    }
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Task {
    node: Node,
    upstream: watch::Receiver<Option<Upstream>>,
    control: watch::Receiver<LagControl>,
    commands: mpsc::UnboundedReceiver<CatchUp>,
    stats: Arc<Stats>,
    queue: VecDeque<Pending>,
    /// The upstream TXID last snapshotted (compared for inequality: after a failover the
    /// new primary's TXID may be lower, and the replica follows it down as LiteFS does).
    seen: Option<u64>,
    /// The replica database's change counter right after the last delivery.
    expected_counter: Option<u32>,
    seq: u64,
    last_lag: Option<(Instant, i64)>,
}

impl Task {
    async fn run(mut self) {
        let scratch = match tempfile::Builder::new()
            .prefix("litefs-sim-snapshots-")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "litefs-sim: no scratch directory; replication off");
                return;
            }
        };
        let scratch = scratch.path().to_path_buf();
        let mut role = self.node.watch_role();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let paused = self.control.borrow().paused;
            let next_due = if paused {
                None
            } else {
                self.queue.front().map(|p| p.due)
            };
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(reply) => {
                        let result = self.catch_up(&scratch).await;
                        let _ = reply.send(result);
                    }
                    None => break,
                },
                changed = self.upstream.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.reset();
                }
                changed = role.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Role changes rewrite the database header; start the tripwire afresh.
                    self.expected_counter = None;
                }
                changed = self.control.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = sleep_until_opt(next_due), if next_due.is_some() => {
                    self.deliver_due().await;
                }
                _ = poll.tick() => {
                    self.poll_upstream(&scratch).await;
                    if paused {
                        self.collapse_due();
                    }
                    self.write_lag();
                }
            }
            self.stats
                .pending
                .store(self.queue.len(), Ordering::Relaxed);
        }
        self.reset();
        let _ = std::fs::remove_dir_all(&scratch);
    }

    fn reset(&mut self) {
        for p in self.queue.drain(..) {
            remove_snapshot(p.snapshot.as_ref());
        }
        self.seen = None;
        self.expected_counter = None;
        self.stats.pending.store(0, Ordering::Relaxed);
    }

    /// Reads the upstream position and, when it moved, snapshots the upstream database.
    async fn poll_upstream(&mut self, scratch: &std::path::Path) {
        if self.node.is_primary() {
            return;
        }
        let Some(up) = self.upstream.borrow().clone() else {
            return;
        };
        let Some(txid) = read_txid(&up, self.node.db()) else {
            return;
        };
        if self.seen == Some(txid) {
            return;
        }
        let seen_at = Instant::now();
        let snapshot = match self.take_snapshot(&up, scratch).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), replica = %self.node.hostname(), "litefs-sim: snapshot failed; will retry");
                return;
            }
        };
        self.seen = Some(txid);
        let lag = self.control.borrow().lag.sample();
        let due = self
            .queue
            .back()
            .map_or(seen_at + lag, |b| b.due.max(seen_at + lag));
        self.queue.push_back(Pending {
            txid,
            seen_at,
            due,
            snapshot,
        });
    }

    async fn take_snapshot(
        &mut self,
        up: &Upstream,
        scratch: &std::path::Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        self.seq += 1;
        let dest = scratch.join(format!("snap-{}.db", self.seq));
        let source = up.mount.join(self.node.db());
        let d = dest.clone();
        let taken = tokio::task::spawn_blocking(move || dbfile::snapshot(&source, &d))
            .await
            .context("snapshot task")??;
        Ok(taken.then_some(dest))
    }

    /// While paused, keeps only the newest of the transactions whose lag has run out.
    fn collapse_due(&mut self) {
        let now = Instant::now();
        while self.queue.len() >= 2 && self.queue[1].due <= now {
            if let Some(p) = self.queue.pop_front() {
                remove_snapshot(p.snapshot.as_ref());
            }
        }
    }

    /// Applies the newest transaction whose lag has run out (older ones are contained in it).
    async fn deliver_due(&mut self) {
        let now = Instant::now();
        let mut newest: Option<Pending> = None;
        while self.queue.front().is_some_and(|p| p.due <= now) {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            if let Some(old) = newest.replace(p) {
                remove_snapshot(old.snapshot.as_ref());
            }
        }
        if let Some(p) = newest {
            self.apply(p).await;
        }
    }

    async fn apply(&mut self, p: Pending) {
        if self.node.is_primary() {
            remove_snapshot(p.snapshot.as_ref());
            return;
        }
        let db = self.node.db_path();
        let expected = self.expected_counter;
        let snapshot = p.snapshot.clone();
        let node = self.node.clone();
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(bool, Option<u32>)> {
            let _delivering = node.delivering();
            let foreign = match (expected, dbfile::change_counter(&db)?) {
                (Some(want), Some(have)) => want != have,
                _ => false,
            };
            let counter = match &snapshot {
                Some(s) => Some(dbfile::deliver(s, &db)?),
                None => None,
            };
            Ok((foreign, counter))
        })
        .await;
        remove_snapshot(p.snapshot.as_ref());
        match result {
            Ok(Ok((foreign, counter))) => {
                if foreign {
                    self.stats.foreign_writes.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(replica = %self.node.hostname(), "litefs-sim: something wrote to a replica's database");
                }
                self.expected_counter = counter;
                self.node.set_txid(p.txid);
                self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                let lag = Instant::now().saturating_duration_since(p.seen_at);
                self.set_lag(i64::try_from(lag.as_millis()).unwrap_or(i64::MAX));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), replica = %self.node.hostname(), txid = p.txid, "litefs-sim: delivery failed");
                // Take a fresh snapshot on the next poll.
                self.seen = None;
            }
            Err(e) => tracing::error!(error = %e, "litefs-sim: delivery task"),
        }
    }

    async fn catch_up(&mut self, scratch: &std::path::Path) -> anyhow::Result<u64> {
        anyhow::ensure!(
            !self.node.is_primary(),
            "{} is the primary",
            self.node.hostname()
        );
        let up = self
            .upstream
            .borrow()
            .clone()
            .context("no primary to catch up from")?;
        let Some(txid) = read_txid(&up, self.node.db()) else {
            // The primary has no database yet: nothing to catch up with.
            return Ok(self.node.txid());
        };
        let snapshot = self.take_snapshot(&up, scratch).await?;
        for p in self.queue.drain(..) {
            remove_snapshot(p.snapshot.as_ref());
        }
        let now = Instant::now();
        self.apply(Pending {
            txid,
            seen_at: now,
            due: now,
            snapshot,
        })
        .await;
        anyhow::ensure!(
            self.node.txid() == txid,
            "catch-up of {} did not apply",
            self.node.hostname()
        );
        self.seen = Some(txid);
        Ok(txid)
    }

    /// Rewrites `.lag` as LiteFS reports it: how long the oldest unapplied transaction has
    /// been waiting (0 when caught up).
    fn write_lag(&mut self) {
        if self.node.is_primary() || self.upstream.borrow().is_none() {
            return;
        }
        let now = Instant::now();
        let lag_ms = self.queue.front().map_or(0, |p| {
            i64::try_from(now.saturating_duration_since(p.seen_at).as_millis()).unwrap_or(i64::MAX)
        });
        let stale = match self.last_lag {
            None => true,
            Some((at, v)) => v != lag_ms && (lag_ms == 0 || now - at >= LAG_WRITE_EVERY),
        };
        if stale {
            self.set_lag(lag_ms);
        }
    }

    fn set_lag(&mut self, lag_ms: i64) {
        if self.last_lag.map(|(_, v)| v) != Some(lag_ms) {
            self.node.set_lag_ms(lag_ms);
        }
        self.last_lag = Some((Instant::now(), lag_ms));
    }
}

fn read_txid(up: &Upstream, db: &str) -> Option<u64> {
    let text = std::fs::read_to_string(pos::pos_path(&up.mount, db)).ok()?;
    pos::parse_pos(&text).map(|(txid, _)| txid)
}

fn remove_snapshot(path: Option<&PathBuf>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
