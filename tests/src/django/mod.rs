//! Django behind litefs-proxy behind nginx: per node a real `litefs-proxy run` process (raft
//! role, from [`crate::cluster`]), the sim's LiteFS as a process of its own (`litefs-proxy
//! sim-litefs --watch-commits`: LiteFS's consul lease loop against the node's lease
//! endpoint, replication over a stream from the primary with the node's lag, read-only
//! replicas, the position advanced by a commit watcher on Django's database in its mount)
//! and a real gunicorn serving `tests/django_app` on that database, the proxy's target; in
//! front of all, a real nginx round-robin upstream without stickiness. The cookie jar and
//! streamed uploads are in `web`, a browser's session in the Django admin in `admin`, the
//! outside tools and the prerequisite check in `tools`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    client,
    cluster::{free_port, Cluster, LiteFsOptions, Options, TOLERANT_ELECTION},
};

pub mod admin;
mod tools;
mod web;

pub use tools::{app_dir, available, prerequisites, under_ci};
use tools::{nginx_binary, Group};
pub use web::{multipart_file, sha256_file, ChannelBody, Jar};

/// The database every node serves, as LiteFS names it in the mount.
pub const DB: &str = "db.sqlite3";

/// How the Django project is set up on every node (environment of `migrate` and gunicorn).
#[derive(Clone, Copy, Debug, Default)]
pub struct DjangoOptions {
    /// `contrib/django`'s `ReplayOnPrimaryMiddleware` in MIDDLEWARE, before
    /// SessionMiddleware, loaded from the source folder (`LITEFS_PROXY_DJANGO_HELPER=1`).
    pub helper: bool,
    /// The three settings that write on GET (`LITEFS_TEST_GET_WRITES=1`): `MESSAGE_STORAGE`
    /// the session storage, `SESSION_SAVE_EVERY_REQUEST` and `CSRF_USE_SESSIONS`.
    pub get_writes: bool,
}

/// Three Django nodes behind litefs-proxy behind nginx.
pub struct DjangoCluster {
    /// The proxy and LiteFS processes (`procs.nodes[i].proxy`, `procs.status(i)`,
    /// `procs.litefs_info(i)`).
    pub procs: Cluster,
    /// gunicorn's address per node.
    pub apps: Vec<SocketAddr>,
    /// Each node's LiteFS mount (`<mount>/db.sqlite3`, `<mount>/db.sqlite3-pos`).
    pub mounts: Vec<PathBuf>,
    /// nginx's listening address.
    pub nginx: SocketAddr,
    /// Where the streaming view looks for flag files.
    pub flag_dir: PathBuf,
    gunicorns: Vec<Option<Group>>,
    nginx_proc: Option<Group>,
    options: DjangoOptions,
    dir: tempfile::TempDir,
}

impl DjangoCluster {
    /// Starts everything: proxies and LiteFS (node i's LiteFS adds `lags_ms[i]` to every
    /// transaction it receives as a replica), election, migration on the elected primary,
    /// gunicorns, nginx. LiteFS's lease settings are `litefs-config`'s. Panics with the logs
    /// if anything does not come up. The project runs with Django's defaults.
    pub async fn start(lags_ms: [u64; 3], proxy_extra: &str) -> DjangoCluster {
        Self::start_with(lags_ms, proxy_extra, DjangoOptions::default()).await
    }

