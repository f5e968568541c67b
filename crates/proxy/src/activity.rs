//! What a connection's idle timeout and parking go by: when it last moved a byte, how
//! many of its requests are being handled, and the socket wrapper that records both.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// When a connection last moved a byte, in milliseconds since it opened, and how many of
/// its requests the proxy is handling (their response head not yet sent).
pub(crate) struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
    /// Requests handled so far.
    pub(crate) served: AtomicU64,
    /// Set while parking: hyper's final shutdown of the socket is skipped.
    pub(crate) keep_socket: AtomicBool,
    /// Wakes the idle timer when the last request being handled finishes.
    done: Notify,
}

/// Marks a request as being handled for as long as it lives.
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    pub(crate) fn enter(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        a.served.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            keep_socket: AtomicBool::new(false),
            done: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once a request has been handled since `served_before` and then nothing
    /// moved for `quiet` while no request was being handled.
    pub(crate) async fn quiet_after_request(&self, served_before: u64, quiet: Duration) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.served.load(Ordering::Relaxed) > served_before {
                break;
            }
            done.await;
        }
        self.idle(quiet).await;
    }

    /// Resolves once nothing moved for `timeout` while no request was being handled.
    pub(crate) async fn idle(&self, timeout: Duration) {
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

/// The client socket, recording activity on every successful read or write, with bytes
/// read while parked (or read by hyper and not parsed) handed out first.
pub(crate) struct IdleIo<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
    pub(crate) unread: Bytes,
}

impl<S: AsyncRead + Unpin> IdleIo<S> {
    /// Puts `first` in front of the bytes not yet handed out. `first` is copied: it is a
    /// view into hyper's 8 KiB read buffer (even when empty), which it would keep alive
    /// for as long as the connection is parked.
    pub(crate) fn unread_first(&mut self, first: Bytes) {
        if first.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = Bytes::copy_from_slice(&first);
        } else {
            let mut joined = BytesMut::with_capacity(first.len() + self.unread.len());
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&self.unread);
            self.unread = joined.freeze();
        }
    }

    /// Waits for the client's next bytes; `false` at end of stream.
    pub(crate) async fn fill(&mut self) -> io::Result<bool> {
        if !self.unread.is_empty() {
            return Ok(true);
        }
        // Small on purpose: it is part of every connection's task; hyper reads the rest.
        let mut first = [0u8; 64];
        let n = self.read(&mut first).await?;
        self.unread = Bytes::copy_from_slice(&first[..n]);
        Ok(n > 0)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            let chunk = self.unread.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
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
        if self.activity.keep_socket.load(Ordering::Relaxed) {
            // Parking: hyper lets go of the connection, the client keeps it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
