//! Pre-vote and LiteFS positions in elections and handovers: a node back from a partition
//! does not depose a healthy leader; with the leader gone, the survivor holding the newest
//! LiteFS position leads, whichever survivor times out first; a planned handover goes to the
//! most caught-up follower even when the Raft logs are the same.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Cluster};
use litefs_election::{Election, Leadership, Position};

fn node(c: &Cluster, i: usize) -> &Election {
    c.slots[i].node.as_ref().expect("running")
}

fn term_of(c: &Cluster, i: usize) -> u64 {
    node(c, i).raft_metrics().borrow().current_term
}

fn set_txid(c: &Cluster, i: usize, txid: u64) {
    node(c, i).local_position().set(Position {
        txid,
        checksum: 0xc0ff_ee00 + txid,
    });
}

/// (a) A follower cut off for several election timeouts and then reconnected neither bumps
/// the term nor changes the leader: while cut off, its pre-votes find no quorum, so it never
/// campaigns; back, the others refuse because they hear from a live leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_follower_does_not_depose_a_healthy_leader() {
    common::init_tracing();
    let mut c = Cluster::new(3, None, |_| {});
    c.start_all().await;
    let leader = c.wait_agreed(Duration::from_secs(5)).await;
    let term = term_of(&c, leader);
    wait_for(
        "every node in the leader's term",
        Duration::from_secs(2),
        || c.running().iter().all(|&i| term_of(&c, i) == term),
    )
    .await;
    let f = (leader + 1) % 3;
    let max = c.slots[f].cfg.election_timeout_max;

    let before = node(&c, f).status();
    c.isolate(f);
    // Eight election timeouts cut off.
    let cut = Instant::now();
    while cut.elapsed() < max * 8 {
        assert_eq!(
            term_of(&c, f),
            term,
            "the cut-off follower campaigned (term moved)"
        );
        assert_eq!(c.leaders(), vec![leader], "the leader lost its quorum");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.heal();
    wait_for(
        "the returning follower follows the leader again",
        Duration::from_secs(3),
        || c.agreed_leader() == Some(leader),
    )
    .await;
    // Ten more election timeouts: nothing moves.
    let back = Instant::now();
    while back.elapsed() < max * 10 {
        assert_eq!(c.agreed_leader(), Some(leader), "the leader changed");
        for i in c.running() {
            assert_eq!(term_of(&c, i), term, "{} moved the term", c.slots[i].name);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its timer did run while it was cut off: it asked, found no quorum, never campaigned.
    let st = node(&c, f).status();
    let asked = st.pre_votes_requested - before.pre_votes_requested;
    let elections = st.pre_vote_elections - before.pre_vote_elections;
    println!("cut-off follower: {asked} pre-vote requests, {elections} elections");
    assert!(asked >= 4, "{st:?}");
    assert_eq!(elections, 0, "{st:?}");
    c.stop_all().await;
}

/// (b) Leader killed, two survivors: the one with the higher LiteFS position leads, in
/// several trials. The nodes' timers do not overlap (node-1 fires first, node-3 last), and the
/// higher position goes to the survivor that fires *last* (one trial the other way round):
/// the early one's pre-vote is refused, it never campaigns, the later one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_with_the_newest_position_leads_whichever_times_out_first() {
    common::init_tracing();
    let mut c = Cluster::new(3, None, |_| {});
    // Timers (max + up to max - min after the last heartbeat): node-1 210-270 ms, node-2
    // 270-330 ms, node-3 330-390 ms.
    for (i, s) in c.slots.iter_mut().enumerate() {
        s.cfg.heartbeat_interval = Duration::from_millis(20);
        s.cfg.election_timeout_min = Duration::from_millis(150 + 60 * i as u64);
        s.cfg.election_timeout_max = Duration::from_millis(210 + 60 * i as u64);
    }
    c.start_all().await;
    let mut early_refused = 0;
    for trial in 0..6 {
        let leader = c.wait_agreed(Duration::from_secs(5)).await;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (early, late) = (survivors[0], survivors[1]);
        // Trial 5: the early one is the most caught-up (it must win at once, not be refused).
        let (hi, lo) = if trial == 5 {
            (early, late)
        } else {
            (late, early)
        };
        set_txid(&c, leader, 100 + trial);
        set_txid(&c, hi, 100 + trial);
        set_txid(&c, lo, 99 + trial);
        let refused_before = node(&c, hi).status().pre_votes_refused;
        let t = Instant::now();
        c.kill(leader).await;
        let got = c.wait_agreed(Duration::from_secs(5)).await;
        let took = t.elapsed();
        let refused = node(&c, hi).status().pre_votes_refused - refused_before;
        println!(
            "trial {trial}: {} (txid {}) and {} (txid {}) survive; {} leads after {took:?}; \
             {} refused {refused} pre-votes",
            c.slots[hi].name,
            100 + trial,
            c.slots[lo].name,
            99 + trial,
            c.slots[got].name,
            c.slots[hi].name,
        );
        assert_eq!(got, hi, "trial {trial}: the staler survivor leads");
        if lo == early && refused > 0 {
            early_refused += 1;
        }
        assert!(took < Duration::from_secs(3), "trial {trial}: {took:?}");
        c.start(leader).await;
        // Same Raft log everywhere, so the LiteFS position alone decides the next trial (a
        // survivor whose log is behind could never win; see the unit tests for that case).
        wait_for(
            "the restarted node follows with the whole log",
            Duration::from_secs(3),
            || {
                let last = node(&c, hi).raft_metrics().borrow().last_log_index;
                c.agreed_leader() == Some(hi)
                    && (0..3).all(|i| node(&c, i).raft_metrics().borrow().last_log_index == last)
            },
        )
        .await;
    }
    assert!(
        early_refused >= 3,
        "the staler survivor timed out first and was refused in only {early_refused} trials"
    );
    c.stop_all().await;
}

/// (c) `hand_over` picks the follower with the higher LiteFS position although both have the
/// same Raft log (the old order, by log and then id, picks the lower id): each order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_goes_to_the_most_caught_up_follower() {
    common::init_tracing();
    for round in 0..2 {
        let mut c = Cluster::new(3, None, |_| {});
        c.start_all().await;
        let leader = c.wait_agreed(Duration::from_secs(5)).await;
        // The old order (matched log, then the lower Raft id) tries the lower id first: round
        // 0 gives the higher position to the other one, round 1 to the lower id.
        let mut followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        followers.sort_by_key(|&i| std::cmp::Reverse(node(&c, i).raft_id()));
        if round == 1 {
            followers.reverse();
        }
        let (hi, lo) = (followers[0], followers[1]);
        set_txid(&c, leader, 42);
        set_txid(&c, hi, 42);
        set_txid(&c, lo, 41);
        // Both followers hold the leader's whole log.
        let last = node(&c, leader).raft_metrics().borrow().last_log_index;
        wait_for(
            "followers caught up in Raft",
            Duration::from_secs(2),
            || {
                followers
                    .iter()
                    .all(|&i| node(&c, i).raft_metrics().borrow().last_log_index == last)
            },
        )
        .await;
        // A leader refuses to vote for a successor before its own lease ran out.
        let max = c.slots[leader].cfg.election_timeout_max;
        let since = Instant::now();
        wait_for("leader tenure", max * 4, || since.elapsed() > max * 2).await;
        let took = node(&c, leader).hand_over().await;
        assert!(took.is_some(), "round {round}: no successor");
        wait_for("successor agreed", Duration::from_secs(3), || {
            c.leaders() == vec![hi]
        })
        .await;
        assert_eq!(
            c.leadership(lo),
            Some(Leadership::Follower {
                leader: c.slots[hi].name.clone(),
                proxy_url: format!("http://{}.test:{}", c.slots[hi].name, common::PROXY_PORT),
            }),
            "round {round}"
        );
        println!(
            "round {round}: handover to {} (txid 42) over {} (txid 41) in {took:?}",
            c.slots[hi].name, c.slots[lo].name
        );
        c.stop_all().await;
    }
}

