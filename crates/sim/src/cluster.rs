//! N simulated LiteFS nodes in one process, each with its own LiteFS API on a loopback
//! port, replicas streaming from the primary's API (never from its files) and the primary
//! moved by the caller, as a static lease moved by an operator would: a planned move is
//! LiteFS's handoff over the stream, a failover takes what the new primary had received.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::lag::{Lag, LagControl};
use crate::node::{Node, NodeConfig};
use crate::replicate::{LinkEvent, ReplicaLink, Upstream};
use crate::watch::CommitWatcher;

/// How long a planned handoff may take.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// How a cluster starts.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Each node's mount is `<root>/<hostname>`.
    pub root: PathBuf,
    pub db: String,
    pub hostnames: Vec<String>,
    /// The initial primary; `None` = the first hostname.
    pub primary: Option<String>,
    /// Initial lag of every replica.
    pub lag: Lag,
    /// `Some(interval)`: a foreign app (e.g. Django) writes the primary's database and a
    /// [`CommitWatcher`] turns its commits into TXIDs. `None`: the app calls
    /// [`Node::commit_content`] itself (the demo app does).
    pub watch_commits: Option<Duration>,
}

impl ClusterConfig {
    /// `n` nodes named `node-1`..`node-n` under `root`, `node-1` primary, no lag, database
    /// `db.sqlite3`, commits reported by the app.
    pub fn new(root: impl Into<PathBuf>, n: usize) -> ClusterConfig {
        ClusterConfig {
            root: root.into(),
            db: "db.sqlite3".into(),
            hostnames: (1..=n).map(|i| format!("node-{i}")).collect(),
            primary: None,
            lag: Lag::None,
            watch_commits: None,
        }
    }
}

/// The nodes, one replication link per node (idle while it is primary) and, for foreign
/// apps, one commit watcher per node (active only while it is primary).
pub struct Cluster {
    nodes: Vec<Node>,
    /// Each node's LiteFS API URL (its advertise URL), by hostname.
    urls: HashMap<String, String>,
    /// Stops the API servers when the cluster is dropped.
    _stop_apis: tokio::sync::oneshot::Sender<()>,
    links: HashMap<String, ReplicaLink>,
    watchers: HashMap<String, CommitWatcher>,
    primary: watch::Sender<Option<String>>,
    /// Serializes role changes.
    changing: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Creates the mounts and starts replication. Must run inside a tokio runtime.
    pub fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        anyhow::ensure!(!config.hostnames.is_empty(), "a cluster needs nodes");
        let primary = config
            .primary
            .clone()
            .unwrap_or_else(|| config.hostnames[0].clone());
        anyhow::ensure!(
            config.hostnames.contains(&primary),
            "primary {primary} is not one of the nodes"
        );
        let nodes: Vec<Node> = config
            .hostnames
            .iter()
            .map(|h| {
                Node::new(NodeConfig {
                    mount: config.root.join(h),
                    db: config.db.clone(),
                    hostname: h.clone(),
                    is_primary: *h == primary,
                    primary_hostname: (*h != primary).then(|| primary.clone()),
                })
            })
            .collect();
        let (stop_apis, apis_stopped) = tokio::sync::oneshot::channel::<()>();
        let apis_stopped = futures_util::FutureExt::shared(async move {
            let _ = apis_stopped.await;
        });
        let mut urls = HashMap::new();
        for n in &nodes {
            let std_listener =
                std::net::TcpListener::bind("127.0.0.1:0").context("binding a LiteFS API port")?;
            std_listener.set_nonblocking(true)?;
            let addr = std_listener.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            urls.insert(n.hostname().to_owned(), format!("http://{addr}"));
            tokio::spawn(crate::api::serve_api(
                n.clone(),
                listener,
                apis_stopped.clone(),
            ));
        }
        let upstream = Some(Upstream {
            hostname: primary.clone(),
            url: urls[&primary].clone(),
        });
        for n in nodes.iter().filter(|n| n.hostname() != primary) {
            n.set_primary_url(upstream.as_ref().map(|u| u.url.clone()));
        }
        let control = LagControl {
            lag: config.lag,
            paused: false,
        };
        let links = nodes
            .iter()
            .map(|n| {
                let up = (n.hostname() != primary)
                    .then(|| upstream.clone())
                    .flatten();
                (
                    n.hostname().to_owned(),
                    ReplicaLink::spawn(n.clone(), up, control, true),
                )
            })
            .collect();
        let watchers = match config.watch_commits {
            Some(interval) => nodes
                .iter()
                .map(|n| {
                    (
                        n.hostname().to_owned(),
                        CommitWatcher::spawn(n.clone(), interval),
                    )
                })
                .collect(),
            None => HashMap::new(),
        };
        Ok(Cluster {
            nodes,
            urls,
            _stop_apis: stop_apis,
            links,
            watchers,
            primary: watch::channel(Some(primary)).0,
            changing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, hostname: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.hostname() == hostname)
    }

