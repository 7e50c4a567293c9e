//! The admin API (docs/admin.md), served on `admin_listen` when it is set:
//!
//! | method and path                       | role     | effect                                   |
//! |---------------------------------------|----------|------------------------------------------|
//! | GET  /v1/status                       | viewer   | everything at once (config, routes, ...) |
//! | GET  /v1/explain?route=R&identity=ID  | viewer   | `{route, bucket, backend, reason}`       |
//! | GET  /v1/audit?limit=N                | viewer   | the last N audit entries                 |
//! | POST /v1/routes/{route}/kill          | operator | non-stable backends to 0 % until unkill  |
//! | POST /v1/routes/{route}/unkill        | operator | clears the admin kill                    |
//! | POST /v1/routes/{route}/pause, resume | operator | freezes or resumes the route's rollout   |
//! | POST /v1/config/rollback              | admin    | the previous good config, pinned         |
//!
//! Checks run in this order: token (401 with `WWW-Authenticate: Bearer`), role (403), body
//! (400: at most 64 KiB of JSON with a non-empty `reason` of at most 1024 characters), route
//! (404), then the operation. Errors are `{"error": "..."}`. Every POST to one of these paths
//! is audited whatever its answer; refusals (400, 401, 403) beyond 10 a second are summed
//! into one `admin.refusals_summarized` entry so anonymous callers cannot flood the log.
//! GETs are not audited.
//!
//! The API knows nothing of the runtime: the operations go through [`AdminControl`].

use crate::audit::{AuditLog, NewEntry};
use crate::tokens::{Authn, Role, TokenStore};
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rampart_core::clock::Clock;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// Largest request body accepted (docs/admin.md).
pub const MAX_BODY: usize = 64 * 1024;
/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// Refusals audited one by one per second; the rest are summed.
pub const REFUSALS_PER_SECOND: u32 = 10;
/// Default and largest `limit` of `GET /v1/audit`.
pub const AUDIT_LIMIT_DEFAULT: usize = 100;
/// Largest `limit` of `GET /v1/audit`.
pub const AUDIT_LIMIT_MAX: usize = 10_000;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;
/// Time allowed to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest route name kept in an audit entry (route names are short; paths may not be).
const MAX_AUDITED_ROUTE: usize = 64;

/// Why an operation failed, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No route has that name: 404.
    #[error("unknown route {0:?}")]
    UnknownRoute(String),
    /// The operation does not apply in the current state (e.g. pause without a rollout): 409.
    #[error("{0}")]
    Conflict(String),
    /// The operation failed (e.g. the previous config could not be applied): 500.
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    fn status(&self) -> StatusCode {
        match self {
            ControlError::UnknownRoute(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Who asked, and why: passed to every mutating operation so it can keep them (e.g. with
/// a kill, which status shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub actor: String,
    /// The non-empty reason given.
    pub reason: String,
}

/// The operations behind the admin API, implemented by `crates/runtime` over its state. The
/// mutating ones may block (they persist state), so the API calls them on a blocking thread.
pub trait AdminControl: Send + Sync + 'static {
    /// The `GET /v1/status` document, typed so that `rampart status` reads it back with the
    /// same structs ([`crate::status::Status`]).
    fn status(&self) -> crate::status::Status;
    /// Where `identity` goes on `route` now: `{route, bucket, backend, reason}`.
    fn explain(&self, route: &str, identity: &str) -> Result<Value, ControlError>;
    /// Kills `route` on this replica (every non-stable backend to 0 %) until unkill.
    fn kill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError>;
    /// Clears an admin kill of `route`.
    fn unkill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError>;
    /// Freezes the rollout of `route` on this replica.
    fn pause(&self, route: &str, caller: &Caller) -> Result<Value, ControlError>;
    /// Resumes the rollout of `route` on this replica.
    fn resume(&self, route: &str, caller: &Caller) -> Result<Value, ControlError>;
    /// Re-applies the previous good config, pinned until the file's content changes.
    fn rollback(&self, caller: &Caller) -> Result<Value, ControlError>;
}

/// A mutating operation, from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Kill,
    Unkill,
    Pause,
    Resume,
    Rollback,
}

impl Op {
    fn action(self) -> &'static str {
        match self {
            Op::Kill => "route.kill",
            Op::Unkill => "route.unkill",
            Op::Pause => "route.pause",
            Op::Resume => "route.resume",
            Op::Rollback => "config.rollback",
        }
    }

    fn role(self) -> Role {
        match self {
            Op::Rollback => Role::Admin,
            _ => Role::Operator,
        }
    }
}

