//! The control plane called as a library: applies and rejections reach a subscriber with
//! their cause, a rejected config leaves the serving snapshot alone, and a fleet verdict
//! comes from whatever answers the Prometheus queries (here, canned answers).

use rampart_core::rollout::{RolloutStatus, Verdict};
use rampart_runtime::events::{ConfigEvent, RouteChange};
use rampart_runtime::fleet::{self, Answer, FleetError, FleetMetrics};
use rampart_runtime::{parse_bytes, Cause, ConfigSubscriber, Loaded, Runtime};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A config whose `checkout` route sends `percent` % to the canary.
fn config_text(percent: u32) -> String {
    format!(
        r#"version: 1
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
default_upstream: stable
upstreams:
  stable: {{url: "http://127.0.0.1:9"}}
  canary: {{url: "http://127.0.0.1:9"}}
routes:
  - name: checkout
    kind: canary
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: {percent}}}]
"#
    )
}

fn loaded(text: &str, path: &Path) -> Loaded {
    match parse_bytes(path, text.as_bytes().to_vec()) {
        Ok(l) => l,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

/// What a subscriber saw: (applied?, cause, sha256, routes changed).
type Seen = Arc<Mutex<Vec<(bool, Cause, String, Vec<RouteChange>)>>>;

fn recorder() -> (Seen, Arc<dyn ConfigSubscriber>) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let subscriber = move |event: &ConfigEvent| {
        let changes = match event {
            ConfigEvent::Applied(a) => a.routes_changed.clone(),
            ConfigEvent::Rejected(_) => Vec::new(),
        };
        if let Ok(mut log) = log.lock() {
            log.push((
                matches!(event, ConfigEvent::Applied(_)),
                event.cause(),
                event.sha256().to_string(),
                changes,
            ));
        }
    };
    (seen, Arc::new(subscriber))
}

fn seen(log: &Seen) -> Vec<(bool, Cause, String, Vec<RouteChange>)> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

#[tokio::test]
async fn apply_with_a_cause_tells_the_subscriber_why_and_what_changed() {
    let path = Path::new("embedded.yaml");
    let (log, subscriber) = recorder();
    let first = loaded(&config_text(5), path);
    let first_sha = first.source.sha256.clone();
    let runtime = match Runtime::new(first, vec![subscriber]) {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    let second = loaded(&config_text(25), path);
    let second_sha = second.source.sha256.clone();
    assert!(runtime.apply(second, Cause::AdminRollback).is_ok());

    let events = seen(&log);
    assert_eq!(events.len(), 2, "start, then the apply");
    assert_eq!(
        (events[0].0, events[0].1, events[0].2.as_str()),
        (true, Cause::Start, first_sha.as_str())
    );
    assert_eq!(
        (events[1].0, events[1].1, events[1].2.as_str()),
        (true, Cause::AdminRollback, second_sha.as_str())
    );
    assert!(
        matches!(&events[1].3[..], [RouteChange::Split { route, from, to }]
            if route == "checkout" && from.get("canary") == Some(&5.0) && to.get("canary") == Some(&25.0)),
        "{:?}",
        events[1].3
    );
    assert_eq!(runtime.state.snapshot.load().source.sha256, second_sha);
    let applied = runtime
        .state
        .metrics
        .config_reloads
        .with_label_values(&["applied"])
        .get();
    assert_eq!(applied, 2, "the reload metrics are a subscriber too");
}

#[tokio::test]
async fn a_rejected_config_keeps_the_old_snapshot_and_is_reported_with_its_cause() {
    let dir = std::env::temp_dir().join(format!(
        "rampart-runtime-test-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, config_text(5)).unwrap_or_else(|e| panic!("write: {e}"));
    let (log, subscriber) = recorder();
    let first = match rampart_runtime::load(&path) {
        Ok(l) => l,
        Err(e) => panic!("load: {e}"),
    };
    let serving = first.source.sha256.clone();
    let runtime = match Runtime::new(first, vec![subscriber]) {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };

    let broken = config_text(5).replace("backend: canary", "backend: nowhere");
    std::fs::write(&path, &broken).unwrap_or_else(|e| panic!("write: {e}"));
    runtime.reload(&path, Cause::Sighup);

    assert_eq!(runtime.state.snapshot.load().source.sha256, serving);
    let events = seen(&log);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[1].0, events[1].1, events[1].2.as_str()),
        (
            false,
            Cause::Sighup,
            rampart_core::config::sha256_hex(broken.as_bytes()).as_str()
        )
    );
    assert_eq!(runtime.state.metrics.config_last_reload_successful.get(), 0);
    // The same broken file looked at again (the periodic check) is not rejected twice.
    runtime.reload(&path, Cause::Periodic);
    assert_eq!(seen(&log).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn fastrand_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Prometheus' answers by query: canary / stable requests and errors, p99, breaker opens.
#[derive(Clone, Copy)]
struct Canned {
    canary: (f64, f64),
    stable: (f64, f64),
    unreachable: bool,
}

impl Canned {
    fn answer(&self, query: &str) -> Result<Option<f64>, FleetError> {
        if self.unreachable {
            return Err(FleetError::Unreachable("connection refused".into()));
        }
        let side = if query.contains(r#"backend="canary""#) {
            self.canary
        } else {
            self.stable
        };
        Ok(Some(
            if query.contains("rampart_breaker_transitions_total") {
                0.0
            } else if query.contains("histogram_quantile") {
                0.05
            } else if query.contains(r#"outcome="error""#) {
                side.1
            } else {
                side.0
            },
        ))
    }
}

impl FleetMetrics for Canned {
    fn instant<'a>(&'a self, _base: &'a str, query: &'a str, _at: SystemTime) -> Answer<'a> {
        let answer = self.answer(query);
        Box::pin(async move { answer })
    }
}

const FLEET_CONFIG: &str = r#"version: 1
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
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
      min_requests: 100
      max_error_rate_increase: 0.02
      on_failure: rollback
      prometheus: {url: "http://127.0.0.1:9", selector: '{app="shop"}', delay: 30s}
"#;

/// The verdict the fleet analysis reaches for the first boundary from `answers`, and the
/// rollout's status after it; `None` when no verdict was applied.
async fn fleet_verdict(answers: Canned) -> (Option<Verdict>, RolloutStatus, usize) {
    let runtime = match Runtime::new(loaded(FLEET_CONFIG, Path::new("fleet.yaml")), vec![]) {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    let snapshot = runtime.state.snapshot.load_full();
    let Some(rollout) = snapshot.routes[0].rollout.clone() else {
        panic!("the route has a rollout");
    };
    // The first boundary (1 min) plus the delay (30 s) has passed.
    let now = SystemTime::now() + Duration::from_secs(95);
    let Some(query) = rollout.fleet_due(now) else {
        panic!("a fleet verdict is due 95 s in");
    };
    let result = fleet::judge(&answers, &rollout, &query, "canary", "stable", now).await;
    let verdict = match result {
        Ok(event) => event.map(|e| e.analysis.verdict),
        Err(FleetError::Unreachable(_)) => None,
        Err(e) => panic!("unexpected error: {e}"),
    };
    let Some((state, _)) = rollout.snapshot() else {
        panic!("rollout state");
    };
    (verdict, state.status, state.step)
}

#[tokio::test]
async fn fleet_verdict_passes_on_a_healthy_canary_and_moves_to_the_next_step() {
    let (verdict, status, step) = fleet_verdict(Canned {
        canary: (500.0, 2.0),
        stable: (9_500.0, 30.0),
        unreachable: false,
    })
    .await;
    assert_eq!(verdict, Some(Verdict::Pass));
    assert_eq!((status, step), (RolloutStatus::Progressing, 1));
}

#[tokio::test]
async fn fleet_verdict_is_inconclusive_when_prometheus_answers_nan() {
    let (verdict, status, step) = fleet_verdict(Canned {
        canary: (f64::NAN, f64::NAN),
        stable: (f64::NAN, f64::NAN),
        unreachable: false,
    })
    .await;
    assert_eq!(verdict, Some(Verdict::Inconclusive));
    assert_eq!((status, step), (RolloutStatus::Progressing, 0));
}

#[tokio::test]
async fn fleet_verdict_holds_the_step_when_prometheus_is_unreachable() {
    let (verdict, status, step) = fleet_verdict(Canned {
        canary: (500.0, 2.0),
        stable: (9_500.0, 30.0),
        unreachable: true,
    })
    .await;
    assert_eq!(verdict, None, "no verdict without an answer");
    assert_eq!((status, step), (RolloutStatus::Progressing, 0));
}

#[tokio::test]
async fn fleet_verdict_fails_and_rolls_back_when_the_canary_errors_more() {
    let (verdict, status, _) = fleet_verdict(Canned {
        canary: (500.0, 50.0),
        stable: (9_500.0, 30.0),
        unreachable: false,
    })
    .await;
    assert_eq!(verdict, Some(Verdict::FailErrorRate));
    assert_eq!(status, RolloutStatus::Aborted);
}
