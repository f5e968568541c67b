//! Django behind litefs-proxy behind nginx: per node a real `litefs-proxy run` process (raft
//! role, from [`crate::cluster`]), a real gunicorn serving `tests/django_app`, and a
//! `litefs_sim::Member` in this process standing in for LiteFS (the only writer of the
//! position, replication with a random lag, read-only replicas) that follows the Raft leader
//! its own proxy reports; in front of all, a real nginx round-robin upstream without
//! stickiness. The cookie jar and streamed uploads are in `web`, the commit watcher in
//! `watch`, the outside tools and the prerequisite check in `tools`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use litefs_sim::{Lag, LagControl, Member, NodeConfig};

use crate::{
    client,
    cluster::{free_port, Cluster, External, Options},
};

mod tools;
mod watch;
mod web;

pub use tools::{app_dir, available, prerequisites, under_ci};
use tools::{nginx_binary, Group};
pub use watch::Watcher;
pub use web::{multipart_file, sha256_file, ChannelBody, Jar};

/// The database every node serves, as LiteFS names it in the mount.
pub const DB: &str = "db.sqlite3";

/// How often each node's sim asks its proxy who the leader is (LiteFS's lease would follow
/// the Raft leader through the Consul-compatible endpoint; here the test process does it).
const FOLLOW_EVERY: Duration = Duration::from_millis(10);

/// One node's LiteFS stand-in and the task that makes it follow its proxy's leader.
struct SimNode {
    member: Arc<Member>,
    watcher: Arc<Watcher>,
    follower: tokio::task::JoinHandle<()>,
    /// The node's LiteFS HTTP API (`/info`, `/events`), which its proxy asks before acting
    /// as primary (`role.confirm_litefs`).
    api: tokio::task::JoinHandle<()>,
}

/// Three Django nodes behind litefs-proxy behind nginx.
pub struct DjangoCluster {
    /// The proxy processes (`procs.nodes[i].proxy`, `procs.status(i)`, `procs.kill(i)`).
    pub procs: Cluster,
    /// gunicorn's address per node.
    pub apps: Vec<SocketAddr>,
    /// The simulated LiteFS mount per node (`<mount>/db.sqlite3`).
    pub mounts: Vec<PathBuf>,
    /// nginx's listening address.
    pub nginx: SocketAddr,
    /// Where the streaming view looks for flag files.
    pub flag_dir: PathBuf,
    sims: Vec<Option<SimNode>>,
    gunicorns: Vec<Option<Group>>,
    nginx_proc: Option<Group>,
    dir: tempfile::TempDir,
}

