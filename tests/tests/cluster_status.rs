//! `litefs-proxy cluster status` against a running 3-node cluster (a process per node and
//! its LiteFS): one row per peer asked through one node (`--url`) or from a config's peers
//! (`--config`); a killed node is listed `down`, never dropped.

use std::{path::Path, time::Duration};

use litefs_proxy_tests::cluster::{binary, free_port, Cluster, LiteFsOptions, Options};
use tokio::time::Instant;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn cli(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(binary())
        .args(args)
        .output()
        .await
        .expect("run litefs-proxy");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rows(out: &Out) -> Vec<serde_json::Value> {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON list ({e}): {}\n{}", out.stdout, out.stderr))
}

/// Runs `cluster status <how> --json` until `done` holds for its rows (at most 20 s).
async fn json_until(
    how: &[&str],
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut args = vec!["cluster", "status", "--json"];
    args.extend_from_slice(how);
    loop {
        let out = cli(&args).await;
        let rows = rows(&out);
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < end, "never: {rows:#?}\n{}", out.stderr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_node<'a>(rows: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["node"] == node)
        .unwrap_or_else(|| panic!("no row for {node}: {rows:#?}"))
}

fn config_arg(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_lists_every_peer_through_one_node_and_shows_a_dead_one_down() {
    let mut c = Cluster::start(Options {
        litefs: Some(LiteFsOptions::with_lag(0)),
        ..Options::default()
    })
    .await;
    // Through one node: every peer, once that node has heard from each since LiteFS
    // settled (its view is up to a poll interval old).
    let all_up = |rows: &[serde_json::Value]| {
        rows.len() == 3
            && rows
                .iter()
                .all(|r| r["role"] != "down" && r["term"].is_u64() && r["litefs_role"] != "unknown")
    };
    // Leadership may still move just after the cluster settled (a new leader hands over to
    // a more caught-up voter): settle and ask again until the view names the settled leader.
    let mut attempt = 0;
    let (leader, leader_id, asked, url, rows) = loop {
        attempt += 1;
        let leader = c
            .wait_litefs_settled(Duration::from_secs(30))
            .await
            .expect("a settled leader");
        let leader_id = c.nodes[leader].id.clone();
        let asked = (leader + 1) % 3;
        let url = format!("http://{}", c.nodes[asked].proxy);
        let rows = json_until(&["--url", &url], all_up).await;
        if rows.iter().all(|r| r["leader"] == leader_id.as_str()) || attempt == 3 {
            break (leader, leader_id, asked, url, rows);
        }
    };
    let nodes: Vec<&str> = rows.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "{rows:#?}");
    for r in &rows {
        let is_leader = r["node"] == leader_id.as_str();
        assert_eq!(
            r["role"],
            if is_leader { "primary" } else { "replica" },
            "{rows:#?}"
        );
        assert_eq!(
            r["raft_role"],
            if is_leader { "leader" } else { "follower" },
            "{rows:#?}"
        );
        assert_eq!(
            r["litefs_role"],
            if is_leader { "primary" } else { "replica" },
            "{rows:#?}"
        );
        assert_eq!(r["litefs"], "up", "{rows:#?}");
        assert_eq!(r["leader"], leader_id.as_str(), "{rows:#?}");
        assert_eq!(r["txid"].as_str().map(str::len), Some(16), "{rows:#?}");
        assert!(r["lag_ms"].is_i64(), "{rows:#?}");
        assert!(r["last_contact_ms"].is_u64(), "{rows:#?}");
    }
    assert_eq!(
        by_node(&rows, &c.nodes[asked].id)["last_contact_ms"],
        0,
        "the asked node answered just now"
    );

    // The table: a header, one line per node, in that order.
    let out = cli(&["cluster", "status", "--url", &url]).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("Cluster as {} ({url}) sees it:", c.nodes[asked].id)
    );
    let head = lines[2];
    for col in [
        "NODE",
        "ROLE",
        "RAFT",
        "LITEFS",
        "TXID",
        "LAG",
        "TERM",
        "LEADER",
        "LAST CONTACT",
    ] {
        assert!(head.contains(col), "{head}");
    }
    for (k, line) in lines[3..6].iter().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], format!("node-{}", k + 1), "{}", out.stdout);
        let want = if k == leader { "primary" } else { "replica" };
        assert_eq!(cols[1], want, "{}", out.stdout);
    }

    // kill -9 of the leader: still listed, as down, with when it was last heard from.
    c.kill(leader);
    let rows = json_until(&["--url", &url], |rows| {
        rows.len() == 3 && by_node(rows, &leader_id)["role"] == "down"
    })
    .await;
    let dead = by_node(&rows, &leader_id);
    assert!(
        dead["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{dead}"
    );
    assert!(dead["last_contact_ms"].is_u64(), "seen before: {dead}");
    assert_eq!(dead["txid"], serde_json::Value::Null);
    let out = cli(&["cluster", "status", "--url", &url]).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let dead_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{leader_id} ")))
        .unwrap_or_else(|| panic!("no line for {leader_id}: {}", out.stdout));
    assert_eq!(
        dead_line.split_whitespace().nth(1),
        Some("down"),
        "{dead_line}"
    );
    assert!(
        out.stdout.contains(&format!("{leader_id} (http://")),
        "why it is down: {}",
        out.stdout
    );

    // --config: the file's peers, each asked directly; the dead one down, its last contact
    // as the survivors report it.
    let cfg = config_arg(&c.nodes[asked].config);
    let rows = json_until(&["--config", &cfg], |rows| {
        rows.len() == 3
            && by_node(rows, &leader_id)["role"] == "down"
            && rows.iter().filter(|r| r["role"] != "down").count() == 2
    })
    .await;
    let nodes: Vec<&str> = rows.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "{rows:#?}");
    assert!(
        by_node(&rows, &leader_id)["last_contact_ms"].is_u64(),
        "{rows:#?}"
    );

    // A node that cannot be asked: exit 1, saying so.
    let nobody = format!("http://{}", free_port());
    let out = cli(&["cluster", "status", "--url", &nobody]).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("cannot ask {nobody}")),
        "{}",
        out.stderr
    );
}
