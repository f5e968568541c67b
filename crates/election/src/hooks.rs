//! Role-change hooks: `on_promote` / `on_demote` run through `sh -c` with the role in the
//! environment. They run one at a time, in order, on their own task: a slow or failing hook
//! is logged and counted and never holds up the election.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::status::Counters;

/// Longest a hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Which hook to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Promote,
    Demote,
}

#[derive(Debug)]
struct Job {
    kind: HookKind,
    role: &'static str,
    leader: String,
}

/// Queue of hook runs; cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    tx: mpsc::UnboundedSender<Job>,
}

impl Hooks {
    /// Start the worker. Commands are `None` when not configured.
    pub fn spawn(
        node_id: String,
        on_promote: Option<String>,
        on_demote: Option<String>,
        counters: Arc<Counters>,
    ) -> Hooks {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let cmd = match job.kind {
                    HookKind::Promote => on_promote.as_deref(),
                    HookKind::Demote => on_demote.as_deref(),
                };
                let Some(cmd) = cmd else { continue };
                counters.hook_runs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = run(cmd, &node_id, &job).await {
                    counters.hook_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(hook = ?job.kind, command = cmd, error = %e, "role hook failed");
                } else {
                    tracing::info!(hook = ?job.kind, command = cmd, "role hook ran");
                }
            }
        });
        Hooks { tx }
    }

    /// Queue a hook run; returns at once.
    pub fn fire(&self, kind: HookKind, role: &'static str, leader: &str) {
        let _ = self.tx.send(Job {
            kind,
            role,
            leader: leader.to_string(),
        });
    }
}

async fn run(cmd: &str, node_id: &str, job: &Job) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("LITEFS_PROXY_ROLE", job.role)
        .env("LITEFS_PROXY_NODE_ID", node_id)
        .env("LITEFS_PROXY_LEADER", &job.leader)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
        Err(_) => Err(format!("still running after {HOOK_TIMEOUT:?}, killed")),
        Ok(Err(e)) => Err(format!("wait: {e}")),
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(format!("exited with {st}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_run_in_order_with_env_and_failures_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let promote = format!(
            "echo \"$LITEFS_PROXY_ROLE $LITEFS_PROXY_NODE_ID $LITEFS_PROXY_LEADER\" >> {}",
            log.display()
        );
        let counters = Arc::new(Counters::default());
        let runs = || counters.hook_runs.load(Ordering::Relaxed);
        let failures = || counters.hook_failures.load(Ordering::Relaxed);
        let hooks = Hooks::spawn(
            "node-1".into(),
            Some(promote),
            Some("exit 3".into()),
            counters.clone(),
        );
        hooks.fire(HookKind::Promote, "leader", "node-1");
        hooks.fire(HookKind::Demote, "follower", "node-2");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs() < 2 || failures() < 1 {
            assert!(tokio::time::Instant::now() < deadline, "hooks did not run");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(failures(), 1);
        assert_eq!(
            std::fs::read_to_string(&log).expect("hook wrote"),
            "leader node-1 node-1\n"
        );
    }
}
