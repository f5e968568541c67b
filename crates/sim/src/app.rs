//! A tiny demo app that stores items in the node's SQLite database and, like an app on
//! LiteFS, can only write on the primary. After each commit it calls
//! [`Node::commit_content`] before it responds, so the TXID has advanced (with a checksum of
//! the database's content, as LiteFS's) before the response can reach a proxy (what LiteFS
//! guarantees through FUSE).
//!
//! Routes: `POST /items` (body = the item's text), `GET /items`, `GET /items/<id>`,
//! `POST /upload` (streams the body, stores its size and hash), `GET /stream?n=&interval_ms=`
//! (an SSE-like response sent in pieces), `GET /health`. Every response carries
//! `x-sim-node` (hostname) and `x-sim-txid` (the node's TXID as it responds).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::event::now_ms;
use crate::node::Node;
use crate::serve::{serve, Body, Stop};

/// Largest item body accepted by `POST /items`.
const MAX_ITEM: usize = 1 << 20;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    node TEXT NOT NULL,
    created_ms INTEGER NOT NULL
)";

#[derive(Serialize)]
struct Item {
    id: i64,
    body: String,
    node: String,
}

#[derive(Serialize)]
struct Created {
    id: i64,
    txid: String,
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fnv64: Option<String>,
}

/// Serves the demo app for `node` until `shutdown` completes (streams then end).
pub async fn serve_demo_app(node: Node, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve("demo-app", listener, shutdown, move |req, stop| {
        let node = node.clone();
        async move {
            let mut resp = route(&node, req, stop).await;
            let h = resp.headers_mut();
            if let Ok(v) = node.hostname().parse() {
                h.insert("x-sim-node", v);
            }
            if let Ok(v) = format!("{:016x}", node.txid()).parse() {
                h.insert("x-sim-txid", v);
            }
            resp
        }
    })
    .await;
}

async fn route(node: &Node, req: Request<Incoming>, stop: Stop) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health" | "/") => text(StatusCode::OK, format!("ok {}\n", node.hostname())),
        (Method::POST, "/items") => {
            let body = match Limited::new(req.into_body(), MAX_ITEM).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            write_item(node, body, None).await
        }
        (Method::POST, "/upload") => {
            let mut body = req.into_body();
            let (mut bytes, mut hash) = (0u64, Fnv64::new());
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            bytes += data.len() as u64;
                            hash.update(&data);
                        }
                    }
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            let digest = format!("{:016x}", hash.0);
            write_item(
                node,
                format!("upload {bytes} bytes fnv64 {digest}"),
                Some((bytes, digest)),
            )
            .await
        }
        (Method::GET, "/items") => {
            let db = node.db_path();
            blocking(move || list_items(&db)).await.map_or_else(
                |e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
                |items| json(StatusCode::OK, &items),
            )
        }
        (Method::GET, p) if p.starts_with("/items/") => {
            let Ok(id) = p["/items/".len()..].parse::<i64>() else {
                return text(StatusCode::NOT_FOUND, "no such item\n".into());
            };
            let db = node.db_path();
            match blocking(move || get_item(&db, id)).await {
                Ok(Some(item)) => json(StatusCode::OK, &item),
                Ok(None) => text(StatusCode::NOT_FOUND, "no such item\n".into()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
            }
        }
        (Method::GET, "/stream") => stream(&query, stop),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Inserts an item, then advances the TXID before answering. On a replica SQLite refuses
/// the write ("attempt to write a readonly database") and the app answers 500, as an app
/// on a LiteFS replica would.
async fn write_item(node: &Node, body: String, upload: Option<(u64, String)>) -> Response<Body> {
    let db = node.db_path();
    let host = node.hostname().to_owned();
    let may_create = node.is_primary();
    let gate = node.clone();
    let inserted = blocking(move || -> anyhow::Result<(i64, u64)> {
        let _writing = gate.app_write();
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if may_create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(&db, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(SCHEMA, [])?;
        tx.execute(
            "INSERT INTO items (body, node, created_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![body, host, now_ms()],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        // The commit hook: position first (the checksum from the database as committed,
        // before another write can land), response second.
        let txid = gate.commit_content();
        Ok((id, txid))
    })
    .await;
    match inserted {
        Ok((id, txid)) => {
            let (bytes, fnv64) = upload.map_or((None, None), |(b, h)| (Some(b), Some(h)));
            json(
                StatusCode::CREATED,
                &Created {
                    id,
                    txid: format!("{txid:016x}"),
                    node: node.hostname().to_owned(),
                    bytes,
                    fnv64,
                },
            )
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
    }
}

fn open_read(db: &Path) -> rusqlite::Result<Option<Connection>> {
    if !db.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(Some(conn))
}

fn is_no_table(e: &rusqlite::Error) -> bool {
    e.to_string().contains("no such table")
}

fn list_items(db: &Path) -> anyhow::Result<Vec<Item>> {
    let Some(conn) = open_read(db)? else {
        return Ok(Vec::new());
    };
    let mut stmt = match conn.prepare("SELECT id, body, node FROM items ORDER BY id") {
        Ok(s) => s,
        Err(e) if is_no_table(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let items = stmt
        .query_map([], |r| {
            Ok(Item {
                id: r.get(0)?,
                body: r.get(1)?,
                node: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(items)
}

fn get_item(db: &Path, id: i64) -> anyhow::Result<Option<Item>> {
    let Some(conn) = open_read(db)? else {
        return Ok(None);
    };
    let found = conn
        .query_row(
            "SELECT id, body, node FROM items WHERE id = ?1",
            [id],
            |r| {
                Ok(Item {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    node: r.get(2)?,
                })
            },
        )
        .optional();
    match found {
        Ok(item) => Ok(item),
        Err(e) if is_no_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `n` pieces (default 5) `interval_ms` apart (default 100), as `text/event-stream`.
fn stream(query: &str, stop: Stop) -> Response<Body> {
    let param = |name: &str, default: u64| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let n = param("n", 5);
    let interval = Duration::from_millis(param("interval_ms", 100));
    let pieces = futures_util::stream::unfold((0u64, stop), move |(i, mut stop)| async move {
        if i >= n || *stop.borrow() {
            return None;
        }
        if i > 0 {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
        let piece = Frame::data(Bytes::from(format!("data: {i}\n\n")));
        Some((Ok(piece), (i + 1, stop)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(pieces).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("worker: {e}"))?
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_string(value).unwrap_or_default();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// FNV-1a, 64 bits: a dependency-free hash for checking an upload arrived intact.
pub struct Fnv64(pub u64);

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64::new()
    }
}
