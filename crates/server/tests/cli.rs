//! The real `litefs-proxy` binary: `check` output and layering, bad configs (exit 64
//! naming the key), `--litefs-config`, the example config, and `run` until SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(20);

/// The binary with a clean environment: no inherited `LITEFS_PROXY_*` or `RUST_LOG`.
fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_litefs-proxy"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LITEFS_PROXY_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = cmd()
        .arg("check")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running litefs-proxy");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = check(args, env);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    out.stdout
        .parse()
        .unwrap_or_else(|e| panic!("check output is not TOML: {e}\n{}", out.stdout))
}

fn get<'a>(t: &'a toml::Table, key: &str) -> &'a toml::Value {
    let (table, k) = key.split_once('.').unwrap();
    t.get(table)
        .and_then(|v| v.get(k))
        .unwrap_or_else(|| panic!("{key} missing from {t}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config error: exit 64 and one line `litefs-proxy: invalid config: <key> = ...`.
fn assert_invalid(out: &Out, key: &str) {
    assert_eq!(
        out.code, 64,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let line = out.stderr.trim_end();
    assert!(!line.contains('\n'), "one line expected: {line}");
    let prefix = format!("litefs-proxy: invalid config: {key} = ");
    assert!(
        line.starts_with(&prefix),
        "expected {prefix:?}…, got {line:?}"
    );
}

#[test]
fn check_prints_defaults_with_hostname_as_node_name() {
    let cfg = ok_config(&[], &[]);
    assert_eq!(get(&cfg, "proxy.addr").as_str(), Some(":8080"));
    assert_eq!(get(&cfg, "proxy.read_wait_timeout").as_str(), Some("2s"));
    assert_eq!(get(&cfg, "role.source").as_str(), Some("static"));
    assert_eq!(get(&cfg, "role.is_primary").as_bool(), Some(true));
    let node = get(&cfg, "proxy.node_name").as_str().unwrap();
    assert!(!node.is_empty(), "node_name defaults to the hostname");
}

#[test]
fn layers_defaults_litefs_yml_toml_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let yml = write(
        dir.path(),
        "litefs.yml",
        "proxy:\n  db: \"from-yml.db\"\n  max-lag: \"3s\"\n  target: \"localhost:7000\"\n",
    );
    let toml = write(
        dir.path(),
        "proxy.toml",
        r#"
[proxy]
addr = ":1111"
target = "127.0.0.1:1111"
db = "from-toml.db"
token_secret = "0123456789abcdef-secret"
"#,
    );
    let cfg = ok_config(
        &[
            "--litefs-config",
            yml.to_str().unwrap(),
            "--config",
            toml.to_str().unwrap(),
            "--addr",
            "127.0.0.1:3333",
        ],
        &[
            ("LITEFS_PROXY_PROXY__ADDR", ":2222"),
            ("LITEFS_PROXY_PROXY__TARGET", "127.0.0.1:2222"),
            (
                "LITEFS_PROXY_ROLE__PRIMARY_URL_TEMPLATE",
                "http://{hostname}.internal:8080",
            ),
            // Text settings stay text even when they look like numbers.
            ("LITEFS_PROXY_PROXY__COOKIE_NAME", "123"),
            ("LITEFS_PROXY_PROXY__MAX_WAITING_READS", "7"),
            // Hook-style variables without `__` are not config and must not break it.
            ("LITEFS_PROXY_ROLE", "primary"),
        ],
    );
    // flag > env > TOML
    assert_eq!(get(&cfg, "proxy.addr").as_str(), Some("127.0.0.1:3333"));
    // env > TOML > litefs.yml
    assert_eq!(get(&cfg, "proxy.target").as_str(), Some("127.0.0.1:2222"));
    // TOML > litefs.yml
    assert_eq!(get(&cfg, "proxy.db").as_str(), Some("from-toml.db"));
    // litefs.yml > defaults
    assert_eq!(get(&cfg, "proxy.max_lag").as_str(), Some("3s"));
    assert_eq!(
        get(&cfg, "role.primary_url_template").as_str(),
        Some("http://{hostname}.internal:8080")
    );
    assert_eq!(get(&cfg, "proxy.cookie_name").as_str(), Some("123"));
    assert_eq!(get(&cfg, "proxy.max_waiting_reads").as_integer(), Some(7));
    // Secrets are never printed.
    assert_eq!(get(&cfg, "proxy.token_secret").as_str(), Some("(redacted)"));
}

/// Every secret of the config (README's production checklist) is redacted by `check`.
#[test]
fn check_redacts_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "secrets.toml",
        "[proxy]\ntoken_secret = \"token-secret-0123456789\"\n\
         [election]\ncluster_secret = \"cluster-secret-0123456789\"\n\
         lease_token = \"lease-token-0123456789\"\n",
    );
    let out = check(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("0123456789"), "{}", out.stdout);
    let cfg: toml::Table = out.stdout.parse().unwrap();
    for key in [
        "proxy.token_secret",
        "election.cluster_secret",
        "election.lease_token",
    ] {
        assert_eq!(get(&cfg, key).as_str(), Some("(redacted)"), "{key}");
    }
}

