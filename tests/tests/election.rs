//! Issue 3 end to end: three real `litefs-proxy` processes elect a primary by Raft, fail
//! over after kill -9, hand over on SIGTERM, and never have two primaries, even across a
//! partition of the Raft traffic.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use litefs_proxy_tests::{
    client::post,
    cluster::{Cluster, Options},
};

/// The cluster tests share two cores; one cluster at a time keeps Raft timing honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ALL: [usize; 3] = [0, 1, 2];

fn others(l: usize) -> Vec<usize> {
    ALL.into_iter().filter(|&i| i != l).collect()
}

fn assert_primary_files(c: &Cluster, leader: usize, among: &[usize]) {
    for &i in among {
        let content = std::fs::read_to_string(c.nodes[i].primary_file()).ok();
        if i == leader {
            assert_eq!(
                content, None,
                "{}: .primary is absent on the leader",
                c.nodes[i].id
            );
        } else {
            assert_eq!(
                content,
                Some(format!("{}\n", c.nodes[leader].id)),
                "{}: .primary names the leader",
                c.nodes[i].id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_elect_one_primary_and_primary_files_agree() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(Options::default()).await;
    let l = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no leader; logs:\n{}", c.log(0)));
    for i in ALL {
        let s = c.status(i).await.unwrap();
        assert_eq!(s["role"], if i == l { "primary" } else { "replica" });
        assert_eq!(s["primary"], c.nodes[l].id.as_str());
        assert_eq!(
            s["election"]["leader"],
            c.nodes[l].id.as_str(),
            "election status agrees: {s}"
        );
        if i != l {
            assert_eq!(s["primary_url"], format!("http://{}/", c.nodes[l].proxy));
        }
    }
    // .primary is written just after the role changes; give it the same deadline.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end
        && others(l)
            .iter()
            .any(|&i| !c.nodes[i].primary_file().exists())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_primary_files(&c, l, &ALL);
    // A write anywhere lands on the leader's app once.
    let via = others(l)[0];
    let resp = post(c.nodes[via].proxy, "/items", &[], "x").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-app"), Some(c.nodes[l].id.as_str()));
    let m = litefs_proxy_tests::client::get(c.nodes[l].proxy, "/litefs/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("litefs_election_term"),
        "election metrics exposed:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_fails_over_and_the_old_leader_rejoins_as_follower() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Options {
        proxy_extra: "primary_redirect_timeout = \"5s\"".into(),
        ..Options::default()
    })
    .await;
    let l = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .expect("leader");
    let survivor = others(l)[0];
    let killed_at = Instant::now();
    c.kill(l);
    // Held by the survivor's proxy until the new leader is known, then delivered.
    let resp = post(c.nodes[survivor].proxy, "/items", &[], "after-kill")
        .await
        .unwrap();
    let took = killed_at.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    println!(
        "kill -9 of {} -> first successful write through {}: {took:?}",
        c.nodes[l].id, c.nodes[survivor].id
    );
    let new = c
        .wait_leader(&others(l), Duration::from_secs(10))
        .await
        .expect("new leader");
    assert_ne!(new, l);
    assert_eq!(
        resp.header("x-app"),
        Some(c.nodes[new].id.as_str()),
        "written on the new leader"
    );
    assert_eq!(c.nodes[l].app.count(), 0);

    c.spawn(l);
    let after = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .expect("leader after restart");
    assert_eq!(after, new, "the restarted node rejoins as a follower");
    assert_eq!(c.status(l).await.unwrap()["role"], "replica");
    assert_primary_files(&c, new, &ALL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Options::default()).await;
    let l = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .expect("leader");
    // Writes keep arriving at a survivor throughout the handover: none may fail.
    let via = c.nodes[others(l)[0]].proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (stop, written) = (stop.clone(), written.clone());
        async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let r = post(via, "/items", &[], "during handover").await.unwrap();
                statuses.push((sent, r.status.as_u16(), r.text()));
                written.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }
    });
    // The writer is under way before the signal.
    let end = Instant::now() + Duration::from_secs(5);
    while written.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < end, "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    let code = c.terminate(l, Duration::from_secs(30));
    assert_eq!(code, Some(0), "clean exit; log:\n{}", c.log(l));
    let new = c
        .wait_leader(&others(l), Duration::from_secs(10))
        .await
        .expect("new leader");
    println!(
        "SIGTERM of {} -> {} leads after {:?}",
        c.nodes[l].id,
        c.nodes[new].id,
        start.elapsed()
    );
    assert!(
        c.log(l).contains("leadership handed over"),
        "log:\n{}",
        c.log(l)
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = writer.await.unwrap();
    let failed: Vec<_> = statuses.iter().filter(|(_, s, _)| *s != 200).collect();
    let after_signal = statuses
        .iter()
        .filter(|(sent, _, _)| *sent >= start)
        .count();
    println!(
        "{} writes, {after_signal} sent after the signal, {} failed",
        statuses.len(),
        failed.len()
    );
    assert!(after_signal >= 1, "a write was sent during the handover");
    assert!(
        failed.is_empty(),
        "writes failed during a planned handover: {failed:?}\nold leader's log:\n{}\nsurvivor's log:\n{}",
        c.log(l),
        c.log(others(l)[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_stops_being_primary_and_there_is_never_two() {
    let _serial = SERIAL.lock().await;
    let c = Arc::new(
        Cluster::start(Options {
            relays: true,
            proxy_extra: "primary_redirect_timeout = \"1s\"".into(),
            ..Options::default()
        })
        .await,
    );
    let l = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .expect("leader");

    // Sample every node's role continuously; record any instant with two primaries.
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, doubles) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = tokio::spawn({
        let (c, stop, samples, doubles) =
            (c.clone(), stop.clone(), samples.clone(), doubles.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let roles = c.roles().await;
                let primaries = roles
                    .iter()
                    .filter(|r| r.as_deref() == Some("primary"))
                    .count();
                samples.fetch_add(1, Ordering::SeqCst);
                if primaries > 1 {
                    doubles.fetch_add(1, Ordering::SeqCst);
                    eprintln!("two primaries at once: {roles:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    c.isolate(l, true);
    let majority = others(l);
    let new = c
        .wait_leader(&majority, Duration::from_secs(10))
        .await
        .expect("majority elects a leader");
    assert_ne!(new, l);
    let s = c.status(l).await.expect("minority node answers");
    assert_ne!(
        s["role"], "primary",
        "the partitioned old leader stepped down: {s}"
    );
    // The minority holds then refuses writes; the majority takes them.
    let start = Instant::now();
    let resp = post(c.nodes[l].proxy, "/items", &[], "minority")
        .await
        .unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(start.elapsed() >= Duration::from_millis(900), "held first");
    assert_eq!(resp.header("retry-after"), Some("1"));
    let resp = post(c.nodes[majority[0]].proxy, "/items", &[], "majority")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        c.nodes[l].app.count(),
        0,
        "nothing was written on the minority side"
    );

    c.isolate(l, false);
    let healed = c
        .wait_leader(&ALL, Duration::from_secs(15))
        .await
        .expect("one leader after healing");
    println!(
        "after healing: {} leads; {} samples",
        c.nodes[healed].id,
        samples.load(Ordering::SeqCst)
    );
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    assert!(samples.load(Ordering::SeqCst) > 50, "the sampler ran");
    assert_eq!(
        doubles.load(Ordering::SeqCst),
        0,
        "never two primaries at once"
    );
}
