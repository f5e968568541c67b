//! What the demo's supervisor says while it runs: a node process that exits (a `kill -9`,
//! a crash) is reaped the moment SIGCHLD arrives and reported with its name and signal,
//! with how to start it again; each change of the acting primary is printed.

use std::{
    future::Future,
    os::unix::process::ExitStatusExt as _,
    process::{Child, ExitStatus},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::signal::unix::{signal, SignalKind};

use crate::peer_view::StatusClient;

/// How often the nodes are asked who is primary.
const LEADER_POLL: Duration = Duration::from_millis(200);

/// One node process of the demo.
pub struct NodeProc {
    pub name: String,
    pub port: u16,
    pub child: Child,
    /// Set once it has exited and been reaped: its pid may belong to someone else now.
    pub exited: bool,
    /// The command that starts it again, for the user to paste.
    pub restart: String,
}

/// Watches `nodes` until `stop` resolves, printing exits and leader changes through `say`.
pub async fn watch(
    nodes: &mut [NodeProc],
    mut leader: Option<String>,
    stop: impl Future<Output = ()>,
    say: impl Fn(&str),
) {
    tokio::pin!(stop);
    // Without a SIGCHLD stream (it cannot fail on Linux), exits are found at the next poll.
    let mut chld = signal(SignalKind::child()).ok();
    let mut tick = tokio::time::interval(LEADER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = StatusClient::new(LEADER_POLL);
    loop {
        let poll_leader = tokio::select! {
            _ = &mut stop => return,
            Some(()) = async { match chld.as_mut() { Some(s) => s.recv().await, None => None } } => false,
            _ = tick.tick() => true,
        };
        for line in reap(nodes) {
            say(&line);
        }
        if poll_leader {
            let now = primaries(&client, nodes).await;
            let now = (!now.is_empty()).then(|| now.join(", "));
            if now != leader {
                say(&leader_line(leader.as_deref(), now.as_deref()));
                leader = now;
            }
        }
    }
}

/// Reaps every node that has exited; one report per node.
pub fn reap(nodes: &mut [NodeProc]) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..nodes.len() {
        if nodes[k].exited {
            continue;
        }
        let status = match nodes[k].child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(e) => {
                out.push(format!(
                    "[{}] cannot wait for {}: {e}",
                    clock(),
                    nodes[k].name
                ));
                continue;
            }
        };
        nodes[k].exited = true;
        let n = &nodes[k];
        let alive: Vec<&str> = nodes
            .iter()
            .filter(|n| !n.exited)
            .map(|n| n.name.as_str())
            .collect();
        let on = if alive.is_empty() {
            "no node is left running".to_owned()
        } else {
            format!("the demo keeps running on {}", alive.join(", "))
        };
        out.push(format!(
            "[{}] {} (pid {}) {}; reaped, {on}.\n  Start it again (in another terminal; Ctrl-C stops it):\n  {}\n",
            clock(),
            n.name,
            n.child.id(),
            describe_exit(status),
            n.restart
        ));
    }
    out
}

/// "was killed by SIGKILL (signal 9)", "exited with code 1".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(sig), _) => format!("was killed by {} (signal {sig})", signal_name(sig)),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => format!("exited ({status})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

fn leader_line(before: Option<&str>, now: Option<&str>) -> String {
    match (before, now) {
        (_, Some(now)) => format!(
            "[{}] leader: {now} (was {}); writes go to it\n",
            clock(),
            before.unwrap_or("none")
        ),
        (Some(before), None) => format!(
            "[{}] leader: none (was {before}); writes are held until a new one is elected\n",
            clock()
        ),
        (None, None) => String::new(),
    }
}

/// The nodes (running or restarted by hand) whose proxy acts as primary right now.
async fn primaries(client: &StatusClient, nodes: &[NodeProc]) -> Vec<String> {
    let mut asks = tokio::task::JoinSet::new();
    for n in nodes {
        let (client, name, url) = (
            client.clone(),
            n.name.clone(),
            format!("http://127.0.0.1:{}", n.port),
        );
        asks.spawn(async move {
            let s = client.get_json(&url, "/litefs/status").await.ok()?;
            (s["role"] == "primary").then_some(name)
        });
    }
    let mut out: Vec<String> = Vec::new();
    while let Some(done) = asks.join_next().await {
        if let Ok(Some(name)) = done {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// UTC time of day, `HH:MM:SS.mmm`.
fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_named() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by SIGKILL (signal 9)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
    }

    #[test]
    fn leader_changes_read_as_sentences() {
        let l = leader_line(Some("node-2"), None);
        assert!(
            l.ends_with("leader: none (was node-2); writes are held until a new one is elected\n"),
            "{l}"
        );
        let l = leader_line(None, Some("node-3"));
        assert!(
            l.ends_with("leader: node-3 (was none); writes go to it\n"),
            "{l}"
        );
    }
}
