//! Accepting connections: HTTP/1.1 with upgrades, limits on the request head, an idle
//! timeout, and a graceful drain when `shutdown` fires.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{watch, Notify},
    task::JoinSet,
    time::Instant,
};
use tracing::Instrument;

use crate::handler::Proxy;

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for `shutdown_grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = proxy.config().clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn({
        let proxy = proxy.clone();
        let mut stop = stop_rx.clone();
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
    let _ = watcher.await;
    Ok(())
}

async fn connection<S>(
    builder: http1::Builder,
    proxy: Proxy,
    stream: S,
    peer: SocketAddr,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(IdleIo {
        inner: stream,
        activity: activity.clone(),
    });
    let client = crate::headers::client_value(peer.ip());
    let busy = activity.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let busy = busy.clone();
        // A shared-bytes clone of the value formatted once for the connection.
        let client = client.clone();
        async move {
            // The proxy's own waiting (stalled read, held write, slow app) is not idleness.
            let _handling = Busy::enter(&busy);
            Ok::<_, std::convert::Infallible>(proxy.handle(req, &client).await)
        }
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle(idle_timeout) => {
                tracing::debug!("closing idle connection");
                return;
            }
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened, and how many of
/// its requests the proxy is handling (their response head not yet sent).
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
    /// Wakes the idle timer when the last request being handled finishes.
    done: Notify,
}

/// Marks a request as being handled for as long as it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            done: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout` while no request was being handled.
    async fn idle(&self, timeout: Duration) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.busy.load(Ordering::Acquire) > 0 {
                done.await;
                continue;
            }
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The client socket, recording activity on every successful read or write.
struct IdleIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Primary, ProxyConfig};
    use http_body_util::{BodyExt, Full};

    /// A client connection to `proxy` over an in-memory pipe, so time can be paused.
    async fn client(proxy: Proxy) -> hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new());
        tokio::spawn(async move {
            let _keep = _stop_tx;
            connection(
                b,
                proxy,
                server_io,
                ([127, 0, 0, 1], 1).into(),
                Duration::from_secs(3600),
                stop_rx,
            )
            .await
        });
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn post(path: &str, hop: Option<&str>) -> http::Request<Full<bytes::Bytes>> {
        let mut b = http::Request::post(path).header("host", "x");
        if let Some(h) = hop {
            b = b
                .header("litefs-proxy-hop", h)
                .header("litefs-proxy-from", "elsewhere");
        }
        b.body(Full::new(bytes::Bytes::from_static(b"w"))).unwrap()
    }

    fn proxy(primary: Primary) -> (Proxy, watch::Sender<Primary>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig {
            mount: dir.path().to_path_buf(),
            primary_redirect_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        let (tx, rx) = watch::channel(primary);
        (Proxy::new(cfg, rx).unwrap(), tx, dir)
    }

    /// Rule 5 under paused time: a write with no primary is held for exactly
    /// `primary_redirect_timeout`, counted while held, then answered 503 + Retry-After.
    #[tokio::test(start_paused = true)]
    async fn write_without_primary_is_held_exactly_the_redirect_timeout() {
        let (proxy, _tx, _dir) = proxy(Primary::Unknown);
        let mut send = client(proxy.clone()).await;
        let start = tokio::time::Instant::now();
        let resp = tokio::spawn(send.send_request(post("/w", None)));
        tokio::time::sleep(Duration::from_millis(4999)).await;
        assert_eq!(proxy.held_requests(), 1);
        assert!(!resp.is_finished());
        let resp = resp.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(proxy.held_requests(), 0);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"litefs-proxy: no primary available"));
    }

    /// A write that has already been forwarded twice reaching a replica is held, never
    /// sent on, for the same bounded time.
    #[tokio::test(start_paused = true)]
    async fn forwarded_write_on_a_replica_is_held_not_bounced() {
        let (proxy, _tx, _dir) = proxy(Primary::remote("elsewhere", "http://127.0.0.1:9").unwrap());
        let mut send = client(proxy.clone()).await;
        let start = tokio::time::Instant::now();
        let resp = send.send_request(post("/w", Some("2"))).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
