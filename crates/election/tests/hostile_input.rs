//! With `cluster_secret` set, garbage, oversized, slow and unauthenticated input on the Raft
//! port is refused and changes nothing: same leader, same term, every node still healthy.

mod common;

use std::time::{Duration, Instant};

use common::{raw_post, Cluster};
use hmac::{Hmac, Mac};
use litefs_election::{node_num, wire, PreVoteRequest, PATH_APPEND, PATH_PRE_VOTE, PATH_VOTE};
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use rand::{Rng, SeedableRng};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "test-cluster-secret-0123456789";

fn mac(secret: &str, ts: u64, path: &str, from: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    m.update(format!("{ts}\n{path}\n{from}\n").as_bytes());
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unauthenticated_rpcs_are_refused_and_harmless() {
    common::init_tracing();
    let mut c = Cluster::new(3, Some(SECRET), |_| {});
    c.start_all().await;
    let leader = c.wait_agreed(Duration::from_secs(5)).await;
    let term = c.slots[leader].node.as_ref().expect("leader").status().term;
    let addrs: Vec<_> = c
        .running()
        .iter()
        .map(|&i| c.slots[i].node.as_ref().expect("node").raft_local_addr())
        .collect();

    // A slow client that never finishes its request head; checked at the end.
    let mut slow = tokio::net::TcpStream::connect(addrs[0])
        .await
        .expect("connect");
    slow.write_all(b"POST /raft/vote HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let slow_started = Instant::now();

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    // A vote for a stranger (and for a member) in a far higher term, far ahead in the log.
    let stranger = node_num("intruder");
    let member = node_num(&c.slots[(leader + 1) % 3].name);
    let far_log = Some(LogId::new(
        CommittedLeaderId::new(term + 1000, stranger),
        1_000_000,
    ));
    let votes: Vec<Vec<u8>> = [stranger, member]
        .iter()
        .map(|&who| {
            serde_json::to_vec(&VoteRequest::new(Vote::new(term + 1000, who), far_log))
                .expect("encode")
        })
        .collect();

    for &addr in &addrs {
        // Random bytes straight onto the socket.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let junk: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
        let _ = s.write_all(&junk).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "server must answer or close on garbage");
        if !buf.is_empty() {
            assert!(
                buf.starts_with(b"HTTP/1.1 4"),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }

        // Random bytes as a body of an unsigned RPC.
        assert_eq!(raw_post(addr, PATH_APPEND, &[], &junk).await, Some(401));

        // Pre-vote: unsigned refused; signed garbage is a 400; a signed one for a stranger
        // (or from a member far ahead) grants nothing that moves anything (checked below).
        let pre_vote = |candidate: &str| {
            serde_json::to_vec(&PreVoteRequest {
                candidate: candidate.into(),
                term: term + 1000,
                last_log_id: far_log,
                position: None,
                probe: false,
            })
            .expect("encode")
        };
        let signed = |body: &[u8]| {
            let ts = now_ms();
            vec![
                (wire::TS_HEADER, ts.to_string()),
                (wire::FROM_HEADER, "node-2".to_string()),
                (
                    wire::MAC_HEADER,
                    mac(SECRET, ts, PATH_PRE_VOTE, "node-2", body),
                ),
            ]
        };
        let stranger_pv = pre_vote("intruder");
        assert_eq!(
            raw_post(addr, PATH_PRE_VOTE, &[], &stranger_pv).await,
            Some(401)
        );
        assert_eq!(
            raw_post(addr, PATH_PRE_VOTE, &signed(&junk), &junk).await,
            Some(400)
        );
        assert_eq!(
            raw_post(addr, PATH_PRE_VOTE, &signed(&stranger_pv), &stranger_pv).await,
            Some(200)
        );
        let member_pv = pre_vote("node-2");
        let captured = signed(&member_pv);
        assert_eq!(
            raw_post(addr, PATH_PRE_VOTE, &captured, &member_pv).await,
            Some(200)
        );
        // The very same signed request again (a replay within the skew window): refused.
        assert_eq!(
            raw_post(addr, PATH_PRE_VOTE, &captured, &member_pv).await,
            Some(401)
        );

        for body in &votes {
            // Unsigned.
            assert_eq!(raw_post(addr, PATH_VOTE, &[], body).await, Some(401));
            // Signed with the wrong secret.
            let ts = now_ms();
            let forged = [
                (wire::TS_HEADER, ts.to_string()),
                (wire::FROM_HEADER, "node-2".to_string()),
                (
                    wire::MAC_HEADER,
                    mac("not-the-secret-0000000", ts, PATH_VOTE, "node-2", body),
                ),
            ];
            assert_eq!(raw_post(addr, PATH_VOTE, &forged, body).await, Some(401));
            // Signed with the right secret but replayed 60 s later.
            let old = ts - 60_000;
            let stale = [
                (wire::TS_HEADER, old.to_string()),
                (wire::FROM_HEADER, "node-2".to_string()),
                (
                    wire::MAC_HEADER,
                    mac(SECRET, old, PATH_VOTE, "node-2", body),
                ),
            ];
            assert_eq!(raw_post(addr, PATH_VOTE, &stale, body).await, Some(401));
            // A valid MAC for another sender name does not transfer.
            let spoofed = [
                (wire::TS_HEADER, ts.to_string()),
                (wire::FROM_HEADER, "node-3".to_string()),
                (wire::MAC_HEADER, mac(SECRET, ts, PATH_VOTE, "node-2", body)),
            ];
            assert_eq!(raw_post(addr, PATH_VOTE, &spoofed, body).await, Some(401));
        }

        // Oversized body: refused with 413 (or the connection is cut), never buffered whole.
        let big = vec![b'x'; litefs_election::MAX_BODY + 1024];
        let st = raw_post(addr, PATH_VOTE, &[], &big).await;
        assert!(matches!(st, Some(413) | None), "{st:?}");
    }

    // Nothing moved: same leader, same term, everyone agrees; refusals were counted.
    assert_eq!(c.wait_agreed(Duration::from_secs(1)).await, leader);
    for i in c.running() {
        let st = c.slots[i].node.as_ref().expect("node").status();
        assert_eq!(st.term, term, "{st:?}");
        assert!(st.rpc_rejected >= 9, "{st:?}");
        // The stranger's and the member's (a live leader exists) pre-votes were refused.
        assert!(st.pre_votes_refused >= 2, "{st:?}");
    }

    // The slow client is disconnected by the header timeout (5 s).
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await;
    let waited = slow_started.elapsed();
    assert!(r.is_ok(), "slow client still connected after {waited:?}");
    println!("slow client cut after {waited:?}");
    assert_eq!(c.wait_agreed(Duration::from_secs(1)).await, leader);
    c.stop_all().await;
}

/// A voter whose port accepts connections, reads the request and drops them without an
/// answer (a dying process, a middlebox): the leader backs off from it as from a refused
/// connection, instead of retrying every few milliseconds. Counted: connections it makes to
/// that port in one second while the other two lead and follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_and_resets_is_backed_off_from() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    common::init_tracing();
    let mut c = common::Cluster::new(3, None, |_| {});
    // Node 3's Raft port: taken by a listener that accepts and closes.
    let fake = tokio::net::TcpListener::bind(c.slots[2].cfg.raft_addr)
        .await
        .expect("bind node 3's port");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                // Reads the request, then closes without a word.
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    c.start(0).await;
    c.start(1).await;
    let l = c.wait_agreed(Duration::from_secs(10)).await;
    assert!(l < 2, "one of the two live nodes leads");
    let before = accepted.load(Ordering::Relaxed);
    let window = Duration::from_secs(1);
    tokio::time::sleep(window).await;
    let tries = accepted.load(Ordering::Relaxed) - before;
    // The backoff is election_timeout_min (150 ms): about 7 tries a second from the leader,
    // plus the follower's probes; a retry at once would be hundreds.
    assert!(
        tries < 40,
        "{tries} connections to a resetting peer in {window:?}"
    );
    c.stop_all().await;
}
