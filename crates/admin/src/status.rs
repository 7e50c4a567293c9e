//! The document `GET /v1/status` answers, as types (see `docs/admin.md#status`).
//!
//! The binary builds one [`Status`] from the running replica and serialises it; `rampart
//! status --admin` reads the same JSON back into the same types, so the server and the
//! command cannot disagree about a field's name or shape. Every field a replica of an older
//! build might not send is an `Option` (missing means `None`), and unknown fields are
//! ignored, so a newer `rampart status` still reads an older replica during an upgrade.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One replica's state as the admin API shows it: the applied config, every route with its
/// splits, breakers, kills and rollout, and every upstream. `Default` is an empty document,
/// for stand-ins of [`crate::api::AdminControl`] in tests and fuzz targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The config being served and its history.
    pub config: ConfigStatus,
    /// Every route of the applied config, in config order.
    pub routes: Vec<RouteStatus>,
    /// Every upstream of the applied config.
    pub upstreams: Vec<UpstreamStatus>,
    /// Admin kills of routes the applied config no longer has: kept, and in force again if
    /// the route comes back.
    #[serde(default)]
    pub dormant_admin_kills: BTreeMap<String, Override>,
}

impl Status {
    /// The route named `name`, if the applied config has it.
    pub fn route(&self, name: &str) -> Option<&RouteStatus> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Who set an operator override (an admin kill or a rollout pause), why and when. Also the
/// shape kept in `state_dir/kills.json` and `state_dir/paused.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The operator's reason.
    pub reason: String,
    /// The token's name.
    pub actor: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// The applied config: what is served, from where, what came before, and the last reload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The config's `version` (its schema).
    pub schema: u32,
    /// Hex SHA-256 of the applied config's bytes (the `sha256` label of `rampart_config_info`).
    pub sha256: String,
    /// The file the applied config was read from (the last good copy in `state_dir` after
    /// an invalid start, or a rollback).
    pub source: Option<String>,
    /// The config file this replica watches.
    pub file: String,
    /// The config applied before this one: what a rollback would go back to.
    pub previous: Option<ConfigRef>,
    /// A rollback in force, pinned until the file's content changes.
    pub pinned: Option<RollbackPin>,
    /// The outcome of the last reload since start, if any.
    pub last_reload: Option<LastReload>,
}

/// A config by its hash and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The file it was read from.
    pub source: Option<String>,
}

/// A rollback in force (`POST /v1/config/rollback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPin {
    /// The config rolled back to.
    pub config_sha256: String,
    /// The config file's sha256 when the rollback was made: the pin lifts when it changes.
    pub until_file_changes_from: String,
    /// The token's name.
    pub actor: String,
    /// The operator's reason.
    pub reason: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// Whether a reload was applied or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The new config is served.
    Applied,
    /// The new file was invalid; the previous config is still served.
    Rejected,
}

/// The last reload of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// Applied or rejected.
    pub result: ReloadResult,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Hex SHA-256 of the file read.
    pub sha256: String,
}

/// One route as it is served now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The route's name.
    pub name: String,
    /// `canary`, `experiment`, `toggle` or `gate`.
    pub kind: String,
    /// The owning team, for the flag inventory.
    pub owner: Option<String>,
    /// The `expires` date as written in the config.
    pub expires: Option<String>,
    /// Whether that date has passed.
    pub expired: bool,
    /// The stable backend's name.
    pub stable: String,
    /// Percent per backend as configured (with the rollout's current step), stable taking
    /// the rest.
    pub configured_split: BTreeMap<String, f64>,
    /// Percent per backend as served now: killed, breaker-open and unhealthy backends'
    /// shares moved to stable (the same computation as `rampart_split_ratio`).
    pub effective_split: BTreeMap<String, f64>,
    /// Every backend of the route, stable first.
    pub backends: Vec<BackendStatus>,
    /// Whether any kill is in force.
    pub killed: bool,
    /// Every kill in force, with its source.
    pub kills: Vec<Kill>,
    /// Whether an operator paused the rollout on this replica.
    pub paused: bool,
    /// Who paused it, why and when.
    pub pause: Option<Override>,
    /// The rollout, where the route has one.
    pub rollout: Option<RolloutStatus>,
}

/// One backend of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The upstream's name.
    pub backend: String,
    /// Whether this is the route's stable backend.
    pub stable: bool,
    /// The upstream's active health check verdict (true without a health check).
    pub healthy: bool,
    /// Requests in flight to the upstream now.
    pub inflight: Option<u32>,
    /// The backend's breaker, where the route has one (never on stable).
    pub breaker: Option<BreakerStatus>,
}

/// The three breaker states, as in the `state` label of `rampart_breaker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Traffic flows; outcomes are judged.
    Closed,
    /// The backend's share goes to stable until the next probe.
    Open,
    /// A few probes test whether the backend recovered.
    HalfOpen,
}

impl BreakerState {
    /// The state's label.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A breaker's state, why it is there, and when it probes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// When an open breaker admits its first probe, RFC 3339 UTC.
    pub next_probe_at: Option<String>,
    /// The same, in milliseconds from now.
    pub next_probe_in_ms: Option<u64>,
    /// The sliding window's figures now.
    pub window: BreakerWindow,
    /// The last state change since this process started: its cause and figures.
    #[serde(default)]
    pub last_transition: Option<BreakerTransition>,
}

/// A breaker's sliding-window figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerWindow {
    /// Attempts in the window.
    pub requests: u32,
    /// Errors among them.
    pub errors: u32,
    /// errors / requests (0 without requests).
    pub error_rate: f64,
    /// Attempts slower than the latency threshold.
    pub slow: u32,
    /// Errors in a row.
    pub consecutive_errors: u32,
}