#[test]
fn flags_reach_every_table() {
    let cfg = ok_config(
        &[
            "--target",
            "127.0.0.1:9000",
            "--db",
            "app.db",
            "--mount",
            "/mnt/litefs",
            "--node-name",
            "node-2",
            "--litefs-api",
            "http://127.0.0.1:20203",
            "--txid-source",
            "events",
            "--role-source",
            "static",
            "--is-primary=false",
            "--primary-url",
            "http://10.0.0.1:8080",
            "--primary-name",
            "node-1",
        ],
        &[],
    );
    assert_eq!(get(&cfg, "proxy.mount").as_str(), Some("/mnt/litefs"));
    assert_eq!(get(&cfg, "proxy.node_name").as_str(), Some("node-2"));
    assert_eq!(get(&cfg, "proxy.txid_source").as_str(), Some("events"));
    assert_eq!(get(&cfg, "role.is_primary").as_bool(), Some(false));
    assert_eq!(
        get(&cfg, "role.primary_url").as_str(),
        Some("http://10.0.0.1:8080")
    );
    assert_eq!(get(&cfg, "role.primary_name").as_str(), Some("node-1"));
}

/// `:99999` is named for what is wrong with it, through the binary.
#[test]
fn a_port_out_of_range_is_named() {
    let out = check(&["--addr", ":99999"], &[]);
    assert_invalid(&out, "proxy.addr");
    assert!(
        out.stderr.contains("\":99999\": port out of range"),
        "{}",
        out.stderr
    );
}

