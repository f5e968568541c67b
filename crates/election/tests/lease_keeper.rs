//! The lease keeper (`lease::keeper`): a node's lease endpoint served apart from its election,
//! forwarding to it while it runs and, once it is gone, to the other voters; never longer
//! than LiteFS can afford to wait for a renewal.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{http_call, json_of, Cluster, GO_CREATE, PROXY_PORT};
use litefs_election::lease::keeper::{self, ORPHAN_RENEW_WITHIN};
use litefs_election::lease::state::{believed_ms, CLOCK_MARGIN_MS};
use litefs_election::lease::RENEW_ANSWER_MAX;
use litefs_election::Position;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

const KEY: &str = "litefs/primary";

/// Three nodes, each with `lease_keeper` on (the election binds no lease port) and its keeper
/// serving in this process; the keepers' addresses and stop switches.
async fn kept_cluster() -> (Cluster, Vec<SocketAddr>, Vec<oneshot::Sender<()>>) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let mut c = Cluster::new(3, Some("keeper-test-cluster-secret"), |_| {});
    for (slot, addr) in c.slots.iter_mut().zip(&addrs) {
        slot.cfg.lease_addr = Some(*addr);
        slot.cfg.lease_keeper = true;
    }
    let mut stops = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let cfg = c.slots[i].cfg.clone();
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tokio::spawn(async move {
            keeper::serve(&cfg, PROXY_PORT, l, async move {
                let _ = rx.await;
            })
            .await
        });
    }
    c.start_all().await;
    (c, addrs, stops)
}

/// The leader every running node agrees on, once it is one of `survivors` (within 10 s).
async fn survivor_leads(c: &Cluster, survivors: &[usize]) -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = c.agreed_leader().filter(|n| survivors.contains(n)) {
            return n;
        }
        assert!(Instant::now() < end, "no survivor leads");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create(addr: SocketAddr) -> String {
    let (st, _, b) = http_call(addr, "PUT", "/v1/session/create", GO_CREATE).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    json_of(&b)["ID"].as_str().expect("ID").to_owned()
}

