//! The running election node: wires the store, transport, openraft and the leadership tracker
//! together, bootstraps the cluster from the config, and shuts down with a handover.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::config::{node_num, Config, ConfigError, Peer};
use crate::eligibility::{self, Eligibility};
use crate::faults::Faults;
use crate::fence::{AckClock, Fence};
use crate::handover::{self, HandoverCtx};
use crate::hooks::Hooks;
use crate::leadership::{Leadership, Tracker};
use crate::lease::{self, LeaseShared, LeaseWriter};
use crate::network::{NetworkFactory, RpcClient};
use crate::position::LocalPosition;
use crate::prevote::PreVoteCtx;
use crate::reports::{ReplicaPositions, ReportTable};
use crate::rpc_server::{self, RpcState};
use crate::status::{Status, StatusCell};
use crate::store::{LogStore, OpenError, StateMachine, Store};
use crate::types::{NodeId, Raft};

/// Why the election could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("creating data_dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("binding lease_addr {addr}: {source}")]
    BindLease {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding raft_addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
}

/// Handle to a running election node.
pub struct Election {
    raft: Raft,
    me: NodeId,
    local_addr: SocketAddr,
    leadership: watch::Receiver<Leadership>,
    status: StatusCell,
    stepping_down: Arc<AtomicBool>,
    wake: Arc<Notify>,
    handover: HandoverCtx,
    client: RpcClient,
    faults: Faults,
    store: Store,
    server_stop: Option<oneshot::Sender<()>>,
    server_task: JoinHandle<()>,
    tracker_task: JoinHandle<()>,
    /// The election timer: pre-vote, then campaign (see `election_timer`).
    timer_task: JoinHandle<()>,
    /// Whether this node may lead, set by the server.
    eligibility: Eligibility,
    /// Hands over while ineligible (see `eligibility`).
    eligibility_task: JoinHandle<()>,
    /// The lease reaper (runs on every node, acts only while leading).
    reaper_task: JoinHandle<()>,
    /// The lease HTTP endpoint, when `lease_addr` is set.
    lease_server: Option<(SocketAddr, oneshot::Sender<()>, JoinHandle<()>)>,
    /// `lease_addr`, when a lease keeper serves it (`lease_keeper`).
    lease_kept: Option<SocketAddr>,
    /// The lease state (also when no endpoint is served; then nobody asks for it).
    lease_shared: LeaseShared,
    /// This node's LiteFS position, set by the server.
    position: LocalPosition,
    /// Whether this node may take a write at this instant.
    fence: Fence,
    /// Replicas' position reports (kept while leading).
    reports: ReportTable,
    /// Sends this node's position to the leader while following.
    reports_task: JoinHandle<()>,
    learners_task: JoinHandle<()>,
    priority_task: JoinHandle<()>,
    /// Set once a shutdown's handover began (a priority yield must not clear `stepping_down`).
    shutdown: Arc<AtomicBool>,
    /// The server's wait for writes at the app, run before a priority yield's handover.
    quiesce: Arc<std::sync::Mutex<Option<crate::priority::Quiesce>>>,
    catch_up_task: JoinHandle<()>,
}

impl Election {
    /// Validate `cfg`, open the store, bind `raft_addr`, start Raft and bootstrap the cluster
    /// (every node initializes the same membership when its log is empty, which openraft allows).
    pub async fn start(cfg: Config, local_proxy_port: u16) -> Result<Election, Error> {
        Self::start_with_faults(cfg, local_proxy_port, Faults::default()).await
    }

