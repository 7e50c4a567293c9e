//! Rollout progress kept in `state_dir/rollouts.json`, so a restarted replica resumes each
//! rollout at the step it had reached (never from the start, never past an unverified step).

use rampart_core::config::Percent;
use rampart_core::rollout::{RolloutState, RolloutStatus, SideFigures};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// File name inside `state_dir`.
pub const FILE: &str = "rollouts.json";

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn time(v: &Value) -> Option<SystemTime> {
    v.as_u64().map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

fn side_json(side: &SideFigures) -> Value {
    json!({
        "requests": side.requests,
        "errors": side.errors,
        "p99_ms": side.p99.map(|d| d.as_secs_f64() * 1000.0),
    })
}

fn side_from(v: &Value) -> Option<SideFigures> {
    Some(SideFigures {
        requests: v.get("requests")?.as_u64()?,
        errors: v.get("errors")?.as_u64()?,
        p99: v
            .get("p99_ms")
            .and_then(Value::as_f64)
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    })
}

/// One rollout state as JSON (also used by the admin status).
pub fn state_json(state: &RolloutState) -> Value {
    json!({
        "step": state.step,
        "status": state.status.as_str(),
        "percent": state.percent.to_string(),
        "percent_buckets": state.percent.buckets(),
        "step_started_ms": millis(state.step_started),
        "next_decision_ms": millis(state.next_decision),
        "operator_paused": state.operator_paused,
        "block": state.block,
        "schedule_start_ms": millis(state.schedule_start),
        "baseline": state.baseline.as_ref().map(side_json),
        "last_analysis": state.last_analysis.as_ref().map(|a| json!({
            "at_ms": millis(a.at),
            "step": a.step,
            "verdict": a.verdict.as_str(),
            "canary": side_json(&a.figures.canary),
            "stable": side_json(&a.figures.stable),
            "breaker_opened": a.figures.breaker_opened,
        })),
    })
}

fn state_from(v: &Value) -> Option<RolloutState> {
    Some(RolloutState {
        step: usize::try_from(v.get("step")?.as_u64()?).ok()?,
        status: RolloutStatus::parse(v.get("status")?.as_str()?)?,
        step_started: time(v.get("step_started_ms")?)?,
        next_decision: time(v.get("next_decision_ms")?)?,
        operator_paused: v.get("operator_paused")?.as_bool()?,
        block: v.get("block")?.as_str()?.to_string(),
        last_analysis: None,
        baseline: v.get("baseline").and_then(side_from),
        percent: Percent::from_buckets(u16::try_from(v.get("percent_buckets")?.as_u64()?).ok()?),
        schedule_start: time(v.get("schedule_start_ms")?)?,
    })
}

/// Reads the kept states; a missing or unreadable file is an empty map (logged).
pub fn load(state_dir: &Path) -> HashMap<String, RolloutState> {
    let path = state_dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
        tracing::warn!(file = %path.display(), "unreadable rollout state; rollouts start from their first step");
        return HashMap::new();
    };
    map.iter()
        .filter_map(|(route, v)| state_from(v).map(|s| (route.clone(), s)))
        .collect()
}

/// Writes the states atomically (temp file, fsync, rename).
pub fn save(state_dir: &Path, states: &[(String, RolloutState)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut map = Map::new();
    for (route, state) in states {
        map.insert(route.clone(), state_json(state));
    }
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(Value::Object(map).to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(FILE))
}

/// Writes every rollout's state of the serving snapshot to `state_dir`, if there is one
/// (after verdicts and operator actions); a failure is logged, the rollout goes on.
pub fn persist(state: &rampart_proxy::handler::ProxyState, state_dir: Option<&Path>) {
    let Some(dir) = state_dir else { return };
    let snapshot = state.snapshot.load();
    let states: Vec<_> = snapshot
        .routes
        .iter()
        .filter_map(|rt| rt.rollout.as_ref())
        .filter_map(|r| r.snapshot().map(|(state, _)| (r.route.clone(), state)))
        .collect();
    if let Err(e) = save(dir, &states) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot keep rollout state in state_dir");
    }
}
