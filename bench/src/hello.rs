//! The fast upstream app: answers `hello` to anything. Runs as its own process
//! (`litefs-proxy-bench hello`, multi-threaded) for the throughput runs, and in process
//! when the bench needs to know when each request arrived (stalled reads).

use std::{
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Arrival instants of requests, when the caller wants them.
pub type Stamps = Arc<Mutex<Vec<Instant>>>;

/// Serves `body` (`hello`) on `listener` forever.
pub async fn serve(listener: TcpListener, stamps: Option<Stamps>, body: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stamps = stamps.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                if let Some(s) = &stamps {
                    if let Ok(mut v) = s.lock() {
                        v.push(Instant::now());
                    }
                }
                let body = body.clone();
                async move {
                    // Read the body so the connection stays reusable.
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain")
                            .body(Full::new(body))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `litefs-proxy-bench hello`: binds a loopback port, prints `listening <addr>`, serves.
pub fn main_child() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout();
        writeln!(out, "listening {addr}")?;
        out.flush()?;
        serve(listener, None, Bytes::from_static(b"hello")).await;
        Ok(())
    })
}
