//! One client connection's life: served by hyper, parked while idle between requests
//! (hyper's state dropped), woken by its next byte; closed on idle timeout or drain.

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use crate::{
    activity::{Activity, Busy, IdleIo},
    handler::Proxy,
    metrics::ConnectionGauge,
};

/// A keep-alive connection on which no byte moved and no request was being handled for
/// this long is parked: hyper's state for it (an 8 KiB read buffer, an 8 KiB write buffer
/// and the boxed request future) is dropped, and the connection waits for the client's
/// next byte holding none of it, then gets a fresh hyper connection. Idle clients then
/// cost a few hundred bytes each instead of ~16 KiB.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

pub(crate) async fn connection<S>(
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
    let mut io = IdleIo {
        inner: stream,
        activity: activity.clone(),
        unread: Bytes::new(),
    };
    let client = crate::headers::Client::new(peer.ip());
    let busy = activity.clone();
    let handler = proxy.clone();
    let mut service = service_fn(move |req| {
        let proxy = handler.clone();
        let busy = busy.clone();
        // A shared-bytes clone of the value formatted once for the connection.
        let client = client.clone();
        async move {
            // The proxy's own waiting (stalled read, held write, slow app) is not idleness.
            let _handling = Busy::enter(&busy);
            Ok::<_, std::convert::Infallible>(proxy.handle(req, &client).await)
        }
    });
    let mut gauge = ConnectionGauge::new(proxy.metrics());
    loop {
        let conn = builder.serve_connection(TokioIo::new(io), service);
        // Boxed, so that hyper's connection state is a separate allocation, freed when
        // parked, rather than part of this task for its whole life.
        let serving = Box::pin(serve_until_parked(conn, &activity, idle_timeout, &mut stop));
        let Some(parts) = serving.await else {
            return;
        };
        io = parts.io.into_inner();
        io.unread_first(parts.read_buf);
        service = parts.service;
        gauge.set_parked(true);
        tracing::trace!("connection parked");
        tokio::select! {
            more = io.fill() => match more {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "parked connection failed");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
            _ = activity.idle(idle_timeout) => {
                tracing::debug!("closing idle connection");
                return;
            }
        }
        gauge.set_parked(false);
    }
}

