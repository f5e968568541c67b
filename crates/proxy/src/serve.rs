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
/// in-flight requests finish for `shutdown_grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = proxy.config().clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    // The position watcher runs through the drain: requests still being served read it,
    // and the election reports it to the new leader (a write there may be waiting for this
    // node, now its replica, to hold it).
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
                    let _ = stream.set_nodelay(true);
                    let conn = connection(builder.clone(), proxy.clone(), stream, peer, cfg.idle_timeout, stop_rx.clone());
                    conns.spawn(conn.instrument(tracing::info_span!("conn", client.addr = %peer)));
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
        let _ = stream.set_nodelay(true);
        let conn = connection(
            builder.clone(),
            proxy.clone(),
            stream,
            peer,
            cfg.idle_timeout,
            stop_rx.clone(),
        );
        conns.spawn(conn.instrument(tracing::info_span!("conn", client.addr = %peer)));
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
    let _ = watcher_stop_tx.send(true);
    let _ = watcher.await;
    Ok(())
}
