//! The chaos run (`litefs_proxy_tests::chaos`): kill -9, partition and SIGSTOP of the
//! leader's node, twice each, under writes and read-your-writes reads through every node.
//! With `sync_replicas = 1`: nothing acknowledged is lost or duplicated and no read misses
//! its write; with 0 the same run loses writes (so the check can fail).

use litefs_proxy_tests::chaos::run;

/// One run at a time: two netns clusters at once on two cores churned elections (term 29
/// before LiteFS first settled, seen in a CI rehearsal under load).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// Once (2026-12-01 14:28 UTC, no logs kept) this lost an acknowledged write. The path found
// since: a survivor whose Raft log was ahead but whose LiteFS was behind could win through
// the pre-vote's liveness waiver and become primary. A new leader now acts only after its
// catch-up check (crates/election catch_up.rs) and hands over to a voter ahead of it, which
// later runs logged doing (`elected behind a voter's LiteFS position`). With
// `LITEFS_TEST_KEEP=1` a run keeps its nodes' logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sync_replicas_1_no_fault_loses_an_acknowledged_write_or_a_read() {
    let _serial = SERIAL.lock().await;
    let o = run(1).await;
    eprintln!("sync_replicas 1: {o:?}");
    assert!(
        o.acked > 20 && o.reads_answered > 10,
        "the run did work: {o:?}"
    );
    assert!(o.lost.is_empty(), "lost acknowledged writes: {:?}", o.lost);
    assert!(o.duplicated.is_empty(), "duplicated: {:?}", o.duplicated);
    assert!(
        o.by_superseded.is_empty(),
        "answered by a paused or cut-off leader: {:?}",
        o.by_superseded
    );
    assert!(
        o.ryw_violations.is_empty(),
        "read-your-writes: {:?}",
        o.ryw_violations
    );
}

/// The same run, asynchronous: the writes of the last replication lag before each kill
/// are acknowledged and gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sync_replicas_0_the_same_run_loses_writes() {
    let _serial = SERIAL.lock().await;
    let o = run(0).await;
    eprintln!("sync_replicas 0: {o:?}");
    assert!(o.acked > 40, "the run did work: {o:?}");
    assert!(!o.lost.is_empty(), "no loss: {o:?}");
}
