//! The election's own HTTP listeners (Raft RPC, the lease endpoint): a capped accept loop of
//! hyper HTTP/1 connections with a header-read timeout. On shutdown every open connection is
//! dropped at once (a stopped node must fall silent, not linger on keep-alive connections).

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

/// A client must send a whole request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// ... and its body within this (handlers apply it while collecting).
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// Serves `handle(state, request)` on `listener` until `shutdown` completes. `name` labels
/// the log lines ("raft", "lease").
pub(crate) async fn serve<S, H, F>(
    name: &'static str,
    listener: TcpListener,
    state: Arc<S>,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, listener = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(client.addr = %peer, listener = name, "too many connections, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, handle) = (state.clone(), handle.clone());
        conns.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let fut = handle(state.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let res = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(e) = res {
                tracing::debug!(client.addr = %peer, listener = name, error = %e, "connection ended with error");
            }
        });
    }
    conns.abort_all();
}
