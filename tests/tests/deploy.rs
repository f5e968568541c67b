//! The deploy recipes in `deploy/` checked as far as this machine allows (no container
//! engine, no cluster, no FUSE): nginx's own `nginx -t`, YAML parsing of the Compose file and
//! the Kubernetes manifests with the ports, probes and privileges they must carry, the real
//! `litefs-proxy check` on every litefs-proxy config, `systemd-analyze verify` on the units,
//! and the container entrypoint's start and stop order run for real against stub binaries.
//! Tools that are absent (docker compose, kubectl, systemd-analyze, Django) skip their part
//! with a message on stderr; nginx is installed by `.ci/run`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use litefs_proxy_tests::cluster::binary;
use serde_yaml_ng::Value;

const SECRET: &str = "test-cluster-secret-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    let mut v: Value = serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    v.apply_merge().expect("YAML merge keys");
    v
}

/// Every document of a multi-document YAML file.
fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("parse {}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v:?}"))
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{key} is not a list in {v:?}"))
}

/// A list of scalars (strings or numbers) as strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("not a scalar: {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn duration(text: &str) -> Duration {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {text:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        _ => panic!("duration unit in {text:?}"),
    }
}

/// A tool on PATH (or at one of `extra` paths), or None.
fn tool(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn skip(what: &str, why: &str) {
    eprintln!("SKIPPED {what}: {why}");
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `litefs-proxy check` with a clean `LITEFS_PROXY_*` environment plus `env`.
fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("check").arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("LITEFS_PROXY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run litefs-proxy check")
}

// ---------------------------------------------------------------- nginx

/// `nginx -t` resolves upstream host names, and node-1..3 exist only inside the Compose
/// network. So the test checks a copy in which exactly the three `server node-N:8080` lines
/// point at 127.0.0.1 instead (nothing else changes); `-p` and `-e` keep nginx away from
/// /var/log and /etc.
#[test]
fn nginx_conf_passes_nginx_t() {
    let Some(nginx) = tool("nginx", &["/usr/sbin/nginx"]) else {
        return skip("nginx -t", "nginx not installed (.ci/run installs it)");
    };
    let text = read(&deploy("nginx.conf"));
    let mut replaced = 0;
    let copy: String = text
        .lines()
        .map(|line| {
            let t = line.trim_start();
            for n in 1..=3 {
                let from = format!("server node-{n}:8080");
                if t.starts_with(&from) {
                    replaced += 1;
                    return line.replace(&from, &format!("server 127.0.0.1:1808{n}")) + "\n";
                }
            }
            format!("{line}\n")
        })
        .collect();
    assert_eq!(replaced, 3, "expected three `server node-N:8080` lines");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nginx.conf");
    fs::write(&conf, copy).expect("write nginx.conf copy");
    let out = Command::new(nginx)
        .args(["-t", "-q", "-e", "stderr", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("run nginx -t");
    ok(&out, "nginx -t");
}

/// The directives of nginx.conf, comments removed.
fn nginx_directives() -> Vec<String> {
    read(&deploy("nginx.conf"))
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn nginx_round_robin_without_stickiness_and_no_write_retries() {
    let d = nginx_directives();
    for sticky in ["ip_hash", "hash ", "sticky", "least_conn", "random"] {
        assert!(
            !d.iter().any(|l| l.starts_with(sticky)),
            "nginx.conf must balance round robin, found `{sticky}`"
        );
    }
    assert!(
        !d.iter().any(|l| l.contains("$cookie")),
        "no cookie routing"
    );
    let servers: Vec<&String> = d
        .iter()
        .filter(|l| l.starts_with("server ") && l.ends_with(';'))
        .collect();
    assert_eq!(servers.len(), 3, "{servers:?}");
    for (i, line) in servers.iter().enumerate() {
        assert!(
            line.starts_with(&format!("server node-{}:8080", i + 1)),
            "{line}"
        );
    }
    // Only connect errors and timeouts move on to the next node, and never for POST & co.
    assert!(d.contains(&"proxy_next_upstream error timeout;".to_string()));
    assert!(!d.iter().any(|l| l.contains("non_idempotent")));
    assert!(!d
        .iter()
        .any(|l| l.starts_with("proxy_next_upstream ") && l.contains("http_")));
    // nginx must drop idle upstream connections before litefs-proxy does (10 s), or a POST can
    // meet a closing connection.
    let keepalive = d
        .iter()
        .find_map(|l| l.strip_prefix("keepalive_timeout "))
        .expect("upstream keepalive_timeout");
    assert!(duration(keepalive.trim_end_matches(';')) < Duration::from_secs(10));
    let read_timeout = d
        .iter()
        .find_map(|l| l.strip_prefix("proxy_read_timeout "))
        .expect("proxy_read_timeout");
    assert!(duration(read_timeout.trim_end_matches(';')) > Duration::from_secs(7));
}

/// The client's Host, port included, reaches Django: `$host` drops the port, and then
/// Django's absolute URLs and its CSRF origin check (a browser's `Origin:
/// http://localhost:8080`) see another origin than the browser's.
#[test]
fn nginx_keeps_the_clients_port_in_host() {
    let d = nginx_directives();
    assert!(
        d.contains(&"proxy_set_header Host $http_host;".to_string()),
        "{d:?}"
    );
    assert!(d.contains(&"proxy_set_header X-Forwarded-Host $http_host;".to_string()));
    assert!(
        !d.iter()
            .any(|l| l.starts_with("proxy_set_header") && l.ends_with(" $host;")),
        "no header set from $host (it has no port)"
    );
}

// ---------------------------------------------------------------- compose

fn compose() -> Value {
    yaml(&deploy("docker-compose.yml"))
}

#[test]
fn compose_has_three_fuse_nodes_and_nginx() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["node-1", "node-2", "node-3", "nginx"]),
        "services"
    );
    for n in 1..=3 {
        let name = format!("node-{n}");
        let node = &c["services"][name.as_str()];
        assert_eq!(s(node, "hostname"), name);
        assert!(
            strings(&node["devices"])
                .iter()
                .any(|d| d.starts_with("/dev/fuse")),
            "{name}: /dev/fuse"
        );
        assert!(
            strings(&node["cap_add"]).contains(&"SYS_ADMIN".to_string()),
            "{name}"
        );
        let exposed: BTreeSet<String> = strings(&node["expose"]).into_iter().collect();
        for port in ["8080", "4321", "20202"] {
            assert!(exposed.contains(port), "{name} exposes {port}: {exposed:?}");
        }
        assert!(node["ports"].is_null(), "{name}: only nginx is published");
        let volumes = strings(&node["volumes"]);
        assert!(
            volumes.contains(&format!("./config/{name}.toml:/etc/litefs-proxy.toml:ro")),
            "{name} mounts its config: {volumes:?}"
        );
        for dir in ["/var/lib/litefs", "/var/lib/litefs-proxy"] {
            assert!(
                volumes.iter().any(|v| v.ends_with(&format!(":{dir}"))),
                "{name}: {dir} is a volume"
            );
        }
        assert!(node["environment"]["LITEFS_PROXY_ELECTION__CLUSTER_SECRET"].is_string());
        assert_eq!(s(&node["build"], "dockerfile"), "deploy/Dockerfile");
        // The container's stop must outlast litefs-proxy's drain.
        let cfg: toml::Table = read(&deploy(&format!("config/{name}.toml")))
            .parse()
            .expect("node config");
        let grace = duration(cfg["proxy"]["shutdown_grace"].as_str().expect("grace"));
        assert!(duration(s(node, "stop_grace_period")) > grace + Duration::from_secs(10));
    }
    let nginx = &c["services"]["nginx"];
    assert!(strings(&nginx["ports"]).iter().any(|p| p.ends_with(":80")));
    assert!(strings(&nginx["volumes"]).contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro".into()));
}

/// `docker compose config` needs only the client, not an engine; skipped without it.
#[test]
fn compose_config_is_accepted_by_docker_compose() {
    let file = deploy("docker-compose.yml");
    let candidates: [(&str, &[&str]); 2] = [("docker", &["compose"]), ("docker-compose", &[])];
    for (prog, pre) in candidates {
        let Some(path) = tool(prog, &[]) else {
            continue;
        };
        let probe = Command::new(&path).args(pre).arg("version").output();
        if !probe.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let out = Command::new(&path)
            .args(pre)
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"])
            .env("CLUSTER_SECRET", SECRET)
            .output()
            .expect("run docker compose config");
        return ok(&out, "docker compose config");
    }
    skip("docker compose config", "no docker compose client");
}

#[test]
fn node_configs_pass_litefs_proxy_check() {
    for n in 1..=3 {
        let path = deploy(&format!("config/node-{n}.toml"));
        // The cluster secret comes from the environment, as docker-compose.yml sets it.
        let out = check(&path, &[("LITEFS_PROXY_ELECTION__CLUSTER_SECRET", SECRET)]);
        ok(
            &out,
            &format!("litefs-proxy check --config {}", path.display()),
        );
        let effective: toml::Table = String::from_utf8_lossy(&out.stdout)
            .parse()
            .expect("check prints TOML");
        assert_eq!(effective["role"]["source"].as_str(), Some("raft"));
        assert_eq!(
            effective["election"]["node_id"].as_str(),
            Some(format!("node-{n}").as_str())
        );
        assert_eq!(effective["proxy"]["addr"].as_str(), Some(":8080"));
        assert_eq!(effective["proxy"]["mount"].as_str(), Some("/litefs"));
        let peers = effective["election"]["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 3);
        // The lease endpoint is where litefs.yml's consul leaser looks for it.
        let lease = effective["election"]["lease_addr"]
            .as_str()
            .expect("lease_addr");
        assert_eq!(format!("http://{lease}"), litefs_consul_url());
    }
}

// ---------------------------------------------------------------- LiteFS config

use litefs_proxy_server::litefs_config::LITEFS_KEYS;

fn yaml_keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().expect("string key");
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                yaml_keys(&path, v, out);
            }
        }
        // List elements are written `key[]`, as in LITEFS_KEYS.
        Value::Sequence(items) => items
            .iter()
            .for_each(|i| yaml_keys(&format!("{prefix}[]"), i, out)),
        _ => {}
    }
}

