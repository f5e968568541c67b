//! Sending one request to an upstream (the local app or the primary's proxy) over a
//! pooled client. A failure says whether the request may have left: only one that
//! surely did not (connect failed) comes back to be sent again.

use std::time::Duration;

use http::{request::Parts, uri::PathAndQuery, HeaderValue, Request, Response, Uri, Version};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};

use crate::{body::OutBody, connector::Connector};

#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, OutBody>,
    /// Unpooled only: the client for protocol upgrades. A WebSocket tunnel's connection
    /// ends with a FIN, never a reset, which could drop the tunnel's last bytes.
    upgrades: Option<Client<Connector, OutBody>>,
}

/// Why a send failed.
pub enum SendError {
    /// The connection could not be made; the body is handed back untouched.
    NotSent(Incoming, String),
    /// The request may have reached the upstream: it must not be sent again.
    MaybeSent(String),
}

impl Upstream {
    /// `pooled`: keep idle connections for reuse. Without it every request opens its own
    /// connection, so a peer that died shows as connect-refused (never sent, safe to hold
    /// and retry) instead of a reset on a reused connection, where the request may have
    /// been read and must not be sent again. Used for the primary's proxy, which can die
    /// at any moment during a failover. Such connections ask the upstream to close
    /// (`Connection: close`) and are closed with a reset (see [`Connector`]), so that
    /// neither side is left in TIME_WAIT on this node's ports.
    pub fn new(connect_timeout: Duration, pooled: bool) -> Upstream {
        let build = |reset_on_close: bool| {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(connect_timeout));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(if pooled { 256 } else { 0 })
                .build(Connector {
                    http,
                    reset_on_close,
                })
        };
        Upstream {
            client: build(!pooled),
            upgrades: (!pooled).then(|| build(false)),
        }
    }

    /// Sends `head` + `body` to `base` (scheme and authority; the path comes from `head`).
    /// The head is cloned so a request that never left can be sent again.
    pub async fn send(
        &self,
        base: &Uri,
        head: &Parts,
        body: Incoming,
        upgrade: &mut Option<OnUpgrade>,
    ) -> Result<Response<Incoming>, SendError> {
        let (out, reclaim) = OutBody::new(body);
        let mut req = Request::new(out);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = join(base, head.uri.path_and_query());
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers.clone();
        let client = match (&self.upgrades, upgrade.is_some()) {
            (Some(upgrades), true) => upgrades,
            (Some(_), false) => {
                // The upstream closes first; this side's reset then finds nothing to linger.
                req.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                &self.client
            }
            (None, _) => &self.client,
        };
        match client.request(req).await {
            Ok(mut resp) => {
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = upgrade.take() {
                        let upstream_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(client_side, upstream_side));
                    }
                }
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

fn join(base: &Uri, pq: Option<&PathAndQuery>) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
