//! The outbound request body. It streams the client's body untouched, and if the request
//! is dropped before a single frame was polled (the connection to the upstream failed),
//! it hands the client's body back so the request can be sent elsewhere: the only case in
//! which a request may be retried, because it never left.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::{sync::oneshot, time::Sleep};

pub struct OutBody {
    inner: Option<Pin<Box<ClientBody>>>,
    /// Taken on the first poll: from then on the body may have reached the upstream.
    give_back: Option<oneshot::Sender<Pin<Box<ClientBody>>>>,
}

/// Where an unsent body comes back.
pub type Reclaim = oneshot::Receiver<Pin<Box<ClientBody>>>;

impl OutBody {
    pub fn new(body: Pin<Box<ClientBody>>) -> (OutBody, Reclaim) {
        let (tx, rx) = oneshot::channel();
        (
            OutBody {
                inner: Some(body),
                give_back: Some(tx),
            },
            rx,
        )
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.give_back = None;
        match self.inner.as_mut() {
            Some(b) => b.as_mut().poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for OutBody {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
            let _ = tx.send(body);
        }
    }
}

/// How a client's request body failed, when it did: the client's fault, never the
/// upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// Malformed (bad chunked framing) or cut off by the client.
    Malformed,
    /// No byte of it arrived for `body_read_timeout`.
    Stalled,
}

/// Where a [`ClientBody`] records its failure; read after a send failed to tell a client
/// fault from an upstream one.
#[derive(Clone, Default)]
pub struct FaultCell(Arc<AtomicU8>);

impl FaultCell {
    fn set(&self, f: ClientFault) {
        let v = match f {
            ClientFault::Malformed => 1,
            ClientFault::Stalled => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::Stalled),
            _ => None,
        }
    }
}

/// The error a [`ClientBody`] yields to the upstream connection, which then aborts the
/// request (and drops that connection).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("client body: {0}")]
    Malformed(hyper::Error),
    #[error("client body: no byte for {0:?}")]
    Stalled(Duration),
}

pin_project_lite::pin_project! {
    /// The client's request body with a read timer: if no frame arrives for `timeout`
    /// while the upstream is waiting for one, it fails with [`ClientBodyError::Stalled`].
    /// The timer runs while the request is in flight (it is polled by the upstream
    /// connection), so a client trickling or stalling its body cannot hold the app's
    /// connection. Failures are recorded in its [`FaultCell`].
    pub struct ClientBody {
        // `None`: no body at all (a replayed read's; see `crate::replay`).
        inner: Option<Incoming>,
        timeout: Duration,
        #[pin]
        timer: Sleep,
        armed: bool,
        fault: FaultCell,
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, timeout: Duration) -> (ClientBody, FaultCell) {
        let fault = FaultCell::default();
        (
            ClientBody {
                inner: Some(inner),
                timeout,
                timer: tokio::time::sleep(timeout),
                armed: false,
                fault: fault.clone(),
            },
            fault,
        )
    }

    /// A body that ends at once: what a replayed read (which had none) is sent with.
    pub fn empty(timeout: Duration) -> (ClientBody, FaultCell) {
        let fault = FaultCell::default();
        (
            ClientBody {
                inner: None,
                timeout,
                timer: tokio::time::sleep(timeout),
                armed: false,
                fault: fault.clone(),
            },
            fault,
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.set(ClientFault::Malformed);
                Poll::Ready(Some(Err(ClientBodyError::Malformed(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if !*this.armed {
                    *this.armed = true;
                    let at = tokio::time::Instant::now() + *this.timeout;
                    this.timer.as_mut().reset(at);
                }
                match this.timer.poll(cx) {
                    Poll::Ready(()) => {
                        this.fault.set(ClientFault::Stalled);
                        Poll::Ready(Some(Err(ClientBodyError::Stalled(*this.timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
