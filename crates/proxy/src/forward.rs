//! Forwarding to the primary's proxy over a connection of its own per request. A primary
//! that died then shows as a failed connect (nothing sent: safe to hold and retry), never
//! as a reset on a reused connection (which it may have read: never resent); and the
//! connect can be abandoned the moment another primary appears, since nothing left yet.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{header, request::Parts, HeaderValue, Response, Uri};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::body::ClientBody;
use crate::upstream::{connector, error_chain, origin_form, outbound, tunnel_if_switching};

/// Opens connections to the primary's proxy (name resolution and connect timeout by
/// hyper-util's `HttpConnector`).
#[derive(Clone)]
pub struct Forwarder {
    http: HttpConnector,
}

/// A connection on which nothing has been sent: dropping it loses no request.
pub struct Connected {
    tcp: TcpStream,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration) -> Forwarder {
        Forwarder {
            http: connector(connect_timeout),
        }
    }

    /// Connects to `base` (scheme and authority).
    pub async fn connect(&self, base: &Uri) -> Result<Connected, String> {
        let mut http = self.http.clone();
        let io = tower_service::Service::call(&mut http, base.clone())
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Connected {
            tcp: io.into_inner(),
        })
    }
}

impl Connected {
    /// Sends `head` + `body`; from here on the request may have reached the primary. The
    /// connection asks the primary to close it (`Connection: close`) and is then closed with
    /// a reset, so neither node keeps it in TIME_WAIT: one lingering ephemeral port per
    /// forwarded write would cap a replica near 470 writes/s to one primary (~28k ports,
    /// 60 s). Protocol upgrades (WebSocket tunnels) close normally, losing no last bytes.
    pub async fn send(
        self,
        base: &Uri,
        head: &Parts,
        body: Pin<Box<ClientBody>>,
        upgrade: &mut Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, String> {
        let reset_on_close = upgrade.is_none();
        if reset_on_close {
            if let Err(e) = self.tcp.set_zero_linger() {
                tracing::debug!(error = %e, "cannot set SO_LINGER 0");
            }
        }
        let io = TokioIo::new(Stream {
            tcp: self.tcp,
            reset_on_close,
        });
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "connection to the primary ended");
            }
        });
        let mut req = outbound(head, origin_form(head.uri.path_and_query()), body);
        if let (false, Some(authority)) =
            (req.headers().contains_key(header::HOST), base.authority())
        {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        if reset_on_close {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        tunnel_if_switching(&mut resp, upgrade);
        Ok(resp)
    }
}

/// The TCP connection under hyper. With `reset_on_close`, hyper's shutdown of the write side
/// is skipped: a FIN sent before the close would put the socket in TIME_WAIT as soon as the
/// peer's FIN arrived, whatever `SO_LINGER` says. Hyper closes only once the response has
/// been read (or the exchange abandoned), so the reset loses nothing.
struct Stream {
    tcp: TcpStream,
    reset_on_close: bool,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset_on_close {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