fn litefs_consul_url() -> String {
    let cfg = yaml(&deploy("litefs.yml"));
    s(&cfg["lease"]["consul"], "url").to_string()
}

#[test]
fn litefs_yml_uses_the_local_lease_endpoint_and_no_litefs_proxy() {
    let cfg = yaml(&deploy("litefs.yml"));
    let mut keys = Vec::new();
    yaml_keys("", &cfg, &mut keys);
    for k in &keys {
        assert!(LITEFS_KEYS.contains(&k.as_str()), "LiteFS rejects key {k}");
    }
    assert!(
        cfg["proxy"].is_null(),
        "litefs-proxy replaces LiteFS's proxy"
    );
    assert_eq!(s(&cfg["fuse"], "dir"), "/litefs");
    assert_eq!(s(&cfg["http"], "addr"), ":20202");
    let lease = &cfg["lease"];
    assert_eq!(s(lease, "type"), "consul");
    assert_eq!(litefs_consul_url(), "http://127.0.0.1:8500");
    assert!(s(lease, "advertise-url").ends_with(":20202"));
    let exec = seq(&cfg, "exec");
    let app = s(exec.last().expect("exec"), "cmd");
    assert!(
        deploy(app.trim_start_matches("/usr/local/bin/")).is_file(),
        "{app}"
    );
}

