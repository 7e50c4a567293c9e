//! The per-request path: one snapshot load, the core's decision with its gates (kill,
//! breaker, health, bulkhead), one upstream attempt or two (fallback to stable), and the
//! outcome recorded when the response ends: breaker, metrics, access log.

use crate::body::{reclaimable, ReqBody, RespBody};
use crate::facts::HttpFacts;
use crate::headers::{self, X_RAMPART_BACKEND, X_RAMPART_ERROR, X_RAMPART_ROUTE, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::snapshot::{
    code_class_index, RouteRuntime, SlotRuntime, Snapshot, CODE_CLASSES, OWN_BACKEND,
};
use crate::upstream::{InflightGuard, UpstreamRuntime};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, RETRY_AFTER, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rampart_core::breaker::{Admission, Outcome, Transition};
use rampart_core::config::{BackendSlot, Config, Fallback, Protocol, Route, UpstreamId};
use rampart_core::decision::{self, Decision, Gates, Reason};
use rampart_core::identity::{self, IpText};
use rampart_core::matching::match_route;
use rampart_core::rollout::{RolloutEvent, RolloutStatus};
use std::cell::Cell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Largest request body buffered for an `idempotent` fallback.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

/// gRPC statuses counted as errors on routes without a breaker block.
const DEFAULT_GRPC_ERRORS: &[u32] = &[2, 4, 8, 13, 14];

/// Something the data plane did that the audit log and operators want to know.
#[derive(Debug, Clone)]
pub enum ProxyEvent {
    /// A rollout verdict ran (pass, inconclusive or fail), possibly changing step or status.
    Rollout {
        /// Route name.
        route: String,
        /// The verdict and its effect.
        event: RolloutEvent,
    },
    /// A breaker changed state.
    Breaker {
        /// Route name.
        route: String,
        /// Backend name.
        backend: String,
        /// The change and its figures.
        transition: Transition,
    },
}

/// Receives [`ProxyEvent`]s (the binary writes them to the audit log).
pub type EventSink = Arc<dyn Fn(&ProxyEvent) + Send + Sync>;

/// Shared state of the data plane.
pub struct ProxyState {
    /// The applied config, resolved; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
    /// Routes killed by an operator on this replica (admin API), by name.
    pub admin_kills: ArcSwap<HashSet<String>>,
    /// Where breaker transitions and other events are reported, once set.
    pub events: OnceLock<EventSink>,
}

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (for `x-forwarded-proto`).
    pub tls: bool,
}

/// Why an upstream attempt failed, as the client and the breaker see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptFailure {
    /// The connection was refused or could not be made: nothing reached the upstream.
    ConnectRefused,
    /// The connection attempt timed out: nothing reached the upstream.
    ConnectTimeout,
    /// The HTTP/2 upstream refused the stream (REFUSED_STREAM, or above a GOAWAY's last
    /// stream id): it processed nothing.
    StreamRefused,
    /// No response headers within `request_timeout`.
    Timeout,
    /// Reset, closed or invalid response.
    Protocol,
}

