//! LiteFS's HTTP API (normally on :20202) for one simulated node, shaped as LiteFS's
//! http/server.go serves it: `GET /info`, the `GET /events` NDJSON stream, `POST /stream`
//! (replication, [`crate::stream`]), `POST /promote` and `POST /handoff?nodeID=`.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::client;
use crate::event::Event;
use crate::node::Node;
use crate::serve::{serve, text, Body, Stop};
use crate::stream;
use crate::wire;

/// LiteFS's `NodeInfo` (litefs.go), fields in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo<'a> {
    /// `omitempty` in LiteFS: absent until the node knows its cluster's ID.
    #[serde(rename = "clusterID", skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    is_primary: bool,
    candidate: bool,
    path: String,
    primary: PrimaryInfo<'a>,
}

#[derive(Serialize)]
struct PrimaryInfo<'a> {
    /// The primary's hostname on a replica that knows it; `""` on the primary itself (as
    /// measured, litefs-facts.md) and when no primary is known (never null).
    hostname: &'a str,
}

/// Serves the node's API on `listener` until `shutdown` completes. Then the listener is
/// closed (new connections are refused), every `/events` stream ends, and connections
/// still open after a short drain are cut, so a test can simulate the API going down.
pub async fn serve_api(node: Node, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve("litefs-api", listener, shutdown, move |req, stop| {
        let node = node.clone();
        async move { route(&node, req, stop).await }
    })
    .await;
}

async fn route(node: &Node, req: Request<Incoming>, stop: Stop) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/info") => info(node),
        (&Method::GET, "/events") => events(node, stop),
        (&Method::POST, wire::STREAM_PATH) => stream::serve_stream(node, &req, stop),
        (&Method::POST, "/promote") => promote(node).await,
        (&Method::POST, "/handoff") => handoff(node, req.uri().query().unwrap_or("")).await,
        (_, "/info" | "/events" | "/stream" | "/promote" | "/handoff") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// LiteFS's `handlePostPromote`: on a replica, ask the primary it streams from to hand
/// its lease over to this node; 200 at once on the primary.
async fn promote(node: &Node) -> Response<Body> {
    if node.is_primary() {
        tracing::info!(node = %node.hostname(), "litefs-sim: node is already primary, skipping promotion");
        return text(StatusCode::OK, "");
    }
    let Some(url) = node.primary_url() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no primary is currently available for handoff, cannot promote".into(),
        );
    };
    tracing::info!(node = %node.hostname(), primary = %url, "litefs-sim: requesting primary handoff");
    let target = format!(
        "{}/handoff?nodeID={}",
        url.trim_end_matches('/'),
        wire::format_node_id(node.id())
    );
    match client::request(Method::POST, &target, Bytes::new(), PROMOTE_TIMEOUT).await {
        Ok((status, _)) if status.is_success() => text(StatusCode::OK, ""),
        Ok((status, body)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "handoff failed: {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            ),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handoff failed: {e}"),
        ),
    }
}

/// LiteFS's `handlePostHandoff`: hand the lease to the connected replica `nodeID`.
async fn handoff(node: &Node, query: &str) -> Response<Body> {
    let id = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "nodeID")
        .and_then(|(_, v)| wire::parse_node_id(&v));
    let Some(id) = id else {
        return error(StatusCode::BAD_REQUEST, "invalid node id".into());
    };
    match node.handoff(id).await {
        Ok(()) => text(StatusCode::OK, ""),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot handoff: {e}"),
        ),
    }
}

/// The handoff's own bound (LiteFS: 5 s for the lease, 5 s for the stream).
const PROMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn error(status: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn info(node: &Node) -> Response<Body> {
    let role = node.role();
    let hostname = role.primary_hostname.unwrap_or_default();
    let info = NodeInfo {
        cluster_id: node.cluster_id(),
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
