//! The lease keeper: a node's lease endpoint (`lease_addr`) served by a process of its own,
//! so that it outlives a crash of the node's litefs-proxy. LiteFS's handoff needs it: the old
//! primary renews its session once more, through its own node's endpoint, before it passes
//! the session to the new leader's LiteFS; with the endpoint dead that renewal fails, the
//! handoff is refused, and the lock moves only when the old session lapses.
//!
//! The keeper holds no state. Every request LiteFS sends it goes, as it came, over the signed
//! RPC transport (`/raft/lease-http`) to the node's own election first, which answers it as
//! its endpoint always did; only when that election does not answer at all (its process is
//! gone: connection refused) is the request sent to the other voters in turn, each of which
//! answers it as its own node's LiteFS's request would be answered, for this node (sessions
//! stay this node's, an `acquire` still needs this node to lead). A local election that
//! answers, whatever it answers (a cut-off node's "session gone"), is never bypassed.
//!
//! Every answer comes within a bound: LiteFS blocks on a renewal, acting as primary all the
//! while, so a renewal nobody answers in time is answered "session gone" (LiteFS stops being
//! primary at once).
//!
//! While its litefs-proxy is gone, the keeper also reports its node's LiteFS position to the
//! leader ([`report_position`]), as the proxy's reporter did: the old primary's LiteFS is a
//! replica of the new one right after its handoff, and a write waiting for `sync_replicas`
//! can count it instead of waiting for the third node's LiteFS, which reconnects only after
//! LiteFS's 1 s retry delay.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http::{handle_forwarded, read_body, renew_answer_within, text, token_ok, HttpCtx};
use super::WRITE_TIMEOUT;
use crate::auth::Auth;
use crate::config::{node_num, Config, Peer};
use crate::faults::Faults;
use crate::network::{RpcClient, TransportError};
use crate::position::Position;
use crate::reports::{KeeperReport, KeeperReportAck, REPORT_EVERY};
use crate::rpc_server::{PATH_KEEPER_POSITION, PATH_LEASE_HTTP};
use crate::types::NodeId;

type Resp = Response<Full<Bytes>>;

/// The keeper's own path: who it keeps the endpoint for (LiteFS never asks it).
pub const PATH_WHO: &str = "/litefs-proxy/keeper";

/// A request as LiteFS sent it to the keeper (the body of `/raft/lease-http`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Base64.
    pub body: String,
    /// How long a renewal may wait to be committed before it is answered "session gone"
    /// (the endpoint's own [`renew_answer_within`] when not given).
    #[serde(default)]
    pub renew_within_ms: Option<u64>,
}

/// How long a renewal the keeper forwards to the other voters (its own election is gone)
/// may wait, for the election of a new leader that grants it (the old primary must still
/// hold its lease to hand it over). Safe because an unanswered one is answered "session
/// gone", on which LiteFS stops being primary at once: it asks TTL/2 after its last granted
/// renewal, so it stops by then + this, before the lock may move (last grant +
/// `believed_ms(ttl)` + `CLOCK_MARGIN_MS`, at least 1.8 s for the shortest TTL, 1 s).
pub const ORPHAN_RENEW_WITHIN: Duration = Duration::from_millis(800);
/// How many times a request whose connection to the local election broke is sent again.
const LOCAL_RETRIES: usize = 4;
/// On top of a forwarded wait, for the hops.
const HOPS: Duration = Duration::from_millis(100);

/// The endpoint's answer, to be sent to LiteFS as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Base64.
    pub body: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// On the receiving node: answers a keeper's forwarded request for node `origin`.
pub(crate) async fn answer(ctx: &HttpCtx, origin: &str, req: Forwarded) -> Answer {
    // Never longer than the keeper may ask for.
    let within = req
        .renew_within_ms
        .map(|ms| Duration::from_millis(ms).min(ORPHAN_RENEW_WITHIN));
    let resp = match decode(&req) {
        Ok((method, uri, body)) => handle_forwarded(ctx, origin, within, &method, &uri, body).await,
        Err(e) => text(StatusCode::BAD_REQUEST, e),
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body: b64().encode(body),
    }
}

fn decode(req: &Forwarded) -> Result<(Method, http::Uri, Bytes), String> {
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| format!("method: {e}"))?;
    let uri: http::Uri = req.uri.parse().map_err(|e| format!("uri: {e}"))?;
    let body = b64().decode(&req.body).map_err(|e| format!("body: {e}"))?;
    Ok((method, uri, Bytes::from(body)))
}

