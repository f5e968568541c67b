//! The request path: classify, stall reads until the local TXID reaches the client's
//! token, send a read whose token names another history (or a position this node cannot
//! verify) to the primary, send writes to the primary (holding them while none is
//! reachable), mint the token after writes on the primary.

use std::{pin::Pin, sync::Arc, time::Duration};

use http::{header, request::Parts, Method, Request, Response, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::{body::Incoming, upgrade::OnUpgrade};
use tokio::{sync::watch, time::Instant};

use crate::{
    body::{ClientBody, ClientFault, FaultCell},
    config::{ConfigError, OnReadTimeout, ProxyConfig, TxidSource},
    endpoints,
    error::ProxyError,
    forward::Forwarder,
    headers::{self, Client, HOP_HEADER},
    litefs_api::LitefsApi,
    metrics::{GaugeGuard, Metrics, ReplayOutcome, WaitOutcome},
    patterns::{self, Patterns},
    position::{LocalTxid, TokenCheck},
    primary::Primary,
    replay::{self, Ask, REPLAY_MARK, REPLAY_MARK_VALUE},
    sync::{ReplicaPos, ReplicaView, SyncOutcome, SyncWait},
    token::{self, Token, Tokens},
    trust::{Cidrs, Hop, PeerAuth},
    txid::{Position, TxId},
    upstream::{SendError, Upstream},
    ProxyBody,
};

/// A request is forwarded at most twice: by the node it arrived at, and once more by a node
/// whose view of the primary is newer (an old leader handing over sends it on to the new
/// one, which is often the very node that forwarded it). A request that arrives after two
/// hops is only ever served or held, never sent on, so loops end; more hops is a loop.
const MAX_HOPS: u8 = 2;
/// How long a connection to the local app may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retry pace for an upstream that refuses connections.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Status and metrics contributed by the role source (e.g. the election).
pub trait StatusExtension: Send + Sync {
    fn status(&self) -> serde_json::Value;
    fn metrics(&self, out: &mut String);
}

/// The request path, shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    pub(crate) inner: Arc<Shared>,
    /// The local app, over pooled connections: one pool per runtime, so a request and
    /// the app connection it uses are served by the same thread (see
    /// [`Proxy::with_own_pool`]).
    app: Arc<Upstream>,
}

pub(crate) struct Shared {
    pub(crate) cfg: ProxyConfig,
    target: http::Uri,
    passthrough: Patterns,
    always_forward: Patterns,
    tokens: Tokens,
    pub(crate) txid: LocalTxid,
    pub(crate) primary: watch::Receiver<Primary>,
    /// The primary's proxy: a connection of its own per request (see `crate::forward`).
    to_primary: Forwarder,
    pub(crate) metrics: Metrics,
    /// Writes sent to the local app as the primary's and not yet answered to the client.
    writes: WritesInFlight,
    pub(crate) extension: Option<Arc<dyn StatusExtension>>,
    /// Whether the local LiteFS is up, when the server follows it: down, `/litefs/health`
    /// answers 503 (a load balancer stops sending here).
    pub(crate) litefs_up: Option<watch::Receiver<bool>>,
    /// Asked right before a request goes to the local app as the primary's: may this node
    /// take writes at this instant? (The role watch can be late after a pause.)
    fence: Option<Fence>,
    /// `sync_replicas`: writes wait for replicas before they are answered.
    sync: SyncWait,
    /// Who is a peer proxy (its hop header believed), and how to sign ours.
    peers: PeerAuth,
    /// `trusted_proxies`: whose `X-Forwarded-*` are kept.
    trusted_proxies: Cidrs,
    /// `admin_allow`: who may read `/litefs/status` and `/litefs/metrics`.
    admin_allow: Cidrs,
}

/// See [`Proxy::with_fence`].
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

/// A count of writes in flight at the local app ([`Proxy::writes_in_flight`]).
#[derive(Clone)]
pub struct WritesInFlight(Arc<watch::Sender<usize>>);

impl Default for WritesInFlight {
    fn default() -> Self {
        WritesInFlight(Arc::new(watch::channel(0).0))
    }
}

impl WritesInFlight {
    fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// How many there are now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until none is in flight, at most `within`; false when some still are.
    pub async fn drained(&self, within: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let drained = matches!(
            tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        );
        drained
    }
}

