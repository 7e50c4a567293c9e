//! The per-request path, in named phases over one request's record ([`Completion`]):
//!
//! 1. **admit**: one snapshot load, kept for the request's life (retries included);
//!    gRPC and upgrade detection.
//! 2. **decide**: route, identity, candidate and gates ([`ProxyState::decide_request`]).
//! 3. **acquire**: the bulkhead, the last gate; a [`Target`] holds the in-flight slot.
//! 4. **upstream head**: the header rewrite, a pure function
//!    ([`headers::rewrite_request_headers`]).
//! 5. **body**: how the body can be sent again, if at all ([`BodyPlan`]).
//! 6. **attempt with fallback**: one attempt, or two when the canary's failure allows a
//!    re-send to stable; the [`Served`] value names the upstream that answered, so its
//!    settings (idle timeout) apply to the bodies.
//! 7. **respond**: the upstream's response, streamed, recorded when it ends; or Rampart's
//!    own answer ([`OwnError`]), with the failure counted against whoever caused it.

use crate::body::UpstreamBody;
use crate::body::{reclaimable, ClientBodyError, FaultCell, IdleBody, Reclaim};
use crate::body::{End, ReqBody, ReqSource, RespBody};
use crate::completion::{grpc_status, record_attempt, Completion, Verdict};
use crate::failure::{classify, AttemptError, FallbackReason, OwnError, UpstreamFailure};
use crate::h1::client::{ClientError, H1Pool};
use crate::h1::{ClientUpgrade, RequestBody};
use crate::headers::{self, X_RAMPART_BACKEND, X_RAMPART_ERROR, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::snapshot::{RouteRuntime, SlotRuntime, Snapshot};
use crate::upstream::{InflightGuard, UpstreamRuntime};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use rampart_core::breaker::Admission;
use rampart_core::config::{BackendSlot, Fallback, Protocol};
use rampart_core::decision::Reason;
use rampart_core::identity::{self, IpText};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use crate::body::MAX_RETRY_BODY;
pub use crate::publish::{EventSink, ProxyEvent};

/// Shared state of the data plane.
pub struct ProxyState {
    /// The applied config, resolved; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
    /// Routes killed by an operator on this replica (admin API), by name.
    pub admin_kills: ArcSwap<HashSet<String>>,
    /// Who hears of breaker transitions and rollout verdicts (the audit log, the admin
    /// status, the demo's narration): every subscriber gets every event.
    events: ArcSwap<Vec<EventSink>>,
}

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (for `x-forwarded-proto`).
    pub tls: bool,
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A response Rampart makes itself, by status and `x-rampart-error` name: for the
/// listener's refusals of malformed requests. The request path uses [`OwnError`].
pub fn own_response(status: StatusCode, error: &'static str, grpc: bool) -> Response<RespBody> {
    let text = match error {
        "bad_request" => "rampart: malformed request\n",
        _ => "rampart: the request could not be served\n",
    };
    build_own_response(status, error, text, grpc.then_some(14), false)
}

/// Rampart's answer for `error`: a plain-text body with `x-rampart-error`, or for gRPC a
/// trailers-only HTTP 200 carrying the error's `grpc-status`. `close` asks an HTTP/1.1
/// client's connection to close after it.
fn own_error_response(error: OwnError, grpc: bool, close: bool) -> Response<RespBody> {
    let grpc_code = if grpc { error.grpc_code() } else { None };
    build_own_response(error.status(), error.name(), error.text(), grpc_code, close)
}

fn build_own_response(
    status: StatusCode,
    error: &'static str,
    text: &'static str,
    grpc_code: Option<u32>,
    close: bool,
) -> Response<RespBody> {
    if let Some(code) = grpc_code.filter(|_| status.is_server_error()) {
        let mut response = Response::new(RespBody::empty());
        let headers = response.headers_mut();
        headers.insert(&X_RAMPART_ERROR, HeaderValue::from_static(error));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code));
        headers.insert("grpc-message", HeaderValue::from_static(error));
        return response;
    }
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
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The head of a request as it goes upstream (the body travels separately).
struct UpstreamHead {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
}