fn help(sub: &str) -> String {
    let out = cmd()
        .args([sub, "--help"])
        .output()
        .expect("running litefs-proxy");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `demo --help` says which node counts it accepts, and it refuses others (exit 64).
#[test]
fn demo_help_gives_the_node_counts() {
    let h = help("demo");
    assert!(h.contains("1 to 7"), "{h}");
    let out = cmd()
        .args(["demo", "--nodes", "9"])
        .output()
        .expect("running litefs-proxy");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 to 7"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run --help` says that most keys have no flag and how to set them.
#[test]
fn run_help_says_which_keys_are_file_or_environment_only() {
    let h = help("run");
    for needle in [
        "only in the config file or the environment",
        "LITEFS_PROXY_PROXY__SYNC_REPLICAS",
        "[election]",
        "litefs-proxy check",
    ] {
        assert!(h.contains(needle), "{needle:?} missing from:\n{h}");
    }
    let proxy = h
        .lines()
        .find(|l| l.starts_with("  [proxy] "))
        .unwrap_or_else(|| panic!("no [proxy] line in:\n{h}"));
    let keys: Vec<&str> = proxy["  [proxy] ".len()..].split(", ").collect();
    assert!(
        keys.contains(&"sync_replicas") && keys.contains(&"shutdown_grace"),
        "{proxy}"
    );
    assert!(
        !keys.contains(&"read_wait_timeout"),
        "it has a flag: {proxy}"
    );
}

#[test]
fn invalid_configs_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "[proxy]\nread_wait_timeout = \"soon\"\n",
            "proxy.read_wait_timeout",
        ),
        ("[proxy]\nadrr = \":8080\"\n", "proxy.adrr"),
        ("[proxyy]\naddr = \":8080\"\n", "proxyy"),
        ("[proxy]\ntarget = \"not a target\"\n", "proxy.target"),
        (
            "[proxy]\non_read_timeout = \"maybe\"\n",
            "proxy.on_read_timeout",
        ),
        (
            "[proxy]\nmax_waiting_reads = \"many\"\n",
            "proxy.max_waiting_reads",
        ),
        (
            "[proxy]\npassthrough = \"/static/*\"\n",
            "proxy.passthrough",
        ),
        ("[role]\nis_primary = false\n", "role.primary_url"),
        (
            "[role]\nis_primary = false\nprimary_url = \"10.0.0.1:8080\"\n",
            "role.primary_url",
        ),
        ("[role]\nsource = \"consul\"\n", "role.source"),
        ("[role]\nsource = \"raft\"\n", "role.source"),
        (
            "[role]\nsource = \"litefs\"\nprimary_url_template = \"http://node-1:8080\"\n",
            "role.primary_url_template",
        ),
        (
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n",
            "proxy.trusted_proxies",
        ),
        (
            "[proxy]\nadmin_allow = [\"10.0.0.0/99\"]\n",
            "proxy.admin_allow",
        ),
        ("[proxy\n", "--config"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad-{i}.toml"), text);
        let out = check(&["--config", path.to_str().unwrap()], &[]);
        assert_invalid(&out, key);
    }

    // An unknown key inside a peer table is named too, not accepted silently.
    let path = write(
        dir.path(),
        "peer.toml",
        "[role]\nsource = \"raft\"\n[election]\nnode_id = \"a\"\nraft_addr = \"127.0.0.1:4321\"\n[[election.peers]]\nid = \"a\"\nraft = \"a:4321\"\nbogus = 1\n",
    );
    let out = check(&["--config", path.to_str().unwrap()], &[]);
    assert_invalid(&out, "election");
    assert!(
        out.stderr.contains("unknown field `bogus`"),
        "{}",
        out.stderr
    );

    // The value and why are in the line.
    let path = write(
        dir.path(),
        "dur.toml",
        "[proxy]\nread_wait_timeout = \"soon\"\n",
    );
    let out = check(&["--config", path.to_str().unwrap()], &[]);
    assert!(out.stderr.contains("\"soon\""), "{}", out.stderr);
    assert!(out.stderr.contains("duration"), "{}", out.stderr);
    let out = check(&["--role-source", "raft"], &[]);
    assert!(out.stderr.contains("[election]"), "{}", out.stderr);

    // Env and flag errors name the key and where the value came from.
    let out = check(&[], &[("LITEFS_PROXY_PROXY__IDLE_TIMEOUT", "forever")]);
    assert_invalid(&out, "proxy.idle_timeout");
    assert!(
        out.stderr.contains("LITEFS_PROXY_PROXY__IDLE_TIMEOUT"),
        "{}",
        out.stderr
    );
    let out = check(&[], &[("LITEFS_PROXY_PROXY__TYPO", "1")]);
    assert_invalid(&out, "proxy.typo");
    let out = check(&["--addr", "8080"], &[]);
    assert_invalid(&out, "proxy.addr");
    let out = check(&["--role-source", "litefs", "--litefs-api", ""], &[]);
    assert_invalid(&out, "proxy.litefs_api");
    let out = check(&["--txid-source", "inotify"], &[]);
    assert_invalid(&out, "proxy.txid_source");
    assert!(out.stderr.contains("--txid-source"), "{}", out.stderr);

    // A lease TTL LiteFS cannot renew in time, or one that only slows failover, from the file,
    // env or a flag: `check` and `run` refuse it naming election.lease_ttl.
    let raft = "[role]\nsource = \"raft\"\n[election]\nnode_id = \"node-1\"\npeers = [\"node-1:4321\"]\nraft_addr = \"127.0.0.1:0\"\n";
    for ttl in ["500ms", "2m"] {
        let path = write(
            dir.path(),
            &format!("ttl-{ttl}.toml"),
            &format!("{raft}lease_ttl = \"{ttl}\"\n"),
        );
        let path = path.to_str().unwrap();
        let out = check(&["--config", path], &[]);
        assert_invalid(&out, "election.lease_ttl");
        assert!(out.stderr.contains(ttl), "{}", out.stderr);
        let run = cmd().args(["run", "--config", path]).output().unwrap();
        assert_eq!(run.status.code(), Some(64), "run {ttl}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("election.lease_ttl"), "run: {stderr}");
    }
    let path = write(dir.path(), "raft.toml", raft);
    let path = path.to_str().unwrap();
    assert_eq!(check(&["--config", path], &[]).code, 0);
    let out = check(
        &["--config", path],
        &[("LITEFS_PROXY_ELECTION__LEASE_TTL", "900ms")],
    );
    assert_invalid(&out, "election.lease_ttl");
    let out = check(&["--config", path, "--lease-ttl", "61s"], &[]);
    assert_invalid(&out, "election.lease_ttl");
    let yml = cmd()
        .args(["litefs-config", "--config", path, "--lease-ttl", "0.5s"])
        .output()
        .unwrap();
    assert_eq!(yml.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&yml.stderr).contains("election.lease_ttl"));

    // A short secret is refused without being echoed.
    let out = check(&[], &[("LITEFS_PROXY_PROXY__TOKEN_SECRET", "hunter2")]);
    assert_invalid(&out, "proxy.token_secret");
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);

    // A missing file and an unknown flag are usage errors too.
    assert_invalid(
        &check(&["--config", "/nonexistent/x.toml"], &[]),
        "--config",
    );
    assert_eq!(check(&["--no-such-flag"], &[]).code, 64);
}

