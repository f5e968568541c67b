//! Consul's KV endpoints: get (with blocking queries), put (plain, CAS, acquire,
//! release), delete.

use super::*;

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

/// The longest a read of a key waits for a lock held by a node that does not lead to move.
const HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// After the key moved away from a node that does not lead: for its new holder to act as
/// primary (a replica that connects before is refused, 503, and retries a second later).
const NEW_HOLDER_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// A read of a key locked by a session of a node that does not lead Raft (an old primary
/// being handed over, dead or cut off, or the reader itself after its handoff or a restart)
/// is answered once the lock moved (at most [`HOLD_MAX`]), a moment after it did: LiteFS
/// asks who the primary is to connect to it, and the old holder is either gone (connection
/// refused) or the reader itself (`cannot connect to self`, facts item 3); either way it
/// would wait out its 1 s retry, during which it is nobody's replica (with sync_replicas,
/// the first write waited for that).
async fn hold_while_a_non_leader_holds(ctx: &HttpCtx, key: &str) {
    let deadline = tokio::time::Instant::now() + HOLD_MAX;
    let mut applied = ctx.shared.subscribe();
    let mut metrics = ctx.raft.metrics();
    let mut held = false;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        let stale = ctx.shared.read(|st| {
            let holder = st.kv.get(key)?.session.as_ref()?;
            let node = crate::config::node_num(&st.sessions.get(holder)?.node);
            Some(leader != Some(node))
        });
        if stale != Some(true) {
            if held {
                tokio::time::sleep(NEW_HOLDER_SETTLE).await;
            }
            return;
        }
        held = true;
        let woke = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                r = applied.changed() => r.is_ok(),
                r = metrics.changed() => r.is_ok(),
            }
        })
        .await;
        if woke != Ok(true) {
            return;
        }
    }
}

pub(super) async fn kv_get(ctx: &HttpCtx, key: &str, query: &HashMap<String, String>) -> Resp {
    if let Err(r) = consistent(ctx, query).await {
        return r;
    }
    hold_while_a_non_leader_holds(ctx, key).await;
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

pub(super) async fn kv_put(
    ctx: &HttpCtx,
    key: String,
    query: &HashMap<String, String>,
    body: Bytes,
) -> Resp {
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
    if let Some(refused) = refused_locally(ctx, query, &req).await {
        return refused;
    }
    write_bool(ctx, req).await
}

/// `false` for an acquire or release that the log would refuse anyway, answered without a
/// Raft write: LiteFS retries a refused lock once a second on every node (create a session,
/// acquire, release, destroy), and each of those refusals was a log entry on every node.
/// Only refusals: anything that could succeed still goes through the log.
async fn refused_locally(
    ctx: &HttpCtx,
    query: &HashMap<String, String>,
    req: &LeaseRequest,
) -> Option<Resp> {
    let refused = json_resp(&json!(false));
    match req {
        LeaseRequest::KvAcquire { key, session, .. } => {
            // An unknown session is Consul's 500 "invalid session", which the log answers.
            if !ctx.shared.read(|st| st.sessions.contains_key(session)) {
                return None;
            }
            // Another node leads: the leader stamps the entry and refuses an acquire that
            // did not arrive at its own endpoint.
            let leader = ctx.raft.metrics().borrow().current_leader;
            if leader.is_some_and(|l| l != ctx.writer.me) {
                tracing::debug!(
                    key,
                    session,
                    "acquire refused locally: this node does not lead"
                );
                return Some(refused);
            }
            // Held by another session that is still valid. A lagging view can only be
            // behind, so this may refuse what the log would grant a moment later (the client
            // retries), never the reverse.
            let now = crate::auth::now_ms();
            let held_by_other = ctx.shared.read(|st| {
                let holder = st.kv.get(key).and_then(|e| e.session.as_ref())?;
                let s = st.sessions.get(holder)?;
                let valid = s.expires_at_ms.map_or(true, |d| d > now.max(st.clock_ms));
                (holder != session && valid).then(|| holder.clone())
            });
            if let Some(holder) = held_by_other {
                tracing::debug!(
                    key,
                    session,
                    holder,
                    "acquire refused locally: held by another session"
                );
                return Some(refused);
            }
            None
        }
        LeaseRequest::KvRelease { key, session, .. } => {
            // Not held by this session once caught up with the leader: nothing to release.
            consistent(ctx, query).await.ok()?;
            let held = ctx.shared.read(|st| {
                st.kv
                    .get(key)
                    .is_some_and(|e| e.session.as_deref() == Some(session.as_str()))
            });
            (!held).then_some(refused)
        }
        _ => None,
    }
}

pub(super) async fn kv_delete(ctx: &HttpCtx, key: String, query: &HashMap<String, String>) -> Resp {
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
