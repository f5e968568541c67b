//! The read-your-writes token: found in the request (cookie `litefs-txid`, LiteFS's legacy
//! cookie `__txid`, or header `litefs-txid`), minted on the primary after a write. With a
//! secret the value is `<txid>.<mac>` and unsigned or forged values are ignored.

use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::txid::TxId;

/// Request and response header carrying the token for non-browser clients.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("litefs-txid");
/// LiteFS's own cookie, accepted on input so a migration keeps its sessions.
pub const LEGACY_COOKIE: &str = "__txid";
/// Bytes of HMAC-SHA256 kept in a signed token (128 bits).
const MAC_LEN: usize = 16;

/// Extracts and mints tokens. Built once; cheap to share.
#[derive(Clone)]
pub struct Tokens {
    cookie_name: String,
    max_age_secs: u64,
    /// Keyed once at startup; cloned per use, which copies the pre-hashed key state.
    key: Option<Hmac<Sha256>>,
}

/// What a request carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The highest valid token; duplicates are allowed (e.g. one per cookie path).
    pub txid: Option<TxId>,
    /// Values under a token name that did not parse or verify; counted, never an error.
    pub invalid: u32,
}

impl Tokens {
    pub fn new(cookie_name: &str, max_age: std::time::Duration, secret: Option<&str>) -> Tokens {
        Tokens {
            cookie_name: cookie_name.to_owned(),
            max_age_secs: max_age.as_secs(),
            key: secret.map(|s| {
                Hmac::<Sha256>::new_from_slice(s.as_bytes())
                    .expect("HMAC accepts keys of any length")
            }),
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Scans the request's cookies and token header.
    pub fn extract(&self, headers: &HeaderMap) -> Found {
        let mut found = Found::default();
        for value in headers.get_all(&TOKEN_HEADER) {
            self.consider(value.to_str().ok(), &mut found);
        }
        for value in headers.get_all(header::COOKIE) {
            let Ok(s) = value.to_str() else {
                continue;
            };
            for cookie in cookie::Cookie::split_parse(s).flatten() {
                if cookie.name() == self.cookie_name || cookie.name() == LEGACY_COOKIE {
                    self.consider(Some(cookie.value()), &mut found);
                }
            }
        }
        found
    }

    fn consider(&self, value: Option<&str>, found: &mut Found) {
        match value.and_then(|v| self.verify(v.trim())) {
            Some(t) => found.txid = found.txid.max(Some(t)),
            None => found.invalid += 1,
        }
    }

    /// Parses a token value, checking its MAC when a secret is set.
    pub fn verify(&self, value: &str) -> Option<TxId> {
        let bytes = value.as_bytes();
        match &self.key {
            None => TxId::from_hex(bytes),
            Some(key) => {
                let (hex, mac) = value.split_once('.')?;
                let txid = TxId::from_hex(hex.as_bytes())?;
                let mac = decode_hex::<MAC_LEN>(mac)?;
                let mut m = key.clone();
                m.update(hex.as_bytes());
                m.verify_truncated_left(&mac).ok()?;
                Some(txid)
            }
        }
    }

    /// The token value for a TXID: 16 hex digits, plus `.<mac>` when signed.
    pub fn value(&self, txid: TxId) -> String {
        let hex = txid.to_hex();
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        match &self.key {
            None => hex.to_owned(),
            Some(key) => {
                let mut m = key.clone();
                m.update(hex.as_bytes());
                let mac = m.finalize().into_bytes();
                format!("{hex}.{}", hex::encode(&mac[..MAC_LEN]))
            }
        }
    }

    /// Adds `Set-Cookie` and the `litefs-txid` header for `txid` to a response.
    pub fn mint(&self, txid: TxId, headers: &mut HeaderMap) {
        let value = self.value(txid);
        let cookie = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            self.cookie_name, self.max_age_secs
        );
        if let (Ok(c), Ok(v)) = (HeaderValue::try_from(cookie), HeaderValue::try_from(value)) {
            headers.append(header::SET_COOKIE, c);
            headers.insert(TOKEN_HEADER, v);
        }
    }
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn plain() -> Tokens {
        Tokens::new("litefs-txid", Duration::from_secs(300), None)
    }

    #[test]
    fn finds_cookie_legacy_cookie_and_header() {
        let t = plain();
        let f = t.extract(&headers(&[(
            "cookie",
            "a=b; litefs-txid=0000000000000005; c=d",
        )]));
        assert_eq!(
            f,
            Found {
                txid: Some(TxId(5)),
                invalid: 0
            }
        );
        let f = t.extract(&headers(&[("cookie", "__txid=000000000000000a")]));
        assert_eq!(f.txid, Some(TxId(10)));
        let f = t.extract(&headers(&[("litefs-txid", "0000000000000007")]));
        assert_eq!(f.txid, Some(TxId(7)));
    }

    #[test]
    fn duplicates_take_the_highest_valid() {
        let t = plain();
        let f = t.extract(&headers(&[
            ("cookie", "litefs-txid=0000000000000003; litefs-txid=zz"),
            ("cookie", "litefs-txid=0000000000000009"),
            ("litefs-txid", "0000000000000004"),
        ]));
        assert_eq!(
            f,
            Found {
                txid: Some(TxId(9)),
                invalid: 1
            }
        );
    }

    #[test]
    fn malformed_and_huge_values_are_ignored_and_counted() {
        let t = plain();
        let huge = format!("litefs-txid={}", "f".repeat(10_000));
        for v in [
            "litefs-txid=",
            "litefs-txid=123",
            "litefs-txid=-000000000000001",
            huge.as_str(),
        ] {
            let f = t.extract(&headers(&[("cookie", v)]));
            assert_eq!(
                f,
                Found {
                    txid: None,
                    invalid: 1
                },
                "{v}"
            );
        }
        // Junk that is not one of our cookies is not counted.
        let f = t.extract(&headers(&[("cookie", ";;;=;x; ===")]));
        assert_eq!(f, Found::default());
    }

    #[test]
    fn mint_sets_cookie_and_header() {
        let mut h = HeaderMap::new();
        plain().mint(TxId(0x2a), &mut h);
        assert_eq!(
            h[header::SET_COOKIE],
            "litefs-txid=000000000000002a; Path=/; HttpOnly; SameSite=Lax; Max-Age=300"
        );
        assert_eq!(h[TOKEN_HEADER], "000000000000002a");
    }

    #[test]
    fn signed_tokens_reject_unsigned_and_forged() {
        let t = Tokens::new(
            "litefs-txid",
            Duration::from_secs(60),
            Some("0123456789abcdef-secret"),
        );
        let good = t.value(TxId(42));
        assert_eq!(t.verify(&good), Some(TxId(42)));
        assert_eq!(t.verify("000000000000002a"), None, "unsigned");
        assert_eq!(t.verify("ffffffffffffffff"), None, "pinning attempt");
        let forged = format!("ffffffffffffffff{}", &good[16..]);
        assert_eq!(t.verify(&forged), None, "MAC of another TXID");
        let other = Tokens::new(
            "litefs-txid",
            Duration::from_secs(60),
            Some("another-secret-of-16+"),
        );
        assert_eq!(other.verify(&good), None, "another key");
        let f = t.extract(&headers(&[("cookie", "__txid=ffffffffffffffff")]));
        assert_eq!(
            f,
            Found {
                txid: None,
                invalid: 1
            }
        );
    }
}