#[test]
fn reads_a_litefs_yml_with_litefs_key_names() {
    let dir = tempfile::tempdir().unwrap();
    // LiteFS's own format (cmd/litefs/config.go), with its env expansion.
    let yml = write(
        dir.path(),
        "litefs.yml",
        r#"
fuse:
  dir: "/var/lib/litefs"
data:
  dir: "/var/lib/litefs-data"
exit-on-error: false
http:
  addr: ":20202"
lease:
  type: "static"
  advertise-url: "http://${PRIMARY_HOST}:20202"
  candidate: true
proxy:
  addr: ":8081"
  target: "localhost:${APP_PORT}"
  db: "my.db"
  passthrough: ["/static/*", "*.css"]
  always-forward: ["/admin/*"]
  primary-redirect-timeout: "1m30s"
  max-lag: "1.5s"
  read-header-timeout: "3s"
  idle-timeout: "2m"
  debug: true
  read-timeout: "10s"
  write-timeout: "10s"
exec:
  - cmd: "gunicorn app.wsgi"
"#,
    );
    let cfg = ok_config(
        &["--litefs-config", yml.to_str().unwrap()],
        &[("APP_PORT", "8000"), ("PRIMARY_HOST", "node-1")],
    );
    let s = |k| get(&cfg, k).as_str().unwrap().to_owned();
    assert_eq!(s("proxy.addr"), ":8081");
    assert_eq!(s("proxy.target"), "localhost:8000");
    assert_eq!(s("proxy.db"), "my.db");
    assert_eq!(s("proxy.mount"), "/var/lib/litefs");
    assert_eq!(s("proxy.litefs_api"), "http://127.0.0.1:20202");
    assert_eq!(s("proxy.primary_redirect_timeout"), "1m 30s");
    assert_eq!(s("proxy.max_lag"), "1s 500ms");
    assert_eq!(s("proxy.header_read_timeout"), "3s");
    assert_eq!(s("proxy.idle_timeout"), "2m");
    let list = |k| {
        get(&cfg, k)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("proxy.passthrough"), ["/static/*", "*.css"]);
    assert_eq!(list("proxy.always_forward"), ["/admin/*"]);

    // A bad LiteFS value names the LiteFS key.
    let bad = write(dir.path(), "bad.yml", "proxy:\n  max-lag: \"soon\"\n");
    let out = check(&["--litefs-config", bad.to_str().unwrap()], &[]);
    assert_invalid(&out, "proxy.max-lag");
}

