//! The evaluation context of a request: `context.targetingKey` (the identity) and the
//! other context fields named like HTTP headers, which act as the request's headers for
//! the force header, header overrides and identity sources (docs/ofrep.md#the-request-the-evaluation-context).
//!
//! Everything here is bounded: the body by [`MAX_BODY`] (checked by the server before this
//! runs), the fields by [`MAX_FIELDS`], the targeting key by [`MAX_TARGETING_KEY`]. Every
//! refusal is a [`ContextError`] that names what was wrong.

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use serde_json::{Map, Value};

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Most fields a context may have.
pub const MAX_FIELDS: usize = 1000;
/// Longest `targetingKey`, in bytes.
pub const MAX_TARGETING_KEY: usize = 1024;

/// A parsed evaluation context.
#[derive(Debug)]
pub struct EvalContext {
    /// `context.targetingKey`, trimmed; `None` when absent or empty.
    pub targeting_key: Option<String>,
    /// A request head carrying the header-named fields as headers (method `POST`, path
    /// `/`): what the proxy's decision reads from a request.
    pub request: Parts,
}

impl EvalContext {
    /// A context without identity or headers.
    pub fn empty() -> EvalContext {
        let (request, ()) = http::Request::new(()).into_parts();
        EvalContext {
            targeting_key: None,
            request,
        }
    }
}

/// Why a request body is not an evaluation request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The body is not JSON, or not a JSON object: `PARSE_ERROR`.
    #[error("{0}")]
    Parse(String),
    /// The context is not an object, too large, or its targeting key is invalid:
    /// `INVALID_CONTEXT`.
    #[error("{0}")]
    Invalid(String),
}

impl ContextError {
    /// The OpenFeature error code.
    pub fn code(&self) -> &'static str {
        match self {
            ContextError::Parse(_) => "PARSE_ERROR",
            ContextError::Invalid(_) => "INVALID_CONTEXT",
        }
    }
}

/// Parses an evaluation request body (`{"context": {...}}`). An empty body is an empty
/// context, as is a body without `context`.
pub fn parse(body: &[u8]) -> Result<EvalContext, ContextError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(EvalContext::empty());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ContextError::Parse(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ContextError::Parse(
            "the body must be a JSON object such as {\"context\": {\"targetingKey\": \"user-1\"}}"
                .to_string(),
        ));
    };
    match object.remove("context") {
        None | Some(Value::Null) => Ok(EvalContext::empty()),
        Some(Value::Object(fields)) => from_fields(fields),
        Some(_) => Err(ContextError::Invalid(
            "\"context\" must be a JSON object".to_string(),
        )),
    }
}

fn from_fields(fields: Map<String, Value>) -> Result<EvalContext, ContextError> {
    if fields.len() > MAX_FIELDS {
        return Err(ContextError::Invalid(format!(
            "the context has {} fields; at most {MAX_FIELDS} are accepted",
            fields.len()
        )));
    }
    let mut context = EvalContext::empty();
    for (name, value) in fields {
        if name == "targetingKey" {
            context.targeting_key = targeting_key(value)?;
            continue;
        }
        let text = match value {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            // Objects, arrays and null cannot be header values: not a header.
            _ => continue,
        };
        // Fields that are not valid header names or values are context for other
        // providers, not headers: skipped, not refused.
        let Ok(header) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            continue;
        };
        let Ok(value) = HeaderValue::from_str(&text) else {
            continue;
        };
        context.request.headers.append(header, value);
    }
    Ok(context)
}

fn targeting_key(value: Value) -> Result<Option<String>, ContextError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            if s.len() > MAX_TARGETING_KEY {
                return Err(ContextError::Invalid(format!(
                    "\"targetingKey\" is {} bytes long; at most {MAX_TARGETING_KEY} are accepted",
                    s.len()
                )));
            }
            let trimmed = s.trim();
            Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
        }
        _ => Err(ContextError::Invalid(
            "\"targetingKey\" must be a string".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn targeting_key_and_header_named_fields_become_identity_and_headers() {
        let c = parse(br#"{"context": {"targetingKey": " alice ", "X-Employee": "true", "x-n": 3, "plan": {"a": 1}, "bad name": "x"}}"#).unwrap();
        assert_eq!(c.targeting_key.as_deref(), Some("alice"));
        assert_eq!(c.request.headers.get("x-employee").unwrap(), "true");
        assert_eq!(c.request.headers.get("x-n").unwrap(), "3");
        assert!(c.request.headers.get("plan").is_none());
        assert_eq!(c.request.headers.len(), 2);
    }

    #[test]
    fn empty_bodies_and_missing_contexts_are_empty_contexts() {
        for body in [
            &b""[..],
            b"  ",
            b"{}",
            br#"{"context": null}"#,
            br#"{"context": {}}"#,
        ] {
            let c = parse(body).unwrap();
            assert!(c.targeting_key.is_none());
            assert!(c.request.headers.is_empty());
        }
    }

    #[test]
    fn non_json_and_non_object_bodies_are_parse_errors() {
        for body in [&b"not json"[..], b"[1,2]", b"\"x\"", b"{\"context\": "] {
            assert_eq!(parse(body).unwrap_err().code(), "PARSE_ERROR");
        }
    }

    #[test]
    fn oversized_contexts_and_bad_targeting_keys_are_invalid_contexts() {
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("\"f{i}\": 1")).collect();
        let body = format!("{{\"context\": {{{}}}}}", many.join(","));
        assert_eq!(
            parse(body.as_bytes()).unwrap_err().code(),
            "INVALID_CONTEXT"
        );
        let long = format!(
            "{{\"context\": {{\"targetingKey\": \"{}\"}}}}",
            "k".repeat(MAX_TARGETING_KEY + 1)
        );
        assert_eq!(
            parse(long.as_bytes()).unwrap_err().code(),
            "INVALID_CONTEXT"
        );
        for body in [
            &br#"{"context": {"targetingKey": 7}}"#[..],
            br#"{"context": [1]}"#,
        ] {
            assert_eq!(parse(body).unwrap_err().code(), "INVALID_CONTEXT");
        }
    }
}