/// An HTTP/1.1 upgrade the client asked for: the protocol, and the client's side of the
/// connection once hyper hands it over.
struct Upgrade {
    protocol: HeaderValue,
    client: Option<ClientUpgrade>,
}

/// The backend a request goes to, holding one of its upstream's in-flight slots.
struct Target<'s> {
    slot: BackendSlot,
    upstream: &'s Arc<UpstreamRuntime>,
    guard: InflightGuard,
}

/// The attempt whose result the client gets, and the target that produced it.
struct Served<'s> {
    target: Target<'s>,
    result: Result<Response<UpstreamBody>, AttemptError>,
}

/// What a re-send to stable can use as the request body.
enum RetryBody {
    /// Nothing: this request is not re-sent.
    None,
    /// The client's body again, if the failed attempt read little enough of it
    /// (`fallback: connect_failure`: only attempts the upstream did not process).
    Reclaim(Reclaim),
    /// A buffered copy (`fallback: idempotent`): any failed attempt or 5xx.
    Buffered(Bytes),
}

impl RetryBody {
    /// Whether an answer that came (a 5xx) may still be re-sent.
    fn after_response(&self) -> bool {
        matches!(self, RetryBody::Buffered(_))
    }

    /// The body for the re-send, streamed under `upstream`'s idle timeout. `None` when
    /// more was read than can be replayed: the first answer stands.
    fn take(self, upstream: &UpstreamRuntime, fault: Option<Arc<FaultCell>>) -> Option<ReqBody> {
        match self {
            RetryBody::None => None,
            RetryBody::Buffered(bytes) => Some(ReqBody::buffered(bytes)),
            RetryBody::Reclaim(reclaim) => reclaim.take().map(|body| {
                ReqBody::new(
                    ReqSource::Reclaimable {
                        body: IdleBody::new(body, upstream.config.idle_timeout),
                    },
                    fault,
                )
            }),
        }
    }
}