    /// [`DjangoCluster::start`] with the project set up as `options` say.
    pub async fn start_with(
        lags_ms: [u64; 3],
        proxy_extra: &str,
        options: DjangoOptions,
    ) -> DjangoCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = lags_ms.len();
        let apps: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let procs = Cluster::start(Options {
            proxy_extra: proxy_extra.to_owned(),
            litefs: Some(LiteFsOptions::with_lag(0)),
            app_targets: apps.clone(),
            lag_ms_per_node: lags_ms.to_vec(),
            election_extra: TOLERANT_ELECTION.into(),
            ..Options::default()
        })
        .await;
        let mounts = procs
            .nodes
            .iter()
            .map(|n| n.litefs.as_ref().expect("LiteFS node").mount.clone())
            .collect();
        let flag_dir = dir.path().join("flags");
        std::fs::create_dir_all(&flag_dir).expect("flag dir");
        let mut c = DjangoCluster {
            procs,
            apps,
            mounts,
            nginx: free_port(),
            flag_dir,
            gunicorns: (0..n).map(|_| None).collect(),
            nginx_proc: None,
            options,
            dir,
        };
        // Schema: `migrate` on the primary's database while its LiteFS watches it (the
        // migration's commits advance the primary's TXID; replicas receive the whole file
        // through replication). No app runs yet, so nothing else touches the replicas'
        // files (Django's sqlite would create an empty database there). Should the primary
        // change before the migration reached a replica, the new primary's (unmigrated)
        // database is everyone's, as on LiteFS: migrate again there (it is idempotent).
        let mut migrated = false;
        for _ in 0..3 {
            let l = c.wait_leader(Duration::from_secs(30)).await;
            c.migrate(l);
            if c.wait_replicated(Duration::from_secs(20)).await
                && c.alive().into_iter().all(|i| c.migrated(i))
            {
                migrated = true;
                break;
            }
        }
        assert!(
            migrated,
            "replicas did not receive the migrated database; {}",
            c.logs()
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

    pub fn db_path(&self, i: usize) -> PathBuf {
        self.mounts[i].join(DB)
    }

    fn pos_path(&self, i: usize) -> PathBuf {
        litefs_sim::pos_path(&self.mounts[i], DB)
    }

    /// Node `i`'s LiteFS position (TXID, checksum), from its `<db>-pos`.
    pub fn pos(&self, i: usize) -> Option<(u64, u64)> {
        std::fs::read_to_string(self.pos_path(i))
            .ok()
            .and_then(|t| litefs_sim::parse_pos(&t))
    }

    /// The nodes whose proxy and LiteFS run (not killed by [`DjangoCluster::kill_node`]).
    pub fn alive(&self) -> Vec<usize> {
        (0..self.procs.nodes.len())
            .filter(|&i| self.procs.nodes[i].is_running())
            .collect()
    }

    /// Waits until one live node is primary for every live proxy, its LiteFS alone holds the
    /// lease and every other live LiteFS streams from it; returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let alive = self.alive();
        match self.procs.wait_litefs_settled_among(&alive, within).await {
            Some(l) => l,
            None => panic!(
                "LiteFS did not settle on a leader among {alive:?}: LiteFS primaries {:?}; {}",
                self.procs.litefs_primaries().await,
                self.logs()
            ),
        }
    }