/// What a request asks for, from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Status,
    Explain,
    Audit,
    Mutate { op: Op, route: Option<String> },
}

fn endpoint(path: &str) -> Option<Endpoint> {
    match path {
        "/v1/status" => return Some(Endpoint::Status),
        "/v1/explain" => return Some(Endpoint::Explain),
        "/v1/audit" => return Some(Endpoint::Audit),
        "/v1/config/rollback" => {
            return Some(Endpoint::Mutate {
                op: Op::Rollback,
                route: None,
            })
        }
        _ => {}
    }
    let rest = path.strip_prefix("/v1/routes/")?;
    let (route, action) = rest.split_once('/')?;
    let op = match action {
        "kill" => Op::Kill,
        "unkill" => Op::Unkill,
        "pause" => Op::Pause,
        "resume" => Op::Resume,
        _ => return None,
    };
    if route.is_empty() {
        return None;
    }
    Some(Endpoint::Mutate {
        op,
        route: Some(percent_decode(route)),
    })
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set); invalid escapes stay as
/// written and invalid UTF-8 is replaced.
fn decode(text: &str, plus: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_decode(text: &str) -> String {
    decode(text, false)
}

/// The first value of query parameter `name`, decoded as a form field.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k, true) == name).then(|| decode(v, true))
    })
}

/// Refusals audited in the current second, and the ones summed since.
#[derive(Debug, Default)]
struct Refusals {
    second: u64,
    written: u32,
    summed: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    by_status: BTreeMap<u16, u64>,
    by_actor: BTreeMap<String, u64>,
    by_action: BTreeMap<String, u64>,
}

impl Refusals {
    /// The summary entry of the refusals summed so far, if any, and a fresh tally.
    fn take_summary(&mut self) -> Option<NewEntry> {
        if self.summed == 0 {
            return None;
        }
        let ts = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        let by_status: BTreeMap<String, u64> = self
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let entry = NewEntry::new(
            "system",
            "admin.refusals_summarized",
            json!({
                "count": self.summed,
                "first": ts(self.first),
                "last": ts(self.last),
                "by_status": by_status,
                "by_actor": self.by_actor,
                "by_action": self.by_action,
                "note": format!("refused admin calls beyond {REFUSALS_PER_SECOND} a second, summed into this entry"),
            }),
        );
        self.summed = 0;
        self.first = None;
        self.last = None;
        self.by_status.clear();
        self.by_actor.clear();
        self.by_action.clear();
        Some(entry)
    }
}

/// The admin API: tokens, audit log and the operations.
pub struct AdminApi {
    control: Arc<dyn AdminControl>,
    tokens: TokenStore,
    audit: Option<Arc<AuditLog>>,
    clock: Arc<dyn Clock>,
    refusals: Mutex<Refusals>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("tokens", &self.tokens)
            .field("audit", &self.audit)
            .finish()
    }
}

