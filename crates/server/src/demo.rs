//! `litefs-proxy demo`: a local cluster on 127.0.0.1 in one command. The supervisor starts
//! one process per node (so `kill <leader pid>` is a real node failure) running the proxy,
//! the Raft election and its lease endpoint; each node process starts its LiteFS stand-in
//! (`sim-litefs`: mount files, API, replication stream, LiteFS's consul lease loop against
//! that endpoint, and the demo app) as a child that dies with it. A node stops when its
//! supervisor goes away (its stdin closes), so Ctrl-C leaves nothing running.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use litefs_proxy::ProxyConfig;
use litefs_sim::{Lag, LagControl};

use crate::{
    cli::{DemoArgs, DemoNodeArgs},
    config::Config,
    demo_watch::NodeProc,
    role::{RoleConfig, RoleSource},
    say,
};

const DB: &str = "db.sqlite3";

fn node_name(i: u16) -> String {
    format!("node-{i}")
}

fn mount_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("litefs")
}

/// The supervisor: start the nodes, print the session, wait for Ctrl-C, stop them all.
pub fn supervise(args: DemoArgs) -> ExitCode {
    if !(1..=7).contains(&args.nodes) {
        eprintln!(
            "litefs-proxy: invalid config: --nodes = {}: expected 1 to 7 (3 or 5 for a quorum that survives a failure)",
            args.nodes
        );
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("litefs-proxy-demo-{}", std::process::id())),
            true,
        ),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("litefs-proxy: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("litefs-proxy: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children: Vec<NodeProc> = Vec::new();
    for i in 1..=args.nodes {
        match spawn_node(&exe, &args, &dir, i) {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("litefs-proxy: cannot start {}: {e}", node_name(i));
                stop_all(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    let code = crate::block_on(async {
        let ready = wait_for_leader(&args, Duration::from_secs(30)).await;
        let leader = match ready {
            Some(leader) => {
                print_session(&args, &dir, &children, leader);
                leader
            }
            None => {
                eprintln!(
                    "litefs-proxy: the demo cluster did not elect a leader in 30 s; logs in {}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        };
        match crate::signals::shutdown() {
            Ok(signal) => {
                let leader = Some(node_name(leader));
                crate::demo_watch::watch(&mut children, leader, signal, say).await
            }
            Err(e) => eprintln!("litefs-proxy: cannot wait for signals: {e}"),
        }
        ExitCode::SUCCESS
    });
    say("\nstopping the demo cluster...\n");
    stop_all(&mut children);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// The arguments of node `i`'s process (`demo-node ...`).
fn node_args(args: &DemoArgs, dir: &Path, i: u16) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = vec!["demo-node".into()];
    let mut pair = |k: &str, v: std::ffi::OsString| {
        out.push(k.into());
        out.push(v);
    };
    pair("--index", i.to_string().into());
    pair("--nodes", args.nodes.to_string().into());
    pair("--dir", dir.as_os_str().to_owned());
    pair("--proxy-port", args.proxy_port.to_string().into());
    pair("--app-port", args.app_port.to_string().into());
    pair("--raft-port", args.raft_port.to_string().into());
    pair("--api-port", args.api_port.to_string().into());
    pair("--lease-port", args.lease_port.to_string().into());
    pair("--lag-ms", args.lag_ms.to_string().into());
    out
}

/// A command line a shell runs as written: each word single-quoted unless plainly safe.
fn shell_line(exe: &Path, args: &[std::ffi::OsString]) -> String {
    std::iter::once(exe.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|w| {
            let w = w.to_string_lossy();
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-=:".contains(c));
            if plain {
                w.into_owned()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_node(exe: &Path, args: &DemoArgs, dir: &Path, i: u16) -> std::io::Result<NodeProc> {
    let log = std::fs::File::create(dir.join(format!("{}.log", node_name(i))))?;
    let argv = node_args(args, dir, i);
    let child = Command::new(exe)
        .args(&argv)
        // The node exits when this pipe closes, whatever way the supervisor ends.
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    // By hand, from a terminal: the same node, logging to that terminal.
    Ok(NodeProc {
        name: node_name(i),
        port: args.proxy_port + i - 1,
        child,
        exited: false,
        restart: shell_line(exe, &argv),
    })
}

/// SIGTERM to every node still running (a leader hands over), then SIGKILL to whatever is
/// left. A node already reaped is left alone: its pid may be another process's by now.
fn stop_all(nodes: &mut Vec<NodeProc>) {
    for n in nodes.iter_mut() {
        if !n.exited && matches!(n.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &n.child.id().to_string()])
                .status();
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > end => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    eprintln!("{} did not stop in time; killed", n.name);
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    nodes.clear();
}

/// `GET path` on 127.0.0.1:port with a plain blocking socket (the demo needs nothing more).
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The index of the node every node agrees is primary.
async fn wait_for_leader(args: &DemoArgs, within: Duration) -> Option<u16> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let roles: Vec<Option<serde_json::Value>> = (0..args.nodes)
            .map(|k| {
                http_get(args.proxy_port + k, "/litefs/status")
                    .and_then(|b| serde_json::from_str(&b).ok())
            })
            .collect();
        let leaders: Vec<u16> = (0..args.nodes)
            .filter(|&k| {
                roles[k as usize]
                    .as_ref()
                    .is_some_and(|s| s["role"] == "primary")
            })
            .collect();
        if let [l] = leaders[..] {
            let name = node_name(l + 1);
            if roles
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s["primary"] == name.as_str()))
            {
                return Some(l + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn print_session(args: &DemoArgs, dir: &Path, children: &[NodeProc], leader: u16) {
    let port = |i: u16| args.proxy_port + i - 1;
    let replicas: Vec<u16> = (1..=args.nodes).filter(|&i| i != leader).collect();
    let (w, r) = match replicas[..] {
        [a, b, ..] => (a, b),
        [a] => (a, a),
        [] => (leader, leader),
    };
    let mut out = format!(
        "litefs-proxy demo: {} nodes on 127.0.0.1 (logs and data in {})\n\n{:<8} {:>7} {:>6} {:>6} {:>6} {:>6}  role\n",
        args.nodes,
        dir.display(),
        "node",
        "pid",
        "proxy",
        "app",
        "raft",
        "litefs"
    );
    for (k, n) in children.iter().enumerate() {
        let (k, name, c) = (k as u16, &n.name, &n.child);
        let role = if k + 1 == leader {
            "primary (Raft leader)"
        } else {
            "replica"
        };
        out += &format!(
            "{name:<8} {:>7} {:>6} {:>6} {:>6} {:>6}  {role}\n",
            c.id(),
            args.proxy_port + k,
            args.app_port + k,
            args.raft_port + k,
            args.api_port + k,
        );
    }
    let leader_pid = children[(leader - 1) as usize].child.id();
    out += &format!(
        r#"
Replication lag is {lag} ms. Paste these in another terminal:

  # 1. a write sent to a replica reaches the primary, which answers once a replica holds it
  #    (sync_replicas = 1: about one replication lag); the proxy mints the litefs-txid cookie
  time curl -si -c /tmp/demo.jar -X POST -d 'hello' http://127.0.0.1:{pw}/items

  # 2. read it back on the other replica: with the cookie it waits until that one has it too
  time curl -s -b /tmp/demo.jar http://127.0.0.1:{pr}/items
  curl -s http://127.0.0.1:{pr}/items        # without it: may miss the write

  # 3. every node as one node sees it; one node's status; Prometheus metrics
  {exe} cluster status --url http://127.0.0.1:{pw}
  curl -s http://127.0.0.1:{pw}/litefs/status; echo
  curl -s http://127.0.0.1:{pw}/litefs/metrics | grep -E '^litefs_(proxy_requests|election_term)'

  # 4. failover: kill the leader, then write again through a survivor (held, then served)
  kill -9 {leader_pid}
  time curl -si -c /tmp/demo.jar -X POST -d 'after failover' http://127.0.0.1:{pw}/items
  {exe} cluster status --url http://127.0.0.1:{pw}

This terminal reports each node that exits and each change of leader. Ctrl-C stops the
whole cluster.
demo ready: leader node-{leader} pid {leader_pid}
"#,
        lag = args.lag_ms,
        exe = std::env::current_exe()
            .map(|e| e.display().to_string())
            .unwrap_or_else(|_| "litefs-proxy".into()),
        pw = port(w),
        pr = port(r),
    );
    say(&out);
}

/// One node: LiteFS stand-in, demo app, election and proxy, until the supervisor goes.
pub fn node(args: DemoNodeArgs) -> ExitCode {
    if let Err(e) = crate::init_tracing(None) {
        eprintln!("litefs-proxy: {e}");
    }
    crate::block_on(run_node(args))
}

async fn run_node(args: DemoNodeArgs) -> ExitCode {
    let d = &args.demo;
    let Some(dir) = d.dir.clone() else {
        eprintln!("litefs-proxy: demo-node needs --dir");
        return ExitCode::from(crate::EXIT_CONFIG);
    };
    let i = args.index;
    let off = i - 1;
    let name = node_name(i);
    let mount = mount_of(&dir, &name);
    // This node's LiteFS: a process of its own, as `litefs mount` would be, running
    // LiteFS's consul lease loop against this node's lease endpoint. It holds our pipe on
    // its stdin and dies with us (kill -9 of this pid is a whole-node crash).
    let litefs = match spawn_litefs(d, &dir, i) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("litefs-proxy: {name}: cannot start its LiteFS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let peers: Vec<String> = (1..=d.nodes)
        .map(|k| {
            format!(
                r#"{{ id = "{}", raft = "127.0.0.1:{}", proxy = "http://127.0.0.1:{}" }}"#,
                node_name(k),
                d.raft_port + k - 1,
                d.proxy_port + k - 1
            )
        })
        .collect();
    let election = format!(
        "node_id = \"{name}\"\nraft_addr = \"127.0.0.1:{}\"\nlease_addr = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\npeers = [{}]\n",
        d.raft_port + off,
        d.lease_port + off,
        dir.join(&name).join("data").display(),
        peers.join(", ")
    );
    let election: toml::Table = match toml::from_str(&election) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("litefs-proxy: demo election config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = Config {
        proxy: ProxyConfig {
            addr: format!("127.0.0.1:{}", d.proxy_port + off),
            target: format!("127.0.0.1:{}", d.app_port + off),
            mount,
            node_name: name.clone(),
            litefs_api: format!("http://127.0.0.1:{}", d.api_port + off),
            ..ProxyConfig::default()
        },
        role: RoleConfig {
            source: RoleSource::Raft,
            // Act as primary only once this node's LiteFS holds the lease too, so no
            // write reaches a database that is still read-only.
            confirm_litefs: Some(true),
            ..RoleConfig::default()
        },
        election: Some(election),
    };
    // The supervisor holds our stdin; EOF means it is gone.
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = gone_tx.send(());
    });
    let stop = async move {
        let _ = gone_rx.await;
    };
    let code = crate::run::run_until(cfg, stop).await;
    stop_litefs(litefs);
    code
}

/// Starts node `i`'s LiteFS (`sim-litefs`) with the lease settings `litefs-config`
/// prints by default, its log in `<dir>/node-<i>-litefs.log`.
fn spawn_litefs(d: &DemoArgs, dir: &Path, i: u16) -> std::io::Result<Child> {
    let off = i - 1;
    let name = node_name(i);
    let log = std::fs::File::create(dir.join(format!("{name}-litefs.log")))?;
    let exe = std::env::current_exe()?;
    let lease = litefs_election::Config::default();
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    Command::new(exe)
        .arg("sim-litefs")
        .args(["--ttl", &ms(lease.lease_ttl)])
        .args(["--lock-delay", &ms(lease.lease_lock_delay)])
        .args(["--hostname", &name])
        .args(["--mount".as_ref(), mount_of(dir, &name).as_os_str()])
        .args(["--db", DB])
        .args(["--api-addr", &format!("127.0.0.1:{}", d.api_port + off)])
        .args([
            "--consul-url",
            &format!("http://127.0.0.1:{}", d.lease_port + off),
        ])
        .args(["--app-addr", &format!("127.0.0.1:{}", d.app_port + off)])
        .args(["--lag-ms", &d.lag_ms.to_string()])
        .arg("--die-with-stdin")
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// A clean LiteFS stop (SIGTERM: a primary releases its lease), then reaped.
fn stop_litefs(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(5);
    while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// `litefs-proxy sim-litefs`: one LiteFS node of the sim until SIGTERM/SIGINT (a clean
/// stop: a primary releases its lease) or, with `--die-with-stdin`, until stdin closes
/// (exit at once, holding whatever it held, as a crashed node).
pub fn sim_litefs(a: crate::cli::SimLitefsArgs) -> ExitCode {
    if let Err(e) = crate::init_tracing(None) {
        eprintln!("litefs-proxy: {e}");
    }
    let cfg = litefs_sim::litefs::LiteFsConfig {
        hostname: a.hostname.clone(),
        mount: a.mount.clone(),
        db: a.db.clone(),
        api_addr: a.api_addr,
        consul: litefs_sim::consul::ConsulConfig {
            url: a.consul_url.clone(),
            key: a.lease_key.clone(),
            hostname: a.hostname.clone(),
            advertise_url: a
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", a.api_addr)),
            ttl: a.ttl,
            lock_delay: a.lock_delay,
        },
        candidate: a.candidate,
        lag: LagControl {
            lag: Lag::fixed_ms(a.lag_ms),
            paused: false,
        },
        app_addr: a.app_addr,
        watch_commits: a.watch_commits.then_some(litefs_sim::DEFAULT_INTERVAL),
    };
    if a.die_with_stdin {
        std::thread::spawn(|| {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(1);
        });
    }
    crate::block_on(async move {
        let stop = async {
            match crate::signals::shutdown() {
                Ok(signal) => {
                    signal.await;
                }
                Err(e) => {
                    eprintln!("litefs-proxy: cannot wait for signals: {e}");
                    std::future::pending::<()>().await;
                }
            }
        };
        match litefs_sim::litefs::run(cfg, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("litefs-proxy: sim-litefs {}: {e:#}", a.hostname);
                ExitCode::FAILURE
            }
        }
    })
}