    /// [`Election::start`] with a fault-injection switchboard (tests).
    pub async fn start_with_faults(
        cfg: Config,
        local_proxy_port: u16,
        faults: Faults,
    ) -> Result<Election, Error> {
        cfg.validate()?;
        let peers: BTreeMap<NodeId, Peer> = cfg
            .resolve_peers(local_proxy_port)
            .into_iter()
            .map(|p| (node_num(&p.id), p))
            .collect();
        let peers = Arc::new(peers);
        let me = node_num(&cfg.node_id);

        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| Error::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        let store = Store::open(&cfg.data_dir)?;
        let lease_listener = match cfg.lease_addr {
            // Served by the keeper, which forwards here over the RPC transport.
            Some(_) if cfg.lease_keeper => None,
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::BindLease { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| Error::BindLease { addr, source })?;
                Some((l, bound))
            }
            None => None,
        };
        let listener = TcpListener::bind(cfg.raft_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.raft_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.raft_addr,
            source,
        })?;

        let raft_config = openraft::Config {
            cluster_name: "litefs-proxy".into(),
            heartbeat_interval: cfg.heartbeat_interval.as_millis() as u64,
            election_timeout_min: cfg.election_timeout_min.as_millis() as u64,
            election_timeout_max: cfg.election_timeout_max.as_millis() as u64,
            // Our election timer campaigns only after a pre-vote quorum (`election_timer`).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;

        if cfg.cluster_secret.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                raft_addr = %local_addr,
                "election.cluster_secret is not set: anyone who reaches the Raft port can vote and append; set it (16+ characters, the same on every node)"
            );
        }
        let auth = Auth::new(cfg.cluster_secret.as_deref());
        let client = RpcClient::new(
            cfg.node_id.clone(),
            peers.clone(),
            auth.clone(),
            faults.clone(),
            cfg.election_timeout_min,
        );
        let acks = AckClock::default();
        let network = NetworkFactory {
            client: client.clone(),
            me,
            backoff: cfg.election_timeout_min,
            acks: acks.clone(),
        };
        let lease_shared = LeaseShared::default();
        let state_machine = StateMachine::new(store.clone(), lease_shared.clone())
            .map_err(|e| Error::Raft(e.to_string()))?;
        let raft = Raft::new(
            me,
            Arc::new(raft_config),
            network,
            LogStore::new(store.clone()),
            state_machine,
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;

        // The voters make the initial membership; non-voters join as learners, added by the
        // leader (`learners`), and never initialize (openraft: a node initializes only a
        // membership it is a voter of).
        let members: BTreeMap<NodeId, BasicNode> = peers
            .iter()
            .filter(|(_, p)| p.voter)
            .map(|(id, p)| (*id, BasicNode::new(&p.id)))
            .collect();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if !initialized && members.contains_key(&me) {
            match raft.initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(voters = ?peers.values().filter(|p| p.voter).map(|p| &p.id).collect::<Vec<_>>(), "initialized cluster membership")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::debug!(error = %e, "already initialized")
                }
                Err(e) => return Err(Error::Raft(e.to_string())),
            }
        } else if initialized {
            let stored: BTreeSet<NodeId> = raft
                .metrics()
                .borrow()
                .membership_config
                .voter_ids()
                .collect();
            let configured: BTreeSet<NodeId> = members.keys().copied().collect();
            if stored != configured {
                tracing::warn!(
                    "peers in the config differ from the stored membership; membership changes are not supported, the stored one is used"
                );
            }
        }

        let status = StatusCell::new(&cfg.node_id);
        let hooks = Hooks::spawn(
            cfg.node_id.clone(),
            cfg.on_promote.clone(),
            cfg.on_demote.clone(),
            status.counters(),
        );
        let (tx, rx) = watch::channel(Leadership::Unknown);
        let stepping_down = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let eligibility = Eligibility::new(wake.clone(), status.clone());
        let position = LocalPosition::default();
        let pre_vote = PreVoteCtx {
            raft: raft.clone(),
            me,
            peers: peers.clone(),
            status: status.clone(),
            position: position.clone(),
            stepping_down: stepping_down.clone(),
            eligible: eligibility.subscribe(),
            election_timeout_min: cfg.election_timeout_min,
            election_timeout_max: cfg.election_timeout_max,
            started: std::time::Instant::now(),
            candidacy: Arc::new(crate::prevote::Candidacy::new(cfg.election_timeout_min)),
            priority: cfg.priority,
        };
        let reports = ReportTable::default();
        let handover = HandoverCtx {
            pre_vote: pre_vote.clone(),
            reports: reports.clone(),
            raft: raft.clone(),
            me,
            peers: peers.clone(),
            heartbeat: cfg.heartbeat_interval,
            election_timeout_max: cfg.election_timeout_max,
            eligible: eligibility.subscribe(),
        };

        let (caught_up_tx, caught_up) = watch::channel(None);
        let tracker = Tracker {
            raft: raft.clone(),
            me,
            peers: peers.clone(),
            tx,
            status: status.clone(),
            hooks,
            primary_path: cfg.primary_path(),
            lease: cfg.election_timeout_min,
            tick: (cfg.heartbeat_interval / 2).max(Duration::from_millis(5)),
            stepping_down: stepping_down.clone(),
            eligible: eligibility.subscribe(),
            wake: wake.clone(),
            acks: acks.clone(),
            caught_up,
            lease_shared: lease_shared.clone(),
        };
        let tracker_task = tokio::spawn(tracker.run());
        let catch_up_task = tokio::spawn(
            crate::catch_up::CatchUp {
                handover: handover.clone(),
                client: client.clone(),
                passed: caught_up_tx,
                wake: wake.clone(),
            }
            .run(),
        );
        let eligibility_task = tokio::spawn(
            eligibility::Watcher {
                handover: handover.clone(),
                client: client.clone(),
                eligible: eligibility.subscribe(),
                leadership: rx.clone(),
                wake: wake.clone(),
                stepping_down: stepping_down.clone(),
            }
            .run(),
        );
        let timer_task = tokio::spawn(crate::election_timer::run(pre_vote, client.clone()));
        let shutdown = Arc::new(AtomicBool::new(false));
        let quiesce = Arc::new(std::sync::Mutex::new(None));
        let priority_task = tokio::spawn(
            crate::priority::Preference {
                handover: handover.clone(),
                client: client.clone(),
                wake: wake.clone(),
                leadership: rx.clone(),
                stepping_down: stepping_down.clone(),
                shutdown: shutdown.clone(),
                quiesce: quiesce.clone(),
            }
            .run(),
        );

        let learners_task = tokio::spawn(crate::learners::run(raft.clone(), peers.clone()));
        let reports_task = tokio::spawn(crate::reports::run(
            raft.clone(),
            me,
            client.clone(),
            position.clone(),
            reports.clone(),
            cfg.election_timeout_min,
        ));
        let lease_http = Arc::new(lease::http::HttpCtx {
            shared: lease_shared.clone(),
            writer: LeaseWriter {
                raft: raft.clone(),
                me,
                client: client.clone(),
                shared: lease_shared.clone(),
            },
            raft: raft.clone(),
            me_name: cfg.node_id.clone(),
            peers: peers.clone(),
            token: cfg.lease_token.clone(),
            renew_within: lease::renew_answer_within(cfg.election_timeout_min),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let state = RpcState {
            lease_http: lease_http.clone(),
            raft: raft.clone(),
            auth,
            faults: faults.clone(),
            handover: handover.clone(),
            status: status.clone(),
            lease: lease_shared.clone(),
            reports: reports.clone(),
        };
        let server_task = tokio::spawn(rpc_server::serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        let reaper_task = tokio::spawn(lease::reaper(
            raft.clone(),
            me,
            lease_shared.clone(),
            (cfg.heartbeat_interval * 2).max(Duration::from_millis(20)),
        ));
        let lease_server = match lease_listener {
            Some((l, addr)) => {
                let ctx = (*lease_http).clone();
                let (tx, rx) = oneshot::channel::<()>();
                let task = tokio::spawn(lease::http::serve(l, ctx, async move {
                    let _ = rx.await;
                }));
                tracing::info!(lease_addr = %addr, "lease endpoint (Consul API subset) listening");
                Some((addr, tx, task))
            }
            None => None,
        };
        let fence = Fence {
            raft: raft.clone(),
            me,
            clock: acks,
            lease: cfg.election_timeout_min,
            acting: {
                let stepping_down = stepping_down.clone();
                let eligible = eligibility.subscribe();
                let role = rx.clone();
                Arc::new(move || {
                    !stepping_down.load(Ordering::SeqCst)
                        && *eligible.borrow()
                        && matches!(*role.borrow(), Leadership::Leader)
                })
            },
        };
        tracing::info!(node = %cfg.node_id, raft_addr = %local_addr, "election started");

        Ok(Election {
            raft,
            me,
            local_addr,
            leadership: rx,
            status,
            stepping_down,
            wake,
            handover,
            client,
            faults,
            store,
            server_stop: Some(stop_tx),
            server_task,
            tracker_task,
            timer_task,
            eligibility,
            eligibility_task,
            reaper_task,
            lease_server,
            lease_kept: cfg.lease_addr.filter(|_| cfg.lease_keeper),
            lease_shared,
            position,
            fence,
            reports,
            reports_task,
            learners_task,
            priority_task,
            shutdown,
            quiesce,
            catch_up_task,
        })
    }

    /// Sets whether this node may lead (e.g. not while its LiteFS is down): an ineligible
    /// leader hands leadership over, an ineligible follower refuses to take it.
    pub fn eligibility(&self) -> Eligibility {
        self.eligibility.clone()
    }

    /// This node's LiteFS position: the server sets it from the proxy's position watcher.
    pub fn local_position(&self) -> LocalPosition {
        self.position.clone()
    }

    /// Asks, at the moment of a write, whether this node may take it: Raft leader, acting as
    /// one, and acknowledged by a quorum within `election_timeout_min` as measured now.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// While leading: the positions replicas reported to this node in its current term
    /// (empty otherwise). Changes are pushed.
    pub fn replica_positions(&self) -> watch::Receiver<ReplicaPositions> {
        self.reports.subscribe()
    }

    /// The role to act on; changes are pushed.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn status(&self) -> Status {
        let mut s = self.status.get();
        let m = self.raft.metrics();
        let m = m.borrow();
        let in_membership = m.membership_config.nodes().any(|(id, _)| *id == self.me);
        s.voter = if in_membership {
            m.membership_config.voter_ids().any(|id| id == self.me)
        } else {
            self.handover.peers.get(&self.me).map_or(true, |p| p.voter)
        };
        s
    }

    /// Prometheus text lines prefixed `litefs_election_`.
    pub fn encode_metrics(&self, out: &mut String) {
        self.status.encode_metrics(out)
    }

    /// The bound Raft address (tests bind port 0).
    pub fn raft_local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The lease endpoint's state, when `lease_addr` is set (to open a handoff window).
    pub fn lease(&self) -> Option<LeaseShared> {
        self.lease_local_addr().map(|_| self.lease_shared.clone())
    }

    /// The lease endpoint's address, when `lease_addr` is set (bound here, or the keeper's).
    pub fn lease_local_addr(&self) -> Option<SocketAddr> {
        self.lease_server
            .as_ref()
            .map(|(a, _, _)| *a)
            .or(self.lease_kept)
    }

    /// openraft's own metrics (term, state, vote), for tests and diagnostics.
    pub fn raft_metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// This node's numeric Raft id.
    pub fn raft_id(&self) -> NodeId {
        self.me
    }

    /// The vote as persisted on disk.
    pub fn persisted_vote(&self) -> Option<openraft::Vote<NodeId>> {
        self.store.vote()
    }

    /// The fault-injection switchboard this node was started with.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A leader stops acting as primary, then hands leadership to its most up-to-date
    /// follower and waits (bounded) to see the new leader; returns that time. The node keeps
    /// running as a follower (and never leads again), so a proxy draining after the handover
    /// still learns who leads. No-op on a follower.
    pub async fn hand_over(&self) -> Option<Duration> {
        self.hand_over_after(std::future::ready(())).await
    }

    /// [`Election::hand_over`], waiting for `quiesced` between the moment this node stops
    /// acting as primary (no new write reaches its app) and the probe of the followers'
    /// positions: the writes already at the app then count in the position it hands over.
    pub async fn hand_over_after(&self, quiesced: impl Future<Output = ()>) -> Option<Duration> {
        self.shutdown.store(true, Ordering::SeqCst);
        let was_leader = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        // Once only: a second call (the drain's, then the shutdown's) would wait again for a
        // successor that the first one already asked for.
        if !was_leader || self.stepping_down.swap(true, Ordering::SeqCst) {
            return None;
        }
        quiesced.await;
        let mut rx = self.leadership.clone();
        handover::step_down(&self.handover, &self.client, &self.wake, &mut rx).await
    }

    /// What to wait for before a planned handover to a voter of higher priority (see
    /// `election.priority`): the server passes its wait for the writes already at the app.
    pub fn set_quiesce(&self, quiesce: crate::priority::Quiesce) {
        *self.quiesce.lock().unwrap_or_else(|p| p.into_inner()) = Some(quiesce);
    }

    /// Stop: a leader first hands over (see [`Election::hand_over`]).
    pub async fn shutdown(mut self) -> Option<Duration> {
        let took = self.hand_over().await;
        self.stop().await;
        took
    }

    /// Stop at once without a handover, as a crash would (tests). The `.primary` file is left
    /// as it was.
    pub async fn kill(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        // abort() only requests cancellation; wait for it so the tracker cannot react to the
        // shutdown below (it would otherwise rewrite .primary as "no leader").
        self.timer_task.abort();
        self.eligibility_task.abort();
        self.reports_task.abort();
        self.learners_task.abort();
        self.priority_task.abort();
        self.catch_up_task.abort();
        self.tracker_task.abort();
        let _ = (&mut self.tracker_task).await;
        self.reaper_task.abort();
        let _ = (&mut self.reaper_task).await;
        if let Some((_, tx, task)) = self.lease_server.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
        if let Some(tx) = self.server_stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server_task).await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.timer_task.abort();
        self.eligibility_task.abort();
        self.reports_task.abort();
        self.learners_task.abort();
        self.priority_task.abort();
        self.catch_up_task.abort();
        self.tracker_task.abort();
        self.server_task.abort();
        self.reaper_task.abort();
        if let Some((_, _, task)) = &self.lease_server {
            task.abort();
        }
    }
}