impl ProxyState {
    /// A state serving `snapshot`.
    pub fn new(snapshot: Snapshot, metrics: Metrics) -> ProxyState {
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            admin_kills: ArcSwap::from_pointee(HashSet::new()),
            events: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Adds `sink` to the subscribers of [`ProxyEvent`]s.
    pub fn subscribe(&self, sink: EventSink) {
        self.events.rcu(|sinks| {
            let mut sinks = Vec::clone(sinks);
            sinks.push(Arc::clone(&sink));
            sinks
        });
    }

    /// Hands `event` to every subscriber.
    pub fn emit(&self, event: &ProxyEvent) {
        for sink in self.events.load().iter() {
            sink(event);
        }
    }

    /// Handles one request end to end. Never fails: every problem becomes a response.
    pub async fn handle(
        self: &Arc<Self>,
        conn: ConnInfo,
        request: Request<RequestBody>,
    ) -> Response<RespBody> {
        // 1. admit
        let started = Instant::now();
        let snapshot = self.snapshot.load_full();
        let (mut parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        let http1 = parts.version <= Version::HTTP_11;
        let upgrade = take_upgrade(&mut parts);
        let peer_ip = identity::canonical_ip(conn.peer.ip());

        // 2. decide
        let decided = self.decide_request(&snapshot, &parts, peer_ip, started);
        let mut record = Completion::new(
            Arc::clone(self),
            Arc::clone(&snapshot),
            decided.route,
            decided.decision,
            decided.admission,
            &parts,
            grpc,
            started,
        );

        // 3. acquire
        let Some(target) = acquire(&snapshot, &mut record) else {
            return own(record, OwnError::Bulkhead, http1);
        };

        // 4. upstream head
        let route_rt = route_runtime(&snapshot, record.route);
        let mut headers = std::mem::take(&mut parts.headers);
        headers::rewrite_request_headers(
            &mut headers,
            &headers::Forwarding {
                route: &route_rt.name,
                peer: IpText::new(peer_ip).as_str(),
                tls: conn.tls,
                upgrade: upgrade.as_ref().map(|u| &u.protocol),
                authority: parts.uri.authority(),
            },
        );
        record.request_id = headers.get(&X_REQUEST_ID).cloned();
        let head = UpstreamHead {
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
        };

        // 5. body
        let (first_body, retry) = match prepare_body(&snapshot, &record, &target, &head, body).await
        {
            Ok(plan) => plan,
            Err(fault) => {
                record_attempt(
                    self,
                    &snapshot,
                    record.route,
                    target.slot,
                    record.admission,
                    Verdict::Unjudged,
                );
                return self.client_fault(record, fault, http1);
            }
        };
        record.client_fault = first_body.1.clone();

        // 6. attempt with fallback
        let served = match self
            .attempt_with_fallback(&snapshot, &mut record, target, head, first_body, retry)
            .await
        {
            Ok(served) => served,
            Err(error) => return own(record, error, http1),
        };

        // 7. respond
        self.respond(record, served, upgrade, http1)
    }

    /// Sends the first attempt and, when its failure allows, one re-send to the route's
    /// stable backend. The failed first attempt counts against its backend.
    async fn attempt_with_fallback<'s>(
        &self,
        snapshot: &'s Snapshot,
        record: &mut Completion,
        target: Target<'s>,
        mut head: UpstreamHead,
        (first_body, fault): (ReqBody, Option<Arc<FaultCell>>),
        retry: RetryBody,
    ) -> Result<Served<'s>, OwnError> {
        let route_rt = route_runtime(snapshot, record.route);
        let may_retry = !matches!(retry, RetryBody::None);
        // Only a request that may be re-sent keeps its headers for a second attempt; the
        // others hand theirs over instead of copying them.
        let first_headers = if may_retry {
            head.headers.clone()
        } else {
            std::mem::take(&mut head.headers)
        };
        let first = send(
            target.upstream,
            &head,
            first_headers,
            route_rt.slot(target.slot),
            first_body,
            fault.as_deref(),
        )
        .await;
        let reason = match &first {
            Err(AttemptError::Upstream(f)) if f.nothing_sent() || retry.after_response() => {
                Some(f.fallback_reason())
            }
            Ok(r) if retry.after_response() && r.status().is_server_error() => {
                Some(FallbackReason::ServerError)
            }
            _ => None,
        };
        let Some(reason) = reason.filter(|_| may_retry) else {
            return Ok(Served {
                target,
                result: first,
            });
        };
        let Some(stable) = snapshot.upstream_for_slot(record.route, BackendSlot::STABLE) else {
            return Ok(Served {
                target,
                result: first,
            });
        };
        let Some(retry_body) = retry.take(stable, fault) else {
            // More of the body was read than can be replayed: the first answer stands.
            return Ok(Served {
                target,
                result: first,
            });
        };
        // The failed attempt counts against its backend's breaker.
        record_attempt(
            self,
            snapshot,
            record.route,
            target.slot,
            record.admission,
            Verdict::Error(record.started.elapsed()),
        );
        drop(first);
        if let Some(counter) = route_rt
            .slot(target.slot)
            .and_then(|s| s.fallbacks.get(reason.index()))
        {
            counter.inc();
        }
        drop(target);
        record.fallback = Some(reason);
        record.admission = Admission::Admitted;
        record.slot = BackendSlot::STABLE;
        let guard = stable.try_acquire().ok_or(OwnError::Bulkhead)?;
        let target = Target {
            slot: BackendSlot::STABLE,
            upstream: stable,
            guard,
        };
        let retry_headers = std::mem::take(&mut head.headers);
        let result = send(
            stable,
            &head,
            retry_headers,
            route_rt.slot(BackendSlot::STABLE),
            retry_body,
            record.client_fault.as_deref(),
        )
        .await;
        Ok(Served { target, result })
    }