/// (d) The waiver case: the survivor holding the newest LiteFS position has the shorter Raft
/// log (it was cut off while the leader appended a lease write), so it can never win; the
/// other survivor wins once the first waives its position rule, but never acts as primary:
/// it finds the voter ahead of it, lets its log catch up and hands leadership to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_elected_behind_a_voters_position_hands_over_and_never_acts_as_primary() {
    common::init_tracing();
    let mut c = Cluster::new(3, None, |cfg| {
        cfg.lease_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.heartbeat_interval = Duration::from_millis(20);
        cfg.election_timeout_min = Duration::from_millis(150);
        cfg.election_timeout_max = Duration::from_millis(210);
    });
    c.start_all().await;
    let leader = c.wait_agreed(Duration::from_secs(5)).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (ahead, behind) = (survivors[0], survivors[1]);
    c.isolate(ahead);
    common::put(
        common::lease_addr(&c, leader),
        "/v1/kv/x",
        b"one more entry",
    )
    .await;
    let last = node(&c, leader).raft_metrics().borrow().last_log_index;
    wait_for(
        "the connected follower holds the leader's log",
        Duration::from_secs(2),
        || node(&c, behind).raft_metrics().borrow().last_log_index == last,
    )
    .await;
    assert!(
        node(&c, ahead).raft_metrics().borrow().last_log_index < last,
        "the cut-off follower's log is behind"
    );
    set_txid(&c, leader, 20);
    set_txid(&c, ahead, 20);
    set_txid(&c, behind, 10);
    let before = node(&c, behind).status();
    c.kill(leader).await;
    c.heal();
    let got = c.wait_agreed(Duration::from_secs(10)).await;
    let after = node(&c, behind).status();
    println!(
        "{} (txid 20, shorter log) leads; {} (txid 10): {} pre-vote elections, {} catch-up handovers, {} promotions",
        c.slots[got].name,
        c.slots[behind].name,
        after.pre_vote_elections - before.pre_vote_elections,
        after.catch_up_handovers - before.catch_up_handovers,
        after.promotions - before.promotions,
    );
    assert_eq!(got, ahead, "the staler survivor leads");
    assert!(
        after.catch_up_handovers > before.catch_up_handovers,
        "the staler survivor never won (the waiver path was not exercised): {after:?}"
    );
    assert_eq!(
        after.promotions, before.promotions,
        "the staler survivor acted as primary"
    );
    c.stop_all().await;
}

