//! The lease endpoint's HTTP server: Consul's URL scheme, status codes, JSON field names,
//! base64 values and `X-Consul-*` headers, as hashicorp's Go client (used by LiteFS) and other
//! Consul clients expect them. Reads come from the local applied state once it has caught up
//! with the leader (`http/consistent.rs`); writes go to the leader, except refusals the applied
//! state already decides. Session endpoints are in `http/session.rs`, KV endpoints in `http/kv.rs`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::state::{Behavior, KvEntry, LeaseRequest, LeaseResponse, LeaseState, Session};
use super::{LeaseShared, LeaseWriter};
use crate::config::Peer;
use crate::types::{NodeId, Raft};

/// Consul's limit on a KV value.
const MAX_VALUE: usize = 512 * 1024;
/// Blocking queries: default and largest `wait` (Consul's).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

type Resp = Response<Full<Bytes>>;

mod consistent;
mod kv;
mod session;

use consistent::consistent;
pub(crate) use consistent::read_index_local;
use kv::{kv_delete, kv_get, kv_put};
pub use session::{renew_answer_within, RENEW_ANSWER_MAX, RENEW_ANSWER_WITHIN};
use session::{session_create, session_destroy, session_list, session_renew};

/// What the handlers need.
#[derive(Clone)]
pub(crate) struct HttpCtx {
    pub shared: LeaseShared,
    pub writer: LeaseWriter,
    pub raft: Raft,
    /// This node's name: owner of sessions created here without a member `Node`.
    pub me_name: String,
    pub peers: Arc<BTreeMap<NodeId, Peer>>,
    /// With `lease_token`: every request must carry it (`X-Consul-Token`, as LiteFS's Consul
    /// client sends `CONSUL_HTTP_TOKEN`, or `?token=`).
    pub token: Option<String>,
    /// A renewal not committed within this is answered "session gone"
    /// ([`renew_answer_within`]; a keeper whose own election is gone asks for longer).
    pub renew_within: Duration,
}

mod subtle_eq {
    /// Compares without stopping at the first difference (the token is a secret).
    pub fn eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Serve until `shutdown` completes; then open connections are dropped.
pub(crate) async fn serve(listener: TcpListener, ctx: HttpCtx, shutdown: impl Future<Output = ()>) {
    crate::http_server::serve(
        "lease",
        listener,
        Arc::new(ctx),
        |ctx: Arc<HttpCtx>, req| async move { handle(&ctx, req).await },
        shutdown,
    )
    .await;
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_resp(v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Add the query-meta headers Consul's clients parse on reads.
fn with_meta(mut r: Resp, index: u64, known_leader: bool) -> Resp {
    let h = r.headers_mut();
    // Consul never answers index 0 (clients treat it as "no blocking").
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if known_leader { "true" } else { "false" }),
    );
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    r
}

/// Whether the request carries the lease token (`X-Consul-Token`, or `?token=`), compared
/// without stopping at the first difference; always true without one configured.
pub(crate) fn token_ok(want: Option<&str>, headers: &http::HeaderMap, query: Option<&str>) -> bool {
    let Some(want) = want else { return true };
    let from_query = query.map(parse_query);
    let given = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .or(from_query
            .as_ref()
            .and_then(|q| q.get("token"))
            .map(String::as_str));
    given.is_some_and(|g| subtle_eq::eq(g.as_bytes(), want.as_bytes()))
}

fn token_refused() -> Resp {
    text(
        StatusCode::FORBIDDEN,
        "Permission denied: ACL token missing or wrong",
    )
}

/// A request's body, bounded in size and time; the error is the answer.
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    match tokio::time::timeout(
        crate::http_server::BODY_TIMEOUT,
        Limited::new(body, MAX_VALUE).collect(),
    )
    .await
    {
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "body too slow")),
        Ok(Err(_)) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_VALUE} bytes"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn handle(ctx: &HttpCtx, req: Request<Incoming>) -> Resp {
    if !token_ok(ctx.token.as_deref(), req.headers(), req.uri().query()) {
        return token_refused();
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    route(ctx, &parts.method, &parts.uri, body).await
}

/// A request a node's lease keeper forwarded (`/raft/lease-http`): answered as this node's
/// endpoint would answer it had `origin`'s LiteFS sent it to its own endpoint.
pub(crate) async fn handle_forwarded(
    ctx: &HttpCtx,
    origin: &str,
    renew_within: Option<Duration>,
    method: &Method,
    uri: &http::Uri,
    body: Bytes,
) -> Resp {
    let ctx = HttpCtx {
        me_name: origin.to_owned(),
        renew_within: renew_within.unwrap_or(ctx.renew_within),
        ..ctx.clone()
    };
    route(&ctx, method, uri, body).await
}

