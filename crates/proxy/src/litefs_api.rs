//! A client for LiteFS's HTTP API: `GET /info` and the `GET /events` NDJSON stream
//! (`init`, `tx`, `primaryChange`). Used for the `events` TXID source and, by the server,
//! for the `litefs` role source.

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;

use crate::txid::{Position, TxId};

/// A stream line longer than this is garbage: the stream is dropped and reconnected.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("LiteFS API unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("LiteFS API answered {0}")]
    Status(http::StatusCode),
    #[error("LiteFS API stream broke: {0}")]
    Stream(#[from] hyper::Error),
    #[error("LiteFS API sent a malformed message: {0}")]
    Malformed(String),
    /// `POST /promote` refused, with LiteFS's reason.
    #[error("LiteFS refused to promote: {0}")]
    Refused(String),
}

/// One event of `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First message of a stream. `hostname` is the primary's (empty when none is known).
    Init {
        is_primary: bool,
        hostname: String,
    },
    /// A committed transaction on `db`: its TXID and post-apply checksum.
    Tx {
        db: String,
        position: Position,
    },
    PrimaryChange {
        is_primary: bool,
        hostname: String,
    },
    /// An event type this client does not use.
    Other,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub is_primary: bool,
    /// The primary's hostname, when this node is a connected replica.
    pub primary_hostname: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    db: String,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleData {
    #[serde(default)]
    is_primary: bool,
    #[serde(default)]
    hostname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxData {
    #[serde(rename = "txID")]
    txid: String,
    post_apply_checksum: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInfo {
    #[serde(default)]
    is_primary: bool,
    #[serde(default)]
    primary: Option<RawPrimary>,
}

#[derive(Deserialize)]
struct RawPrimary {
    #[serde(default)]
    hostname: String,
}

impl Event {
    pub fn parse(line: &[u8]) -> Result<Event, ApiError> {
        let bad = |e: serde_json::Error| ApiError::Malformed(e.to_string());
        let raw: RawEvent = serde_json::from_slice(line).map_err(bad)?;
        Ok(match raw.kind.as_str() {
            "init" | "primaryChange" => {
                let d: RoleData = serde_json::from_value(raw.data).map_err(bad)?;
                if raw.kind == "init" {
                    Event::Init {
                        is_primary: d.is_primary,
                        hostname: d.hostname,
                    }
                } else {
                    Event::PrimaryChange {
                        is_primary: d.is_primary,
                        hostname: d.hostname,
                    }
                }
            }
            "tx" => {
                let d: TxData = serde_json::from_value(raw.data).map_err(bad)?;
                let txid = TxId::from_hex(d.txid.as_bytes())
                    .ok_or_else(|| ApiError::Malformed(format!("txID {:?}", d.txid)))?;
                let checksum =
                    TxId::from_hex(d.post_apply_checksum.as_bytes()).ok_or_else(|| {
                        ApiError::Malformed(format!(
                            "postApplyChecksum {:?}",
                            d.post_apply_checksum
                        ))
                    })?;
                Event::Tx {
                    db: raw.db,
                    position: Position {
                        txid,
                        post_apply_checksum: checksum.0,
                    },
                }
            }
            _ => Event::Other,
        })
    }
}

/// A small client for one LiteFS API base URL.
#[derive(Clone)]
pub struct LitefsApi {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl LitefsApi {
    pub fn new(base: &str) -> LitefsApi {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(1)));
        connector.set_nodelay(true);
        LitefsApi {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn get(&self, path: &str) -> Result<Incoming, ApiError> {
        let uri: http::Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ApiError::Malformed(e.to_string()))?;
        let resp = self.client.get(uri).await?;
        if !resp.status().is_success() {
            return Err(ApiError::Status(resp.status()));
        }
        Ok(resp.into_body())
    }

    pub async fn info(&self) -> Result<Info, ApiError> {
        let body = self.get("/info").await?.collect().await?.to_bytes();
        let raw: RawInfo =
            serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
        Ok(Info {
            is_primary: raw.is_primary,
            primary_hostname: raw.primary.map(|p| p.hostname).filter(|h| !h.is_empty()),
        })
    }

    /// `POST /promote`: ask LiteFS to take the lease over from the primary it streams from
    /// (LiteFS's handoff). 200 also when it already is primary; a refusal carries LiteFS's
    /// text ("no primary is currently available for handoff", "handoff failed: ...").
    pub async fn promote(&self) -> Result<(), ApiError> {
        let uri: http::Uri = format!("{}/promote", self.base)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ApiError::Malformed(e.to_string()))?;
        let req = http::Request::post(uri)
            .body(Empty::new())
            .map_err(|e| ApiError::Malformed(e.to_string()))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(ApiError::Refused(
                String::from_utf8_lossy(&body).trim().to_owned(),
            ))
        }
    }

    pub async fn events(&self) -> Result<EventStream, ApiError> {
        Ok(EventStream {
            body: self.get("/events").await?,
            buf: BytesMut::new(),
        })
    }
}

/// The open `/events` stream, read line by line.
pub struct EventStream {
    body: Incoming,
    buf: BytesMut,
}

impl EventStream {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<Event, ApiError>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(nl + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Event::parse(line));
            }
            if self.buf.len() > MAX_LINE {
                return Some(Err(ApiError::Malformed("line over 1 MiB".into())));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_litefs_events() {
        let e = Event::parse(br#"{"type":"init","data":{"isPrimary":false,"hostname":"node-1"}}"#)
            .unwrap();
        assert_eq!(
            e,
            Event::Init {
                is_primary: false,
                hostname: "node-1".into()
            }
        );
        let e = Event::parse(
            br#"{"type":"tx","db":"db.sqlite3","data":{"txID":"000000000000000c","postApplyChecksum":"95af056ca07d8ad1","pageSize":4096,"commit":2,"timestamp":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Tx {
                db: "db.sqlite3".into(),
                position: Position {
                    txid: TxId(12),
                    post_apply_checksum: 0x95af_056c_a07d_8ad1
                }
            }
        );
        let e = Event::parse(br#"{"type":"primaryChange","data":{"isPrimary":true}}"#).unwrap();
        assert_eq!(
            e,
            Event::PrimaryChange {
                is_primary: true,
                hostname: String::new()
            }
        );
        assert_eq!(
            Event::parse(br#"{"type":"somethingNew","data":1}"#).unwrap(),
            Event::Other
        );
        assert!(Event::parse(b"not json").is_err());
        assert!(Event::parse(br#"{"type":"tx","db":"x","data":{"txID":"12"}}"#).is_err());
        assert!(
            Event::parse(br#"{"type":"tx","db":"x","data":{"txID":"000000000000000c"}}"#).is_err(),
            "a tx event without its checksum"
        );
        assert!(Event::parse(
            br#"{"type":"tx","db":"x","data":{"txID":"000000000000000c","postApplyChecksum":"95af"}}"#
        )
        .is_err());
    }
}