/// What the keeper's handler needs.
struct Keeper {
    client: RpcClient,
    me: NodeId,
    me_name: String,
    /// The other voters, in the order tried.
    others: Vec<NodeId>,
    /// The peer that answered last when the local election did not (tried first next time).
    last_good: AtomicU64,
    token: Option<String>,
    /// The local election's bound on a renewal.
    renew_within: Duration,
}

/// The keeper's RPC client (signing as its node), its node and the other voters.
fn rpc_client(cfg: &Config, local_proxy_port: u16) -> (RpcClient, NodeId, Vec<NodeId>) {
    let peers: BTreeMap<NodeId, Peer> = cfg
        .resolve_peers(local_proxy_port)
        .into_iter()
        .map(|p| (node_num(&p.id), p))
        .collect();
    let me = node_num(&cfg.node_id);
    let others = peers.keys().copied().filter(|&id| id != me).collect();
    let client = RpcClient::new(
        cfg.node_id.clone(),
        Arc::new(peers),
        Auth::new(cfg.cluster_secret.as_deref()),
        Faults::default(),
        // A voter that does not accept a connection within this is skipped.
        Duration::from_millis(100),
    );
    (client, me, others)
}

/// Serves `cfg.lease_addr` (already bound: `listener`) for node `cfg.node_id` until
/// `shutdown` completes.
pub async fn serve(
    cfg: &Config,
    local_proxy_port: u16,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (client, me, others) = rpc_client(cfg, local_proxy_port);
    let keeper = Keeper {
        client,
        me,
        me_name: cfg.node_id.clone(),
        others,
        last_good: AtomicU64::new(me),
        token: cfg.lease_token.clone(),
        renew_within: renew_answer_within(cfg.election_timeout_min),
    };
    crate::http_server::serve(
        "lease-keeper",
        listener,
        Arc::new(keeper),
        |k: Arc<Keeper>, req| async move { handle(&k, req).await },
        shutdown,
    )
    .await;
}

/// How long LiteFS may wait for this request's answer. A renewal: what the endpoint allows
/// (`renew_within`, [`ORPHAN_RENEW_WITHIN`] from the others) and a little for the hops;
/// anything else: a write's bound, plus a blocking query's `wait`.
fn budget(uri: &http::Uri, renew_within: Duration) -> Duration {
    if uri.path().starts_with("/v1/session/renew/") {
        return renew_within + HOPS;
    }
    let wait = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(super::http::parse_duration_ms)
        .map(Duration::from_millis)
        .unwrap_or_default()
        .min(Duration::from_secs(600));
    let blocking = uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.starts_with("index="));
    let wait = if blocking && wait.is_zero() {
        Duration::from_secs(300)
    } else {
        wait
    };
    WRITE_TIMEOUT + wait + Duration::from_secs(1)
}