    /// The current primary, if any.
    pub fn primary(&self) -> Option<Node> {
        let host = self.primary.borrow().clone()?;
        self.node(&host).cloned()
    }

    /// Follows primary changes (hostname, or `None` while there is none).
    pub fn watch_primary(&self) -> watch::Receiver<Option<String>> {
        self.primary.subscribe()
    }

    /// The LiteFS API URL of `hostname` (where replicas stream from when it is primary).
    pub fn api_url(&self, hostname: &str) -> Option<&str> {
        self.urls.get(hostname).map(String::as_str)
    }

    fn upstream(&self, hostname: &str) -> Option<Upstream> {
        Some(Upstream {
            hostname: hostname.to_owned(),
            url: self.urls.get(hostname)?.clone(),
        })
    }

    /// The replication link into `hostname`.
    pub fn link(&self, hostname: &str) -> Option<&ReplicaLink> {
        self.links.get(hostname)
    }

    /// The commit watcher of `hostname` (only with `watch_commits`).
    pub fn watcher(&self, hostname: &str) -> Option<&CommitWatcher> {
        self.watchers.get(hostname)
    }

    /// Sets the lag of every replica for transactions seen from now on.
    pub fn set_lag(&self, lag: Lag) {
        self.links.values().for_each(|l| l.set_lag(lag));
    }

    pub fn pause_replication(&self) {
        self.links.values().for_each(ReplicaLink::pause);
    }

    pub fn resume_replication(&self) {
        self.links.values().for_each(ReplicaLink::resume);
    }

    /// Writes to replica databases that did not come from replication, over all nodes.
    pub fn foreign_writes(&self) -> u64 {
        self.links.values().map(ReplicaLink::foreign_writes).sum()
    }

    /// Counts every commit the app has made so far on the primary (with `watch_commits`;
    /// otherwise just reads it). Returns the primary's TXID.
    pub fn sync(&self) -> Option<u64> {
        let primary = self.primary()?;
        Some(match self.watchers.get(primary.hostname()) {
            Some(w) => w.sync(),
            None => primary.txid(),
        })
    }

