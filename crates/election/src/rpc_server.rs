//! The incoming half of the RPC transport: our own hyper listener on `raft_addr`. It checks the
//! MAC, caps bodies, times out slow clients, and hands each request to openraft. Nothing a
//! stranger sends can crash it: every failure is a 4xx/5xx answer or a closed connection.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::auth::{now_ms, Auth, FROM_HEADER};
use crate::faults::Faults;
use crate::handover::{self, HandoverCtx, TimeoutNowRequest};
use crate::lease::{self, state::LeaseRequest};
use crate::reports::{KeeperReport, KeeperReportAck, PositionReport, ReportTable};
use crate::status::StatusCell;
use crate::types::{Raft, TypeConfig};

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_TIMEOUT_NOW: &str = "/raft/timeout-now";
/// A follower forwards a lease write to the leader (answer: `lease::ProposeOutcome`).
pub const PATH_LEASE: &str = "/raft/lease";
/// A follower asks the leader for its read index before answering a lease read (answer:
/// `lease::http::ReadIndex`).
pub const PATH_READ_INDEX: &str = "/raft/read-index";
/// A node's lease keeper forwards a request its LiteFS sent to `lease_addr`, as it came
/// (`lease::keeper::Forwarded`, answer: `lease::keeper::Answer`).
pub const PATH_LEASE_HTTP: &str = "/raft/lease-http";

/// A replica reports its LiteFS position to the leader (answer: `reports::ReportAck`).
pub const PATH_POSITION: &str = "/raft/position";
/// A node's lease keeper reports that node's position while its litefs-proxy is gone
/// (`reports::KeeperReport`, answer: `reports::KeeperReportAck`).
pub const PATH_KEEPER_POSITION: &str = "/raft/keeper-position";
/// A would-be candidate asks before campaigning, a handing-over leader probes positions
/// (`prevote::PreVoteRequest`, answer: `prevote::PreVoteResponse`).
pub const PATH_PRE_VOTE: &str = "/raft/pre-vote";

/// Largest request or response body accepted.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// What the handlers need.
#[derive(Clone)]
pub struct RpcState {
    pub raft: Raft,
    pub auth: Auth,
    pub faults: Faults,
    pub handover: HandoverCtx,
    /// Successful AppendEntries count as contact with a live leader (failover timing).
    pub status: StatusCell,
    /// The lease state: a forwarded renewal is stamped with this leader's handoff window.
    pub lease: lease::LeaseShared,
    /// The leader's table of replicas' position reports.
    pub reports: ReportTable,
    /// The lease endpoint's handlers, for requests a lease keeper forwards.
    pub lease_http: Arc<lease::http::HttpCtx>,
}

/// Serve Raft RPCs on `listener` until `shutdown` completes; then every open connection is
/// dropped at once (a stopped node must fall silent, not linger on keep-alive connections).
pub async fn serve(listener: TcpListener, state: RpcState, shutdown: impl Future<Output = ()>) {
    crate::http_server::serve(
        "raft",
        listener,
        Arc::new(state),
        |state: Arc<RpcState>, req| async move { handle(&state, req).await },
        shutdown,
    )
    .await;
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(b) => {
            let mut r = Response::new(Full::new(Bytes::from(b)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encode: {e}")),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))
}

async fn handle(state: &RpcState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    if ![
        PATH_APPEND,
        PATH_VOTE,
        PATH_SNAPSHOT,
        PATH_TIMEOUT_NOW,
        PATH_LEASE,
        PATH_LEASE_HTTP,
        PATH_READ_INDEX,
        PATH_POSITION,
        PATH_KEEPER_POSITION,
        PATH_PRE_VOTE,
    ]
    .contains(&path.as_str())
    {
        return text(StatusCode::NOT_FOUND, "no such rpc");
    }
    let from = req
        .headers()
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !from.is_empty() && state.faults.is_blocked(&from) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "blocked by fault injection",
        );
    }
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(
        crate::http_server::BODY_TIMEOUT,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body too slow"),
        Ok(Err(e)) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}")),
        Ok(Ok(c)) => c.to_bytes(),
    };
    if let Err(e) = state.auth.verify(&path, &parts.headers, &body, now_ms()) {
        let n = state
            .status
            .counters()
            .rpc_rejected
            .fetch_add(1, Ordering::Relaxed);
        // Rate-limited: a stranger hammering the port must not flood the log.
        if n % 100 == 0 {
            tracing::warn!(path, from, error = %e, rejected_total = n + 1, "rejected unauthenticated raft rpc");
        } else {
            tracing::debug!(path, from, error = %e, "rejected unauthenticated raft rpc");
        }
        return text(StatusCode::UNAUTHORIZED, e.to_string());
    }
    match path.as_str() {
        PATH_VOTE => match decode(&body) {
            Ok(rpc) => json(&state.raft.vote(rpc).await),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_APPEND => match decode(&body) {
            Ok::<AppendEntriesRequest<TypeConfig>, _>(rpc) => {
                let leader = rpc.vote.leader_id().voted_for();
                let res = state.raft.append_entries(rpc).await;
                if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    if let Some(p) = leader.and_then(|l| state.handover.peers.get(&l)) {
                        state.status.leader_contact(&p.id, Instant::now());
                    }
                }
                json(&res)
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_SNAPSHOT => match decode(&body) {
            Ok(rpc) => json(&state.raft.install_snapshot(rpc).await),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_LEASE => match decode::<LeaseRequest>(&body) {
            Ok(req) => {
                json(&lease::propose_local(&state.raft, state.handover.me, &state.lease, req).await)
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_LEASE_HTTP => match decode::<lease::keeper::Forwarded>(&body) {
            // A keeper speaks for its own node only: the signed `from`.
            Ok(req) if state.handover.peers.values().any(|p| p.id == from) => {
                json(&lease::keeper::answer(&state.lease_http, &from, req).await)
            }
            Ok(_) => text(StatusCode::FORBIDDEN, format!("{from:?} is not a member")),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_READ_INDEX => json(&lease::http::read_index_local(&state.raft).await),
        PATH_POSITION => match decode::<PositionReport>(&body) {
            Ok(report) => json(&state.reports.on_report(
                &state.raft,
                state.handover.me,
                &state.handover.peers,
                &from,
                report,
            )),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_KEEPER_POSITION => match decode::<KeeperReport>(&body) {
            // For the signed `from`'s own node only (`note` ignores non-members).
            Ok(report) => {
                let me = state.handover.me;
                let ack = state.reports.note(
                    &state.raft,
                    me,
                    &state.handover.peers,
                    &from,
                    report.position,
                );
                let leader = state.raft.metrics().borrow().current_leader;
                json(&KeeperReportAck {
                    kept: ack.kept,
                    leader,
                })
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        PATH_PRE_VOTE => match decode::<crate::prevote::PreVoteRequest>(&body) {
            Ok(req) => json(&crate::prevote::on_pre_vote(&state.handover.pre_vote, req).await),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        _ => match decode::<TimeoutNowRequest>(&body) {
            Ok(rpc) => json(&handover::on_timeout_now(&state.handover, rpc).await),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
    }
}
