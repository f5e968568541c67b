//! The lease keeper process (`litefs-proxy lease-keeper`, started by `run`): serves the
//! node's `lease_addr` for LiteFS and forwards every request to the election
//! (`litefs_election::lease::keeper`), so that the endpoint outlives a crash of `run`. Then
//! LiteFS can still hand its lease to the new leader's LiteFS, which needs one last renewal
//! through this node's endpoint, and the primary moves in well under a second instead of
//! when the old session lapses.
//!
//! `run` passes the election config as one JSON line on the keeper's stdin and keeps that
//! pipe open. The keeper says `ready` (or `error: …`) on stdout once it listens. When `run`
//! stops cleanly it writes `bye` and the keeper exits at once; when the pipe closes without
//! it (`run` crashed or was killed), the keeper stays up for [`ORPHAN_GRACE`], forwarding to
//! the other voters while the local election is gone, and reporting the node's LiteFS
//! position (`<mount>/<db>-pos`, re-read every [`ORPHAN_POSITION_POLL`] by a thread of its
//! own, which a frozen mount blocks alone) to the leader in the proxy's stead. The listener
//! has `SO_REUSEPORT`, so a restarted `run`'s keeper binds beside an orphan of the same node
//! (they forward alike).

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};

/// How long a keeper whose `run` is gone keeps the endpoint up: longer than any handoff or
/// lease lapse takes, short enough not to linger.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How often an orphaned keeper re-reads its node's position file.
pub const ORPHAN_POSITION_POLL: Duration = Duration::from_millis(5);
/// How long `run` waits for the keeper to listen.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// What `run` tells the keeper.
#[derive(Serialize, Deserialize)]
struct Spec {
    election: litefs_election::Config,
    proxy_port: u16,
    /// `<mount>/<db>-pos`: the position reported while `run` is gone.
    #[serde(default)]
    position_file: Option<PathBuf>,
}

/// `run`'s side: the keeper process and the pipe that says `run` is alive.
pub struct KeeperHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Starts the keeper for `election` (`lease_addr` set) and waits until it listens;
/// `position_file`: the node's `<mount>/<db>-pos`.
pub async fn start(
    election: &litefs_election::Config,
    proxy_port: u16,
    position_file: Option<PathBuf>,
) -> anyhow::Result<KeeperHandle> {
    let exe = std::env::current_exe().context("locating the litefs-proxy binary")?;
    let mut child = Command::new(exe)
        .arg("lease-keeper")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the lease keeper")?;
    let mut stdin = child.stdin.take().context("the keeper's stdin")?;
    let stdout = child.stdout.take().context("the keeper's stdout")?;
    let spec = serde_json::to_string(&Spec {
        election: election.clone(),
        proxy_port,
        position_file,
    })?;
    writeln!(stdin, "{spec}").context("configuring the lease keeper")?;
    let mut handle = KeeperHandle {
        child,
        stdin: Some(stdin),
    };
    let line = tokio::time::timeout(
        READY_WITHIN,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        }),
    )
    .await;
    let line = match line {
        Ok(Ok(Ok(l))) => l,
        _ => {
            let _ = handle.child.kill();
            anyhow::bail!("the lease keeper did not start within {READY_WITHIN:?}");
        }
    };
    match line.trim() {
        "ready" => Ok(handle),
        other => {
            let _ = handle.child.wait();
            handle.stdin = None;
            anyhow::bail!(
                "lease keeper: {}",
                other.strip_prefix("error: ").unwrap_or(other)
            )
        }
    }
}

impl KeeperHandle {
    /// The keeper's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the keeper to stop (`run` is done) and waits, briefly, for it to exit.
    pub async fn stop(mut self) {
        self.say_bye();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn say_bye(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"bye\n");
        }
    }
}

impl Drop for KeeperHandle {
    /// `run` returning on any path says bye; only a crash leaves the keeper orphaned.
    fn drop(&mut self) {
        self.say_bye();
    }
}