#[test]
fn example_config_is_the_defaults_and_lists_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/litefs-proxy.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let from_example = ok_config(&["--config", example.to_str().unwrap()], &[]);
    let defaults = ok_config(&[], &[]);
    assert_eq!(
        from_example, defaults,
        "the example's values must be the defaults"
    );
    // Every key, including the optional ones that are commented out.
    for table in ["proxy", "role"] {
        for key in defaults[table].as_table().unwrap().keys() {
            // sync_replicas is left unset so its default follows the role source.
            let commented = key == "sync_replicas" && text.contains("\n# sync_replicas = ");
            assert!(
                text.contains(&format!("\n{key} = ")) || commented,
                "{table}.{key} missing"
            );
        }
    }
    for key in ["token_secret", "primary_url", "primary_name"] {
        assert!(text.contains(&format!("\n# {key} = ")), "{key} missing");
    }
    for key in [
        "node_id",
        "raft_addr",
        "advertise_raft",
        "data_dir",
        "primary_file",
        "heartbeat_interval",
        "election_timeout_min",
        "election_timeout_max",
        "cluster_secret",
        "on_promote",
        "on_demote",
        "lease_addr",
        "lease_ttl",
        "lease_lock_delay",
        "peers",
    ] {
        assert!(
            text.contains(&format!("\n# {key} = ")),
            "election.{key} missing"
        );
    }
}

