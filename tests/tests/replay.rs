//! Replay on the app's signal: a read whose local app, on a replica, answers with
//! `litefs-replay: primary` (or a `fly-replay` naming the primary) is sent once to the
//! primary, which serves it as a write (mints the token); never for a request with a body,
//! never twice, never on the primary; the header never reaches the client.

use http_body_util::BodyExt;
use litefs_proxy::{
    trust::{Cidrs, PeerAuth},
    Primary,
};
use litefs_proxy_tests::{
    app::TestApp,
    client::{self, get, minted},
    node::{pair, pair_with, test_config, ProxyNode},
};

const ASK: (&str, &str) = ("x-test-answer-header", "litefs-replay: primary");
/// Only the replica's app asks (the primary's would write instead).
const ON_B: (&str, &str) = ("x-test-answer-on", "node-b");
/// The app writes on GET where its database is writable (a session saved on every request).
const COMMIT: (&str, &str) = ("x-test-commit", "1");

/// `litefs_proxy_replays_total{outcome="<outcome>"}` on `node`'s metrics.
async fn replays(node: &ProxyNode, outcome: &str) -> u64 {
    let text = get(node.addr, "/litefs/metrics", &[]).await.unwrap().text();
    let key = format!("litefs_proxy_replays_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("{key} in metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn no_replay_header(a: &client::Answer) {
    assert_eq!(a.header("litefs-replay"), None, "{:?}", a.headers);
    assert_eq!(a.header("fly-replay"), None, "{:?}", a.headers);
}

#[tokio::test]
async fn a_read_the_replica_app_sends_to_the_primary_is_served_there_once_with_a_token() {
    let (a, b) = pair(test_config()).await;
    a.sim.set_txid(7);
    let resp = get(b.addr, "/items?q=1", &[ASK, ON_B, COMMIT])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "node-a GET /items 0", "the primary's answer");
    no_replay_header(&resp);
    assert_eq!((b.app.count(), a.app.count()), (1, 1), "each app once");
    assert_eq!(a.sim.txid(), 8, "the primary's app wrote");
    let (_, checksum) = a.sim.pos();
    assert_eq!(
        minted(&resp),
        Some(format!("0000000000000008-{checksum:016x}")),
        "minted as for a write the primary served"
    );
    let seen = &a.app.seen()[0];
    assert_eq!(seen.path, "/items");
    assert_eq!(seen.headers["host"], "example.test", "same headers");
    assert!(
        !seen.headers.contains_key("litefs-proxy-hop")
            && !seen.headers.contains_key("litefs-proxy-replay"),
        "no internal header reaches an app: {:?}",
        seen.headers
    );
    assert_eq!(replays(&b, "replayed").await, 1);
    assert_eq!(replays(&a, "replayed").await, 0);
}

#[tokio::test]
async fn head_and_options_are_replayed_too() {
    let (a, b) = pair(test_config()).await;
    for m in ["HEAD", "OPTIONS"] {
        let req = client::request(m, "/x")
            .header(ASK.0, ASK.1)
            .header(ON_B.0, ON_B.1)
            .body(client::empty())
            .unwrap();
        let resp = client::send(b.addr, req).await.unwrap();
        assert_eq!(resp.header("x-app"), Some("node-a"), "{m}");
        no_replay_header(&resp);
    }
    assert_eq!((b.app.count(), a.app.count()), (2, 2));
    assert_eq!(replays(&b, "replayed").await, 2);
}

#[tokio::test]
async fn a_signed_replay_is_minted_by_the_primary() {
    let peers = PeerAuth::new(Some("0123456789abcdef-secret"), Cidrs::default());
    let (a, b) = pair_with(test_config(), peers).await;
    let resp = get(b.addr, "/items", &[ASK, ON_B, COMMIT]).await.unwrap();
    assert_eq!(resp.header("x-app"), Some("node-a"));
    let (txid, checksum) = a.sim.pos();
    assert_eq!(minted(&resp), Some(format!("{txid:016x}-{checksum:016x}")));
}

#[tokio::test]
async fn fly_replay_is_acted_on_only_when_it_names_the_primary() {
    let (a, b) = pair(test_config()).await;
    for v in ["instance=node-a", "leader", "region=ord;instance=node-a"] {
        let ask = format!("fly-replay: {v}");
        let resp = get(b.addr, "/items", &[("x-test-answer-header", &ask), ON_B])
            .await
            .unwrap();
        assert_eq!(resp.header("x-app"), Some("node-a"), "{v}: replayed");
        no_replay_header(&resp);
    }
    for v in ["instance=node-c", "region=ord", "app=other"] {
        let ask = format!("fly-replay: {v}");
        let resp = get(b.addr, "/items", &[("x-test-answer-header", &ask), ON_B])
            .await
            .unwrap();
        assert_eq!(resp.header("x-app"), Some("node-b"), "{v}: not replayed");
        no_replay_header(&resp);
    }
    assert_eq!(a.app.count(), 3);
    assert_eq!(replays(&b, "replayed").await, 3);
    assert_eq!(replays(&b, "ignored").await, 3);
}

#[tokio::test]
async fn a_status_code_alone_is_no_replay() {
    let (a, b) = pair(test_config()).await;
    for status in ["409", "503", "307"] {
        let resp = get(b.addr, "/items", &[("x-test-status", status)])
            .await
            .unwrap();
        assert_eq!(resp.status.as_str(), status);
        assert_eq!(resp.header("x-app"), Some("node-b"));
    }
    assert_eq!(a.app.count(), 0);
}

#[tokio::test]
async fn a_read_with_a_body_is_never_replayed() {
    let (a, b) = pair(test_config()).await;
    let req = client::request("GET", "/items")
        .header(ASK.0, ASK.1)
        .header(ON_B.0, ON_B.1)
        .header("x-test-status", "409")
        .body(client::full("body"))
        .unwrap();
    let resp = client::send(b.addr, req).await.unwrap();
    assert_eq!(resp.status, 409, "the app's own answer");
    assert_eq!(resp.text(), "node-b GET /items 4");
    no_replay_header(&resp);
    assert_eq!(a.app.count(), 0, "sent nowhere else");
    assert_eq!(replays(&b, "refused_body").await, 1);
    assert_eq!(replays(&b, "replayed").await, 0);
}

#[tokio::test]
async fn on_the_primary_the_header_is_only_removed() {
    let (a, _b) = pair(test_config()).await;
    let resp = get(a.addr, "/items", &[ASK]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-app"), Some("node-a"));
    no_replay_header(&resp);
    assert_eq!(a.app.count(), 1);
    assert_eq!(replays(&a, "on_primary").await, 1);
}

#[tokio::test]
async fn a_replay_whose_answer_asks_again_is_answered_as_is() {
    // The "primary" is an app that asks for a replay whatever it gets (no proxy strips it).
    let fake = TestApp::start("fake-primary", None).await;
    let remote = Primary::remote("node-a", &format!("http://{}", fake.addr)).unwrap();
    let b = ProxyNode::start("node-b", remote, test_config()).await;
    let resp = get(b.addr, "/items", &[ASK]).await.unwrap();
    assert_eq!(
        resp.text(),
        "fake-primary GET /items 0",
        "its answer, as is"
    );
    no_replay_header(&resp);
    assert_eq!(
        (b.app.count(), fake.count()),
        (1, 1),
        "replayed once, never twice"
    );
    assert_eq!(
        fake.seen()[0].headers["litefs-proxy-replay"],
        "1",
        "sent as a replay"
    );
    assert_eq!(replays(&b, "again").await, 1);
}

#[tokio::test]
async fn a_read_that_arrived_forwarded_is_never_replayed_on() {
    let (a, b) = pair(test_config()).await;
    // A peer's forward (loopback, unsigned: a peer here) of a read.
    let resp = get(b.addr, "/items", &[ASK, ON_B, ("litefs-proxy-hop", "1")])
        .await
        .unwrap();
    assert_eq!(resp.header("x-app"), Some("node-b"));
    no_replay_header(&resp);
    assert_eq!(a.app.count(), 0);
    assert_eq!(replays(&b, "refused_forwarded").await, 1);
}

#[tokio::test]
async fn a_replay_through_a_stale_replica_is_passed_on_to_the_primary_as_a_write() {
    let a = ProxyNode::start("node-a", Primary::Local, test_config()).await;
    let c = ProxyNode::start("node-c", a.as_remote(), test_config()).await;
    // b still believes c leads.
    let b = ProxyNode::start("node-b", c.as_remote(), test_config()).await;
    let resp = get(b.addr, "/items", &[ASK, ON_B, COMMIT]).await.unwrap();
    assert_eq!(resp.header("x-app"), Some("node-a"));
    assert_eq!(c.app.count(), 0, "c sent it on without asking its app");
    let (txid, checksum) = a.sim.pos();
    assert_eq!(minted(&resp), Some(format!("{txid:016x}-{checksum:016x}")));
}

#[tokio::test]
async fn a_client_cannot_claim_a_replay() {
    let (a, _b) = pair(test_config()).await;
    let resp = get(a.addr, "/items", &[("litefs-proxy-replay", "1"), COMMIT])
        .await
        .unwrap();
    assert_eq!(a.sim.txid(), 1, "the app wrote");
    assert_eq!(minted(&resp), None, "served as the read it is: no token");
    assert!(!a.app.seen()[0].headers.contains_key("litefs-proxy-replay"));
}

#[tokio::test]
async fn the_dropped_answer_does_not_hold_up_the_replay() {
    let (a, b) = pair(test_config()).await;
    // `/stream` sends a first piece and waits for `release`: b's is never released.
    let req = client::request("GET", "/stream")
        .header(ASK.0, ASK.1)
        .header(ON_B.0, ON_B.1)
        .body(client::empty())
        .unwrap();
    let resp = client::send_streaming(b.addr, req).await.unwrap();
    assert_eq!(resp.headers()["x-app"], "node-a");
    assert!(!resp.headers().contains_key("litefs-replay"));
    a.app.state.release.notify_one();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: first\n\ndata: second\n\n");
    assert_eq!(replays(&b, "replayed").await, 1);
}

#[tokio::test]
async fn a_replay_with_no_primary_reachable_fails_like_a_held_write() {
    let cfg = litefs_proxy::ProxyConfig {
        primary_redirect_timeout: std::time::Duration::from_millis(50),
        ..test_config()
    };
    let b = ProxyNode::start("node-b", Primary::Unknown, cfg).await;
    let resp = get(b.addr, "/items", &[ASK]).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    no_replay_header(&resp);
    assert_eq!(replays(&b, "failed").await, 1);
}

#[tokio::test]
async fn passthrough_answers_are_never_replayed_but_lose_the_header() {
    let cfg = litefs_proxy::ProxyConfig {
        passthrough: vec!["/static/*".into()],
        ..test_config()
    };
    let (a, b) = pair(cfg).await;
    let resp = get(b.addr, "/static/app.css", &[ASK, ON_B]).await.unwrap();
    assert_eq!(resp.header("x-app"), Some("node-b"));
    no_replay_header(&resp);
    assert_eq!(a.app.count(), 0);
    assert_eq!(replays(&b, "ignored").await, 1);
}
