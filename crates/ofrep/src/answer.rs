//! The shapes of OFREP answers and errors (the OFREP OpenAPI document, version 0.3.0), and
//! how Rampart's decisions map onto them (docs/ofrep.md#answers).
//!
//! A flag key is a route's name. A `toggle` route resolves as a boolean (`true` when the
//! request would go to a backend other than stable); every other route as the backend's
//! name. `ROUTE.backend` resolves any route as the backend's name, so a toggle can be read
//! as a string too (a route name cannot contain a dot).

use crate::{Evaluation, FlagError};
use rampart_core::decision::Reason;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The key suffix that asks for the backend's name whatever the route's kind.
pub const BACKEND_SUFFIX: &str = ".backend";

/// Longest flag key echoed back in an answer (a key comes from the request path).
const MAX_ECHOED_KEY: usize = 256;

/// A flag key split into the route it names and the value type it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagKey<'a> {
    /// The route's name.
    pub route: &'a str,
    /// Whether the key ends in [`BACKEND_SUFFIX`]: the value is the backend's name.
    pub backend_name: bool,
}

impl<'a> FlagKey<'a> {
    /// Parses a flag key.
    pub fn parse(key: &'a str) -> FlagKey<'a> {
        match key.strip_suffix(BACKEND_SUFFIX) {
            Some(route) => FlagKey {
                route,
                backend_name: true,
            },
            None => FlagKey {
                route: key,
                backend_name: false,
            },
        }
    }
}

/// The OpenFeature reason of an evaluation: `DISABLED` while the route is killed (whatever
/// the candidate), `TARGETING_MATCH` for the force header, the allowlist and header
/// overrides, `SPLIT` for a bucket in a split entry's range, `DEFAULT` otherwise (stable's
/// share, no identity, an open breaker, a failing health check).
pub fn reason(evaluation: &Evaluation) -> &'static str {
    if evaluation.killed {
        return "DISABLED";
    }
    match evaluation.decision.reason {
        Reason::ForceHeader | Reason::Identity | Reason::Header => "TARGETING_MATCH",
        Reason::Split => "SPLIT",
        Reason::Killed => "DISABLED",
        Reason::Stable
        | Reason::MissingIdentity
        | Reason::Random
        | Reason::BreakerOpen
        | Reason::Unhealthy
        | Reason::Bulkhead => "DEFAULT",
    }
}

/// The `value` of an evaluation asked for under `key`.
pub fn value(evaluation: &Evaluation, key: FlagKey<'_>) -> Value {
    if evaluation.toggle && !key.backend_name {
        Value::Bool(!evaluation.decision.slot.is_stable())
    } else {
        Value::String(evaluation.backend.clone())
    }
}

/// The evaluation success object (`key`, `value`, `variant`, `reason`, `metadata`).
pub fn success(key: &str, evaluation: &Evaluation) -> Value {
    let mut metadata = Map::new();
    if let Some(bucket) = evaluation.decision.bucket {
        metadata.insert("bucket".into(), json!(bucket));
    }
    metadata.insert(
        "rampartReason".into(),
        json!(evaluation.decision.reason.as_str()),
    );
    if let Some(candidate) = &evaluation.candidate {
        metadata.insert("candidate".into(), json!(candidate));
    }
    json!({
        "key": key,
        "value": value(evaluation, FlagKey::parse(key)),
        "variant": evaluation.backend,
        "reason": reason(evaluation),
        "metadata": metadata,
    })
}

/// The OpenFeature error code of a flag error.
pub fn error_code(error: &FlagError) -> &'static str {
    match error {
        FlagError::NotFound(_) => "FLAG_NOT_FOUND",
        FlagError::TargetingKeyMissing(_) => "TARGETING_KEY_MISSING",
    }
}

/// An evaluation failure (or flag-not-found) object: `key`, `errorCode`, `errorDetails`.
pub fn failure(key: &str, code: &str, details: &str) -> Value {
    json!({"key": echoed(key), "errorCode": code, "errorDetails": details})
}

