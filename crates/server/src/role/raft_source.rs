//! The `raft` role source: the embedded election (`litefs-election`) decides the primary.
//! Its `Leadership` watch is mapped onto the proxy's `Primary` watch, and its status and
//! metrics are added to `/litefs/status` and `/litefs/metrics`.

use std::sync::{Arc, Mutex};

use litefs_election::{Election, InHistory, Leadership};
use litefs_proxy::{
    position::{LocalTxid, TokenCheck},
    sync::{ReplicaPos, ReplicaView},
    token::Token,
    txid::TxId,
    ConfigError, Primary, StatusExtension,
};
use tokio::sync::watch;

/// The `[election]` table as the election crate's config, checked.
pub fn election_config(
    table: Option<&toml::Table>,
) -> Result<litefs_election::Config, ConfigError> {
    let Some(table) = table else {
        return Err(ConfigError::new(
            "role.source",
            "raft",
            "raft needs the [election] table",
        ));
    };
    let mut table = table.clone();
    // The proxy serves LiteFS's lease endpoint from a keeper process unless told not to.
    table
        .entry("lease_keeper")
        .or_insert(toml::Value::Boolean(true));
    let cfg: litefs_election::Config =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ConfigError::new("election", "{…}", e.message().to_owned())
            })?;
    cfg.validate()
        .map_err(|e| ConfigError::new(&format!("election.{}", e.key), e.value, e.reason))?;
    Ok(cfg)
}

/// What the proxy acts on, from what the election says.
pub fn to_primary(l: &Leadership) -> Primary {
    match l {
        Leadership::Leader => Primary::Local,
        Leadership::Follower { leader, proxy_url } => {
            Primary::remote(leader.as_str(), proxy_url).unwrap_or(Primary::Unknown)
        }
        Leadership::Unknown => Primary::Unknown,
    }
}

/// The running election, shared with the status endpoints until shutdown takes it.
#[derive(Clone)]
pub struct RaftRole {
    election: Arc<Mutex<Option<Election>>>,
    /// Asked by the proxy right before a write goes to the app.
    fence: litefs_election::Fence,
    /// The replicas' reported positions, as the proxy's `sync_replicas` wait reads them.
    replicas: watch::Receiver<ReplicaView>,
    /// This node's LiteFS position, as the election sees it.
    position: litefs_election::LocalPosition,
}

