//! OFREP request bodies (docs/ofrep.md): any body posted to the bulk endpoint and to each
//! flag's endpoint is either an evaluation context or an OFREP error that names its code,
//! and a context is answered as the proxy would route the same request.
//!
//! What must hold, for every body:
//!
//! - `rampart_ofrep::context::parse` accepts exactly the bodies docs/ofrep.md describes (empty,
//!   or a JSON object whose `context` is absent, null or an object of at most `MAX_FIELDS`
//!   fields with a string or null `targetingKey` of at most `MAX_TARGETING_KEY` bytes), and
//!   its headers are the context's scalar fields whose names and values HTTP can carry;
//! - through `Ofrep::handle`, the listener's own entry: a refused body is a 400 with the
//!   parser's code (`PARSE_ERROR` or `INVALID_CONTEXT`) from both endpoints; an accepted one
//!   is a 200 bulk answer with one flag per route (two for a toggle) and an `ETag` that a
//!   second request with `If-None-Match` turns into a 304, and each flag's own endpoint
//!   answers what the bulk answer says for that key;
//! - every answer names a backend of its route, a toggle's value says whether that backend
//!   is not stable, a bucket is the targeting key's bucket, and the variant, bucket and
//!   Rampart reason are those `ProxyState::decide_request` gives a plain HTTP request with
//!   the same headers and the targeting key as its identity header.
//!
//! The evaluator is the listener's own, `rampart_ofrep::live::LiveEvaluator`, over the
//! proxy's real decision state for a fixed config.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ETAG, IF_NONE_MATCH};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rampart_core::bucket::bucket_of;
use rampart_core::config::{self, MissingIdentity, RouteKind};
use rampart_ofrep::context::{self, ContextError, EvalContext, MAX_FIELDS, MAX_TARGETING_KEY};
use rampart_ofrep::live::LiveEvaluator;
use rampart_ofrep::server::{Ofrep, OfrepMetrics, BULK_PATH, SINGLE_PREFIX};
use rampart_proxy::{Metrics, ProxyState, Snapshot, SnapshotSource};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The identity header of every route of [`CONFIG`].
const IDENTITY_HEADER: &str = "x-user-id";

/// A split with an allowlist, a header override and a force header; a toggle; a gate; a
/// route that draws a random bucket without an identity; a killed route.
const CONFIG: &str = r#"version: 1
default_upstream: stable
upstreams:
  stable: {url: "http://127.0.0.1:3000"}
  canary: {url: "http://127.0.0.1:3001"}
  blue: {url: "http://127.0.0.1:3002"}
routes:
  - name: checkout
    match: {path_prefix: /checkout}
    identity: [header:x-user-id, cookie:sid]
    stable: stable
    split:
      - {backend: canary, percent: 30}
      - {backend: blue, percent: 20.5}
    overrides:
      force_header: x-rampart-force
      identities: {canary: [qa-alice], blue: [qa-bob]}
      headers: [{name: x-employee, value: "true", backend: canary}]
  - name: dark-mode
    kind: toggle
    match: {path_prefix: /dark}
    identity: [header:x-user-id]
    stable: stable
    split:
      - {backend: canary, percent: 100}
  - name: beta
    kind: gate
    match: {path_prefix: /beta}
    identity: [header:x-user-id]
    stable: stable
    overrides:
      headers: [{name: x-beta, value: "yes", backend: canary}]
  - name: lottery
    match: {path_prefix: /lottery}
    identity: [header:x-user-id]
    missing_identity: random
    stable: stable
    split:
      - {backend: canary, percent: 50}
  - name: frozen
    match: {path_prefix: /frozen}
    identity: [header:x-user-id]
    killed: "INC-1 fuzzing"
    stable: stable
    split:
      - {backend: canary, percent: 50}
"#;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: Arc<ProxyState>,
    ofrep: Ofrep,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => panic!("cannot start a runtime: {error}"),
        };
        rampart_proxy::tls::install_crypto_provider();
        let config = match config::parse(CONFIG) {
            Ok(config) => Arc::new(config),
            Err(errors) => panic!("the fixture config is refused: {errors}"),
        };
        let registry = prometheus::Registry::new();
        let (metrics, ofrep_metrics) = match (Metrics::new(&registry), OfrepMetrics::new(&registry))
        {
            (Ok(metrics), Ok(ofrep_metrics)) => (metrics, ofrep_metrics),
            _ => panic!("the metrics do not register"),
        };
        let source = SnapshotSource {
            sha256: config::sha256_hex(CONFIG.as_bytes()),
            path: None,
        };
        let snapshot = match Snapshot::build(config, source, &metrics, None, &HashMap::new()) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("the fixture snapshot does not build: {error}"),
        };
        let state = Arc::new(ProxyState::new(snapshot, metrics));
        let evaluator = Arc::new(LiveEvaluator::new(Arc::clone(&state)));
        Fixture {
            runtime,
            state,
            ofrep: Ofrep::new(evaluator, ofrep_metrics),
        }
    })
}

