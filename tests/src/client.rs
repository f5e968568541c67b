//! A minimal HTTP/1.1 client over a fresh connection per request, so tests control
//! exactly what is sent (headers, streamed bodies, upgrades).

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type ReqBody = BoxBody<Bytes, Infallible>;

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` on a new connection and returns the response head with its body unread.
pub async fn send_streaming(
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> anyhow::Result<Response<Incoming>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender.send_request(req).await?)
}

/// Sends `req` and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<ReqBody>) -> anyhow::Result<Answer> {
    let resp = send_streaming(addr, req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A request builder with Host set, as every real client does.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test")
}

pub fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into()).boxed()
}

pub fn empty() -> ReqBody {
    full(Bytes::new())
}

/// GET `path` with extra headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
    let mut b = request("GET", path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(empty())?).await
}

/// POST `body` to `path` with extra headers.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Answer> {
    let mut b = request("POST", path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(full(body.to_owned()))?).await
}

/// The `litefs-txid` value from a response's Set-Cookie, if any.
pub fn minted(a: &Answer) -> Option<String> {
    a.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("litefs-txid="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned())
}