    /// Waits until every replica has the primary's TXID; `false` after `timeout`.
    pub async fn wait_replicated(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(primary) = self.primary() else {
                return false;
            };
            let target = self.sync().unwrap_or_else(|| primary.txid());
            let behind = self
                .nodes
                .iter()
                .find(|n| n.hostname() != primary.hostname() && n.txid() != target)
                .cloned();
            let Some(node) = behind else {
                return true;
            };
            let mut rx = node.watch_txid();
            let step = tokio::time::Instant::now() + Duration::from_millis(50);
            let until = step.min(deadline);
            let _ = tokio::time::timeout_at(until, rx.wait_for(|t| *t == target)).await;
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// A planned handoff to `hostname`: the old primary stops taking writes, the new one
    /// catches up with everything it had (whatever the lag or pause), then takes over and
    /// every other node follows it. No acknowledged write is lost.
    pub async fn promote(&self, hostname: &str) -> anyhow::Result<()> {
        self.change_primary(hostname, true).await
    }

    /// The old primary died: `hostname` takes over with what it had already received
    /// (transactions still in flight to it are lost, as with LiteFS's async replication).
    pub async fn fail_over(&self, hostname: &str) -> anyhow::Result<()> {
        self.change_primary(hostname, false).await
    }

    /// No primary (e.g. an election in progress): every node is a disconnected replica.
    pub async fn clear_primary(&self) {
        let _guard = self.changing.lock().await;
        if let Some(old) = self.primary() {
            if let Some(w) = self.watchers.get(old.hostname()) {
                w.sync();
            }
        }
        for n in &self.nodes {
            n.set_role(false, None);
            if let Some(l) = self.links.get(n.hostname()) {
                l.set_upstream(None);
            }
        }
        self.primary.send_replace(None);
    }

    async fn change_primary(&self, hostname: &str, handoff: bool) -> anyhow::Result<()> {
        let _guard = self.changing.lock().await;
        let new = self
            .node(hostname)
            .with_context(|| format!("no node {hostname}"))?
            .clone();
        let old = self.primary();
        if old.as_ref().is_some_and(|o| o.hostname() == hostname) {
            return Ok(());
        }
        let link = self
            .links
            .get(hostname)
            .context("node without replication link")?;
        if let Some(old) = &old {
            // Count the old primary's last commits.
            if let Some(w) = self.watchers.get(old.hostname()) {
                w.sync();
            }
            if handoff {
                self.hand_off(old, &new, link).await?;
            } else {
                old.set_role(false, None);
            }
        }
        link.set_upstream(None);
        new.set_primary_url(None);
        new.set_role(true, None);
        let up = self.upstream(hostname);
        for n in self.nodes.iter().filter(|n| n.hostname() != hostname) {
            n.set_primary_url(up.as_ref().map(|u| u.url.clone()));
            n.set_role(false, Some(hostname));
            if let Some(l) = self.links.get(n.hostname()) {
                l.set_upstream(up.clone());
            }
        }
        self.primary.send_replace(Some(hostname.to_owned()));
        tracing::info!(primary = hostname, handoff, "litefs-sim: primary changed");
        Ok(())
    }

    /// LiteFS's handoff: `new` must be streaming from `old`; `old` puts the handoff frame
    /// behind everything it committed and steps down, and `new` applies all of it.
    async fn hand_off(&self, old: &Node, new: &Node, link: &ReplicaLink) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + HANDOFF_TIMEOUT;
        while !old.has_subscriber(new.id()) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} is not streaming from {}",
                new.hostname(),
                old.hostname()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        old.handoff(new.id())
            .await
            .map_err(|e| anyhow::anyhow!("handoff from {}: {e}", old.hostname()))?;
        loop {
            let ev = tokio::time::timeout_at(deadline, link.next_event())
                .await
                .with_context(|| format!("{} got no handoff frame", new.hostname()))?;
            match ev {
                Some(LinkEvent::Handoff(_)) => return Ok(()),
                Some(_) => continue,
                None => anyhow::bail!("replication task of {} stopped", new.hostname()),
            }
        }
    }

    /// Follows an external role source (e.g. the Raft leader's hostname): each change
    /// promotes that node (with catch-up), `None` clears the primary. Runs until the
    /// sender is dropped.
    pub async fn follow(&self, mut leader: watch::Receiver<Option<String>>) {
        loop {
            let want = leader.borrow_and_update().clone();
            let current = self.primary.borrow().clone();
            if want != current {
                match &want {
                    Some(h) => {
                        if let Err(e) = self.promote(h).await {
                            tracing::error!(error = %format!("{e:#}"), "litefs-sim: following the leader");
                        }
                    }
                    None => self.clear_primary().await,
                }
            }
            if leader.changed().await.is_err() {
                return;
            }
        }
    }
}