impl AttemptFailure {
    fn status(self) -> StatusCode {
        match self {
            AttemptFailure::ConnectRefused
            | AttemptFailure::StreamRefused
            | AttemptFailure::Protocol => StatusCode::BAD_GATEWAY,
            AttemptFailure::ConnectTimeout | AttemptFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_name(self) -> &'static str {
        match self {
            AttemptFailure::ConnectRefused | AttemptFailure::ConnectTimeout => "connect_failure",
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::StreamRefused | AttemptFailure::Protocol => "protocol",
        }
    }

    /// Index into [`crate::snapshot::FALLBACK_REASONS`].
    fn fallback_reason(self) -> usize {
        match self {
            AttemptFailure::ConnectRefused
            | AttemptFailure::ConnectTimeout
            | AttemptFailure::StreamRefused => 0,
            AttemptFailure::Protocol => 2,
            AttemptFailure::Timeout => 3,
        }
    }

    fn nothing_sent(self) -> bool {
        matches!(
            self,
            AttemptFailure::ConnectRefused
                | AttemptFailure::ConnectTimeout
                | AttemptFailure::StreamRefused
        )
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `grpc-status`, looked up on every response: a name parsed once, not per lookup.
static GRPC_STATUS: http::header::HeaderName = http::header::HeaderName::from_static("grpc-status");

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A response Rampart makes itself: 502/503/504 with `x-rampart-error`, or for gRPC a
/// trailers-only HTTP 200 carrying `grpc-status` 14 (4 for timeouts).
pub fn own_response(status: StatusCode, error: &'static str, grpc: bool) -> Response<RespBody> {
    if grpc && status.is_server_error() {
        let code = if status == StatusCode::GATEWAY_TIMEOUT {
            "4"
        } else {
            "14"
        };
        let mut response = Response::new(RespBody::empty());
        let headers = response.headers_mut();
        headers.insert(&X_RAMPART_ERROR, HeaderValue::from_static(error));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static(code));
        headers.insert("grpc-message", HeaderValue::from_static(error));
        return response;
    }
    let text = match error {
        "connect_failure" => "rampart: could not connect to the upstream\n",
        "timeout" => "rampart: the upstream did not answer in time\n",
        "bulkhead" => "rampart: the upstream is at its in-flight limit; retry shortly\n",
        "bad_request" => "rampart: malformed request\n",
        _ => "rampart: the upstream's response was invalid or reset\n",
    };
    let mut response = Response::new(RespBody::own(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(&X_RAMPART_ERROR, HeaderValue::from_static(error));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn classify(error: &hyper_util::client::legacy::Error) -> AttemptFailure {
    if !error.is_connect() {
        let mut source: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(error);
        while let Some(e) = source {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                // REFUSED_STREAM, or a graceful GOAWAY whose last stream id is below ours:
                // either way the upstream processed nothing.
                let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
                let above_goaway =
                    h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
                if refused || above_goaway {
                    return AttemptFailure::StreamRefused;
                }
            }
            source = e.source();
        }
        return AttemptFailure::Protocol;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return AttemptFailure::ConnectTimeout;
            }
        }
        source = e.source();
    }
    AttemptFailure::ConnectRefused
}

/// The gates of one request, over the snapshot and the shared state.
struct RequestGates<'a> {
    state: &'a ProxyState,
    snapshot: &'a Snapshot,
    now: Instant,
    admission: Cell<Admission>,
}

impl Gates for RequestGates<'_> {
    fn admin_killed(&self, route: usize) -> bool {
        let kills = self.state.admin_kills.load();
        !kills.is_empty()
            && self
                .snapshot
                .config
                .routes
                .get(route)
                .is_some_and(|r| kills.contains(&r.name))
    }

    fn breaker_admits(&self, route: usize, slot: BackendSlot) -> bool {
        let Some(rt) = self.snapshot.routes.get(route) else {
            return true;
        };
        let Some(slot_rt) = rt.slot(slot) else {
            return true;
        };
        let Some(breaker) = &slot_rt.breaker else {
            return true;
        };
        let (admission, transition) = breaker.admit(self.now);
        if let Some(t) = transition {
            self.state.breaker_transition(self.snapshot, route, slot, t);
        }
        self.admission.set(admission);
        admission.admitted()
    }

    fn healthy(&self, upstream: UpstreamId) -> bool {
        self.snapshot
            .upstreams
            .get(upstream.index())
            .is_none_or(|u| u.is_healthy())
    }
}

/// How a response ended, for the completion record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ended normally.
    Complete,
    /// The upstream body failed (reset, idle timeout).
    BodyError,
    /// The client went away before the end: not the upstream's fault.
    ClientGone,
}

/// Everything needed to record a request once its response ends: breaker outcome,
/// attempts, requests, latency, access log.
pub struct Completion {
    state: Arc<ProxyState>,
    snapshot: Arc<Snapshot>,
    route: Option<usize>,
    slot: BackendSlot,
    admission: Admission,
    status: u16,
    own: bool,
    latency: Duration,
    grpc: bool,
    grpc_status: Option<u32>,
    decision: Decision,
    fallback: Option<&'static str>,
    error: Option<&'static str>,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    done: bool,
}

