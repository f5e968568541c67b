//! Replication into one replica node, LiteFS's way: the replica `POST`s `/stream` to its
//! primary's API and applies the frames it receives (each carries the whole database, via
//! SQLite's backup API, so the replica file is real SQLite) after the lag a test sets. It
//! never opens another node's files: a dead, frozen or cut-off primary ships nothing, and
//! what was still in flight when the stream broke is gone.
//!
//! The link reports the end of each stream (and a handoff frame) on [`ReplicaLink::events`],
//! which is how LiteFS's lease loop learns that its primary is gone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::dbfile;
use crate::lag::{Lag, LagControl};
use crate::node::Node;
use crate::wire::{self, Header};

/// How often `.lag` is rewritten while transactions are pending.
const LAG_WRITE_EVERY: Duration = Duration::from_millis(20);
/// How often `.lag` is refreshed at all.
const LAG_TICK: Duration = Duration::from_millis(5);
/// LiteFS's `ReconnectDelay`, for links that reconnect by themselves (static roles).
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where a replica streams from: the primary's hostname and LiteFS API URL (its
/// advertise URL, e.g. `http://127.0.0.1:20202`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub hostname: String,
    pub url: String,
}

/// What happened to the link's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A stream to this upstream delivered its first frame.
    Connected(String),
    /// The stream ended (or could not be opened): the reason. Transactions still waiting
    /// for their lag were dropped with it.
    Ended(String),
    /// The primary handed its lease over (everything before it has been applied); the
    /// stream has ended.
    Handoff(String),
}

/// Handle on the replication task of one replica node. Dropping it stops the task.
pub struct ReplicaLink {
    hostname: String,
    upstream: watch::Sender<Option<Upstream>>,
    control: watch::Sender<LagControl>,
    stats: Arc<Stats>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<LinkEvent>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    deliveries: AtomicU64,
    /// Changes to the replica's database that the sim did not make: an app wrote to a
    /// replica (which must not happen behind a correct proxy).
    foreign_writes: AtomicU64,
    pending: AtomicUsize,
}

/// One transaction received, waiting for its lag.
struct Pending {
    txid: u64,
    checksum: u64,
    seen_at: Instant,
    due: Instant,
    /// The whole database; empty when the primary had a position but no file.
    db: Bytes,
}

