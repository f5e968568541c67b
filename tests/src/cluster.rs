//! A cluster of real `litefs-proxy` processes with `[role] source = "raft"` on loopback,
//! each in front of either an in-process recording app and LiteFS stand-in (the Raft-only
//! model: the primary moves with the Raft role, nothing replicates) or, with
//! [`Options::litefs`], a LiteFS process of the sim per node (its consul lease loop against
//! the node's lease endpoint, replication over its stream) serving the sim's demo app or
//! watching a foreign app's commits ([`Options::app_targets`]). Raft traffic and the
//! replication streams can go through fault-injecting relays to partition nodes, or, with
//! [`Options::netns`], each node runs in a network namespace of its own and a partition is
//! a cut in the network ([`crate::netns`]).

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{app::TestApp, client, netns::Net, relay::Relay};

/// The `litefs-proxy` binary of this build profile, (re)built once per process with cargo
/// (a no-op when fresh). `LITEFS_PROXY_BIN` points at another one instead. Works from a test
/// (target/<profile>/deps/) and from a binary such as the bench (target/<profile>/).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("LITEFS_PROXY_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "litefs-proxy-server",
            "--bin",
            "litefs-proxy",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building litefs-proxy failed");
        dir.join("litefs-proxy")
    })
    .clone()
}

/// A free loopback port for a process about to start; see [`free_run`].
pub fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_run(1)))
}

/// The first of `n` consecutive loopback ports that are free, for a process about to start.
/// Taken below Linux's ephemeral range when there is room: a port the kernel picked for
/// port 0 is, once released, free for any outgoing connection on the machine to take
/// before the process binds it, and a node that cannot bind never comes up. Runs are handed
/// out in turn from a start that differs per test process; each port is checked free by
/// binding it.
pub fn free_run(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n32 = u32::from(n);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if low > FLOOR + 1_000 + n32 {
        let span = low - FLOOR - n32;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let first = FLOOR + (start + NEXT.fetch_add(n32, Ordering::Relaxed)) % span;
            let Ok(first) = u16::try_from(first) else {
                continue;
            };
            if all_free(first, n) {
                return first;
            }
        }
    }
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let first = l.local_addr().expect("addr").port();
        drop(l);
        if first.checked_add(n).is_some() && all_free(first, n) {
            return first;
        }
    }
}

fn all_free(first: u16, n: u16) -> bool {
    let bound: Vec<_> = (0..n)
        .filter_map(|k| std::net::TcpListener::bind(("127.0.0.1", first + k)).ok())
        .collect();
    bound.len() == usize::from(n)
}

/// A node's LiteFS as a process of its own (`litefs-proxy sim-litefs`), with [`Options::litefs`].
pub struct LiteFsProc {
    /// Its API (`/info`, `/events`, the replication stream).
    pub api: SocketAddr,
    /// The demo app it serves, the proxy's target; `None` with [`Options::app_targets`]
    /// (a foreign app writes its database, watched for commits).
    pub app: Option<SocketAddr>,
    /// This node's lease endpoint, LiteFS's Consul.
    pub lease: SocketAddr,
    pub mount: PathBuf,
    pub log: PathBuf,
    /// With [`Options::relays`]: where other nodes' LiteFS reach this one's API (its
    /// advertise URL), cut by [`Cluster::isolate`] with the Raft relays.
    pub api_relay: Option<Relay>,
    child: Option<Child>,
}

