//! The proxy's own endpoints under the prefix (default `/litefs`): `health`
//! (LiteFS-compatible), `status` (JSON) and `metrics` (Prometheus text).

use http::{header, HeaderValue, Response, StatusCode};

use crate::{
    config::TxidSource, error::text, handler::Shared, position::read_lag_ms, primary::Primary,
    txid::TxId, ProxyBody,
};

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

/// The local TXID as the position file says now. The watcher re-reads the file only every
/// 100 ms while idle (and the events source publishes only what LiteFS sends), so a status
/// asked right after a write, on a primary just promoted, showed the TXID before the one
/// the write minted. With the pos-file source the reading is also published, as the
/// poller's would be.
fn fresh_txid(s: &Shared) -> TxId {
    let read = match s.cfg.txid_source {
        TxidSource::PosFile => s.txid.refresh_now(),
        TxidSource::Events => s.txid.read_position(),
    };
    match read {
        Ok(Some(pos)) => pos.txid,
        Ok(None) | Err(_) => s.txid.current(),
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
        "txid": fresh_txid(s).to_string(),
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
        .set(i64::try_from(fresh_txid(s).0).unwrap_or(i64::MAX));
    m.replication_lag.set(lag_ms(s) as f64 / 1000.0);
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

    /// Status and metrics show the position file's TXID at the moment they are asked, not
    /// the watcher's last reading (no watcher runs here: without a fresh read both would
    /// say 1 for good), with either TXID source.
    #[tokio::test]
    async fn status_and_metrics_show_the_txid_the_position_file_holds_now() {
        for source in [TxidSource::PosFile, TxidSource::Events] {
            let dir = tempfile::tempdir().unwrap();
            let pos = dir.path().join("db.sqlite3-pos");
            std::fs::write(&pos, "0000000000000001/0000000000000001\n").unwrap();
            let cfg = ProxyConfig {
                mount: dir.path().to_path_buf(),
                txid_source: source,
                ..ProxyConfig::default()
            };
            let (_ptx, prx) = watch::channel(Primary::Local);
            let p = Proxy::new(cfg, prx).unwrap();
            let s: serde_json::Value = serde_json::from_str(&get(&p, "/status").await.1).unwrap();
            assert_eq!(s["txid"], "0000000000000001", "{source:?}");
            // A write on this node minted 2.
            std::fs::write(&pos, "0000000000000002/00000000000000f2\n").unwrap();
            let s: serde_json::Value = serde_json::from_str(&get(&p, "/status").await.1).unwrap();
            assert_eq!(s["txid"], "0000000000000002", "{source:?}");
            let m = get(&p, "/metrics").await.1;
            assert!(
                m.lines()
                    .any(|l| l.starts_with("litefs_proxy_local_txid") && l.ends_with(" 2")),
                "{source:?}: {m}"
            );
            // An unreadable file: the last good value.
            std::fs::write(&pos, "garbage").unwrap();
            let s: serde_json::Value = serde_json::from_str(&get(&p, "/status").await.1).unwrap();
            let want = match source {
                TxidSource::PosFile => "0000000000000002",
                TxidSource::Events => "0000000000000001",
            };
            assert_eq!(s["txid"], want, "{source:?}");
        }
    }

    /// LiteFS's `.lag` is exported in seconds when scraped; absent, 0.
    #[tokio::test]
    async fn metrics_export_the_replication_lag() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProxyConfig {
            mount: dir.path().to_path_buf(),
            ..ProxyConfig::default()
        };
        let (_ptx, prx) = watch::channel(Primary::Unknown);
        let p = Proxy::new(cfg, prx).unwrap();
        let lag = |m: String| {
            m.lines()
                .find_map(|l| l.strip_prefix("litefs_proxy_replication_lag_seconds "))
                .map(str::to_owned)
        };
        assert_eq!(lag(get(&p, "/metrics").await.1).as_deref(), Some("0.0"));
        std::fs::write(dir.path().join(".lag"), "+000001500\n").unwrap();
        assert_eq!(lag(get(&p, "/metrics").await.1).as_deref(), Some("1.5"));
    }
}