/// Runs hyper on a connection until it ends (`None`) or has been parked: quiet for
/// [`PARK_AFTER`] after at least one exchange, it is shut down gracefully without closing
/// the socket, and the socket comes back with any bytes hyper had read but not parsed.
async fn serve_until_parked<S, F>(
    conn: http1::Connection<TokioIo<IdleIo<S>>, F>,
    activity: &Activity,
    idle_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<http1::Parts<TokioIo<IdleIo<S>>, F>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::ProxyBody> + Unpin,
    F::Future: Send + 'static,
    F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served_before = activity.served.load(Ordering::Relaxed);
    let mut conn = conn.with_upgrades();
    let mut draining = false;
    let mut parking = false;
    // Stopping before the first request was read: hyper would close at once, unanswered,
    // a request the client has already sent; it gets its answer first.
    let mut first_pending = false;
    loop {
        tokio::select! {
            res = &mut conn => {
                activity.keep_socket.store(false, Ordering::Relaxed);
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return None;
                }
                // After an upgrade hyper has handed the socket over: `None`.
                return if parking && !draining { conn.into_parts() } else { None };
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                activity.keep_socket.store(false, Ordering::Relaxed);
                if activity.served.load(Ordering::Relaxed) == 0 {
                    first_pending = true;
                } else {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
            _ = first_request_or_quiet(activity), if first_pending => {
                first_pending = false;
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
            _ = activity.idle(idle_timeout) => {
                tracing::debug!("closing idle connection");
                return None;
            }
            // Before its first exchange hyper would answer the next request with
            // `Connection: close` instead of stopping at once, so a connection is only
            // parked between requests.
            _ = activity.quiet_after_request(served_before, PARK_AFTER), if !parking && !draining => {
                parking = true;
                activity.keep_socket.store(true, Ordering::Relaxed);
                // Idle between requests: hyper stops at once. In the middle of a response
                // body (a quiet stream): it stops after it, adding nothing to the wire.
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
}

/// How long a connection that has sent nothing yet is kept open once the proxy stops.
const UNREAD_GRACE: Duration = Duration::from_millis(250);

/// Resolves once the connection's first request has been answered (its response head
/// sent), or nothing arrived on it for [`UNREAD_GRACE`].
async fn first_request_or_quiet(activity: &Activity) {
    tokio::select! {
        () = activity.quiet_after_request(0, Duration::ZERO) => {}
        () = activity.idle(UNREAD_GRACE) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Primary, ProxyConfig};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioTimer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A raw client connection to `proxy` over an in-memory pipe, so time can be paused,
    /// and the sender that starts the server's drain.
    fn raw_client(proxy: Proxy, idle_timeout: Duration) -> (DuplexStream, watch::Sender<bool>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new());
        let peer = ([127, 0, 0, 1], 1).into();
        tokio::spawn(connection(b, proxy, server_io, peer, idle_timeout, stop_rx));
        (client_io, stop_tx)
    }

    /// A client connection to `proxy` over an in-memory pipe, so time can be paused.
    async fn client(proxy: Proxy) -> hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>> {
        let (io, stop) = raw_client(proxy, Duration::from_secs(3600));
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _keep = stop;
            conn.await
        });
        send
    }

    /// Reads one response with a `content-length` body off `io`; returns its head,
    /// lower-cased.
    async fn read_response(io: &mut DuplexStream) -> String {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    assert_eq!(buf.len(), end + 4 + len, "bytes after the response");
                    return head;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    const HEALTH: &[u8] = b"GET /litefs/health HTTP/1.1\r\nhost: x\r\n\r\n";

    async fn health_on(io: &mut DuplexStream) {
        let head = read_response(io).await;
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }

    /// An idle keep-alive connection drops hyper's state and serves its next request on
    /// the same socket, whatever part of it arrived before, while or after parking. It is
    /// never parked before its first exchange nor in the middle of a request head.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_park_between_requests_and_lose_no_byte() {
        let (proxy, _tx, _dir) = proxy(Primary::Local);
        let (mut io, _stop) = raw_client(proxy.clone(), Duration::from_secs(3600));
        let quiet = PARK_AFTER + Duration::from_millis(10);
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(
            proxy.client_connections(),
            (1, 0),
            "parked before any request"
        );

        io.write_all(HEALTH).await.unwrap();
        health_on(&mut io).await;
        assert_eq!(proxy.client_connections(), (1, 0));
        tokio::time::sleep(quiet).await;
        assert_eq!(proxy.client_connections(), (0, 1));

        // Parked: half a head wakes the connection; it stays served while the rest comes.
        io.write_all(&HEALTH[..10]).await.unwrap();
        tokio::time::sleep(PARK_AFTER * 3).await;
        assert_eq!(proxy.client_connections(), (1, 0), "parked inside a head");
        io.write_all(&HEALTH[10..]).await.unwrap();
        health_on(&mut io).await;
        assert_eq!(proxy.connection_parks(), 1);

        // Half a head that hyper has read when the connection parks comes back with it.
        io.write_all(&HEALTH[..10]).await.unwrap();
        tokio::time::sleep(quiet).await;
        assert_eq!(proxy.connection_parks(), 2);
        io.write_all(&HEALTH[10..]).await.unwrap();
        health_on(&mut io).await;
        // Two requests in one write, the second cut: both answered in order.
        let mut two = HEALTH.to_vec();
        two.extend_from_slice(&HEALTH[..10]);
        io.write_all(&two).await.unwrap();
        health_on(&mut io).await;
        tokio::time::sleep(quiet).await;
        assert_eq!(proxy.connection_parks(), 3);
        io.write_all(&HEALTH[10..]).await.unwrap();
        health_on(&mut io).await;
    }

    /// What a parked connection costs besides its socket is its task: hyper's state must
    /// not be part of it (boxed, it is 2.7 KiB inline).
    #[tokio::test]
    async fn a_connection_task_is_small_while_parked() {
        let (proxy, _tx, _dir) = proxy(Primary::Local);
        let (_client, server) = tokio::io::duplex(64);
        let (_stop_tx, stop) = watch::channel(false);
        let peer = ([127, 0, 0, 1], 1).into();
        let task = connection(http1::Builder::new(), proxy, server, peer, PARK_AFTER, stop);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1536, "connection future is {size} bytes");
    }

    /// A parked connection still ends on `idle_timeout` (counted from its last byte) and
    /// at once when the server drains.
    #[tokio::test(start_paused = true)]
    async fn parked_connections_close_on_idle_timeout_and_drain() {
        let (proxy, _tx, _dir) = proxy(Primary::Local);
        let idle = Duration::from_secs(30);
        let (mut io, _stop) = raw_client(proxy.clone(), idle);
        io.write_all(HEALTH).await.unwrap();
        health_on(&mut io).await;
        let start = tokio::time::Instant::now();
        let mut rest = [0u8; 1];
        assert_eq!(io.read(&mut rest).await.unwrap(), 0);
        assert_eq!(start.elapsed(), idle);
        assert_eq!(proxy.connection_parks(), 1);
        assert_eq!(proxy.client_connections(), (0, 0));

        let (mut io, stop) = raw_client(proxy.clone(), idle);
        io.write_all(HEALTH).await.unwrap();
        health_on(&mut io).await;
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(proxy.client_connections(), (0, 1));
        let start = tokio::time::Instant::now();
        stop.send(true).unwrap();
        assert_eq!(io.read(&mut rest).await.unwrap(), 0);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(proxy.client_connections(), (0, 0));
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
