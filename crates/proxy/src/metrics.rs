//! Prometheus metrics of the request path, encoded at `/litefs/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// Label set `{class, outcome}`; both are static strings.
pub type ClassOutcome = [(&'static str, &'static str); 2];

pub struct Metrics {
    registry: Registry,
    pub requests: Family<ClassOutcome, Counter>,
    /// Seconds reads spent waiting for the local TXID, whatever the outcome.
    pub stall_wait: Histogram,
    pub read_waits: Family<[(&'static str, &'static str); 1], Counter>,
    /// Seconds from sending to the primary's proxy until its response head.
    pub forward_latency: Histogram,
    pub held: Gauge<i64, AtomicI64>,
    /// Writes at the local app as the primary's, not yet answered to the client.
    pub writes_at_app: Gauge<i64, AtomicI64>,
    /// Requests being handled (response head not yet sent), against `max_in_flight`.
    pub in_flight: Gauge<i64, AtomicI64>,
    pub waiting: Gauge<i64, AtomicI64>,
    pub invalid_tokens: Counter<u64, AtomicU64>,
    /// Hop headers from clients that are no peer (unsigned, forged, stale): ignored.
    pub untrusted_hops: Counter<u64, AtomicU64>,
    /// Reads on a replica whose token named another history than this node's.
    pub token_diverged: Counter<u64, AtomicU64>,
    /// Reads on a replica whose token's checksum this node never observed at its TXID.
    pub token_unverified: Counter<u64, AtomicU64>,
    pub local_txid: Gauge<i64, AtomicI64>,
    /// LiteFS's replication lag (`<mount>/.lag`) in seconds, read when scraped.
    pub replication_lag: Gauge<f64, AtomicU64>,
    pub is_primary: Gauge<i64, AtomicI64>,
    /// Client connections being served by hyper.
    pub conns_serving: Gauge<i64, AtomicI64>,
    /// Idle keep-alive client connections parked without hyper's buffers.
    pub conns_parked: Gauge<i64, AtomicI64>,
    /// Times a connection was parked.
    pub parks: Counter<u64, AtomicU64>,
    /// Client connections accepted, by the runtime (`serve_on_cores`) that serves them.
    pub accepted: Family<[(&'static str, String); 1], Counter>,
    /// Seconds writes on the primary waited for `sync_replicas` replicas.
    pub sync_wait: Histogram,
    pub syncs: Family<[(&'static str, &'static str); 1], Counter>,
    /// App answers that asked for a replay on the primary, by what became of them.
    pub replays: Family<[(&'static str, &'static str); 1], Counter>,
}

/// What became of an app's answer asking for a replay on the primary (`crate::replay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Sent to the primary; its answer went to the client.
    Replayed,
    /// Replayed, and the primary's answer asked again: answered as is (never replayed twice).
    Again,
    /// The request had a body (it may not be sent twice): the app's answer, as is.
    RefusedBody,
    /// The request had arrived forwarded by another proxy: never replayed on.
    RefusedForwarded,
    /// Asked on the primary itself: the header removed, the answer kept.
    OnPrimary,
    /// A `fly-replay` naming no primary (`region=`, another instance): removed, not acted on.
    Ignored,
    /// The replay could not be delivered (no primary in time, or it failed).
    Failed,
}

impl ReplayOutcome {
    pub const ALL: [ReplayOutcome; 7] = [
        ReplayOutcome::Replayed,
        ReplayOutcome::Again,
        ReplayOutcome::RefusedBody,
        ReplayOutcome::RefusedForwarded,
        ReplayOutcome::OnPrimary,
        ReplayOutcome::Ignored,
        ReplayOutcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ReplayOutcome::Replayed => "replayed",
            ReplayOutcome::Again => "again",
            ReplayOutcome::RefusedBody => "refused_body",
            ReplayOutcome::RefusedForwarded => "refused_forwarded",
            ReplayOutcome::OnPrimary => "on_primary",
            ReplayOutcome::Ignored => "ignored",
            ReplayOutcome::Failed => "failed",
        }
    }
}

