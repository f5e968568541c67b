//! Small HTTP/1.1 client helpers over hyper's connection API: keep-alive senders for load,
//! one-shot requests for control (status polls, writes during failover).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

/// A keep-alive connection; its driver task ends when the sender is dropped.
pub async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench.test");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(body)).expect("request")
}

/// Sends on an open connection and reads the whole response; returns its status.
pub async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<StatusCode> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

/// One request on a fresh connection, bounded by `within`; status and body.
pub async fn once(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
    within: Duration,
) -> Result<(StatusCode, Bytes)> {
    tokio::time::timeout(within, async {
        let mut s = connect(addr).await?;
        s.ready().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    })
    .await
    .context("timed out")?
}

/// `GET /litefs/status` as JSON, if the proxy answers within 500 ms.
pub async fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let req = request(Method::GET, "/litefs/status", &[], Bytes::new());
    let (st, body) = once(addr, req, Duration::from_millis(500)).await.ok()?;
    if !st.is_success() {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// Waits until `GET path` answers 200.
pub async fn wait_ready(addr: SocketAddr, path: &str, within: Duration) -> Result<()> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let req = request(Method::GET, path, &[], Bytes::new());
        if let Ok((st, _)) = once(addr, req, Duration::from_millis(500)).await {
            if st.is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > end {
            anyhow::bail!("{addr}{path} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