impl Completion {
    /// Notes a `grpc-status` seen in trailers.
    pub fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.grpc_status = Some(code);
        }
    }

    /// Records the request; later calls do nothing.
    pub fn finish(&mut self, end: End) {
        if self.done {
            return;
        }
        self.done = true;
        let route_rt = self.route_rt();
        let route = self.route.and_then(|i| self.snapshot.config.routes.get(i));
        let codes = route
            .and_then(|r| r.breaker.as_ref())
            .map(|b| b.grpc_error_codes.as_slice())
            .unwrap_or(DEFAULT_GRPC_ERRORS);
        // A gRPC response that ends without a status is UNKNOWN (2).
        let grpc_code = match (self.grpc, self.grpc_status, end) {
            (true, None, End::Complete) if !self.own => Some(2),
            (_, code, _) => code,
        };
        let grpc_error = self.grpc && grpc_code.is_some_and(|c| codes.contains(&c));
        let upstream_error =
            !self.own && (self.status >= 500 || grpc_error || end == End::BodyError);
        let class = if grpc_error || end == End::BodyError {
            5
        } else {
            code_class_index(self.status)
        };
        let slot_rt = route_rt.slot(self.slot);
        let metrics = match (self.own, slot_rt) {
            (false, Some(s)) => &s.metrics,
            _ => &route_rt.own,
        };
        if let Some(counter) = metrics.requests.get(class) {
            counter.inc();
        }
        metrics.duration.observe(self.latency.as_secs_f64());
        if !self.own {
            if let Some(s) = slot_rt {
                if upstream_error {
                    s.attempt_error.inc();
                } else {
                    s.attempt_ok.inc();
                }
                if let Some(rollout) = &route_rt.rollout {
                    rollout.record(self.slot, upstream_error, self.latency);
                }
                if let (Some(breaker), Some(route_index)) = (&s.breaker, self.route) {
                    let outcome = Outcome {
                        error: upstream_error,
                        latency: self.latency,
                    };
                    if let Some(t) = breaker.record(Instant::now(), self.admission, outcome) {
                        self.state
                            .breaker_transition(&self.snapshot, route_index, self.slot, t);
                    }
                }
            }
        }
        let sample = self.snapshot.config.access_log_sample;
        let always = self.own || self.fallback.is_some() || upstream_error || self.status >= 500;
        if always || (sample > 0.0 && fastrand::f64() < sample) {
            let backend = if self.own {
                OWN_BACKEND
            } else {
                slot_rt.map(|s| s.name_str.as_str()).unwrap_or("")
            };
            let trace_id = self.traceparent.as_ref().and_then(|v| {
                let text = v.to_str().ok()?;
                text.split('-').nth(1).filter(|id| id.len() == 32)
            });
            tracing::info!(
                target: "rampart::access",
                route = route_rt.name_str.as_str(),
                backend,
                status = self.status,
                code_class = CODE_CLASSES.get(class).copied().unwrap_or("error"),
                reason = self.decision.reason.as_str(),
                bucket = self.decision.bucket,
                method = self.method.as_str(),
                path = self.uri.path(),
                latency_ms = self.latency.as_secs_f64() * 1000.0,
                request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
                trace_id,
                grpc_status = grpc_code,
                fallback = self.fallback,
                error = self.error,
                end = ?end,
                "request"
            );
        }
    }

    fn route_rt(&self) -> &RouteRuntime {
        self.route
            .and_then(|i| self.snapshot.routes.get(i))
            .unwrap_or(&self.snapshot.default_route)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(End::ClientGone);
    }
}

/// The head of a request as it goes upstream (the body travels separately).
struct UpstreamHead {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
}