/// The `lease-keeper` subcommand.
pub fn main() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        crate::say("error: no configuration on stdin\n");
        return ExitCode::FAILURE;
    }
    let spec: Spec = match serde_json::from_str(&line) {
        Ok(s) => s,
        Err(e) => {
            crate::say(&format!("error: bad configuration on stdin: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::init_tracing(None) {
        crate::say(&format!("error: logging: {e}\n"));
        return ExitCode::FAILURE;
    }
    let Some(addr) = spec.election.lease_addr else {
        crate::say("error: election.lease_addr is not set\n");
        return ExitCode::FAILURE;
    };
    crate::block_on(async move {
        let listener = match bind(addr, &spec.election.node_id).await {
            Ok(l) => l,
            Err(e) => {
                crate::say(&format!("error: {e:#}\n"));
                return ExitCode::FAILURE;
            }
        };
        crate::say("ready\n");
        tracing::info!(lease_addr = %addr, node = %spec.election.node_id, "lease keeper listening");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The rest of stdin: `bye`, or the end of it (run is gone).
        std::thread::spawn(move || {
            let mut bye = false;
            let mut l = String::new();
            while std::io::stdin().read_line(&mut l).is_ok_and(|n| n > 0) {
                if l.trim() == "bye" {
                    bye = true;
                    break;
                }
                l.clear();
            }
            let _ = tx.send(bye);
        });
        let signal = match crate::signals::shutdown() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "installing signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let (election, port, position_file) = (
            spec.election.clone(),
            spec.proxy_port,
            spec.position_file.clone(),
        );
        let stop = async move {
            tokio::select! {
                _ = signal => tracing::info!("lease keeper: signal; stopping"),
                bye = rx => {
                    if bye.unwrap_or(false) {
                        tracing::info!("lease keeper: litefs-proxy stopped; stopping");
                    } else {
                        tracing::warn!(grace = ?ORPHAN_GRACE, "lease keeper: litefs-proxy is gone; keeping the lease endpoint up (forwarding to the other voters, reporting the position) for a while");
                        let report = async {
                            match position_file {
                                Some(f) => {
                                    let rx = watch_position(f);
                                    litefs_election::lease::keeper::report_position(&election, port, rx).await;
                                }
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            _ = tokio::time::sleep(ORPHAN_GRACE) => {}
                            _ = report => {}
                        }
                    }
                }
            }
        };
        litefs_election::lease::keeper::serve(&spec.election, spec.proxy_port, listener, stop)
            .await;
        ExitCode::SUCCESS
    })
}

/// Follows `file` (`<db>-pos`) from a thread of its own, re-read every
/// [`ORPHAN_POSITION_POLL`]; unreadable or malformed reads keep the last value.
fn watch_position(
    file: PathBuf,
) -> tokio::sync::watch::Receiver<Option<litefs_election::Position>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            let read = std::fs::read(&file)
                .ok()
                .and_then(|b| litefs_proxy::Position::parse(&b).ok());
            if let Some(p) = read {
                tx.send_if_modified(|cur| {
                    let p = Some(litefs_election::Position {
                        txid: p.txid.0,
                        checksum: p.post_apply_checksum,
                    });
                    let changed = *cur != p;
                    *cur = p;
                    changed
                });
            }
            std::thread::sleep(ORPHAN_POSITION_POLL);
        }
    });
    rx
}

/// Binds `addr` with `SO_REUSEPORT`, unless something there already serves another node
/// (two nodes' LiteFS must not share an endpoint).
async fn bind(addr: SocketAddr, node: &str) -> anyhow::Result<TcpListener> {
    if let Some(other) = who_serves(addr).await {
        if other != node {
            anyhow::bail!("lease_addr {addr} is served by node {other:?}'s lease keeper");
        }
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding lease_addr {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on lease_addr {addr}"))
}

/// The node a keeper already on `addr` serves, if one answers.
async fn who_serves(addr: SocketAddr) -> Option<String> {
    let client = crate::peer_view::StatusClient::new(Duration::from_millis(300));
    let v = client
        .get_json(
            &format!("http://{addr}"),
            litefs_election::lease::keeper::PATH_WHO,
        )
        .await
        .ok()?;
    v["node"].as_str().map(str::to_owned)
}
