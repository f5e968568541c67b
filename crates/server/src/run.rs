//! `litefs-proxy run`: start the role source, bind, serve until a signal, drain.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use litefs_proxy::{
    trust::{Cidrs, PeerAuth},
    Primary, Proxy,
};
use tokio::sync::watch;

use crate::{
    config::Config,
    lease_keeper,
    role::{
        confirm,
        litefs_source::LitefsSource,
        promote,
        raft_source::{self, ClusterStatus, RaftRole},
        static_source, RoleSource,
    },
    signals, EXIT_CONFIG,
};

/// How long a planned step-down waits for the writes already at the app to be answered.
const QUIESCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

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
    // With `election.lease_keeper`: the process serving `lease_addr` (told to stop last).
    let mut keeper = None;
    // With Raft: every peer's status, for `/litefs/status` and `cluster status`.
    let mut peer_view = None;
    let mut litefs_view = None;
    // Where peer proxies may forward from, when hop headers are not signed.
    let mut peer_hosts: Vec<String> = Vec::new();
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
            let resolved = election.resolve_peers(addr.port());
            for p in &resolved {
                peer_hosts.push(p.raft.clone());
                if let Ok(uri) = p.proxy.parse::<http::Uri>() {
                    if let Some(a) = uri.authority() {
                        peer_hosts.push(format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)));
                    }
                }
            }
            let peers: Vec<(String, String)> =
                resolved.into_iter().map(|p| (p.id, p.proxy)).collect();
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
            if election.lease_addr.is_some() && election.lease_keeper {
                let pos_file = cfg.proxy.mount.join(format!("{}-pos", cfg.proxy.db));
                let k = lease_keeper::start(&election, addr.port(), Some(pos_file)).await?;
                tracing::info!(pid = k.pid(), "lease keeper started");
                keeper = Some(k);
            }
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
    proxy = proxy.with_peers(peer_auth(&cfg, &peer_hosts).await);
    let signal = signals::shutdown().context("installing signal handlers")?;
    // On a signal, a leader hands leadership over first, then the proxy stops accepting
    // and drains while the election keeps following the new leader (writes held here are
    // sent on to it); the election stops last.
    let handing_over = raft.clone();
    let writes = proxy.writes_in_flight();
    if let Some(role) = &raft {
        // A handover to a voter of higher priority waits for them too.
        let writes = writes.clone();
        role.set_quiesce(std::sync::Arc::new(move || {
            let writes = writes.clone();
            Box::pin(async move {
                let _ = writes.drained(QUIESCE_WITHIN).await;
            })
        }));
    }
    let shutdown = async move {
        tokio::select! {
            _ = signal => {}
            _ = stop => tracing::info!("stop requested; draining"),
        }
        if let Some(role) = handing_over {
            // Writes already at the app (and waiting for their replicas) are answered
            // before the followers' positions are probed, so the successor holds them.
            role.hand_over_after(async move {
                if !writes.drained(QUIESCE_WITHIN).await {
                    tracing::warn!(
                        writes = writes.count(),
                        within = ?QUIESCE_WITHIN,
                        "handing over with writes still in flight at the app"
                    );
                }
            })
            .await;
        }
    };
    let listener = litefs_proxy::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        addr = %bound,
        node = %cfg.proxy.node_name,
        target = %cfg.proxy.target,
        role_source = ?cfg.role.source,
        primary = %*tx.borrow(),
        "litefs-proxy listening"
    );
    // A runtime per core for the client connections (see `serve_on_cores`); the election,
    // the role source and the position watcher stay on this one.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    litefs_proxy::serve_on_cores(listener, proxy, shutdown, workers)
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
    if let Some(k) = keeper {
        k.stop().await;
    }
    tracing::info!("drained; bye");
    drop(tx);
    Ok(ExitCode::SUCCESS)
}

/// Who the peer proxies are, for the hop header: with `election.cluster_secret` (whatever
/// the role source), signed hop headers only; without, loopback and the addresses the peer
/// table's hosts resolve to now (a name that later moves to another address is not
/// followed: set the secret).
async fn peer_auth(cfg: &Config, peer_hosts: &[String]) -> PeerAuth {
    let secret = cfg
        .election
        .as_ref()
        .and_then(|e| e.get("cluster_secret"))
        .and_then(|v| v.as_str());
    if secret.is_some() {
        return PeerAuth::new(secret, Cidrs::default());
    }
    let mut addrs = Vec::new();
    for host in peer_hosts {
        match tokio::net::lookup_host(host.as_str()).await {
            Ok(found) => addrs.extend(found.map(|a| a.ip())),
            Err(e) => tracing::warn!(
                peer = %host,
                error = %e,
                "cannot resolve a peer: its forwards' hop headers will be ignored (set election.cluster_secret to sign them)"
            ),
        }
    }
    PeerAuth::new(None, Cidrs::loopback().with_addrs(addrs))
}

/// Stops a background task when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use litefs_proxy::trust::Hop;

    use super::*;

    fn hop(value: &str) -> http::request::Parts {
        let req = http::Request::post("/items").header("litefs-proxy-hop", value);
        req.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn peers_sign_with_the_cluster_secret_or_are_known_by_address() {
        let ip = |s: &str| s.parse().unwrap();
        let mut cfg = Config::default();
        let hosts = ["10.1.2.3:4321".to_owned(), "10.1.2.4:8080".to_owned()];
        let unsigned = peer_auth(&cfg, &hosts).await;
        for peer in ["127.0.0.1", "10.1.2.3", "10.1.2.4"] {
            assert_eq!(unsigned.verify(ip(peer), &hop("2")), Hop::Peer(2), "{peer}");
        }
        assert_eq!(unsigned.verify(ip("10.1.2.5"), &hop("2")), Hop::Untrusted);

        let mut election = toml::Table::new();
        election.insert("cluster_secret".into(), "0123456789abcdef0123".into());
        cfg.election = Some(election);
        let signed = peer_auth(&cfg, &hosts).await;
        assert_eq!(signed.verify(ip("127.0.0.1"), &hop("2")), Hop::Untrusted);
        let head = hop("");
        let value = signed.hop_value(2, &head);
        let mut sent = head;
        sent.headers.insert("litefs-proxy-hop", value);
        assert_eq!(signed.verify(ip("192.0.2.1"), &sent), Hop::Peer(2));
    }
}