    /// The client's answer: the upstream's response streamed back (its upgrade tunnelled),
    /// recorded when its body ends; or Rampart's own answer for a failed attempt.
    fn respond(
        &self,
        mut record: Completion,
        served: Served<'_>,
        upgrade: Option<Upgrade>,
        http1: bool,
    ) -> Response<RespBody> {
        let Served { target, result } = served;
        record.slot = target.slot;
        record.latency = record.started.elapsed();
        let mut response = match result {
            Ok(response) => response,
            Err(AttemptError::Upstream(failure)) => {
                drop(target.guard);
                // The failed attempt is the upstream's error; the client gets Rampart's answer.
                record_attempt(
                    self,
                    &record.snapshot,
                    record.route,
                    target.slot,
                    record.admission,
                    Verdict::Error(record.latency),
                );
                return own(record, failure.own_error(), http1);
            }
            Err(AttemptError::Client(fault)) => {
                drop(target.guard);
                record_attempt(
                    self,
                    &record.snapshot,
                    record.route,
                    target.slot,
                    record.admission,
                    Verdict::Unjudged,
                );
                return self.client_fault(record, fault, http1);
            }
        };
        let upstream_upgrade = match (&upgrade, response.status()) {
            (Some(_), StatusCode::SWITCHING_PROTOCOLS) => Some(hyper::upgrade::on(&mut response)),
            _ => None,
        };
        let (mut head, body) = response.into_parts();
        let upgraded_protocol = head.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut head.headers, false);
        let mut guard = Some(target.guard);
        if let (
            Some(upstream_side),
            Some(Upgrade {
                client: Some(client_side),
                ..
            }),
            Some(protocol),
        ) = (upstream_upgrade, upgrade, upgraded_protocol)
        {
            head.headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(UPGRADE, protocol);
            tunnel(client_side, upstream_side, guard.take());
        }
        record.status = head.status.as_u16();
        record.grpc_status = grpc_status(&head.headers);
        let body = IdleBody::new(body, target.upstream.config.idle_timeout);
        // A body that is over before it starts (204, HEAD, 304, Content-Length: 0) is never
        // polled: record the request now.
        let completion = if body.is_end_stream() {
            crate::body::BodyEnd::finish(&mut record, End::Complete);
            None
        } else {
            Some(record)
        };
        Response::from_parts(
            head,
            RespBody::Upstream {
                body,
                guard,
                completion,
            },
        )
    }

    /// Rampart's answer to a request the client failed (bad body framing, a body cut
    /// short, a stalled body): counted as malformed when the framing was bad, never
    /// against an upstream.
    fn client_fault(
        &self,
        record: Completion,
        fault: crate::failure::ClientFault,
        http1: bool,
    ) -> Response<RespBody> {
        if fault == crate::failure::ClientFault::BadFraming {
            self.metrics
                .malformed
                .with_label_values(&["bad_body"])
                .inc();
        }
        own(record, fault.own_error(), http1)
    }
}

/// The runtime of route `route` (the default route for `None`).
fn route_runtime(snapshot: &Snapshot, route: Option<usize>) -> &RouteRuntime {
    route
        .and_then(|i| snapshot.routes.get(i))
        .unwrap_or(&snapshot.default_route)
}

/// Takes the client's upgrade request (`Connection: upgrade` and `Upgrade: X` on HTTP/1.1)
/// out of the head, if any: it is decided like any request, then tunnelled.
fn take_upgrade(parts: &mut http::request::Parts) -> Option<Upgrade> {
    let protocol = upgrade_protocol(parts)?;
    Some(Upgrade {
        protocol,
        client: parts.extensions.remove::<ClientUpgrade>(),
    })
}