impl LiteFsProc {
    /// The URL other nodes' LiteFS stream from (LiteFS's advertise URL).
    pub fn advertise_url(&self) -> String {
        format!(
            "http://{}",
            self.api_relay.as_ref().map_or(self.api, |r| r.addr)
        )
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct ProcNode {
    pub id: String,
    pub proxy: SocketAddr,
    pub raft: SocketAddr,
    pub app: TestApp,
    pub sim: litefs_sim::Node,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// With [`Options::litefs`]: the node's LiteFS process.
    pub litefs: Option<LiteFsProc>,
    child: Option<Child>,
    /// The process group of every run of this node's litefs-proxy: with it, its lease
    /// keeper, which outlives a kill -9 of the proxy ([`Cluster::kill_node`], drop).
    groups: Vec<u32>,
}

impl ProcNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn primary_file(&self) -> PathBuf {
        self.data_dir.join(".primary")
    }
}

pub struct Cluster {
    pub nodes: Vec<ProcNode>,
    /// `relays[i][j]`: how node i reaches node j's Raft port (None for i == j or no relays).
    pub relays: Vec<Vec<Option<Relay>>>,
    litefs: Option<LiteFsOptions>,
    lag_ms: Vec<u64>,
    /// [`Options::non_voters`].
    non_voters: Vec<usize>,
    /// With [`Options::netns`]; dropped after the processes are stopped.
    net: Option<Net>,
    /// The cluster's files; kept after the test when `LITEFS_TEST_KEEP` is set (its path is
    /// printed), for reading the logs and databases of a failed run.
    dir: Option<tempfile::TempDir>,
}

/// `[election]` timing for tests over [`Options::litefs`] on a loaded machine: a leader keeps
/// its place through 600 ms without a quorum's acknowledgement (the defaults, 150–300 ms,
/// are for a LAN of idle machines). On two shared cores running other builds, the default
/// timeouts saw a leader step down for ~50 ms when the machine stalled (peers "unreachable"
/// for 50–100 ms); its lease endpoint then answered LiteFS's renewal "session gone", LiteFS
/// gave up the lease and its replicas' streams, and for over a second no write could reach
/// a replica (refused as "applied, not replicated"), or a Django migration not yet
/// replicated was lost to a new primary with an empty database (as on LiteFS). For tests
/// about what users see, not about how fast Raft notices a death.
pub const TOLERANT_ELECTION: &str =
    "heartbeat_interval = \"100ms\"\nelection_timeout_min = \"600ms\"\nelection_timeout_max = \"1200ms\"\n";

/// Extra `[proxy]` lines for every node (e.g. a shorter `primary_redirect_timeout`).
pub struct Options {
    pub nodes: usize,
    pub relays: bool,
    pub proxy_extra: String,
    /// Run a LiteFS process per node (the sim's LiteFS: its lease loop against the node's
    /// lease endpoint, replication over its stream, the demo app on its database) and
    /// point the proxy at it with `confirm_litefs`, as a production node is set up.
    pub litefs: Option<LiteFsOptions>,
    /// With [`Options::litefs`]: per node, an app the test runs itself on that node's
    /// LiteFS mount (e.g. gunicorn with Django's database at `<mount>/db.sqlite3`), the
    /// proxy's target instead of the demo app; that LiteFS then serves no demo app and
    /// watches the database for the app's commits (`sim-litefs --watch-commits`). Empty:
    /// the demo app.
    pub app_targets: Vec<SocketAddr>,
    /// With [`Options::litefs`]: per node, the replication lag that node's LiteFS adds to
    /// every transaction it receives as a replica, instead of [`LiteFsOptions::lag_ms`]
    /// (replicas that lag differently, as near and far ones do). Empty: the same for all.
    pub lag_ms_per_node: Vec<u64>,
    /// Extra `[election]` lines for every node (e.g. longer election timeouts).
    pub election_extra: String,
    /// Per node, `[election]` lines after [`Options::election_extra`] (e.g. `priority`).
    pub election_extra_per_node: Vec<String>,
    /// With [`Options::litefs`]: each node (its proxy and its LiteFS) in a network
    /// namespace of its own, its Raft, proxy and LiteFS API on its address there (signed
    /// with a cluster secret, as off loopback they must be); [`Cluster::isolate`] cuts the
    /// network between it and its peers. Needs root.
    pub netns: bool,
    /// Nodes listed with `voter = false` (read replicas that never lead; their LiteFS is no
    /// candidate, as `litefs-config` prints it).
    pub non_voters: Vec<usize>,
}

/// The LiteFS settings of [`Options::litefs`] (litefs.yml's `lease.consul.ttl` and
/// `lock-delay`) and the replication lag every replica sees.
#[derive(Clone, Debug)]
pub struct LiteFsOptions {
    pub ttl: Duration,
    pub lock_delay: Duration,
    pub lag_ms: u64,
}

impl LiteFsOptions {
    /// LiteFS's lease settings as `litefs-config` prints them (the election's defaults), with
    /// `lag_ms` of replication lag.
    pub fn with_lag(lag_ms: u64) -> LiteFsOptions {
        let lease = litefs_election::Config::default();
        LiteFsOptions {
            ttl: lease.lease_ttl,
            lock_delay: lease.lease_lock_delay,
            lag_ms,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            relays: false,
            proxy_extra: String::new(),
            litefs: None,
            app_targets: Vec::new(),
            lag_ms_per_node: Vec::new(),
            election_extra: String::new(),
            election_extra_per_node: Vec::new(),
            netns: false,
            non_voters: Vec::new(),
        }
    }
}

impl Cluster {
    pub async fn start(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = opts.nodes;
        let ids: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        assert!(
            !opts.netns || (opts.litefs.is_some() && !opts.relays),
            "Options::netns needs Options::litefs and no relays"
        );
        let net = opts.netns.then(|| Net::create(n));
        // A node's address for others: its namespace's, or loopback.
        let public = |i: usize| -> SocketAddr {
            let a = free_port();
            match &net {
                Some(net) => SocketAddr::from((net.addr(i), a.port())),
                None => a,
            }
        };
        let proxies: Vec<SocketAddr> = (0..n).map(public).collect();
        let rafts: Vec<SocketAddr> = (0..n).map(public).collect();
        let mut relays: Vec<Vec<Option<Relay>>> = Vec::new();
        for i in 0..n {
            let mut row = Vec::new();
            for (j, raft) in rafts.iter().enumerate() {
                row.push(if opts.relays && i != j {
                    Some(Relay::start(*raft).await)
                } else {
                    None
                });
            }
            relays.push(row);
        }
        let mut nodes = Vec::new();
        for i in 0..n {
            let mount = dir.path().join(format!("mount-{}", i + 1));
            let sim = litefs_sim::Node::new(litefs_sim::NodeConfig {
                mount: mount.clone(),
                db: "db.sqlite3".into(),
                hostname: ids[i].clone(),
                is_primary: false,
                primary_hostname: None,
            });
            let app = TestApp::start(&ids[i], Some(sim.clone())).await;
            let data_dir = dir.path().join(format!("data-{}", i + 1));
            let peers: Vec<String> = (0..n)
                .map(|j| {
                    let raft = relays[i][j].as_ref().map_or(rafts[j], |r| r.addr);
                    let voter = if opts.non_voters.contains(&j) {
                        ", voter = false"
                    } else {
                        ""
                    };
                    format!(
                        r#"{{ id = "{}", raft = "{raft}", proxy = "http://{}"{voter} }}"#,
                        ids[j], proxies[j]
                    )
                })
                .collect();
            let litefs = match &opts.litefs {
                Some(_) => {
                    let api = public(i);
                    let api_relay = if opts.relays {
                        Some(Relay::start(api).await)
                    } else {
                        None
                    };
                    let app = match opts.app_targets.get(i) {
                        Some(_) => None,
                        None => Some(free_port()),
                    };
                    Some(LiteFsProc {
                        api,
                        app,
                        lease: free_port(),
                        mount: dir.path().join(format!("litefs-{}", i + 1)),
                        log: dir.path().join(format!("litefs-{}.log", i + 1)),
                        api_relay,
                        child: None,
                    })
                }
                None => None,
            };
            let (target, mount, api) = match &litefs {
                Some(l) => (
                    l.app
                        .or(opts.app_targets.get(i).copied())
                        .expect("a target"),
                    l.mount.clone(),
                    Some(l.api),
                ),
                None => (app.addr, mount, None),
            };
            let lease_line = litefs
                .as_ref()
                .map(|l| format!("lease_addr = \"{}\"\n", l.lease))
                .unwrap_or_default();
            let (api_line, confirm_line) = match api {
                Some(a) => (
                    format!("litefs_api = \"http://{a}\"\n"),
                    "confirm_litefs = true\n",
                ),
                None => (String::new(), ""),
            };
            // The in-process recording apps and sims do not replicate to each other, so no
            // write could ever reach a replica: durability waits are off for them.
            let sync_line = if opts.litefs.is_none() && !opts.proxy_extra.contains("sync_replicas")
            {
                "sync_replicas = 0\n"
            } else {
                ""
            };
            let config = dir.path().join(format!("node-{}.toml", i + 1));
            let toml = format!(
                r#"[proxy]
addr = "{proxy}"
target = "{app}"
mount = "{mount}"
node_name = "{id}"
{api_line}{sync_line}{extra}

[role]
source = "raft"
{confirm_line}
[election]
node_id = "{id}"
raft_addr = "{raft}"
data_dir = "{data}"
{lease_line}{election_extra}
peers = [{peers}]
"#,
                proxy = proxies[i],
                app = target,
                mount = mount.display(),
                id = ids[i],
                extra = opts.proxy_extra,
                election_extra = {
                    let own = opts
                        .election_extra_per_node
                        .get(i)
                        .map_or("", String::as_str);
                    if net.is_some() {
                        format!(
                            "cluster_secret = \"netns-test-cluster-secret\"\n{}{own}",
                            opts.election_extra
                        )
                    } else {
                        format!("{}{own}", opts.election_extra)
                    }
                },
                raft = rafts[i],
                data = data_dir.display(),
                peers = peers.join(", "),
            );
            std::fs::write(&config, toml).expect("write config");
            nodes.push(ProcNode {
                id: ids[i].clone(),
                proxy: proxies[i],
                raft: rafts[i],
                app,
                sim,
                data_dir,
                log: dir.path().join(format!("node-{}.log", i + 1)),
                config,
                litefs,
                child: None,
                groups: Vec::new(),
            });
        }
        let mut c = Cluster {
            nodes,
            relays,
            litefs: opts.litefs,
            lag_ms: opts.lag_ms_per_node,
            non_voters: opts.non_voters.clone(),
            net,
            dir: Some(dir),
        };
        for i in 0..n {
            if c.nodes[i].litefs.is_some() {
                c.spawn_litefs(i);
            }
            c.spawn(i);
        }
        c
    }

