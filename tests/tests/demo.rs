//! `litefs-proxy demo` does what it prints: a write through a replica, a read that waits
//! for replication, a failover after kill -9 of the printed leader pid, and Ctrl-C leaves
//! no process behind.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use litefs_proxy_tests::{
    client::{get, post},
    cluster::{binary, free_run},
};

/// Kills the supervisor if the test fails half-way; its nodes then see their stdin close.
struct Supervisor(std::process::Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is not running; /proc/<pid>/stat's third field says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A command line with what differs from run to run (ports, the pid, where the binary is)
/// replaced by placeholders.
fn normalized(cmd: &str) -> String {
    let words: Vec<String> = cmd
        .split_whitespace()
        .map(|w| {
            if w == "litefs-proxy" || w.ends_with("/litefs-proxy") {
                return "litefs-proxy".to_owned();
            }
            match w.split_once("127.0.0.1:") {
                Some((a, rest)) => {
                    let tail = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                    format!("{a}127.0.0.1:PORT{tail}")
                }
                None if w.bytes().all(|b| b.is_ascii_digit()) => "N".to_owned(),
                None => w.to_owned(),
            }
        })
        .collect();
    words.join(" ")
}

/// README's demo session: its commands (`$ ` lines of the first console block after
/// "## The demo") and the response header names of its first `curl -si`.
fn readme_session() -> (Vec<String>, Vec<String>) {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let demo = &readme[readme.find("## The demo").expect("a demo section")..];
    let block = &demo[demo.find("```console\n").expect("a console block") + 11..];
    let block = &block[..block.find("```").unwrap()];
    let commands = block
        .lines()
        .filter_map(|l| l.strip_prefix("$ "))
        .map(str::to_owned)
        .collect();
    let headers = block
        .lines()
        .skip_while(|l| !l.starts_with("HTTP/1.1 "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": ").map(|(name, _)| name.to_owned()))
        .collect();
    (commands, headers)
}

/// The next line the demo prints for which `want` holds (within 20 s of `since`).
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    since: Instant,
    want: impl Fn(&str) -> bool,
) -> String {
    let end = since + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(l)) if want(&l) => return l,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the demo's stdout closed"),
            Err(_) => panic!("the demo did not say it in time"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_printed_session_and_ctrl_c_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, app, raft, api, lease) = (
        free_run(3),
        free_run(3),
        free_run(3),
        free_run(3),
        free_run(3),
    );
    let mut sup = Supervisor(
        Command::new(binary())
            .arg("demo")
            .args(["--dir".as_ref(), dir.path().as_os_str()])
            .args([
                "--proxy-port",
                &proxy.to_string(),
                "--app-port",
                &app.to_string(),
            ])
            .args([
                "--raft-port",
                &raft.to_string(),
                "--api-port",
                &api.to_string(),
            ])
            .args(["--lease-port", &lease.to_string()])
            .args(["--lag-ms", "300"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = sup.0.stdout.take().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (later_tx, mut later) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Reads the session up to "demo ready", then hands on every later line (what the demo
    // reports while it runs), draining so the demo can always print.
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match ready_tx.take() {
                Some(tx) if line.starts_with("demo ready:") => {
                    out.push(line);
                    let _ = tx.send(std::mem::take(&mut out));
                }
                Some(tx) => {
                    out.push(line);
                    ready_tx = Some(tx);
                }
                None => {
                    let _ = later_tx.send(line);
                }
            }
        }
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .expect("demo ready in time")
        .unwrap();
    let text = lines.join("\n");
    let ready = lines.last().unwrap();
    assert!(ready.starts_with("demo ready: leader node-"), "{text}");
    let leader: u16 = ready["demo ready: leader node-".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let leader_pid: u32 = ready.rsplit(' ').next().unwrap().parse().unwrap();
    let pids: Vec<u32> = lines
        .iter()
        .filter(|l| l.starts_with("node-"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{text}");
    assert!(text.contains("curl -si -c /tmp/demo.jar -X POST"), "{text}");
    // README's session is the printed one: each of its commands is printed (ports, pid and
    // the binary's path aside).
    let (readme_commands, readme_headers) = readme_session();
    assert!(readme_commands.len() >= 5, "{readme_commands:?}");
    let printed: Vec<String> = lines.iter().map(|l| normalized(l)).collect();
    for c in &readme_commands {
        assert!(
            printed.contains(&normalized(c)),
            "README's {c:?} is not in the demo's session:\n{text}"
        );
    }
    let addr = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], proxy + i - 1));
    let replicas: Vec<u16> = (1..=3).filter(|&i| i != leader).collect();

    // 1. A write through a replica lands on the leader and mints the token, answered once
    // a replica holds it (sync_replicas = 1 by default at 3 voters): after the 300 ms lag.
    let start = Instant::now();
    let w = post(addr(replicas[0]), "/items", &[], "hello")
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "the write waited for a replica"
    );
    assert_eq!(w.status, 201, "{}", w.text());
    assert_eq!(
        w.header("x-sim-node"),
        Some(format!("node-{leader}").as_str())
    );
    let token = litefs_proxy_tests::client::minted(&w).expect("token");
    // The answer has the headers README shows.
    for name in &readme_headers {
        assert!(
            w.header(name).is_some(),
            "no {name} header: {:?}",
            w.headers
        );
    }
    assert!(readme_headers.len() >= 5, "{readme_headers:?}");
    // 2. The other replica, with the cookie, sees it (waiting if it is still behind).
    let cookie = format!("litefs-txid={token}");
    let r = get(addr(replicas[1]), "/items", &[("cookie", cookie.as_str())])
        .await
        .unwrap();
    assert!(r.text().contains("hello"), "{}", r.text());
    // 3. kill -9 of the printed leader pid; a write through a survivor succeeds.
    assert!(Command::new("kill")
        .args(["-9", &leader_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let killed = Instant::now();
    // kill returns before the process is torn down, and a multi-threaded process shows
    // as a zombie before its last thread has closed its sockets; until its proxy port
    // refuses connections a request can still be accepted and then reset, in flight at
    // the node's death (a 502: it may have been applied). The node is dead once it refuses.
    while std::net::TcpStream::connect(addr(leader)).is_ok() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the leader did not die"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The supervisor says so at once: the node, its signal; it reaped it (no zombie left).
    let said = next_line(&mut later, killed, |l| l.contains("was killed by")).await;
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "reported {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        said.contains(&format!(
            "node-{leader} (pid {leader_pid}) was killed by SIGKILL (signal 9); reaped, the demo keeps running on"
        )),
        "{said}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{leader_pid}")).exists(),
        "node-{leader} (pid {leader_pid}) was not reaped"
    );
    let w = post(addr(replicas[0]), "/items", &[], "after failover")
        .await
        .unwrap();
    let logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("node-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(w.status, 201, "{}\n{}", w.text(), logs());
    assert_ne!(
        w.header("x-sim-node"),
        Some(format!("node-{leader}").as_str())
    );
    println!(
        "demo failover: first write after kill -9 in {:?}",
        killed.elapsed()
    );

    // Then how to start the node again, and the change of leader.
    let hint = next_line(&mut later, killed, |l| l.contains("Start it again")).await;
    assert!(hint.contains("Ctrl-C stops it"), "{hint}");
    let restart = next_line(&mut later, killed, |l| !l.trim().is_empty()).await;
    let change = next_line(&mut later, killed, |l| {
        l.contains("leader: node-") && l.contains("writes go to it")
    })
    .await;
    let new_leader = w.header("x-sim-node").unwrap();
    assert!(
        change.contains(&format!("leader: {new_leader} (was ")),
        "{change}"
    );
    // The printed command brings the node back, as a replica of the new leader.
    let words: Vec<&str> = restart.split_whitespace().collect();
    assert!(
        words.len() > 2 && words[1] == "demo-node" && !restart.contains('\''),
        "{restart}"
    );
    let mut back = Command::new(words[0])
        .args(&words[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(addr(leader), "/litefs/status", &[]).await.ok();
        let s: Option<serde_json::Value> = s.and_then(|a| serde_json::from_slice(&a.body).ok());
        if s.is_some_and(|s| s["role"] == "replica" && s["primary"] == new_leader) {
            break;
        }
        assert!(Instant::now() < end, "the restarted node did not rejoin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It stops when its stdin (here a pipe, by hand a terminal) closes.
    drop(back.stdin.take());
    let end = Instant::now() + Duration::from_secs(20);
    while back.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the restarted node did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Ctrl-C: the supervisor stops every node and exits 0.
    assert!(Command::new("kill")
        .args(["-INT", &sup.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(st) = sup.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < end, "supervisor did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
    for pid in pids {
        assert!(!alive(pid), "node process {pid} still running");
    }
    // Nor any node's LiteFS (children of the node processes, named by the demo's dir).
    let dir_arg = dir.path().display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&dir_arg) && alive(pid)).then_some(cmd)
        })
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}
