//! One node's whole sim, for a process that runs a single node (the demo, one process per
//! node): the node, its replication link and optionally a commit watcher, following a
//! leader chosen elsewhere (Raft, a static config). Peers are known by their mount
//! directories on this machine, which is all replication needs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::lag::LagControl;
use crate::node::{Node, NodeConfig};
use crate::replicate::{ReplicaLink, Upstream};
use crate::watch::CommitWatcher;

/// A node plus the machinery that makes it follow a leader.
pub struct Member {
    node: Node,
    link: ReplicaLink,
    watcher: Option<CommitWatcher>,
    /// hostname → mount directory of every node (this one included).
    peers: HashMap<String, PathBuf>,
    /// Serializes leader changes; holds the last primary this node replicated from, so a
    /// promotion after a leaderless spell can still catch up from it.
    changing: tokio::sync::Mutex<Option<Upstream>>,
}

impl Member {
    /// Starts the node described by `config` (its role as given there) with replication
    /// from `config.primary_hostname` when it is a replica. `watch_commits`: see
    /// [`crate::ClusterConfig::watch_commits`]. Must run inside a tokio runtime.
    pub fn start(
        config: NodeConfig,
        peers: HashMap<String, PathBuf>,
        control: LagControl,
        watch_commits: Option<Duration>,
    ) -> Member {
        let upstream = if config.is_primary {
            None
        } else {
            config
                .primary_hostname
                .as_ref()
                .and_then(|h| upstream_of(&peers, h))
        };
        let node = Node::new(config);
        let link = ReplicaLink::spawn(node.clone(), upstream.clone(), control);
        let watcher = watch_commits.map(|i| CommitWatcher::spawn(node.clone(), i));
        Member {
            node,
            link,
            watcher,
            peers,
            changing: tokio::sync::Mutex::new(upstream),
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn link(&self) -> &ReplicaLink {
        &self.link
    }

    pub fn watcher(&self) -> Option<&CommitWatcher> {
        self.watcher.as_ref()
    }

    /// Applies a leader change, as the LiteFS lease would:
    /// - `Some(self)`: catch up with the previous primary's database if its mount is
    ///   known (what it committed and this node has not received yet), then take writes;
    /// - `Some(other)`: become a replica of `other` (writes refused, `.primary` = other);
    /// - `None`: a replica connected to no primary (`.primary` absent).
    pub async fn set_leader(&self, leader: Option<&str>) -> anyhow::Result<()> {
        let mut last = self.changing.lock().await;
        let me = self.node.hostname().to_owned();
        match leader {
            Some(h) if h == me => {
                if self.node.is_primary() {
                    return Ok(());
                }
                if let Some(prev) = last.clone() {
                    self.link.set_upstream(Some(prev.clone()));
                    if let Err(e) = self.link.catch_up().await {
                        tracing::warn!(error = %format!("{e:#}"), from = %prev.hostname, "litefs-sim: promotion without catch-up");
                    }
                }
                self.link.set_upstream(None);
                self.node.set_role(true, None);
                *last = None;
            }
            Some(h) => {
                let up =
                    upstream_of(&self.peers, h).with_context(|| format!("unknown leader {h}"))?;
                if let Some(w) = &self.watcher {
                    w.sync();
                }
                self.node.set_role(false, Some(h));
                self.link.set_upstream(Some(up.clone()));
                *last = Some(up);
            }
            None => {
                if let Some(w) = &self.watcher {
                    w.sync();
                }
                // LiteFS has no stream without a primary; `last` is kept for a promotion.
                self.node.set_role(false, None);
                self.link.set_upstream(None);
            }
        }
        Ok(())
    }
}

fn upstream_of(peers: &HashMap<String, PathBuf>, hostname: &str) -> Option<Upstream> {
    peers.get(hostname).map(|mount| Upstream {
        hostname: hostname.to_owned(),
        mount: mount.clone(),
    })
}
