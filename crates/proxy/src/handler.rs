//! The per-request path: one snapshot load, the core's decision, one or two upstream
//! attempts, metrics and the access log.

use crate::body::{reclaimable, ReqBody, RespBody};
use crate::facts::HttpFacts;
use crate::headers::{self, X_RAMPART_BACKEND, X_RAMPART_ERROR, X_RAMPART_ROUTE, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::snapshot::{code_class_index, BackendMetrics, RouteRuntime, Snapshot, CODE_CLASSES};
use crate::upstream::{InflightGuard, UpstreamRuntime};
use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rampart_core::config::{BackendSlot, Config, Fallback, Protocol, UpstreamId};
use rampart_core::decision::{self, Decision, Gates, Reason};
use rampart_core::identity::{self, IpText};
use rampart_core::matching::match_route;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Shared state of the data plane: the published snapshot and the metric families.
pub struct ProxyState {
    /// The applied config, resolved; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
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
    /// No response headers within `request_timeout`.
    Timeout,
    /// Reset, closed or invalid response.
    Protocol,
}

impl AttemptFailure {
    fn status(self) -> StatusCode {
        match self {
            AttemptFailure::ConnectRefused | AttemptFailure::Protocol => StatusCode::BAD_GATEWAY,
            AttemptFailure::ConnectTimeout | AttemptFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_name(self) -> &'static str {
        match self {
            AttemptFailure::ConnectRefused | AttemptFailure::ConnectTimeout => "connect_failure",
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::Protocol => "protocol",
        }
    }

    fn nothing_sent(self) -> bool {
        matches!(
            self,
            AttemptFailure::ConnectRefused | AttemptFailure::ConnectTimeout
        )
    }
}

/// Gates over the snapshot's run-time state.
struct SnapshotGates<'a> {
    snapshot: &'a Snapshot,
}

impl Gates for SnapshotGates<'_> {
    fn admin_killed(&self, _route: usize) -> bool {
        false
    }
    fn breaker_admits(&self, _route: usize, _slot: BackendSlot) -> bool {
        true
    }
    fn healthy(&self, upstream: UpstreamId) -> bool {
        self.snapshot
            .upstreams
            .get(upstream.index())
            .is_none_or(|u| u.is_healthy())
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A response Rampart makes itself: 502/503/504 with `x-rampart-error`, or for gRPC a
/// trailers-only HTTP 200 carrying `grpc-status` 14 (4 for timeouts).
pub fn own_response(status: StatusCode, error: &'static str, grpc: bool) -> Response<RespBody> {
    if grpc {
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

/// One request's bookkeeping for metrics and the access log.
struct Outcome {
    status: u16,
    slot: BackendSlot,
    own: bool,
    fallback: Option<&'static str>,
    upstream_error: Option<&'static str>,
}

impl ProxyState {
    /// Handles one request end to end. Never fails: every problem becomes a response.
    pub async fn handle(&self, conn: ConnInfo, request: Request<Incoming>) -> Response<RespBody> {
        let started = Instant::now();
        let snapshot = self.snapshot.load_full();
        let config: &Config = &snapshot.config;
        let (mut parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        let peer_ip = identity::canonical_ip(conn.peer.ip());

        // Decide, borrowing the request head; nothing here allocates.
        let (route_index, decision) = {
            let facts = HttpFacts::new(&parts);
            match match_route(config, &facts) {
                Some(index) => match config.routes.get(index) {
                    Some(route) => {
                        let xff = parts
                            .headers
                            .get_all(&headers::X_FORWARDED_FOR)
                            .iter()
                            .filter_map(|v| v.to_str().ok());
                        let client_ip = identity::client_ip(peer_ip, xff, &config.trusted_proxies);
                        let id = identity::extract(&route.identity, &facts, Some(client_ip));
                        let candidate = decision::candidate(
                            config,
                            route,
                            &facts,
                            id.as_ref().map(|i| i.as_str()),
                            || fastrand::u16(..rampart_core::bucket::BUCKETS),
                            None,
                        );
                        let gates = SnapshotGates {
                            snapshot: &snapshot,
                        };
                        (Some(index), decision::gate(index, route, candidate, &gates))
                    }
                    None => (None, default_decision()),
                },
                None => (None, default_decision()),
            }
        };
        let route = route_index.and_then(|i| config.routes.get(i));
        let route_rt: &RouteRuntime = match route_index.and_then(|i| snapshot.routes.get(i)) {
            Some(rt) => rt,
            None => &snapshot.default_route,
        };
        let upstream_of = |slot: BackendSlot| -> Option<&Arc<UpstreamRuntime>> {
            match route {
                Some(r) => snapshot.upstream_for(r, slot),
                None => snapshot.upstreams.get(config.default_upstream.index()),
            }
        };

        // The bulkhead gate: a non-stable candidate at its limit goes to stable; stable at
        // its limit is a 503 at once, never a queue.
        let mut decision = decision;
        let mut guard: Option<InflightGuard> = None;
        if let Some(up) = upstream_of(decision.slot) {
            guard = up.try_acquire();
            if guard.is_none() && !decision.slot.is_stable() {
                if let Some(c) = route_rt.bulkhead_rejections.get(decision.slot.index()) {
                    c.inc();
                }
                decision = decision.to_stable(Reason::Bulkhead);
                guard = upstream_of(BackendSlot::STABLE).and_then(|s| s.try_acquire());
            }
            if guard.is_none() && decision.slot.is_stable() {
                if let Some(c) = route_rt.bulkhead_rejections.first() {
                    c.inc();
                }
            }
        }
        let (Some(upstream), Some(guard)) = (upstream_of(decision.slot), guard) else {
            let response = own_response(StatusCode::SERVICE_UNAVAILABLE, "bulkhead", grpc);
            self.finish(
                &parts,
                route_rt,
                None,
                &decision,
                started,
                Outcome {
                    status: 503,
                    slot: decision.slot,
                    own: true,
                    fallback: None,
                    upstream_error: Some("bulkhead"),
                },
            );
            return response;
        };

        // Rewrite the head for the upstream.
        let keep_te = upstream.config.protocol != Protocol::Http1;
        headers::strip_hop_by_hop(&mut parts.headers, keep_te);
        parts.headers.remove(&X_RAMPART_ROUTE);
        parts.headers.remove(&X_RAMPART_BACKEND);
        parts
            .headers
            .insert(&X_RAMPART_ROUTE, route_rt.name.clone());
        let peer_text = IpText::new(peer_ip);
        headers::append_forwarded_for(&mut parts.headers, peer_text.as_str());
        parts.headers.insert(
            &headers::X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
        if !parts.headers.contains_key(&X_REQUEST_ID) {
            parts
                .headers
                .insert(&X_REQUEST_ID, headers::new_request_id());
        }
        if !parts.headers.contains_key(HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, host);
            }
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        let may_fall_back =
            !decision.slot.is_stable() && route.is_some_and(|r| r.fallback != Fallback::Never);
        let (first_body, reclaim) = if may_fall_back {
            let (b, r) = reclaimable(body);
            (ReqBody::Reclaimable { body: b }, Some(r))
        } else {
            (ReqBody::Streamed { body }, None)
        };

        let first = self
            .attempt(
                upstream,
                &parts,
                route_rt,
                decision.slot,
                path_and_query.clone(),
                first_body,
            )
            .await;
        let (result, served_slot, served_guard, fallback) = match first {
            Err(failure) if failure.nothing_sent() && may_fall_back => {
                let from = route_rt
                    .backend_names
                    .get(decision.slot.index())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let route_name = route_rt.name.to_str().unwrap_or("");
                self.metrics
                    .fallbacks
                    .with_label_values(&[route_name, from, "connect_failure"])
                    .inc();
                drop(guard);
                let body = reclaim.and_then(|r| r.take());
                match (upstream_of(BackendSlot::STABLE), body) {
                    (Some(stable), Some(body)) => match stable.try_acquire() {
                        Some(stable_guard) => {
                            let retried = self
                                .attempt(
                                    stable,
                                    &parts,
                                    route_rt,
                                    BackendSlot::STABLE,
                                    path_and_query,
                                    ReqBody::Streamed { body },
                                )
                                .await;
                            (
                                retried,
                                BackendSlot::STABLE,
                                Some(stable_guard),
                                Some("connect_failure"),
                            )
                        }
                        None => {
                            let response =
                                own_response(StatusCode::SERVICE_UNAVAILABLE, "bulkhead", grpc);
                            self.finish(
                                &parts,
                                route_rt,
                                None,
                                &decision,
                                started,
                                Outcome {
                                    status: 503,
                                    slot: BackendSlot::STABLE,
                                    own: true,
                                    fallback: Some("connect_failure"),
                                    upstream_error: Some("bulkhead"),
                                },
                            );
                            return response;
                        }
                    },
                    _ => (Err(failure), decision.slot, None, None),
                }
            }
            other => (other, decision.slot, Some(guard), None),
        };

        match result {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers, false);
                let status = head.status.as_u16();
                let metrics = route_rt.backends.get(served_slot.index());
                self.finish(
                    &parts,
                    route_rt,
                    metrics,
                    &decision,
                    started,
                    Outcome {
                        status,
                        slot: served_slot,
                        own: false,
                        fallback,
                        upstream_error: None,
                    },
                );
                let body = RespBody::Upstream {
                    body: crate::body::IdleBody::new(body, upstream.config.idle_timeout),
                    guard: served_guard,
                };
                Response::from_parts(head, body)
            }
            Err(failure) => {
                drop(served_guard);
                let status = failure.status();
                self.finish(
                    &parts,
                    route_rt,
                    None,
                    &decision,
                    started,
                    Outcome {
                        status: status.as_u16(),
                        slot: served_slot,
                        own: true,
                        fallback,
                        upstream_error: Some(failure.error_name()),
                    },
                );
                own_response(status, failure.error_name(), grpc)
            }
        }
    }

    /// Sends one attempt to `upstream` and classes its outcome for the attempts counter.
    async fn attempt(
        &self,
        upstream: &UpstreamRuntime,
        parts: &http::request::Parts,
        route_rt: &RouteRuntime,
        slot: BackendSlot,
        path_and_query: PathAndQuery,
        body: ReqBody,
    ) -> Result<Response<Incoming>, AttemptFailure> {
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = Some(upstream.scheme.clone());
        uri_parts.authority = Some(upstream.authority.clone());
        uri_parts.path_and_query = Some(path_and_query);
        let uri = Uri::from_parts(uri_parts).map_err(|_| AttemptFailure::Protocol)?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match upstream.config.protocol {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2 | Protocol::H2c => Version::HTTP_2,
        };
        *request.headers_mut() = parts.headers.clone();
        if let Some(name) = route_rt.backend_names.get(slot.index()) {
            request
                .headers_mut()
                .insert(&X_RAMPART_BACKEND, name.clone());
        }
        let sent = tokio::time::timeout(
            upstream.config.request_timeout,
            upstream.client.request(request),
        )
        .await;
        let result = match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_elapsed) => Err(AttemptFailure::Timeout),
        };
        if let Some(m) = route_rt.backends.get(slot.index()) {
            let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
            if ok {
                m.attempt_ok.inc()
            } else {
                m.attempt_error.inc()
            }
        }
        result
    }

    /// Counts the request and writes the access log line (sampled; errors always).
    fn finish(
        &self,
        parts: &http::request::Parts,
        route_rt: &RouteRuntime,
        backend_metrics: Option<&BackendMetrics>,
        decision: &Decision,
        started: Instant,
        outcome: Outcome,
    ) {
        let elapsed = started.elapsed();
        let metrics = if outcome.own {
            &route_rt.own
        } else {
            backend_metrics.unwrap_or(&route_rt.own)
        };
        let class = code_class_index(outcome.status);
        if let Some(counter) = metrics.requests.get(class) {
            counter.inc();
        }
        metrics.duration.observe(elapsed.as_secs_f64());
        let sample = self.snapshot.load().config.access_log_sample;
        let always = outcome.own || outcome.fallback.is_some() || outcome.status >= 500;
        if always || (sample > 0.0 && fastrand::f64() < sample) {
            let backend = if outcome.own {
                crate::snapshot::OWN_BACKEND
            } else {
                route_rt
                    .backend_names
                    .get(outcome.slot.index())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            };
            tracing::info!(
                target: "rampart::access",
                route = route_rt.name.to_str().unwrap_or(""),
                backend,
                status = outcome.status,
                code_class = CODE_CLASSES.get(class).copied().unwrap_or("error"),
                reason = decision.reason.as_str(),
                bucket = decision.bucket,
                method = parts.method.as_str(),
                path = parts.uri.path(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = parts.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()),
                trace_id = headers::trace_id(&parts.headers),
                fallback = outcome.fallback,
                error = outcome.upstream_error,
                "request"
            );
        }
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
