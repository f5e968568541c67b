//! Accepting connections: HTTP/1.1 with upgrades, limits on the request head, and a
//! graceful drain when `shutdown` fires. Each connection's life is in [`crate::connection`].

use std::{future::Future, io, time::Duration};

use futures_util::FutureExt as _;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::Instrument;

use crate::{connection::connection, handler::Proxy};

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for `shutdown_grace`, and returns. Connections are served on
/// the caller's runtime (see [`serve_on_cores`] for a runtime per core).
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    with_watcher(&proxy, accept(listener, proxy.clone(), shutdown, 0)).await;
    Ok(())
}

/// [`serve`] on `workers` threads, each running a current-thread runtime of its own with
/// its own listener and its own pool of app connections, so a request, its client
/// connection and its app connection are served by one thread with no cross-thread
/// wake-up (the work-stealing runtime woke another worker for a share of requests, and
/// spent twice nginx's CPU per request). A `listener` made by [`bind`] is joined by
/// `SO_REUSEPORT` siblings (the kernel spreads connections over them); any other shares
/// its socket. `workers` ≤ 1 is [`serve`].
pub async fn serve_on_cores(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    workers: usize,
) -> io::Result<()> {
    if workers <= 1 {
        return serve(listener, proxy, shutdown).await;
    }
    let first = listener.into_std()?;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 1..workers {
        listeners.push(sibling(&first)?);
    }
    listeners.push(first);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut done = Vec::with_capacity(workers);
    let mut started = Ok(());
    for (i, l) in listeners.into_iter().enumerate() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let proxy = proxy.with_own_pool();
        let mut stop = stop_rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("litefs-proxy-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, worker = i, "cannot start a runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            let stop = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            accept(l, proxy, stop, i).await
                        }
                        Err(e) => tracing::error!(error = %e, worker = i, "cannot listen"),
                    }
                });
                drop(done_tx);
            });
        match spawned {
            Ok(_) => done.push(done_rx),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    with_watcher(&proxy, async {
        if started.is_ok() {
            shutdown.await;
        }
        let _ = stop_tx.send(true);
        for d in done {
            let _ = d.await;
        }
    })
    .await;
    started
}

/// A TCP listener on `addr` that [`serve_on_cores`] can join with `SO_REUSEPORT`
/// siblings, one per runtime. A port something else listens on fails here as a plain bind
/// does (`AddrInUse`): with `SO_REUSEPORT` alone it would join another process's group
/// (same user, e.g. a second proxy started on the same port) and share its connections.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    drop(std::net::TcpListener::bind(addr)?);
    TcpListener::from_std(reuse_port_listener(addr)?)
}

fn reuse_port_listener(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// As tokio's `TcpListener::bind`.
const LISTEN_BACKLOG: i32 = 1024;

/// Another listener for a runtime of its own: an `SO_REUSEPORT` sibling of `first` when
/// `first` allows it, else `first`'s socket shared.
fn sibling(first: &std::net::TcpListener) -> io::Result<std::net::TcpListener> {
    if socket2::SockRef::from(first).reuse_port().unwrap_or(false) {
        reuse_port_listener(first.local_addr()?)
    } else {
        first.try_clone()
    }
}

/// Runs `serving` with the position watcher, which runs through the drain: requests still
/// being served read it, and the election reports it to the new leader (a write there may
/// be waiting for this node, now its replica, to hold it).
async fn with_watcher(proxy: &Proxy, serving: impl Future<Output = ()>) {
    let (watcher_stop_tx, watcher_stop_rx) = watch::channel(false);
    let watcher = tokio::spawn({
        let proxy = proxy.clone();
        let mut stop = watcher_stop_rx;
        async move {
            proxy
                .run_watcher(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }
    });
    serving.await;
    let _ = watcher_stop_tx.send(true);
    let _ = watcher.await;
}

/// Accepts connections on `listener` and serves them on this runtime until `shutdown`,
/// then drains them; `worker` names this runtime in the metrics.
async fn accept(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    worker: usize,
) {
    let cfg = proxy.config().clone();
    let accepted_here = proxy.metrics().accepted_by(worker);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_header_size(cfg.max_header_size)
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accepted_here.inc();
                    spawn_connection(&mut conns, &builder, &proxy, stream, peer, &stop_rx);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Connections whose handshake is done are in the accept queue; closing the listener
    // would reset them, requests sent included. They are taken and answered first.
    let mut queued = 0usize;
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        accepted_here.inc();
        spawn_connection(&mut conns, &builder, &proxy, stream, peer, &stop_rx);
        queued += 1;
    }
    if queued > 0 {
        tracing::debug!(queued, "took the connections queued at shutdown");
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "grace period over; closing remaining connections"
        );
        conns.shutdown().await;
    }
}

fn spawn_connection(
    conns: &mut JoinSet<()>,
    builder: &http1::Builder,
    proxy: &Proxy,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    stop: &watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let idle = proxy.config().idle_timeout;
    let conn = connection(
        builder.clone(),
        proxy.clone(),
        stream,
        peer,
        idle,
        stop.clone(),
    );
    // At `debug`: an `info` span is entered on every poll of the connection, and kept
    // (with its formatted fields) for as long as the connection lives, parked included.
    conns.spawn(conn.instrument(tracing::debug_span!("conn", client.addr = %peer)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Primary, ProxyConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn proxy() -> (Proxy, watch::Sender<Primary>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig {
            mount: dir.path().to_path_buf(),
            ..ProxyConfig::default()
        };
        let (tx, rx) = watch::channel(Primary::Local);
        (Proxy::new(cfg, rx).unwrap(), tx, dir)
    }

    /// One `GET /litefs/health` on a new connection; its status line.
    async fn health(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /litefs/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Serves 40 connections with `workers` runtimes on `listener`, stops, and returns how
    /// many connections each worker accepted; nothing listens afterwards.
    async fn serve_forty(listener: TcpListener, workers: usize) -> Vec<u64> {
        let (proxy, _tx, _dir) = proxy();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let served = tokio::spawn(serve_on_cores(listener, proxy.clone(), stop, workers));
        for _ in 0..40 {
            assert_eq!(health(addr).await, "HTTP/1.1 200 OK");
        }
        stop_tx.send(()).unwrap();
        served.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after the drain"
        );
        (0..workers)
            .map(|w| proxy.metrics().accepted_by(w).get())
            .collect()
    }

    /// A listener made by `bind` gets an `SO_REUSEPORT` sibling per extra runtime; the
    /// kernel spreads connections over all of them (by their ports: 40 connections all on
    /// one of two listeners has odds of 2^-39) and every runtime serves its share.
    #[tokio::test]
    async fn every_core_runtime_accepts_and_serves_on_its_own_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let by_worker = serve_forty(listener, 2).await;
        assert_eq!(by_worker.iter().sum::<u64>(), 40);
        assert!(by_worker.iter().all(|&n| n > 0), "{by_worker:?}");
    }

    /// `bind` refuses a port that is taken, by a listener of its own kind too.
    #[tokio::test]
    async fn bind_refuses_a_port_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let again = bind(addr).map(|_| ()).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = bind(plain.local_addr().unwrap()).map(|_| ()).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
    }

    /// A listener bound elsewhere (no `SO_REUSEPORT`) is shared by the runtimes.
    #[tokio::test]
    async fn core_runtimes_share_a_plain_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let by_worker = serve_forty(listener, 2).await;
        assert_eq!(by_worker.iter().sum::<u64>(), 40);
    }
}