/// A failure of a whole bulk request: `errorCode`, `errorDetails`.
pub fn bulk_failure(code: &str, details: &str) -> Value {
    json!({"errorCode": code, "errorDetails": details})
}

/// A key as echoed back: cut at [`MAX_ECHOED_KEY`] bytes (on a character boundary).
fn echoed(key: &str) -> &str {
    if key.len() <= MAX_ECHOED_KEY {
        return key;
    }
    let mut end = MAX_ECHOED_KEY;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key.get(..end).unwrap_or("")
}

/// The bulk ETag: a strong tag over what the answers depend on besides the context (the
/// config's sha256 and the gate state, `version`) and the answer body itself, which
/// carries every value, variant, reason and bucket of this context.
pub fn etag(version: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(version.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    let digest = hasher.finalize();
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in digest.iter().take(16) {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    tag.push('"');
    tag
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether an `If-None-Match` value names `etag` (weak comparison, `*` matches any).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rampart_core::config::BackendSlot;
    use rampart_core::decision::Decision;

    fn eval(slot: u8, reason: Reason, toggle: bool, killed: bool) -> Evaluation {
        Evaluation {
            route: "checkout".into(),
            backend: if slot == 0 { "stable" } else { "canary" }.into(),
            toggle,
            killed,
            decision: Decision {
                slot: BackendSlot(slot),
                bucket: Some(42),
                reason,
                candidate: BackendSlot(slot),
            },
            candidate: None,
        }
    }

    #[test]
    fn reasons_map_onto_openfeature_reasons_and_a_kill_disables_every_answer() {
        assert_eq!(
            reason(&eval(1, Reason::Identity, false, false)),
            "TARGETING_MATCH"
        );
        assert_eq!(
            reason(&eval(1, Reason::ForceHeader, false, false)),
            "TARGETING_MATCH"
        );
        assert_eq!(
            reason(&eval(1, Reason::Header, false, false)),
            "TARGETING_MATCH"
        );
        assert_eq!(reason(&eval(1, Reason::Split, false, false)), "SPLIT");
        assert_eq!(reason(&eval(0, Reason::Stable, false, false)), "DEFAULT");
        assert_eq!(
            reason(&eval(0, Reason::BreakerOpen, false, false)),
            "DEFAULT"
        );
        assert_eq!(reason(&eval(0, Reason::Stable, false, true)), "DISABLED");
        assert_eq!(reason(&eval(0, Reason::Killed, false, true)), "DISABLED");
    }

    #[test]
    fn a_toggle_is_a_boolean_unless_asked_for_its_backend() {
        let on = eval(1, Reason::Split, true, false);
        assert_eq!(success("checkout", &on)["value"], json!(true));
        assert_eq!(success("checkout.backend", &on)["value"], json!("canary"));
        let off = eval(0, Reason::Stable, true, false);
        assert_eq!(success("checkout", &off)["value"], json!(false));
        assert_eq!(success("checkout", &off)["variant"], json!("stable"));
        let canary = eval(1, Reason::Split, false, false);
        assert_eq!(success("checkout", &canary)["value"], json!("canary"));
        assert_eq!(
            success("checkout", &canary)["metadata"]["bucket"],
            json!(42)
        );
        assert_eq!(
            success("checkout", &canary)["metadata"]["rampartReason"],
            json!("split")
        );
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = etag("v", b"{}");
        assert!(none_match(&tag, &tag));
        assert!(none_match(&format!("\"x\", W/{tag}"), &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"other\"", &tag));
        assert_ne!(etag("v2", b"{}"), tag);
        assert_ne!(etag("v", b"{ }"), tag);
    }

    #[test]
    fn long_keys_are_cut_when_echoed() {
        let key = "é".repeat(200);
        assert!(
            failure(&key, "FLAG_NOT_FOUND", "x")["key"]
                .as_str()
                .unwrap()
                .len()
                <= 256
        );
    }
}