impl ProxyState {
    /// A state serving `snapshot`.
    pub fn new(snapshot: Snapshot, metrics: Metrics) -> ProxyState {
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            admin_kills: ArcSwap::from_pointee(HashSet::new()),
            events: OnceLock::new(),
        }
    }

    /// Reports a breaker transition: log at warn, metrics, split ratios, event sink.
    pub fn breaker_transition(
        &self,
        snapshot: &Snapshot,
        route: usize,
        slot: BackendSlot,
        t: Transition,
    ) {
        let Some(rt) = snapshot.routes.get(route) else {
            return;
        };
        let Some(slot_rt) = rt.slot(slot) else { return };
        slot_rt.publish_breaker_state();
        if let Some(counters) = &slot_rt.breaker_transitions {
            let index = rampart_core::breaker::BreakerState::ALL
                .iter()
                .position(|s| *s == t.to)
                .unwrap_or(0);
            if let Some(c) = counters.get(index) {
                c.inc();
            }
        }
        let next_probe_in_ms = t.open_for.map(|d| d.as_millis() as u64);
        let next_probe_at = t.open_for.map(|d| {
            humantime::format_rfc3339_millis(std::time::SystemTime::now() + d).to_string()
        });
        tracing::warn!(
            next_probe_at,
            route = rt.name_str.as_str(),
            backend = slot_rt.name_str.as_str(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            cause = t.cause.as_str(),
            requests = t.figures.requests,
            errors = t.figures.errors,
            error_rate = t.figures.error_rate(),
            slow = t.figures.slow,
            consecutive_errors = t.figures.consecutive_errors,
            next_probe_in_ms,
            "breaker {}",
            t.to.as_str()
        );
        if let Some(rollout) = &rt.rollout {
            if t.to == rampart_core::breaker::BreakerState::Open && slot == rollout.canary_slot {
                rollout.breaker_opened();
            }
        }
        self.publish_split(snapshot, route);
        if let Some(sink) = self.events.get() {
            sink(&ProxyEvent::Breaker {
                route: rt.name_str.clone(),
                backend: slot_rt.name_str.clone(),
                transition: t,
            });
        }
    }

    /// Whether the route is killed now, and by what (`config` first).
    pub fn kill_source(&self, route: &Route) -> Option<&'static str> {
        if route.killed.is_some() {
            Some("config")
        } else if self.admin_kills.load().contains(&route.name) {
            Some("admin")
        } else {
            None
        }
    }

    /// The effective share (0..1) of each backend slot of one route, beside its configured
    /// share: the split, with killed, breaker-open and unhealthy backends' shares moved to
    /// stable. What `rampart_split_ratio` and the admin status show.
    pub fn effective_split(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
    ) -> Vec<(BackendSlot, rampart_core::config::Percent, f64)> {
        let Some(route) = snapshot.config.routes.get(route_index) else {
            return Vec::new();
        };
        let Some(rt) = snapshot.routes.get(route_index) else {
            return Vec::new();
        };
        let killed = self.kill_source(route).is_some();
        let shares = route.shares(rt.rollout.as_ref().map(|r| r.first_entry()));
        let mut to_stable = 0.0;
        let mut ratios: Vec<f64> = Vec::with_capacity(shares.len());
        for (slot, share) in &shares {
            let usable = slot.is_stable()
                || (!killed
                    && rt
                        .slot(*slot)
                        .and_then(|s| s.breaker.as_ref())
                        .is_none_or(|b| b.state() == rampart_core::breaker::BreakerState::Closed)
                    && snapshot
                        .upstream_for(route, *slot)
                        .is_none_or(|u| u.is_healthy()));
            if usable {
                ratios.push(share.ratio());
            } else {
                to_stable += share.ratio();
                ratios.push(0.0);
            }
        }
        if let Some(stable) = ratios.first_mut() {
            *stable += to_stable;
        }
        shares
            .into_iter()
            .zip(ratios)
            .map(|((slot, share), ratio)| (slot, share, ratio))
            .collect()
    }

    /// Sets `rampart_split_ratio` of one route to its effective shares
    /// ([`ProxyState::effective_split`]).
    pub fn publish_split(&self, snapshot: &Snapshot, route_index: usize) {
        let Some(rt) = snapshot.routes.get(route_index) else {
            return;
        };
        for (slot, _, ratio) in self.effective_split(snapshot, route_index) {
            if let Some(s) = rt.slot(slot) {
                self.metrics
                    .split_ratio
                    .with_label_values(&[&rt.name_str, &s.name_str])
                    .set(ratio);
            }
        }
    }

    /// Runs due rollout verdicts at `now`; each verdict is logged with its figures,
    /// published in metrics and reported to the event sink. Returns whether any ran.
    pub fn tick_rollouts(&self, now: std::time::SystemTime) -> bool {
        let snapshot = self.snapshot.load_full();
        let mut any = false;
        for (index, rt) in snapshot.routes.iter().enumerate() {
            let Some(rollout) = &rt.rollout else { continue };
            let before = rollout.first_entry();
            match rollout.tick(now) {
                Some(event) => {
                    any = true;
                    self.report_rollout(&snapshot, index, event);
                }
                // A shared start passing moves the percent without a verdict.
                None if rollout.first_entry() != before => self.publish_split(&snapshot, index),
                None => {}
            }
        }
        any
    }

    /// Logs a verdict with its figures, publishes the route's rollout metrics and split,
    /// and reports the event to the sink (audit log).
    pub fn report_rollout(&self, snapshot: &Snapshot, index: usize, event: RolloutEvent) {
        let Some(rt) = snapshot.routes.get(index) else {
            return;
        };
        let a = &event.analysis;
        tracing::warn!(
            route = rt.name_str.as_str(),
            verdict = a.verdict.as_str(),
            step_from = event.step.0,
            step_to = event.step.1,
            status_from = event.status.0.as_str(),
            status_to = event.status.1.as_str(),
            percent = %event.percent,
            canary_requests = a.figures.canary.requests,
            canary_error_rate = a.figures.canary.error_rate(),
            canary_p99_ms = a.figures.canary.p99.map(|d| d.as_secs_f64() * 1000.0),
            stable_requests = a.figures.stable.requests,
            stable_error_rate = a.figures.stable.error_rate(),
            stable_p99_ms = a.figures.stable.p99.map(|d| d.as_secs_f64() * 1000.0),
            breaker_opened = a.figures.breaker_opened,
            "rollout verdict"
        );
        self.publish_rollout(snapshot, index);
        self.publish_split(snapshot, index);
        if let Some(sink) = self.events.get() {
            sink(&ProxyEvent::Rollout {
                route: rt.name_str.clone(),
                event,
            });
        }
    }

    /// Sets `rampart_rollout_step` and `rampart_rollout_status` of one route.
    pub fn publish_rollout(&self, snapshot: &Snapshot, route_index: usize) {
        let Some(rt) = snapshot.routes.get(route_index) else {
            return;
        };
        let Some((state, _)) = rt.rollout.as_ref().and_then(|r| r.snapshot()) else {
            return;
        };
        self.metrics
            .rollout_step
            .with_label_values(&[&rt.name_str])
            .set(i64::try_from(state.step).unwrap_or(i64::MAX));
        for status in RolloutStatus::ALL {
            self.metrics
                .rollout_status
                .with_label_values(&[&rt.name_str, status.as_str()])
                .set(i64::from(status == state.status));
        }
    }

    /// Publishes the effective split of every route of the applied snapshot.
    pub fn publish_all_splits(&self) {
        let snapshot = self.snapshot.load_full();
        self.metrics.split_ratio.reset();
        self.metrics.rollout_step.reset();
        self.metrics.rollout_status.reset();
        for i in 0..snapshot.config.routes.len() {
            self.publish_split(&snapshot, i);
            self.publish_rollout(&snapshot, i);
        }
    }

    fn decide(
        &self,
        snapshot: &Snapshot,
        parts: &http::request::Parts,
        peer: std::net::IpAddr,
        now: Instant,
    ) -> (Option<usize>, Decision, Admission) {
        let config: &Config = &snapshot.config;
        let facts = HttpFacts::new(parts);
        let Some(index) = match_route(config, &facts) else {
            return (None, default_decision(), Admission::Admitted);
        };
        let Some(route) = config.routes.get(index) else {
            return (None, default_decision(), Admission::Admitted);
        };
        let xff = parts
            .headers
            .get_all(&headers::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let client_ip = identity::client_ip(peer, xff, &config.trusted_proxies);
        let id = identity::extract(&route.identity, &facts, Some(client_ip));
        let first_entry = snapshot
            .routes
            .get(index)
            .and_then(|rt| rt.rollout.as_ref())
            .map(|r| r.first_entry());
        let candidate = decision::candidate(
            config,
            route,
            &facts,
            id.as_ref().map(|i| i.as_str()),
            || fastrand::u16(..rampart_core::bucket::BUCKETS),
            first_entry,
        );
        let gates = RequestGates {
            state: self,
            snapshot,
            now,
            admission: Cell::new(Admission::Admitted),
        };
        let decided = decision::gate(index, route, candidate, &gates);
        (Some(index), decided, gates.admission.get())
    }

    /// Handles one request end to end. Never fails: every problem becomes a response.
    pub async fn handle(
        self: &Arc<Self>,
        conn: ConnInfo,
        request: Request<Incoming>,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let snapshot = self.snapshot.load_full();
        let (mut parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        // An HTTP/1.1 upgrade (WebSocket) is decided like any request, then tunnelled.
        let upgrade = upgrade_protocol(&parts).map(|protocol| {
            (
                protocol,
                parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
            )
        });
        let peer_ip = identity::canonical_ip(conn.peer.ip());
        let (route_index, mut decision, mut admission) =
            self.decide(&snapshot, &parts, peer_ip, started);
        let route = route_index.and_then(|i| snapshot.config.routes.get(i));
        let mut completion = Completion {
            state: Arc::clone(self),
            snapshot: Arc::clone(&snapshot),
            route: route_index,
            slot: decision.slot,
            admission,
            status: 0,
            own: false,
            latency: Duration::ZERO,
            grpc,
            grpc_status: None,
            decision,
            fallback: None,
            error: None,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            request_id: None,
            traceparent: parts.headers.get(&headers::TRACEPARENT).cloned(),
            done: false,
        };
        let route_rt: &RouteRuntime = route_index
            .and_then(|i| snapshot.routes.get(i))
            .unwrap_or(&snapshot.default_route);
        let upstream_of = |slot: BackendSlot| -> Option<&Arc<UpstreamRuntime>> {
            match route {
                Some(r) => snapshot.upstream_for(r, slot),
                None => snapshot
                    .upstreams
                    .get(snapshot.config.default_upstream.index()),
            }
        };

        // The bulkhead gate: a non-stable candidate at its limit goes to stable; stable at
        // its limit is a 503 at once, never a queue.
        let mut guard: Option<InflightGuard> =
            upstream_of(decision.slot).and_then(|u| u.try_acquire());
        if guard.is_none() && !decision.slot.is_stable() {
            if let Some(s) = route_rt.slot(decision.slot) {
                s.bulkhead_rejections.inc();
            }
            decision = decision.to_stable(Reason::Bulkhead);
            admission = Admission::Admitted;
            guard = upstream_of(BackendSlot::STABLE).and_then(|u| u.try_acquire());
        }
        let (Some(upstream), Some(guard)) = (upstream_of(decision.slot), guard) else {
            if let Some(s) = route_rt.slot(BackendSlot::STABLE) {
                s.bulkhead_rejections.inc();
            }
            return own(
                completion,
                decision,
                StatusCode::SERVICE_UNAVAILABLE,
                "bulkhead",
                started,
            );
        };
        completion.decision = decision;
        completion.slot = decision.slot;
        completion.admission = admission;

        // The head for the upstream.
        let mut head = UpstreamHead {
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: parts.headers,
        };
        let h = &mut head.headers;
        headers::strip_hop_by_hop(h, true);
        if let Some((protocol, _)) = &upgrade {
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(UPGRADE, protocol.clone());
        }
        h.remove(&X_RAMPART_ROUTE);
        h.remove(&X_RAMPART_BACKEND);
        h.insert(&X_RAMPART_ROUTE, route_rt.name.clone());
        headers::append_forwarded_for(h, IpText::new(peer_ip).as_str());
        h.insert(
            &headers::X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
        if !h.contains_key(&X_REQUEST_ID) {
            h.insert(&X_REQUEST_ID, headers::new_request_id());
        }
        completion.request_id = h.get(&X_REQUEST_ID).cloned();
        if !h.contains_key(HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                h.insert(HOST, host);
            }
        }

        // Fallback needs the body again: reclaimable while unread (connect failures), or
        // buffered (small idempotent requests, `fallback: idempotent`).
        let fallback = route.map(|r| r.fallback).unwrap_or(Fallback::Never);
        let may_fall_back = !decision.slot.is_stable() && fallback != Fallback::Never;
        let retry_after_response = may_fall_back
            && fallback == Fallback::Idempotent
            && is_idempotent(&head.method)
            && (body.is_end_stream()
                || body
                    .size_hint()
                    .upper()
                    .is_some_and(|n| n <= MAX_RETRY_BODY));
        let mut buffered: Option<Bytes> = None;
        let mut reclaim = None;
        let first_body = if retry_after_response {
            match Limited::new(body, MAX_RETRY_BODY as usize).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    buffered = Some(bytes.clone());
                    ReqBody::Buffered {
                        body: Full::new(bytes),
                    }
                }
                Err(_) => {
                    return own(
                        completion,
                        decision,
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        started,
                    );
                }
            }
        } else if may_fall_back {
            let (b, r) = reclaimable(body);
            reclaim = Some(r);
            ReqBody::Reclaimable {
                body: crate::body::IdleBody::new(b, upstream.config.idle_timeout),
            }
        } else {
            ReqBody::Streamed {
                body: crate::body::IdleBody::new(body, upstream.config.idle_timeout),
            }
        };

        // Only a request that may be retried keeps its headers for a second attempt; the
        // others hand theirs over instead of copying them.
        let first_headers = if may_fall_back {
            head.headers.clone()
        } else {
            std::mem::take(&mut head.headers)
        };
        let first = send(
            upstream,
            &head,
            first_headers,
            route_rt.slot(decision.slot),
            first_body,
        )
        .await;
        let retry_reason = match &first {
            Err(f) if may_fall_back && (f.nothing_sent() || buffered.is_some()) => {
                Some((f.fallback_reason(), "attempt failed"))
            }
            Ok(r) if buffered.is_some() && r.status().is_server_error() => {
                Some((1, "server error"))
            }
            _ => None,
        };
        // The body for a re-send: the buffered copy, or the reclaimed one. Without one
        // (more than the retry limit was already read) there is no fallback: the canary's
        // answer or failure stands.
        let retry = retry_reason.and_then(|(reason_index, _)| {
            let body = match (buffered, reclaim.and_then(|r| r.take())) {
                (Some(bytes), _) => Some(ReqBody::Buffered {
                    body: Full::new(bytes),
                }),
                (None, Some(body)) => Some(ReqBody::Reclaimable {
                    body: crate::body::IdleBody::new(body, upstream.config.idle_timeout),
                }),
                (None, None) => None,
            };
            body.map(|b| (reason_index, b))
        });
        let (result, served_slot, served_guard) = match retry {
            Some((reason_index, retry_body)) => {
                // The failed attempt counts against the canary's breaker.
                self.record_failed_attempt(
                    &completion,
                    decision.slot,
                    admission,
                    started.elapsed(),
                );
                drop(first);
                drop(guard);
                if let Some(c) = route_rt
                    .slot(decision.slot)
                    .and_then(|s| s.fallbacks.get(reason_index))
                {
                    c.inc();
                }
                completion.fallback = crate::snapshot::FALLBACK_REASONS.get(reason_index).copied();
                completion.admission = Admission::Admitted;
                let Some(stable) = upstream_of(BackendSlot::STABLE) else {
                    return own(
                        completion,
                        decision,
                        StatusCode::BAD_GATEWAY,
                        "connect_failure",
                        started,
                    );
                };
                match stable.try_acquire() {
                    Some(stable_guard) => {
                        let retry_headers = std::mem::take(&mut head.headers);
                        let second = send(
                            stable,
                            &head,
                            retry_headers,
                            route_rt.slot(BackendSlot::STABLE),
                            retry_body,
                        )
                        .await;
                        (second, BackendSlot::STABLE, Some(stable_guard))
                    }
                    None => {
                        completion.slot = BackendSlot::STABLE;
                        return own(
                            completion,
                            decision,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "bulkhead",
                            started,
                        );
                    }
                }
            }
            None => (first, decision.slot, Some(guard)),
        };
        completion.slot = served_slot;
        completion.latency = started.elapsed();

        match result {
            Ok(mut response) => {
                let upstream_upgrade = match (&upgrade, response.status()) {
                    (Some(_), StatusCode::SWITCHING_PROTOCOLS) => {
                        Some(hyper::upgrade::on(&mut response))
                    }
                    _ => None,
                };
                let (mut response_head, body) = response.into_parts();
                let upgraded_protocol = response_head.headers.get(UPGRADE).cloned();
                headers::strip_hop_by_hop(&mut response_head.headers, false);
                let mut served_guard = served_guard;
                if let (Some(upstream_side), Some((_, Some(client_side))), Some(protocol)) =
                    (upstream_upgrade, upgrade, upgraded_protocol)
                {
                    response_head
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    response_head.headers.insert(UPGRADE, protocol);
                    tunnel(client_side, upstream_side, served_guard.take());
                }
                completion.status = response_head.status.as_u16();
                completion.grpc_status = grpc_status(&response_head.headers);
                let body = crate::body::IdleBody::new(body, upstream.config.idle_timeout);
                // A body that is over before it starts (204, HEAD, 304, Content-Length: 0)
                // is never polled: record the request now.
                let completion = if http_body::Body::is_end_stream(&body) {
                    completion.finish(End::Complete);
                    None
                } else {
                    Some(completion)
                };
                let body = RespBody::Upstream {
                    body,
                    guard: served_guard,
                    completion,
                };
                Response::from_parts(response_head, body)
            }
            Err(failure) => {
                drop(served_guard);
                // The failed attempt is the upstream's error; the client gets Rampart's answer.
                self.record_failed_attempt(
                    &completion,
                    served_slot,
                    completion.admission,
                    completion.latency,
                );
                completion.error = Some(failure.error_name());
                own(
                    completion,
                    decision,
                    failure.status(),
                    failure.error_name(),
                    started,
                )
            }
        }
    }

    /// Records an attempt that produced no usable response: attempts counter and breaker.
    fn record_failed_attempt(
        &self,
        completion: &Completion,
        slot: BackendSlot,
        admission: Admission,
        latency: Duration,
    ) {
        let route_rt = completion.route_rt();
        let Some(slot_rt) = route_rt.slot(slot) else {
            return;
        };
        slot_rt.attempt_error.inc();
        if let Some(rollout) = &route_rt.rollout {
            rollout.record(slot, true, latency);
        }
        if let (Some(breaker), Some(route)) = (&slot_rt.breaker, completion.route) {
            if let Some(t) = breaker.record(
                Instant::now(),
                admission,
                Outcome {
                    error: true,
                    latency,
                },
            ) {
                self.breaker_transition(&completion.snapshot, route, slot, t);
            }
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` and
/// `Upgrade: X`), if any.
fn upgrade_protocol(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let wants = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        parts.headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections until
/// either side closes; the upstream's in-flight slot is held for the tunnel's life.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Option<InflightGuard>,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        }
    });
}

/// Finishes `completion` as a response of Rampart's own.
fn own(
    mut completion: Completion,
    decision: Decision,
    status: StatusCode,
    error: &'static str,
    started: Instant,
) -> Response<RespBody> {
    completion.decision = decision;
    completion.own = true;
    completion.status = status.as_u16();
    completion.error = Some(error);
    completion.latency = started.elapsed();
    let grpc = completion.grpc;
    if grpc && status.is_server_error() {
        // The client gets HTTP 200 trailers-only with a failing grpc-status: a failed
        // call, counted as code_class "error", never 2xx.
        completion.status = 200;
        completion.grpc_status = Some(if status == StatusCode::GATEWAY_TIMEOUT {
            4
        } else {
            14
        });
    }
    completion.finish(End::Complete);
    own_response(status, error, grpc)
}

/// Sends one attempt to `upstream` with `headers` (the head's, owned by this attempt).
async fn send(
    upstream: &UpstreamRuntime,
    head: &UpstreamHead,
    mut headers: HeaderMap,
    slot: Option<&SlotRuntime>,
    body: ReqBody,
) -> Result<Response<Incoming>, AttemptFailure> {
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(upstream.scheme.clone());
    uri_parts.authority = Some(upstream.authority.clone());
    uri_parts.path_and_query = Some(head.path_and_query.clone());
    let uri = Uri::from_parts(uri_parts).map_err(|_| AttemptFailure::Protocol)?;
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    let h2 = upstream.config.protocol != Protocol::Http1;
    *request.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if !h2 {
        headers.remove(http::header::TE);
    } else {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(s) = slot {
        headers.insert(&X_RAMPART_BACKEND, s.name.clone());
    }
    *request.headers_mut() = headers;
    match tokio::time::timeout(
        upstream.config.request_timeout,
        upstream.client.request(request),
    )
    .await
    {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_elapsed) => Err(AttemptFailure::Timeout),
    }
}

fn default_decision() -> Decision {
    Decision {
        slot: BackendSlot::STABLE,
        bucket: None,
        reason: Reason::Stable,
        candidate: BackendSlot::STABLE,
    }
}
