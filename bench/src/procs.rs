//! Child processes the bench drives (litefs-proxy nodes, nginx, the hello app) and what
//! /proc says about a process: resident memory and CPU time.

use std::{
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// The `litefs-proxy` binary of this build (the test harness's `binary()`: built with
/// cargo once, `LITEFS_PROXY_BIN` overrides it).
pub fn proxy_binary() -> Result<PathBuf> {
    let bin = litefs_proxy_tests::cluster::binary();
    if !bin.parent().is_some_and(|d| d.ends_with("release"))
        && std::env::var_os("LITEFS_PROXY_BIN").is_none()
    {
        eprintln!("warning: not a --release build; numbers are meaningless");
    }
    Ok(bin)
}

pub use litefs_proxy_tests::cluster::free_port;

/// A child process, stopped on drop (SIGKILL, or `stop_signal` first for nginx, whose
/// workers outlive a SIGKILLed master).
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
    stop_signal: Option<&'static str>,
}

impl Proc {
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        stop_signal: Option<&'static str>,
    ) -> Result<Proc> {
        let file = std::fs::File::create(&log).context("log file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            name: name.into(),
            log,
            child: Some(child),
            stop_signal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `GET path` answers 200; on failure the error carries the log's tail.
    pub async fn wait_ready(&self, addr: SocketAddr, path: &str) -> Result<()> {
        crate::client::wait_ready(addr, path, Duration::from_secs(20))
            .await
            .with_context(|| {
                format!(
                    "{} did not start; its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                )
            })
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(sig) = self.stop_signal {
            let _ = Command::new("kill")
                .args(["-s", sig, &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `litefs-proxy run --config <dir>/<name>.toml` process.
pub fn spawn_proxy(bin: &Path, dir: &Path, name: &str, toml: &str) -> Result<Proc> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml)?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG"); // the binary's default filter
    Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")), None)
}

/// A static primary `<tag>-proxy` in front of `target`, on a mount at TXID 1, ready to
/// serve; its process (stopped on drop) and address.
pub async fn spawn_static_primary(
    bin: &Path,
    dir: &Path,
    tag: &str,
    target: SocketAddr,
) -> Result<(Proc, SocketAddr)> {
    let mount = dir.join(format!("{tag}-mount"));
    std::fs::create_dir_all(&mount)?;
    litefs_sim::write_pos(&mount, "db.sqlite3", 1, 0)?;
    let addr = free_port();
    let name = format!("{tag}-proxy");
    let proxy = spawn_proxy(
        bin,
        dir,
        &name,
        &static_toml(addr, target, &mount, tag, None, ""),
    )?;
    proxy.wait_ready(addr, "/litefs/health").await?;
    Ok((proxy, addr))
}

/// `[proxy]` + static `[role]` config. `primary_url` None = this node is the primary.
pub fn static_toml(
    addr: SocketAddr,
    target: SocketAddr,
    mount: &Path,
    name: &str,
    primary_url: Option<&str>,
    extra: &str,
) -> String {
    let role = match primary_url {
        None => "is_primary = true".to_string(),
        Some(u) => format!("is_primary = false\nprimary_url = \"{u}\""),
    };
    format!(
        r#"[proxy]
addr = "{addr}"
target = "{target}"
mount = "{mount}"
node_name = "{name}"
shutdown_grace = "1s"
{extra}

[role]
source = "static"
{role}
"#,
        mount = mount.display()
    )
}

/// Where nginx is, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/sbin/nginx");
    if p.exists() {
        return Some(p);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v nginx"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// nginx as a reverse proxy to `upstream`: keepalive upstream pool, HTTP/1.1 upstream,
/// one worker per core, in the foreground with its master.
pub fn spawn_nginx(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
) -> Result<Proc> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let p = prefix.display();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 80000;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 40000; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    # Client keep-alive as long-lived as litefs-proxy's (nginx closes after 1000 requests by default).
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream app {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
    Proc::spawn("nginx", &mut cmd, dir.join("nginx.log"), Some("TERM"))
}

/// Starts this executable as the hello app (`<exe> hello`) and returns it with its address.
pub fn spawn_hello(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let log = dir.join("hello.log");
    let mut child = Command::new(exe)
        .arg("hello")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawning the hello app")?;
    let stdout = child.stdout.take().context("hello stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .context("hello app did not start")?
        .parse()?;
    Ok((
        Proc {
            name: "hello".into(),
            log,
            child: Some(child),
            stop_signal: None,
        },
        addr,
    ))
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Proportional set size in KiB (shared pages split among sharers), for multi-process
/// servers (nginx's master and workers share pages).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&text, "Pss:")
}

fn status_field(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&text, key)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second for /proc/<pid>/stat (USER_HZ, 100 on Linux).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Direct children of `pid` (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The machine, for the report: cores and CPU model.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}
