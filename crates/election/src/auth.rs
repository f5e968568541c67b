//! Request authentication between nodes: with a cluster secret, every RPC carries
//! HMAC-SHA256(secret, timestamp \n path \n sender \n body [\n nonce]), refused when wrong,
//! outside ±30 s, or already seen (each MAC is accepted once: a captured RPC cannot be
//! replayed; the random nonce keeps two identical RPCs in one millisecond apart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TS_HEADER: &str = "x-litefs-raft-ts";
pub const MAC_HEADER: &str = "x-litefs-raft-mac";
pub const FROM_HEADER: &str = "x-litefs-raft-from";
pub const NONCE_HEADER: &str = "x-litefs-raft-nonce";

/// How far a request's timestamp may be from our clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed {0} header")]
    MissingHeader(&'static str),
    #[error("timestamp {0} ms is outside the allowed clock skew")]
    Stale(u64),
    #[error("bad MAC")]
    BadMac,
    #[error("replayed: this signed request was already accepted")]
    Replayed,
}

/// MACs accepted within the skew window, with their timestamps; older ones cannot be
/// replayed anyway (they are stale), so they are dropped.
#[derive(Default)]
struct Seen {
    macs: HashMap<Vec<u8>, u64>,
    /// Prune when the map has grown past this (doubles with the traffic).
    prune_at: usize,
}

impl Seen {
    /// Records `mac`; false when it was already there.
    fn first(&mut self, mac: &[u8], ts: u64, now_ms: u64) -> bool {
        if self.macs.len() >= self.prune_at.max(1024) {
            let horizon = now_ms.saturating_sub(MAX_SKEW.as_millis() as u64);
            self.macs.retain(|_, t| *t >= horizon);
            self.prune_at = self.macs.len() * 2;
        }
        self.macs.insert(mac.to_vec(), ts).is_none()
    }
}

/// Signs and checks RPCs; a no-op without a secret.
#[derive(Clone)]
pub struct Auth {
    key: Option<Vec<u8>>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Auth {
    pub fn new(secret: Option<&str>) -> Self {
        Auth {
            key: secret.map(|s| s.as_bytes().to_vec()),
            seen: Arc::default(),
        }
    }

    fn mac(
        key: &[u8],
        ts: u64,
        path: &str,
        from: &str,
        body: &[u8],
        nonce: Option<&str>,
    ) -> Hmac<Sha256> {
        // new_from_slice accepts keys of any length for HMAC; the error arm is unreachable.
        let mut m = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        m.update(ts.to_string().as_bytes());
        m.update(b"\n");
        m.update(path.as_bytes());
        m.update(b"\n");
        m.update(from.as_bytes());
        m.update(b"\n");
        m.update(body);
        if let Some(n) = nonce {
            m.update(b"\n");
            m.update(n.as_bytes());
        }
        m
    }

    /// The `(timestamp, mac, nonce)` header values for a request, or None without a secret.
    pub fn sign(&self, path: &str, from: &str, body: &[u8]) -> Option<(String, String, String)> {
        let key = self.key.as_ref()?;
        let ts = now_ms();
        let nonce = format!("{:016x}", rand::random::<u64>());
        let mac = Self::mac(key, ts, path, from, body, Some(&nonce))
            .finalize()
            .into_bytes();
        Some((ts.to_string(), hex::encode(mac), nonce))
    }

    /// Check a request's headers against its body.
    pub fn verify(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::MissingHeader(name))
        };
        let ts: u64 = header(TS_HEADER)?
            .parse()
            .map_err(|_| AuthError::MissingHeader(TS_HEADER))?;
        let mac =
            hex::decode(header(MAC_HEADER)?).map_err(|_| AuthError::MissingHeader(MAC_HEADER))?;
        let from = header(FROM_HEADER)?;
        if ts.abs_diff(now_ms) > MAX_SKEW.as_millis() as u64 {
            return Err(AuthError::Stale(ts));
        }
        let nonce = headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok());
        Self::mac(key, ts, path, from, body, nonce)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)?;
        let first = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first(&mac, ts, now_ms);
        if first {
            Ok(())
        } else {
            Err(AuthError::Replayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ts: &str, mac: &str, from: &str, nonce: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(TS_HEADER, ts.parse().expect("hv"));
        h.insert(MAC_HEADER, mac.parse().expect("hv"));
        h.insert(FROM_HEADER, from.parse().expect("hv"));
        h.insert(NONCE_HEADER, nonce.parse().expect("hv"));
        h
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let a = Auth::new(Some("0123456789abcdef"));
        let (ts, mac, nonce) = a.sign("/raft/timeout-now", "node-1", b"{}").expect("signs");
        let now = ts.parse::<u64>().expect("ts");
        let h = headers(&ts, &mac, "node-1", &nonce);
        assert_eq!(a.verify("/raft/timeout-now", &h, b"{}", now), Ok(()));
        assert_eq!(
            a.verify("/raft/timeout-now", &h, b"{}", now + 10),
            Err(AuthError::Replayed)
        );
        // The same RPC signed again (another nonce) is a new request.
        let (ts, mac, nonce) = a.sign("/raft/timeout-now", "node-1", b"{}").expect("signs");
        let h = headers(&ts, &mac, "node-1", &nonce);
        assert_eq!(a.verify("/raft/timeout-now", &h, b"{}", now), Ok(()));
    }

    #[test]
    fn signed_request_verifies_and_tampering_fails() {
        let a = Auth::new(Some("0123456789abcdef"));
        let (ts, mac, nonce) = a.sign("/raft/vote", "node-1", b"{}").expect("signs");
        let now = ts.parse::<u64>().expect("ts");
        let h = headers(&ts, &mac, "node-1", &nonce);
        assert_eq!(a.verify("/raft/vote", &h, b"{}", now), Ok(()));
        assert_eq!(
            a.verify("/raft/vote", &h, b"{ }", now),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            a.verify("/raft/append", &h, b"{}", now),
            Err(AuthError::BadMac)
        );
        let h2 = headers(&ts, &mac, "node-2", &nonce);
        assert_eq!(
            a.verify("/raft/vote", &h2, b"{}", now),
            Err(AuthError::BadMac)
        );
        let other = Auth::new(Some("another-secret-000"));
        assert_eq!(
            other.verify("/raft/vote", &h, b"{}", now),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn stale_and_missing_are_refused() {
        let a = Auth::new(Some("0123456789abcdef"));
        let (ts, mac, nonce) = a.sign("/raft/vote", "n", b"x").expect("signs");
        let t = ts.parse::<u64>().expect("ts");
        let h = headers(&ts, &mac, "n", &nonce);
        assert_eq!(
            a.verify("/raft/vote", &h, b"x", t + 31_000),
            Err(AuthError::Stale(t))
        );
        assert_eq!(a.verify("/raft/vote", &h, b"x", t + 29_000), Ok(()));
        assert!(matches!(
            a.verify("/raft/vote", &http::HeaderMap::new(), b"x", t),
            Err(AuthError::MissingHeader(_))
        ));
        // Without a secret everything passes.
        assert_eq!(
            Auth::new(None).verify("/", &http::HeaderMap::new(), b"", 0),
            Ok(())
        );
    }
}