/// How a stalled read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    CaughtUp,
    /// Timed out and answered 504 (`on_read_timeout = "error"`).
    Timeout,
    /// Sent to the primary: timed out with `on_read_timeout = "primary"`, or over the waiter cap.
    Fallback,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("litefs_proxy");
        let requests = Family::<ClassOutcome, Counter>::default();
        registry.register(
            "requests",
            "Requests by class and outcome",
            requests.clone(),
        );
        let stall_wait = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        registry.register(
            "stall_wait_seconds",
            "Time reads waited for the local TXID",
            stall_wait.clone(),
        );
        let read_waits = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register("read_waits", "Stalled reads by outcome", read_waits.clone());
        let forward_latency = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "forward_seconds",
            "Time from forwarding to the primary until its response head",
            forward_latency.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "held_requests",
            "Requests held waiting for a primary",
            held.clone(),
        );
        let writes_at_app = Gauge::default();
        registry.register(
            "writes_at_app",
            "Writes at the local app as the primary's, not yet answered (replicas included with sync_replicas); a planned step-down waits for them",
            writes_at_app.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled, response head not yet sent (capped by max_in_flight)",
            in_flight.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "waiting_reads",
            "Reads waiting for replication",
            waiting.clone(),
        );
        let invalid_tokens = Counter::default();
        registry.register(
            "invalid_tokens",
            "Malformed, unsigned or forged tokens ignored",
            invalid_tokens.clone(),
        );
        let untrusted_hops = Counter::default();
        registry.register(
            "untrusted_hop_headers",
            "litefs-proxy-hop headers from clients that are no peer proxy, ignored",
            untrusted_hops.clone(),
        );
        let token_checks = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "token_checks",
            "Reads a replica sent to the primary because its token named another history \
             (diverged) or a position it cannot verify (unverified)",
            token_checks.clone(),
        );
        let token_diverged = token_checks
            .get_or_create(&[("result", "diverged")])
            .clone();
        let token_unverified = token_checks
            .get_or_create(&[("result", "unverified")])
            .clone();
        let local_txid = Gauge::default();
        registry.register(
            "local_txid",
            "Local TXID of the database",
            local_txid.clone(),
        );
        let replication_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "replication_lag_seconds",
            "Replication lag LiteFS reports in its .lag file (0 on the primary, and while absent)",
            replication_lag.clone(),
        );
        let is_primary = Gauge::default();
        registry.register(
            "is_primary",
            "1 while this node is the primary",
            is_primary.clone(),
        );
        let conns = Family::<[(&'static str, &'static str); 1], Gauge<i64, AtomicI64>>::default();
        registry.register(
            "client_connections",
            "Open client connections: serving, or parked while idle (no buffers held)",
            conns.clone(),
        );
        let conns_serving = conns.get_or_create(&[("state", "serving")]).clone();
        let conns_parked = conns.get_or_create(&[("state", "parked")]).clone();
        let parks = Counter::default();
        registry.register(
            "client_connection_parks",
            "Times an idle keep-alive client connection was parked",
            parks.clone(),
        );
        let accepted = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "client_connections_accepted",
            "Client connections accepted, by the worker runtime serving them",
            accepted.clone(),
        );
        let sync_wait = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "sync_wait_seconds",
            "Time writes on the primary waited for sync_replicas replicas to hold them",
            sync_wait.clone(),
        );
        let syncs = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "syncs",
            "Writes on the primary by replication outcome: replicated, failed (503), degraded (answered without enough replicas)",
            syncs.clone(),
        );
        let replays = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "replays",
            "App answers on reads that asked for the primary (litefs-replay: primary, or a \
             fly-replay naming it), by outcome",
            replays.clone(),
        );
        for o in ReplayOutcome::ALL {
            let _ = replays.get_or_create(&[("outcome", o.label())]);
        }
        Metrics {
            replays,
            sync_wait,
            syncs,
            parks,
            accepted,
            conns_serving,
            conns_parked,
            registry,
            requests,
            stall_wait,
            read_waits,
            forward_latency,
            held,
            writes_at_app,
            in_flight,
            waiting,
            invalid_tokens,
            untrusted_hops,
            token_diverged,
            token_unverified,
            local_txid,
            replication_lag,
            is_primary,
        }
    }
}

impl Metrics {
    pub fn request(&self, class: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&[("class", class), ("outcome", outcome)])
            .inc();
    }

    /// The counter of connections accepted by `worker`.
    pub fn accepted_by(&self, worker: usize) -> Counter {
        self.accepted
            .get_or_create(&[("worker", worker.to_string())])
            .clone()
    }

    pub fn sync(&self, outcome: crate::sync::SyncOutcome, seconds: f64) {
        self.syncs
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
        self.sync_wait.observe(seconds);
    }

    pub fn replay(&self, outcome: ReplayOutcome) {
        self.replays
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    pub fn read_wait(&self, outcome: WaitOutcome, seconds: f64) {
        let label = match outcome {
            WaitOutcome::CaughtUp => "caught_up",
            WaitOutcome::Timeout => "timeout",
            WaitOutcome::Fallback => "fallback",
        };
        self.read_waits.get_or_create(&[("outcome", label)]).inc();
        self.stall_wait.observe(seconds);
    }

    /// Prometheus text format (without the trailing `# EOF`, so more can be appended).
    pub fn encode(&self, out: &mut String) {
        if encode(out, &self.registry).is_ok() {
            if let Some(stripped) = out.strip_suffix("# EOF\n") {
                out.truncate(stripped.len());
            }
        }
    }
}

/// Counts a held or waiting request for as long as it lives.
pub struct GaugeGuard<'a>(&'a Gauge<i64, AtomicI64>);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a Gauge<i64, AtomicI64>) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one client connection as serving or parked for as long as it lives.
pub struct ConnectionGauge<'a> {
    m: &'a Metrics,
    parked: bool,
}

impl<'a> ConnectionGauge<'a> {
    pub fn new(m: &'a Metrics) -> Self {
        m.conns_serving.inc();
        ConnectionGauge { m, parked: false }
    }

    pub fn set_parked(&mut self, parked: bool) {
        if parked != self.parked {
            if parked {
                self.m.parks.inc();
            }
            self.gauge().dec();
            self.parked = parked;
            self.gauge().inc();
        }
    }

    fn gauge(&self) -> &Gauge<i64, AtomicI64> {
        if self.parked {
            &self.m.conns_parked
        } else {
            &self.m.conns_serving
        }
    }
}

impl Drop for ConnectionGauge<'_> {
    fn drop(&mut self) {
        self.gauge().dec();
    }
}
