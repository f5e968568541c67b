//! One litefs-proxy node on real sockets: a LiteFS stand-in mount, the recording app,
//! and the proxy served in-process through `litefs_proxy::serve`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use litefs_proxy::{trust::PeerAuth, Primary, Proxy, ProxyConfig};
use tokio::{net::TcpListener, sync::watch};

use crate::app::TestApp;

/// A read sent by [`ProxyNode::waiting_read`], still waiting.
pub type ReadHandle = tokio::task::JoinHandle<anyhow::Result<crate::client::Answer>>;

pub struct ProxyNode {
    pub name: String,
    pub addr: SocketAddr,
    pub sim: litefs_sim::Node,
    pub app: TestApp,
    pub primary: watch::Sender<Primary>,
    pub proxy: Proxy,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Settings short enough for tests; each test adjusts what it exercises.
pub fn test_config() -> ProxyConfig {
    ProxyConfig {
        primary_redirect_timeout: Duration::from_secs(3),
        read_wait_timeout: Duration::from_secs(3),
        target_connect_retry: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        ..ProxyConfig::default()
    }
}

impl ProxyNode {
    /// A node whose app commits to its own sim on every write.
    pub async fn start(name: &str, primary: Primary, cfg: ProxyConfig) -> ProxyNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::start_on(listener, name, primary, cfg).await
    }

    pub async fn start_on(
        listener: TcpListener,
        name: &str,
        primary: Primary,
        cfg: ProxyConfig,
    ) -> ProxyNode {
        Self::start_with(listener, name, primary, cfg, PeerAuth::default()).await
    }

    /// [`ProxyNode::start_on`] with `peers` deciding whose hop headers are believed.
    pub async fn start_with(
        listener: TcpListener,
        name: &str,
        primary: Primary,
        cfg: ProxyConfig,
        peers: PeerAuth,
    ) -> ProxyNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount: PathBuf = dir.path().join("litefs");
        let sim = litefs_sim::Node::new(litefs_sim::NodeConfig {
            mount: mount.clone(),
            db: cfg.db.clone(),
            hostname: name.to_owned(),
            is_primary: primary == Primary::Local,
            primary_hostname: None,
        });
        let app = TestApp::start(name, Some(sim.clone())).await;
        let addr = listener.local_addr().expect("addr");
        let cfg = ProxyConfig {
            addr: addr.to_string(),
            target: app.addr.to_string(),
            mount,
            node_name: name.to_owned(),
            ..cfg
        };
        let (tx, rx) = watch::channel(primary);
        let proxy = Proxy::new(cfg, rx).expect("valid config").with_peers(peers);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn({
            let proxy = proxy.clone();
            async move {
                let _ = litefs_proxy::serve(listener, proxy, async {
                    let _ = stop_rx.await;
                })
                .await;
            }
        });
        ProxyNode {
            name: name.to_owned(),
            addr,
            sim,
            app,
            primary: tx,
            proxy,
            stop: Some(stop_tx),
            served,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `Primary::Remote` pointing at this node.
    pub fn as_remote(&self) -> Primary {
        Primary::remote(&self.name, &self.url()).expect("url")
    }

    /// Sends a GET of `/items` with the cookie `litefs-txid=<txid>` and returns once the
    /// proxy reports it waiting for replication.
    pub async fn waiting_read(&self, txid: u64) -> ReadHandle {
        self.waiting_read_with("cookie", format!("litefs-txid={txid:016x}"))
            .await
    }

    /// Sends a GET of `/items` with header `name: value` and returns once the proxy reports
    /// one more read waiting for replication (panics if not within 2 s).
    pub async fn waiting_read_with(&self, name: &'static str, value: String) -> ReadHandle {
        let addr = self.addr;
        let before = self.proxy.waiting_reads();
        let read = tokio::spawn(async move {
            crate::client::get(addr, "/items", &[(name, value.as_str())]).await
        });
        let proxy = self.proxy.clone();
        assert!(
            crate::eventually(Duration::from_secs(2), || proxy.waiting_reads() > before).await,
            "the read is waiting"
        );
        read
    }

    /// Fires the proxy's shutdown (graceful drain).
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for ProxyNode {
    fn drop(&mut self) {
        self.served.abort();
    }
}

/// A primary `node-a` and a replica `node-b` that forwards to it, both with `cfg`.
pub async fn pair(cfg: ProxyConfig) -> (ProxyNode, ProxyNode) {
    pair_with(cfg, PeerAuth::default()).await
}

/// [`pair`] with `peers` deciding, on both, whose hop headers are believed.
pub async fn pair_with(cfg: ProxyConfig, peers: PeerAuth) -> (ProxyNode, ProxyNode) {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let a = ProxyNode::start_with(
        bind().await.expect("bind proxy"),
        "node-a",
        Primary::Local,
        cfg.clone(),
        peers.clone(),
    )
    .await;
    let b = ProxyNode::start_with(
        bind().await.expect("bind proxy"),
        "node-b",
        a.as_remote(),
        cfg,
        peers,
    )
    .await;
    (a, b)
}
