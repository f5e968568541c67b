//! The replication stream's wire format, shared by the primary's `POST /stream` handler
//! (`stream.rs`) and the replica's client (`replicate.rs`). LiteFS sends LTX
//! frames over HTTP/2; the sim sends the same kinds of frame (LiteFS's `LTXStreamFrame`,
//! `ReadyStreamFrame`, `HeartbeatStreamFrame`, `HandoffStreamFrame`, `EndStreamFrame`)
//! over an HTTP/1 chunked body: one JSON header line per frame, an `ltx` frame followed by
//! the whole database (`size` bytes). Nothing outside the sim sees these bytes.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The stream's path on the primary's API (LiteFS's `POST /stream`).
pub const STREAM_PATH: &str = "/stream";

/// The header naming the connecting replica's node ID (LiteFS's `Litefs-Id`).
pub const NODE_ID_HEADER: &str = "litefs-id";

/// Seconds between heartbeats on an idle stream (LiteFS's `HeartbeatInterval`).
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// A frame's header line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Header {
    /// The primary's whole database at `txid` follows (`size` bytes; 0: it has no database
    /// file yet, only a position). Each one replaces what the replica had, so a replica
    /// whose history diverged is resynced by the first frame it receives.
    Ltx {
        txid: u64,
        checksum: u64,
        size: u64,
        /// The primary's clock when the transaction was committed (ms since the epoch).
        timestamp_ms: i64,
    },
    /// The initial state has been sent.
    Ready,
    /// The primary is alive; its clock, for the replica's `.lag`.
    Heartbeat { timestamp_ms: i64 },
    /// The primary hands its lease (session) to this replica and stops being primary;
    /// the stream ends after this frame.
    Handoff { lease_id: String },
    /// The primary ended the stream cleanly.
    End,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    /// The database bytes of an `ltx` frame; empty otherwise.
    pub payload: Bytes,
}

/// Encodes a frame for the body.
pub fn encode(header: &Header, payload: &[u8]) -> Bytes {
    let mut line = serde_json::to_vec(header).unwrap_or_default();
    line.push(b'\n');
    line.extend_from_slice(payload);
    Bytes::from(line)
}

/// The longest header line a decoder accepts; a longer one is a broken stream.
const MAX_HEADER: usize = 4096;

/// Incremental decoder: feed body chunks, take complete frames.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
    /// A header whose payload has not fully arrived.
    pending: Option<(Header, usize)>,
}

/// The stream cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame header over {MAX_HEADER} bytes")]
    HeaderTooLong,
    #[error("bad frame header: {0}")]
    BadHeader(#[from] serde_json::Error),
    #[error("frame size {0} does not fit in memory")]
    TooLarge(u64),
}

impl Decoder {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.pending.is_none() {
            let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > MAX_HEADER {
                    return Err(DecodeError::HeaderTooLong);
                }
                return Ok(None);
            };
            if nl > MAX_HEADER {
                return Err(DecodeError::HeaderTooLong);
            }
            let line = self.buf.split_to(nl + 1);
            let header: Header = serde_json::from_slice(&line[..nl])?;
            let size = match &header {
                Header::Ltx { size, .. } => {
                    usize::try_from(*size).map_err(|_| DecodeError::TooLarge(*size))?
                }
                _ => 0,
            };
            self.pending = Some((header, size));
        }
        let Some((_, size)) = &self.pending else {
            return Ok(None);
        };
        if self.buf.len() < *size {
            return Ok(None);
        }
        let size = *size;
        let payload = self.buf.split_to(size).freeze();
        Ok(self
            .pending
            .take()
            .map(|(header, _)| Frame { header, payload }))
    }
}

/// A node ID as LiteFS formats it: 16 upper-case hex digits.
pub fn format_node_id(id: u64) -> String {
    format!("{id:016X}")
}

/// Parses a node ID (hex, either case, as LiteFS's `ParseNodeID`).
pub fn parse_node_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_any_split() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&encode(
            &Header::Ltx {
                txid: 7,
                checksum: 9,
                size: 5,
                timestamp_ms: 1,
            },
            b"hello",
        ));
        bytes.extend_from_slice(&encode(&Header::Ready, b""));
        bytes.extend_from_slice(&encode(
            &Header::Handoff {
                lease_id: "abc".into(),
            },
            b"",
        ));
        for split in 1..bytes.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                d.feed(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(&got[0].payload[..], b"hello");
            assert_eq!(got[1].header, Header::Ready);
            assert_eq!(
                got[2].header,
                Header::Handoff {
                    lease_id: "abc".into()
                }
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        let mut d = Decoder::default();
        d.feed(b"{\"type\":\"nonsense\"}\n");
        assert!(d.next_frame().is_err());
        let mut d = Decoder::default();
        d.feed(&[b'x'; MAX_HEADER + 1]);
        assert!(matches!(d.next_frame(), Err(DecodeError::HeaderTooLong)));
    }

    #[test]
    fn node_ids_are_litefs_hex() {
        assert_eq!(format_node_id(0xAB), "00000000000000AB");
        assert_eq!(parse_node_id("00000000000000ab"), Some(0xAB));
        assert_eq!(parse_node_id(""), None);
        assert_eq!(parse_node_id("zz"), None);
    }
}