/// A running `litefs-proxy run`, killed if the test fails.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = cmd()
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first stderr line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        self.lines_until(needle).pop().unwrap_or_default()
    }

    /// Every stderr line up to and including the first one containing `needle`.
    fn lines_until(&self, needle: &str) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(e) => panic!("no stderr line with {needle:?}: {e}; got {seen:#?}"),
            }
        }
    }

    fn sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    fn wait_exit(&mut self) -> i32 {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "litefs-proxy did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_serves_until_sigterm_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Running::start(&[
        "--addr",
        "127.0.0.1:0",
        "--mount",
        dir.path().to_str().unwrap(),
        "--node-name",
        "node-2",
        "--is-primary=false",
        "--primary-url",
        "http://127.0.0.1:9",
        "--primary-name",
        "node-1",
    ]);
    let line = proxy.wait_line("litefs-proxy listening");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .to_owned();
    let health = http_get(&addr, "/litefs/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let status = http_get(&addr, "/litefs/status");
    assert!(status.contains(r#""role":"replica""#), "{status}");
    assert!(status.contains(r#""primary":"node-1""#), "{status}");
    assert!(status.contains(r#""node":"node-2""#), "{status}");

    proxy.sigterm();
    assert_eq!(proxy.wait_exit(), 0);
}

#[test]
fn bind_failure_exits_1_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cmd().args(["run", "--addr", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// A single-node Raft config listening on `bind` (`127.0.0.1` or `0.0.0.0`) with `extra`
/// lines in `[election]`.
fn raft_node(dir: &Path, bind: &str, extra: &str) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write(
        dir,
        "node.toml",
        &format!(
            r#"[proxy]
addr = "127.0.0.1:0"
mount = "{mount}"

[role]
source = "raft"

[election]
node_id = "node-1"
raft_addr = "{bind}:{port}"
data_dir = "{data}"
peers = [{{ id = "node-1", raft = "127.0.0.1:{port}", proxy = "http://127.0.0.1:9" }}]
{extra}
"#,
            mount = dir.display(),
            data = dir.join("data").display(),
        ),
    )
}

/// Runs `config` until this node is primary, then stops it with SIGTERM: its stderr up to
/// the role change, and from there to the end of the drain.
fn log_until_primary(config: &Path) -> (Vec<String>, Vec<String>) {
    let mut proxy = Running::start(&["--config", config.to_str().unwrap()]);
    let up = proxy.lines_until("primary=local");
    proxy.sigterm();
    let down = proxy.lines_until("drained; bye");
    assert_eq!(proxy.wait_exit(), 0);
    (up, down)
}

/// By default the log says when this node became primary, without openraft's own `info`
/// lines (a state dump per vote and state change), and how a SIGTERM hands over.
#[test]
fn default_log_shows_role_changes_without_openraft_chatter() {
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = log_until_primary(&raft_node(dir.path(), "127.0.0.1", ""));
    let chatter: Vec<&String> = up.iter().filter(|l| l.contains("openraft")).collect();
    assert!(chatter.is_empty(), "openraft info lines: {chatter:#?}");
    // A lone voter has nobody to hand over to: it says so once and waits for no successor.
    let handover: Vec<&String> = down.iter().filter(|l| l.contains("handover")).collect();
    assert_eq!(handover.len(), 1, "{down:#?}");
    assert!(handover[0].contains("no other voter"), "{down:#?}");
}

/// A Raft port reachable from other hosts without `cluster_secret` is warned about; a
/// loopback one or a signed one is not.
#[test]
fn an_unauthenticated_raft_port_off_loopback_is_refused_unless_allowed() {
    const WARNING: &str = "election.cluster_secret is not set";
    let dir = tempfile::tempdir().unwrap();
    let refused = raft_node(dir.path(), "0.0.0.0", "");
    assert_invalid(
        &check(&["--config", refused.to_str().unwrap()], &[]),
        "election.cluster_secret",
    );
    let warned = |bind: &str, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let (up, _) = log_until_primary(&raft_node(dir.path(), bind, extra));
        up.iter().any(|l| l.contains(WARNING) && l.contains("WARN"))
    };
    // Waived explicitly: it runs, and says what that exposes.
    assert!(warned("0.0.0.0", "allow_insecure_raft = true"));
    assert!(!warned(
        "0.0.0.0",
        r#"cluster_secret = "a-long-random-string-shared-by-the-nodes""#
    ));
    assert!(!warned("127.0.0.1", ""));
}

/// Config of node `me` of a three-node cluster whose Raft ports are `ports` (node-1..3).
fn cluster_node(dir: &Path, me: usize, ports: &[u16; 3]) -> PathBuf {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                r#"{{ id = "node-{n}", raft = "127.0.0.1:{p}", proxy = "http://127.0.0.1:9" }}"#,
                n = i + 1
            )
        })
        .collect();
    let home = dir.join(format!("node-{me}"));
    std::fs::create_dir_all(&home).unwrap();
    write(
        &home,
        "node.toml",
        &format!(
            r#"[proxy]
addr = "127.0.0.1:0"
mount = "{mount}"
node_name = "node-{me}"

[role]
source = "raft"

[election]
node_id = "node-{me}"
raft_addr = "127.0.0.1:{port}"
data_dir = "{data}"
peers = [{peers}]
"#,
            mount = home.display(),
            data = home.join("data").display(),
            port = ports[me - 1],
            peers = peers.join(", "),
        ),
    )
}

/// While a peer is down a live node's default log says so once, not once per failed RPC
/// (openraft logs each failed replication attempt at WARN and ERROR; its per-RPC lines are out
/// of the default filter), and once more when the peer is back.
#[test]
fn a_down_peer_is_logged_once_when_it_goes_and_once_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    // node-3's port: a listener that takes each connection and closes it, counting them, so
    // the test knows how many RPCs to node-3 failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let ports = [free(1), free(2), dead.local_addr().unwrap().port()];
    let live: Vec<Running> = (1..=2)
        .map(|i| {
            let cfg = cluster_node(dir.path(), i, &ports);
            Running::start(&["--config", cfg.to_str().unwrap()])
        })
        .collect();

    const FAILED_RPCS: usize = 30;
    dead.set_nonblocking(true).unwrap();
    let end = Instant::now() + DEADLINE;
    let mut accepted = 0;
    while accepted < FAILED_RPCS {
        match dead.accept() {
            Ok((conn, _)) => {
                drop(conn);
                accepted += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "only {accepted} RPCs reached node-3");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }

    // node-3 comes up on its port and follows the leader.
    drop(dead);
    let cfg3 = cluster_node(dir.path(), 3, &ports);
    let mut node3 = Running::start(&["--config", cfg3.to_str().unwrap()]);
    node3.wait_line("primary=node-");

    // Both live nodes stop at once, then node-3 (so nobody sees it go down again).
    for p in &live {
        p.sigterm();
    }
    let logs: Vec<Vec<String>> = live
        .into_iter()
        .map(|mut p| {
            let lines = p.lines_until("drained; bye");
            assert_eq!(p.wait_exit(), 0);
            lines
        })
        .collect();
    node3.sigterm();
    assert_eq!(node3.wait_exit(), 0);

    let about = |lines: &[String], what: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(what) && l.contains("node-3"))
            .cloned()
            .collect()
    };
    // Per node, at most one line each way about node-3; the leader's (whose heartbeats failed
    // most) stands for dozens of failed RPCs.
    let mut most_failed = 0;
    for lines in &logs {
        let down = about(lines, "peer unreachable");
        let back = about(lines, "peer reachable again");
        assert!(down.len() <= 1 && back.len() <= 1, "{lines:#?}");
        assert!(down.iter().all(|l| l.contains("WARN")), "{down:#?}");
        for l in &back {
            let failed: usize = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("failed_rpcs="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no failed_rpcs= in {l}"));
            most_failed = most_failed.max(failed);
        }
    }
    assert!(
        most_failed >= FAILED_RPCS * 2 / 3,
        "the leader's failed RPCs behind its one line: {most_failed}; {logs:#?}"
    );
    // None of openraft's own lines about those RPCs (each names node-3's address).
    let addr3 = format!("127.0.0.1:{}", ports[2]);
    for lines in &logs {
        let chatter: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("openraft") && (l.contains(&addr3) || l.contains("RPCError")))
            .collect();
        assert!(chatter.is_empty(), "openraft per-RPC lines: {chatter:#?}");
    }
}

/// `proxy.sync_replicas`: unset, 1 with the Raft role source and 3 voters, 0 otherwise;
/// set where no replica can report (static role) or above the other peers: exit 64.
#[test]
fn sync_replicas_defaults_by_role_source_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let raft = "[role]\nsource = \"raft\"\n[election]\nnode_id = \"a\"\nraft_addr = \"127.0.0.1:4321\"\ndata_dir = \"/tmp/x\"\npeers = [\"a:4321\", \"b:4321\", \"c:4321\"]\n";
    let f = write(dir.path(), "raft.toml", raft);
    let cfg = ok_config(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(get(&cfg, "proxy.sync_replicas").as_integer(), Some(1));
    // Raft without a token secret works, and check says what that leaves open.
    let out = check(&["--config", f.to_str().unwrap()], &[]);
    assert!(
        out.stderr
            .contains("warning: proxy.token_secret is not set"),
        "{}",
        out.stderr
    );
    let signed = write(
        dir.path(),
        "signed.toml",
        &format!("[proxy]\ntoken_secret = \"a-token-secret-16+\"\n{raft}"),
    );
    let out = check(&["--config", signed.to_str().unwrap()], &[]);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let cfg = ok_config(&[], &[]);
    assert_eq!(get(&cfg, "proxy.sync_replicas").as_integer(), Some(0));
    let f = write(dir.path(), "static.toml", "[proxy]\nsync_replicas = 1\n");
    assert_invalid(
        &check(&["--config", f.to_str().unwrap()], &[]),
        "proxy.sync_replicas",
    );
    let f = write(
        dir.path(),
        "toomany.toml",
        &format!("[proxy]\nsync_replicas = 3\n{raft}"),
    );
    assert_invalid(
        &check(&["--config", f.to_str().unwrap()], &[]),
        "proxy.sync_replicas",
    );
    // Non-voters do not count: 2 voters and 3 read replicas default to 0 and refuse 2.
    let mixed = raft.replace(
        r#"peers = ["a:4321", "b:4321", "c:4321"]"#,
        r#"peers = ["a:4321", "b:4321", { id = "c", raft = "c:4321", voter = false }, { id = "d", raft = "d:4321", voter = false }, { id = "e", raft = "e:4321", voter = false }]"#,
    );
    let f = write(dir.path(), "mixed.toml", &mixed);
    let cfg = ok_config(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(get(&cfg, "proxy.sync_replicas").as_integer(), Some(0));
    let f = write(
        dir.path(),
        "mixed-sync.toml",
        &format!("[proxy]\nsync_replicas = 2\n{mixed}"),
    );
    assert_invalid(
        &check(&["--config", f.to_str().unwrap()], &[]),
        "proxy.sync_replicas",
    );
}
