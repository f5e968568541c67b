//! The proxy's own endpoints under the prefix (default `/litefs`): `health`
//! (LiteFS-compatible), `status` (JSON) and `metrics` (Prometheus text).

use http::{header, HeaderValue, Response, StatusCode};

use crate::{error::text, handler::Shared, position::read_lag_ms, primary::Primary, ProxyBody};

/// The one endpoint open to every client whatever `admin_allow` says (load balancers).
pub(crate) const HEALTH: &str = "/health";

pub(crate) fn answer(s: &Shared, rest: &str) -> Response<ProxyBody> {
    match rest {
        HEALTH => health(s),
        "/status" => status(s),
        "/metrics" => metrics(s),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn lag_ms(s: &Shared) -> i64 {
    read_lag_ms(&s.cfg.mount).unwrap_or(0)
}

/// `Some(true/false)` when the server follows the local LiteFS, else `None`.
fn litefs_up(s: &Shared) -> Option<bool> {
    s.litefs_up.as_ref().map(|rx| *rx.borrow())
}

fn health(s: &Shared) -> Response<ProxyBody> {
    if litefs_up(s) == Some(false) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "local LiteFS is down\n");
    }
    let lag = lag_ms(s);
    let max = i64::try_from(s.cfg.max_lag.as_millis()).unwrap_or(i64::MAX);
    if lag > max {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("replication lag {lag}ms exceeds max-lag {max}ms\n"),
        )
    } else {
        text(StatusCode::OK, "OK\n")
    }
}

fn status(s: &Shared) -> Response<ProxyBody> {
    let primary = s.primary.borrow().clone();
    let (primary_node, primary_url) = match &primary {
        Primary::Local => (Some(s.cfg.node_name.clone()), None),
        Primary::Remote { node, url } => (Some(node.clone()), Some(url.to_string())),
        Primary::Unknown => (None, None),
    };
    let mut body = serde_json::json!({
        "node": s.cfg.node_name,
        "role": primary.role(),
        "primary": primary_node,
        "primary_url": primary_url,
        "db": s.cfg.db,
        "txid": s.txid.current().to_string(),
        "lag_ms": lag_ms(s),
        "held_requests": s.metrics.held.get(),
        "waiting_reads": s.metrics.waiting.get(),
        "client_connections": {
            "serving": s.metrics.conns_serving.get(),
            "parked": s.metrics.conns_parked.get(),
        },
    });
    if let (Some(up), Some(obj)) = (litefs_up(s), body.as_object_mut()) {
        obj.insert("litefs".into(), if up { "up" } else { "down" }.into());
    }
    if let (Some(ext), Some(obj)) = (&s.extension, body.as_object_mut()) {
        obj.insert("election".into(), ext.status());
    }
    let mut resp = text(StatusCode::OK, body.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn metrics(s: &Shared) -> Response<ProxyBody> {
    let m = &s.metrics;
    m.local_txid
        .set(i64::try_from(s.txid.current().0).unwrap_or(i64::MAX));
    m.is_primary
        .set(i64::from(*s.primary.borrow() == Primary::Local));
    let mut out = String::with_capacity(4096);
    m.encode(&mut out);
    if let Some(ext) = &s.extension {
        ext.metrics(&mut out);
    }
    out.push_str("# EOF\n");
    let mut resp = text(StatusCode::OK, out);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Proxy, ProxyConfig};
    use http_body_util::BodyExt;
    use tokio::sync::watch;

    async fn get(p: &Proxy, path: &str) -> (StatusCode, String) {
        let resp = answer(&p.inner, path);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Followed and down: health 503 with the reason, status says so; up: 200. Not
    /// followed: no `litefs` key and health as before.
    #[tokio::test]
    async fn health_follows_the_local_litefs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig {
            mount: dir.path().to_path_buf(),
            ..ProxyConfig::default()
        };
        let (_ptx, prx) = watch::channel(Primary::Unknown);
        let plain = Proxy::new(cfg.clone(), prx.clone()).unwrap();
        assert_eq!(get(&plain, "/health").await.0, StatusCode::OK);
        let s: serde_json::Value = serde_json::from_str(&get(&plain, "/status").await.1).unwrap();
        assert!(s.get("litefs").is_none(), "{s}");

        let (up, up_rx) = watch::channel(false);
        let followed = Proxy::new(cfg, prx).unwrap().with_litefs_up(up_rx);
        let (status, body) = get(&followed, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "local LiteFS is down\n");
        let s: serde_json::Value =
            serde_json::from_str(&get(&followed, "/status").await.1).unwrap();
        assert_eq!(s["litefs"], "down");
        up.send_replace(true);
        assert_eq!(
            get(&followed, "/health").await,
            (StatusCode::OK, "OK\n".into())
        );
        let s: serde_json::Value =
            serde_json::from_str(&get(&followed, "/status").await.1).unwrap();
        assert_eq!(s["litefs"], "up");
    }
}