#[test]
fn a_held_renewal_is_answered_before_the_lock_may_move() {
    // LiteFS renews TTL/2 after its last granted renewal and stops being primary as soon as
    // it is told "session gone"; the lock moves at the earliest `believed_ms + margin` after
    // that grant. For the shortest TTL the endpoint accepts (1 s), the keeper's longest wait
    // (plus the hops, 100 ms) must end before.
    let ttl = 1_000;
    let hops = 100;
    for held in [ORPHAN_RENEW_WITHIN, RENEW_ANSWER_MAX] {
        assert!(ttl / 2 + held.as_millis() as u64 + hops < believed_ms(ttl) + CLOCK_MARGIN_MS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_serves_its_node_then_the_others_once_its_election_is_gone() {
    common::init_tracing();
    let (mut c, keepers, _stops) = kept_cluster().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let lname = c.slots[l].name.clone();
    let ka = keepers[l];

    // Who it serves.
    let (st, _, b) = http_call(ka, "GET", keeper::PATH_WHO, b"").await;
    assert_eq!(st, 200);
    assert_eq!(json_of(&b)["node"], lname.as_str());

    // Through the leader's keeper, as LiteFS on the leader would: a session of the leader's
    // node, which takes the lock.
    let sid = create(ka).await;
    let (st, _, b) = http_call(ka, "PUT", &format!("/v1/kv/{KEY}?acquire={sid}"), b"{}").await;
    assert_eq!(
        (st, b.as_slice()),
        (200, b"true".as_slice()),
        "acquire through the leader's keeper"
    );
    let (_, _, b) = http_call(ka, "GET", &format!("/v1/session/info/{sid}"), b"").await;
    assert_eq!(json_of(&b)[0]["Node"], lname.as_str());

    // The leader's election dies (its process crashed); its keeper lives on.
    c.kill(l).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let l2 = survivor_leads(&c, &survivors).await;
    // The new leader's LiteFS asks the old primary for a handoff: its window is open, so
    // the old holder's last renewal, which can only go through its own node's keeper, is
    // granted by the other voters.
    let lease = c.slots[l2]
        .node
        .as_ref()
        .and_then(|n| n.lease())
        .expect("lease");
    lease.open_handoff(Duration::from_secs(3));
    let (st, _, b) = http_call(ka, "PUT", &format!("/v1/session/renew/{sid}"), b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)[0]["ID"], sid.as_str());
    // Reads too (LiteFS looks up the primary through it once it is a replica).
    let (st, _, b) = http_call(ka, "GET", &format!("/v1/kv/{KEY}"), b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    // It still speaks for its own node only: a session made through it is that node's.
    let other = create(ka).await;
    let (_, _, b) = http_call(ka, "GET", &format!("/v1/session/info/{other}"), b"").await;
    assert_eq!(json_of(&b)[0]["Node"], lname.as_str());
    lease.close_handoff();

    // With nobody left to answer, a renewal is answered "session gone", in bounded time, so
    // LiteFS stops being primary instead of waiting on it; other requests fail with 500.
    for i in survivors {
        c.kill(i).await;
    }
    let asked = Instant::now();
    let (st, _, _) = http_call(ka, "PUT", &format!("/v1/session/renew/{sid}"), b"").await;
    assert_eq!(st, 404);
    assert!(
        asked.elapsed() < ORPHAN_RENEW_WITHIN + Duration::from_millis(500),
        "answered after {:?}",
        asked.elapsed()
    );
    let (st, _, b) = http_call(ka, "GET", &format!("/v1/kv/{KEY}"), b"").await;
    assert_eq!((st, b.as_slice()), (500, b"No cluster leader".as_slice()));
}

/// Its election gone, a node's keeper reports the node's LiteFS position to the new leader
/// in its stead (the leader counts it for that node, for `sync_replicas`), and again as it
/// moves: the old primary's LiteFS, a replica right after its handoff, counts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_keeper_reports_its_nodes_position_to_the_new_leader() {
    common::init_tracing();
    let (mut c, _keepers, _stops) = kept_cluster().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let lname = c.slots[l].name.clone();
    let lcfg = c.slots[l].cfg.clone();
    c.kill(l).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let l2 = survivor_leads(&c, &survivors).await;
    let at = |txid| Position {
        txid,
        checksum: 0xfeed_0000 + txid,
    };
    let (tx, rx) = watch::channel(Some(at(41)));
    let reporter = tokio::spawn(async move {
        keeper::report_position(&lcfg, PROXY_PORT, rx).await;
    });
    let table = c.slots[l2]
        .node
        .as_ref()
        .expect("running")
        .replica_positions();
    let holds = |p: Position| {
        let t = table.borrow();
        t.positions.get(&lname) == Some(&p)
    };
    common::wait_for(
        "the keeper's report at the leader",
        Duration::from_secs(3),
        || holds(at(41)),
    )
    .await;
    tx.send_replace(Some(at(42)));
    common::wait_for("the keeper's next report", Duration::from_secs(3), || {
        holds(at(42))
    })
    .await;
    reporter.abort();
}

/// kill -9 of a node's litefs-proxy while its keeper is forwarding a renewal: the connection
/// to the local election breaks mid-request. The keeper asks once more, is refused (the
/// process is gone) and has the other voters answer, so the old primary's LiteFS still gets
/// the renewal its handoff needs; answering "session gone" at once (as before) made it drop
/// the lease and the primary moved only after LiteFS's 1 s retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_cut_off_by_the_local_elections_death_is_answered_by_the_others() {
    common::init_tracing();
    let (mut c, keepers, _stops) = kept_cluster().await;
    let l = c.wait_agreed(Duration::from_secs(5)).await;
    let ka = keepers[l];
    let sid = create(ka).await;
    let (st, _, _) = http_call(ka, "PUT", &format!("/v1/kv/{KEY}?acquire={sid}"), b"{}").await;
    assert_eq!(st, 200);
    let raft_addr = c.slots[l].cfg.raft_addr;
    c.kill(l).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let l2 = survivor_leads(&c, &survivors).await;
    c.slots[l2]
        .node
        .as_ref()
        .and_then(|n| n.lease())
        .expect("lease")
        .open_handoff(Duration::from_secs(3));
    // The dying election: takes the keeper's request, then its process is gone (the
    // connection closes unanswered, the port refuses from then on).
    let dying = TcpListener::bind(raft_addr)
        .await
        .expect("the dead node's raft port");
    let dies = tokio::spawn(async move {
        let (mut conn, _) = dying.accept().await.expect("the keeper's request");
        let mut buf = [0u8; 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
        drop(dying);
    });
    let (st, _, b) = http_call(ka, "PUT", &format!("/v1/session/renew/{sid}"), b"").await;
    dies.await.expect("the dying election took the request");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)[0]["ID"], sid.as_str());
}