    /// Starts (or restarts) node `i`'s LiteFS process.
    pub fn spawn_litefs(&mut self, i: usize) {
        let opts = self.litefs.clone().expect("a cluster with Options::litefs");
        let lag_ms = self.lag_ms.get(i).copied().unwrap_or(opts.lag_ms);
        let id = self.nodes[i].id.clone();
        let mut cmd = self.command(i);
        let l = self.nodes[i].litefs.as_mut().expect("a LiteFS node");
        cmd.arg("sim-litefs");
        match l.app {
            Some(app) => cmd.args(["--app-addr", &app.to_string()]),
            None => cmd.arg("--watch-commits"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)
            .expect("log");
        let child = cmd
            .args(["--hostname", &id])
            .arg("--mount")
            .arg(&l.mount)
            .args(["--api-addr", &l.api.to_string()])
            .args(["--advertise-url", &l.advertise_url()])
            .args(["--consul-url", &format!("http://{}", l.lease)])
            .args(["--ttl", &format!("{}ms", opts.ttl.as_millis())])
            .args([
                "--lock-delay",
                &format!("{}ms", opts.lock_delay.as_millis()),
            ])
            .args(["--lag-ms", &lag_ms.to_string()])
            .args(["--candidate", &(!self.non_voters.contains(&i)).to_string()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sim-litefs");
        l.child = Some(child);
    }

    /// kill -9 of node `i`'s LiteFS process (its proxy keeps running).
    pub fn kill_litefs(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].litefs.as_mut().and_then(|l| l.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. `STOP`) to node `i`'s LiteFS process, without waiting.
    pub fn signal_litefs(&self, i: usize, signal: &str) {
        if let Some(c) = self.nodes[i].litefs.as_ref().and_then(|l| l.child.as_ref()) {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), c.id().to_string()])
                .status();
        }
    }

