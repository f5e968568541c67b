//! The cluster as one node sees it: each peer's `/litefs/status`, asked every
//! [`POLL_EVERY`] and summed up as a [`PeerRow`], so `/litefs/status` can list every peer
//! (up or not, with the time it last answered) and `litefs-proxy cluster status` needs to
//! reach only one node.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize};

/// How often each peer is asked.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long one answer may take; a peer slower than this is shown down.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// A status answer larger than this is not a status answer.
const MAX_STATUS_BYTES: usize = 256 * 1024;

/// One node of the cluster, as `cluster status` prints it. Every field but `node` and
/// `url` is `None` when the node did not answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub node: String,
    /// Its proxy's base URL, as the peer list names it.
    pub url: String,
    /// The proxy's acting role: `primary`, `replica`, `unknown`, or `down` when it does not
    /// answer.
    pub role: String,
    /// `leader`, `follower`, `unknown` (its Raft role); `None` without an election.
    pub raft_role: Option<String>,
    /// Its LiteFS's own view: `primary`, `replica` or `unknown`; `None` when not followed.
    pub litefs_role: Option<String>,
    /// `up` or `down`: whether its LiteFS answers; `None` when not followed.
    pub litefs: Option<String>,
    /// Its local TXID, 16 hex digits.
    pub txid: Option<String>,
    /// Its LiteFS's replication lag (`.lag`), in milliseconds.
    pub lag_ms: Option<i64>,
    pub term: Option<u64>,
    /// The leader it acts on.
    pub leader: Option<String>,
    /// Milliseconds since it last answered whoever asked (0: it answered just now).
    pub last_contact_ms: Option<u64>,
    /// Why it is shown down.
    pub error: Option<String>,
}

impl PeerRow {
    /// A node that did not answer.
    pub fn down(node: &str, url: &str, error: String, last_contact_ms: Option<u64>) -> PeerRow {
        PeerRow {
            node: node.to_owned(),
            url: url.to_owned(),
            role: "down".into(),
            last_contact_ms,
            error: Some(error),
            ..PeerRow::default()
        }
    }

    /// The row of a node from its own `/litefs/status` answer.
    pub fn from_status(url: &str, s: &serde_json::Value) -> PeerRow {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let e = &s["election"];
        PeerRow {
            node: text(&s["node"]).unwrap_or_default(),
            url: url.to_owned(),
            role: text(&s["role"]).unwrap_or_else(|| "unknown".into()),
            // A read replica (`voter = false`) says so: it never leads.
            raft_role: text(&e["role"]).map(|r| match e["voter"].as_bool() {
                Some(false) => format!("{r}, non-voter"),
                _ => r,
            }),
            litefs_role: text(&e["litefs_role"]),
            litefs: text(&s["litefs"]),
            txid: text(&s["txid"]),
            lag_ms: s["lag_ms"].as_i64(),
            term: e["term"].as_u64(),
            leader: text(&e["leader"]).or_else(|| text(&s["primary"])),
            last_contact_ms: Some(0),
            error: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.role != "down"
    }
}

/// A small HTTP client for status answers.
#[derive(Clone)]
pub struct StatusClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl StatusClient {
    pub fn new(timeout: Duration) -> StatusClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        StatusClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeout,
        }
    }

    /// `GET <base><path>` as JSON, within the client's timeout; the error says why not.
    pub async fn get_json(&self, base: &str, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let ask = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| describe(&e).to_string())?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_STATUS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            serde_json::from_slice(&body).map_err(|e| format!("not a status answer: {e}"))
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// The innermost cause of a client error ("Connection refused" rather than hyper's
/// "client error (Connect)").
fn describe<'a>(e: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur
}

/// What is known of one peer.
struct Seen {
    url: String,
    /// Its last answer, summed up.
    last: Option<PeerRow>,
    /// When it last answered.
    contact: Option<Instant>,
    /// Why the last ask failed; `None` after an answer.
    error: Option<String>,
}

/// Every peer's last answer, kept fresh by one task per peer while the view is alive.
#[derive(Clone)]
pub struct PeerView {
    this: String,
    /// Peers in the configured order, this node included (it is not asked).
    order: Vec<(String, String)>,
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
}

impl PeerView {
    /// Starts asking every peer but `this` for `<url><prefix>/status`. The tasks end once
    /// the last clone of the view is dropped.
    pub fn start(this: &str, peers: Vec<(String, String)>, prefix: &str) -> PeerView {
        let seen: BTreeMap<String, Seen> = peers
            .iter()
            .filter(|(id, _)| id != this)
            .map(|(id, url)| {
                let s = Seen {
                    url: url.clone(),
                    last: None,
                    contact: None,
                    error: Some("not asked yet".into()),
                };
                (id.clone(), s)
            })
            .collect();
        let view = PeerView {
            this: this.to_owned(),
            order: peers,
            seen: Arc::new(Mutex::new(seen)),
        };
        let client = StatusClient::new(ASK_TIMEOUT);
        let path = format!("{}/status", prefix.trim_end_matches('/'));
        for (id, url) in view.order.iter().filter(|(id, _)| *id != view.this) {
            tokio::spawn(ask_forever(
                Arc::downgrade(&view.seen),
                client.clone(),
                id.clone(),
                url.clone(),
                path.clone(),
            ));
        }
        view
    }

