//! The one-request HTTP/1 client the sim's LiteFS uses for `/promote` → `/handoff` and for
//! its Consul calls: a connection per request (LiteFS's Go client keeps them alive, which
//! nothing on the other side can tell apart from this for these small calls), bounded by
//! a timeout so a frozen peer cannot hang the lease loop forever.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends `method url` with `body`; the status and body of the answer.
pub async fn request(
    method: Method,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    tokio::time::timeout(timeout, send(method, url, body))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn send(method: Method, url: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|_| ClientError::Url(url.into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::Url(url.into()))?
        .clone();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Full::new(body))
        .map_err(|_| ClientError::Url(url.into()))?;
    let result = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
    .await;
    conn.abort();
    result
}
