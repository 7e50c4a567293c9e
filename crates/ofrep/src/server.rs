//! The OFREP listener: `POST /ofrep/v1/evaluate/flags/{key}` (one flag) and
//! `POST /ofrep/v1/evaluate/flags` (every flag, with an `ETag`; `304` on a matching
//! `If-None-Match`), HTTP/1.1 and h2c, TLS off loopback (docs/ofrep.md).
//!
//! A hostile or broken client gets a 400 that says what was wrong and the listener keeps
//! serving: at most [`MAX_BODY`] bytes of a body are kept (a larger one up to 1 MiB is read
//! and discarded so the client gets to read its 400; a larger one still is refused by its
//! `Content-Length` and the connection closed), headers must arrive within 10 s, a body
//! within 10 s, and at most [`MAX_CONNECTIONS`] connections are served at once (more wait
//! in the accept queue).

use crate::answer::{self, FlagKey};
use crate::context::{self, ContextError, MAX_BODY};
use crate::{EvalContext, Evaluator, FlagError};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The bulk evaluation path.
pub const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";
/// The single evaluation path, before the key.
pub const SINGLE_PREFIX: &str = "/ofrep/v1/evaluate/flags/";
/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a request's headers (and for an idle keep-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The `route` label of a flag key that names no route.
pub const UNKNOWN_ROUTE: &str = "_unknown";
/// The `route` label of a bulk request refused whole (its body or context).
pub const BULK_ROUTE: &str = "_bulk";

/// `rampart_ofrep_evaluations_total{route, reason}`: evaluations answered, by route and
/// OpenFeature reason or error code. Labels come from the config only: a key that names no
/// route is counted as [`UNKNOWN_ROUTE`].
#[derive(Clone)]
pub struct OfrepMetrics {
    evaluations: IntCounterVec,
}

impl OfrepMetrics {
    /// Creates the family and registers it into `registry`.
    pub fn new(registry: &Registry) -> Result<OfrepMetrics, prometheus::Error> {
        let evaluations = IntCounterVec::new(
            Opts::new(
                "rampart_ofrep_evaluations_total",
                "OpenFeature (OFREP) flag evaluations answered, by route and reason or error code",
            ),
            &["route", "reason"],
        )?;
        registry.register(Box::new(evaluations.clone()))?;
        Ok(OfrepMetrics { evaluations })
    }

    fn count(&self, route: &str, reason: &str) {
        self.evaluations.with_label_values(&[route, reason]).inc();
    }
}

/// The endpoint: an evaluator and its metrics.
pub struct Ofrep {
    evaluator: Arc<dyn Evaluator>,
    metrics: OfrepMetrics,
}

/// A response body.
pub type Body = Full<Bytes>;

fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    json_bytes(status, bytes)
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Unreadable(String),
}

impl BodyError {
    fn into_context_error(self) -> ContextError {
        match self {
            BodyError::TooLarge => {
                ContextError::Parse(format!("the body is larger than {MAX_BODY} bytes"))
            }
            BodyError::Unreadable(why) => ContextError::Parse(why),
        }
    }
}