/// The bulkhead, the last gate: a non-stable candidate at its limit goes to stable;
/// stable at its limit is a 503 at once, never a queue.
fn acquire<'s>(snapshot: &'s Snapshot, record: &mut Completion) -> Option<Target<'s>> {
    let route_rt = route_runtime(snapshot, record.route);
    let slot = record.decision.slot;
    if let Some(upstream) = snapshot.upstream_for_slot(record.route, slot) {
        if let Some(guard) = upstream.try_acquire() {
            return Some(Target {
                slot,
                upstream,
                guard,
            });
        }
    }
    if !slot.is_stable() {
        if let Some(s) = route_rt.slot(slot) {
            s.bulkhead_rejections.inc();
        }
        // A probe slot taken for the candidate goes back: this request never tries it.
        if let Some(breaker) = route_rt.slot(slot).and_then(|s| s.breaker.as_ref()) {
            breaker.release(record.admission);
        }
        record.decision = record.decision.to_stable(Reason::Bulkhead);
        record.admission = Admission::Admitted;
        record.slot = BackendSlot::STABLE;
        if let Some(upstream) = snapshot.upstream_for_slot(record.route, BackendSlot::STABLE) {
            if let Some(guard) = upstream.try_acquire() {
                return Some(Target {
                    slot: BackendSlot::STABLE,
                    upstream,
                    guard,
                });
            }
        }
    }
    if let Some(s) = route_rt.slot(BackendSlot::STABLE) {
        s.bulkhead_rejections.inc();
    }
    None
}

/// The request body for the first attempt, and what a re-send could use: the client's
/// body streamed, kept reclaimable, or read whole first. A body that fails while being
/// read whole is the client's fault.
async fn prepare_body(
    snapshot: &Snapshot,
    record: &Completion,
    target: &Target<'_>,
    head: &UpstreamHead,
    body: RequestBody,
) -> Result<((ReqBody, Option<Arc<FaultCell>>), RetryBody), crate::failure::ClientFault> {
    let fallback = record
        .route
        .and_then(|i| snapshot.config.routes.get(i))
        .map(|r| r.fallback)
        .unwrap_or(Fallback::Never);
    let may_fall_back = !target.slot.is_stable() && fallback != Fallback::Never;
    let idle = target.upstream.config.idle_timeout;
    // Only a body still to come can fail on the client's side.
    let fault = (!body.is_end_stream()).then(|| Arc::new(FaultCell::default()));
    let buffer = may_fall_back
        && fallback == Fallback::Idempotent
        && is_idempotent(&head.method)
        && (body.is_end_stream()
            || body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= MAX_RETRY_BODY));
    if buffer {
        let limited = Limited::new(IdleBody::new(body, idle), MAX_RETRY_BODY as usize);
        return match limited.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                Ok((
                    (ReqBody::buffered(bytes.clone()), None),
                    RetryBody::Buffered(bytes),
                ))
            }
            Err(e) => Err(ClientBodyError::classify(e).fault()),
        };
    }
    if may_fall_back {
        let (body, reclaim) = reclaimable(body);
        let first = ReqBody::new(
            ReqSource::Reclaimable {
                body: IdleBody::new(body, idle),
            },
            fault.clone(),
        );
        return Ok(((first, fault), RetryBody::Reclaim(reclaim)));
    }
    let first = ReqBody::new(
        ReqSource::Streamed {
            body: IdleBody::new(body, idle),
        },
        fault.clone(),
    );
    Ok(((first, fault), RetryBody::None))
}

/// Finishes `record` as an answer of Rampart's own.
fn own(mut record: Completion, error: OwnError, http1: bool) -> Response<RespBody> {
    record.own = true;
    record.status = error.status().as_u16();
    record.error = Some(error.name());
    record.latency = record.started.elapsed();
    let grpc = record.grpc;
    if let Some(code) = error.grpc_code().filter(|_| grpc) {
        // The client gets HTTP 200 trailers-only with a failing grpc-status: a failed
        // call, counted as code_class "error", never 2xx.
        record.status = 200;
        record.grpc_status = Some(code);
    }
    crate::body::BodyEnd::finish(&mut record, End::Complete);
    own_error_response(error, grpc, http1 && error.closes_connection())
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
    client: ClientUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Option<InflightGuard>,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let (mut client, upstream) = match tokio::join!(client, upstream) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(e), _) => {
                tracing::debug!(error = %e, "the client's connection was not handed over");
                return;
            }
            (_, Err(e)) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        }
    });
}

