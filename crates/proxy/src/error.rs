//! Errors of the request path and the one place they become status codes.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::{headers::ORIGIN_HEADER, ProxyBody};

/// On a 503 for a write that reached the app: `applied-not-replicated`.
pub const WRITE_HEADER: http::HeaderName = http::HeaderName::from_static("litefs-write");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Upstream: the local app refused or failed (it is down or crashed mid-request).
    #[error("app unreachable: {0}")]
    App(String),
    /// Upstream: the primary's proxy failed after the request may have reached it.
    #[error("primary failed: {0}")]
    Primary(String),
    /// No primary could be reached within `primary_redirect_timeout`; safe to retry.
    #[error("no primary available within {0:?}")]
    NoPrimary(Duration),
    /// Downstream-visible: replication did not catch up with the client's token.
    #[error("replica did not reach the requested TXID within {0:?}")]
    ReadTimeout(Duration),
    /// The app applied the write on the primary, but fewer than `sync_replicas` replicas
    /// held it in time: it may not survive a failover. Not safe to retry blindly.
    #[error("write applied on the primary but not replicated to {0} replica(s) within {1:?}")]
    NotReplicated(usize, Duration),
    /// Internal: a forwarded request came back around.
    #[error("forwarding loop detected after {0} hops")]
    Loop(u8),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::App(_) | ProxyError::Primary(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoPrimary(_) | ProxyError::NotReplicated(..) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ReadTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Loop(_) => StatusCode::LOOP_DETECTED,
        }
    }

    /// Metric outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProxyError::App(_) => "app_error",
            ProxyError::Primary(_) => "primary_error",
            ProxyError::NoPrimary(_) => "no_primary",
            ProxyError::ReadTimeout(_) => "read_timeout",
            ProxyError::NotReplicated(..) => "not_replicated",
            ProxyError::Loop(_) => "loop",
        }
    }

    /// A short text response; 503 says when to retry.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let mut resp = text(status, format!("litefs-proxy: {self}\n"));
        resp.headers_mut()
            .insert(ORIGIN_HEADER, HeaderValue::from_static("1"));
        if matches!(self, ProxyError::NotReplicated(..)) {
            // A retry would apply the write twice; say what happened instead.
            resp.headers_mut().insert(
                WRITE_HEADER,
                HeaderValue::from_static("applied-not-replicated"),
            );
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A plain-text response of the proxy's own.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