/// What docs/ofrep.md says of a body: refused with a code, or a context with this
/// targeting key and these (lower-case name, value) headers.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Refused(&'static str),
    Context {
        targeting_key: Option<String>,
        headers: Vec<(String, String)>,
    },
}

/// The expected reading of `body`, from the JSON value alone.
fn expected(body: &[u8]) -> Expected {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Expected::Context {
            targeting_key: None,
            headers: Vec::new(),
        };
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return Expected::Refused("PARSE_ERROR");
    };
    let fields = match object.get("context") {
        None | Some(Value::Null) => &Map::new(),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Expected::Refused("INVALID_CONTEXT"),
    };
    if fields.len() > MAX_FIELDS {
        return Expected::Refused("INVALID_CONTEXT");
    }
    let targeting_key = match fields.get("targetingKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) if key.len() <= MAX_TARGETING_KEY => {
            Some(key.trim().to_string()).filter(|key| !key.is_empty())
        }
        Some(_) => return Expected::Refused("INVALID_CONTEXT"),
    };
    let mut headers: Vec<(String, String)> = fields
        .iter()
        .filter(|(name, _)| name.as_str() != "targetingKey")
        .filter_map(|(name, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
            HeaderValue::from_str(&text).ok()?;
            Some((name.as_str().to_string(), text))
        })
        .collect();
    headers.sort();
    Expected::Context {
        targeting_key,
        headers,
    }
}

/// What the parser made of the body, in [`Expected`]'s terms.
fn parsed(result: &Result<EvalContext, ContextError>) -> Expected {
    match result {
        Err(error) => Expected::Refused(error.code()),
        Ok(context) => {
            let mut headers: Vec<(String, String)> = context
                .request
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            headers.sort();
            Expected::Context {
                targeting_key: context.targeting_key.clone(),
                headers,
            }
        }
    }
}

/// One answer: status, `ETag`, JSON body (`Null` when empty).
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    json: Value,
}

fn post(path: &str, body: &[u8], if_none_match: Option<&str>) -> Answer {
    let mut request = Request::post(path);
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let request = match request.body(Full::new(Bytes::copy_from_slice(body))) {
        Ok(request) => request,
        Err(error) => panic!("cannot build the request: {error}"),
    };
    let fixture = fixture();
    let (status, etag, bytes) = fixture.runtime.block_on(async {
        let response = fixture.ofrep.handle(request).await;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        (status, etag, bytes)
    });
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(json) => json,
            Err(error) => panic!("{path}: {status} with a body that is not JSON ({error})"),
        }
    };
    Answer { status, etag, json }
}

fn text<'a>(json: &'a Value, field: &str) -> &'a str {
    json.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// An error answer: `errorCode` as expected, `errorDetails` saying something.
fn assert_error(what: &str, json: &Value, code: &str) {
    assert_eq!(text(json, "errorCode"), code, "{what}: {json}");
    assert!(
        !text(json, "errorDetails").trim().is_empty(),
        "{what}: an error without details: {json}"
    );
}

/// A plain HTTP request to `route`'s path with the context's headers, the targeting key (if
/// any) as the identity header; `None` when the key cannot be a header value.
fn http_request(path: &str, context: &EvalContext) -> Option<http::request::Parts> {
    let (mut parts, ()) = Request::get(path).body(()).ok()?.into_parts();
    parts.headers = context.request.headers.clone();
    if let Some(key) = &context.targeting_key {
        let value = HeaderValue::from_str(key).ok()?;
        parts
            .headers
            .insert(HeaderName::from_static(IDENTITY_HEADER), value);
    }
    Some(parts)
}

/// A success answer for `key` on route `route_index` agrees with the route, the targeting
/// key's bucket and the request path's own decision for the same request.
fn assert_routed(key: &str, route_index: usize, answer: &Value, context: &EvalContext) {
    let fixture = fixture();
    let snapshot = fixture.state.snapshot.load();
    let config = &snapshot.config;
    let Some(route) = config.routes.get(route_index) else {
        panic!("no route {route_index}");
    };
    let backends: Vec<&str> = route
        .backends
        .iter()
        .filter_map(|id| config.upstream(*id).map(|u| u.name.as_str()))
        .collect();
    let variant = text(answer, "variant");
    assert!(
        backends.contains(&variant),
        "{key}: variant {variant:?} is not a backend of the route: {answer}"
    );
    let value = answer.get("value").unwrap_or(&Value::Null);
    if route.kind == RouteKind::Toggle && !key.ends_with(".backend") {
        assert_eq!(
            value,
            &Value::Bool(variant != "stable"),
            "{key}: a toggle's value: {answer}"
        );
    } else {
        assert_eq!(value.as_str(), Some(variant), "{key}: {answer}");
    }
    let metadata = answer.get("metadata").unwrap_or(&Value::Null);
    let bucket = metadata.get("bucket").and_then(Value::as_u64);
    if let (Some(bucket), Some(key)) = (bucket, &context.targeting_key) {
        assert_eq!(
            bucket,
            u64::from(bucket_of(&route.salt, key)),
            "{key}: not the targeting key's bucket: {answer}"
        );
    }
    if route.killed.is_some() {
        assert_eq!(text(answer, "reason"), "DISABLED", "{key}: {answer}");
    }

    let Some(parts) = http_request(&route.matcher.path_prefix, context) else {
        return;
    };
    let decided = fixture.state.decide_request(
        &snapshot,
        &parts,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Instant::now(),
    );
    assert_eq!(
        decided.route,
        Some(route_index),
        "{key}: the request {parts:?} matched another route"
    );
    let routed = config
        .backend(route, decided.decision.slot)
        .map(|u| u.name.as_str())
        .unwrap_or_default();
    assert_eq!(
        variant, routed,
        "{key}: OFREP answers {answer}, the proxy routes the same request to {routed} ({:?})",
        decided.decision
    );
    assert_eq!(
        text(metadata, "rampartReason"),
        decided.decision.reason.as_str(),
        "{key}: {answer} vs {:?}",
        decided.decision
    );
    assert_eq!(
        bucket,
        decided.decision.bucket.map(u64::from),
        "{key}: {answer} vs {:?}",
        decided.decision
    );
}

