//! Randomized requests (seeded, bounded: a few hundred, a few seconds) against the lease
//! endpoint's parsers: random and mutated paths, query strings (durations, indexes, flags,
//! percent-encodings) and bodies (mutations of LiteFS's session request, JSON of the wrong
//! shape, bytes). Every request gets a well-formed HTTP answer with one of Consul's status
//! codes, nothing panics, and the endpoint still serves LiteFS afterwards.
//! `LITEFS_FUZZ_SEED=<n>` replays one run; a failure names its seed and case.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{lease_addr, lease_cluster, GO_CREATE};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CASES: usize = 400;
/// Panics anywhere in this test binary (its only test), the endpoint's tasks included.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn seed() -> u64 {
    std::env::var("LITEFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ea5e)
}

const PATHS: &[&str] = &[
    "/v1/kv/litefs/primary",
    "/v1/kv/litefs/primary/clusterid",
    "/v1/kv/",
    "/v1/kv",
    "/v1/session/create",
    "/v1/session/renew/",
    "/v1/session/destroy/",
    "/v1/session/info/",
    "/v1/session/node/",
    "/v1/session/list",
    "/v1/status/leader",
    "/v1/catalog/register",
    "/v1/",
    "/",
];

const QUERY_KEYS: &[&str] = &[
    "acquire",
    "release",
    "cas",
    "flags",
    "index",
    "wait",
    "stale",
    "consistent",
    "recurse",
    "token",
    "dc",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "10s",
    "1m30s",
    "1.5h",
    "99999999999999h",
    "5µs",
    "1e9s",
    "00000000-0000-0000-0000-000000000000",
    "",
    "%zz",
    "%00",
    "a+b",
];

const BODIES: &[&str] = &[
    r#"{"TTL":"10s","LockDelay":"1000ms","Behavior":"delete","Name":"litefs"}"#,
    r#"{"TTL":"99999999999999h"}"#,
    r#"{"TTL":"-5s","LockDelay":"x"}"#,
    r#"{"TTL":10,"Behavior":"release","Node":"node-9"}"#,
    r#"{"Behavior":"explode","NodeChecks":[1,2],"Checks":null}"#,
    r#"[]"#,
    r#"null"#,
    r#"{"TTL":"#,
    "aGVsbG8=",
];

fn random_byte(rng: &mut StdRng) -> u8 {
    const INTERESTING: &[u8] = b"0123456789abcdef-.:/%+=&?\"{}[],";
    if rng.gen_bool(0.8) {
        *INTERESTING.choose(rng).unwrap_or(&b'x')
    } else {
        rng.gen()
    }
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(0..4) {
        let at = rng.gen_range(0..=v.len());
        match rng.gen_range(0..4) {
            0 if at < v.len() => v[at] = random_byte(rng),
            1 => v.insert(at, random_byte(rng)),
            2 if at < v.len() => {
                let end = rng.gen_range(at..=v.len().min(at + 6));
                v.drain(at..end);
            }
            3 => v.truncate(at),
            _ => {}
        }
    }
    v
}

/// Bytes as a request-target component: unreserved kept, the rest `%XX`; now and then a raw
/// `%` with garbage after it, as broken clients send.
fn encode(rng: &mut StdRng, bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else if rng.gen_bool(0.05) {
            out.push_str("%z");
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn random_request(rng: &mut StdRng) -> Vec<u8> {
    let method = ["GET", "PUT", "DELETE", "POST", "PATCH"]
        .choose(rng)
        .copied()
        .unwrap_or("GET");
    let mut path = PATHS.choose(rng).copied().unwrap_or("/").to_owned();
    if path.ends_with('/') && rng.gen_bool(0.8) {
        let arg = match rng.gen_range(0..3) {
            0 => uuid_like(rng),
            1 => "node-1".to_owned(),
            _ => String::from_utf8_lossy(&mutate(rng, b"litefs/primary")).into_owned(),
        };
        let arg = mutate(rng, arg.as_bytes());
        path.push_str(&encode(rng, &arg));
    }
    let mut query = Vec::new();
    for _ in 0..rng.gen_range(0..4) {
        let key = QUERY_KEYS.choose(rng).copied().unwrap_or("dc");
        let base = VALUES.choose(rng).copied().unwrap_or("");
        let value = mutate(rng, base.as_bytes());
        query.push(format!("{key}={}", encode(rng, &value)));
    }
    if query.iter().any(|q| q.starts_with("index")) {
        // A blocking query waits up to `wait` by design; the last `wait` wins.
        query.push("wait=20ms".into());
    }
    let body = match rng.gen_range(0..4) {
        0 => mutate(rng, GO_CREATE),
        1 => {
            let base = BODIES.choose(rng).copied().unwrap_or("");
            mutate(rng, base.as_bytes())
        }
        2 => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
        _ => Vec::new(),
    };
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

fn uuid_like(rng: &mut StdRng) -> String {
    let h: [u8; 16] = rng.gen();
    let x = hex::encode(h);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The status of the answer to `req`, or why there is none.
async fn status_of(addr: SocketAddr, req: &[u8]) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or_default();
    if !text.contains("\r\n\r\n") {
        return Err(format!("no complete head: {text:?}"));
    }
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not a status line: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lease_requests_get_consul_answers_and_nothing_panics() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info)
    }));
    common::init_tracing();
    let mut c = lease_cluster();
    c.start_all().await;
    let leader = c.wait_agreed(Duration::from_secs(5)).await;
    let addrs: Vec<SocketAddr> = (0..3).map(|i| lease_addr(&c, i)).collect();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::BTreeMap::new();
    for case in 0..CASES {
        let req = random_request(&mut rng);
        let addr = *addrs.choose(&mut rng).unwrap_or(&addrs[0]);
        let status = status_of(addr, &req).await.unwrap_or_else(|e| {
            panic!(
                "seed {seed} case {case}: {e}\n{}",
                String::from_utf8_lossy(&req)
            )
        });
        assert!(
            [200, 400, 403, 404, 405, 413, 500].contains(&status),
            "seed {seed} case {case}: {status}\n{}",
            String::from_utf8_lossy(&req)
        );
        *seen.entry(status).or_insert(0) += 1;
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
    // The mix reached the parsers, not only the router's 404.
    for status in [200, 400, 404] {
        assert!(seen.get(&status).is_some_and(|n| *n > 0), "{seen:?}");
    }
    // Still serving LiteFS: the same leader, and a session can be created and renewed.
    assert_eq!(c.wait_agreed(Duration::from_secs(5)).await, leader);
    let (st, _, body) =
        common::http_call(addrs[leader], "PUT", "/v1/session/create", GO_CREATE).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let id = common::json_of(&body)["ID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (st, _, _) = common::http_call(
        addrs[leader],
        "PUT",
        &format!("/v1/session/renew/{id}"),
        b"",
    )
    .await;
    assert_eq!(st, 200);
    c.stop_all().await;
}
