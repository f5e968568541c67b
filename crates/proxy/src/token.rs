//! The read-your-writes token: found in the request (cookie `litefs-txid`, LiteFS's legacy
//! cookie `__txid`, or header `litefs-txid`), minted on the primary after a write.
//!
//! A token names a position in one history: `<txid>-<checksum>` (16 hex digits each, the
//! `<db>-pos` file's TXID and post-apply checksum with `-` for `/`, so it is cookie-safe).
//! With a secret the value is `<txid>-<checksum>.<mac>`, the MAC over `<txid>-<checksum>`,
//! and unsigned or forged values are ignored. Legacy tokens, a bare `<txid>` (and, signed,
//! `<txid>.<mac>`), as older versions and LiteFS's `__txid` cookie carry them, still parse;
//! they name a TXID only and are compared by TXID alone.

use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::txid::{Position, TxId};

/// Request and response header carrying the token for non-browser clients.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("litefs-txid");
/// LiteFS's own cookie, accepted on input so a migration keeps its sessions.
pub const LEGACY_COOKIE: &str = "__txid";
/// Bytes of HMAC-SHA256 kept in a signed token (128 bits).
const MAC_LEN: usize = 16;
/// `<txid>-<checksum>`: 16 + 1 + 16 bytes.
const V2_LEN: usize = 33;

/// What a token names: a TXID and, in a v2 token, the post-apply checksum at that TXID in
/// the history of the primary that minted it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    pub txid: TxId,
    /// `None` for a legacy token (bare TXID): compared by TXID only.
    pub checksum: Option<u64>,
}

impl Token {
    /// A legacy token: a TXID without a history.
    pub fn legacy(txid: TxId) -> Token {
        Token {
            txid,
            checksum: None,
        }
    }

    /// Parses the unsigned part: `<txid>` (legacy) or `<txid>-<checksum>` (v2), 16 hex
    /// digits each, either case.
    pub fn parse(s: &[u8]) -> Option<Token> {
        match s.len() {
            16 => TxId::from_hex(s).map(Token::legacy),
            V2_LEN if s[16] == b'-' => Some(Token {
                txid: TxId::from_hex(&s[..16])?,
                checksum: Some(TxId::from_hex(&s[17..])?.0),
            }),
            _ => None,
        }
    }

    /// The unsigned part as minted: lower-case hex, without allocating.
    fn encode(self) -> ([u8; V2_LEN], usize) {
        let mut out = [0u8; V2_LEN];
        out[..16].copy_from_slice(&self.txid.to_hex());
        match self.checksum {
            None => (out, 16),
            Some(c) => {
                out[16] = b'-';
                out[17..].copy_from_slice(&TxId(c).to_hex());
                (out, V2_LEN)
            }
        }
    }
}

impl From<Position> for Token {
    fn from(p: Position) -> Token {
        Token {
            txid: p.txid,
            checksum: Some(p.post_apply_checksum),
        }
    }
}

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
    /// The valid token with the highest TXID; duplicates are allowed (e.g. one per cookie
    /// path). At equal TXIDs a v2 token wins over a legacy one, else the first one found.
    pub token: Option<Token>,
    /// Values under a token name that did not parse or verify; counted, never an error.
    pub invalid: u32,
}