type Answer = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> Answer {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_response(status: StatusCode, message: &str) -> Answer {
    let mut response = json_response(status, &json!({ "error": message }));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The outcome of one mutating call, for the response and the audit entry.
struct Outcome {
    status: StatusCode,
    body: Value,
    actor: String,
    reason: Option<String>,
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

impl AdminApi {
    /// The API over `control`, authenticating with `tokens` and auditing into `audit` (or
    /// only into the log when there is no `state_dir`).
    pub fn new(
        control: Arc<dyn AdminControl>,
        tokens: TokenStore,
        audit: Option<Arc<AuditLog>>,
        clock: Arc<dyn Clock>,
    ) -> AdminApi {
        if audit.is_none() {
            tracing::warn!("no state_dir: admin calls are logged but not written to an audit log");
        }
        AdminApi {
            control,
            tokens,
            audit,
            clock,
            refusals: Mutex::new(Refusals::default()),
        }
    }

    /// Answers one request. Never fails: every problem is a JSON error response.
    pub async fn handle<B>(self: &Arc<Self>, request: Request<B>) -> Answer
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(endpoint) = endpoint(request.uri().path()) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "not found: see /v1/status, /v1/explain, /v1/audit, /v1/routes/{route}/kill|unkill|pause|resume, /v1/config/rollback",
            );
        };
        let method = request.method().clone();
        match endpoint {
            Endpoint::Mutate { op, route } => {
                if method != Method::POST {
                    return method_not_allowed("POST");
                }
                let outcome = self.mutate(op, route.as_deref(), request).await;
                let response = error_or_body(&outcome);
                self.audit_call(op, route.as_deref(), outcome).await;
                response
            }
            read_only => {
                if method != Method::GET && method != Method::HEAD {
                    return method_not_allowed("GET, HEAD");
                }
                match self.tokens.authenticate(
                    request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .map(HeaderValue::as_bytes),
                ) {
                    Authn::Valid(_) => {}
                    other => return error_response(StatusCode::UNAUTHORIZED, authn_error(&other)),
                }
                self.read(read_only, request.uri().query()).await
            }
        }
    }

    async fn read(&self, endpoint: Endpoint, query: Option<&str>) -> Answer {
        match endpoint {
            Endpoint::Status => match serde_json::to_value(self.control.status()) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the status: {e}"),
                ),
            },
            Endpoint::Explain => {
                let route = query_param(query, "route").filter(|r| !r.is_empty());
                let identity = query_param(query, "identity");
                let (Some(route), Some(identity)) = (route, identity) else {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "explain needs ?route=R&identity=ID",
                    );
                };
                match self.control.explain(&route, &identity) {
                    Ok(v) => json_response(StatusCode::OK, &v),
                    Err(e) => error_response(e.status(), &e.to_string()),
                }
            }
            Endpoint::Audit => {
                let limit = match query_param(query, "limit") {
                    None => AUDIT_LIMIT_DEFAULT,
                    Some(text) => match text.parse::<usize>() {
                        Ok(n) if n <= AUDIT_LIMIT_MAX => n,
                        _ => {
                            return error_response(
                                StatusCode::BAD_REQUEST,
                                &format!("limit must be a number from 0 to {AUDIT_LIMIT_MAX}"),
                            )
                        }
                    },
                };
                let Some(audit) = self.audit.clone() else {
                    return error_response(
                        StatusCode::NOT_FOUND,
                        "no audit log: state_dir is not set",
                    );
                };
                match tokio::task::spawn_blocking(move || audit.tail(limit)).await {
                    Ok(Ok(entries)) => json_response(
                        StatusCode::OK,
                        &json!({ "entries": entries, "count": entries.len() }),
                    ),
                    Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            Endpoint::Mutate { .. } => error_response(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
        }
    }

    /// Authenticates, authorises, reads the body and runs a mutating operation.
    async fn mutate<B>(&self, op: Op, route: Option<&str>, request: Request<B>) -> Outcome
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let refuse = |status: StatusCode, actor: &str, message: &str| Outcome {
            status,
            body: json!({ "error": message }),
            actor: actor.to_string(),
            reason: None,
        };
        let authn = self.tokens.authenticate(
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        );
        let principal = match authn {
            Authn::Valid(p) => p,
            other => return refuse(StatusCode::UNAUTHORIZED, "anonymous", authn_error(&other)),
        };
        if principal.role < op.role() {
            return refuse(
                StatusCode::FORBIDDEN,
                &principal.name,
                &format!(
                    "{} needs role {} or higher; token {:?} has role {}",
                    op.action(),
                    op.role().as_str(),
                    principal.name,
                    principal.role.as_str()
                ),
            );
        }
        let reason = match read_reason(request).await {
            Ok(r) => r,
            Err(message) => return refuse(StatusCode::BAD_REQUEST, &principal.name, &message),
        };
        let caller = Caller {
            actor: principal.name.clone(),
            reason: reason.clone(),
        };
        let control = Arc::clone(&self.control);
        let route_owned = route.map(str::to_string);
        let result = tokio::task::spawn_blocking(move || {
            let route = route_owned.as_deref().unwrap_or_default();
            match op {
                Op::Kill => control.kill(route, &caller),
                Op::Unkill => control.unkill(route, &caller),
                Op::Pause => control.pause(route, &caller),
                Op::Resume => control.resume(route, &caller),
                Op::Rollback => control.rollback(&caller),
            }
        })
        .await
        .unwrap_or_else(|e| Err(ControlError::Failed(format!("the operation panicked: {e}"))));
        let (status, body) = match result {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => (e.status(), json!({ "error": e.to_string() })),
        };
        Outcome {
            status,
            body,
            actor: principal.name,
            reason: Some(reason),
        }
    }

    /// Writes the audit entry of a mutating call (or counts it into the refusal summary).
    async fn audit_call(&self, op: Op, route: Option<&str>, outcome: Outcome) {
        let refused = matches!(
            outcome.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        );
        let mut detail = json!({ "status": outcome.status.as_u16() });
        if let Some(error) = outcome.body.get("error") {
            detail["error"] = error.clone();
        } else if outcome.status.is_success() {
            detail["result"] = outcome.body.clone();
        }
        let mut entry = NewEntry::new(outcome.actor.clone(), op.action(), detail);
        if let Some(r) = route {
            entry = entry.route(truncate_chars(r, MAX_AUDITED_ROUTE));
        }
        if let Some(reason) = outcome.reason {
            entry = entry.reason(reason);
        }
        let (summary, summed) = if refused {
            self.tally_refusal(outcome.status, &outcome.actor, op)
        } else {
            (None, false)
        };
        if let Some(s) = summary {
            self.write(s).await;
        }
        if !summed {
            self.write(entry).await;
        }
    }

    /// Counts a refusal in the current second: returns the summary of a second that is over
    /// (to write first) and whether this refusal was summed instead of written.
    fn tally_refusal(&self, status: StatusCode, actor: &str, op: Op) -> (Option<NewEntry>, bool) {
        let now = self.clock.wall();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let Ok(mut tally) = self.refusals.lock() else {
            return (None, false);
        };
        let mut summary = None;
        if tally.second != second {
            summary = tally.take_summary();
            tally.second = second;
            tally.written = 0;
        }
        if tally.written < REFUSALS_PER_SECOND {
            tally.written += 1;
            return (summary, false);
        }
        tally.summed += 1;
        tally.first.get_or_insert(now);
        tally.last = Some(now);
        *tally.by_status.entry(status.as_u16()).or_default() += 1;
        *tally.by_actor.entry(actor.to_string()).or_default() += 1;
        *tally.by_action.entry(op.action().to_string()).or_default() += 1;
        (summary, true)
    }

    /// Writes the summary of refusals summed in a second that is over (or all of them, when
    /// `force`). Called every second by [`serve`] and once when it stops.
    pub async fn flush_refusals(&self, force: bool) {
        let second = self
            .clock
            .wall()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let summary = match self.refusals.lock() {
            Ok(mut tally) if force || tally.second != second => tally.take_summary(),
            _ => None,
        };
        if let Some(s) = summary {
            self.write(s).await;
        }
    }

    /// Logs an entry and appends it to the audit log (on a blocking thread: it fsyncs).
    async fn write(&self, entry: NewEntry) {
        crate::audit::log_entry(&entry);
        let Some(audit) = self.audit.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || audit.append(&entry)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the audit log"),
            Err(e) => tracing::error!(error = %e, "the audit writer failed"),
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Answer {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed: use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn authn_error(authn: &Authn) -> &'static str {
    match authn {
        Authn::Missing => "missing bearer token: send Authorization: Bearer TOKEN",
        Authn::TooShort(_) => "token refused: tokens are at least 32 random bytes",
        Authn::Unknown | Authn::Valid(_) => "unknown token",
    }
}

fn error_or_body(outcome: &Outcome) -> Answer {
    let mut response = json_response(outcome.status, &outcome.body);
    if outcome.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Reads the body (at most [`MAX_BODY`], refused early by `Content-Length`) and returns
/// its non-empty `reason`, trimmed.
async fn read_reason<B>(request: Request<B>) -> Result<String, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_big = format!("body over {MAX_BODY} bytes");
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big);
    }
    let body = Limited::new(request.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big),
        Ok(Err(e)) => return Err(format!("cannot read the body: {e}")),
        Err(_) => return Err("the body did not arrive in time".to_string()),
    };
    if bytes.is_empty() {
        return Err("a JSON body with a non-empty \"reason\" is required".to_string());
    }
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("the body must be a JSON object with a \"reason\"".to_string());
    };
    let reason = match object.get("reason") {
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err("\"reason\" must be a string".to_string()),
        None => return Err("\"reason\" is required".to_string()),
    };
    if reason.is_empty() {
        return Err("\"reason\" must not be empty".to_string());
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "\"reason\" is longer than {MAX_REASON_CHARS} characters"
        ));
    }
    Ok(reason.to_string())
}