struct InFlightGuard(Arc<watch::Sender<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How often a write held by a failing fence checks it again.
const FENCE_RECHECK: Duration = Duration::from_millis(10);

/// What a request is, decided once from method, path and config.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Passthrough,
    Read,
    Write,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Passthrough => "passthrough",
            Class::Read => "read",
            Class::Write => "write",
        }
    }
}

/// A request taken apart so it can be sent, held, or (if it never left) sent again.
struct Pending {
    head: Parts,
    body: Pin<Box<ClientBody>>,
    /// Whether the client's body failed (then a failed send is the client's fault).
    fault: FaultCell,
    upgrade: Option<OnUpgrade>,
    /// Token the client brought; a write mints only above it.
    token: Option<Token>,
    /// A read replayed on the primary (the app asked for it, see `crate::replay`): sent on
    /// with [`REPLAY_MARK`], and the primary serves it as a write (mints, syncs).
    replay: bool,
}

/// What a local app's answer asking for a replay on the primary may lead to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Replay {
    /// A client's read (no hop) on a replica: replayed once if it had no body.
    Allowed,
    /// A read that arrived forwarded by another proxy: never sent on again.
    Forwarded,
    /// A write, or a read this node serves as the primary: the header is removed, the
    /// answer kept.
    Never,
    /// A passthrough path: no routing logic, the header is removed all the same.
    Passthrough,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig, primary: watch::Receiver<Primary>) -> Result<Proxy, ConfigError> {
        cfg.validate()?;
        let target = cfg.target_uri()?;
        let passthrough = Patterns::new(&cfg.passthrough).map_err(|e| {
            ConfigError::new(
                "proxy.passthrough",
                cfg.passthrough.join(","),
                e.to_string(),
            )
        })?;
        let always_forward = Patterns::new(&cfg.always_forward).map_err(|e| {
            ConfigError::new(
                "proxy.always_forward",
                cfg.always_forward.join(","),
                e.to_string(),
            )
        })?;
        let tokens = Tokens::new(
            &cfg.cookie_name,
            cfg.cookie_max_age,
            cfg.token_secret.as_deref(),
        );
        let txid = LocalTxid::new(&cfg.mount, &cfg.db);
        let trusted_proxies = Cidrs::parse("proxy.trusted_proxies", &cfg.trusted_proxies)?;
        let admin_allow = Cidrs::parse("proxy.admin_allow", &cfg.admin_allow)?;
        Ok(Proxy {
            app: Arc::new(Upstream::new(APP_CONNECT_TIMEOUT)),
            inner: Arc::new(Shared {
                target,
                passthrough,
                always_forward,
                tokens,
                txid,
                primary,
                to_primary: Forwarder::new(Duration::from_secs(1)),
                metrics: Metrics::default(),
                writes: WritesInFlight::default(),
                extension: None,
                litefs_up: None,
                fence: None,
                sync: SyncWait {
                    k: cfg.sync_replicas.unwrap_or(0),
                    timeout: cfg.sync_timeout,
                    on_timeout: cfg.on_sync_timeout,
                    replicas: None,
                },
                peers: PeerAuth::default(),
                trusted_proxies,
                admin_allow,
                cfg,
            }),
        })
    }

    /// Adds the role source's status and metrics to `/litefs/status` and `/litefs/metrics`.
    /// Call before the proxy is shared.
    pub fn with_extension(mut self, ext: Arc<dyn StatusExtension>) -> Proxy {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.extension = Some(ext);
        }
        self
    }

    /// Follows whether the local LiteFS is up: `/litefs/health` answers 503 while it is down,
    /// and `/litefs/status` says `"litefs": "up"` or `"down"`. Call before the proxy is shared.
    pub fn with_litefs_up(mut self, up: watch::Receiver<bool>) -> Proxy {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.litefs_up = Some(up);
        }
        self
    }

    /// Checks `fence` right before a request goes to the local app as the primary's (writes,
    /// and reads served because this node is primary): while it says no, this node acts as
    /// a replica with no primary known. Call before the proxy is shared.
    pub fn with_fence(mut self, fence: Fence) -> Proxy {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.fence = Some(fence);
        }
        self
    }

    /// The replicas' positions for `sync_replicas` (from the role source). Without them, a
    /// write with `sync_replicas` above zero never collects its replicas. Call before the
    /// proxy is shared.
    pub fn with_replicas(mut self, replicas: watch::Receiver<ReplicaView>) -> Proxy {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.sync.replicas = Some(replicas);
        }
        self
    }

    /// Who the peer proxies are: with the cluster `secret`, hop headers are signed and only
    /// signed ones are believed; without, they are believed from `addrs` only (default: a
    /// loopback-only [`PeerAuth`]). Call before the proxy is shared.
    pub fn with_peers(mut self, peers: PeerAuth) -> Proxy {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.peers = peers;
        }
        self
    }

    /// The same proxy with a pool of app connections of its own, for a runtime of its own
    /// (`serve_on_cores`): a connection of another runtime's pool would be served by that
    /// runtime's thread, a cross-thread wake-up each way for every request.
    pub fn with_own_pool(&self) -> Proxy {
        Proxy {
            inner: self.inner.clone(),
            app: Arc::new(Upstream::new(APP_CONNECT_TIMEOUT)),
        }
    }

    /// Whether this node is the primary and may act as one right now.
    fn local_primary(&self) -> bool {
        let s = &*self.inner;
        *s.primary.borrow() == Primary::Local && s.fence.as_ref().is_none_or(|f| f())
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.inner.cfg
    }

    pub fn local_txid(&self) -> &LocalTxid {
        &self.inner.txid
    }

    /// The writes this node's app is serving as the primary's (a planned step-down waits
    /// for them, so their positions are in what it hands over).
    pub fn writes_in_flight(&self) -> WritesInFlight {
        self.inner.writes.clone()
    }

    /// Requests currently held waiting for a primary.
    pub fn held_requests(&self) -> i64 {
        self.inner.metrics.held.get()
    }

    /// Client connections: (served by hyper, parked while idle).
    pub fn client_connections(&self) -> (i64, i64) {
        let m = &self.inner.metrics;
        (m.conns_serving.get(), m.conns_parked.get())
    }

    /// Times an idle client connection was parked.
    pub fn connection_parks(&self) -> u64 {
        self.inner.metrics.parks.get()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Reads currently waiting for replication.
    pub fn waiting_reads(&self) -> i64 {
        self.inner.metrics.waiting.get()
    }

    /// The position watcher of the configured database; `serve` runs it.
    pub(crate) async fn run_watcher(&self, shutdown: impl std::future::Future<Output = ()>) {
        let cfg = &self.inner.cfg;
        let api = (cfg.txid_source == TxidSource::Events).then(|| LitefsApi::new(&cfg.litefs_api));
        self.inner
            .txid
            .clone()
            .run(cfg.txid_source, api, cfg.pos_poll_interval, shutdown)
            .await;
    }

    /// Handles one request from `client`.
    pub async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        let s = &*self.inner;
        if let Some(resp) = self.reject_or_answer(&req, client) {
            return resp;
        }
        let class = self.classify(req.method(), req.uri().path());
        let in_flight = s.metrics.in_flight.inc();
        let _in_flight = InFlight(&s.metrics);
        let result = if usize::try_from(in_flight).unwrap_or(usize::MAX) >= s.cfg.max_in_flight {
            Err(ProxyError::Overloaded(s.cfg.max_in_flight))
        } else {
            self.route(req, class, client).await
        };
        match result {
            Ok((resp, outcome)) => {
                s.metrics.request(class.label(), outcome);
                resp
            }
            Err(e) => {
                s.metrics.request(class.label(), e.outcome());
                // The connection's span (with the client's address) is at `debug`.
                tracing::info!(error = %e, class = class.label(), client.addr = %client.ip, "request failed");
                e.into_response()
            }
        }
    }

    /// Requests answered before any routing: malformed ones, and the proxy's own endpoints.
    fn reject_or_answer(
        &self,
        req: &Request<Incoming>,
        client: &Client,
    ) -> Option<Response<ProxyBody>> {
        let s = &*self.inner;
        let reject = |e: ProxyError| {
            s.metrics.request("rejected", e.outcome());
            tracing::debug!(error = %e, "request rejected");
            Some(e.into_response())
        };
        if req.method() == Method::CONNECT {
            return reject(ProxyError::MethodNotAllowed {
                method: Method::CONNECT,
                allow: None,
            });
        }
        match req.headers().get_all(header::HOST).iter().count() {
            0 if req.version() == Version::HTTP_11 => {
                return reject(ProxyError::BadRequest("no Host header"));
            }
            0 | 1 => {}
            _ => return reject(ProxyError::BadRequest("more than one Host header")),
        }
        let path = req.uri().path();
        let rest = path.strip_prefix(s.cfg.endpoint_prefix.as_str())?;
        if !rest.starts_with('/') {
            return None;
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return reject(ProxyError::MethodNotAllowed {
                method: req.method().clone(),
                allow: Some("GET, HEAD"),
            });
        }
        if rest != endpoints::HEALTH && !s.admin_allow.contains(client.ip) {
            return reject(ProxyError::Forbidden("not in proxy.admin_allow"));
        }
        Some(endpoints::answer(s, rest))
    }

    /// Sends a request of `class` on its way.
    async fn route(
        &self,
        mut req: Request<Incoming>,
        class: Class,
        client: &Client,
    ) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let s = &*self.inner;
        let upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut head, body) = req.into_parts();
        // The hop header is ours: believed only from a peer, never passed to an app (a
        // forward gets a fresh one).
        let hop = s.peers.verify(client.ip, &head);
        head.headers.remove(HOP_HEADER);
        // A replay's mark, like the hop header, is a peer's claim only.
        let replayed = head.headers.remove(REPLAY_MARK).is_some() && matches!(hop, Hop::Peer(_));
        let hops = match hop {
            Hop::Peer(n) => n,
            Hop::None => 0,
            Hop::Untrusted => {
                s.metrics.untrusted_hops.inc();
                tracing::debug!(client = %client.ip, "hop header from a non-peer ignored");
                0
            }
        };
        let found = match class {
            Class::Passthrough => Default::default(),
            _ => s.tokens.extract(&head.headers),
        };
        if found.invalid > 0 {
            s.metrics.invalid_tokens.inc_by(u64::from(found.invalid));
        }
        headers::strip_hop_by_hop(&mut head.headers);
        let trusted = matches!(hop, Hop::Peer(_)) || s.trusted_proxies.contains(client.ip);
        headers::add_forwarded(&mut head.headers, client, trusted);
        let (body, fault) = ClientBody::new(body, s.cfg.body_read_timeout);
        let pending = Pending {
            head,
            body: Box::pin(body),
            fault,
            upgrade,
            token: found.token,
            replay: false,
        };
        if hops > MAX_HOPS {
            return Err(ProxyError::Loop(hops));
        }
        match class {
            Class::Passthrough => self.to_app(pending, false, Replay::Passthrough).await,
            Class::Read if replayed => {
                // Another proxy's app asked for the primary: served as the write it is.
                let pending = Pending {
                    replay: true,
                    ..pending
                };
                self.to_primary(pending, hops, true).await
            }
            Class::Read => self.read(pending, hops).await,
            Class::Write => self.to_primary(pending, hops, true).await,
        }
    }

    /// Passthrough only when the raw path and its normalized forms all match a passthrough
    /// pattern (see [`patterns::path_forms`]); a path whose forms disagree is a write, so
    /// `/static/../api` cannot slip a write past the primary. `always_forward` applies when
    /// any form matches.
    fn classify(&self, method: &Method, path: &str) -> Class {
        let s = &*self.inner;
        let forms = patterns::path_forms(path);
        let passthrough = forms.iter().filter(|f| s.passthrough.matches(f)).count();
        if passthrough == forms.len() {
            Class::Passthrough
        } else if passthrough == 0
            && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            && !forms.iter().any(|f| s.always_forward.matches(f))
        {
            Class::Read
        } else {
            Class::Write
        }
    }

    async fn read(
        &self,
        p: Pending,
        hops: u8,
    ) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let s = &*self.inner;
        let replay = if hops == 0 {
            Replay::Allowed
        } else {
            Replay::Forwarded
        };
        let Some(token) = p.token else {
            return self.to_app(p, false, replay).await;
        };
        if self.local_primary() {
            return self.to_app(p, false, Replay::Never).await;
        }
        match s.txid.check(token) {
            TokenCheck::Satisfied => return self.to_app(p, false, replay).await,
            TokenCheck::Behind => {}
            off => return self.off_history(p, hops, off).await,
        }
        if hops > 0 {
            // A fallback read from a replica whose view of the primary is stale: send it
            // on to the primary this node knows (once), or hold it.
            return self.to_primary(p, hops, false).await;
        }
        let start = Instant::now();
        if s.txid.waiting() >= s.cfg.max_waiting_reads {
            s.metrics.read_wait(WaitOutcome::Fallback, 0.0);
            return self.to_primary(p, hops, false).await;
        }
        let caught_up = {
            let _w = GaugeGuard::new(&s.metrics.waiting);
            s.txid.wait_for(token.txid, s.cfg.read_wait_timeout).await
        };
        let waited = start.elapsed().as_secs_f64();
        if caught_up {
            s.metrics.read_wait(WaitOutcome::CaughtUp, waited);
            return match s.txid.check(token) {
                TokenCheck::Satisfied => self.to_app(p, false, replay).await,
                off => self.off_history(p, hops, off).await,
            };
        }
        match s.cfg.on_read_timeout {
            OnReadTimeout::Error => {
                s.metrics.read_wait(WaitOutcome::Timeout, waited);
                Err(ProxyError::ReadTimeout(s.cfg.read_wait_timeout))
            }
            OnReadTimeout::Primary => {
                s.metrics.read_wait(WaitOutcome::Fallback, waited);
                self.to_primary(p, hops, false).await
            }
        }
    }

    /// A read whose token this node's database does not satisfy although its TXID is
    /// reached: another history, or a position never observed here. Counted, and sent to
    /// the primary, as a read-timeout fallback is. (`Behind` after a wait that reached the
    /// TXID: the position went back meanwhile; counted as unverified.)
    async fn off_history(
        &self,
        p: Pending,
        hops: u8,
        check: TokenCheck,
    ) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let m = &self.inner.metrics;
        match check {
            TokenCheck::Diverged => m.token_diverged.inc(),
            _ => m.token_unverified.inc(),
        };
        tracing::debug!(?check, token = ?p.token, "read's token not satisfied here; to the primary");
        self.to_primary(p, hops, false).await
    }

    /// Sends a request to the primary: the local app when this node is primary, else the
    /// primary's proxy. With no primary reachable it is held up to
    /// `primary_redirect_timeout`. A request that arrived forwarded is sent on at most once
    /// more (see `MAX_HOPS`).
    async fn to_primary(
        &self,
        mut p: Pending,
        hops: u8,
        is_write: bool,
    ) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let s = &*self.inner;
        let deadline = Instant::now() + s.cfg.primary_redirect_timeout;
        let mut primary = s.primary.clone();
        let mut _held = None;
        loop {
            // Only the URL is needed (a cheap, shared clone); the rest stays in the watch.
            let target = match &*primary.borrow_and_update() {
                Primary::Local => None,
                Primary::Remote { url, .. } if hops < MAX_HOPS => Some(Some(url.clone())),
                _ => Some(None),
            };
            let mut refused = false;
            let mut fenced = false;
            let target = match target {
                None if !self.local_primary() => {
                    fenced = true;
                    Some(None)
                }
                t => t,
            };
            match target {
                None => return self.to_app(p, is_write, Replay::Never).await,
                Some(Some(url)) => {
                    let start = Instant::now();
                    // Nothing has left while connecting: a new primary (or the deadline)
                    // abandons the attempt, so a connect hanging on a dead host does not
                    // delay the write past the election.
                    let connected = tokio::select! {
                        c = s.to_primary.connect(&url) => Some(c),
                        _ = changes(&mut primary) => None,
                        _ = tokio::time::sleep_until(deadline) => None,
                    };
                    match connected {
                        Some(Ok(conn)) => {
                            if p.replay {
                                p.head.headers.insert(REPLAY_MARK, REPLAY_MARK_VALUE);
                            }
                            let hop = s.peers.hop_value(hops.saturating_add(1), &p.head);
                            p.head.headers.insert(HOP_HEADER, hop);
                            let resp = conn
                                .send(&url, &p.head, p.body, &mut p.upgrade)
                                .await
                                .map_err(|e| blame(&p.fault, ProxyError::Primary(e), s))?;
                            s.metrics
                                .forward_latency
                                .observe(start.elapsed().as_secs_f64());
                            let mut resp = response(resp);
                            // The primary's proxy removed any replay header; one that got
                            // through (an older proxy) is not acted on a second time.
                            let ask = replay::take(resp.headers_mut(), &primary.borrow());
                            if p.replay && ask == Ask::Primary {
                                resp.extensions_mut().insert(AskedAgain);
                            }
                            return Ok((resp, "forwarded"));
                        }
                        Some(Err(why)) => {
                            tracing::debug!(error = %why, primary = %url, "primary unreachable; holding");
                            refused = true;
                        }
                        None if Instant::now() < deadline => continue,
                        None => {}
                    }
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProxyError::NoPrimary(s.cfg.primary_redirect_timeout));
            }
            _held.get_or_insert_with(|| GaugeGuard::new(&s.metrics.held));
            let wake = if fenced {
                deadline.min(now + FENCE_RECHECK)
            } else if refused {
                deadline.min(now + RETRY_EVERY)
            } else {
                deadline
            };
            tokio::select! {
                _ = changes(&mut primary) => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Sends to the local app, retrying refused connections briefly while it boots.
    /// After a write, mints the token from the position file. An answer asking for a
    /// replay on the primary is replayed there once when `replay` allows (see
    /// [`Proxy::replay`]); its replay header never reaches the client.
    async fn to_app(
        &self,
        mut p: Pending,
        mint: bool,
        replay: Replay,
    ) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let s = &*self.inner;
        // A write, from the moment it may reach the app until it is answered (its replicas
        // included, with `sync_replicas`).
        let _in_flight =
            mint.then(|| (s.writes.enter(), GaugeGuard::new(&s.metrics.writes_at_app)));
        let deadline = Instant::now() + s.cfg.target_connect_retry;
        // Only a request without a body may be sent twice: nothing of it can be half-read.
        let bodyless = p.body.is_end_stream();
        loop {
            match self
                .app
                .send(&s.target, &p.head, p.body, &mut p.upgrade)
                .await
            {
                Ok(resp) => {
                    let mut resp = response(resp);
                    let ask = replay::take(resp.headers_mut(), &s.primary.borrow());
                    if ask != Ask::None {
                        let outcome = match (ask, replay) {
                            (Ask::Elsewhere, _) | (_, Replay::Passthrough) => {
                                ReplayOutcome::Ignored
                            }
                            (Ask::Primary, Replay::Never) => ReplayOutcome::OnPrimary,
                            (Ask::Primary, Replay::Forwarded) => ReplayOutcome::RefusedForwarded,
                            (Ask::Primary, Replay::Allowed) if !bodyless => {
                                ReplayOutcome::RefusedBody
                            }
                            (Ask::Primary, Replay::Allowed) if self.local_primary() => {
                                // Became the primary meanwhile: its app's answer stands.
                                ReplayOutcome::OnPrimary
                            }
                            (Ask::Primary, Replay::Allowed) | (Ask::None, _) => {
                                replay::discard(resp.into_body());
                                let again = Pending {
                                    head: p.head,
                                    body: Box::pin(ClientBody::empty(s.cfg.body_read_timeout).0),
                                    fault: FaultCell::default(),
                                    upgrade: p.upgrade,
                                    token: p.token,
                                    replay: true,
                                };
                                // Boxed: a replay goes through `to_primary`, which calls `to_app`.
                                return Box::pin(self.replay(again)).await;
                            }
                        };
                        tracing::debug!(outcome = outcome.label(), "replay header removed");
                        s.metrics.replay(outcome);
                    }
                    if mint {
                        let pos = self.mint(p.token, resp.headers_mut());
                        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                            self.sync(pos).await?;
                        }
                    }
                    return Ok((resp, "local"));
                }
                Err(SendError::NotSent(body, why)) => {
                    if Instant::now() + RETRY_EVERY > deadline {
                        return Err(ProxyError::App(why));
                    }
                    p.body = body;
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Err(SendError::MaybeSent(why)) => {
                    return Err(blame(&p.fault, ProxyError::App(why), s))
                }
            }
        }
    }

    /// Sends a client's read, which the local app asked to be served by the primary, to the
    /// primary once, as a write is sent (held while none is reachable); the primary serves
    /// it as a write. Counted by outcome.
    async fn replay(&self, p: Pending) -> Result<(Response<ProxyBody>, &'static str), ProxyError> {
        let s = &*self.inner;
        tracing::debug!(path = %p.head.uri.path(), "app asked for the primary; replaying there");
        match self.to_primary(p, 0, true).await {
            Ok((resp, _)) => {
                s.metrics
                    .replay(match resp.extensions().get::<AskedAgain>() {
                        Some(_) => ReplayOutcome::Again,
                        None => ReplayOutcome::Replayed,
                    });
                Ok((resp, "replayed"))
            }
            Err(e) => {
                s.metrics.replay(ReplayOutcome::Failed);
                Err(e)
            }
        }
    }

    /// Mints the token after a write from a fresh read of the position, which it returns.
    fn mint(&self, token: Option<Token>, headers: &mut http::HeaderMap) -> Option<Position> {
        let s = &*self.inner;
        // With the pos-file source, the reading is also recorded, so this primary's history
        // holds what it minted (its replicas' reports are checked against it). The events
        // source records every position by itself.
        let read = match s.cfg.txid_source {
            TxidSource::PosFile => s.txid.refresh_now(),
            TxidSource::Events => s.txid.read_position(),
        };
        match read {
            Ok(Some(pos)) => {
                if token::should_mint(pos, token) {
                    s.tokens.mint(pos, headers);
                }
                Some(pos)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot mint token: position unreadable");
                None
            }
        }
    }

    /// With `sync_replicas`, waits until enough replicas hold `pos` (the position after the
    /// write); `Err` when the write must not be acknowledged. An unreadable position cannot
    /// be waited for and fails the same way.
    async fn sync(&self, pos: Option<Position>) -> Result<(), ProxyError> {
        let s = &*self.inner;
        if !s.sync.enabled() {
            return Ok(());
        }
        let start = Instant::now();
        let outcome = match pos {
            Some(pos) => {
                let target = ReplicaPos {
                    txid: pos.txid.0,
                    checksum: pos.post_apply_checksum,
                };
                let in_history = |txid: u64, checksum: u64| {
                    s.txid.check(Token {
                        txid: TxId(txid),
                        checksum: Some(checksum),
                    }) == TokenCheck::Satisfied
                };
                s.sync.wait(target, &in_history).await
            }
            None => SyncOutcome::Failed,
        };
        s.metrics.sync(outcome, start.elapsed().as_secs_f64());
        match outcome {
            SyncOutcome::Failed => Err(ProxyError::NotReplicated(s.sync.k, s.sync.timeout)),
            SyncOutcome::Degraded => {
                tracing::warn!(
                    replicas = s.sync.k,
                    timeout = ?s.sync.timeout,
                    "write answered without its replicas (on_sync_timeout = degrade)"
                );
                Ok(())
            }
            SyncOutcome::Off | SyncOutcome::Replicated => Ok(()),
        }
    }
}

/// The error of a send that failed: the client's, when its body failed (malformed, cut off
/// or stalled), else the upstream's.
fn blame(fault: &FaultCell, upstream: ProxyError, s: &Shared) -> ProxyError {
    let fault = fault.get();
    if fault.is_some() {
        tracing::debug!(upstream = %upstream, "send failed on the client's body");
    }
    match fault {
        Some(ClientFault::Stalled) => ProxyError::BodyTimeout(s.cfg.body_read_timeout),
        Some(ClientFault::Malformed) => {
            ProxyError::ClientBody("malformed or cut off by the client".into())
        }
        None => upstream,
    }
}

/// On a replay's answer whose replay header asked for the primary again (answered as is).
#[derive(Clone, Copy)]
struct AskedAgain;

/// Counts a request in `in_flight` until it is answered.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Resolves on the next change of the primary; never, once the role source is gone.
async fn changes(primary: &mut watch::Receiver<Primary>) {
    if primary.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An upstream response on its way back: hop-by-hop headers removed, body streamed.
fn response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    // Our side of the client connection speaks its own HTTP version, not the upstream's.
    parts.version = http::Version::HTTP_11;
    if parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    Response::from_parts(parts, Either::Left(body))
}
