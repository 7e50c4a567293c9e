//! `rampart injector --listen ADDR --tls-cert F --tls-key F`: the mutating admission
//! webhook (docs/inject.md#the-webhook).
//!
//! HTTPS only. `POST /mutate` takes an `admission.k8s.io/v1` AdmissionReview and answers
//! with the same `uid`, `allowed: true` always (injection never blocks a pod), a base64
//! `JSONPatch` when the sidecar was added, and `warnings`. `GET /healthz`, `/readyz` (503
//! from SIGTERM on) and `/metrics` (admissions by result) on the same address. The
//! certificate and key are re-read when they change on disk (cert-manager renews them in
//! place), with a periodic check as a backup. Exit 0 after SIGTERM, 3 if it cannot bind.

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use rampart_inject::{self as inject, Options, Outcome};
use rampart_proxy::tls::ReloadingCert;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest AdmissionReview accepted. The API server's own request limit is 3 MiB; a pod is
/// far smaller. Bigger bodies get 413 before they are read.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Past this many bytes an oversized body is no longer read: the connection is closed.
const DRAIN_MAX: usize = 64 * 1024 * 1024;
/// Longest the body of one request may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code when the listener cannot bind.
const EXIT_BIND: u8 = 3;
/// How often the certificate files are checked besides the file watch.
const CERT_CHECK: Duration = Duration::from_secs(10);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once. The API servers open a few each; at the cap accepting
/// pauses (new connections wait in the listen queue) so a flood cannot exhaust descriptors.
const MAX_CONNECTIONS: usize = 1024;
/// Most concurrent HTTP/2 streams per connection (one admission is one stream).
const MAX_STREAMS: u32 = 64;

/// The injector's settings, from its flags.
pub struct Settings {
    /// Address to serve HTTPS on.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// The mutation's options (image, kube version, default ConfigMap).
    pub options: Options,
}

/// Counters and readiness shared by every request.
struct State {
    options: Options,
    admissions: IntCounterVec,
    duration: HistogramVec,
    registry: Registry,
    ready: AtomicBool,
}

impl State {
    fn new(options: Options) -> Result<State, prometheus::Error> {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            Opts::new(
                "rampart_injector_admissions_total",
                "AdmissionReviews answered, by result: injected, skipped (opted out, not applicable or already injected), error (admitted unchanged).",
            ),
            &["result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rampart_injector_admission_duration_seconds",
                "Time to answer an AdmissionReview, from the full body read to the answer.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
            ]),
            &["result"],
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        for r in ["injected", "skipped", "error"] {
            admissions.with_label_values(&[r]);
        }
        Ok(State {
            options,
            admissions,
            duration,
            registry,
            ready: AtomicBool::new(false),
        })
    }
}

/// Runs the webhook until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart injector: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(settings))
}

async fn serve(settings: Settings) -> ExitCode {
    let cert = match ReloadingCert::new(settings.tls_cert.clone(), settings.tls_key.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("rampart injector: {e}");
            tracing::error!(error = %e, "cannot load the TLS certificate");
            return ExitCode::FAILURE;
        }
    };
    let acceptor = match rampart_proxy::tls::server_config(Arc::clone(&cert)) {
        Ok(c) => TlsAcceptor::from(c),
        Err(e) => {
            eprintln!("rampart injector: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rampart injector: cannot bind {}: {e}", settings.listen);
            tracing::error!(addr = %settings.listen, error = %e, "listener cannot bind");
            return ExitCode::from(EXIT_BIND);
        }
    };
    let state = match State::new(settings.options) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("rampart injector: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let watched_cert = Arc::clone(&cert);
    let _watcher = rampart_runtime::watch::spawn(
        "tls certificate",
        &[&settings.tls_cert, &settings.tls_key],
        move || reload_cert(&watched_cert),
    );
    let periodic_cert = Arc::clone(&cert);
    let periodic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CERT_CHECK);
        loop {
            tick.tick().await;
            let c = Arc::clone(&periodic_cert);
            let _ = tokio::task::spawn_blocking(move || reload_cert(&c)).await;
        }
    });

    use tokio::signal::unix::{signal, SignalKind};
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("rampart injector: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(settings.listen);
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(listen = %local, "rampart injector is serving");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            s = Arc::clone(&slots).acquire_owned() => s,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = Arc::clone(&builder);
        let state = Arc::clone(&state);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
    state.ready.store(false, Ordering::SeqCst);
    drop(listener);
    tracing::info!("SIGTERM: finishing in-flight admissions");
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    periodic.abort();
    ExitCode::SUCCESS
}

