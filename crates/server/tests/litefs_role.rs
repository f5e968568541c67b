//! The `litefs` role source against litefs-sim's LiteFS API: live Local/Remote/Unknown
//! transitions from `/info` + `/events`, and the `.primary` fallback while the API is down.

use std::{net::SocketAddr, path::Path, time::Duration};

use litefs_proxy::Primary;
use litefs_proxy_server::role::litefs_source::LitefsSource;
use litefs_sim::{serve_api, Node, NodeConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};

const DEADLINE: Duration = Duration::from_secs(10);
const TEMPLATE: &str = "http://{hostname}:8080";

fn remote(host: &str) -> Primary {
    Primary::remote(host, &format!("http://{host}:8080")).unwrap()
}

async fn wait_for(rx: &mut watch::Receiver<Primary>, want: Primary, what: &str) {
    let ok = tokio::time::timeout(DEADLINE, rx.wait_for(|p| *p == want))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(ok, "{what}: wanted {want}, still {}", *rx.borrow());
}

struct Api {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Api {
    async fn start(node: &Node, listener: TcpListener) -> Api {
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(serve_api(node.clone(), listener, async {
            let _ = rx.await;
        }));
        Api { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("API shut down")
            .unwrap();
    }
}

fn node(mount: &Path, is_primary: bool, primary: Option<&str>) -> Node {
    Node::new(NodeConfig {
        mount: mount.to_path_buf(),
        db: "db.sqlite3".into(),
        hostname: "node-2".into(),
        is_primary,
        primary_hostname: primary.map(str::to_owned),
    })
}

fn follow(api: SocketAddr, mount: &Path) -> (watch::Receiver<Primary>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Primary::Unknown);
    let source = LitefsSource::new(&format!("http://{api}"), mount, TEMPLATE);
    (rx, tokio::spawn(source.run(tx)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_litefs_live_and_falls_back_to_primary_file() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), false, Some("node-1"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Api::start(&n, listener).await;
    let (mut rx, task) = follow(addr, dir.path());

    // /info + init: a replica connected to node-1.
    wait_for(&mut rx, remote("node-1"), "initial").await;
    // primaryChange events apply live.
    n.set_role(true, None);
    wait_for(&mut rx, Primary::Local, "promoted").await;
    n.set_role(false, None);
    wait_for(&mut rx, Primary::Unknown, "disconnected replica").await;
    n.set_role(false, Some("node-3"));
    wait_for(&mut rx, remote("node-3"), "connected to node-3").await;

    // The API goes down: `.primary` decides.
    api.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the API must be unreachable now"
    );
    n.set_role(false, Some("node-4"));
    wait_for(&mut rx, remote("node-4"), ".primary names node-4").await;
    // Absent `.primary` without the API: primary or disconnected, we cannot tell → Unknown.
    n.set_role(true, None);
    wait_for(&mut rx, Primary::Unknown, ".primary absent").await;

    // The API is back (same port): the source reconnects and LiteFS says Local.
    let listener = TcpListener::bind(addr).await.unwrap();
    let api = Api::start(&n, listener).await;
    wait_for(&mut rx, Primary::Local, "reconnected").await;
    n.set_role(false, Some("node-1"));
    wait_for(&mut rx, remote("node-1"), "event after reconnect").await;

    task.abort();
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_never_up_follows_the_primary_file() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), false, Some("node-7"));
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (mut rx, task) = follow(addr, dir.path());
    wait_for(&mut rx, remote("node-7"), "from .primary").await;
    n.set_role(false, None);
    wait_for(&mut rx, Primary::Unknown, ".primary removed").await;
    n.set_role(false, Some("node-8"));
    wait_for(&mut rx, remote("node-8"), ".primary rewritten").await;
    task.abort();
}
