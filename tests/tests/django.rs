//! Issue 4, items 5 and 6: a real Django project (tests/django_app) served by gunicorn on
//! three nodes, each behind a real `litefs-proxy` (Raft role, `sync_replicas = 1` as by
//! default: a write is answered once a replica holds it) over the sim's LiteFS as a process
//! per node (LiteFS's consul lease loop against the node's lease endpoint, replication over
//! a stream from the primary, read-only replicas; the nodes' replicas lag 40, 120 and 200 ms,
//! near and far ones), with a real nginx round-robin upstream (no stickiness) in front.
//! Issue 15, item 3: full Django admin flows through it, with Django's defaults and with the
//! settings that write on GET, with and without contrib/django's helper. Needs
//! python3 with Django + gunicorn and nginx: skipped with a message when they are missing,
//! unless `CI` is set (then they fail).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use litefs_proxy_tests::{
    client::{self, Answer},
    django::{self, admin, DjangoCluster, DjangoOptions, Jar},
};

/// One cluster at a time on the shared cores keeps Raft and replication timing honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ROUNDS: usize = 200;

/// Node i's LiteFS adds `LAGS_MS[i]` to every transaction it receives as a replica: whichever
/// node is primary, one replica is at least 80 ms behind the other, so the write (answered
/// once the nearer one holds it) is still missing on the farther one for a while.
const LAGS_MS: [u64; 3] = [40, 120, 200];

fn lag_max() -> Duration {
    Duration::from_millis(LAGS_MS[2])
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", a.status, a.text()))
}

/// A unique enough tag per test run (keys must not collide with earlier rounds).
fn run_tag() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

async fn post_item(addr: SocketAddr, key: &str, cookie: Option<String>) -> anyhow::Result<Answer> {
    let mut b = client::request("POST", "/items/").header("content-type", "application/json");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    let body = serde_json::json!({ "key": key, "text": "round" }).to_string();
    client::send(addr, b.body(client::full(body))?).await
}

async fn get_items(addr: SocketAddr, key: &str, cookie: Option<String>) -> anyhow::Result<Answer> {
    let mut b = client::request("GET", &format!("/items/?key={key}"));
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    client::send(addr, b.body(client::empty())?).await
}

/// Outcome of POST-then-GET rounds.
#[derive(Default, Debug)]
struct Rounds {
    misses: usize,
    /// Reads answered by a node other than the one that wrote.
    on_replica: usize,
    /// POSTs whose minted token did not move past the previous round's.
    stale_tokens: usize,
    slowest_read: Duration,
}

