//! `litefs-proxy run`: start the role source, bind, serve until a signal, drain.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use litefs_proxy::{Primary, Proxy};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::Config,
    role::{
        confirm,
        litefs_source::LitefsSource,
        promote,
        raft_source::{self, ClusterStatus, RaftRole},
        static_source, RoleSource,
    },
    signals, EXIT_CONFIG,
};

/// Runs the proxy to completion. Exit codes: 0 after a clean drain, 64 for a config the
/// proxy refuses, 1 when the address cannot be bound or serving fails.
pub async fn run(cfg: Config) -> ExitCode {
    run_until(cfg, std::future::pending()).await
}

/// `run`, also stopping gracefully, as on SIGTERM, when `stop` completes.
pub async fn run_until(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> ExitCode {
    match serve(cfg, stop).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("litefs-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    let mut cfg = cfg;
    if cfg.proxy.sync_replicas.is_none() {
        // A config built in code (the demo) rather than loaded: the same default as `load`.
        cfg.proxy.sync_replicas = Some(crate::config::default_sync_replicas(&cfg));
    }
    let addr = cfg.proxy.listen_addr()?;
    let (tx, rx) = watch::channel(Primary::Unknown);
    // The sender lives as long as the proxy: a dropped sender would end the watch that
    // held writes wait on.
    let mut raft = None;
    let mut confirmed_by = None;
    let mut litefs_up = None;
    // With a lease endpoint: the task moving LiteFS's primary to this node when it leads,
    // and LiteFS's view, which shutdown waits on until the handoff is done.
    let mut promoter = None;
    let mut handing_off: Option<watch::Receiver<Primary>> = None;
    // With Raft: every peer's status, for `/litefs/status` and `cluster status`.
    let mut peer_view = None;
    let mut litefs_view = None;
    let _role_task = match cfg.role.source {
        RoleSource::Static => {
            tx.send_replace(static_source::initial(&cfg.role)?);
            None
        }
        RoleSource::Litefs => {
            let source = LitefsSource::new(
                &cfg.proxy.litefs_api,
                &cfg.proxy.mount,
                &cfg.role.primary_url_template,
            );
            Some(AbortOnDrop(tokio::spawn(source.run(tx.clone()))))
        }
        RoleSource::Raft => {
            let election = match raft_source::election_config(cfg.election.as_ref()) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("litefs-proxy: {}", crate::config::InvalidConfig::from(e));
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let confirm = cfg
                .role
                .confirm_litefs
                .unwrap_or(election.lease_addr.is_some());
            // LiteFS names the primary by node id (litefs-config's lease.hostname).
            let peers: Vec<(String, String)> = election
                .resolve_peers(addr.port())
                .into_iter()
                .map(|p| (p.id, p.proxy))
                .collect();
            peer_view = Some(crate::peer_view::PeerView::start(
                &election.node_id,
                peers.clone(),
                &cfg.proxy.endpoint_prefix,
            ));
            // Writes go local only once LiteFS holds the lease too (see role::confirm), and
            // the node may lead only while its LiteFS is up.
            let source = confirm.then(|| {
                LitefsSource::new(
                    &cfg.proxy.litefs_api,
                    &cfg.proxy.mount,
                    &cfg.role.primary_url_template,
                )
                .with_peers(peers)
            });
            litefs_up = source.as_ref().map(LitefsSource::up);
            let role = RaftRole::start(election, addr.port(), tx.clone(), litefs_up.clone())
                .await
                .context("starting the election")?;
            raft = Some(role.clone());
            source.map(|source| {
                let (ltx, lrx) = watch::channel(Primary::Unknown);
                if let Some(lease) = role.lease() {
                    // LiteFS's primary follows Raft through LiteFS's own handoff.
                    let api = litefs_proxy::litefs_api::LitefsApi::new(&cfg.proxy.litefs_api);
                    promoter = Some(AbortOnDrop(tokio::spawn(promote::drive(
                        rx.clone(),
                        lrx.clone(),
                        api,
                        lease,
                    ))));
                    handing_off = Some(lrx.clone());
                }
                litefs_view = Some(lrx.clone());
                confirmed_by = Some(lrx);
                AbortOnDrop(tokio::spawn(source.run(ltx)))
            })
        }
    };
    let role_rx = match confirmed_by {
        Some(litefs) => confirm::gate(rx, litefs),
        None => rx,
    };
    let mut proxy = match Proxy::new(cfg.proxy.clone(), role_rx) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("litefs-proxy: {}", crate::config::InvalidConfig::from(e));
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Some(role) = &raft {
        let status = ClusterStatus {
            raft: role.clone(),
            peers: peer_view
                .take()
                .context("the peer view starts with the election")?,
            litefs: litefs_view.take(),
        };
        proxy = proxy
            .with_extension(Arc::new(status))
            .with_fence(role.fence())
            .with_replicas(role.replicas());
        role.follow_position(proxy.local_txid(), cfg.proxy.sync_replicas.unwrap_or(0) > 0);
    }
    if let Some(up) = litefs_up {
        proxy = proxy.with_litefs_up(up);
    }
    let signal = signals::shutdown().context("installing signal handlers")?;
    // On a signal, a leader hands leadership over first, then the proxy stops accepting
    // and drains while the election keeps following the new leader (writes held here are
    // sent on to it); the election stops last.
    let handing_over = raft.clone();
    let shutdown = async move {
        tokio::select! {
            _ = signal => {}
            _ = stop => tracing::info!("stop requested; draining"),
        }
        if let Some(role) = handing_over {
            role.hand_over().await;
        }
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        addr = %bound,
        node = %cfg.proxy.node_name,
        target = %cfg.proxy.target,
        role_source = ?cfg.role.source,
        primary = %*tx.borrow(),
        "litefs-proxy listening"
    );
    litefs_proxy::serve(listener, proxy, shutdown)
        .await
        .context("serving")?;
    if let Some(litefs) = handing_off {
        // The new leader's LiteFS asks ours for the lease; ours renews through our lease
        // endpoint once more before it hands over, so the endpoint stays up until then.
        if *litefs.borrow() == Primary::Local {
            let done = promote::wait_handed_off(litefs, promote::WINDOW).await;
            tracing::info!(done, "waited for LiteFS to hand its lease over");
        }
    }
    drop(promoter);
    if let Some(role) = raft {
        role.shutdown().await;
    }
    tracing::info!("drained; bye");
    drop(tx);
    Ok(ExitCode::SUCCESS)
}

/// Stops a background task when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
