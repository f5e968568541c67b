//! Token extraction from arbitrary cookie and header bytes, unsigned and signed, v2
//! (`<txid>-<checksum>`) and legacy (`<txid>`): never panics, and whatever it accepts
//! round-trips through minting.
#![no_main]

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use litefs_proxy::token::{Tokens, TOKEN_HEADER};

fuzz_target!(|data: &[u8]| {
    let (cookie, token_header) = data.split_at(data.len() / 2);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(cookie) {
        headers.append(header::COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(token_header) {
        headers.append(TOKEN_HEADER, v);
    }
    for secret in [None, Some("a-fuzzing-secret-of-16+-chars")] {
        let tokens = Tokens::new("litefs-txid", Duration::from_secs(300), secret);
        let found = tokens.extract(&headers);
        if let Some(token) = found.token {
            // An accepted token is one this node could have minted.
            assert_eq!(tokens.verify(&tokens.value(token)), Some(token));
        }
        if let Ok(s) = std::str::from_utf8(data) {
            if let Some(token) = tokens.verify(s) {
                assert_eq!(tokens.verify(&tokens.value(token)), Some(token));
                // The unsigned part is a legacy TXID or a v2 TXID-checksum, nothing else.
                let body = s.split('.').next().unwrap_or_default();
                assert_eq!(body.len(), if token.checksum.is_some() { 33 } else { 16 });
            }
        }
    }
});