    /// The live node whose LiteFS is primary, if exactly one is.
    pub async fn litefs_primary(&self) -> Option<usize> {
        let alive = self.alive();
        let p: Vec<usize> = self
            .procs
            .litefs_primaries()
            .await
            .into_iter()
            .filter(|i| alive.contains(i))
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    /// Waits until every live replica's LiteFS has the primary's position and the primary's
    /// LiteFS has counted Django's last commit: its position's checksum is that of the
    /// database as it is now or, should the watcher have hashed a commit while its pages
    /// were still being written, nothing has changed for 200 ms (200 polls of the watcher).
    /// `false` after `within`.
    pub async fn wait_replicated(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        // Every live position and the primary's change counter, as last seen.
        type Seen = (Vec<Option<(u64, u64)>>, Option<u32>);
        let mut last: Option<Seen> = None;
        let mut quiet_since = Instant::now();
        while Instant::now() < end {
            if let Some(p) = self.litefs_primary().await {
                let alive = self.alive();
                let positions: Vec<_> = alive.iter().map(|&i| self.pos(i)).collect();
                let counter = change_counter(&self.db_path(p));
                let now = (positions.clone(), counter);
                if last.as_ref() != Some(&now) {
                    last = Some(now);
                    quiet_since = Instant::now();
                }
                let primary = self.pos(p);
                let equal = primary.is_some() && positions.iter().all(|q| *q == primary);
                let counted = primary.is_some_and(|(_, checksum)| {
                    let db = self.db_path(p);
                    let wal = self.mounts[p].join(format!("{DB}-wal"));
                    litefs_sim::content_checksum(&[&db, &wal]) == checksum
                });
                if equal && (counted || quiet_since.elapsed() >= Duration::from_millis(200)) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Whether node `i`'s database has Django's schema (the items app's migration applied).
    fn migrated(&self, i: usize) -> bool {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            self.db_path(i),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return false;
        };
        conn.query_row(
            "SELECT count(*) FROM django_migrations WHERE app = 'items'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n > 0)
    }

    /// How often node `i`'s LiteFS saw something other than replication write its
    /// database while it was a replica (its log's "something wrote to a replica's
    /// database").
    pub fn foreign_writes(&self, i: usize) -> usize {
        self.procs
            .litefs_log(i)
            .matches("something wrote to a replica's database")
            .count()
    }

    fn python(&self, i: usize) -> Command {
        let mut cmd = Command::new("python3");
        cmd.current_dir(app_dir())
            .env("DJANGO_SETTINGS_MODULE", "testsite.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("LITEFS_DB", self.db_path(i))
            .env(
                "LITEFS_COUNTED",
                litefs_sim::counted_path(&self.mounts[i], DB),
            )
            .env("NODE_NAME", self.id(i))
            .env("STREAM_FLAG_DIR", &self.flag_dir)
            .env("UPLOAD_TEMP_DIR", self.dir.path())
            .stdin(Stdio::null());
        if self.options.helper {
            let contrib = app_dir().join("../../contrib/django");
            cmd.env("LITEFS_PROXY_DJANGO_HELPER", "1")
                .env("PYTHONPATH", contrib);
        }
        if self.options.get_writes {
            cmd.env("LITEFS_TEST_GET_WRITES", "1");
        }
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
        // The project's WSGI app behind the commit gate (see litefs_sim_gate.py).
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
            # The client's Host with its port, which Django's CSRF check compares with a
            # POST's Origin (`$host` drops the port).
            proxy_set_header Host $http_host;
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

    /// The node dies: kill -9 of its litefs-proxy, of its LiteFS and of its gunicorn
    /// (master and workers). Its mount stays on disk; nothing reads it any more.
    pub fn kill_node(&mut self, i: usize) {
        self.procs.kill(i);
        self.procs.kill_litefs(i);
        if let Some(mut g) = self.gunicorns[i].take() {
            g.kill();
        }
    }

    /// `litefs_proxy_requests_total{class="write",outcome="forwarded"}` of node `i`.
    pub async fn forwarded_writes(&self, i: usize) -> u64 {
        self.counter(
            i,
            "litefs_proxy_requests_total{",
            &["class=\"write\"", "outcome=\"forwarded\""],
        )
        .await
    }

    /// `litefs_proxy_replays_total{outcome="replayed"}` of node `i`: reads its proxy sent on
    /// to the primary because the app answered `litefs-replay: primary`.
    pub async fn replayed_reads(&self, i: usize) -> u64 {
        self.counter(i, "litefs_proxy_replays_total{", &["outcome=\"replayed\""])
            .await
    }

    /// The sum of node `i`'s metric lines that start with `prefix` and carry every label.
    async fn counter(&self, i: usize, prefix: &str, labels: &[&str]) -> u64 {
        let m = client::get(self.procs.nodes[i].proxy, "/litefs/metrics", &[])
            .await
            .expect("metrics")
            .text();
        m.lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|k| l.contains(k)))
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
                "\n--- LiteFS {} ---\n{}",
                self.id(i),
                tail(self.procs.litefs_log(i))
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
    }
}

/// The database header's file change counter (offset 24), which moves on every commit in
/// rollback-journal mode (Django's default).
fn change_counter(db: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(db).ok()?;
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 24).ok()?;
    Some(u32::from_be_bytes(b))
}