/// Posts `data` to the bulk endpoint and to every flag's endpoint and checks the answers.
pub fn body(data: &[u8]) {
    let result = context::parse(data);
    let got = parsed(&result);
    let want = expected(data);
    assert_eq!(
        got, want,
        "the parser read the body otherwise than documented"
    );

    let fixture = fixture();
    let routes: Vec<(String, bool)> = {
        let snapshot = fixture.state.snapshot.load();
        snapshot
            .config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.kind == RouteKind::Toggle))
            .collect()
    };
    // Every flag key, with its route's index: a toggle also answers as `NAME.backend`.
    let keys: Vec<(String, usize)> = routes
        .iter()
        .enumerate()
        .flat_map(|(index, (name, toggle))| {
            let backend = toggle.then(|| (format!("{name}.backend"), index));
            std::iter::once((name.clone(), index)).chain(backend)
        })
        .collect();

    let bulk = post(BULK_PATH, data, None);
    let context = match &result {
        Err(error) => {
            assert_eq!(bulk.status, StatusCode::BAD_REQUEST, "bulk: {}", bulk.json);
            assert_error("bulk", &bulk.json, error.code());
            for (key, _) in &keys {
                let single = post(&format!("{SINGLE_PREFIX}{key}"), data, None);
                assert_eq!(
                    single.status,
                    StatusCode::BAD_REQUEST,
                    "{key}: {}",
                    single.json
                );
                assert_error(key, &single.json, error.code());
                assert_eq!(text(&single.json, "key"), key.as_str(), "{}", single.json);
            }
            return;
        }
        Ok(context) => context,
    };

    assert_eq!(bulk.status, StatusCode::OK, "bulk: {}", bulk.json);
    let Some(etag) = bulk.etag.clone() else {
        panic!("a bulk answer without an ETag");
    };
    let flags = bulk
        .json
        .get("flags")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let bulk_keys: Vec<&str> = flags.iter().map(|f| text(f, "key")).collect();
    let want_keys: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(bulk_keys, want_keys, "bulk: {}", bulk.json);

    let again = post(BULK_PATH, data, Some(&etag));
    assert_eq!(
        (again.status, again.etag.as_deref()),
        (StatusCode::NOT_MODIFIED, Some(etag.as_str())),
        "the same context with If-None-Match: {etag} was answered again: {}",
        again.json
    );

    for ((key, route_index), flag) in keys.iter().zip(&flags) {
        let single = post(&format!("{SINGLE_PREFIX}{key}"), data, None);
        assert_eq!(
            &single.json, flag,
            "{key}: its own endpoint and the bulk answer differ"
        );
        if flag.get("errorCode").is_some() {
            // The only failure of a known route: a random draw without an identity.
            assert_eq!(single.status, StatusCode::BAD_REQUEST, "{key}: {flag}");
            assert_error(key, flag, "TARGETING_KEY_MISSING");
            let random = fixture
                .state
                .snapshot
                .load()
                .config
                .routes
                .get(*route_index)
                .is_some_and(|r| r.missing_identity == MissingIdentity::Random);
            assert!(random, "{key}: {flag}");
        } else {
            assert_eq!(single.status, StatusCode::OK, "{key}: {flag}");
            assert_routed(key, *route_index, flag, context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_as_documented() {
        assert_eq!(
            expected(br#"{"context": {"targetingKey": " a ", "X-Beta": "yes", "n": 1.5}}"#),
            Expected::Context {
                targeting_key: Some("a".into()),
                headers: vec![("n".into(), "1.5".into()), ("x-beta".into(), "yes".into())],
            }
        );
        assert_eq!(expected(b"[]"), Expected::Refused("PARSE_ERROR"));
        assert_eq!(
            expected(br#"{"context": 1}"#),
            Expected::Refused("INVALID_CONTEXT")
        );
        body(br#"{"context": {"targetingKey": "qa-bob", "x-employee": "true"}}"#);
        body(br#"{"context": {"cookie": "sid=s-1", "x-beta": "yes"}}"#);
        body(b"{\"context\": ");
    }
}
