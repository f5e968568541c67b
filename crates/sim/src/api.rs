//! LiteFS's HTTP API (normally on :20202) for one simulated node: `GET /info` and the
//! `GET /events` NDJSON stream, shaped as LiteFS's http/server.go serves them.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::event::Event;
use crate::node::Node;
use crate::serve::{serve, Body, Stop};

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
    serve("litefs-api", listener, shutdown, move |req, stop| {
        let response = route(&node, req, stop);
        async move { response }
    })
    .await;
}

fn route(node: &Node, req: Request<Incoming>, stop: Stop) -> Response<Body> {
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
fn events(node: &Node, stop: Stop) -> Response<Body> {
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