// ---------------------------------------------------------------- Dockerfile and scripts

#[test]
fn dockerfile_builds_from_litefs_image_and_this_repo() {
    let text = read(&deploy("Dockerfile"));
    assert!(
        text.contains("COPY --from=flyio/litefs:0.5 /usr/local/bin/litefs /usr/local/bin/litefs")
    );
    assert!(text.contains("cargo build --release --locked -p litefs-proxy-server"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/entrypoint.sh\"]"));
    // Every file a COPY takes from the build context (the repository root) exists.
    for line in text.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    // The entrypoint and the app script are executable shell that parses.
    for (shell, script) in [("bash", "entrypoint.sh"), ("sh", "run-app.sh")] {
        let path = deploy(script);
        let out = Command::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
            .expect(shell);
        ok(&out, &format!("{shell} -n {script}"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert!(mode & 0o111 != 0, "{script} is executable");
        }
    }
}

/// The example app's `manage.py check` and no missing migration, when Django is installed.
#[test]
fn example_django_app_checks() {
    let django = Command::new("python3")
        .args(["-c", "import django"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !django {
        return skip("example app check", "Django not installed for python3");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["check"][..], &["makemigrations", "--check", "--dry-run"]] {
        let out = Command::new("python3")
            .arg("manage.py")
            .args(args)
            .current_dir(deploy("example"))
            .env("DATABASE_PATH", dir.path().join("db.sqlite3"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3");
        ok(&out, &format!("manage.py {args:?}"));
    }
}

/// Whether python3 can import Django; under CI (`.ci/run`) it must.
fn django_installed(what: &str) -> bool {
    let django = Command::new("python3")
        .args(["-c", "import django"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !django {
        assert!(
            !litefs_proxy_tests::django::under_ci(),
            "{what} needs Django for python3 (CI is set)"
        );
        skip(what, "Django not installed for python3");
    }
    django
}

/// The example's `CSRF_TRUSTED_ORIGINS` come from `DJANGO_CSRF_TRUSTED_ORIGINS`, and every
/// recipe that runs the example sets it.
#[test]
fn example_csrf_trusted_origins_come_from_the_environment() {
    let c = compose();
    for node in ["node-1", "node-2", "node-3"] {
        let env = &c["services"][node]["environment"];
        assert!(
            env["DJANGO_CSRF_TRUSTED_ORIGINS"].as_str().is_some(),
            "{node} sets DJANGO_CSRF_TRUSTED_ORIGINS: {env:?}"
        );
    }
    let sts = read(&deploy("k8s/statefulset.yaml"));
    assert!(sts.contains("DJANGO_CSRF_TRUSTED_ORIGINS"));
    if !django_installed("example CSRF_TRUSTED_ORIGINS") {
        return;
    }
    let print = "import django; from django.conf import settings; django.setup(); \
                 print(repr(settings.CSRF_TRUSTED_ORIGINS))";
    for (value, expected) in [
        (
            Some("https://notes.example.com, http://localhost:8080"),
            "['https://notes.example.com', 'http://localhost:8080']",
        ),
        (Some(""), "[]"),
        (None, "[]"),
    ] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", print])
            .current_dir(deploy("example"))
            .env("DJANGO_SETTINGS_MODULE", "mysite.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("DJANGO_CSRF_TRUSTED_ORIGINS");
        if let Some(v) = value {
            cmd.env("DJANGO_CSRF_TRUSTED_ORIGINS", v);
        }
        let out = cmd.output().expect("python3");
        ok(&out, "print CSRF_TRUSTED_ORIGINS");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected,
            "{value:?}"
        );
    }
}

/// `run-app.sh` with stub `python` and `gunicorn` that log their arguments: `migrate` runs
/// where `.primary` is absent (the primary) and never on a replica; gunicorn starts on both.
#[cfg(unix)]
#[test]
fn run_app_migrates_on_the_primary_only() {
    use std::os::unix::fs::PermissionsExt;
    for (role, primary_file) in [("primary", None), ("replica", Some("node-1\n"))] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, mount, app) = (
            dir.path().join("bin"),
            dir.path().join("litefs"),
            dir.path().join("app"),
        );
        for d in [&bin, &mount, &app] {
            fs::create_dir(d).expect("mkdir");
        }
        if let Some(content) = primary_file {
            fs::write(mount.join(".primary"), content).expect(".primary");
        }
        let log = dir.path().join("log");
        for name in ["python", "gunicorn"] {
            let path = bin.join(name);
            fs::write(
                &path,
                format!("#!/bin/sh\necho \"{name} $*\" >> \"$STUB_LOG\"\n"),
            )
            .expect("stub");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .arg(deploy("run-app.sh"))
            .env("PATH", path)
            .env("STUB_LOG", &log)
            .env("LITEFS_MOUNT", &mount)
            .env("APP_DIR", &app)
            .output()
            .expect("run-app.sh");
        ok(&out, &format!("run-app.sh as {role}"));
        let lines: Vec<String> = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let migrated = lines
            .iter()
            .any(|l| l == "python manage.py migrate --noinput");
        assert_eq!(migrated, role == "primary", "{role}: {lines:?}");
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("gunicorn --bind 127.0.0.1:8000 ")),
            "{role}: gunicorn last: {lines:?}"
        );
    }
}

/// Stub `litefs-proxy` and `litefs`: they log `<name>:ready`, `<name>:term`, `<name>:exit`.
/// `litefs` exits with `STUB_LITEFS_EXIT` on its own once the proxy is ready, if set.
fn stubs(dir: &Path) {
    let stub = |name: &str, extra: &str| {
        let script = format!(
            r#"#!/usr/bin/env bash
[ "${{1:-}}" = check ] && exit 0
log="$STUB_LOG"
sleep 1000 & sp=$!
trap 'echo {name}:term >> "$log"; kill $sp; echo {name}:exit >> "$log"; exit 0' TERM
echo {name}:ready >> "$log"
{extra}
wait $sp
"#
        );
        let path = dir.join(name);
        fs::write(&path, script).expect("write stub");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    };
    stub(
        "litefs-proxy",
        r#"if [ -n "${STUB_PROXY_CRASH_ONCE:-}" ] && [ ! -e "$log.crashed" ]; then
  touch "$log.crashed"; kill $sp; echo litefs-proxy:crash >> "$log"; exit 137
fi"#,
    );
    stub(
        "litefs",
        r#"if [ -n "${STUB_LITEFS_EXIT:-}" ]; then
  until grep -q litefs-proxy:ready "$log"; do sleep 0.01; done
  kill $sp; echo litefs:exit >> "$log"; exit "$STUB_LITEFS_EXIT"
fi"#,
    );
}

fn entrypoint(dir: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let config = dir.join("litefs-proxy.toml");
    fs::write(&config, "").expect("config");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .arg(deploy("entrypoint.sh"))
        .env("PATH", path)
        .env("STUB_LOG", dir.join("log"))
        .env("LITEFS_PROXY_CONFIG", &config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("run entrypoint.sh")
}

fn log_lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the entrypoint to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

/// SIGTERM stops litefs-proxy first and LiteFS (and with it the app) only once the proxy
/// has exited, so in-flight requests drain against a running app.
#[cfg(unix)]
#[test]
fn entrypoint_stops_the_proxy_before_litefs() {
    let dir = tempfile::tempdir().expect("tempdir");
    stubs(dir.path());
    let mut child = entrypoint(dir.path(), &[]);
    // Signal only once the entrypoint knows both pids and both stubs handle SIGTERM.
    wait_for("both stubs to start", || {
        let l = log_lines(dir.path());
        let started = fs::read_to_string(dir.path().join("stderr"))
            .unwrap_or_default()
            .contains("entrypoint: started");
        started && l.contains(&"litefs-proxy:ready".into()) && l.contains(&"litefs:ready".into())
    });
    sigterm(&child);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = log_lines(dir.path())
        .into_iter()
        .filter(|l| !l.ends_with(":ready"))
        .collect();
    assert_eq!(
        log,
        [
            "litefs-proxy:term",
            "litefs-proxy:exit",
            "litefs:term",
            "litefs:exit"
        ],
        "stop order"
    );
}

/// LiteFS exiting on its own takes the proxy down and the container exits with its status.
#[cfg(unix)]
#[test]
fn entrypoint_exits_when_litefs_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    stubs(dir.path());
    let mut child = entrypoint(dir.path(), &[("STUB_LITEFS_EXIT", "3")]);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(3));
    let log = log_lines(dir.path());
    assert!(log.contains(&"litefs-proxy:term".into()), "{log:?}");
    assert!(log.contains(&"litefs-proxy:exit".into()), "{log:?}");
}

/// A crashed litefs-proxy is started again in place while LiteFS runs on (its lease keeper
/// keeps LiteFS's endpoint meanwhile), and the container still stops in order afterwards.
#[cfg(unix)]
#[test]
fn entrypoint_restarts_a_crashed_proxy_and_keeps_litefs() {
    let dir = tempfile::tempdir().expect("tempdir");
    stubs(dir.path());
    let mut child = entrypoint(dir.path(), &[("STUB_PROXY_CRASH_ONCE", "1")]);
    wait_for("the proxy to be started again", || {
        let l = log_lines(dir.path());
        l.contains(&"litefs-proxy:crash".into())
            && l.iter().filter(|x| *x == "litefs-proxy:ready").count() == 2
            && l.contains(&"litefs:ready".into())
    });
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the container stayed up"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let log: Vec<String> = log_lines(dir.path())
        .into_iter()
        .filter(|l| !l.ends_with(":ready"))
        .collect();
    assert_eq!(
        log,
        [
            "litefs-proxy:crash",
            "litefs-proxy:term",
            "litefs-proxy:exit",
            "litefs:term",
            "litefs:exit"
        ],
        "LiteFS lived through the crash; stop order"
    );
}

// ---------------------------------------------------------------- Kubernetes

struct K8s {
    docs: Vec<(String, Value)>,
}

impl K8s {
    fn load() -> K8s {
        let mut files: Vec<PathBuf> = fs::read_dir(deploy("k8s"))
            .expect("deploy/k8s")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        let docs = files
            .iter()
            .flat_map(|f| {
                let name = f.file_name().expect("name").to_string_lossy().to_string();
                yaml_docs(f).into_iter().map(move |d| (name.clone(), d))
            })
            .collect();
        K8s { docs }
    }

    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        self.kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{kind}/{name} missing"))
    }
}

fn ports(list: &Value, key: &str) -> BTreeSet<u64> {
    list.as_sequence()
        .expect("ports")
        .iter()
        .map(|p| p[key].as_u64().expect("port number"))
        .collect()
}

#[test]
fn k8s_manifests_parse_with_expected_kinds_probes_and_ports() {
    let k = K8s::load();
    let kinds: BTreeSet<&str> = k
        .docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for kind in ["StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap"] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }

    let sts = k.one("StatefulSet", "litefs");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    assert_eq!(s(spec, "podManagementPolicy"), "Parallel");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    let containers = seq(pod, "containers");
    assert_eq!(
        containers.len(),
        1,
        "LiteFS, litefs-proxy and the app share one container"
    );
    let c = &containers[0];
    assert_eq!(
        c["securityContext"]["privileged"].as_bool(),
        Some(true),
        "FUSE"
    );
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(s(probe, "path"), "/litefs/health");
    assert_eq!(probe["port"].as_u64(), Some(8080));
    assert_eq!(
        ports(&c["ports"], "containerPort"),
        BTreeSet::from([8080, 4321, 20202])
    );
    let env: Vec<&str> = seq(c, "env").iter().map(|e| s(e, "name")).collect();
    for var in [
        "LITEFS_PROXY_ELECTION__NODE_ID",
        "LITEFS_PROXY_ELECTION__CLUSTER_SECRET",
        "LITEFS_ADVERTISE_HOST",
    ] {
        assert!(env.contains(&var), "{var} in env");
    }
    let mounts: BTreeSet<&str> = seq(c, "volumeMounts")
        .iter()
        .map(|m| s(m, "mountPath"))
        .collect();
    for m in [
        "/var/lib/litefs",
        "/var/lib/litefs-proxy",
        "/etc/litefs-proxy.toml",
    ] {
        assert!(mounts.contains(m), "{m} mounted");
    }
    assert!(
        !seq(spec, "volumeClaimTemplates").is_empty(),
        "persistent data"
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");

    let headless_name = s(spec, "serviceName");
    let headless = k.one("Service", headless_name);
    assert_eq!(s(&headless["spec"], "clusterIP"), "None");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let hp = ports(&headless["spec"]["ports"], "port");
    assert!(hp.contains(&4321) && hp.contains(&20202), "{hp:?}");
    assert_eq!(&headless["spec"]["selector"], labels);

    let client = k
        .kind("Service")
        .into_iter()
        .find(|svc| svc["spec"]["clusterIP"].as_str() != Some("None"))
        .expect("client Service");
    assert_eq!(
        ports(&client["spec"]["ports"], "port"),
        BTreeSet::from([8080])
    );
    assert_ne!(client["spec"]["sessionAffinity"].as_str(), Some("ClientIP"));
    assert_eq!(&client["spec"]["selector"], labels);

    let pdb = &k.kind("PodDisruptionBudget")[0]["spec"];
    assert_eq!(pdb["maxUnavailable"].as_u64(), Some(1));
    assert_eq!(&pdb["selector"]["matchLabels"], labels);

    // The ConfigMap's litefs-proxy config passes `check` for every pod, peers use the stable
    // names of the headless Service, and the pod outlives the drain.
    let cm = k.one("ConfigMap", "litefs-proxy");
    let toml_text = s(&cm["data"], "litefs-proxy.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("litefs-proxy.toml");
    fs::write(&path, toml_text).expect("write");
    for i in 0..3 {
        let pod_name = format!("litefs-{i}");
        let out = check(
            &path,
            &[
                ("LITEFS_PROXY_ELECTION__NODE_ID", &pod_name),
                ("LITEFS_PROXY_PROXY__NODE_NAME", &pod_name),
                ("LITEFS_PROXY_ELECTION__CLUSTER_SECRET", SECRET),
            ],
        );
        ok(&out, &format!("check of the ConfigMap as {pod_name}"));
    }
    let cfg: toml::Table = toml_text.parse().expect("ConfigMap TOML");
    let lease = cfg["election"]["lease_addr"].as_str().expect("lease_addr");
    assert_eq!(format!("http://{lease}"), litefs_consul_url());
    let peers = cfg["election"]["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 3, "peers match replicas");
    for (i, p) in peers.iter().enumerate() {
        let raft = p["raft"].as_str().expect("raft");
        assert_eq!(raft, format!("litefs-{i}.{headless_name}:4321"));
    }
    let drain = duration(cfg["proxy"]["shutdown_grace"].as_str().expect("grace"));
    assert!(Duration::from_secs(grace) > drain + Duration::from_secs(15));

    // The kustomization lists every manifest in the directory.
    let kust = k.kind("Kustomization");
    let listed: BTreeSet<String> = strings(&kust[0]["resources"]).into_iter().collect();
    let present: BTreeSet<String> = k
        .docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");
}

/// `kubectl kustomize` builds the manifests offline; skipped without kubectl.
#[test]
fn k8s_kustomize_builds() {
    let Some(kubectl) = tool("kubectl", &[]) else {
        return skip("kubectl kustomize", "kubectl not installed");
    };
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy("k8s"))
        .output()
        .expect("run kubectl kustomize");
    ok(&out, "kubectl kustomize deploy/k8s");
    let built: Vec<Value> = {
        use serde::Deserialize;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).expect("kustomize output"))
            .collect()
    };
    assert_eq!(built.len(), K8s::load().docs.len() - 1, "every resource");
}

