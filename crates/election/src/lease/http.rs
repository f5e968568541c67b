//! The lease endpoint's HTTP server: Consul's URL scheme, status codes, JSON field names,
//! base64 values and `X-Consul-*` headers, as hashicorp's Go client (used by LiteFS) and other
//! Consul clients expect them. Reads come from the local applied state; writes go to the leader.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rand::RngCore;
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
/// Session TTL bounds. Consul's default minimum is 10s (its `session_ttl_min`, configurable);
/// 1s here so tests and tight setups can use shorter TTLs.
const MIN_TTL_MS: u64 = 1_000;
const MAX_TTL_MS: u64 = 86_400_000;
/// Consul's default lock-delay when the create request names none.
const DEFAULT_LOCK_DELAY_MS: u64 = 15_000;

type Resp = Response<Full<Bytes>>;

/// What the handlers need.
pub(crate) struct HttpCtx {
    pub shared: LeaseShared,
    pub writer: LeaseWriter,
    pub raft: Raft,
    /// This node's name: owner of sessions created here without a member `Node`.
    pub me_name: String,
    pub peers: Arc<BTreeMap<NodeId, Peer>>,
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

fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
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

async fn handle(ctx: &HttpCtx, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let body = match tokio::time::timeout(
        crate::http_server::BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_VALUE).collect(),
    )
    .await
    {
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body too slow"),
        Ok(Err(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large, max size: {MAX_VALUE} bytes"),
            )
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
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
        ("session/destroy", Some(id), &Method::PUT) => {
            write_bool(ctx, LeaseRequest::SessionDestroy { id }).await
        }
        ("session/info", Some(id), &Method::GET) => {
            session_list(ctx, &query, move |s| s.id == id).await
        }
        ("session/node", Some(node), &Method::GET) => {
            session_list(ctx, &query, move |s| s.node == node).await
        }
        ("session/list", None, &Method::GET) => session_list(ctx, &query, |_| true).await,
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

// ---- sessions ----

async fn session_create(ctx: &HttpCtx, body: &[u8]) -> Resp {
    let parsed = match parse_create(body) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let is_member = |n: &str| ctx.peers.values().any(|p| p.id == n);
    let node = match parsed.node {
        Some(n) if is_member(&n) => n,
        other => {
            if let Some(n) = other {
                tracing::debug!(node = %n, owner = %ctx.me_name, "session Node is not a cluster member; owned by the receiving node");
            }
            ctx.me_name.clone()
        }
    };
    let id = new_uuid();
    let req = LeaseRequest::SessionCreate {
        id,
        name: parsed.name,
        node,
        lock_delay_ms: parsed.lock_delay_ms,
        behavior: parsed.behavior,
        ttl_ms: parsed.ttl_ms,
    };
    match ctx.writer.write(req).await {
        Ok(LeaseResponse::Created(id)) => json_resp(&json!({ "ID": id })),
        Ok(other) => unexpected(other),
        Err(e) => write_failed(e),
    }
}

async fn session_renew(ctx: &HttpCtx, id: String) -> Resp {
    match ctx
        .writer
        .write(LeaseRequest::SessionRenew { id: id.clone() })
        .await
    {
        Ok(LeaseResponse::Renewed(Some(s))) => json_resp(&json!([session_json(&s)])),
        Ok(LeaseResponse::Renewed(None)) => text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        Ok(other) => unexpected(other),
        Err(e) => write_failed(e),
    }
}

async fn session_list(
    ctx: &HttpCtx,
    query: &HashMap<String, String>,
    filter: impl Fn(&Session) -> bool,
) -> Resp {
    block(ctx, query, |st| st.session_index).await;
    let (list, index) = ctx.shared.read(|st| {
        let list: Vec<Value> = st
            .sessions
            .values()
            .filter(|s| filter(s))
            .map(session_json)
            .collect();
        (list, st.session_index)
    });
    with_meta(json_resp(&Value::Array(list)), index, known_leader(ctx))
}

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        // time.Duration in the Go client: nanoseconds.
        "LockDelay": s.lock_delay_ms.saturating_mul(1_000_000),
        "Behavior": s.behavior.as_str(),
        "TTL": fmt_ttl(s.ttl_ms),
        "NodeChecks": [],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

fn fmt_ttl(ms: u64) -> String {
    match ms {
        0 => String::new(),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[derive(Debug, PartialEq)]
struct CreateArgs {
    name: String,
    node: Option<String>,
    lock_delay_ms: u64,
    behavior: Behavior,
    ttl_ms: u64,
}

/// The create body: Consul decodes field names case-insensitively (Go's `encoding/json`), so
/// `LockDelay` (Go client) and `lockdelay` (python clients) are both accepted.
fn parse_create(body: &[u8]) -> Result<CreateArgs, String> {
    let mut args = CreateArgs {
        name: String::new(),
        node: None,
        lock_delay_ms: DEFAULT_LOCK_DELAY_MS,
        behavior: Behavior::Release,
        ttl_ms: 0,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(args);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("Request decode failed: expected a JSON object".into());
    };
    for (k, v) in obj {
        let str_of = |v: &Value| v.as_str().map(str::to_string);
        match k.to_ascii_lowercase().as_str() {
            "name" => args.name = str_of(&v).unwrap_or_default(),
            "node" => args.node = str_of(&v).filter(|s| !s.is_empty()),
            "behavior" => {
                args.behavior = match v.as_str().unwrap_or("") {
                    "" | "release" => Behavior::Release,
                    "delete" => Behavior::Delete,
                    other => return Err(format!("Invalid Behavior setting '{other}'")),
                }
            }
            "lockdelay" => {
                args.lock_delay_ms = match &v {
                    // Consul: a bare number below 1000 is seconds, otherwise nanoseconds.
                    Value::Number(n) => {
                        let n = n.as_u64().ok_or("Invalid LockDelay")?;
                        if n < 1000 {
                            n * 1000
                        } else {
                            n / 1_000_000
                        }
                    }
                    Value::String(s) => parse_duration_ms(s)
                        .ok_or_else(|| format!("Request decode failed: invalid LockDelay {s:?}"))?,
                    Value::Null => 0,
                    _ => return Err("Request decode failed: invalid LockDelay".into()),
                }
            }
            "ttl" => {
                let s = v.as_str().unwrap_or("");
                let ms = if s.is_empty() {
                    0
                } else {
                    parse_duration_ms(s)
                        .ok_or_else(|| format!("Request decode failed: invalid TTL {s:?}"))?
                };
                if ms != 0 && !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ms) {
                    return Err(format!(
                        "Invalid Session TTL '{s}', must be between [{}s={}s]",
                        MIN_TTL_MS / 1000,
                        MAX_TTL_MS / 1000
                    ));
                }
                args.ttl_ms = ms;
            }
            // Health checks are not modelled: sessions live by TTL and Raft leadership only.
            _ => {}
        }
    }
    Ok(args)
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

fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---- KV ----

fn kv_json(e: &KvEntry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": e.value.as_ref().map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let (Some(s), Value::Object(o)) = (&e.session, &mut v) {
        o.insert("Session".into(), json!(s));
    }
    v
}

async fn kv_get(ctx: &HttpCtx, key: &str, query: &HashMap<String, String>) -> Resp {
    block(ctx, query, |st| st.kv_index).await;
    let leader = known_leader(ctx);
    let recurse = query.contains_key("recurse");
    let keys = query.contains_key("keys");
    ctx.shared.read(|st| {
        let index = st.kv_index;
        let matching = || {
            st.kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
        };
        if keys {
            let sep = query.get("separator").filter(|s| !s.is_empty());
            let mut out: Vec<String> = Vec::new();
            for (k, _) in matching() {
                let name = match sep.and_then(|s| k[key.len()..].find(s.as_str()).map(|i| (i, s))) {
                    Some((i, s)) => k[..key.len() + i + s.len()].to_string(),
                    None => k.clone(),
                };
                if out.last() != Some(&name) {
                    out.push(name);
                }
            }
            if out.is_empty() {
                return with_meta(empty(StatusCode::NOT_FOUND), index, leader);
            }
            return with_meta(json_resp(&json!(out)), index, leader);
        }
        let found: Vec<&KvEntry> = if recurse {
            matching().map(|(_, e)| e).collect()
        } else {
            st.kv.get(key).into_iter().collect()
        };
        if found.is_empty() {
            return with_meta(empty(StatusCode::NOT_FOUND), index, leader);
        }
        if query.contains_key("raw") && !recurse {
            let raw = found[0].value.clone().unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(raw)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return with_meta(r, index, leader);
        }
        let list: Vec<Value> = found.into_iter().map(kv_json).collect();
        with_meta(json_resp(&Value::Array(list)), index, leader)
    })
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// A numeric query parameter; the error is the 400 text.
fn parse_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("Invalid {name} value: {v:?}")),
    }
}

async fn kv_put(ctx: &HttpCtx, key: String, query: &HashMap<String, String>, body: Bytes) -> Resp {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let (flags, cas) = match (parse_u64(query, "flags"), parse_u64(query, "cas")) {
        (Ok(f), Ok(c)) => (f.unwrap_or(0), c),
        (Err(e), _) | (_, Err(e)) => return text(StatusCode::BAD_REQUEST, e),
    };
    let value = Some(body.to_vec());
    let acquire = query.get("acquire").filter(|s| !s.is_empty());
    let release = query.get("release").filter(|s| !s.is_empty());
    let req = match (acquire, release) {
        (Some(_), Some(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "Conflicting flags: acquire and release",
            )
        }
        (Some(s), None) => LeaseRequest::KvAcquire {
            key,
            session: s.clone(),
            value,
            flags,
            origin: ctx.me_name.clone(),
        },
        (None, Some(s)) => LeaseRequest::KvRelease {
            key,
            session: s.clone(),
            value,
            flags,
        },
        (None, None) => LeaseRequest::KvSet {
            key,
            value,
            flags,
            cas,
        },
    };
    write_bool(ctx, req).await
}

async fn kv_delete(ctx: &HttpCtx, key: String, query: &HashMap<String, String>) -> Resp {
    if query.contains_key("recurse") {
        return text(
            StatusCode::BAD_REQUEST,
            "recursive delete is not served by the litefs-proxy lease endpoint",
        );
    }
    let cas = match parse_u64(query, "cas") {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    write_bool(ctx, LeaseRequest::KvDelete { key, cas }).await
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

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            ),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digit = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (digit(b[i + 1]), digit(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn create_bodies_of_go_and_python_clients() {
        // hashicorp/consul/api CreateNoChecks as LiteFS calls it (no Node without a key prefix).
        let go = br#"{"NodeChecks":[],"Name":"litefs","LockDelay":"1000ms","Behavior":"delete","TTL":"10s"}"#;
        assert_eq!(
            parse_create(go).expect("go"),
            CreateArgs {
                name: "litefs".into(),
                node: None,
                lock_delay_ms: 1000,
                behavior: Behavior::Delete,
                ttl_ms: 10_000
            }
        );
        let py = br#"{"name": "x", "node": "node-2", "lockdelay": "1s", "behavior": "delete", "ttl": "10s"}"#;
        let a = parse_create(py).expect("py");
        assert_eq!((a.node.as_deref(), a.lock_delay_ms), (Some("node-2"), 1000));
        assert_eq!(parse_create(b"").expect("empty").lock_delay_ms, 15_000);
        assert_eq!(
            parse_create(br#"{"LockDelay": 5}"#)
                .expect("n")
                .lock_delay_ms,
            5000
        );
        assert!(parse_create(br#"{"TTL":"100ms"}"#)
            .unwrap_err()
            .contains("Invalid Session TTL"));
        assert!(parse_create(br#"{"Behavior":"keep"}"#).is_err());
    }

    #[test]
    fn uuids_and_url_decoding() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
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