/// Sends one attempt to `upstream` with `headers` (the head's, owned by this attempt). A
/// failure is the client's when its body failed (noted in `fault`), or when
/// `request_timeout` passed while the client was still sending the body.
async fn send(
    upstream: &UpstreamRuntime,
    head: &UpstreamHead,
    mut headers: HeaderMap,
    slot: Option<&SlotRuntime>,
    body: ReqBody,
    fault: Option<&FaultCell>,
) -> Result<Response<UpstreamBody>, AttemptError> {
    if let Some(pool) = upstream.h1.as_ref() {
        if body.is_end_stream() && !headers.contains_key(UPGRADE) {
            return send_h1(upstream, pool, head, headers, slot).await;
        }
    }
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(upstream.scheme.clone());
    uri_parts.authority = Some(upstream.authority.clone());
    uri_parts.path_and_query = Some(head.path_and_query.clone());
    let uri = Uri::from_parts(uri_parts)
        .map_err(|_| AttemptError::Upstream(UpstreamFailure::Protocol))?;
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
        Ok(Ok(response)) => Ok(response.map(UpstreamBody::Hyper)),
        Ok(Err(e)) => Err(classify(&e, fault.and_then(FaultCell::get))),
        Err(_elapsed) => match fault {
            Some(cell) if cell.waiting_on_client() => {
                Err(AttemptError::Client(crate::failure::ClientFault::Stalled))
            }
            _ => Err(AttemptError::Upstream(UpstreamFailure::Timeout)),
        },
    }
}

/// [`send`] for a request without a body to a plain-HTTP/1.1 upstream: Rampart's own
/// client, in this task ([`crate::h1::client`]).
async fn send_h1(
    upstream: &UpstreamRuntime,
    pool: &Arc<H1Pool>,
    head: &UpstreamHead,
    mut headers: HeaderMap,
    slot: Option<&SlotRuntime>,
) -> Result<Response<UpstreamBody>, AttemptError> {
    headers.remove(http::header::TE);
    if let Some(s) = slot {
        headers.insert(&X_RAMPART_BACKEND, s.name.clone());
    }
    if !headers.contains_key(http::header::HOST) {
        if let Ok(host) = HeaderValue::from_str(upstream.authority.as_str()) {
            headers.insert(http::header::HOST, host);
        }
    }
    let sent = crate::h1::client::send(pool, &head.method, head.path_and_query.as_str(), &headers);
    match tokio::time::timeout(upstream.config.request_timeout, sent).await {
        Ok(Ok(response)) => Ok(response.map(UpstreamBody::H1)),
        Ok(Err(ClientError::Connect(_))) => {
            Err(AttemptError::Upstream(UpstreamFailure::ConnectRefused))
        }
        Ok(Err(ClientError::ConnectTimeout(_))) => {
            Err(AttemptError::Upstream(UpstreamFailure::ConnectTimeout))
        }
        Ok(Err(ClientError::Protocol(_))) => Err(AttemptError::Upstream(UpstreamFailure::Protocol)),
        Err(_elapsed) => Err(AttemptError::Upstream(UpstreamFailure::Timeout)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The proxy's future is built on the stack and moved into its box once per request
    /// (`memcpy` of its whole size, in the instruction profile): a regression in its size
    /// costs every request.
    #[tokio::test]
    async fn the_proxy_future_stays_small() {
        let config = rampart_core::config::parse(
            "version: 1\nlisten: 127.0.0.1:1\ndefault_upstream: a\nupstreams:\n  a:\n    url: http://127.0.0.1:2\n",
        )
        .unwrap();
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let source = crate::SnapshotSource {
            sha256: String::new(),
            path: None,
        };
        let snapshot = Snapshot::build(
            Arc::new(config),
            source,
            &metrics,
            None,
            &std::collections::HashMap::new(),
        )
        .unwrap();
        let state = Arc::new(ProxyState::new(snapshot, metrics));
        let conn = ConnInfo {
            peer: "127.0.0.1:3".parse().unwrap(),
            tls: false,
        };
        let request = Request::new(RequestBody::Empty);
        let future = state.handle(conn, request);
        let size = std::mem::size_of_val(&future);
        // At the time of writing: 3,344 bytes in a release build, 3,376 in a test build.
        assert!(size <= 4096, "the proxy's future grew to {size} bytes");
    }
}
