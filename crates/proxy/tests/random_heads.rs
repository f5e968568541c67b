//! Randomized request heads, seeded and bounded (a few thousand cases, well under a second),
//! through the parsers the request path runs on a client's head before anything is sent:
//! the token scan, the hop header's check, hop-by-hop stripping, the `X-Forwarded-*` rewrite
//! and the passthrough path forms. None may panic, and each keeps its promise on any input.
//! `LITEFS_FUZZ_SEED=<n>` replays one run; a failure names its seed and case.

use std::{net::IpAddr, time::Duration};

use http::{request::Parts, HeaderMap, HeaderName, HeaderValue};
use litefs_proxy::{
    headers::{self, Client, HOP_HEADER},
    patterns::{self, Patterns},
    token::Tokens,
    trust::{Cidrs, Hop, PeerAuth},
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

const CASES: usize = 4000;
const SECRET: &str = "random-heads-secret-0123";
const NOW: u64 = 1_750_000_000_000;

fn seed() -> u64 {
    std::env::var("LITEFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1111_2026)
}

const NAMES: &[&str] = &[
    "cookie",
    "litefs-txid",
    "litefs-proxy-hop",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "connection",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-authorization",
    "host",
    "x-app-header",
];

/// Values worth mutating: what real clients and proxies send, and near misses.
const SEEDS: &[&str] = &[
    "litefs-txid=000000000000002a-00000000deadbeef",
    "litefs-txid=000000000000002a; __txid=ffffffffffffffff",
    "__txid=0000000000000001",
    "a=b; litefs-txid=000000000000002A-0000000000000000.0123456789abcdef0123456789abcdef",
    "000000000000002a-00000000deadbeef",
    "ffffffffffffffff",
    "1",
    "2",
    "2.1750000000000.00000000000000000000000000000000",
    "keep-alive, x-forwarded-for, litefs-proxy-hop",
    "Upgrade",
    "websocket",
    "chunked",
    "gzip, chunked",
    "50",
    "203.0.113.9, 10.0.0.1",
    "for=203.0.113.9;proto=https",
    "https",
    "example.test",
    "[::1]:8080",
];

const PATHS: &[&str] = &[
    "/static/site.css",
    "/static/../api/items",
    "/static/%2e%2e/api/items",
    "/static/..%2fapi/items",
    "/static/..;/api/items",
    "/static/..\\api/items",
    "/static/.%2E/api",
    "/api/../static/x",
    "/%7euser/%41%zz%",
    "/a/./b/../../c",
    "/",
    "/litefs/status",
];

/// Bytes that matter to these parsers, plus anything.
fn random_byte(rng: &mut StdRng) -> u8 {
    const INTERESTING: &[u8] = b"0123456789abcdefABCDEF-.;=, \t/%\\:[]\"'";
    if rng.gen_bool(0.8) {
        *INTERESTING.choose(rng).unwrap_or(&b'x')
    } else {
        rng.gen()
    }
}

/// A mutation of `base`: bytes flipped, inserted, deleted, a range duplicated, or truncated.
fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(0..4) {
        let at = rng.gen_range(0..=v.len());
        match rng.gen_range(0..5) {
            0 if at < v.len() => v[at] = random_byte(rng),
            1 => v.insert(at, random_byte(rng)),
            2 if at < v.len() => {
                let end = rng.gen_range(at..=v.len());
                v.drain(at..end);
            }
            3 if at < v.len() => {
                let end = rng.gen_range(at..=v.len().min(at + 8));
                let dup: Vec<u8> = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
            4 => v.truncate(at),
            _ => {}
        }
    }
    v
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.7) {
        let base = SEEDS.choose(rng).copied().unwrap_or("");
        mutate(rng, base.as_bytes())
    } else {
        (0..rng.gen_range(0..40))
            .map(|_| random_byte(rng))
            .collect()
    }
}

fn random_head(rng: &mut StdRng) -> Option<Parts> {
    let base = PATHS.choose(rng).copied().unwrap_or("/");
    let path = mutate(rng, base.as_bytes());
    let method = ["GET", "POST", "OPTIONS", "DELETE", "PATCH"]
        .choose(rng)
        .copied()
        .unwrap_or("GET");
    let mut parts = http::Request::builder()
        .method(method)
        .uri(path.as_slice())
        .body(())
        .ok()?
        .into_parts()
        .0;
    for _ in 0..rng.gen_range(0..16) {
        let name = HeaderName::from_static(NAMES.choose(rng).copied().unwrap_or("x-app-header"));
        if let Ok(v) = HeaderValue::from_bytes(&random_value(rng)) {
            parts.headers.append(name, v);
        }
    }
    Some(parts)
}

fn random_ip(rng: &mut StdRng) -> IpAddr {
    if rng.gen_bool(0.5) {
        IpAddr::from(rng.gen::<[u8; 4]>())
    } else {
        IpAddr::from(rng.gen::<[u8; 16]>())
    }
}

#[test]
fn random_heads_never_panic_and_keep_each_parsers_promise() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let plain = Tokens::new("litefs-txid", Duration::from_secs(300), None);
    let signed_tokens = Tokens::new("litefs-txid", Duration::from_secs(300), Some(SECRET));
    let signed = PeerAuth::new(Some(SECRET), Cidrs::loopback());
    let peer = IpAddr::from([10, 9, 9, 9]);
    let unsigned = PeerAuth::new(None, Cidrs::default().with_addrs([peer]));
    let globs = Patterns::new(&["/static/*", "*.css", "/litefs/*"]).expect("globs");
    let mut heads = 0;
    for case in 0..CASES {
        let ctx = format!("seed {seed} case {case}");
        let Some(mut head) = random_head(&mut rng) else {
            continue;
        };
        heads += 1;

        // Tokens: anything accepted is what minting would write, and verifies again.
        for tokens in [&plain, &signed_tokens] {
            if let Some(t) = tokens.extract(&head.headers).token {
                assert_eq!(tokens.verify(&tokens.value(t)), Some(t), "{ctx}");
            }
        }
        // A signed-token proxy accepts only tokens it signed: never one made up here.
        assert!(
            signed_tokens.extract(&head.headers).token.is_none(),
            "{ctx}: {:?}",
            head.headers
        );

        // The hop header: a client's is never a peer's, signed or by address.
        let from = random_ip(&mut rng);
        assert!(
            !matches!(signed.verify_at(from, &head, NOW), Hop::Peer(_)),
            "{ctx}: {:?}",
            head.headers
        );
        if from != peer {
            assert!(
                !matches!(unsigned.verify_at(from, &head, NOW), Hop::Peer(_)),
                "{ctx}"
            );
        }
        // A real signature verifies; a changed one never names another hop count.
        let hops = rng.gen_range(0..=3);
        let value = signed.hop_value_at(hops, &head, NOW);
        head.headers.insert(HOP_HEADER, value.clone());
        assert_eq!(
            signed.verify_at(from, &head, NOW + 5),
            Hop::Peer(hops),
            "{ctx}"
        );
        let mutated = mutate(&mut rng, value.as_bytes());
        if mutated != value.as_bytes() {
            if let Ok(v) = HeaderValue::from_bytes(&mutated) {
                head.headers.insert(HOP_HEADER, v);
                // Only a change that reads the same (a leading zero, a space) can pass.
                if let Hop::Peer(n) = signed.verify_at(from, &head, NOW) {
                    assert_eq!(n, hops, "{ctx}: {mutated:?}");
                }
            }
        }
        head.headers.remove(HOP_HEADER);

        // Hop-by-hop headers never survive the strip (an upgrade keeps what it needs).
        let had_te = head.headers.contains_key("transfer-encoding");
        let mut stripped = head.headers.clone();
        headers::strip_hop_by_hop(&mut stripped);
        for h in [
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-authorization",
        ] {
            assert!(!stripped.contains_key(h), "{ctx}: {h} in {stripped:?}");
        }
        if had_te {
            assert!(!stripped.contains_key("content-length"), "{ctx}");
        }
        if let Some(c) = stripped.get("connection") {
            assert_eq!(c, "upgrade", "{ctx}");
        }

        // From an untrusted client, X-Forwarded-* is what the proxy saw, nothing else.
        let client = Client::new(from);
        let mut fwd: HeaderMap = stripped.clone();
        headers::add_forwarded(&mut fwd, &client, false);
        let all = |name: &str| fwd.get_all(name).iter().count();
        assert_eq!(fwd.get("x-forwarded-for"), Some(&client.value), "{ctx}");
        assert_eq!(all("x-forwarded-for"), 1, "{ctx}");
        assert_eq!(
            fwd.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"http"[..]),
            "{ctx}"
        );
        assert_eq!(
            fwd.get("x-forwarded-host"),
            stripped.get("host"),
            "{ctx}: the Host this proxy saw"
        );
        assert_eq!(all("forwarded") + all("x-real-ip"), 0, "{ctx}");
        // From a trusted one, the client is appended to what came.
        let mut kept = stripped.clone();
        headers::add_forwarded(&mut kept, &client, true);
        let xff = kept
            .get("x-forwarded-for")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(xff.ends_with(client.value.as_bytes()), "{ctx}");

        // Passthrough forms: the raw path first, no dot segment left in the others.
        let path = head.uri.path();
        let forms = patterns::path_forms(path);
        assert_eq!(forms[0], path, "{ctx}");
        if path.starts_with('/') {
            for f in &forms[1..] {
                assert!(
                    !f.split('/').any(|seg| seg == ".." || seg == "."),
                    "{ctx}: {path:?} -> {f:?}"
                );
            }
        }
        for f in &forms {
            let _ = globs.matches(f);
        }
    }
    assert!(heads > CASES / 2, "most cases make a head: {heads}");
}