/// (e) TXIDs repeat across histories: a primary that was cut off came back with writes it
/// never shipped, at a higher TXID than the others, whose history (18) moved on without it.
/// Whoever the election picks, the node acting as primary is one of the two that share a
/// history, and the returning node never acts as primary; a planned handover skips it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_of_another_history_never_acts_as_primary() {
    use litefs_election::InHistory;
    common::init_tracing();
    let mut c = Cluster::new(3, None, |cfg| {
        cfg.heartbeat_interval = Duration::from_millis(20);
        cfg.election_timeout_min = Duration::from_millis(150);
        cfg.election_timeout_max = Duration::from_millis(210);
    });
    let pos = |txid, checksum| Position { txid, checksum };
    // Node 0 is the returning primary: 15 shared, then 16..20 of its own (old) history.
    // Nodes 1 and 2 went on from 15 to 18 in a new one.
    for i in 0..3 {
        c.start(i).await;
        let p = node(&c, i).local_position();
        if i == 0 {
            p.set(pos(20, 0x01d20));
            p.set_history(|q| match (q.txid, q.checksum) {
                (15, 0x15) | (18, 0x01d18) => InHistory::Yes,
                (t, _) if t <= 20 => InHistory::No,
                _ => InHistory::Unknown,
            });
        } else {
            p.set(pos(18, 0x7e18));
            p.set_history(|q| match (q.txid, q.checksum) {
                (15, 0x15) | (18, 0x7e18) => InHistory::Yes,
                (t, _) if t <= 18 => InHistory::No,
                _ => InHistory::Unknown,
            });
        }
    }
    let first = c.wait_agreed(Duration::from_secs(10)).await;
    assert_ne!(first, 0, "the returning primary acts as primary");
    let max = c.slots[first].cfg.election_timeout_max;
    let since = Instant::now();
    wait_for("leader tenure", max * 4, || since.elapsed() > max * 2).await;
    assert!(node(&c, first).hand_over().await.is_some(), "no successor");
    let next = c.wait_agreed(Duration::from_secs(10)).await;
    let st = node(&c, 0).status();
    println!(
        "{} acted first, {} after the handover; the returning node: {} catch-up handovers, {} promotions",
        c.slots[first].name, c.slots[next].name, st.catch_up_handovers, st.promotions
    );
    assert_eq!(
        next,
        3 - first,
        "the handover went to the other node of the history"
    );
    assert_eq!(st.promotions, 0, "the returning primary acted as primary");
    c.stop_all().await;
}