impl RaftRole {
    /// Starts the election and a task copying its leadership into `tx`. With `litefs_up`
    /// (the local LiteFS is followed), the node is eligible to lead only while it says up.
    pub async fn start(
        cfg: litefs_election::Config,
        local_proxy_port: u16,
        tx: watch::Sender<Primary>,
        litefs_up: Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<RaftRole> {
        let election = Election::start(cfg, local_proxy_port).await?;
        if let Some(mut up) = litefs_up {
            let eligibility = election.eligibility();
            eligibility.set(*up.borrow_and_update());
            tokio::spawn(async move {
                // Ends with the LiteFS source (the run).
                while up.changed().await.is_ok() {
                    eligibility.set(*up.borrow_and_update());
                }
            });
        }
        let fence = election.fence();
        let position = election.local_position();
        let replicas = relay_positions(election.replica_positions());
        let mut leadership = election.leadership();
        tx.send_replace(to_primary(&leadership.borrow_and_update()));
        tokio::spawn(async move {
            // Ends when the election stops; the last primary stays (after a handover, the new
            // leader), so requests still draining here are forwarded to it.
            while leadership.changed().await.is_ok() {
                let p = to_primary(&leadership.borrow_and_update());
                tracing::info!(primary = %p, "role change");
                tx.send_replace(p);
            }
        });
        Ok(RaftRole {
            election: Arc::new(Mutex::new(Some(election))),
            fence,
            replicas,
            position,
        })
    }

    /// For [`litefs_proxy::Proxy::with_fence`].
    pub fn fence(&self) -> litefs_proxy::Fence {
        let fence = self.fence.clone();
        Arc::new(move || fence.may_write())
    }

    /// For [`litefs_proxy::Proxy::with_replicas`].
    pub fn replicas(&self) -> watch::Receiver<ReplicaView> {
        self.replicas.clone()
    }

    /// Tells the election this node's LiteFS position as the proxy's watcher sees it
    /// (pre-votes, handover targets, reports to the leader). With `fast`, the watcher
    /// re-reads the position at its fast pace all the time, so replicas report a write
    /// within about `pos_poll_interval` (writes on the primary wait for those reports).
    pub fn follow_position(&self, local: &LocalTxid, fast: bool) {
        if fast {
            local.keep_fast();
        }
        let mut rx = local.subscribe_position();
        let position = self.position.clone();
        // The election compares positions with their histories through the proxy's ring.
        let history = local.clone();
        position.set_history(move |p| {
            let token = Token {
                txid: TxId(p.txid),
                checksum: Some(p.checksum),
            };
            match history.check(token) {
                TokenCheck::Satisfied => InHistory::Yes,
                TokenCheck::Diverged => InHistory::No,
                TokenCheck::Behind | TokenCheck::Unverified => InHistory::Unknown,
            }
        });
        tokio::spawn(async move {
            loop {
                let p = *rx.borrow_and_update();
                position.set(litefs_election::Position {
                    txid: p.txid.0,
                    checksum: p.post_apply_checksum,
                });
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The lease endpoint's state, when this node serves one.
    pub fn lease(&self) -> Option<litefs_election::lease::LeaseShared> {
        self.election.lock().ok()?.as_ref()?.lease()
    }

    /// What a planned handover to a voter of higher priority waits for first (see
    /// `litefs_election::Election::set_quiesce`).
    pub fn set_quiesce(&self, quiesce: litefs_election::Quiesce) {
        if let Ok(e) = self.election.lock() {
            if let Some(e) = e.as_ref() {
                e.set_quiesce(quiesce);
            }
        }
    }

    /// Hands leadership over (if leader); the election keeps following the new leader, so
    /// requests held while the proxy drains are sent on to it.
    pub async fn hand_over(&self) {
        self.hand_over_after(std::future::ready(())).await
    }

    /// [`RaftRole::hand_over`], once `quiesced` (see `Election::hand_over_after`).
    pub async fn hand_over_after(&self, quiesced: impl std::future::Future<Output = ()>) {
        let election = self.election.lock().ok().and_then(|mut e| e.take());
        if let Some(e) = election {
            match e.hand_over_after(quiesced).await {
                Some(took) => {
                    tracing::info!(ms = took.as_millis() as u64, "leadership handed over")
                }
                None => tracing::debug!("not the leader: nothing to hand over"),
            }
            if let Ok(mut slot) = self.election.lock() {
                *slot = Some(e);
            }
        }
    }

    /// Hands leadership over (if leader) and stops the election.
    pub async fn shutdown(&self) {
        let election = self.election.lock().ok().and_then(|mut e| e.take());
        if let Some(e) = election {
            match e.shutdown().await {
                Some(took) => {
                    tracing::info!(ms = took.as_millis() as u64, "leadership handed over")
                }
                None => tracing::info!("election stopped"),
            }
        }
    }
}

/// Copies the election's reports into the proxy's view of them, as they change.
fn relay_positions(
    mut from: watch::Receiver<litefs_election::ReplicaPositions>,
) -> watch::Receiver<ReplicaView> {
    let convert = |p: &litefs_election::ReplicaPositions| ReplicaView {
        term: p.term,
        replicas: p
            .positions
            .values()
            .map(|pos| ReplicaPos {
                txid: pos.txid,
                checksum: pos.checksum,
            })
            .collect(),
    };
    let (tx, rx) = watch::channel(convert(&from.borrow_and_update()));
    tokio::spawn(async move {
        while from.changed().await.is_ok() {
            tx.send_replace(convert(&from.borrow_and_update()));
        }
    });
    rx
}

/// What `/litefs/status` says under `election`: the election's status, plus what this node's
/// LiteFS says it is (`litefs_role`) and every peer's last answer (`peers`, see
/// [`crate::peer_view`]).
pub struct ClusterStatus {
    pub raft: RaftRole,
    pub peers: crate::peer_view::PeerView,
    /// The local LiteFS's own view of the primary, when it is followed.
    pub litefs: Option<watch::Receiver<Primary>>,
}

impl StatusExtension for ClusterStatus {
    fn status(&self) -> serde_json::Value {
        let mut v = self.raft.status();
        if let Some(obj) = v.as_object_mut() {
            if let Some(l) = &self.litefs {
                obj.insert("litefs_role".into(), l.borrow().role().into());
            }
            obj.insert("peers".into(), self.peers.rows());
        }
        v
    }

    fn metrics(&self, out: &mut String) {
        self.raft.metrics(out)
    }
}

impl StatusExtension for RaftRole {
    fn status(&self) -> serde_json::Value {
        match self.election.lock().ok().as_ref().and_then(|e| e.as_ref()) {
            Some(e) => serde_json::to_value(e.status()).unwrap_or_default(),
            None => serde_json::json!({ "role": "stopped" }),
        }
    }

    fn metrics(&self, out: &mut String) {
        if let Some(e) = self.election.lock().ok().as_ref().and_then(|e| e.as_ref()) {
            e.encode_metrics(out);
        }
    }
}