fn reload_cert(cert: &ReloadingCert) {
    match cert.reload() {
        Ok(true) => tracing::info!(cert = %cert.files().0.display(), "TLS certificate reloaded"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "new TLS certificate refused; the old one keeps serving")
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(state, req).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut buf = Vec::new();
            if let Err(e) = TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            let mut r = Response::new(Full::new(Bytes::from(buf)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, "/mutate" | "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the webhook is POST /mutate",
        ),
    }
}

async fn mutate(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let too_big = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("AdmissionReview larger than {MAX_BODY} bytes"),
        )
    };
    // An oversized body is read to its end and dropped (bounded in size and time) before
    // the 413, so the client sees the answer instead of a reset mid-upload.
    let mut body = req.into_body();
    let mut kept: Vec<u8> = Vec::new();
    let mut seen: usize = 0;
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > DRAIN_MAX {
                    break;
                }
                if seen <= MAX_BODY {
                    kept.extend_from_slice(&data);
                }
            }
        }
        Ok::<(), String>(())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            state.admissions.with_label_values(&["error"]).inc();
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
        Err(_) => {
            state.admissions.with_label_values(&["error"]).inc();
            return text(StatusCode::REQUEST_TIMEOUT, "the body took too long");
        }
    }
    if seen > MAX_BODY {
        state.admissions.with_label_values(&["error"]).inc();
        return too_big();
    }
    let body = Bytes::from(kept);
    let started = Instant::now();
    let (status, answer, result) = review(&state.options, &body);
    state.admissions.with_label_values(&[result]).inc();
    state
        .duration
        .with_label_values(&[result])
        .observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(value) => {
            let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(message) => text(status, message),
    }
}

/// Why a body is not an AdmissionReview this webhook can answer (answered 400 with the
/// message, counted as `error`).
#[derive(Debug, thiserror::Error)]
enum ReviewError {
    /// Not JSON at all.
    #[error("the body is not JSON: expected an admission.k8s.io/v1 AdmissionReview")]
    NotJson,
    /// JSON, but another API version or kind.
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion {api_version:?}, kind {kind:?} (set admissionReviewVersions: [v1])")]
    WrongKind {
        /// The body's `apiVersion`.
        api_version: String,
        /// The body's `kind`.
        kind: String,
    },
    /// No `request` to answer.
    #[error("AdmissionReview without request")]
    NoRequest,
    /// No `request.uid` to answer with.
    #[error("AdmissionReview request without uid")]
    NoUid,
}

/// Answers one AdmissionReview body: the HTTP status, the AdmissionReview (or an error
/// message for a body that is not one), and the metric's result label.
fn review(options: &Options, body: &[u8]) -> (StatusCode, Result<Value, String>, &'static str) {
    let bad = |e: ReviewError| (StatusCode::BAD_REQUEST, Err(e.to_string()), "error");
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return bad(ReviewError::NotJson);
    };
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = review.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return bad(ReviewError::WrongKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
    let Some(request) = review.get("request") else {
        return bad(ReviewError::NoRequest);
    };
    let Some(uid) = request.get("uid").and_then(Value::as_str) else {
        return bad(ReviewError::NoUid);
    };
    let respond = |extra: Value, result: &'static str| {
        let mut response = json!({"uid": uid, "allowed": true});
        if let (Some(r), Some(e)) = (response.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        (
            StatusCode::OK,
            Ok(
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
            ),
            result,
        )
    };
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return respond(json!({}), "skipped");
    };
    if operation != "CREATE" {
        return respond(json!({}), "skipped");
    }
    let name = inject::display_name(object);
    match inject::inject_object(object, options) {
        Ok(Outcome::Injected(injected)) => {
            let patch = inject::patch::diff(object, &injected.object);
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(Value::Array(patch).to_string().as_bytes());
            let warnings: Vec<String> = injected
                .warnings
                .iter()
                .map(|w| format!("rampart: {w}"))
                .collect();
            tracing::info!(object = %name, config_map = %injected.config_map, native = injected.native, "injected");
            respond(
                json!({"patchType": "JSONPatch", "patch": encoded, "warnings": warnings}),
                "injected",
            )
        }
        Ok(Outcome::Skipped { reason }) => {
            tracing::info!(object = %name, %reason, "skipped");
            if reason.starts_with("opted out") {
                respond(json!({}), "skipped")
            } else {
                respond(
                    json!({"warnings": [format!("rampart: skipped: {reason}")]}),
                    "skipped",
                )
            }
        }
        Ok(Outcome::Unchanged) => respond(json!({}), "skipped"),
        Err(e) => {
            tracing::warn!(object = %name, error = %e, "cannot inject; admitted unchanged");
            respond(
                json!({"warnings": [format!("rampart: not injected: {e}")]}),
                "error",
            )
        }
    }
}