async fn handle(k: &Keeper, req: Request<Incoming>) -> Resp {
    if req.method() == Method::GET && req.uri().path() == PATH_WHO {
        let who = serde_json::json!({ "node": k.me_name, "pid": std::process::id() });
        return text(StatusCode::OK, who.to_string());
    }
    if !token_ok(k.token.as_deref(), req.headers(), req.uri().query()) {
        return text(
            StatusCode::FORBIDDEN,
            "Permission denied: ACL token missing or wrong",
        );
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut fwd = Forwarded {
        method: parts.method.as_str().to_owned(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        body: b64().encode(&body),
        renew_within_ms: None,
    };
    let path = parts.uri.path();
    // The local election, whatever it answers (a cut-off node's "session gone" included);
    // the others only if it is gone.
    let ask_local = || {
        k.client.call::<_, Answer>(
            k.me,
            PATH_LEASE_HTTP,
            &fwd,
            budget(&parts.uri, k.renew_within),
        )
    };
    let mut local = ask_local().await;
    // The connection broke mid-request: the process may have died with the request (a
    // kill -9 during a renewal). Ask again until a new connection tells: refused (gone: the
    // others answer) or an answer; the pool's other idle connections to the dead process
    // fail the same way first. Not for a session create, which the dead election may have
    // proposed already (LiteFS creates again on an error).
    let mut retries = 0;
    while matches!(local, Err(TransportError::Send { .. }))
        && !is_create(&parts.method, path)
        && retries < LOCAL_RETRIES
    {
        retries += 1;
        local = ask_local().await;
    }
    match local {
        Ok(a) => return to_response(a),
        Err(TransportError::Connect { .. }) => {}
        Err(e) => {
            tracing::info!(path, error = %e, "lease request unanswered by the local election");
            return unanswered(path);
        }
    }
    let deadline = tokio::time::Instant::now() + budget(&parts.uri, ORPHAN_RENEW_WITHIN);
    fwd.renew_within_ms = Some(ORPHAN_RENEW_WITHIN.as_millis() as u64);
    let first = k.last_good.load(Ordering::Relaxed);
    let mut order: Vec<NodeId> = k.others.iter().copied().filter(|&o| o == first).collect();
    order.extend(k.others.iter().copied().filter(|&o| o != first));
    let mut why = Vec::new();
    for target in order {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match k
            .client
            .call::<_, Answer>(target, PATH_LEASE_HTTP, &fwd, left)
            .await
        {
            Ok(a) => {
                k.last_good.store(target, Ordering::Relaxed);
                tracing::debug!(path, via = %k.client.peer(target).map_or("?", |p| p.id.as_str()), status = a.status, "lease request answered by another voter (the local election is gone)");
                return to_response(a);
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    tracing::info!(path, errors = ?why, "lease request unanswered by every voter");
    unanswered(path)
}

/// `PUT /v1/session/create`: the one request LiteFS sends that is not safe to send twice.
fn is_create(method: &Method, path: &str) -> bool {
    method == Method::PUT && path == "/v1/session/create"
}

/// The answer when nobody answered. A renewal: "session gone", never an error, on which
/// LiteFS would go on acting as primary for another second, past what the lock accounts
/// for; it stops now instead. Anything else: Consul's 500.
fn unanswered(path: &str) -> Resp {
    match path.strip_prefix("/v1/session/renew/") {
        Some(id) => text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader"),
    }
}

fn to_response(a: Answer) -> Resp {
    let body = b64().decode(&a.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in a.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            // hyper sets the framing headers for the body it sends.
            if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
                r.headers_mut().append(k, v);
            }
        }
    }
    r
}

/// How long a position report may take.
const REPORT_TIMEOUT: Duration = Duration::from_millis(300);
/// After a round in which no voter kept the report (no leader yet), the next one waits this.
const REPORT_RETRY: Duration = Duration::from_millis(20);

/// Runs until dropped (the keeper runs it while its litefs-proxy is gone): reports this
/// node's LiteFS position, as `position` follows it, to whichever voter leads, whenever it
/// moves and every [`REPORT_EVERY`]. The receiver counts it for this node (the signed sender)
/// in its own term, as it counts a probed position.
pub async fn report_position(
    cfg: &Config,
    local_proxy_port: u16,
    mut position: watch::Receiver<Option<Position>>,
) {
    let (client, _me, others) = rpc_client(cfg, local_proxy_port);
    let mut leader: Option<NodeId> = None;
    let mut last: Option<(Position, tokio::time::Instant)> = None;
    loop {
        let pos = *position.borrow_and_update();
        let due =
            pos.filter(|p| last.map_or(true, |(q, at)| q != *p || at.elapsed() >= REPORT_EVERY));
        if let Some(p) = due {
            let report = KeeperReport { position: p };
            // The leader last heard of first, then the others; a refusal names the leader.
            let mut hint = leader;
            let mut rest = others.clone().into_iter();
            let mut tried = Vec::new();
            last = None;
            while let Some(target) = hint.take().or_else(|| rest.next()) {
                if tried.contains(&target) || !others.contains(&target) {
                    continue;
                }
                tried.push(target);
                match client
                    .call::<_, KeeperReportAck>(
                        target,
                        PATH_KEEPER_POSITION,
                        &report,
                        REPORT_TIMEOUT,
                    )
                    .await
                {
                    Ok(a) if a.kept => {
                        leader = Some(target);
                        last = Some((p, tokio::time::Instant::now()));
                        break;
                    }
                    Ok(a) => hint = a.leader,
                    Err(e) => tracing::debug!(error = %e, "keeper: position report failed"),
                }
            }
            if last.is_none() {
                leader = None;
                tokio::time::sleep(REPORT_RETRY).await;
                continue;
            }
        }
        tokio::select! {
            r = position.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}
