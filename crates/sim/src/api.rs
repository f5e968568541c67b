//! LiteFS's HTTP API (normally on :20202) for one simulated node: `GET /info` and the
//! `GET /events` NDJSON stream, shaped as LiteFS's http/server.go serves them.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::event::Event;
use crate::node::Node;

type Body = BoxBody<Bytes, Infallible>;

/// How long open connections get to finish after shutdown before they are cut.
const DRAIN: Duration = Duration::from_secs(1);

/// LiteFS's `NodeInfo` (litefs.go), fields in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo<'a> {
    // `clusterID` is `omitempty` in LiteFS and the sim has none, so it is never written.
    is_primary: bool,
    candidate: bool,
    path: String,
    primary: PrimaryInfo<'a>,
}

#[derive(Serialize)]
struct PrimaryInfo<'a> {
    /// The node's own hostname on the primary, the primary's on a connected replica, and
    /// `""` when no primary is known (LiteFS's struct is never null).
    hostname: &'a str,
}

/// Serves the node's API on `listener` until `shutdown` completes. Then the listener is
/// closed (new connections are refused), every `/events` stream ends, and connections
/// still open after a short drain are cut, so a test can simulate the API going down.
pub async fn serve_api(node: Node, listener: TcpListener, shutdown: impl Future<Output = ()>) {
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
                        tracing::warn!(error = %e, "litefs-sim api: accept");
                        continue;
                    }
                };
                let node = node.clone();
                let stop = stop_rx.clone();
                conns.spawn(serve_conn(node, stream, stop, peer));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

async fn serve_conn(
    node: Node,
    stream: tokio::net::TcpStream,
    mut stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) {
    let stop_for_svc = stop.clone();
    let svc = hyper::service::service_fn(move |req| {
        let node = node.clone();
        let stop = stop_for_svc.clone();
        async move { Ok::<_, Infallible>(route(&node, req, stop)) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(client.addr = %peer, error = %e, "litefs-sim api: connection");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn route(node: &Node, req: Request<Incoming>, stop: watch::Receiver<bool>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/info") => info(node),
        (&Method::GET, "/events") => events(node, stop),
        (_, "/info" | "/events") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn info(node: &Node) -> Response<Body> {
    let role = node.role();
    let hostname = if role.is_primary {
        node.hostname().to_owned()
    } else {
        role.primary_hostname.unwrap_or_default()
    };
    let info = NodeInfo {
        is_primary: role.is_primary,
        candidate: true,
        path: node.mount().display().to_string(),
        primary: PrimaryInfo {
            hostname: &hostname,
        },
    };
    // Go's json.MarshalIndent(info, "", "  ") plus a newline.
    let mut body = serde_json::to_string_pretty(&info).unwrap_or_default();
    body.push('\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// The event stream: `init`, then every event as it happens. Like LiteFS, a subscriber that
/// falls more than [`crate::node::EVENT_BUFFER`] events behind is disconnected rather than
/// allowed to slow commits down; the stream also ends when the API shuts down.
fn events(node: &Node, stop: watch::Receiver<bool>) -> Response<Body> {
    let (init, rx) = node.subscribe();
    let stream = futures_util::stream::unfold(
        (Some(init), rx, stop),
        |(pending, mut rx, mut stop)| async move {
            if let Some(ev) = pending {
                return Some((frame(&ev), (None, rx, stop)));
            }
            if *stop.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = rx.recv() => received,
                _ = stop.wait_for(|s| *s) => return None,
            };
            match received {
                Ok(ev) => Some((frame(&ev), (None, rx, stop))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(
                        missed = n,
                        "litefs-sim api: event stream buffer exceeded, disconnecting"
                    );
                    None
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn frame(ev: &Event) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(ev.to_json_line())))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
