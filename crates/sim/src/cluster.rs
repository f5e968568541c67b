//! N simulated LiteFS nodes in one process, wired so the replication source follows
//! whoever is primary, as the LiteFS lease would make it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::lag::{Lag, LagControl};
use crate::node::{Node, NodeConfig};
use crate::replicate::{ReplicaLink, Upstream};
use crate::watch::CommitWatcher;

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
    /// [`Node::commit`] itself (the demo app does).
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
        let upstream = nodes
            .iter()
            .find(|n| n.hostname() == primary)
            .map(Upstream::of);
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
                    ReplicaLink::spawn(n.clone(), up, control),
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

    async fn change_primary(&self, hostname: &str, catch_up: bool) -> anyhow::Result<()> {
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
            // Count the old primary's last commits, then stop its writes.
            if let Some(w) = self.watchers.get(old.hostname()) {
                w.sync();
            }
            old.set_role(false, None);
            if catch_up {
                link.set_upstream(Some(Upstream::of(old)));
                link.catch_up()
                    .await
                    .with_context(|| format!("{hostname} catching up with {}", old.hostname()))?;
            }
        }
        link.set_upstream(None);
        new.set_role(true, None);
        for n in self.nodes.iter().filter(|n| n.hostname() != hostname) {
            n.set_role(false, Some(hostname));
            if let Some(l) = self.links.get(n.hostname()) {
                l.set_upstream(Some(Upstream::of(&new)));
            }
        }
        self.primary.send_replace(Some(hostname.to_owned()));
        tracing::info!(primary = hostname, catch_up, "litefs-sim: primary changed");
        Ok(())
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
