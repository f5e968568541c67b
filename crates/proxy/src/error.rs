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
    /// The client's request is malformed (e.g. two `Host` headers, or none in HTTP/1.1).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body was malformed or cut off; no upstream is to blame.
    #[error("bad request body: {0}")]
    ClientBody(String),
    /// No byte of the client's request body arrived for `body_read_timeout`.
    #[error("request body stalled: no byte for {0:?}")]
    BodyTimeout(Duration),
    /// A method the proxy does not serve here (`CONNECT`; non-GET/HEAD on its endpoints).
    /// `allow` is the `Allow` header, when there is a method that is served.
    #[error("method {method} not allowed")]
    MethodNotAllowed {
        method: http::Method,
        allow: Option<&'static str>,
    },
    /// The client may not use this endpoint (`admin_allow`).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// More than `max_in_flight` requests at once on this node.
    #[error("overloaded: {0} requests in flight")]
    Overloaded(usize),
    /// Internal: a forwarded request came back around.
    #[error("forwarding loop detected after {0} hops")]
    Loop(u8),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::App(_) | ProxyError::Primary(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoPrimary(_)
            | ProxyError::NotReplicated(..)
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
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
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Overloaded(_) => "overloaded",
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
        } else if let ProxyError::MethodNotAllowed {
            allow: Some(allow), ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
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