impl Tokens {
    /// `secret`: sign minted tokens and accept only signed ones.
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
            Some(t) => {
                let better = found.token.is_none_or(|cur| {
                    t.txid > cur.txid
                        || (t.txid == cur.txid && cur.checksum.is_none() && t.checksum.is_some())
                });
                if better {
                    found.token = Some(t);
                }
            }
            None => found.invalid += 1,
        }
    }

    /// Parses a token value, checking its MAC when a secret is set.
    pub fn verify(&self, value: &str) -> Option<Token> {
        match &self.key {
            None => Token::parse(value.as_bytes()),
            Some(key) => {
                let (body, mac) = value.split_once('.')?;
                let token = Token::parse(body.as_bytes())?;
                let mac = decode_hex::<MAC_LEN>(mac)?;
                let mut m = key.clone();
                m.update(body.as_bytes());
                m.verify_truncated_left(&mac).ok()?;
                Some(token)
            }
        }
    }

    /// The token value: `<txid>-<checksum>` (or a legacy `<txid>` for a token without a
    /// checksum), plus `.<mac>` when signed.
    pub fn value(&self, token: Token) -> String {
        let (buf, len) = token.encode();
        let body = std::str::from_utf8(&buf[..len]).unwrap_or_default();
        match &self.key {
            None => body.to_owned(),
            Some(key) => {
                let mut m = key.clone();
                m.update(body.as_bytes());
                let mac = m.finalize().into_bytes();
                format!("{body}.{}", hex::encode(&mac[..MAC_LEN]))
            }
        }
    }

    /// Adds `Set-Cookie` and the `litefs-txid` header naming `pos` to a response.
    pub fn mint(&self, pos: Position, headers: &mut HeaderMap) {
        let value = self.value(Token::from(pos));
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

/// Whether a write that left the database at `pos` mints a token for a client that brought
/// `token`: when `pos` is above it, or at its TXID in a history the token does not name (a
/// legacy token, or one minted in another history), never below it.
pub fn should_mint(pos: Position, token: Option<Token>) -> bool {
    match token {
        None => true,
        Some(t) => {
            pos.txid > t.txid || (pos.txid == t.txid && t.checksum != Some(pos.post_apply_checksum))
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

    use crate::headers::test_map as headers;

    fn plain() -> Tokens {
        Tokens::new("litefs-txid", Duration::from_secs(300), None)
    }

    fn signed() -> Tokens {
        Tokens::new(
            "litefs-txid",
            Duration::from_secs(60),
            Some("0123456789abcdef-secret"),
        )
    }

    fn legacy(txid: u64) -> Option<Token> {
        Some(Token::legacy(TxId(txid)))
    }

    fn v2(txid: u64, checksum: u64) -> Option<Token> {
        Some(Token {
            txid: TxId(txid),
            checksum: Some(checksum),
        })
    }

    fn pos(txid: u64, checksum: u64) -> Position {
        Position {
            txid: TxId(txid),
            post_apply_checksum: checksum,
        }
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
                token: legacy(5),
                invalid: 0
            }
        );
        let f = t.extract(&headers(&[("cookie", "__txid=000000000000000a")]));
        assert_eq!(f.token, legacy(10));
        let f = t.extract(&headers(&[("litefs-txid", "0000000000000007")]));
        assert_eq!(f.token, legacy(7));
        let f = t.extract(&headers(&[(
            "cookie",
            "litefs-txid=0000000000000007-95AF056CA07D8AD1",
        )]));
        assert_eq!(f.token, v2(7, 0x95af_056c_a07d_8ad1), "either case");
    }

    #[test]
    fn duplicates_take_the_highest_txid() {
        let t = plain();
        let f = t.extract(&headers(&[
            ("cookie", "litefs-txid=0000000000000003; litefs-txid=zz"),
            ("cookie", "litefs-txid=0000000000000009"),
            ("litefs-txid", "0000000000000004-8000000000000004"),
        ]));
        assert_eq!(
            f,
            Found {
                token: legacy(9),
                invalid: 1
            }
        );
        // At the same TXID the token that names a history wins, whatever the order.
        for order in [
            ["0000000000000009", "0000000000000009-8000000000000009"],
            ["0000000000000009-8000000000000009", "0000000000000009"],
        ] {
            let f = t.extract(&headers(&[
                ("cookie", &format!("litefs-txid={}", order[0])),
                ("cookie", &format!("__txid={}", order[1])),
            ]));
            assert_eq!(f.token, v2(9, 0x8000_0000_0000_0009), "{order:?}");
        }
    }

    #[test]
    fn malformed_and_huge_values_are_ignored_and_counted() {
        let t = plain();
        let huge = format!("litefs-txid={}", "f".repeat(10_000));
        for v in [
            "litefs-txid=",
            "litefs-txid=123",
            "litefs-txid=-000000000000001",
            "litefs-txid=0000000000000001-",
            "litefs-txid=0000000000000001-800000000000000",
            "litefs-txid=0000000000000001/8000000000000001",
            "litefs-txid=0000000000000001_8000000000000001",
            "litefs-txid=0000000000000001-800000000000000g",
            "litefs-txid=0000000000000001-8000000000000001-",
            "litefs-txid=-0000000000000001-8000000000000001",
            huge.as_str(),
        ] {
            let f = t.extract(&headers(&[("cookie", v)]));
            assert_eq!(
                f,
                Found {
                    token: None,
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
    fn mint_names_txid_and_checksum() {
        let mut h = HeaderMap::new();
        plain().mint(pos(0x2a, 0x95af_056c_a07d_8ad1), &mut h);
        assert_eq!(
            h[header::SET_COOKIE],
            "litefs-txid=000000000000002a-95af056ca07d8ad1; Path=/; HttpOnly; SameSite=Lax; Max-Age=300"
        );
        assert_eq!(h[TOKEN_HEADER], "000000000000002a-95af056ca07d8ad1");
        assert_eq!(
            plain().verify("000000000000002a-95af056ca07d8ad1"),
            v2(0x2a, 0x95af_056c_a07d_8ad1)
        );
        // A legacy token still prints as one (what the fuzz round-trip relies on).
        assert_eq!(plain().value(Token::legacy(TxId(3))), "0000000000000003");
    }

    #[test]
    fn signed_tokens_reject_unsigned_and_forged() {
        let t = signed();
        let good = t.value(Token::from(pos(42, 0x8000_0000_0000_00aa)));
        assert_eq!(good.len(), 33 + 1 + 32);
        assert_eq!(t.verify(&good), v2(42, 0x8000_0000_0000_00aa));
        assert_eq!(t.verify(&good[..33]), None, "unsigned v2");
        assert_eq!(t.verify("000000000000002a"), None, "unsigned");
        assert_eq!(t.verify("ffffffffffffffff"), None, "pinning attempt");
        let forged = format!("ffffffffffffffff{}", &good[16..]);
        assert_eq!(t.verify(&forged), None, "MAC of another TXID");
        let forged = format!("000000000000002a-8000000000000bad{}", &good[33..]);
        assert_eq!(t.verify(&forged), None, "MAC of another checksum");
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
                token: None,
                invalid: 1
            }
        );
    }

    /// Tokens signed by older versions (`<txid>.<mac>`, the MAC over the TXID) still verify,
    /// as legacy tokens; their MAC does not carry over to a v2 body.
    #[test]
    fn signed_legacy_tokens_still_verify() {
        let t = signed();
        let old = t.value(Token::legacy(TxId(42)));
        assert!(old.starts_with("000000000000002a."), "{old}");
        assert_eq!(old.len(), 16 + 1 + 32);
        assert_eq!(t.verify(&old), legacy(42));
        let grafted = format!("000000000000002a-8000000000000001{}", &old[16..]);
        assert_eq!(t.verify(&grafted), None);
        assert_eq!(plain().verify(&old), None, "signed values need the secret");
    }

    #[test]
    fn mints_above_the_token_or_at_it_in_another_history() {
        let p = pos(5, 0x8000_0000_0000_0005);
        assert!(should_mint(p, None));
        assert!(should_mint(p, legacy(4)));
        assert!(should_mint(p, v2(4, 1)));
        assert!(should_mint(p, legacy(5)), "upgrades a legacy token");
        assert!(
            should_mint(p, v2(5, 0x8000_0000_0000_0bad)),
            "another history"
        );
        assert!(!should_mint(p, v2(5, 0x8000_0000_0000_0005)), "the same");
        assert!(!should_mint(p, legacy(6)), "never below");
        assert!(!should_mint(p, v2(6, 1)), "never below");
    }
}