async fn route(ctx: &HttpCtx, method: &Method, uri: &http::Uri, body: Bytes) -> Resp {
    let method = method.clone();
    let path = uri.path().to_string();
    let query = parse_query(uri.query().unwrap_or(""));
    let Some(rest) = path.strip_prefix("/v1/") else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if let Some(key) = rest.strip_prefix("kv/") {
        let key = percent_decode(key);
        return match method {
            Method::GET => kv_get(ctx, &key, &query).await,
            Method::PUT => kv_put(ctx, key, &query, body).await,
            Method::DELETE => kv_delete(ctx, key, &query).await,
            _ => method_not_allowed(&method),
        };
    }
    let (head, arg) = match rest.match_indices('/').nth(1) {
        Some((i, _)) => (&rest[..i], Some(percent_decode(&rest[i + 1..]))),
        None => (rest, None),
    };
    match (head, arg, &method) {
        ("session/create", None, &Method::PUT) => session_create(ctx, &body).await,
        ("session/renew", Some(id), &Method::PUT) => session_renew(ctx, id).await,
        ("session/destroy", Some(id), &Method::PUT) => session_destroy(ctx, id).await,
        ("session/info", Some(id), &Method::GET) => {
            session_list(ctx, &query, move |s| s.id == id).await
        }
        ("session/node", Some(node), &Method::GET) => {
            session_list(ctx, &query, move |s| s.node == node).await
        }
        // This node's sessions only: another node's session IDs are what a destroy or a
        // takeover would need.
        ("session/list", None, &Method::GET) => {
            let me = ctx.me_name.clone();
            session_list(ctx, &query, move |s| s.node == me).await
        }
        // LiteFS registers a shared catalog node when its consul URL has a path; nothing to do.
        ("catalog/register", None, &Method::PUT) => json_resp(&json!(true)),
        ("status/leader", None, &Method::GET) => {
            let leader = ctx.raft.metrics().borrow().current_leader;
            let addr = leader
                .and_then(|l| ctx.peers.get(&l))
                .map(|p| p.raft.clone())
                .unwrap_or_default();
            json_resp(&json!(addr))
        }
        (
            "session/create" | "session/renew" | "session/destroy" | "session/info"
            | "session/node" | "session/list" | "catalog/register" | "status/leader",
            _,
            _,
        ) => method_not_allowed(&method),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("{path}: not served by the litefs-proxy lease endpoint"),
        ),
    }
}

fn method_not_allowed(m: &Method) -> Resp {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {m} not allowed"),
    )
}

fn known_leader(ctx: &HttpCtx) -> bool {
    ctx.raft.metrics().borrow().current_leader.is_some()
}

fn write_failed(e: impl std::fmt::Display) -> Resp {
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn unexpected(r: LeaseResponse) -> Resp {
    match r {
        LeaseResponse::Failed { status, message } => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        ),
        other => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
    }
}

async fn write_bool(ctx: &HttpCtx, req: LeaseRequest) -> Resp {
    match ctx.writer.write(req).await {
        Ok(LeaseResponse::Bool(b)) => json_resp(&json!(b)),
        Ok(other) => unexpected(other),
        Err(e) => write_failed(e),
    }
}

// ---- blocking queries and URL helpers ----

/// `?index=N[&wait=D]`: hold the answer until the table's index passes N, at most `wait`.
async fn block(ctx: &HttpCtx, query: &HashMap<String, String>, table: fn(&LeaseState) -> u64) {
    let Some(min) = query.get("index").and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    if min == 0 {
        return;
    }
    let wait = query
        .get("wait")
        .and_then(|w| parse_duration_ms(w))
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    let mut rx = ctx.shared.subscribe();
    let until = tokio::time::Instant::now() + wait;
    while ctx.shared.read(table) <= min {
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// A Go duration string ("10s", "1000ms", "1m30s", "1.5s") in milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * factor;
    }
    Some(total.round() as u64)
}

/// The query string's pairs, decoded as Consul's Go server decodes them (`+` is a space).
fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// A percent-encoded path segment (a KV key, a session id), decoded.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        assert_eq!(parse_duration_ms("1000ms"), Some(1000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("10"), None);
        assert_eq!(parse_duration_ms("xs"), None);
    }

    #[test]
    fn renewals_wait_as_long_as_the_election_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(renew_answer_within(ms(150)), ms(200));
        assert_eq!(renew_answer_within(ms(400)), ms(400));
        assert_eq!(renew_answer_within(ms(5000)), RENEW_ANSWER_MAX);
    }

    #[test]
    fn url_decoding() {
        assert_eq!(
            percent_decode("litefs%2Fprimary%zz%4"),
            "litefs/primary%zz%4"
        );
        let q = parse_query("acquire=abc&raw&flags=3&x=a+b");
        assert_eq!(q["acquire"], "abc");
        assert_eq!(q["raw"], "");
        assert_eq!(q["x"], "a b");
    }
}
