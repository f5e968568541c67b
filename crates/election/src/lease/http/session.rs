//! Consul's session endpoints: create, renew, info/node/list (destroy is a plain write).

use super::*;

/// Session TTL bounds. Consul's default minimum is 10s (its `session_ttl_min`, configurable);
/// 1s here so tests and tight setups can use shorter TTLs.
const MIN_TTL_MS: u64 = 1_000;
const MAX_TTL_MS: u64 = 86_400_000;
/// Consul's default lock-delay when the create request names none.
const DEFAULT_LOCK_DELAY_MS: u64 = 15_000;

pub(super) async fn session_create(ctx: &HttpCtx, body: &[u8]) -> Resp {
    let parsed = match parse_create(body) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let is_member = |n: &str| ctx.peers.values().any(|p| p.id == n);
    let node = match parsed.node {
        Some(n) if n != ctx.me_name && is_member(&n) => {
            // Another member's sessions are made through that member's endpoint, by its
            // own LiteFS: nobody on this host may make sessions in its name.
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission denied: node {n:?} creates its sessions through its own endpoint"
                ),
            );
        }
        Some(n) if is_member(&n) => n,
        other => {
            if let Some(n) = other {
                tracing::debug!(node = %n, owner = %ctx.me_name, "session Node is not a cluster member; owned by the receiving node");
            }
            ctx.me_name.clone()
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
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

/// How long a renewal may take before it is answered "session gone", at least: the
/// election's `election_timeout_min` when longer ([`renew_answer_within`]). LiteFS blocks on
/// a renewal without a timeout, acting as primary all the while; told "gone" it stops at
/// once. It renews TTL/2 after its last granted renewal, so it stops by then + this, which
/// must come before the lock may move (that grant + `believed_ms(ttl)` + `CLOCK_MARGIN_MS`,
/// at least 1.8 s for the shortest TTL, 1 s): [`RENEW_ANSWER_MAX`] keeps it so. A node that is
/// not a leader with a quorum cannot get a renewal committed in time, so its LiteFS steps
/// down by itself.
pub const RENEW_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest a renewal is held, whatever the election's timeouts.
pub const RENEW_ANSWER_MAX: std::time::Duration = std::time::Duration::from_millis(600);

/// [`RENEW_ANSWER_WITHIN`], or `election_timeout_min` when that is longer (a deployment
/// tuned for a loaded machine commits more slowly too), at most [`RENEW_ANSWER_MAX`].
pub fn renew_answer_within(election_timeout_min: std::time::Duration) -> std::time::Duration {
    election_timeout_min.clamp(RENEW_ANSWER_WITHIN, RENEW_ANSWER_MAX)
}

pub(super) async fn session_renew(ctx: &HttpCtx, id: String) -> Resp {
    let req = LeaseRequest::SessionRenew {
        id: id.clone(),
        foreign_ok: false,
    };
    let gone = || {
        text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )
    };
    // No leader known (an election, e.g. a planned handover, takes tens of ms): the write
    // waits for one within the same bound instead of answering "gone" at once, which would
    // make a LiteFS that is about to hand its lease over drop it instead.
    match tokio::time::timeout(ctx.renew_within, ctx.writer.write(req)).await {
        Ok(Ok(LeaseResponse::Renewed(Some(s)))) => json_resp(&json!([session_json(&s)])),
        Ok(Ok(LeaseResponse::Renewed(None))) => gone(),
        Ok(Ok(other)) => unexpected(other),
        Ok(Err(e)) => {
            tracing::info!(session = %id, error = %e, "lease: renewal not committed; answering session gone");
            gone()
        }
        Err(_) => {
            tracing::info!(session = %id, within = ?ctx.renew_within, "lease: renewal not committed in time; answering session gone");
            gone()
        }
    }
}

/// `PUT /v1/session/destroy/<id>`: only this node's own sessions (another node's LiteFS
/// would lose its lease, or its primary status, to anyone on this host).
pub(super) async fn session_destroy(ctx: &HttpCtx, id: String) -> Resp {
    let owner = ctx
        .shared
        .read(|st| st.sessions.get(&id).map(|s| s.node.clone()));
    match owner {
        Some(node) if node != ctx.me_name => text(
            StatusCode::FORBIDDEN,
            format!("Permission denied: session {id} belongs to node {node:?}"),
        ),
        _ => write_bool(ctx, LeaseRequest::SessionDestroy { id }).await,
    }
}

pub(super) async fn session_list(
    ctx: &HttpCtx,
    query: &HashMap<String, String>,
    filter: impl Fn(&Session) -> bool,
) -> Resp {
    if let Err(r) = consistent(ctx, query).await {
        return r;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
