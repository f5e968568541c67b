//! `/litefs/status` right after a failover: the new primary shows the TXID its first write
//! just minted (it used to show the one before for a while), with either TXID source.

use std::time::Duration;

use litefs_proxy_tests::{
    client::{get, minted, post},
    cluster::{Cluster, LiteFsOptions, Options},
};

async fn txid_of(c: &Cluster, i: usize) -> String {
    let a = get(c.nodes[i].proxy, "/litefs/status", &[])
        .await
        .expect("status answers");
    let s: serde_json::Value = serde_json::from_slice(&a.body).expect("JSON");
    s["txid"].as_str().expect("a txid").to_owned()
}

async fn new_primary_shows_what_it_minted(source: &str) {
    let mut c = Cluster::start(Options {
        proxy_extra: format!("txid_source = \"{source}\"\n"),
        litefs: Some(LiteFsOptions::with_lag(50)),
        ..Options::default()
    })
    .await;
    let old = c
        .wait_litefs_settled(Duration::from_secs(30))
        .await
        .expect("a settled leader");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "before")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{source}: {}", w.text());

    // A whole-node crash of the leader; the next write, held until a survivor leads and its
    // LiteFS holds the lease, is the new primary's first.
    c.kill(old);
    c.kill_litefs(old);
    let w = post(c.nodes[survivors[0]].proxy, "/items", &[], "after")
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{source}: {}", w.text());
    let token = minted(&w).expect("a token");
    let txid = &token[..16];
    let served_by = w.header("x-sim-node").expect("x-sim-node").to_owned();
    let primary = survivors
        .iter()
        .copied()
        .find(|&i| c.nodes[i].id == served_by)
        .unwrap_or_else(|| panic!("{source}: served by {served_by}, not a survivor"));
    assert_eq!(
        txid_of(&c, primary).await,
        txid,
        "{source}: the new primary's status at once"
    );
    // With sync_replicas = 1 the write was answered once the other survivor held it.
    let replica = survivors.iter().copied().find(|&i| i != primary).unwrap();
    assert_eq!(
        txid_of(&c, replica).await,
        txid,
        "{source}: the replica that acknowledged it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_a_new_primary_shows_the_txid_it_just_minted() {
    new_primary_shows_what_it_minted("pos-file").await;
    new_primary_shows_what_it_minted("events").await;
}
