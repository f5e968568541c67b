//! The primary's side of replication, LiteFS's `POST /stream`: a connected replica gets
//! the whole database at once (which resyncs a diverged one), then every new position as
//! it is committed, a heartbeat each second while idle, and, on a handoff, the lease ID
//! in a last frame. The stream ends the moment this node stops being primary, as LiteFS
//! ties it to its primary context.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::dbfile;
use crate::event::now_ms;
use crate::node::{Node, Role};
use crate::serve::{text, Body, Stop};
use crate::wire::{self, Header};

/// Answers a replica's `POST /stream`.
pub(crate) fn serve_stream(node: &Node, req: &Request<Incoming>, stop: Stop) -> Response<Body> {
    let replica = req
        .headers()
        .get(wire::NODE_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(wire::parse_node_id);
    let Some(replica) = replica else {
        return text(StatusCode::BAD_REQUEST, "invalid node id\n");
    };
    if replica == node.id() {
        return text(StatusCode::BAD_REQUEST, "cannot connect to self\n");
    }
    if !node.is_primary() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "context canceled\n");
    }
    tracing::info!(node = %node.hostname(), replica = %wire::format_node_id(replica), "litefs-sim: stream connected");
    let handoff = node.subscribe_stream(replica);
    let state = Streaming {
        node: node.clone(),
        replica,
        role: node.watch_role(),
        txid: node.watch_txid(),
        handoff,
        stop,
        sent: None,
        ready: false,
        done: false,
        next_heartbeat: Instant::now(),
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), s))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(StreamBody::new(body).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

struct Streaming {
    node: Node,
    replica: u64,
    role: watch::Receiver<Role>,
    txid: watch::Receiver<u64>,
    handoff: mpsc::UnboundedReceiver<String>,
    stop: Stop,
    /// The position last sent.
    sent: Option<(u64, u64)>,
    ready: bool,
    done: bool,
    next_heartbeat: Instant,
}

impl Streaming {
    /// The next frame's bytes; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            // A handoff is looked at first: the primary steps down right after sending it.
            if let Ok(lease_id) = self.handoff.try_recv() {
                return self.hand_off(lease_id).await;
            }
            if !self.role.borrow_and_update().is_primary || *self.stop.borrow() {
                return self.end(Header::End);
            }
            if let Some(frame) = self.changes().await {
                return Some(frame);
            }
            if !self.ready {
                self.ready = true;
                return Some(wire::encode(&Header::Ready, b""));
            }
            if Instant::now() >= self.next_heartbeat {
                self.next_heartbeat = Instant::now() + wire::HEARTBEAT;
                let hb = Header::Heartbeat {
                    timestamp_ms: now_ms(),
                };
                return Some(wire::encode(&hb, b""));
            }
            let mut heartbeat = tokio::time::interval_at(self.next_heartbeat, wire::HEARTBEAT);
            heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
            tokio::select! {
                biased;
                lease = self.handoff.recv() => match lease {
                    Some(lease_id) => return self.hand_off(lease_id).await,
                    None => return self.end(Header::End),
                },
                changed = self.role.changed() => if changed.is_err() { return self.end(Header::End) },
                changed = self.txid.changed() => if changed.is_err() { return self.end(Header::End) },
                _ = self.stop.changed() => {}
                _ = heartbeat.tick() => {}
            }
        }
    }

    /// Whatever was committed before the handoff, then the handoff frame; the stream ends.
    async fn hand_off(&mut self, lease_id: String) -> Option<Bytes> {
        let mut out = self.changes().await.map(|f| f.to_vec()).unwrap_or_default();
        out.extend_from_slice(&wire::encode(&Header::Handoff { lease_id }, b""));
        self.end_quietly();
        Some(Bytes::from(out))
    }

    /// An `ltx` frame when the position moved since the last one sent.
    async fn changes(&mut self) -> Option<Bytes> {
        let pos = self.node.pos();
        if self.sent == Some(pos) || (self.sent.is_none() && pos.0 == 0) {
            return None;
        }
        let db = self.node.db_path();
        let bytes = tokio::task::spawn_blocking(move || dbfile::snapshot_bytes(&db))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        let bytes = match bytes {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), node = %self.node.hostname(), "litefs-sim: snapshot for the stream failed");
                return None;
            }
        };
        self.sent = Some(pos);
        let header = Header::Ltx {
            txid: pos.0,
            checksum: pos.1,
            size: bytes.len() as u64,
            timestamp_ms: now_ms(),
        };
        Some(wire::encode(&header, &bytes))
    }

    fn end(&mut self, last: Header) -> Option<Bytes> {
        self.end_quietly();
        Some(wire::encode(&last, b""))
    }

    fn end_quietly(&mut self) {
        self.done = true;
        self.node.unsubscribe_stream(self.replica);
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.node.unsubscribe_stream(self.replica);
        tracing::info!(node = %self.node.hostname(), replica = %wire::format_node_id(self.replica), "litefs-sim: stream disconnected");
    }
}
