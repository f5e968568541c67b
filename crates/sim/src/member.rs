//! One node's sim following a leader chosen elsewhere (a role source outside LiteFS): the
//! node, its replication link and optionally a commit watcher. Peers are known by their
//! LiteFS API URLs, the only way replication reaches them. Moving to this node is LiteFS's
//! `/promote`: the primary this node streams from is asked for a handoff, and without one
//! (it is gone) the node takes over with what it had received.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;

use crate::lag::LagControl;
use crate::node::{Node, NodeConfig};
use crate::replicate::{LinkEvent, ReplicaLink, Upstream};
use crate::watch::CommitWatcher;

/// A node plus the machinery that makes it follow a leader.
pub struct Member {
    node: Node,
    link: ReplicaLink,
    watcher: Option<CommitWatcher>,
    /// hostname → LiteFS API URL of every node (this one included).
    peers: HashMap<String, String>,
    /// Serializes leader changes; holds the last primary this node streamed from, whom a
    /// promotion asks for the handoff.
    changing: tokio::sync::Mutex<Option<Upstream>>,
}

impl Member {
    /// Starts the node described by `config` (its role as given there) with replication
    /// from `config.primary_hostname` when it is a replica. `watch_commits`: see
    /// [`crate::ClusterConfig::watch_commits`]. Must run inside a tokio runtime.
    pub fn start(
        config: NodeConfig,
        peers: HashMap<String, String>,
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
        node.set_primary_url(upstream.as_ref().map(|u| u.url.clone()));
        let link = ReplicaLink::spawn(node.clone(), upstream.clone(), control, true);
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

    /// Applies a leader change:
    /// - `Some(self)`: ask the primary this node streamed from for a handoff (its last
    ///   commits arrive ahead of it); if it cannot (it is gone), take over with what was
    ///   received; then take writes;
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
                    if let Err(e) = self.take_handoff(&prev).await {
                        tracing::warn!(error = %format!("{e:#}"), from = %prev.hostname, "litefs-sim: promotion without handoff");
                    }
                }
                self.link.set_upstream(None);
                self.node.set_primary_url(None);
                self.node.set_role(true, None);
                *last = None;
            }
            Some(h) => {
                let up =
                    upstream_of(&self.peers, h).with_context(|| format!("unknown leader {h}"))?;
                if let Some(w) = &self.watcher {
                    w.sync();
                }
                self.node.set_primary_url(Some(up.url.clone()));
                self.node.set_role(false, Some(h));
                self.link.set_upstream(Some(up.clone()));
                *last = Some(up);
            }
            None => {
                if let Some(w) = &self.watcher {
                    w.sync();
                }
                // LiteFS has no stream without a primary; `last` is kept for a promotion.
                self.node.set_primary_url(None);
                self.node.set_role(false, None);
                self.link.set_upstream(None);
            }
        }
        Ok(())
    }

    /// `POST <prev>/handoff?nodeID=<me>` (what LiteFS's `/promote` sends), then the
    /// handoff frame on this node's stream.
    async fn take_handoff(&self, prev: &Upstream) -> anyhow::Result<()> {
        self.link.set_upstream(Some(prev.clone()));
        let url = format!(
            "{}/handoff?nodeID={}",
            prev.url.trim_end_matches('/'),
            crate::wire::format_node_id(self.node.id())
        );
        let deadline = tokio::time::Instant::now() + HANDOFF_TIMEOUT;
        // The stream may be reconnecting; the old primary refuses until it is connected.
        loop {
            let (status, body) = crate::client::request(
                hyper::Method::POST,
                &url,
                bytes::Bytes::new(),
                HANDOFF_TIMEOUT,
            )
            .await?;
            if status.is_success() {
                break;
            }
            let body = String::from_utf8_lossy(&body);
            anyhow::ensure!(
                body.contains("not currently connected") && tokio::time::Instant::now() < deadline,
                "handoff refused: {status}: {}",
                body.trim()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            match tokio::time::timeout_at(deadline, self.link.next_event()).await? {
                Some(LinkEvent::Handoff(_)) => return Ok(()),
                Some(_) => continue,
                None => anyhow::bail!("replication stopped"),
            }
        }
    }
}

/// How long a promotion waits for the old primary's handoff.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(2);

fn upstream_of(peers: &HashMap<String, String>, hostname: &str) -> Option<Upstream> {
    peers.get(hostname).map(|url| Upstream {
        hostname: hostname.to_owned(),
        url: url.clone(),
    })
}
