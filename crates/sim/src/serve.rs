//! The HTTP/1 accept loop shared by the sim's servers: one task per connection, and on
//! shutdown the listener closes, streaming bodies are told to end, and connections get a
//! short drain before they are cut.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Turns `true` when the server shuts down; long responses select on it.
pub(crate) type Stop = watch::Receiver<bool>;

/// A plain-text answer (LiteFS's `http.Error` shape).
pub(crate) fn text(status: hyper::StatusCode, body: &'static str) -> Response<Body> {
    use http_body_util::BodyExt;
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(http_body_util::Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap_or_else(|_| Response::new(http_body_util::Full::new(Bytes::new()).boxed()))
}

/// How long open connections get to finish after shutdown before they are cut.
const DRAIN: Duration = Duration::from_secs(1);

pub(crate) async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Stop) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(server = name, error = %e, "litefs-sim: accept");
                        continue;
                    }
                };
                let handler = handler.clone();
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    let stop_svc = stop.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let fut = handler(req, stop_svc.clone());
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    serve_conn(name, stream, peer, stop, svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

async fn serve_conn<S>(
    name: &'static str,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    mut stop: Stop,
    svc: S,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(server = name, client.addr = %peer, error = %e, "litefs-sim: connection");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