/// Serves the admin API on `listener` until `stop` resolves, then writes any pending
/// refusal summary.
pub async fn serve(
    listener: TcpListener,
    api: Arc<AdminApi>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let flusher = {
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                api.flush_refusals(false).await;
            }
        })
    };
    tokio::pin!(stop);
    loop {
        // At the limit, further connections wait in the kernel's accept queue until one
        // ends (idle ones end within the header read timeout), rather than being dropped.
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
        let api = Arc::clone(&api);
        let service = service_fn(move |request: Request<Incoming>| {
            let api = Arc::clone(&api);
            async move { Ok::<_, Infallible>(api.handle(request).await) }
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
                // Off loopback the API is served over TLS only (bearer tokens must not
                // cross the network in clear text).
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
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
    flusher.abort();
    api.flush_refusals(true).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::audit::verify;
    use rampart_core::clock::ManualClock;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    const ADMIN: &str = "admin-token-0123456789-0123456789-abcdef";
    const OPERATOR: &str = "operator-token-0123456789-0123456789-abc";
    const VIEWER: &str = "viewer-token-0123456789-0123456789-abcde";

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl AdminControl for Fake {
        fn status(&self) -> crate::status::Status {
            crate::status::Status::default()
        }
        fn explain(&self, route: &str, identity: &str) -> Result<Value, ControlError> {
            if route != "checkout" {
                return Err(ControlError::UnknownRoute(route.into()));
            }
            Ok(json!({"route": route, "identity_len": identity.len()}))
        }
        fn kill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
            if route != "checkout" {
                return Err(ControlError::UnknownRoute(route.into()));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("kill {route} {} {}", caller.actor, caller.reason));
            Ok(json!({"killed": true}))
        }
        fn unkill(&self, route: &str, _caller: &Caller) -> Result<Value, ControlError> {
            Ok(json!({"route": route}))
        }
        fn pause(&self, _route: &str, _caller: &Caller) -> Result<Value, ControlError> {
            Err(ControlError::Conflict("no rollout".into()))
        }
        fn resume(&self, _route: &str, _caller: &Caller) -> Result<Value, ControlError> {
            Err(ControlError::Conflict("no rollout".into()))
        }
        fn rollback(&self, _caller: &Caller) -> Result<Value, ControlError> {
            Ok(json!({"rolled_back": true}))
        }
    }

    struct Setup {
        api: Arc<AdminApi>,
        fake: Arc<Fake>,
        audit_path: PathBuf,
        clock: Arc<ManualClock>,
    }

    fn setup(tag: &str) -> Setup {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("rampart-api-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens.yaml");
        let h = |t: &str| rampart_core::config::sha256_hex(t.as_bytes());
        std::fs::write(
            &tokens,
            format!(
                "- {{name: ada, role: admin, sha256: {}}}\n- {{name: otto, role: operator, sha256: {}}}\n- {{name: vic, role: viewer, sha256: {}}}\n",
                h(ADMIN),
                h(OPERATOR),
                h(VIEWER)
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let audit = Arc::new(AuditLog::open_in(&dir, clock.clone()).unwrap());
        let fake = Arc::new(Fake::default());
        let api = Arc::new(AdminApi::new(
            fake.clone(),
            TokenStore::new(Some(tokens)),
            Some(audit.clone()),
            clock.clone(),
        ));
        Setup {
            api,
            fake,
            audit_path: audit.path().to_path_buf(),
            clock,
        }
    }

    fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn call(
        api: &Arc<AdminApi>,
        req: Request<Full<Bytes>>,
    ) -> (u16, Value, Response<Full<Bytes>>) {
        let response = api.handle(req).await;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            value,
            Response::from_parts(parts, Full::new(Bytes::new())),
        )
    }

    fn audit_lines(path: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    const REASON: &str = r#"{"reason": "INC-7 canary corrupts carts"}"#;

    #[tokio::test]
    async fn each_role_gets_what_it_may_and_403_for_the_rest() {
        let s = setup("roles");
        let cases: &[(&str, &str, Option<&str>, u16)] = &[
            ("GET", "/v1/status", None, 401),
            ("GET", "/v1/status", Some(VIEWER), 200),
            ("GET", "/v1/audit", Some(VIEWER), 200),
            (
                "GET",
                "/v1/explain?route=checkout&identity=alice",
                Some(VIEWER),
                200,
            ),
            ("POST", "/v1/routes/checkout/kill", Some(VIEWER), 403),
            ("POST", "/v1/routes/checkout/kill", Some(OPERATOR), 200),
            ("POST", "/v1/routes/checkout/unkill", Some(OPERATOR), 200),
            ("POST", "/v1/config/rollback", Some(OPERATOR), 403),
            ("POST", "/v1/config/rollback", Some(ADMIN), 200),
            ("POST", "/v1/routes/checkout/kill", Some(ADMIN), 200),
            ("POST", "/v1/routes/nope/kill", Some(ADMIN), 404),
            ("POST", "/v1/routes/checkout/pause", Some(OPERATOR), 409),
        ];
        for (method, path, token, want) in cases {
            let (status, body, _) = call(&s.api, request(method, path, *token, REASON)).await;
            assert_eq!(status, *want, "{method} {path} {token:?}: {body}");
        }
        assert_eq!(
            s.fake.calls.lock().unwrap()[0],
            "kill checkout otto INC-7 canary corrupts carts"
        );
    }

    #[tokio::test]
    async fn unauthenticated_calls_get_401_with_www_authenticate_bearer() {
        let s = setup("401");
        for token in [None, Some("unknown-token-0123456789-0123456789-abcd")] {
            let (status, body, response) = call(
                &s.api,
                request("POST", "/v1/routes/checkout/kill", token, REASON),
            )
            .await;
            assert_eq!(status, 401);
            assert!(body["error"].is_string());
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let lines = audit_lines(&s.audit_path);
        assert_eq!(lines.len(), 2);
        assert!(lines
            .iter()
            .all(|l| l["actor"] == "anonymous" && l["detail"]["status"] == 401));
    }

    #[tokio::test]
    async fn bodies_without_a_valid_reason_get_400_and_are_audited() {
        let s = setup("400");
        let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(MAX_REASON_CHARS + 1));
        let exactly = format!(r#"{{"reason": "{}"}}"#, "é".repeat(MAX_REASON_CHARS));
        let huge = format!(r#"{{"reason": "x", "pad": "{}"}}"#, "y".repeat(MAX_BODY));
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"reason": ""}"#,
            r#"{"reason": "   "}"#,
            r#"{"reason": 5}"#,
            &long,
            &huge,
        ] {
            let (status, v, _) = call(
                &s.api,
                request("POST", "/v1/routes/checkout/kill", Some(OPERATOR), body),
            )
            .await;
            assert_eq!(status, 400, "body {:?}: {v}", body.get(..40));
        }
        let (status, _, _) = call(
            &s.api,
            request("POST", "/v1/routes/checkout/kill", Some(OPERATOR), &exactly),
        )
        .await;
        assert_eq!(status, 200);
        let lines = audit_lines(&s.audit_path);
        assert_eq!(lines.len(), 10);
        assert!(lines[..9]
            .iter()
            .all(|l| l["actor"] == "otto" && l["detail"]["status"] == 400));
        assert!(verify(&s.audit_path, None).is_ok());
    }

    #[tokio::test]
    async fn a_declared_content_length_over_64_kib_is_refused_before_reading() {
        let s = setup("cl");
        let req = Request::builder()
            .method("POST")
            .uri("/v1/routes/checkout/kill")
            .header("authorization", format!("Bearer {OPERATOR}"))
            .header("content-length", "100000")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (status, v, _) = call(&s.api, req).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("65536"));
    }

    #[tokio::test]
    async fn refusals_beyond_ten_a_second_are_summed_into_one_entry() {
        let s = setup("flood");
        for _ in 0..50 {
            let (status, _, _) = call(
                &s.api,
                request("POST", "/v1/routes/checkout/kill", None, REASON),
            )
            .await;
            assert_eq!(status, 401);
        }
        assert_eq!(audit_lines(&s.audit_path).len(), 10);
        s.clock.advance(Duration::from_secs(1));
        s.api.flush_refusals(false).await;
        let lines = audit_lines(&s.audit_path);
        assert_eq!(lines.len(), 11);
        let summary = &lines[10];
        assert_eq!(summary["action"], "admin.refusals_summarized");
        assert_eq!(summary["detail"]["count"], 40);
        assert_eq!(summary["detail"]["by_status"]["401"], 40);
        assert_eq!(summary["detail"]["by_actor"]["anonymous"], 40);
        // Successful calls are never summed.
        let (status, _, _) = call(
            &s.api,
            request("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(audit_lines(&s.audit_path).len(), 12);
        assert!(verify(&s.audit_path, None).is_ok());
    }

    #[tokio::test]
    async fn gets_are_not_audited_and_unknown_paths_are_404() {
        let s = setup("get");
        for path in [
            "/v1/status",
            "/v1/audit?limit=5",
            "/v1/explain?route=checkout&identity=a",
        ] {
            let (status, _, _) = call(&s.api, request("GET", path, Some(VIEWER), "")).await;
            assert_eq!(status, 200, "{path}");
        }
        assert!(audit_lines(&s.audit_path).is_empty());
        let (status, _, _) = call(&s.api, request("GET", "/v1/nope", Some(VIEWER), "")).await;
        assert_eq!(status, 404);
        let (status, _, response) = call(
            &s.api,
            request("GET", "/v1/routes/checkout/kill", Some(ADMIN), ""),
        )
        .await;
        assert_eq!(status, 405);
        assert_eq!(response.headers()["allow"], "POST");
        let (status, _, _) = call(
            &s.api,
            request("GET", "/v1/explain?route=zzz&identity=a", Some(VIEWER), ""),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, _) = call(
            &s.api,
            request("GET", "/v1/explain?route=checkout", Some(VIEWER), ""),
        )
        .await;
        assert_eq!(status, 400);
        let (status, _, _) = call(
            &s.api,
            request("GET", "/v1/audit?limit=-1", Some(VIEWER), ""),
        )
        .await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn audit_endpoint_returns_the_last_n_entries() {
        let s = setup("tail");
        for _ in 0..3 {
            call(
                &s.api,
                request("POST", "/v1/routes/checkout/kill", Some(OPERATOR), REASON),
            )
            .await;
        }
        let (status, v, _) = call(
            &s.api,
            request("GET", "/v1/audit?limit=2", Some(VIEWER), ""),
        )
        .await;
        assert_eq!(status, 200);
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["seq"], 3);
        assert_eq!(entries[1]["reason"], "INC-7 canary corrupts carts");
    }

    #[test]
    fn query_parameters_are_form_decoded() {
        assert_eq!(
            query_param(Some("route=checkout&identity=a%40b+c%2B"), "identity").as_deref(),
            Some("a@b c+")
        );
        assert_eq!(
            query_param(Some("identity="), "identity").as_deref(),
            Some("")
        );
        assert_eq!(query_param(Some("x=1"), "identity"), None);
        assert_eq!(decode("%zz%4", true), "%zz%4");
    }

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(
            endpoint("/v1/routes/checkout/kill"),
            Some(Endpoint::Mutate {
                op: Op::Kill,
                route: Some("checkout".into())
            })
        );
        assert_eq!(endpoint("/v1/routes//kill"), None);
        assert_eq!(endpoint("/v1/routes/checkout/explode"), None);
        assert_eq!(endpoint("/v1/config/rollback/"), None);
    }
}
