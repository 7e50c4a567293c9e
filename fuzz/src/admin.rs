//! The admin API's JSON request bodies (docs/admin.md): any body sent to kill, unkill,
//! pause, resume or rollback by a caller with the right token is either a valid request
//! (200, and the operation gets the trimmed, non-empty `reason` the body carries) or a 400
//! with a JSON `error` message, and the operation never runs. Never a panic, never another
//! status.
//!
//! The request goes through `AdminApi::handle`, the same entry the admin listener serves,
//! with a stand-in for the proxy's operations that accepts every route.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rampart_admin::api::{
    AdminApi, AdminControl, Caller, ControlError, MAX_BODY, MAX_REASON_CHARS,
};
use rampart_admin::tokens::TokenStore;
use rampart_core::clock::ManualClock;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// The bearer token of the `admin` role in the fuzz tokens file.
const TOKEN: &str = "fuzz-admin-token-0123456789abcdefghijklmnop";

/// The operations, as the path names them.
const PATHS: [(&str, &str); 5] = [
    ("kill", "/v1/routes/checkout/kill"),
    ("unkill", "/v1/routes/checkout/unkill"),
    ("pause", "/v1/routes/checkout/pause"),
    ("resume", "/v1/routes/checkout/resume"),
    ("rollback", "/v1/config/rollback"),
];

/// Records the last operation called: (operation, route, caller).
#[derive(Default)]
struct Recorder(Mutex<Option<(&'static str, String, Caller)>>);

impl Recorder {
    fn record(
        &self,
        op: &'static str,
        route: &str,
        caller: &Caller,
    ) -> Result<Value, ControlError> {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((op, route.to_string(), caller.clone()));
        }
        Ok(json!({ "ok": op }))
    }

    fn take(&self) -> Option<(&'static str, String, Caller)> {
        self.0.lock().ok().and_then(|mut last| last.take())
    }
}

impl AdminControl for Recorder {
    fn status(&self) -> rampart_admin::status::Status {
        rampart_admin::status::Status::default()
    }
    fn explain(&self, _route: &str, _identity: &str) -> Result<Value, ControlError> {
        Ok(json!({}))
    }
    fn kill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.record("kill", route, caller)
    }
    fn unkill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.record("unkill", route, caller)
    }
    fn pause(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.record("pause", route, caller)
    }
    fn resume(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.record("resume", route, caller)
    }
    fn rollback(&self, caller: &Caller) -> Result<Value, ControlError> {
        self.record("rollback", "", caller)
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    api: Arc<AdminApi>,
    control: Arc<Recorder>,
    /// Held from the request to reading the recorder: the replay test's threads share the
    /// fixture, and one must not take the operation another one's request recorded.
    serial: Mutex<()>,
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
        let dir = std::env::temp_dir().join(format!("rampart-fuzz-admin-{}", std::process::id()));
        let tokens = dir.join("tokens.yaml");
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                &tokens,
                format!(
                    "- {{name: fuzz, role: admin, sha256: {}}}\n",
                    rampart_core::config::sha256_hex(TOKEN.as_bytes())
                ),
            )?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))
        });
        if let Err(error) = written {
            panic!("cannot write {}: {error}", tokens.display());
        }
        let control = Arc::new(Recorder::default());
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let api = Arc::new(AdminApi::new(
            control.clone(),
            TokenStore::new(Some(tokens)),
            None,
            clock,
        ));
        Fixture {
            runtime,
            api,
            control,
            serial: Mutex::new(()),
        }
    })
}

/// What a body must give: the trimmed `reason`, or `None` for a 400.
fn expected_reason(body: &[u8]) -> Option<String> {
    if body.is_empty() || body.len() > MAX_BODY {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let reason = value.as_object()?.get("reason")?.as_str()?.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return None;
    }
    Some(reason.to_string())
}

/// The first byte picks the operation (and whether `Content-Length` is declared); the rest
/// is the request body.
pub fn body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (op, path) = PATHS[usize::from(pick) % PATHS.len()];
    let mut request = Request::post(path).header("authorization", format!("Bearer {TOKEN}"));
    if pick & 0x80 != 0 {
        request = request.header("content-length", body.len());
    }
    let request = match request.body(Full::new(Bytes::copy_from_slice(body))) {
        Ok(request) => request,
        Err(error) => panic!("cannot build the request: {error}"),
    };
    let fixture = fixture();
    let _serial = fixture
        .serial
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (status, answer) = fixture.runtime.block_on(async {
        let response = fixture.api.handle(request).await;
        let status = response.status();
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        (status, bytes)
    });
    let called = fixture.control.take();
    let answer: Value = match serde_json::from_slice(&answer) {
        Ok(value) => value,
        Err(error) => panic!("{status}: the answer is not JSON ({error})"),
    };
    match (status, expected_reason(body)) {
        (StatusCode::OK, Some(reason)) => {
            let Some((called_op, route, caller)) = called else {
                panic!("200 but {op} was not called");
            };
            assert_eq!(called_op, op, "200 from the wrong operation");
            if op != "rollback" {
                assert_eq!(route, "checkout");
            }
            assert_eq!(caller.actor, "fuzz");
            assert_eq!(caller.reason, reason, "the operation got another reason");
        }
        (StatusCode::BAD_REQUEST, None) => {
            assert!(called.is_none(), "400, yet {op} was called: {called:?}");
            let message = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(
                !message.trim().is_empty(),
                "400 without an error message: {answer}"
            );
        }
        (status, expected) => panic!(
            "{op}: answered {status} {answer}, expected {}",
            match expected {
                Some(reason) => format!("200 with reason {reason:?}"),
                None => "400".to_string(),
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_trimmed_and_bounded() {
        assert_eq!(
            expected_reason(br#"{"reason": " x "}"#),
            Some("x".to_string())
        );
        assert_eq!(expected_reason(br#"{"reason": " "}"#), None);
        assert_eq!(expected_reason(b"[]"), None);
        body(b"\x00{\"reason\": \"INC-1\"}");
        body(b"\x04not json");
    }
}
