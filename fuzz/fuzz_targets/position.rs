//! The `<db>-pos` parser on arbitrary bytes: never panics, and accepts only LiteFS's
//! `%016x/%016x` (hex in either case, an optional trailing newline).
#![no_main]

use libfuzzer_sys::fuzz_target;
use litefs_proxy::txid::Position;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Position::parse(data) {
        let printed = format!("{}/{:016x}", p.txid, p.post_apply_checksum);
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        assert!(body.eq_ignore_ascii_case(printed.as_bytes()));
    }
});
