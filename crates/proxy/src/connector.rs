//! Connections to an upstream: hyper-util's `HttpConnector`, optionally closed with a reset
//! instead of a FIN so that they leave no TIME_WAIT behind.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `HttpConnector`, whose connections reset on close when `reset_on_close` is set. A
/// connection opened per request and closed by this side with a FIN holds one of this
/// node's ~28k ephemeral ports in TIME_WAIT for 60 s: forwarding more than ~470 writes/s
/// to one primary would run out of ports (connect fails with EADDRNOTAVAIL; writes are held,
/// then 503). Hyper drops a connection only once the response has been read (or the
/// exchange abandoned), so the reset loses nothing.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) http: HttpConnector,
    pub(crate) reset_on_close: bool,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.http.call(dst);
        let reset_on_close = self.reset_on_close;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            // Closing then sends a reset: no TIME_WAIT on either side. Should it fail, the
            // connection still works and only lingers as before.
            if reset_on_close {
                if let Err(e) = tcp.set_zero_linger() {
                    tracing::debug!(error = %e, "cannot set SO_LINGER 0");
                }
            }
            Ok(TokioIo::new(Stream {
                tcp,
                reset_on_close,
            }))
        })
    }
}

/// A TCP connection to an upstream. With `reset_on_close`, hyper's shutdown of the write
/// side is skipped: a FIN sent before the close would put the socket in TIME_WAIT as soon
/// as the peer's FIN arrived, whatever `SO_LINGER` says.
pub(crate) struct Stream {
    tcp: TcpStream,
    reset_on_close: bool,
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        self.tcp.connected()
    }
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
