//! The outbound request body. It streams the client's body untouched, and if the request
//! is dropped before a single frame was polled (the connection to the upstream failed),
//! it hands the client's body back so the request can be sent elsewhere: the only case in
//! which a request may be retried, because it never left.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

pub struct OutBody {
    inner: Option<Incoming>,
    /// Taken on the first poll: from then on the body may have reached the upstream.
    give_back: Option<oneshot::Sender<Incoming>>,
}

/// Where an unsent body comes back.
pub type Reclaim = oneshot::Receiver<Incoming>;

impl OutBody {
    pub fn new(body: Incoming) -> (OutBody, Reclaim) {
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.give_back = None;
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for OutBody {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
            let _ = tx.send(body);
        }
    }
}