    /// One row per peer in the configured order; this node's row is a placeholder
    /// (`"self": true`, its node and URL) that the reader fills from the answer around it.
    pub fn rows(&self) -> serde_json::Value {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let rows: Vec<serde_json::Value> = self
            .order
            .iter()
            .map(|(id, url)| {
                let Some(s) = seen.get(id) else {
                    return serde_json::json!({ "node": id, "url": url, "self": true });
                };
                let age = s
                    .contact
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64);
                let row = match (&s.error, &s.last) {
                    (None, Some(last)) => PeerRow {
                        node: id.clone(),
                        last_contact_ms: age,
                        ..last.clone()
                    },
                    (error, _) => PeerRow::down(
                        id,
                        &s.url,
                        error.clone().unwrap_or_else(|| "no answer".into()),
                        age,
                    ),
                };
                serde_json::to_value(row).unwrap_or_default()
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

async fn ask_forever(
    seen: Weak<Mutex<BTreeMap<String, Seen>>>,
    client: StatusClient,
    id: String,
    url: String,
    path: String,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = client.get_json(&url, &path).await;
        let Some(seen) = seen.upgrade() else { return };
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(s) = seen.get_mut(&id) else { return };
        match answer {
            Ok(status) => {
                if s.error.is_some() {
                    tracing::debug!(peer = %id, "peer status answers");
                }
                s.last = Some(PeerRow::from_status(&url, &status));
                s.contact = Some(Instant::now());
                s.error = None;
            }
            Err(e) => {
                if s.error.is_none() {
                    tracing::debug!(peer = %id, error = %e, "peer status does not answer");
                }
                s.error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_becomes_a_row() {
        let s = serde_json::json!({
            "node": "node-2", "role": "replica", "primary": "node-1", "txid": "0000000000000007",
            "lag_ms": 12, "litefs": "up",
            "election": { "role": "follower", "term": 4, "leader": "node-1", "litefs_role": "replica", "voter": true },
        });
        let row = PeerRow::from_status("http://b:8080", &s);
        assert_eq!(
            row,
            PeerRow {
                node: "node-2".into(),
                url: "http://b:8080".into(),
                role: "replica".into(),
                raft_role: Some("follower".into()),
                litefs_role: Some("replica".into()),
                litefs: Some("up".into()),
                txid: Some("0000000000000007".into()),
                lag_ms: Some(12),
                term: Some(4),
                leader: Some("node-1".into()),
                last_contact_ms: Some(0),
                error: None,
            }
        );
        // A non-voter says so.
        let mut nv = s.clone();
        nv["election"]["voter"] = serde_json::json!(false);
        let row = PeerRow::from_status("http://b:8080", &nv);
        assert_eq!(row.raft_role.as_deref(), Some("follower, non-voter"));
        // A static node: no election, the leader is the primary it names.
        let s = serde_json::json!({ "node": "a", "role": "primary", "primary": "a", "txid": "0000000000000001", "lag_ms": 0 });
        let row = PeerRow::from_status("http://a", &s);
        assert_eq!((row.raft_role, row.term), (None, None));
        assert_eq!(row.leader.as_deref(), Some("a"));
    }

    /// A peer that refuses connections is listed down with why, never dropped; one that
    /// answers is listed with its answer; this node is a placeholder.
    #[tokio::test]
    async fn unreachable_peers_are_listed_down() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = format!("http://{}", live.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = live.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let body =
                        r#"{"node":"c","role":"replica","txid":"0000000000000003","lag_ms":5}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body.as_bytes()).await;
                });
            }
        });
        let view = PeerView::start(
            "a",
            vec![
                ("a".into(), "http://a".into()),
                ("b".into(), dead.clone()),
                ("c".into(), live_url),
            ],
            "/litefs",
        );
        let end = Instant::now() + Duration::from_secs(10);
        let rows = loop {
            let rows: Vec<serde_json::Value> = serde_json::from_value(view.rows()).expect("a list");
            let asked = rows[1]["error"] != "not asked yet" && rows[2]["role"] != "down";
            if asked {
                break rows;
            }
            assert!(Instant::now() < end, "peers not asked: {rows:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0]["self"], true);
        assert_eq!(rows[1]["node"], "b");
        assert_eq!(rows[1]["role"], "down");
        assert_eq!(rows[1]["url"], dead.as_str());
        assert_eq!(rows[1]["last_contact_ms"], serde_json::Value::Null);
        assert!(
            rows[1]["error"]
                .as_str()
                .is_some_and(|e| e.contains("refused")),
            "{rows:?}"
        );
        assert_eq!(rows[2]["role"], "replica");
        assert_eq!(rows[2]["txid"], "0000000000000003");
        assert!(rows[2]["last_contact_ms"].as_u64().is_some(), "{rows:?}");
    }
}
