//! The wiring `rampart run` and `rampart demo` share, started from a test through
//! [`rampart_runtime::start`]: a fleet rollout advanced by canned Prometheus answers (a
//! fake [`FleetMetrics`] in [`StartOptions::fleet_metrics`]), its verdict reaching a
//! data-plane event subscriber, and `/v1/status` read back with the very types the admin
//! API serves ([`rampart_admin::status::Status`]).

use rampart_admin::status::{RolloutPhase, Status};
use rampart_core::rollout::Verdict;
use rampart_proxy::handler::ProxyEvent;
use rampart_runtime::fleet::{Answer, FleetError, FleetMetrics};
use rampart_runtime::{parse_bytes, StartOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A viewer token (at least 32 bytes, as the admin API requires).
const TOKEN: &str = "viewer-token-for-the-start-test-0123456789";

/// A route whose rollout started long ago with fleet-wide analysis: every boundary is past,
/// so the fleet analysis replays them one by one from its first poll.
const CONFIG: &str = r#"version: 1
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_tokens_file: TOKENS
default_upstream: stable
upstreams:
  stable: {url: "http://127.0.0.1:9"}
  canary: {url: "http://127.0.0.1:9"}
routes:
  - name: checkout
    kind: canary
    identity: [header:x-user-id]
    split: [{backend: canary}]
    rollout:
      steps: [5, 25, 100]
      step_interval: 1m
      started_at: 2020-01-01T00:00:00Z
      min_requests: 100
      max_error_rate_increase: 0.02
      on_failure: rollback
      prometheus: {url: "http://127.0.0.1:9", selector: '{app="shop"}', delay: 30s}
"#;

/// Stands in for Prometheus: a healthy canary (0.4 % errors against stable's 0.3 %), and a
/// count of the queries asked.
#[derive(Default)]
struct HealthyFleet {
    queries: AtomicUsize,
}

impl FleetMetrics for HealthyFleet {
    fn instant<'a>(&'a self, _base: &'a str, query: &'a str, _at: SystemTime) -> Answer<'a> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let canary = query.contains(r#"backend="canary""#);
        let value = if query.contains("rampart_breaker_transitions_total") {
            0.0
        } else if query.contains("histogram_quantile") {
            0.05
        } else if query.contains(r#"outcome="error""#) {
            if canary {
                2.0
            } else {
                30.0
            }
        } else if canary {
            500.0
        } else {
            9_500.0
        };
        Box::pin(async move { Ok::<_, FleetError>(Some(value)) })
    }
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("rampart-start-test-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
    dir
}

/// Writes the tokens file (mode 600: the admin API refuses a group-writable one).
fn tokens_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens.yaml");
    let hash = rampart_core::config::sha256_hex(TOKEN.as_bytes());
    std::fs::write(
        &path,
        format!("- {{name: tester, role: viewer, sha256: {hash}}}\n"),
    )
    .unwrap_or_else(|e| panic!("tokens: {e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    path
}

/// `GET path` on the admin API with the viewer token: the status code and the body.
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the admin API: {e}"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn a_started_runtime_takes_fleet_verdicts_from_its_fleet_metrics_and_serves_typed_status() {
    let dir = temp_dir();
    let tokens = tokens_file(&dir);
    let text = CONFIG.replace("TOKENS", &tokens.display().to_string());
    let loaded = parse_bytes(&dir.join("rampart.yaml"), text.into_bytes())
        .unwrap_or_else(|e| panic!("config: {e}"));
    let sha256 = loaded.source.sha256.clone();

    let fleet = Arc::new(HealthyFleet::default());
    let verdicts: Arc<Mutex<Vec<Verdict>>> = Arc::default();
    let seen = Arc::clone(&verdicts);
    let options = StartOptions {
        fleet_metrics: Some(Arc::clone(&fleet) as Arc<dyn FleetMetrics>),
        proxy_events: vec![Arc::new(move |event: &ProxyEvent| {
            if let ProxyEvent::Rollout { event, .. } = event {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(event.analysis.verdict);
                }
            }
        })],
        ..StartOptions::default()
    };
    let running = rampart_runtime::start(loaded, options)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));

    // The fleet analysis polls at once: the first past boundary is judged from the fake.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let first = verdicts.lock().ok().and_then(|v| v.first().copied());
        if first.is_some() || Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        first,
        Some(Verdict::Pass),
        "a healthy fleet passes the step"
    );
    assert!(
        fleet.queries.load(Ordering::Relaxed) >= 7,
        "both sides and the breaker asked"
    );

    let Some(admin) = running.admin_addr() else {
        panic!("admin_listen is set");
    };
    let (code, body) = admin_get(admin, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    let status: Status =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status as Status: {e}\n{body}"));
    assert_eq!(status.config.sha256, sha256);
    let Some(route) = status.route("checkout") else {
        panic!("checkout in {status:?}");
    };
    let Some(rollout) = &route.rollout else {
        panic!("checkout has a rollout: {route:?}");
    };
    assert!(rollout.fleet, "verdicts from the fleet's Prometheus");
    assert!(rollout.step >= 1, "the pass moved the step: {rollout:?}");
    assert!(
        matches!(
            rollout.status,
            RolloutPhase::Progressing | RolloutPhase::Promoted
        ),
        "{rollout:?}"
    );
    // The same types read what was served and write it back unchanged: nothing the admin
    // API sends is lost on the way to `rampart status`.
    let served: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(serde_json::to_value(&status).ok(), Some(served));

    running
        .stop_now()
        .await
        .unwrap_or_else(|e| panic!("stop: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
}
