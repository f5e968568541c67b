//! The vote survives a restart: a restarted node never votes twice in one term, and a vote it
//! granted is on disk before the answer left.

mod common;

use std::time::Duration;

use common::Cluster;
use litefs_election::PATH_VOTE;
use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, LogId, Vote};

async fn ask_vote(c: &Cluster, i: usize, req: &VoteRequest<u64>) -> VoteResponse<u64> {
    let addr = c.slots[i].node.as_ref().expect("running").raft_local_addr();
    let body = serde_json::to_vec(req).expect("encode");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(
            http::Request::post(format!("http://{addr}{PATH_VOTE}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request"),
        )
        .await
        .expect("vote rpc");
    assert_eq!(resp.status(), 200);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let res: Result<VoteResponse<u64>, RaftError<u64>> =
        serde_json::from_slice(&bytes).expect("decode");
    res.expect("vote answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_survives_restart_and_is_never_given_twice_per_term() {
    common::init_tracing();
    // Long election timeouts: after its bootstrap campaign node-1 stays put for 10 s, so the
    // terms below are exactly the ones it voted in.
    let mut c = Cluster::new(3, None, |cfg| {
        cfg.election_timeout_min = Duration::from_secs(10);
        cfg.election_timeout_max = Duration::from_secs(20);
    });
    c.start(0).await;
    let me = c.slots[0].node.as_ref().expect("n1").raft_id();
    let other = c.slots[1].name.clone();
    let other_id = litefs_election::node_num(&other);

    // Bootstrap: node-1 initializes and campaigns once, voting for itself in term 1.
    let mut m = c.slots[0].node.as_ref().expect("n1").raft_metrics();
    let voted = tokio::time::timeout(
        Duration::from_secs(5),
        m.wait_for(|m| m.vote.leader_id().voted_for() == Some(me) && m.vote.leader_id().term >= 1),
    )
    .await
    .expect("node-1 campaigns")
    .expect("metrics")
    .vote;
    let term = voted.leader_id().term;
    drop(m);
    assert_eq!(
        c.slots[0].node.as_ref().expect("n1").persisted_vote(),
        Some(voted)
    );

    // Restart: the vote comes back from SQLite.
    c.kill(0).await;
    c.start(0).await;
    let n1 = c.slots[0].node.as_ref().expect("n1");
    assert_eq!(n1.raft_metrics().borrow().vote, voted);
    assert_eq!(n1.persisted_vote(), Some(voted));

    // Asked for the same term by node-2 (with a longer log): refused, it already voted.
    let ahead = Some(LogId::new(CommittedLeaderId::new(term, other_id), 100));
    let same = ask_vote(&c, 0, &VoteRequest::new(Vote::new(term, other_id), ahead)).await;
    assert!(!same.vote_granted, "voted twice in term {term}: {same:?}");
    assert_eq!(same.vote, voted);

    // A higher term is granted, and that vote is durable before the answer arrived.
    let next = Vote::new(term + 1, other_id);
    let granted = ask_vote(&c, 0, &VoteRequest::new(next, ahead)).await;
    assert!(granted.vote_granted, "{granted:?}");
    assert_eq!(
        c.slots[0].node.as_ref().expect("n1").persisted_vote(),
        Some(next)
    );
    c.kill(0).await;
    c.start(0).await;
    assert_eq!(
        c.slots[0]
            .node
            .as_ref()
            .expect("n1")
            .raft_metrics()
            .borrow()
            .vote,
        next
    );
    let again = ask_vote(&c, 0, &VoteRequest::new(Vote::new(term + 1, me), ahead)).await;
    assert!(
        !again.vote_granted,
        "voted twice in term {}: {again:?}",
        term + 1
    );
    c.stop_all().await;
}
