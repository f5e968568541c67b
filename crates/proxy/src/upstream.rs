//! Sending one request to the local app over a pooled client. A failure says whether the
//! request may have left: only one that surely did not (connect failed) comes back to be
//! sent again. (The primary's proxy is reached by [`crate::forward`].)

use std::{pin::Pin, time::Duration};

use http::{request::Parts, uri::PathAndQuery, Request, Response, Uri, Version};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};

use crate::body::{ClientBody, OutBody};

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, OutBody>,
}

/// Why a send failed.
pub enum SendError {
    /// The connection could not be made; the body is handed back untouched.
    NotSent(Pin<Box<ClientBody>>, String),
    /// The request may have reached the upstream: it must not be sent again.
    MaybeSent(String),
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Upstream {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector(connect_timeout));
        Upstream { client }
    }

    /// Sends `head` + `body` to `base` (scheme and authority; the path comes from `head`).
    /// The head is cloned so a request that never left can be sent again.
    pub async fn send(
        &self,
        base: &Uri,
        head: &Parts,
        body: Pin<Box<ClientBody>>,
        upgrade: &mut Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, SendError> {
        let (out, reclaim) = OutBody::new(body);
        let req = outbound(head, join(base, head.uri.path_and_query()), out);
        match self.client.request(req).await {
            Ok(mut resp) => {
                tunnel_if_switching(&mut resp, upgrade);
                Ok(resp)
            }
            Err(e) => {
                let msg = error_chain(&e);
                // Not awaited: a body still held by a live connection task has left.
                let mut reclaim = reclaim;
                match reclaim.try_recv() {
                    Ok(body) if e.is_connect() => Err(SendError::NotSent(body, msg)),
                    _ => Err(SendError::MaybeSent(msg)),
                }
            }
        }
    }
}

/// Connections to an upstream: TCP_NODELAY, bounded connect time.
pub(crate) fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

fn join(base: &Uri, pq: Option<&PathAndQuery>) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query(pq));
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// A request target in origin form (`/path?query`), as sent on a connection of our own.
pub(crate) fn origin_form(pq: Option<&PathAndQuery>) -> Uri {
    Uri::from(path_and_query(pq))
}

fn path_and_query(pq: Option<&PathAndQuery>) -> PathAndQuery {
    pq.cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The request to send upstream: `head`'s method and headers (cloned, so a request that
/// never left can be sent again), `uri`, HTTP/1.1.
pub(crate) fn outbound<B>(head: &Parts, uri: Uri, body: B) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers.clone();
    req
}

/// After a `101 Switching Protocols`, joins the client's upgraded connection to the
/// upstream's.
pub(crate) fn tunnel_if_switching(resp: &mut Response<Incoming>, upgrade: &mut Option<OnUpgrade>) {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = upgrade.take() {
            let upstream_side = hyper::upgrade::on(resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
