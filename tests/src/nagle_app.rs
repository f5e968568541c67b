//! An app that answers every keep-alive GET in two writes, head then body, on a socket
//! without TCP_NODELAY, as Python's `http.server` and Django's `runserver` do: behind a
//! pooled connection whose receiver delays ACKs, the body waits (Nagle) for the ACK of the
//! head. For `tests/tests/nagle.rs` and the bench's scenario 7.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Starts the app on a loopback port; it serves until the runtime ends.
pub async fn start() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    Ok(addr)
}

async fn serve(mut s: TcpStream) {
    let body = b"{\"ok\":true}\n";
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head at a time (GETs: no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        buf.drain(..end);
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
            return;
        }
    }
}