/// Largest body read (and discarded past [`MAX_BODY`]) before a too-large answer: a client
/// still sending when the connection closes may never read the 400, so a body up to this
/// size is drained first. Beyond it the connection is closed after the answer.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads at most [`MAX_BODY`] bytes of the body, within [`BODY_TIMEOUT`].
async fn read_body<B>(request: Request<B>) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = std::pin::pin!(request.into_body());
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(frame) = body.as_mut().frame().await {
            let frame = frame.map_err(|e| {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                BodyError::Unreadable(format!("cannot read the body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) if total > MAX_BODY => Err(BodyError::TooLarge),
        Ok(Ok(())) => Ok(Bytes::from(kept)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::Unreadable(
            "the body did not arrive in time".to_string(),
        )),
    }
}

impl Ofrep {
    /// The endpoint over `evaluator`, counting into `metrics`.
    pub fn new(evaluator: Arc<dyn Evaluator>, metrics: OfrepMetrics) -> Ofrep {
        Ofrep { evaluator, metrics }
    }

    /// Answers one request. Never fails: every problem is an OFREP error answer.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path().to_string();
        let bulk = path == BULK_PATH;
        let key = path.strip_prefix(SINGLE_PREFIX).filter(|k| !k.is_empty());
        if !bulk && key.is_none() {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"errorDetails": format!(
                    "no such endpoint: {BULK_PATH} and {SINGLE_PREFIX}{{key}} are served here"
                )}),
            );
        }
        if request.method() != Method::POST {
            let mut response = json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"errorDetails": "flag evaluation is a POST"}),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let if_none_match = request
            .headers()
            .get(IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let parsed = match read_body(request).await {
            Ok(bytes) => context::parse(&bytes),
            Err(e) => Err(e.into_context_error()),
        };
        match key {
            Some(key) => self.single(key, parsed),
            None => self.bulk(parsed, if_none_match.as_deref()),
        }
    }

    fn single(&self, key: &str, parsed: Result<EvalContext, ContextError>) -> Response<Body> {
        let flag = FlagKey::parse(key);
        let context = match parsed {
            Ok(c) => c,
            Err(e) => {
                // A key that names a route is a config value, so it may be a label.
                let label = if self.evaluator.knows(flag.route) {
                    flag.route
                } else {
                    UNKNOWN_ROUTE
                };
                self.metrics.count(label, e.code());
                return json(
                    StatusCode::BAD_REQUEST,
                    &answer::failure(key, e.code(), &e.to_string()),
                );
            }
        };
        match self.evaluator.evaluate(flag.route, &context) {
            Ok(evaluation) => {
                self.metrics
                    .count(&evaluation.route, answer::reason(&evaluation));
                json(StatusCode::OK, &answer::success(key, &evaluation))
            }
            Err(e) => {
                let (status, label) = match &e {
                    FlagError::NotFound(_) => (StatusCode::NOT_FOUND, UNKNOWN_ROUTE),
                    FlagError::TargetingKeyMissing(route) => {
                        (StatusCode::BAD_REQUEST, route.as_str())
                    }
                };
                self.metrics.count(label, answer::error_code(&e));
                json(
                    status,
                    &answer::failure(key, answer::error_code(&e), &e.to_string()),
                )
            }
        }
    }

    fn bulk(
        &self,
        parsed: Result<EvalContext, ContextError>,
        if_none_match: Option<&str>,
    ) -> Response<Body> {
        let context = match parsed {
            Ok(c) => c,
            Err(e) => {
                self.metrics.count(BULK_ROUTE, e.code());
                return json(
                    StatusCode::BAD_REQUEST,
                    &answer::bulk_failure(e.code(), &e.to_string()),
                );
            }
        };
        let all = self.evaluator.evaluate_all(&context);
        let mut flags = Vec::with_capacity(all.flags.len());
        for (route, result) in &all.flags {
            match result {
                Ok(evaluation) => {
                    self.metrics.count(route, answer::reason(evaluation));
                    flags.push(answer::success(route, evaluation));
                    if evaluation.toggle {
                        let key = format!("{route}{}", answer::BACKEND_SUFFIX);
                        flags.push(answer::success(&key, evaluation));
                    }
                }
                Err(e) => {
                    self.metrics.count(route, answer::error_code(e));
                    flags.push(answer::failure(
                        route,
                        answer::error_code(e),
                        &e.to_string(),
                    ));
                }
            }
        }
        let body = serde_json::to_vec(&serde_json::json!({ "flags": flags })).unwrap_or_default();
        let etag = answer::etag(&all.version, &body);
        let tag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
        if if_none_match.is_some_and(|v| answer::none_match(v, &etag)) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response.headers_mut().insert(ETAG, tag);
            return response;
        }
        let mut response = json_bytes(StatusCode::OK, body);
        response.headers_mut().insert(ETAG, tag);
        response
    }
}

/// Serves `ofrep` on `listener` until `stop` resolves. `tls`, when given, wraps every
/// connection (the runtime passes it for a listener off loopback).
pub async fn serve(
    listener: TcpListener,
    ofrep: Arc<Ofrep>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BODY);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let next = async {
            let permit = Arc::clone(&permits).acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            _ = &mut stop => break,
            next = next => next,
        };
        let (Ok(permit), Ok((stream, _peer))) = (permit, accepted) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ofrep = Arc::clone(&ofrep);
        let service = service_fn(move |request: Request<Incoming>| {
            let ofrep = Arc::clone(&ofrep);
            async move { Ok::<_, Infallible>(ofrep.handle(request).await) }
        });
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
            drop(permit);
        });
    }
}