// ---------------------------------------------------------------- systemd

fn unit(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn systemd_unit_runs_the_proxy_and_outlasts_its_drain() {
    let path = deploy("systemd/litefs-proxy.service");
    let u = unit(&path);
    let get = |key: &str| {
        u.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key}= missing"))
    };
    assert_eq!(get("Type"), "simple");
    assert_eq!(
        get("ExecStart"),
        "/usr/local/bin/litefs-proxy run --config /etc/litefs-proxy.toml"
    );
    assert_eq!(get("KillSignal"), "SIGTERM");
    assert_eq!(get("Restart"), "on-failure");
    let defaults: toml::Table = read(&repo().join("config/litefs-proxy.toml"))
        .parse()
        .expect("config/litefs-proxy.toml");
    let grace = duration(defaults["proxy"]["shutdown_grace"].as_str().expect("grace"));
    assert!(
        duration(get("TimeoutStopSec")) > grace,
        "TimeoutStopSec > shutdown_grace"
    );
    assert!(
        get("After").contains("litefs.service"),
        "stops before LiteFS"
    );
    assert_eq!(
        get("StateDirectory"),
        "litefs-proxy",
        "Raft data_dir is writable"
    );

    let Some(analyze) = tool("systemd-analyze", &[]) else {
        return skip("systemd-analyze verify", "systemd-analyze not installed");
    };
    // Verify copies whose binaries exist here: the built litefs-proxy, /bin/true for LiteFS.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary();
    let copies = [
        (
            "litefs-proxy.service",
            "/usr/local/bin/litefs-proxy",
            bin.display().to_string(),
        ),
        (
            "litefs.service",
            "/usr/local/bin/litefs",
            "/bin/true".into(),
        ),
    ];
    for (name, from, to) in copies {
        let text = read(&deploy(&format!("systemd/{name}"))).replace(from, &to);
        let copy = dir.path().join(name);
        fs::write(&copy, text).expect("write unit copy");
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Unknown keys and bad values are only warnings: fail on any line about this unit.
        let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(
            out.status.success() && about_unit.is_empty(),
            "{name}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------- migration (README)

/// README's migration step: `check --litefs-config` turns a LiteFS config that used LiteFS's
/// proxy into a litefs-proxy config, which `check --config` then accepts as it is.
#[test]
fn migration_converts_a_litefs_proxy_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let litefs_yml = dir.path().join("litefs.yml");
    fs::write(
        &litefs_yml,
        r#"fuse:
  dir: "/mnt/litefs"
data:
  dir: "/var/lib/litefs"
http:
  addr: ":20202"
proxy:
  addr: ":8080"
  target: "localhost:8081"
  db: "app.db"
  passthrough: ["/static/*", "*.png"]
  always-forward: ["/ws/*"]
  primary-redirect-timeout: "7s"
  max-lag: "1m30s"
  read-header-timeout: "5s"
  idle-timeout: "30s"
  debug: true
lease:
  type: "static"
  candidate: true
exec:
  - cmd: "/app/server serve --port 8081"
"#,
    )
    .expect("write litefs.yml");
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("LITEFS_PROXY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["check", "--litefs-config"])
        .arg(&litefs_yml)
        .output()
        .expect("run check --litefs-config");
    ok(&out, "litefs-proxy check --litefs-config");
    let converted = dir.path().join("litefs-proxy.toml");
    fs::write(&converted, &out.stdout).expect("write converted");
    let out = check(&converted, &[]);
    ok(&out, "litefs-proxy check --config <converted>");
    let cfg: toml::Table = String::from_utf8_lossy(&out.stdout).parse().expect("TOML");
    let p = &cfg["proxy"];
    let text = |k: &str| {
        p[k].as_str()
            .unwrap_or_else(|| panic!("proxy.{k}"))
            .to_string()
    };
    assert_eq!(text("addr"), ":8080");
    assert_eq!(text("target"), "localhost:8081");
    assert_eq!(text("db"), "app.db");
    assert_eq!(text("mount"), "/mnt/litefs");
    assert_eq!(text("litefs_api"), "http://127.0.0.1:20202");
    assert_eq!(
        duration(&text("primary_redirect_timeout")),
        Duration::from_secs(7)
    );
    assert_eq!(
        duration(&text("header_read_timeout")),
        Duration::from_secs(5)
    );
    assert_eq!(duration(&text("idle_timeout")), Duration::from_secs(30));
    assert_eq!(p["passthrough"].as_array().map(Vec::len), Some(2));
    assert_eq!(p["always_forward"].as_array().map(Vec::len), Some(1));
    // Go's 1m30s: humantime prints it as "1m 30s".
    assert_eq!(text("max_lag").replace(' ', ""), "1m30s");
}
