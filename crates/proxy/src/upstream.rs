//! Sending one request to the local app over a pooled client. A failure says whether the
//! request may have left: only one that surely did not (connect failed) comes back to be
//! sent again. (The primary's proxy is reached by [`crate::forward`].)

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{request::Parts, uri::PathAndQuery, Request, Response, Uri, Version};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection, HttpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};

use tokio::net::TcpStream;

use crate::body::{ClientBody, OutBody};

#[derive(Clone)]
pub struct Upstream {
    client: Client<QuickAckConnector, OutBody>,
}

/// Why a send failed.
pub enum SendError {
    /// The connection could not be made; the body is handed back untouched.
    NotSent(Pin<Box<ClientBody>>, String),
    /// The request may have reached the upstream: it must not be sent again.
    MaybeSent(String),
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Upstream {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(QuickAckConnector(connector(connect_timeout)));
        Upstream { client }
    }

    /// Sends `head` + `body` to `base` (scheme and authority; the path comes from `head`).
    /// The head is cloned so a request that never left can be sent again.
    pub async fn send(
        &self,
        base: &Uri,
        head: &Parts,
        body: Pin<Box<ClientBody>>,
        upgrade: &mut Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, SendError> {
        let (out, reclaim) = OutBody::new(body);
        let req = outbound(head, join(base, head.uri.path_and_query()), out);
        match self.client.request(req).await {
            Ok(mut resp) => {
                tunnel_if_switching(&mut resp, upgrade);
                Ok(resp)
            }
            Err(e) => {
                let msg = error_chain(&e);
                // Not awaited: a body still held by a live connection task has left.
                let mut reclaim = reclaim;
                match reclaim.try_recv() {
                    Ok(body) if e.is_connect() => Err(SendError::NotSent(body, msg)),
                    _ => Err(SendError::MaybeSent(msg)),
                }
            }
        }
    }
}

/// Connections to an upstream: TCP_NODELAY, bounded connect time.
pub(crate) fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

/// The app's connections, acknowledging what was read at once (`TCP_QUICKACK`, set after
/// each read that got bytes: it sends the ACK the kernel was delaying, and Linux leaves
/// quick-ACK mode by itself). An app that writes its answer's head and body in two writes
/// without `TCP_NODELAY` (Python's `http.server`, Django's `runserver`) holds the body back
/// (Nagle) until the head is acknowledged; on a pooled connection a delayed ACK costs every
/// such answer 40 ms. One `setsockopt` per read that returned (hyper polls a connection
/// several times per response, six `setsockopt` per request when it was set on every poll).
#[derive(Clone)]
pub(crate) struct QuickAckConnector(HttpConnector);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for QuickAckConnector {
    type Response = QuickAck;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<QuickAck, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = tower_service::Service::call(&mut self.0, dst);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(QuickAck(io))
        })
    }
}

/// A connection to the app (see [`QuickAckConnector`]).
pub(crate) struct QuickAck(TokioIo<TcpStream>);

impl hyper::rt::Read for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let io = &mut self.get_mut().0;
        let read = Pin::new(&mut *io).poll_read(cx, buf);
        if read.is_ready() {
            // Best effort: a socket that refuses it only costs latency.
            let _ = socket2::SockRef::from(io.inner()).set_tcp_quickack(true);
        }
        read
    }
}

impl hyper::rt::Write for QuickAck {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

fn join(base: &Uri, pq: Option<&PathAndQuery>) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query(pq));
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// A request target in origin form (`/path?query`), as sent on a connection of our own.
pub(crate) fn origin_form(pq: Option<&PathAndQuery>) -> Uri {
    Uri::from(path_and_query(pq))
}

fn path_and_query(pq: Option<&PathAndQuery>) -> PathAndQuery {
    pq.cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The request to send upstream: `head`'s method and headers (cloned, so a request that
/// never left can be sent again), `uri`, HTTP/1.1.
pub(crate) fn outbound<B>(head: &Parts, uri: Uri, body: B) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers.clone();
    req
}

/// After a `101 Switching Protocols`, joins the client's upgraded connection to the
/// upstream's.
pub(crate) fn tunnel_if_switching(resp: &mut Response<Incoming>, upgrade: &mut Option<OnUpgrade>) {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = upgrade.take() {
            let upstream_side = hyper::upgrade::on(resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