async fn rounds(c: &DjangoCluster, tag: &str, use_jar: bool) -> Rounds {
    let mut jar = Jar::default();
    let mut out = Rounds::default();
    let mut last_token: Option<String> = None;
    for r in 0..ROUNDS {
        let key = format!("{tag}-{}-{r}", if use_jar { "jar" } else { "nojar" });
        let w = post_item(c.nginx, &key, use_jar.then(|| jar.header()).flatten())
            .await
            .unwrap_or_else(|e| panic!("POST {key}: {e}"));
        assert_eq!(w.status, 201, "POST {key}: {}\n{}", w.text(), c.logs());
        let written_on = json(&w)["written_on"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if use_jar {
            jar.store(&w);
            let token = jar.get("litefs-txid").map(str::to_owned);
            assert!(token.is_some(), "the write minted a token: {:?}", w.headers);
            if token <= last_token {
                out.stale_tokens += 1;
            }
            last_token = token;
        }
        let started = Instant::now();
        let g = get_items(c.nginx, &key, use_jar.then(|| jar.header()).flatten())
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {e}"));
        out.slowest_read = out.slowest_read.max(started.elapsed());
        assert_eq!(g.status, 200, "GET {key}: {}\n{}", g.text(), c.logs());
        let v = json(&g);
        if v["served_by"].as_str() != Some(written_on.as_str()) {
            out.on_replica += 1;
        }
        if v["count"] != 1 {
            out.misses += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_through_nginx_with_the_cookie_and_misses_without() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = DjangoCluster::start(LAGS_MS, "").await;
    let tag = run_tag();

    let with = rounds(&c, &tag, true).await;
    let without = rounds(&c, &tag, false).await;
    println!(
        "{ROUNDS} POST-then-GET rounds through nginx, replica lags {LAGS_MS:?} ms:\n  \
         with the cookie jar: {} misses, {} reads served by a replica, slowest read {:?}, \
         {} stale tokens\n  without cookies:     {} misses, {} reads served by a replica",
        with.misses,
        with.on_replica,
        with.slowest_read,
        with.stale_tokens,
        without.misses,
        without.on_replica,
    );
    assert_eq!(
        with.stale_tokens, 0,
        "every write's token moved past the previous one"
    );
    assert!(
        with.on_replica >= ROUNDS / 3,
        "round robin sent reads to replicas: {with:?}"
    );
    assert_eq!(with.misses, 0, "a read missed its own write: {with:?}");
    assert!(
        without.misses > 0,
        "without the token reads on lagging replicas must miss (else this check proves nothing): {without:?}"
    );
    // Nothing ever wrote to a replica's database.
    for i in 0..3 {
        let log = c.procs.litefs_log(i);
        let lines: Vec<&str> = log.lines().collect();
        let first = lines
            .iter()
            .position(|l| l.contains("something wrote to a replica's database"));
        assert_eq!(
            c.foreign_writes(i),
            0,
            "{}'s LiteFS, up to its first complaint:\n{}\n{}",
            c.id(i),
            first.map_or(String::new(), |f| lines[f.saturating_sub(40)..=f]
                .join("\n")),
            c.logs()
        );
    }
}

/// A 50 MiB file of pseudo-random bytes (xorshift), so compression or truncation shows.
fn big_file(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("big.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..(50 * 1024 * 1024 / 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
    path
}

async fn upload(addr: SocketAddr, file: &Path) -> anyhow::Result<Answer> {
    let (body, len, content_type) = django::multipart_file(file);
    let req = client::request("POST", "/upload/")
        .header("content-type", content_type)
        .header("content-length", len)
        .body(body)?;
    tokio::time::timeout(Duration::from_secs(120), client::send(addr, req)).await?
}

/// The uploads recorded in node `i`'s database: sha256 → size.
fn uploads_in(c: &DjangoCluster, i: usize) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open_with_flags(
        c.db_path(i),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = conn
        .prepare("SELECT sha256, size FROM items_upload")
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn assert_intact(a: &Answer, size: u64, sha: &str, primary: &str, via: &str) {
    assert_eq!(a.status, 201, "upload via {via}: {}", a.text());
    let v = json(a);
    assert_eq!(v["size"], size, "size via {via}: {v}");
    assert_eq!(v["sha256"], sha, "sha256 via {via}: {v}");
    assert_eq!(
        v["written_on"], primary,
        "handled by the primary's Django: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_upload_through_a_replica_reaches_the_primarys_django_intact() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = DjangoCluster::start(LAGS_MS, "").await;
    let l = c.wait_leader(Duration::from_secs(20)).await;
    let files = tempfile::tempdir().unwrap();
    let file = big_file(files.path());
    let size = std::fs::metadata(&file).unwrap().len();
    let sha = django::sha256_file(&file);
    let primary = c.id(l).to_owned();

    // Straight to a replica's proxy: it must stream the body on to the primary.
    let r = (l + 1) % 3;
    let before = c.forwarded_writes(r).await;
    let started = Instant::now();
    let a = upload(c.procs.nodes[r].proxy, &file).await.unwrap();
    let took = started.elapsed();
    assert_intact(&a, size, &sha, &primary, c.id(r));
    assert_eq!(
        c.forwarded_writes(r).await,
        before + 1,
        "{} forwarded it",
        c.id(r)
    );
    println!(
        "50 MiB upload via replica {} -> primary {primary}: {took:?}",
        c.id(r)
    );

    // Through nginx (client_max_body_size 100m, proxy_request_buffering off) until round
    // robin has put one on a replica (at most one lap of the three proxies).
    let mut via_replica = false;
    for attempt in 0..3 {
        let before: Vec<u64> =
            futures_util::future::join_all((0..3).map(|i| c.forwarded_writes(i))).await;
        let started = Instant::now();
        let a = upload(c.nginx, &file).await.unwrap();
        let took = started.elapsed();
        assert_intact(&a, size, &sha, &primary, "nginx");
        let after: Vec<u64> =
            futures_util::future::join_all((0..3).map(|i| c.forwarded_writes(i))).await;
        let forwarder = (0..3).find(|&i| after[i] > before[i]);
        println!(
            "50 MiB upload #{attempt} via nginx, forwarded by {:?}: {took:?}",
            forwarder.map(|i| c.id(i))
        );
        if forwarder.is_some() {
            via_replica = true;
            break;
        }
    }
    assert!(
        via_replica,
        "one of three uploads through nginx went through a replica"
    );
    // Recorded once per upload on the primary, which is where Django wrote it.
    let rows = uploads_in(&c, l);
    assert_eq!(rows.get(&sha).copied(), Some(size as i64), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_arrives_in_pieces_through_nginx() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = DjangoCluster::start(LAGS_MS, "").await;
    let tag = run_tag();
    let mut served_by = Vec::new();
    // Three in a row: round robin puts them on each node once.
    for k in 0..3 {
        let flag = format!("flag-{tag}-{k}");
        // The view yields piece 1, then blocks until the flag file exists (at most 30 s),
        // then yields the rest. If anything on the way buffered the response, piece 1 could
        // not arrive before the flag exists.
        let req = client::request("GET", &format!("/stream/?flag={flag}&timeout=30"))
            .body(client::empty())
            .unwrap();
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client::send_streaming(c.nginx, req),
        )
        .await
        .expect("response head within 10 s")
        .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !got.contains('\n') {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "piece 1 did not arrive before the flag existed (buffered?); got {got:?}"
                    )
                })
                .expect("body not over before piece 1")
                .expect("body frame");
            if let Ok(d) = frame.into_data() {
                got.push_str(&String::from_utf8_lossy(&d));
            }
        }
        assert!(got.starts_with("piece 1 from "), "{got:?}");
        assert!(
            !got.contains("piece 2"),
            "the view is still waiting: {got:?}"
        );
        served_by.push(got.trim().trim_start_matches("piece 1 from ").to_owned());
        std::fs::write(c.flag_dir.join(&flag), b"").unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("rest of the body")
            .unwrap()
            .to_bytes();
        got.push_str(&String::from_utf8_lossy(&rest));
        assert!(got.contains("piece 2 flag=seen\ndone\n"), "{got:?}");
    }
    println!("streamed in pieces through nginx from {served_by:?}");
    served_by.sort();
    served_by.dedup();
    assert_eq!(served_by.len(), 3, "round robin reached every node");
}

/// One write of the failover round.
#[derive(Debug)]
struct Sent {
    key: String,
    sent: Instant,
    answered: Instant,
    status: Result<u16, String>,
    body: String,
}

/// key → number of rows in node `i`'s database, for keys starting with `prefix`.
fn keys_in(c: &DjangoCluster, i: usize, prefix: &str) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open_with_flags(
        c.db_path(i),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = conn
        .prepare("SELECT key, count(*) FROM items_item WHERE key LIKE ?1 GROUP BY key")
        .unwrap();
    let rows = st
        .query_map([format!("{prefix}%")], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Needs `role.confirm_litefs` (the harness sets it): without it the new leader's proxy sends
/// the writes it held during the election to Django before LiteFS there is primary, and they
/// fail with "attempt to write a readonly database" (500), every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_every_20_ms_through_nginx_survive_kill_9_of_the_leader() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = DjangoCluster::start(LAGS_MS, "primary_redirect_timeout = \"10s\"").await;
    let l = c.wait_leader(Duration::from_secs(20)).await;
    let prefix = format!("fo-{}-", run_tag());
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut killed_at = None;
    for n in 0.. {
        tick.tick().await;
        if start.elapsed() >= Duration::from_secs(3) {
            break;
        }
        if killed_at.is_none() && start.elapsed() >= Duration::from_secs(1) {
            killed_at = Some(Instant::now());
            c.kill_node(l);
        }
        let key = format!("{prefix}{n}");
        let (nginx, sent) = (c.nginx, sent.clone());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let r =
                tokio::time::timeout(Duration::from_secs(30), post_item(nginx, &key, None)).await;
            let answered = Instant::now();
            let (status, body) = match r {
                Ok(Ok(a)) => (Ok(a.status.as_u16()), a.text()),
                Ok(Err(e)) => (Err(format!("{e:#}")), String::new()),
                Err(_) => (Err("no answer in 30 s".into()), String::new()),
            };
            sent.lock().unwrap().push(Sent {
                key,
                sent: at,
                answered,
                status,
                body,
            });
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let killed_at = killed_at.expect("the leader was killed");
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let new = c.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new, l);
    // LiteFS's replication is asynchronous: without `sync_replicas` the writes the dead
    // primary acknowledged in the last replication lag before the kill would still be in
    // flight to the replicas and gone with it (this test counted them as lost when it ran
    // that way). With `sync_replicas = 1` (the default) a write is answered only once a
    // replica holds it and the election picks the most caught-up survivor, so none may be
    // missing: those acknowledged in that window and found nowhere are still told apart in
    // the count, and must be zero; every acknowledged write must be on both survivors.
    let in_flight_window = lag_max() + Duration::from_millis(300);
    // Let replication finish on the surviving replica.
    assert!(
        c.wait_replicated(Duration::from_secs(20)).await,
        "{}",
        c.logs()
    );
    let on_primary = keys_in(&c, new, &prefix);
    let replica = (0..3).find(|&i| i != l && i != new).unwrap();
    let on_replica = keys_in(&c, replica, &prefix);

    let mut ok = 0;
    let mut retry = 0;
    let mut in_flight = 0;
    let mut lost = 0;
    let mut bad = Vec::new();
    for s in &sent {
        match s.status {
            Ok(200..=299) => {
                ok += 1;
                let unshipped = s.answered < killed_at
                    && killed_at - s.answered <= in_flight_window
                    && !on_primary.contains_key(&s.key)
                    && !on_replica.contains_key(&s.key);
                if unshipped {
                    lost += 1;
                } else if on_primary.get(&s.key) != Some(&1) || on_replica.get(&s.key) != Some(&1) {
                    bad.push(format!(
                        "{} acknowledged but {:?} rows on the new primary, {:?} on the replica",
                        s.key,
                        on_primary.get(&s.key),
                        on_replica.get(&s.key)
                    ));
                }
            }
            Ok(503) => {
                retry += 1;
                // A 503 is only given to a write that never left: retrying it is safe.
                if on_primary.contains_key(&s.key) {
                    bad.push(format!("{} answered 503 but applied", s.key));
                }
            }
            // In flight at the kill: it may or may not have been applied, and the client is
            // told so: a 502, or a response cut off after its head (the dead primary had
            // started answering; nothing can turn that into a status any more).
            Ok(502) | Err(_) if s.sent < killed_at && s.answered > killed_at => in_flight += 1,
            _ => bad.push(format!(
                "{} sent at +{:?} (kill at +{:?}), answered at +{:?}: {:?} {}",
                s.key,
                s.sent - start,
                killed_at - start,
                s.answered - start,
                s.status,
                s.body
                    .lines()
                    .find(|l| l.contains("<title>"))
                    .unwrap_or(&s.body)
                    .trim()
            )),
        }
    }
    for (k, n) in &on_primary {
        if *n > 1 {
            bad.push(format!("{k} applied {n} times"));
        }
    }
    let first_after = sent
        .iter()
        .filter(|s| s.sent >= killed_at && matches!(s.status, Ok(200..=299)))
        .map(|s| s.answered - killed_at)
        .min();
    let slowest = sent.iter().map(|s| s.answered - s.sent).max();
    let mut before_kill: Vec<Duration> = sent
        .iter()
        .filter(|s| s.answered < killed_at && matches!(s.status, Ok(200..=299)))
        .map(|s| s.answered - s.sent)
        .collect();
    before_kill.sort();
    let p50_before = before_kill.get(before_kill.len() / 2).copied();
    println!(
        "failover through nginx: {} writes, {ok} acknowledged ({lost} of them in the last {in_flight_window:?} \
         before the kill found nowhere, lost), {retry} answered 503, {in_flight} in flight at \
         the kill answered 502 or cut off; {} -> {}: first write sent after the kill acknowledged {first_after:?} \
         after it; slowest write {slowest:?}; writes answered before the kill took {p50_before:?} (p50)",
        sent.len(),
        c.id(l),
        c.id(new),
    );
    let app_errors: Vec<String> = (0..3)
        .flat_map(|i| {
            c.app_errors(i)
                .into_iter()
                .map(move |e| format!("{}: {e}", i + 1))
        })
        .collect();
    assert_eq!(
        lost, 0,
        "acknowledged writes lost with the primary although a replica had to hold each"
    );
    assert!(
        bad.is_empty(),
        "{} bad answers:\n{}\nDjango errors (node: exception):\n{}\n{}",
        bad.len(),
        bad.join("\n"),
        app_errors.join("\n"),
        c.logs()
    );
    assert!(ok > 100, "most writes acknowledged");
    assert!(first_after.is_some(), "writes work again after the kill");
}

/// Issue 15, items 1 and 2: a view that writes on GET (a hit counter) fails on every
/// replica, whose database is read-only (500), and works only on the primary; with
/// contrib/django's `ReplayOnPrimaryMiddleware` first in MIDDLEWARE the failed write becomes
/// the replay signal, the replica's proxy sends the read once to the primary, and every GET,
/// through any node, is answered by the primary's Django and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_writes_on_get_fails_on_replicas_unless_the_helper_replays_it() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    for helper in [false, true] {
        let options = DjangoOptions {
            helper,
            ..DjangoOptions::default()
        };
        let c = DjangoCluster::start_with(LAGS_MS, "", options).await;
        let l = c.wait_leader(Duration::from_secs(30)).await;
        let path = format!("/hits/p{}/", run_tag());
        let mut answers = Vec::new();
        for round in 0..2 {
            for i in 0..3 {
                let a = client::get(c.procs.nodes[i].proxy, &path, &[])
                    .await
                    .expect("answer");
                answers.push((round, i, a));
            }
        }
        let seen: Vec<(usize, u16)> = answers
            .iter()
            .map(|(_, i, a)| (*i, a.status.as_u16()))
            .collect();
        println!(
            "helper {helper}: leader {}, (node, status) {seen:?}",
            c.id(l)
        );
        for (_, i, a) in &answers {
            if *i == l || helper {
                assert_eq!(
                    a.status,
                    200,
                    "helper {helper}, through {}: {}",
                    c.id(*i),
                    a.text()
                );
                assert_eq!(json(a)["node"], c.id(l), "answered by the primary's Django");
                assert!(
                    a.headers.get("litefs-replay").is_none(),
                    "the signal reached the client"
                );
            } else {
                assert_eq!(
                    a.status,
                    500,
                    "a replica wrote on GET without the helper: {}",
                    a.text()
                );
            }
        }
        let ok: Vec<&Answer> = answers
            .iter()
            .filter(|(_, _, a)| a.status == 200)
            .map(|(_, _, a)| a)
            .collect();
        let last = ok.last().expect("the primary answered");
        assert_eq!(
            json(last)["count"],
            ok.len() as u64,
            "every answered GET counted once"
        );
        if helper {
            // The replicas' proxies replayed their reads: 2 rounds each.
            for i in (0..3).filter(|&i| i != l) {
                let m = client::get(c.procs.nodes[i].proxy, "/litefs/metrics", &[])
                    .await
                    .expect("metrics");
                let line = "litefs_proxy_replays_total{outcome=\"replayed\"} 2";
                assert!(
                    m.text().contains(line),
                    "{}: no `{line}` in\n{}",
                    c.id(i),
                    m.text()
                );
            }
        }
    }
}

/// Admin flows per configuration (each flow about 15 requests, a cluster per configuration).
const FLOWS: usize = 10;

/// What [`admin_flows`] saw.
#[derive(Default, Debug)]
struct Flows {
    completed: usize,
    failed: Vec<admin::StepFailed>,
    /// GETs of completed flows, and those a replica's Django answered.
    gets: usize,
    gets_by_replicas: usize,
}

/// [`FLOWS`] admin flows one after the other through nginx, each with a fresh cookie jar,
/// on a cluster whose primary is node `primary`.
async fn admin_flows(c: &DjangoCluster, primary: usize) -> Flows {
    let tag = run_tag();
    let mut out = Flows::default();
    // nginx's round robin is strictly cyclic, and a flow's length a multiple of the 3 nodes
    // would put each step on the same node in every flow: pings between flows start flow n
    // on node (start + n) mod 3, so each step lands on each node over the flows.
    let mut sent = 0;
    for n in 0..FLOWS {
        while sent % 3 != n % 3 {
            let ping = client::get(c.nginx, "/ping", &[]).await.expect("ping");
            assert_eq!(ping.status, 200, "ping through nginx");
            sent += 1;
        }
        let done = admin::flow(c.nginx, &format!("admin-{tag}-{n}")).await;
        sent += done.as_ref().map_or_else(|e| e.requests, |d| d.requests);
        match done {
            Ok(done) => {
                out.completed += 1;
                let gets = done.served_by.iter().filter(|(m, _)| *m == "GET");
                for (_, node) in gets {
                    out.gets += 1;
                    out.gets_by_replicas += usize::from(node != c.id(primary));
                }
            }
            Err(e) => out.failed.push(e),
        }
    }
    out
}

/// Starts a cluster set up as `options` say, runs the flows and prints what they did.
async fn admin_run(options: DjangoOptions) -> (DjangoCluster, usize, Flows) {
    let c = DjangoCluster::start_with(LAGS_MS, "", options).await;
    let l = c.wait_leader(Duration::from_secs(30)).await;
    let started = Instant::now();
    let flows = admin_flows(&c, l).await;
    let took = started.elapsed();
    assert_eq!(
        c.wait_leader(Duration::from_secs(30)).await,
        l,
        "the primary stayed put (else who answered what says little)"
    );
    println!(
        "admin flows through nginx, {options:?}, replica lags {LAGS_MS:?} ms, primary {}: \
         {}/{FLOWS} completed, {} failed, in {took:?}; {} of the completed flows' {} GETs \
         answered by a replica's Django",
        c.id(l),
        flows.completed,
        flows.failed.len(),
        flows.gets_by_replicas,
        flows.gets,
    );
    for f in &flows.failed {
        println!("  failed: {f}");
    }
    for i in 0..3 {
        assert_eq!(
            c.foreign_writes(i),
            0,
            "nothing wrote to {}'s replica database",
            c.id(i)
        );
    }
    (c, l, flows)
}

fn app_errors(c: &DjangoCluster) -> String {
    (0..3)
        .flat_map(|i| {
            c.app_errors(i)
                .into_iter()
                .map(move |e| format!("{}: {e}", i + 1))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Issue 15, item 3: a browser's session in the admin (log in, add, list with the message,
/// change, delete, log out; about 15 requests, each redirect followed) through nginx's round
/// robin, its cookie jar carrying Django's cookies and the proxy's token. With Django's
/// defaults no GET writes, so replicas answer most of them and every flow goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flows_through_nginx_go_through_with_djangos_defaults() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (c, _, flows) = admin_run(DjangoOptions::default()).await;
    assert!(
        flows.failed.is_empty(),
        "{} of {FLOWS} flows failed:\n{}\nDjango errors (node: exception):\n{}\n{}",
        flows.failed.len(),
        flows
            .failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        app_errors(&c),
        c.logs()
    );
    assert!(
        // Two in three by chance.
        flows.gets_by_replicas >= flows.gets / 3,
        "round robin put the GETs on replicas: {flows:?}"
    );
}

/// The same flows with the three settings that write on GET (`MESSAGE_STORAGE` the session
/// storage, `SESSION_SAVE_EVERY_REQUEST`, `CSRF_USE_SESSIONS`) and without the helper: the
/// GETs that write fail on replicas, whose database is read-only (the login page's new
/// session: 500; a session saved on a replica: `SessionInterrupted`'s 400). This shows the
/// flows can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flows_with_settings_that_write_on_get_fail_on_replicas_without_the_helper() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let options = DjangoOptions {
        helper: false,
        get_writes: true,
    };
    let (c, l, flows) = admin_run(options).await;
    assert!(
        !flows.failed.is_empty(),
        "the GETs that write must fail on replicas (else these flows prove nothing): {flows:?}"
    );
    for f in &flows.failed {
        let on_replica = f.served_by.as_deref().is_some_and(|s| s != c.id(l));
        assert!(
            f.method == "GET" && matches!(f.status, Some(400 | 500)) && on_replica,
            "a failure other than a GET that wrote on a replica: {f}\n{}",
            c.logs()
        );
    }
}

/// The same settings with contrib/django's `ReplayOnPrimaryMiddleware`: the GETs that try to
/// write on a replica are replayed on the primary, and every flow goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flows_with_settings_that_write_on_get_go_through_with_the_helper() {
    if !django::available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let options = DjangoOptions {
        helper: true,
        get_writes: true,
    };
    let (c, l, flows) = admin_run(options).await;
    assert!(
        flows.failed.is_empty(),
        "{} of {FLOWS} flows failed:\n{}\nDjango errors (node: exception):\n{}\n{}",
        flows.failed.len(),
        flows
            .failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        app_errors(&c),
        c.logs()
    );
    let mut replayed = 0;
    for i in (0..3).filter(|&i| i != l) {
        replayed += c.replayed_reads(i).await;
    }
    println!("replicas' proxies replayed {replayed} reads on the primary");
    assert!(
        replayed > 0,
        "the replicas' proxies replayed the GETs that wrote"
    );
}
