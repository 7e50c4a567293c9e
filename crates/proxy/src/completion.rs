//! The record of one request: what it was, where it went, and how it ended, written once
//! when its response ends (or when the client goes away): requests and latency metrics,
//! the attempt's outcome (attempts counter, rollout figures, breaker), the access log.
//!
//! [`record_attempt`] is the one place an upstream attempt is judged, for attempts that
//! failed before a response and for responses that ended.

use crate::body::{BodyEnd, End, FaultCell};
use crate::failure::FallbackReason;
use crate::handler::ProxyState;
use crate::snapshot::{code_class_index, RouteRuntime, Snapshot, CODE_CLASSES, OWN_BACKEND};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Uri};
use rampart_core::breaker::{Admission, Outcome};
use rampart_core::config::BackendSlot;
use rampart_core::decision::Decision;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// gRPC statuses counted as errors on routes without a breaker block.
const DEFAULT_GRPC_ERRORS: &[u32] = &[2, 4, 8, 13, 14];

/// The status logged for a request whose client went away before any answer (nginx's
/// convention); counted in the `4xx` class.
const CLIENT_CLOSED: u16 = 499;

/// `grpc-status`, looked up on every gRPC response: a name parsed once, not per lookup.
static GRPC_STATUS: http::header::HeaderName = http::header::HeaderName::from_static("grpc-status");

/// The `grpc-status` of a response head or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How an upstream attempt is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream did its part (any status below 500 that is not a gRPC error).
    Ok(Duration),
    /// The upstream failed: 5xx, gRPC error, reset, timeout, connect failure.
    Error(Duration),
    /// Not the upstream's doing either way (the client failed the request or left before
    /// the answer): nothing is counted, a half-open probe slot is given back.
    Unjudged,
}

/// Records one attempt at `slot` of `route` (`None`: the default route, which has no
/// breaker): `rampart_upstream_attempts_total`, the rollout's step figures, the breaker.
pub fn record_attempt(
    state: &ProxyState,
    snapshot: &Snapshot,
    route: Option<usize>,
    slot: BackendSlot,
    admission: Admission,
    verdict: Verdict,
) {
    let route_rt = route
        .and_then(|i| snapshot.routes.get(i))
        .unwrap_or(&snapshot.default_route);
    let Some(slot_rt) = route_rt.slot(slot) else {
        return;
    };
    let (error, latency) = match verdict {
        Verdict::Ok(latency) => (false, latency),
        Verdict::Error(latency) => (true, latency),
        Verdict::Unjudged => {
            if let Some(breaker) = &slot_rt.breaker {
                breaker.release(admission);
            }
            return;
        }
    };
    if error {
        slot_rt.attempt_error.inc();
    } else {
        slot_rt.attempt_ok.inc();
    }
    if let Some(rollout) = &route_rt.rollout {
        rollout.record(slot, error, latency);
    }
    if let (Some(breaker), Some(route_index)) = (&slot_rt.breaker, route) {
        if let Some(t) = breaker.record(Instant::now(), admission, Outcome { error, latency }) {
            state.breaker_transition(snapshot, route_index, slot, t);
        }
    }
}

/// Everything needed to record a request once its response ends: breaker outcome,
/// attempts, requests, latency, access log. Dropping it unfinished records a client that
/// went away.
pub struct Completion {
    pub(crate) state: Arc<ProxyState>,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) route: Option<usize>,
    /// The backend that served (or was to serve) the request.
    pub(crate) slot: BackendSlot,
    pub(crate) admission: Admission,
    /// The status the client got; 0 until the upstream answered.
    pub(crate) status: u16,
    /// Whether the answer is Rampart's own.
    pub(crate) own: bool,
    pub(crate) started: Instant,
    pub(crate) latency: Duration,
    pub(crate) grpc: bool,
    pub(crate) grpc_status: Option<u32>,
    pub(crate) decision: Decision,
    pub(crate) fallback: Option<FallbackReason>,
    pub(crate) error: Option<&'static str>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) traceparent: Option<HeaderValue>,
    /// Where the request body notes that the client failed it.
    pub(crate) client_fault: Option<Arc<FaultCell>>,
    done: bool,
}