impl ReplicaLink {
    /// Starts replicating into `node` from `upstream` (none: idle). With `reconnect`, a
    /// broken stream is retried every [`RECONNECT_DELAY`] while the upstream stays set (a
    /// static lease); without, the upstream is cleared when its stream ends, and the owner
    /// (the lease loop) decides. Must run inside a tokio runtime.
    pub fn spawn(
        node: Node,
        upstream: Option<Upstream>,
        control: LagControl,
        reconnect: bool,
    ) -> ReplicaLink {
        let (upstream_tx, upstream_rx) = watch::channel(upstream);
        let (control_tx, control_rx) = watch::channel(control);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let hostname = node.hostname().to_owned();
        let task = tokio::spawn(
            Task {
                node,
                upstream_tx: upstream_tx.clone(),
                upstream: upstream_rx,
                control: control_rx,
                events: events_tx,
                reconnect,
                stats: stats.clone(),
                queue: VecDeque::new(),
                expected_counter: None,
                last_lag: None,
            }
            .run(),
        );
        ReplicaLink {
            hostname,
            upstream: upstream_tx,
            control: control_tx,
            stats,
            events: tokio::sync::Mutex::new(events_rx),
            task,
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Streams from another primary (or none). Transactions still pending from the
    /// previous one are dropped, as LiteFS drops a stream when the primary changes.
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

    /// The next thing that happened to the stream (waits).
    pub async fn next_event(&self) -> Option<LinkEvent> {
        self.events.lock().await.recv().await
    }

    /// Lag for transactions received from now on.
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

    /// Transactions applied so far (coalesced ones count once).
    pub fn deliveries(&self) -> u64 {
        self.stats.deliveries.load(Ordering::Relaxed)
    }

    /// Writes to the replica's database that did not come from replication (see
    /// [`crate::dbfile`] for why they are rare but possible).
    pub fn foreign_writes(&self) -> u64 {
        self.stats.foreign_writes.load(Ordering::Relaxed)
    }

    /// Transactions received and not yet applied.
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
    /// To clear the upstream when a stream ends and the link does not reconnect.
    upstream_tx: watch::Sender<Option<Upstream>>,
    upstream: watch::Receiver<Option<Upstream>>,
    control: watch::Receiver<LagControl>,
    events: mpsc::UnboundedSender<LinkEvent>,
    reconnect: bool,
    stats: Arc<Stats>,
    queue: VecDeque<Pending>,
    /// The replica database's change counter right after the last delivery.
    expected_counter: Option<u32>,
    last_lag: Option<(Instant, i64)>,
}

/// What the reader of one stream passes to the task.
enum Incoming {
    Frame(wire::Frame),
    Ended(String),
}

impl Task {
    async fn run(mut self) {
        let mut role = self.node.watch_role();
        let mut lag_tick = tokio::time::interval(LAG_TICK);
        lag_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // The current stream: its frames, and the task reading it (aborted on drop).
        let mut stream: Option<(mpsc::UnboundedReceiver<Incoming>, AbortOnDrop)> = None;
        let mut retry_at: Option<Instant> = None;
        self.upstream.mark_changed();
        loop {
            let paused = self.control.borrow().paused;
            let next_due = if paused {
                None
            } else {
                self.queue.front().map(|p| p.due)
            };
            tokio::select! {
                biased;
                changed = self.upstream.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.drop_pending();
                    let up = self.upstream.borrow_and_update().clone();
                    stream = up.map(|up| self.open(up));
                    retry_at = None;
                }
                incoming = recv_opt(&mut stream) => {
                    match incoming {
                        Incoming::Frame(frame) => {
                            if let Some(ended) = self.on_frame(frame).await {
                                stream = None;
                                self.after_end(ended, &mut retry_at);
                            }
                        }
                        Incoming::Ended(reason) => {
                            stream = None;
                            self.after_end(LinkEvent::Ended(reason), &mut retry_at);
                        }
                    }
                }
                () = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                    let up = self.upstream.borrow().clone();
                    stream = up.map(|up| self.open(up));
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
                _ = lag_tick.tick() => {
                    if paused {
                        self.collapse_due();
                    }
                    self.write_lag(stream.is_some());
                }
            }
            self.stats
                .pending
                .store(self.queue.len(), Ordering::Relaxed);
        }
    }

    /// Starts reading a stream from `up` in a task of its own.
    fn open(&self, up: Upstream) -> (mpsc::UnboundedReceiver<Incoming>, AbortOnDrop) {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.node.id();
        let task = tokio::spawn(async move {
            let reason = match read_stream(&up, me, &tx).await {
                Ok(()) => "stream ended".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            let _ = tx.send(Incoming::Ended(reason));
        });
        (rx, AbortOnDrop(task))
    }

    /// Handles one frame; `Some` when the stream is over.
    async fn on_frame(&mut self, frame: wire::Frame) -> Option<LinkEvent> {
        match frame.header {
            Header::Ltx { txid, checksum, .. } => {
                let seen_at = Instant::now();
                let lag = self.control.borrow().lag.sample();
                let due = self
                    .queue
                    .back()
                    .map_or(seen_at + lag, |b| b.due.max(seen_at + lag));
                self.queue.push_back(Pending {
                    txid,
                    checksum,
                    seen_at,
                    due,
                    db: frame.payload,
                });
                None
            }
            Header::Ready => {
                let host = self
                    .upstream
                    .borrow()
                    .as_ref()
                    .map(|u| u.hostname.clone())
                    .unwrap_or_default();
                let _ = self.events.send(LinkEvent::Connected(host));
                None
            }
            Header::Heartbeat { .. } => None,
            Header::Handoff { lease_id } => {
                // Everything before the handoff frame has arrived: apply it now.
                if let Some(p) = self.take_newest(|_| true) {
                    self.apply(p).await;
                }
                Some(LinkEvent::Handoff(lease_id))
            }
            Header::End => Some(LinkEvent::Ended("primary ended the stream".into())),
        }
    }

    fn after_end(&mut self, event: LinkEvent, retry_at: &mut Option<Instant>) {
        self.drop_pending();
        tracing::info!(replica = %self.node.hostname(), event = ?event, "litefs-sim: stream over");
        let handoff = matches!(event, LinkEvent::Handoff(_));
        let _ = self.events.send(event);
        if self.reconnect && !handoff {
            *retry_at = Some(Instant::now() + RECONNECT_DELAY);
        } else {
            self.upstream_tx.send_replace(None);
            self.upstream.borrow_and_update();
        }
    }

    /// Transactions in flight when the stream changed or broke are lost.
    fn drop_pending(&mut self) {
        self.queue.clear();
        self.stats.pending.store(0, Ordering::Relaxed);
    }

    /// While paused, keeps only the newest of the transactions whose lag has run out.
    fn collapse_due(&mut self) {
        let now = Instant::now();
        while self.queue.len() >= 2 && self.queue[1].due <= now {
            self.queue.pop_front();
        }
    }

    /// Removes the queued transactions `due` accepts from the front and returns the newest
    /// of them (older ones are contained in it).
    fn take_newest(&mut self, due: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let mut newest = None;
        while self.queue.front().is_some_and(&due) {
            newest = self.queue.pop_front();
        }
        newest
    }

    /// Applies the newest transaction whose lag has run out.
    async fn deliver_due(&mut self) {
        let now = Instant::now();
        if let Some(p) = self.take_newest(|p| p.due <= now) {
            self.apply(p).await;
        }
    }

    async fn apply(&mut self, p: Pending) {
        if self.node.is_primary() {
            return;
        }
        let db = self.node.db_path();
        let expected = self.expected_counter;
        let node = self.node.clone();
        let bytes = p.db.clone();
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(bool, Option<u32>)> {
            let _delivering = node.delivering();
            let foreign = match (expected, dbfile::change_counter(&db)?) {
                (Some(want), Some(have)) => want != have,
                _ => false,
            };
            let counter = if bytes.is_empty() {
                None
            } else {
                Some(dbfile::deliver_bytes(&bytes, &db)?)
            };
            Ok((foreign, counter))
        })
        .await;
        match result {
            Ok(Ok((foreign, counter))) => {
                if foreign {
                    self.stats.foreign_writes.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(replica = %self.node.hostname(), "litefs-sim: something wrote to a replica's database");
                }
                self.expected_counter = counter;
                self.node.set_pos(p.txid, p.checksum);
                self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                let lag = Instant::now().saturating_duration_since(p.seen_at);
                self.set_lag(i64::try_from(lag.as_millis()).unwrap_or(i64::MAX));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), replica = %self.node.hostname(), txid = p.txid, "litefs-sim: delivery failed")
            }
            Err(e) => tracing::error!(error = %e, "litefs-sim: delivery task"),
        }
    }

    /// Rewrites `.lag` as LiteFS reports it: how long the oldest unapplied transaction has
    /// been waiting (0 when caught up).
    fn write_lag(&mut self, connected: bool) {
        if self.node.is_primary() || !connected {
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

/// Reads one stream to its end, passing each frame on.
async fn read_stream(
    up: &Upstream,
    me: u64,
    out: &mpsc::UnboundedSender<Incoming>,
) -> anyhow::Result<()> {
    let uri: hyper::Uri =
        format!("{}{}", up.url.trim_end_matches('/'), wire::STREAM_PATH).parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("no host in {uri}"))?
        .clone();
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = hyper::Request::post(uri.clone())
        .header(hyper::header::HOST, authority.as_str())
        .header(wire::NODE_ID_HEADER, wire::format_node_id(me))
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let body = body.unwrap_or_default();
        anyhow::bail!(
            "connect to primary: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let mut body = resp.into_body();
    let mut decoder = wire::Decoder::default();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.feed(&data);
        while let Some(f) = decoder.next_frame()? {
            let last = matches!(f.header, Header::Handoff { .. } | Header::End);
            if out.send(Incoming::Frame(f)).is_err() || last {
                drop(conn);
                return Ok(());
            }
        }
    }
    drop(conn);
    anyhow::bail!("EOF")
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn recv_opt(
    stream: &mut Option<(mpsc::UnboundedReceiver<Incoming>, AbortOnDrop)>,
) -> Incoming {
    match stream {
        Some((rx, _)) => rx
            .recv()
            .await
            .unwrap_or_else(|| Incoming::Ended("stream reader stopped".into())),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
