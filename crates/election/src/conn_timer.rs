//! Per-connection deadlines for the election's HTTP listeners: what phase a connection is in
//! (idle between requests, reading a request head, serving), learned from its reads and from
//! the service, and when that phase must end. hyper's own `header_read_timeout` starts at the
//! end of the previous response, so it is also the idle limit; this splits the two.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http_server::Limits;

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No byte of a next request has arrived since this moment.
    Idle(Instant),
    /// The first byte of a request head arrived at this moment.
    Head(Instant),
    /// The service is handling a request (its own body timeout applies).
    Busy,
}

/// Which limit closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Idle,
    Head,
}

/// The phase of one connection, shared by its reader, its service and its watchdog.
#[derive(Clone)]
pub(crate) struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    phase: Mutex<Phase>,
    /// Wakes the watchdog when the phase changes.
    changed: Notify,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            inner: Arc::new(Inner {
                phase: Mutex::new(Phase::Idle(Instant::now())),
                changed: Notify::new(),
            }),
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Option<Phase>) {
        let mut g = self.inner.phase.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = f(*g) {
            *g = next;
            self.inner.changed.notify_one();
        }
    }

    fn get(&self) -> Phase {
        *self.inner.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: on an idle connection they start a request head.
    fn read_some(&self) {
        self.set(|p| match p {
            Phase::Idle(_) => Some(Phase::Head(Instant::now())),
            _ => None,
        });
    }

    /// The service got a request; the connection is idle again when the guard drops.
    ///
    /// A pipelined head read while busy is timed as idle from then on: hyper does not say
    /// where one request ends, and the idle limit still bounds it.
    pub(crate) fn busy(&self) -> BusyGuard {
        self.set(|_| Some(Phase::Busy));
        BusyGuard(self.clone())
    }

    /// Completes when the current phase outlives its limit.
    pub(crate) async fn expired(&self, limits: Limits) -> Expired {
        loop {
            let deadline = match self.get() {
                Phase::Idle(since) => Some((since + limits.idle, Expired::Idle)),
                Phase::Head(since) => Some((since + limits.head, Expired::Head)),
                Phase::Busy => None,
            };
            match deadline {
                Some((at, why)) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => return why,
                    _ = self.inner.changed.notified() => {}
                },
                None => self.inner.changed.notified().await,
            }
        }
    }
}

/// Marks the end of a request's service.
pub(crate) struct BusyGuard(Activity);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(|_| Some(Phase::Idle(Instant::now())));
    }
}

/// A stream whose reads are reported to an [`Activity`].
pub(crate) struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