impl Completion {
    /// The record of a request decided as `decision`, not yet sent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: Arc<ProxyState>,
        snapshot: Arc<Snapshot>,
        route: Option<usize>,
        decision: Decision,
        admission: Admission,
        parts: &http::request::Parts,
        grpc: bool,
        started: Instant,
    ) -> Completion {
        Completion {
            state,
            snapshot,
            route,
            slot: decision.slot,
            admission,
            status: 0,
            own: false,
            started,
            latency: Duration::ZERO,
            grpc,
            grpc_status: None,
            decision,
            fallback: None,
            error: None,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            request_id: None,
            traceparent: parts.headers.get(&crate::headers::TRACEPARENT).cloned(),
            client_fault: None,
            done: false,
        }
    }

    /// The runtime of the request's route (the default route when none matched).
    pub(crate) fn route_rt(&self) -> &RouteRuntime {
        self.route
            .and_then(|i| self.snapshot.routes.get(i))
            .unwrap_or(&self.snapshot.default_route)
    }

    /// Records the request; later calls do nothing.
    fn record(&mut self, end: End) {
        if self.done {
            return;
        }
        self.done = true;
        // The client left before any answer: nobody's error, logged as nginx's 499.
        let client_left = !self.own && self.status == 0;
        if client_left {
            self.status = CLIENT_CLOSED;
            self.latency = self.started.elapsed();
        }
        let route_rt = self.route_rt();
        let route = self.route.and_then(|i| self.snapshot.config.routes.get(i));
        let codes = route
            .and_then(|r| r.breaker.as_ref())
            .map(|b| b.grpc_error_codes.as_slice())
            .unwrap_or(DEFAULT_GRPC_ERRORS);
        let client_fault = self.client_fault.as_ref().and_then(|c| c.get());
        // A gRPC response that ends without a status is UNKNOWN (2).
        let grpc_code = match (self.grpc, self.grpc_status, end) {
            (true, None, End::Complete) if !self.own => Some(2),
            (_, code, _) => code,
        };
        let grpc_error = self.grpc && grpc_code.is_some_and(|c| codes.contains(&c));
        let upstream_error = !self.own
            && !client_left
            && (self.status >= 500 || grpc_error || end == End::BodyError);
        let class = if grpc_error || (end == End::BodyError && !client_left) {
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
            let verdict = if client_left || client_fault.is_some() {
                Verdict::Unjudged
            } else if upstream_error {
                Verdict::Error(self.latency)
            } else {
                Verdict::Ok(self.latency)
            };
            record_attempt(
                &self.state,
                &self.snapshot,
                self.route,
                self.slot,
                self.admission,
                verdict,
            );
        }
        let sample = self.snapshot.config.access_log_sample;
        let always = self.own || self.fallback.is_some() || upstream_error || self.status >= 500;
        if always || (sample > 0.0 && fastrand::f64() < sample) {
            self.log(end, class, grpc_code, client_fault);
        }
    }

    fn log(
        &self,
        end: End,
        class: usize,
        grpc_code: Option<u32>,
        client_fault: Option<crate::failure::ClientFault>,
    ) {
        let route_rt = self.route_rt();
        let backend = if self.own {
            OWN_BACKEND
        } else {
            route_rt
                .slot(self.slot)
                .map(|s| s.name_str.as_str())
                .unwrap_or("")
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
            fallback = self.fallback.map(FallbackReason::as_str),
            error = self.error,
            client_fault = client_fault.map(|f| format!("{f:?}")),
            end = ?end,
            "request"
        );
    }
}

impl BodyEnd for Completion {
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.grpc_status = Some(code);
        }
    }

    fn finish(&mut self, end: End) {
        self.record(end);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.record(End::ClientGone);
    }
}
