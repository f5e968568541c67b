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

pub(super) async fn kv_get(ctx: &HttpCtx, key: &str, query: &HashMap<String, String>) -> Resp {
    if let Err(r) = consistent(ctx, query).await {
        return r;
    }
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
    write_bool(ctx, req).await
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
