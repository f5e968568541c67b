//! A recording app standing in for Django: remembers every request it got, commits to
//! the LiteFS stand-in before answering a write (as a real app's COMMIT does through
//! FUSE), and offers streaming, upload and upgrade routes.
//!
//! Test headers a request may carry: `x-test-status: <code>` (the answer's status),
//! `x-test-commit: 1` (commit on any method where the database is the primary's, as a GET
//! that saves a session does),
//! `x-test-answer-header: <name>: <value>` (repeatable; added to the answer, e.g.
//! `litefs-replay: primary`), and `x-test-answer-on: <app name>,...` (only those apps add
//! the answer headers; default every app).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{watch, Notify},
};

/// One request as the app saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct AppState {
    pub seen: Mutex<Vec<Seen>>,
    /// Bytes of the current `/upload` body received so far.
    pub upload_progress: watch::Sender<usize>,
    /// Releases the second chunk of `/stream` and the answer of `/slow`.
    pub release: Notify,
    /// Connections to the app open right now.
    pub open: AtomicUsize,
}

/// Counts one app connection in [`AppState::open`] while it lives.
struct Open(Arc<AppState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub name: String,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

type AppBody = BoxBody<Bytes, Infallible>;

impl TestApp {
    /// Starts the app; writes call `node.commit()` before answering.
    pub async fn start(name: &str, node: Option<litefs_sim::Node>) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        Self::start_on(listener, name, node)
    }

    pub fn start_on(listener: TcpListener, name: &str, node: Option<litefs_sim::Node>) -> TestApp {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(AppState::default());
        let task = tokio::spawn({
            let state = state.clone();
            let name = name.to_owned();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (state, name, node) = (state.clone(), name.clone(), node.clone());
                    state.open.fetch_add(1, Ordering::SeqCst);
                    let open = Open(state.clone());
                    tokio::spawn(async move {
                        let _open = open;
                        let svc = service_fn(move |req| {
                            handle(req, state.clone(), name.clone(), node.clone())
                        });
                        // Room for the header-count tests (the proxy's limit is under test).
                        let _ = http1::Builder::new()
                            .max_headers(1000)
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        TestApp {
            addr,
            name: name.to_owned(),
            state,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// Connections to the app open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().expect("lock").len()
    }

    /// Stops accepting (existing connections may linger until they close).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    name: String,
    node: Option<litefs_sim::Node>,
) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/upload" => return Ok(upload(req, state).await),
        "/ws" => {
            state.seen.lock().expect("lock").push(Seen {
                method: req.method().clone(),
                path: path.clone(),
                headers: req.headers().clone(),
                body: Bytes::new(),
            });
            return Ok(upgrade(req));
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let len = body.len();
    state.seen.lock().expect("lock").push(Seen {
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body,
    });
    // Whether the `x-test-answer-*` / `x-test-commit` behaviour applies to this app.
    let this_app = match parts.headers.get("x-test-answer-on") {
        None => true,
        Some(v) => v
            .to_str()
            .is_ok_and(|names| names.split(',').any(|n| n.trim() == name)),
    };
    if let Some(node) = &node {
        // A GET that writes can only commit where the database is writable.
        let commit_anyway = parts.headers.contains_key("x-test-commit") && node.is_primary();
        if is_write(&parts.method) || commit_anyway {
            node.commit();
        }
    }
    let answer_headers: Vec<(String, String)> = if this_app {
        parts
            .headers
            .get_all("x-test-answer-header")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    } else {
        Vec::new()
    };
    if path == "/stream" {
        let mut resp = stream(state);
        if let Ok(v) = http::HeaderValue::from_str(&name) {
            resp.headers_mut().insert("x-app", v);
        }
        for (k, v) in &answer_headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
        return Ok(resp);
    }
    if path == "/slow" {
        state.release.notified().await;
    }
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(StatusCode::OK);
    let text = format!("{name} {} {path} {len}", parts.method);
    let mut resp = Response::builder();
    for (k, v) in &answer_headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    if path == "/hop" {
        // Hop-by-hop headers a proxy must not pass on.
        resp = resp
            .header("connection", "x-conn-secret")
            .header("x-conn-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic");
    }
    let resp = resp
        .status(status)
        .header("x-app", name)
        .header("set-cookie", "app-session=abc; Path=/")
        .body(Full::new(Bytes::from(text)).boxed())
        .expect("response");
    Ok(resp)
}

/// Counts body bytes as they arrive, so a test can see the upload stream.
async fn upload(req: Request<hyper::body::Incoming>, state: Arc<AppState>) -> Response<AppBody> {
    let (parts, mut body) = req.into_parts();
    let mut total = 0usize;
    let mut sum: u64 = 0;
    state.upload_progress.send_replace(0);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            sum = data
                .iter()
                .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
            state.upload_progress.send_replace(total);
        }
    }
    state.seen.lock().expect("lock").push(Seen {
        method: parts.method,
        path: "/upload".into(),
        headers: parts.headers,
        body: Bytes::new(),
    });
    Response::new(Full::new(Bytes::from(format!("{total} {sum}"))).boxed())
}

/// A chunked response: the first piece at once, the second after `release`.
fn stream(state: Arc<AppState>) -> Response<AppBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
            .await;
        state.release.notified().await;
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
            .await;
    });
    let body = StreamBody::new(tokio_stream(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .expect("response")
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Switches protocols and echoes bytes back, upper-cased, until the peer closes.
fn upgrade(mut req: Request<hyper::body::Incoming>) -> Response<AppBody> {
    if !req.headers().contains_key("upgrade") {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(b"upgrade required")).boxed())
            .expect("response");
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let reply = buf[..n].to_ascii_uppercase();
                if io.write_all(&reply).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()).boxed())
        .expect("response")
}