    /// `GET /info` of node `i`'s LiteFS, if it answers.
    pub async fn litefs_info(&self, i: usize) -> Option<serde_json::Value> {
        let api = self.nodes[i].litefs.as_ref()?.api;
        let fut = client::get(api, "/info", &[]);
        let a = tokio::time::timeout(Duration::from_millis(500), fut)
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&a.body).ok()
    }

    /// The nodes whose LiteFS says it is primary right now.
    pub async fn litefs_primaries(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if let Some(info) = self.litefs_info(i).await {
                if info["isPrimary"] == true {
                    out.push(i);
                }
            }
        }
        out
    }

    /// With [`Options::litefs`]: waits until one proxy is primary, its LiteFS alone holds
    /// the lease, and every other running LiteFS streams from it; returns its index.
    pub async fn wait_litefs_settled(&self, within: Duration) -> Option<usize> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_litefs_settled_among(&all, within).await
    }

    /// [`Cluster::wait_litefs_settled`] among the nodes `all` (e.g. the survivors of a
    /// node's death): one of them primary, its LiteFS alone holds the lease among them, the
    /// others' LiteFS stream from it.
    pub async fn wait_litefs_settled_among(
        &self,
        all: &[usize],
        within: Duration,
    ) -> Option<usize> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            // Asked again each time: leadership may move meanwhile (a leader elected behind a
            // voter's LiteFS position hands over to it), and LiteFS follows the new one.
            let left = end.saturating_duration_since(Instant::now());
            let l = self.wait_leader(all, left).await?;
            let primaries: Vec<usize> = self
                .litefs_primaries()
                .await
                .into_iter()
                .filter(|i| all.contains(i))
                .collect();
            let mut replicas = 0;
            for i in all.iter().copied().filter(|&i| i != l) {
                if self
                    .litefs_info(i)
                    .await
                    .is_some_and(|info| info["primary"]["hostname"] == self.nodes[l].id.as_str())
                {
                    replicas += 1;
                }
            }
            if primaries == [l] && replicas == all.len() - 1 {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The Raft leader as node `i`'s proxy reports it.
    pub async fn raft_leader(&self, i: usize) -> Option<String> {
        self.status(i)
            .await?
            .pointer("/election/leader")?
            .as_str()
            .map(str::to_owned)
    }

    pub fn litefs_log(&self, i: usize) -> String {
        self.nodes[i]
            .litefs
            .as_ref()
            .and_then(|l| std::fs::read_to_string(&l.log).ok())
            .unwrap_or_default()
    }

    /// A command running the binary as node `i` (in its namespace with [`Options::netns`]).
    fn command(&self, i: usize) -> Command {
        match &self.net {
            Some(net) => net.command(i, &binary()),
            None => Command::new(binary()),
        }
    }

    /// Starts (or restarts) node `i`'s process.
    pub fn spawn(&mut self, i: usize) {
        let mut cmd = self.command(i);
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log");
        let child = cmd
            .args(["run", "--config"])
            .arg(&node.config)
            // `LITEFS_TEST_LOG`: a log filter for the nodes (e.g. `info,litefs_election=debug`).
            .args(
                std::env::var("LITEFS_TEST_LOG")
                    .ok()
                    .map(|f| format!("--log={f}")),
            )
            // The binary's own default filter (no openraft chatter), whatever the test inherits.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn litefs-proxy");
        node.groups.push(child.id());
        node.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 of the whole node: its litefs-proxy with its lease keeper, and its LiteFS.
    pub fn kill_node(&mut self, i: usize) {
        self.kill(i);
        self.kill_groups(i);
        self.kill_litefs(i);
    }

    /// kill -9 of every process left of node `i`'s litefs-proxy runs (lease keepers).
    fn kill_groups(&mut self, i: usize) {
        for g in self.nodes[i].groups.drain(..) {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{g}")])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Sends `signal` (e.g. `TERM`) to node `i`'s process, without waiting.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(c) = &self.nodes[i].child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), c.id().to_string()])
                .status();
        }
    }

    /// The exit status of node `i`'s process once it has exited (it stays recorded as
    /// running until [`Cluster::kill`] or [`Cluster::spawn`]).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM, then wait for the process to exit (at most `within`); returns its exit code.
    pub fn terminate(&mut self, i: usize, within: Duration) -> Option<i32> {
        self.signal(i, "TERM");
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.exited(i) {
                self.nodes[i].child = None;
                return st.code();
            }
            if Instant::now() > end {
                self.kill(i);
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/litefs/status` of node `i`, if it answers.
    pub async fn status(&self, i: usize) -> Option<serde_json::Value> {
        let fut = client::get(self.nodes[i].proxy, "/litefs/status", &[]);
        let a = tokio::time::timeout(Duration::from_millis(500), fut)
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&a.body).ok()
    }

    /// The roles of all running nodes right now (`None` for stopped or silent ones).
    pub async fn roles(&self) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let role = if n.is_running() {
                self.status(i)
                    .await
                    .and_then(|s| s["role"].as_str().map(str::to_owned))
            } else {
                None
            };
            out.push(role);
        }
        out
    }

    /// Waits until exactly one running node is primary and every other running node among
    /// `among` names it; returns its index.
    pub async fn wait_leader(&self, among: &[usize], within: Duration) -> Option<usize> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let mut leader = None;
            let mut agreed = true;
            let mut primaries = 0;
            let mut names = Vec::new();
            for &i in among {
                match self.status(i).await {
                    Some(s) => {
                        if s["role"] == "primary" {
                            primaries += 1;
                            leader = Some(i);
                        }
                        names.push(s["primary"].as_str().map(str::to_owned));
                    }
                    None => agreed = false,
                }
            }
            if agreed && primaries == 1 {
                let l = leader?;
                if names
                    .iter()
                    .all(|n| n.as_deref() == Some(self.nodes[l].id.as_str()))
                {
                    return Some(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Say why, for the test that fails on it: each node's status and log tail.
        for &i in among {
            let log = self.log(i);
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "wait_leader: no agreed leader; {} status {:?}; log tail:\n{}",
                self.nodes[i].id,
                self.status(i).await,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        None
    }

    /// Cuts (or heals) every relay into and out of node `i`: Raft traffic both ways and,
    /// with [`Options::litefs`], the replication streams into its LiteFS; with
    /// [`Options::netns`], the network between node `i` and its peers.
    pub fn isolate(&self, i: usize, cut: bool) {
        if let Some(net) = &self.net {
            net.cut(i, cut);
        }
        if let Some(r) = self.nodes[i]
            .litefs
            .as_ref()
            .and_then(|l| l.api_relay.as_ref())
        {
            if cut {
                r.cut()
            } else {
                r.heal()
            }
        }
        for (a, row) in self.relays.iter().enumerate() {
            for (b, r) in row.iter().enumerate() {
                if let Some(r) = r {
                    if a == i || b == i {
                        if cut {
                            r.cut()
                        } else {
                            r.heal()
                        }
                    }
                }
            }
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
            self.kill_groups(i);
            self.kill_litefs(i);
        }
        if std::env::var_os("LITEFS_TEST_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "LITEFS_TEST_KEEP: cluster files kept in {}",
                    d.keep().display()
                );
            }
        }
    }
}
