//! One LiteFS node as a process of its own (what `litefs mount` is): the mount files, the
//! HTTP API with the replication stream, the consul lease loop against a lease endpoint,
//! and optionally the demo app (an app on the mount) or a commit watcher for a foreign
//! app. Killing this process is a LiteFS crash: nothing is released, replicas see their
//! stream break, and its session lives until the endpoint lets it expire.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::consul::{Consul, ConsulConfig};
use crate::lag::LagControl;
use crate::lease::{self, LeaseState};
use crate::node::{Node, NodeConfig};
use crate::replicate::ReplicaLink;
use crate::watch::CommitWatcher;

/// How a LiteFS node starts.
#[derive(Clone, Debug)]
pub struct LiteFsConfig {
    pub hostname: String,
    pub mount: PathBuf,
    pub db: String,
    /// Where the API (and the replication stream) listens, LiteFS's `http.addr`.
    pub api_addr: SocketAddr,
    /// The lease: Consul's URL and key, this node's advertise URL, TTL and lock-delay.
    pub consul: ConsulConfig,
    /// LiteFS's `lease.candidate`: may become primary.
    pub candidate: bool,
    pub lag: LagControl,
    /// Serve the demo app here (it writes through this node).
    pub app_addr: Option<SocketAddr>,
    /// A foreign app writes the database: watch it for commits at this interval.
    pub watch_commits: Option<Duration>,
}

/// Runs the node until `stop` completes; a primary then releases its lease and destroys
/// its session (LiteFS's clean shutdown). Errors only when a port cannot be bound.
pub async fn run(cfg: LiteFsConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let api = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.api_addr))?;
    let app = match cfg.app_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a}"))?,
        ),
        None => None,
    };
    let node = Node::new(NodeConfig {
        mount: cfg.mount.clone(),
        db: cfg.db.clone(),
        hostname: cfg.hostname.clone(),
        is_primary: false,
        primary_hostname: None,
    });
    let link = Arc::new(ReplicaLink::spawn(node.clone(), None, cfg.lag, false));
    let _watcher = cfg
        .watch_commits
        .map(|i| CommitWatcher::spawn(node.clone(), i));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (state_tx, _state_rx) = watch::channel(LeaseState::Starting);
    let leaser = Arc::new(Consul::new(cfg.consul.clone()));
    let lease_loop = tokio::spawn(lease::run(
        leaser,
        node.clone(),
        link.clone(),
        cfg.candidate,
        state_tx,
        stop_rx.clone(),
    ));
    let servers_stop = {
        let mut rx = stop_rx.clone();
        futures_util::FutureExt::shared(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    };
    let api_task = tokio::spawn(crate::api::serve_api(
        node.clone(),
        api,
        servers_stop.clone(),
    ));
    let app_task = app.map(|l| {
        tokio::spawn(crate::app::serve_demo_app(
            node.clone(),
            l,
            servers_stop.clone(),
        ))
    });
    tracing::info!(node = %cfg.hostname, api = %cfg.api_addr, consul = %cfg.consul.url, "litefs-sim: LiteFS node up");
    stop.await;
    let _ = stop_tx.send(true);
    let _ = lease_loop.await;
    let _ = api_task.await;
    if let Some(t) = app_task {
        let _ = t.await;
    }
    Ok(())
}
