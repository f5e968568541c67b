//! The election's own HTTP listeners (Raft RPC, the lease endpoint): a capped accept loop of
//! hyper HTTP/1 connections, each watched by [`conn_timer`]: a long idle keep-alive, a short
//! deadline for a request head once its first byte arrives. On shutdown every open connection
//! is dropped at once (a stopped node must fall silent, not linger on keep-alive connections).

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use crate::conn_timer::{Activity, Expired, Watched};

/// How long the connection may wait for each stage of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// An idle keep-alive connection (no byte of a next request yet) is closed after this.
    /// Longer than any client keeps its idle connections (Go's http.DefaultClient, which
    /// LiteFS uses: 90 s), so the client always closes first and never sends a request on a
    /// connection the server is closing (LiteFS logged `EOF` on renews with 5 s here).
    pub idle: Duration,
    /// Once the first byte of a request arrived, the whole head must follow within this.
    pub head: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: IDLE_TIMEOUT,
            head: HEADER_TIMEOUT,
        }
    }
}

/// See [`Limits::idle`].
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// See [`Limits::head`].
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send a request body within this (handlers apply it while collecting).
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
    let limits = Limits::default();
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
            let activity = Activity::new();
            let svc = {
                let activity = activity.clone();
                service_fn(move |req| {
                    let busy = activity.busy();
                    let fut = handle(state.clone(), req);
                    async move {
                        let resp = fut.await;
                        drop(busy);
                        Ok::<_, Infallible>(resp)
                    }
                })
            };
            let conn = http1::Builder::new()
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(Watched::new(stream, activity.clone())), svc);
            tokio::select! {
                res = conn => if let Err(e) = res {
                    tracing::debug!(client.addr = %peer, listener = name, error = %e, "connection ended with error");
                },
                why = activity.expired(limits) => match why {
                    Expired::Idle => tracing::debug!(client.addr = %peer, listener = name, "idle keep-alive connection closed"),
                    Expired::Head => tracing::debug!(client.addr = %peer, listener = name, "request head too slow, connection closed"),
                },
            }
        });
    }
    conns.abort_all();
}

#[cfg(test)]
mod tests {
    //! Under paused time over real loopback sockets: the clock moves only when every task
    //! waits, so "idle for N s" is exact and costs no wall time.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const RENEW: &[u8] =
        b"PUT /v1/session/renew/s1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";

    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            "test",
            l,
            Arc::new(()),
            |_, _req| async { Response::new(Full::new(Bytes::from_static(b"[]"))) },
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx)
    }

    /// One answer on a kept-alive connection: its status line, or None if the server closed.
    async fn exchange(s: &mut TcpStream, req: &[u8]) -> Option<String> {
        if s.write_all(req).await.is_err() {
            return None;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            // Body "[]" is the last thing of the answer.
            if buf.ends_with(b"\r\n\r\n[]") {
                let text = String::from_utf8_lossy(&buf).into_owned();
                return text.lines().next().map(str::to_string);
            }
        }
    }

    async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(s.read(&mut b).await, Ok(0) | Err(_))
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_idle_longer_than_a_renew_interval_still_serves() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            exchange(&mut s, RENEW).await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        // LiteFS renews every TTL/2 (5 s at TTL 10 s) on the same connection; the old 5 s
        // header timeout doubled as the idle limit and closed it just before.
        for idle in [5, 30, 89] {
            tokio::time::sleep(Duration::from_secs(idle)).await;
            assert_eq!(
                exchange(&mut s, RENEW).await.as_deref(),
                Some("HTTP/1.1 200 OK"),
                "after {idle} s idle"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_limit() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        assert!(exchange(&mut s, RENEW).await.is_some());
        let start = tokio::time::Instant::now();
        assert!(closed_by_server(&mut s).await);
        assert_eq!(start.elapsed(), IDLE_TIMEOUT);
        // A connection that never sent a byte is idle too.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let start = tokio::time::Instant::now();
        assert!(closed_by_server(&mut s).await);
        assert_eq!(start.elapsed(), IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_within_the_head_limit() {
        let (addr, _stop) = server().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        assert!(exchange(&mut s, RENEW).await.is_some());
        tokio::time::sleep(Duration::from_secs(60)).await;
        // A trickle: the first bytes of a head, then nothing.
        s.write_all(&RENEW[..10]).await.expect("write");
        let start = tokio::time::Instant::now();
        assert!(closed_by_server(&mut s).await);
        assert_eq!(start.elapsed(), HEADER_TIMEOUT);
    }
}
