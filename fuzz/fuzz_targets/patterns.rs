//! LiteFS-style globs from arbitrary text, matched against arbitrary paths: building may
//! fail with an error, matching never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use litefs_proxy::patterns::Patterns;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (glob, path) = s.split_once('\n').unwrap_or((s, "/"));
    if let Ok(p) = Patterns::new(&[glob]) {
        let _ = p.matches(path);
        // A glob without `*` is literal: it matches itself.
        if !glob.contains('*') {
            assert!(p.matches(glob));
        }
    }
});