impl DjangoCluster {
    /// Starts everything: sims (replication lag `lag`), proxies, election, migration on the
    /// elected primary, gunicorns, nginx. Panics with the logs if anything does not come up.
    pub async fn start(lag: Lag, proxy_extra: &str) -> DjangoCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 3;
        let ids: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let mounts: Vec<PathBuf> = ids
            .iter()
            .map(|id| dir.path().join("litefs").join(id))
            .collect();
        let apps: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let mut api_listeners = Vec::new();
        let mut api_addrs = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind LiteFS API");
            api_addrs.push(l.local_addr().expect("api addr"));
            api_listeners.push(l);
        }
        let peers: HashMap<String, String> = ids
            .iter()
            .cloned()
            .zip(api_addrs.iter().map(|a| format!("http://{a}")))
            .collect();
        let members: Vec<Arc<Member>> = (0..n)
            .map(|i| {
                Arc::new(Member::start(
                    NodeConfig {
                        mount: mounts[i].clone(),
                        db: DB.into(),
                        hostname: ids[i].clone(),
                        is_primary: false,
                        primary_hostname: None,
                    },
                    peers.clone(),
                    LagControl { lag, paused: false },
                    None,
                ))
            })
            .collect();
        let mut apis = Vec::new();
        for (m, l) in members.iter().zip(api_listeners) {
            apis.push(tokio::spawn(litefs_sim::serve_api(
                m.node().clone(),
                l,
                std::future::pending(),
            )));
        }
        let counted: Vec<PathBuf> = ids
            .iter()
            .map(|id| dir.path().join(format!("counted-{id}")))
            .collect();
        let procs = Cluster::start(Options {
            proxy_extra: proxy_extra.to_owned(),
            external: (0..n)
                .map(|i| External {
                    target: apps[i],
                    mount: mounts[i].clone(),
                    litefs_api: Some(api_addrs[i]),
                })
                .collect(),
            ..Options::default()
        })
        .await;
        let sims = members
            .into_iter()
            .zip(apis)
            .enumerate()
            .map(|(i, (member, api))| {
                let watcher = Arc::new(Watcher::spawn(member.node().clone(), counted[i].clone()));
                let follower = tokio::spawn(follow(
                    member.clone(),
                    watcher.clone(),
                    procs.nodes[i].proxy,
                    ids[i].clone(),
                ));
                Some(SimNode {
                    member,
                    watcher,
                    follower,
                    api,
                })
            })
            .collect();
        let flag_dir = dir.path().join("flags");
        std::fs::create_dir_all(&flag_dir).expect("flag dir");
        let mut c = DjangoCluster {
            procs,
            apps,
            mounts,
            nginx: free_port(),
            flag_dir,
            sims,
            gunicorns: (0..n).map(|_| None).collect(),
            nginx_proc: None,
            dir,
        };
        let l = c.wait_leader(Duration::from_secs(20)).await;
        // Schema: `migrate` once on the primary's database while its sim watches it, as on
        // LiteFS (the migration's commits advance the primary's TXID; replicas receive the
        // whole file through replication). No app runs yet, so nothing else touches the
        // replicas' files (Django's sqlite would create an empty database there).
        c.migrate(l);
        assert!(
            c.wait_replicated(Duration::from_secs(20)).await,
            "replicas did not receive the migrated database"
        );
        for i in 0..n {
            c.spawn_gunicorn(i);
        }
        for i in 0..n {
            c.wait_app(i).await;
        }
        c.spawn_nginx().await;
        c
    }

    pub fn id(&self, i: usize) -> &str {
        &self.procs.nodes[i].id
    }

    pub fn member(&self, i: usize) -> Option<&Member> {
        self.sims[i].as_ref().map(|s| s.member.as_ref())
    }

    pub fn watcher(&self, i: usize) -> Option<&Watcher> {
        self.sims[i].as_ref().map(|s| s.watcher.as_ref())
    }

    pub fn db_path(&self, i: usize) -> PathBuf {
        self.mounts[i].join(DB)
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.sims.len())
            .filter(|&i| self.sims[i].is_some())
            .collect()
    }

    /// Waits until one live node is primary for every live proxy and every live sim agrees
    /// (the leader's sim writable, the others replicating from it); returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let end = Instant::now() + within;
        let alive = self.alive();
        let l = self
            .procs
            .wait_leader(&alive, within)
            .await
            .unwrap_or_else(|| panic!("no leader among {alive:?}; {}", self.logs()));
        let id = self.id(l).to_owned();
        loop {
            let agreed = alive.iter().all(|&i| {
                let node = self.member(i).map(|m| m.node().clone());
                node.is_some_and(|n| {
                    if i == l {
                        n.is_primary()
                    } else {
                        !n.is_primary() && n.primary_hostname().as_deref() == Some(id.as_str())
                    }
                })
            });
            if agreed {
                return l;
            }
            assert!(
                Instant::now() < end,
                "sims did not follow leader {id}; {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The live node whose sim is primary, if exactly one is.
    pub fn sim_primary(&self) -> Option<usize> {
        let p: Vec<usize> = self
            .alive()
            .into_iter()
            .filter(|&i| self.member(i).is_some_and(|m| m.node().is_primary()))
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    /// Waits until every live replica's sim has the primary's TXID, counting every commit
    /// made so far first. `false` after `within`.
    pub async fn wait_replicated(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(p) = self.sim_primary() {
                let target = self.watcher(p).expect("primary watcher").sync();
                let done = self
                    .alive()
                    .into_iter()
                    .filter(|&i| i != p)
                    .all(|i| self.member(i).is_some_and(|r| r.node().txid() == target));
                if done {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn python(&self, i: usize) -> Command {
        let mut cmd = Command::new("python3");
        cmd.current_dir(app_dir())
            .env("DJANGO_SETTINGS_MODULE", "testsite.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("LITEFS_DB", self.db_path(i))
            .env(
                "LITEFS_SIM_COUNTED",
                self.dir.path().join(format!("counted-{}", self.id(i))),
            )
            .env("NODE_NAME", self.id(i))
            .env("STREAM_FLAG_DIR", &self.flag_dir)
            .env("UPLOAD_TEMP_DIR", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn migrate(&self, i: usize) {
        let out = self
            .python(i)
            .args(["manage.py", "migrate", "--noinput"])
            .output()
            .expect("run manage.py migrate");
        assert!(
            out.status.success(),
            "manage.py migrate on {} failed:\n{}{}",
            self.id(i),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn gunicorn_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("gunicorn-{}.log", i + 1))
    }

    fn spawn_gunicorn(&mut self, i: usize) {
        let log = std::fs::File::create(self.gunicorn_log(i)).expect("gunicorn log");
        let mut cmd = self.python(i);
        // The project's WSGI app behind the sim's commit gate (see litefs_sim_gate.py).
        cmd.args(["-m", "gunicorn", "litefs_sim_gate:application", "--bind"])
            .arg(self.apps[i].to_string())
            .args([
                "--worker-class",
                "gthread",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "120",
                "--graceful-timeout",
                "1",
                "--error-logfile",
                "-",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let g = Group::spawn(&mut cmd).expect("spawn gunicorn");
        self.gunicorns[i] = Some(g);
    }

    async fn wait_app(&mut self, i: usize) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = tokio::time::timeout(
                Duration::from_secs(2),
                client::get(self.apps[i], "/ping", &[]),
            )
            .await;
            if matches!(ok, Ok(Ok(ref a)) if a.status == 200) {
                return;
            }
            let running = self.gunicorns[i].as_mut().is_some_and(Group::running);
            assert!(
                running && Instant::now() < end,
                "gunicorn of {} did not come up; {}",
                self.id(i),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn spawn_nginx(&mut self) {
        let d = self.dir.path().join("nginx");
        std::fs::create_dir_all(d.join("logs")).expect("nginx dir");
        let servers: String = self
            .procs
            .nodes
            .iter()
            .map(|n| format!("        server {};\n", n.proxy))
            .collect();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # Round robin over the three proxies, no stickiness.
    upstream litefs {{
{servers}    }}
    server {{
        listen {addr};
        client_max_body_size 100m;
        location / {{
            proxy_pass http://litefs;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Stream uploads to the proxies instead of spooling them first.
            proxy_request_buffering off;
            # Only requests that were never sent (and idempotent ones) go to the next node.
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
        }}
    }}
}}
"#,
            d = d.display(),
            addr = self.nginx,
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let bin = nginx_binary().expect("nginx");
        let log = std::fs::File::create(d.join("logs/stderr.log")).expect("nginx log");
        let g = Group::spawn(
            Command::new(bin)
                .arg("-p")
                .arg(&d)
                .arg("-e")
                .arg(d.join("logs/error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("spawn nginx");
        self.nginx_proc = Some(g);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                client::get(self.nginx, "/ping", &[]),
            )
            .await;
            if matches!(r, Ok(Ok(ref a)) if a.status == 200) {
                return;
            }
            let running = self.nginx_proc.as_mut().is_some_and(Group::running);
            assert!(
                running && Instant::now() < end,
                "nginx did not come up; {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node dies: kill -9 of its litefs-proxy and of its gunicorn (master and workers),
    /// and its LiteFS stand-in stops. Its mount stays on disk.
    pub async fn kill_node(&mut self, i: usize) {
        self.procs.kill(i);
        if let Some(mut g) = self.gunicorns[i].take() {
            g.kill();
        }
        if let Some(sim) = self.sims[i].take() {
            sim.api.abort();
            sim.follower.abort();
            let _ = sim.follower.await;
            // A worker killed inside a COMMIT leaves a hot journal; LiteFS would never have
            // shipped that half transaction. Rolling it back (any read-write open does) gives
            // the files LiteFS would hold: every committed transaction, nothing else.
            if let Ok(conn) = rusqlite::Connection::open(self.db_path(i)) {
                let _ = conn.busy_timeout(Duration::from_secs(5));
                let _ = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                });
            }
            // LiteFS sees a commit inside it; count the last ones before the sim stops.
            sim.watcher.sync();
        }
    }

    /// `litefs_proxy_requests_total{class="write",outcome="forwarded"}` of node `i`.
    pub async fn forwarded_writes(&self, i: usize) -> u64 {
        let m = client::get(self.procs.nodes[i].proxy, "/litefs/metrics", &[])
            .await
            .expect("metrics")
            .text();
        m.lines()
            .filter(|l| {
                l.starts_with("litefs_proxy_requests_total{")
                    && l.contains("class=\"write\"")
                    && l.contains("outcome=\"forwarded\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// The exception lines (`...Error: ...`) in node `i`'s gunicorn log.
    pub fn app_errors(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.gunicorn_log(i))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Error: ") && !l.starts_with(char::is_whitespace))
            .map(str::to_owned)
            .collect()
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |s: String| -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let mut out = String::new();
        for i in 0..self.procs.nodes.len() {
            out += &format!(
                "\n--- proxy {} ---\n{}",
                self.id(i),
                tail(self.procs.log(i))
            );
            out += &format!(
                "\n--- gunicorn {} ---\n{}",
                self.id(i),
                tail(std::fs::read_to_string(self.gunicorn_log(i)).unwrap_or_default())
            );
        }
        let nginx = self.dir.path().join("nginx/logs/error.log");
        out += &format!(
            "\n--- nginx ---\n{}",
            tail(std::fs::read_to_string(nginx).unwrap_or_default())
        );
        out
    }
}

impl Drop for DjangoCluster {
    fn drop(&mut self) {
        if let Some(mut g) = self.nginx_proc.take() {
            g.kill();
        }
        for g in self.gunicorns.iter_mut().filter_map(Option::take) {
            let mut g = g;
            g.kill();
        }
        for s in self.sims.iter_mut().filter_map(Option::take) {
            s.follower.abort();
            s.api.abort();
        }
    }
}

/// Makes one node's sim follow the Raft leader its proxy reports (`election.leader` in
/// `/litefs/status`, not `role`: with `confirm_litefs` the proxy itself waits for the sim),
/// as LiteFS would through the lease endpoint: primary on the leader (after catching up from
/// the previous primary's files), replica of the leader elsewhere, disconnected while there
/// is none.
async fn follow(member: Arc<Member>, watcher: Arc<Watcher>, proxy: SocketAddr, me: String) {
    let mut applied: Option<Option<String>> = None;
    loop {
        let status = tokio::time::timeout(
            Duration::from_millis(500),
            client::get(proxy, "/litefs/status", &[]),
        )
        .await;
        if let Ok(Ok(a)) = status {
            if let Ok(s) = serde_json::from_slice::<serde_json::Value>(&a.body) {
                let leader = s["election"]["leader"].as_str().map(str::to_owned);
                if applied.as_ref() != Some(&leader) {
                    // A primary stepping down: its last commits count before it stops.
                    if leader.as_deref() != Some(me.as_str()) {
                        watcher.sync();
                    }
                    match member.set_leader(leader.as_deref()).await {
                        Ok(()) => applied = Some(leader),
                        Err(e) => eprintln!("sim {me}: cannot follow {leader:?}: {e:#}"),
                    }
                }
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