/// A breaker's state change (also an audit entry `breaker.<to>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerTransition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// Why: `consecutive_errors`, `error_rate`, `latency`, `open_interval_ended`,
    /// `probe_failed` or `probes_passed`.
    pub cause: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The window's figures at the time.
    pub window: BreakerWindow,
}

/// Where a kill comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillSource {
    /// The route's `killed` field: fleet-wide, through the ConfigMap.
    Config,
    /// `POST /v1/routes/{route}/kill` on this replica.
    Admin,
}

impl KillSource {
    /// The source's label, as in `rampart_kill_active`.
    pub fn as_str(self) -> &'static str {
        match self {
            KillSource::Config => "config",
            KillSource::Admin => "admin",
        }
    }
}

/// A kill in force on a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    /// Config or admin.
    pub source: KillSource,
    /// The `killed` text, or the operator's reason.
    pub reason: Option<String>,
    /// For an admin kill: the token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// For an admin kill: when, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// Where a rollout stands, as in the `status` label of `rampart_rollout_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Moving through the steps.
    Progressing,
    /// Held at its step (operator pause, or `on_failure: pause`).
    Paused,
    /// The last step passed; its percent is kept.
    Promoted,
    /// A verdict failed with `on_failure: rollback`: 0 %.
    Aborted,
}

impl RolloutPhase {
    /// The status label.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Promoted => "promoted",
            RolloutPhase::Aborted => "aborted",
        }
    }
}

/// A route's rollout on this replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Index of the current step (0-based, as `rampart_rollout_step`).
    pub step: usize,
    /// Progressing, paused, promoted or aborted.
    pub status: RolloutPhase,
    /// The canary's percent in this state.
    pub percent: String,
    /// The same in buckets (of 10,000).
    pub percent_buckets: u16,
    /// When the current step began, milliseconds since the Unix epoch.
    pub step_started_ms: u64,
    /// When the next verdict is due, milliseconds since the Unix epoch.
    pub next_decision_ms: u64,
    /// An operator paused it on this replica.
    pub operator_paused: bool,
    /// Fingerprint of the rollout block this state belongs to.
    pub block: String,
    /// Where the schedule's boundaries start, milliseconds since the Unix epoch.
    pub schedule_start_ms: u64,
    /// The last stable figures with enough requests (the baseline once at 100 %).
    pub baseline: Option<SideFigures>,
    /// The last verdict and the figures it judged.
    pub last_analysis: Option<LastAnalysis>,
    /// Every step's percent.
    pub steps: Vec<String>,
    /// How long a step lasts at least, in milliseconds.
    pub step_interval_ms: u64,
    /// The canary's percent served now.
    pub current_percent: String,
    /// Whether verdicts come from the fleet's Prometheus (`rollout.prometheus`).
    pub fleet: bool,
    /// When the next verdict is due, RFC 3339 UTC; `None` unless progressing.
    pub next_decision_at: Option<String>,
    /// When the current step began, RFC 3339 UTC.
    pub step_started_at: Option<String>,
    /// This replica's figures for the current step so far.
    pub this_step: StepFigures,
}

/// One side's figures over a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideFigures {
    /// Attempts.
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// errors / requests (0 without requests).
    #[serde(default)]
    pub error_rate: f64,
    /// 99th percentile latency in milliseconds, if any attempt was seen.
    pub p99_ms: Option<f64>,
}

/// What a verdict looks at: canary against stable, and the canary's breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFigures {
    /// The canary.
    pub canary: SideFigures,
    /// The stable backend.
    pub stable: SideFigures,
    /// Whether the canary's breaker opened during the step.
    pub breaker_opened: bool,
}

/// The last verdict of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastAnalysis {
    /// When it ran, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// When it ran, RFC 3339 UTC.
    #[serde(default)]
    pub at: Option<String>,
    /// The step it judged.
    pub step: usize,
    /// `pass`, `inconclusive`, `fail_error_rate`, `fail_latency` or `fail_breaker`.
    pub verdict: String,
    /// The canary's figures.
    pub canary: SideFigures,
    /// The stable figures it compared with.
    pub stable: SideFigures,
    /// Whether the canary's breaker opened during the step.
    pub breaker_opened: bool,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The active health check verdict (true without a health check).
    pub healthy: bool,
    /// Whether it has an active health check.
    pub health_check: bool,
    /// Requests in flight now.
    pub inflight: u32,
    /// The bulkhead's limit.
    pub max_inflight: Option<u32>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kills_keep_their_shape_per_source() {
        let config = Kill {
            source: KillSource::Config,
            reason: Some("INC-7".into()),
            actor: None,
            at: None,
        };
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"source":"config","reason":"INC-7"}"#
        );
        let back: Kill =
            serde_json::from_str(r#"{"source":"admin","reason":"x","actor":"ada","at":"t"}"#)
                .unwrap();
        assert_eq!(back.source, KillSource::Admin);
        assert_eq!(back.actor.as_deref(), Some("ada"));
    }

    #[test]
    fn a_breaker_without_last_transition_reads_as_none() {
        let b: BreakerStatus = serde_json::from_str(
            r#"{"state":"half_open","next_probe_at":null,"next_probe_in_ms":null,
                "window":{"requests":1,"errors":0,"error_rate":0.0,"slow":0,"consecutive_errors":0}}"#,
        )
        .unwrap();
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert!(b.last_transition.is_none());
    }
}
