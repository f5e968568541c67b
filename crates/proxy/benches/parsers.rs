//! Micro-benchmarks of the per-request parsers: the token (cookie/header scan, MAC check),
//! the position file, the history lookup a replica does per read with a token, and the
//! passthrough/always-forward glob matcher.
//! `cargo bench -p litefs-proxy --bench parsers -- --quick`

use std::{hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use litefs_proxy::{
    history::{History, HISTORY_LEN},
    patterns::Patterns,
    token::{Token, Tokens},
    txid::Position,
    TxId,
};

fn headers(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("example.test"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (bench)"),
    );
    h.insert("cookie", HeaderValue::from_str(cookie).expect("cookie"));
    h
}

fn tokens(c: &mut Criterion) {
    let plain = Tokens::new("litefs-txid", Duration::from_secs(300), None);
    let signed = Tokens::new(
        "litefs-txid",
        Duration::from_secs(300),
        Some("a-long-random-string-shared-by-the-nodes"),
    );
    let minted = Token::from(Position {
        txid: TxId(0x2a),
        post_apply_checksum: 0x95af_056c_a07d_8ad1,
    });
    let signed_value = signed.value(minted);
    // A Django-like cookie header: session, CSRF, then the token.
    let django = "sessionid=8x0k3m2v9q1w7e5r4t6y; csrftoken=Zx8Qm2Lk9Pw3Rt7Yu1Io5As4Df6Gh0Jk";
    let with_plain = headers(&format!(
        "{django}; litefs-txid=000000000000002a-95af056ca07d8ad1"
    ));
    let with_signed = headers(&format!("{django}; litefs-txid={signed_value}"));
    let without = headers(django);

    let mut g = c.benchmark_group("token");
    g.bench_function("extract/no_token", |b| {
        b.iter(|| plain.extract(black_box(&without)))
    });
    g.bench_function("extract/plain", |b| {
        b.iter(|| plain.extract(black_box(&with_plain)))
    });
    g.bench_function("extract/signed", |b| {
        b.iter(|| signed.extract(black_box(&with_signed)))
    });
    g.bench_function("verify/plain", |b| {
        b.iter(|| plain.verify(black_box("000000000000002a-95af056ca07d8ad1")))
    });
    g.bench_function("verify/legacy", |b| {
        b.iter(|| plain.verify(black_box("000000000000002a")))
    });
    g.bench_function("verify/signed", |b| {
        b.iter(|| signed.verify(black_box(&signed_value)))
    });
    g.bench_function("verify/malformed", |b| {
        b.iter(|| plain.verify(black_box("not-a-token")))
    });
    g.finish();
}

fn position(c: &mut Criterion) {
    let mut g = c.benchmark_group("position");
    g.bench_function("parse/valid", |b| {
        b.iter(|| Position::parse(black_box(b"0000000000000002/95af056ca07d8ad1\n")))
    });
    g.bench_function("parse/garbage", |b| {
        b.iter(|| Position::parse(black_box(b"0000000000000002-95af056ca07d8ad1\n")))
    });
    g.finish();
}

fn history(c: &mut Criterion) {
    let mut full = History::new(HISTORY_LEN);
    for t in 0..(HISTORY_LEN as u64 * 2) {
        full.observe(Position {
            txid: TxId(t),
            post_apply_checksum: t | 1 << 63,
        });
    }
    let mut g = c.benchmark_group("history");
    g.bench_function("at/full_ring_hit", |b| {
        b.iter(|| full.at(black_box(TxId(HISTORY_LEN as u64 + 12_345))))
    });
    g.bench_function("at/full_ring_older", |b| {
        b.iter(|| full.at(black_box(TxId(7))))
    });
    g.finish();
}

fn patterns(c: &mut Criterion) {
    let few = Patterns::new(&["/static/*", "/health"]).expect("globs");
    let many_globs: Vec<String> = (0..32).map(|i| format!("/app{i}/*/assets/*.css")).collect();
    let many = Patterns::new(&many_globs).expect("globs");
    let none = Patterns::new::<&str>(&[]).expect("globs");
    let path = "/api/v1/items/12345/comments";

    let mut g = c.benchmark_group("patterns");
    g.bench_function("matches/empty_set", |b| {
        b.iter(|| none.matches(black_box(path)))
    });
    g.bench_function("matches/2_globs_miss", |b| {
        b.iter(|| few.matches(black_box(path)))
    });
    g.bench_function("matches/2_globs_hit", |b| {
        b.iter(|| few.matches(black_box("/static/css/site.css")))
    });
    g.bench_function("matches/32_globs_miss", |b| {
        b.iter(|| many.matches(black_box(path)))
    });
    g.bench_function("matches/32_globs_hit", |b| {
        b.iter(|| many.matches(black_box("/app31/x/y/assets/site.css")))
    });
    g.finish();
}

criterion_group!(benches, tokens, position, history, patterns);
criterion_main!(benches);
