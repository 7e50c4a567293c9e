//! The admin API's operations over the running [`Runtime`] (docs/admin.md), and the
//! state they keep: admin kills and rollout pauses (persisted in `state_dir`, so they last
//! across reloads and restarts), the previous good config (for rollback, kept in memory and
//! as `state_dir/previous-good.yaml`), the rollback pin, and the audit log entries of
//! config reloads and breaker transitions (docs/audit.md#entries).
//!
//! The runtime does not know this module: [`RuntimeAdmin`] is a [`ConfigSubscriber`]
//! registered at start, so every apply and rejection reaches it as a [`ConfigEvent`] with
//! its [`Cause`]; [`RuntimeAdmin::new`] reads `state_dir` before the runtime is built and
//! [`RuntimeAdmin::start`] finishes once it exists. The admin API ([`Control`]) calls
//! [`Runtime::apply`] with [`Cause::AdminRollback`]. Everything else lives here.

use crate::events::{AppliedConfig, Cause, ConfigEvent, ConfigSubscriber, RejectedConfig};
use crate::runtime::{self, BindError, Loaded, Runtime, LAST_GOOD_FILE};
use rampart_admin::api::{self, AdminApi, AdminControl, Caller, ControlError};
use rampart_admin::audit::{rfc3339_millis, AuditLog, NewEntry};
use rampart_admin::status;
use rampart_admin::tokens::TokenStore;

use rampart_core::breaker::BreakerState;
use rampart_core::clock::{Clock, SystemClock};
use rampart_core::config::{self, BackendSlot, Config, Route};
use rampart_core::decision;
use rampart_proxy::handler::ProxyEvent;
use rampart_proxy::publish::EventSink;
use rampart_proxy::SnapshotSource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::net::TcpListener;

/// Admin kills by route, in `state_dir`.
pub const KILLS_FILE: &str = "kills.json";
/// Paused rollouts by route, in `state_dir`.
pub const PAUSED_FILE: &str = "paused.json";
/// The config applied before the current one, in `state_dir`.
pub const PREVIOUS_GOOD_FILE: &str = "previous-good.yaml";
/// The rollback pin, in `state_dir`.
pub const PIN_FILE: &str = "pinned.json";

/// Who set an override (kill or pause), why and when: kept in `state_dir`, shown by status.
pub use rampart_admin::status::Override;

/// A rollback in force: the config file's content it waits for to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pin {
    /// sha256 of the config file when the rollback was made.
    file_sha256: String,
    /// sha256 of the config rolled back to.
    config_sha256: String,
    actor: String,
    reason: String,
    at: String,
}

/// One applied config, kept whole so it can be applied again.
#[derive(Clone)]
struct Applied {
    config: Arc<Config>,
    source: SnapshotSource,
    bytes: Vec<u8>,
}

impl Applied {
    fn to_loaded(&self) -> Loaded {
        Loaded {
            config: (*self.config).clone(),
            source: self.source.clone(),
            bytes: self.bytes.clone(),
        }
    }

    fn summary(&self) -> Value {
        json!(self.reference())
    }

    fn reference(&self) -> status::ConfigRef {
        status::ConfigRef {
            sha256: self.source.sha256.clone(),
            source: self.source.path.as_ref().map(|p| p.display().to_string()),
        }
    }
}

#[derive(Default)]
struct Inner {
    current: Option<Applied>,
    previous: Option<Applied>,
    pin: Option<Pin>,
    /// A pinned config to re-apply at start (the file did not change since the rollback).
    pinned_at_start: Option<Loaded>,
    kills: BTreeMap<String, Override>,
    paused: BTreeMap<String, Override>,
    last_reload: Option<status::LastReload>,
}

/// The last breaker transition of each (route, backend) since start, for status.
type BreakerLog = Mutex<BTreeMap<(String, String), status::BreakerTransition>>;

/// The runtime's admin state: overrides, config history, pin, audit log.
pub struct RuntimeAdmin {
    state_dir: Option<PathBuf>,
    /// The audit log, when there is a `state_dir`.
    pub audit: Option<Arc<AuditLog>>,
    inner: Mutex<Inner>,
    /// Each breaker's last transition: the cause status shows beside its state.
    breakers: Arc<BreakerLog>,
}

fn now_text() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Writes `bytes` to `dir/name` atomically (temp file, fsync, rename, fsync of the dir).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read admin state; ignoring it");
            None
        }
    }
}

impl RuntimeAdmin {
    /// Reads the admin state kept in `state_dir` for the config about to be served: kills,
    /// pauses, the previous good config and a rollback pin. Called before `Runtime::new`
    /// overwrites `last-good.yaml`.
    pub fn new(loaded: &Loaded) -> RuntimeAdmin {
        let state_dir = loaded.config.state_dir.clone();
        let mut inner = Inner {
            current: Some(Applied {
                config: Arc::new(loaded.config.clone()),
                source: loaded.source.clone(),
                bytes: loaded.bytes.clone(),
            }),
            ..Inner::default()
        };
        let mut audit_log = None;
        match &state_dir {
            None if loaded.config.admin_listen.is_some() => tracing::warn!(
                "no state_dir: admin kills, pauses and rollbacks last only until a restart, and there is no audit log"
            ),
            None => {}
            Some(dir) => {
                inner.kills = read_json(dir, KILLS_FILE).unwrap_or_default();
                inner.paused = read_json(dir, PAUSED_FILE).unwrap_or_default();
                // The config applied last by the previous process is this one's previous,
                // unless it is the same config.
                let last = runtime::load(&dir.join(LAST_GOOD_FILE)).ok();
                let previous = match last {
                    Some(l) if l.source.sha256 != loaded.source.sha256 => Some(l),
                    _ => runtime::load(&dir.join(PREVIOUS_GOOD_FILE)).ok(),
                };
                inner.previous = previous.map(|l| Applied {
                    config: Arc::new(l.config),
                    source: l.source,
                    bytes: l.bytes,
                });
                if let Some(pin) = read_json::<Pin>(dir, PIN_FILE) {
                    let pinned = runtime::load(&dir.join(LAST_GOOD_FILE))
                        .ok()
                        .filter(|l| l.source.sha256 == pin.config_sha256);
                    match pinned {
                        Some(l) if pin.file_sha256 == loaded.source.sha256 => {
                            tracing::warn!(sha256 = %pin.config_sha256, "a rollback is pinned and the config file has not changed since: serving the rolled-back config");
                            inner.pinned_at_start = Some(l);
                            inner.pin = Some(pin);
                        }
                        _ => {
                            let _ = std::fs::remove_file(dir.join(PIN_FILE));
                        }
                    }
                }
                match AuditLog::open_in(dir, Arc::new(SystemClock)) {
                    Ok(log) => audit_log = Some(Arc::new(log)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open the audit log; audit entries go to the log only")
                    }
                }
            }
        }
        RuntimeAdmin {
            state_dir,
            audit: audit_log,
            inner: Mutex::new(inner),
            breakers: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logs an audit entry and appends it to the audit log (blocking: it fsyncs).
    pub fn record(&self, entry: &NewEntry) {
        rampart_admin::audit::log_entry(entry);
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.append(entry) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }

    /// Finishes start-up once the runtime exists: admin kills in force, and a pinned
    /// rollback re-applied ([`Cause::PinnedRollback`]).
    pub fn start(&self, runtime: &Runtime) {
        let kills: HashSet<String> = self.lock().kills.keys().cloned().collect();
        if !kills.is_empty() {
            tracing::warn!(routes = ?kills, "admin kills from state_dir are in force");
        }
        runtime.state.admin_kills.store(Arc::new(kills));
        let pinned = self.lock().pinned_at_start.take();
        if let Some(loaded) = pinned {
            if let Err(e) = runtime.apply(loaded, Cause::PinnedRollback) {
                tracing::error!(error = %e, "cannot re-apply the pinned rollback; serving the file's config");
            }
        }
        runtime.publish_kills();
        runtime.state.publish_all_splits();
    }

    /// The data plane's events as this state keeps them: each breaker's last transition
    /// (for status) and, with an audit log, breaker transitions and rollout verdicts as
    /// audit entries.
    pub fn proxy_event_sink(&self) -> EventSink {
        let audit_tx = self.audit.as_ref().and_then(|audit| {
            let (tx, rx) = std::sync::mpsc::channel::<NewEntry>();
            let writer = Arc::clone(audit);
            // Breaker transitions happen on the request path: they are written by a thread
            // of their own so no request waits for an fsync.
            std::thread::Builder::new()
                .name("rampart-audit".into())
                .spawn(move || {
                    for entry in rx {
                        if let Err(e) = writer.append(&entry) {
                            tracing::error!(error = %e, "cannot write the audit log");
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        });
        let breakers = Arc::clone(&self.breakers);
        Arc::new(move |event: &ProxyEvent| {
            remember_transition(&breakers, event);
            if let Some(tx) = &audit_tx {
                let entry = breaker_entry(event);
                rampart_admin::audit::log_entry(&entry);
                let _ = tx.send(entry);
            }
        })
    }

    /// The process started on this config: audited.
    fn started(&self, event: &AppliedConfig) {
        let snapshot = &event.snapshot;
        self.record(&NewEntry::new(
            "system",
            "config.applied",
            json!({
                "cause": event.cause.audit_cause(),
                "sha256": snapshot.source.sha256,
                "file": snapshot.source.path.as_ref().map(|p| p.display().to_string()),
            }),
        ));
    }

    /// Called after every apply: the outgoing config becomes the previous good one (memory
    /// and `previous-good.yaml`), a reload of the file lifts a rollback pin, and the apply
    /// is audited with the routes it changed.
    fn applied(&self, event: &AppliedConfig, old: &rampart_proxy::Snapshot) {
        let (new, bytes, cause) = (&event.snapshot, &event.bytes, event.cause);
        let mut inner = self.lock();
        let outgoing = inner.current.take();
        if let (Some(out), Some(dir)) = (&outgoing, &self.state_dir) {
            if let Err(e) = write_atomic(dir, PREVIOUS_GOOD_FILE, &out.bytes) {
                tracing::warn!(error = %e, "cannot keep the previous good config in state_dir");
            }
        }
        inner.previous = outgoing;
        inner.current = Some(Applied {
            config: Arc::clone(&new.config),
            source: new.source.clone(),
            bytes: bytes.to_vec(),
        });
        let mut unpinned = false;
        if cause.is_file_reload() && inner.pin.take().is_some() {
            unpinned = true;
            if let Some(dir) = &self.state_dir {
                let _ = std::fs::remove_file(dir.join(PIN_FILE));
            }
            tracing::info!("the config file changed: the rollback pin is lifted");
        }
        let detail = json!({
            "cause": cause.audit_cause(),
            "sha256": new.source.sha256,
            "file": new.source.path.as_ref().map(|p| p.display().to_string()),
            "previous_sha256": old.source.sha256,
            "routes_changed": event.routes_changed,
            "unpinned": unpinned,
        });
        inner.last_reload = Some(status::LastReload {
            result: status::ReloadResult::Applied,
            at: now_text(),
            sha256: new.source.sha256.clone(),
        });
        drop(inner);
        self.record(&NewEntry::new("system", "config.applied", detail));
    }

    /// Called when a reload is rejected: audited with the file's sha256 and the errors.
    /// A rollback pin ends here too: the file's content changed, though to something invalid.
    fn rejected(&self, event: &RejectedConfig) {
        let sha256 = event.sha256.as_str();
        let file = event.file.as_deref().unwrap_or(Path::new(""));
        let error = event.error.as_str();
        {
            let mut inner = self.lock();
            inner.last_reload = Some(status::LastReload {
                result: status::ReloadResult::Rejected,
                at: now_text(),
                sha256: sha256.to_string(),
            });
            if inner.pin.take().is_some() {
                if let Some(dir) = &self.state_dir {
                    let _ = std::fs::remove_file(dir.join(PIN_FILE));
                }
            }
        }
        self.record(&NewEntry::new(
            "system",
            "config.rejected",
            json!({"sha256": sha256, "file": file.display().to_string(), "error": error}),
        ));
    }

    /// Persists `value` as `state_dir/name`; whether it was written.
    fn persist(&self, name: &str, value: &BTreeMap<String, Override>) -> bool {
        let Some(dir) = &self.state_dir else {
            return false;
        };
        let bytes = match serde_json::to_vec_pretty(value) {
            Ok(b) => b,
            Err(_) => return false,
        };
        match write_atomic(dir, name, &bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, file = name, "cannot persist admin state; it holds until restart only");
                false
            }
        }
    }
}

impl ConfigSubscriber for RuntimeAdmin {
    fn config_event(&self, event: &ConfigEvent) {
        match event {
            ConfigEvent::Applied(applied) => match &applied.previous {
                None => self.started(applied),
                Some(old) => self.applied(applied, old),
            },
            ConfigEvent::Rejected(rejected) => self.rejected(rejected),
        }
    }
}

fn breaker_entry(event: &ProxyEvent) -> NewEntry {
    match event {
        ProxyEvent::Breaker {
            route,
            backend,
            transition: t,
        } => NewEntry::new(
            "system",
            format!("breaker.{}", t.to.as_str()),
            json!({
                "backend": backend,
                "from": t.from.as_str(),
                "to": t.to.as_str(),
                "cause": t.cause.as_str(),
                "requests": t.figures.requests,
                "errors": t.figures.errors,
                "slow": t.figures.slow,
                "consecutive_errors": t.figures.consecutive_errors,
                "open_for_ms": t.open_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
        )
        .route(route.clone()),
        ProxyEvent::Rollout { route, event } => {
            let a = &event.analysis;
            let side = |s: &rampart_core::rollout::SideFigures| {
                json!({
                    "requests": s.requests,
                    "errors": s.errors,
                    "error_rate": s.error_rate(),
                    "p99_ms": s.p99.map(|d| d.as_secs_f64() * 1000.0),
                })
            };
            let action = if event.status.0 != event.status.1 {
                format!("rollout.{}", event.status.1.as_str())
            } else if event.step.0 != event.step.1 {
                "rollout.step".to_string()
            } else {
                "rollout.verdict".to_string()
            };
            NewEntry::new(
                "system",
                action,
                json!({
                    "verdict": a.verdict.as_str(),
                    "step_from": event.step.0,
                    "step_to": event.step.1,
                    "status_from": event.status.0.as_str(),
                    "status_to": event.status.1.as_str(),
                    "percent": event.percent.to_string(),
                    "canary": side(&a.figures.canary),
                    "stable": side(&a.figures.stable),
                    "breaker_opened": a.figures.breaker_opened,
                }),
            )
            .route(route.clone())
        }
    }
}

/// One side's step figures for status.
fn side_status(side: &rampart_core::rollout::SideFigures) -> status::SideFigures {
    status::SideFigures {
        requests: side.requests,
        errors: side.errors,
        error_rate: side.error_rate(),
        p99_ms: side.p99.map(|d| d.as_secs_f64() * 1000.0),
    }
}

/// A step's figures for status.
fn step_status(f: &rampart_core::rollout::StepFigures) -> status::StepFigures {
    status::StepFigures {
        canary: side_status(&f.canary),
        stable: side_status(&f.stable),
        breaker_opened: f.breaker_opened,
    }
}

fn breaker_state(state: BreakerState) -> status::BreakerState {
    match state {
        BreakerState::Closed => status::BreakerState::Closed,
        BreakerState::Open => status::BreakerState::Open,
        BreakerState::HalfOpen => status::BreakerState::HalfOpen,
    }
}

fn window_status(f: &rampart_core::breaker::WindowFigures) -> status::BreakerWindow {
    status::BreakerWindow {
        requests: f.requests,
        errors: f.errors,
        error_rate: f.error_rate(),
        slow: f.slow,
        consecutive_errors: f.consecutive_errors,
    }
}

/// Keeps a breaker transition as its backend's last one, for status.
fn remember_transition(log: &BreakerLog, event: &ProxyEvent) {
    let ProxyEvent::Breaker {
        route,
        backend,
        transition: t,
    } = event
    else {
        return;
    };
    let last = status::BreakerTransition {
        from: breaker_state(t.from),
        to: breaker_state(t.to),
        cause: t.cause.as_str().to_string(),
        at: now_text(),
        window: window_status(&t.figures),
    };
    if let Ok(mut log) = log.lock() {
        log.insert((route.clone(), backend.clone()), last);
    }
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A route's rollout for status: its persistent state, its schedule and this step so far.
fn rollout_status(
    rollout: &rampart_proxy::rollout::RolloutRuntime,
    state: &rampart_core::rollout::RolloutState,
    config: &rampart_core::config::RolloutConfig,
) -> status::RolloutStatus {
    let phase = match state.status {
        rampart_core::rollout::RolloutStatus::Progressing => status::RolloutPhase::Progressing,
        rampart_core::rollout::RolloutStatus::Paused => status::RolloutPhase::Paused,
        rampart_core::rollout::RolloutStatus::Promoted => status::RolloutPhase::Promoted,
        rampart_core::rollout::RolloutStatus::Aborted => status::RolloutPhase::Aborted,
    };
    status::RolloutStatus {
        step: state.step,
        status: phase,
        percent: state.percent.to_string(),
        percent_buckets: state.percent.buckets(),
        step_started_ms: millis_since_epoch(state.step_started),
        next_decision_ms: millis_since_epoch(state.next_decision),
        operator_paused: state.operator_paused,
        block: state.block.clone(),
        schedule_start_ms: millis_since_epoch(state.schedule_start),
        baseline: state.baseline.as_ref().map(side_status),
        last_analysis: state.last_analysis.as_ref().map(|a| status::LastAnalysis {
            at_ms: millis_since_epoch(a.at),
            at: Some(rfc3339_millis(a.at)),
            step: a.step,
            verdict: a.verdict.as_str().to_string(),
            canary: side_status(&a.figures.canary),
            stable: side_status(&a.figures.stable),
            breaker_opened: a.figures.breaker_opened,
        }),
        steps: config.steps.iter().map(|p| p.to_string()).collect(),
        step_interval_ms: u64::try_from(config.step_interval.as_millis()).unwrap_or(u64::MAX),
        current_percent: rollout.first_entry().to_string(),
        fleet: config.prometheus.is_some(),
        next_decision_at: (state.status == rampart_core::rollout::RolloutStatus::Progressing)
            .then(|| rfc3339_millis(state.next_decision)),
        step_started_at: Some(rfc3339_millis(state.step_started)),
        this_step: step_status(&rollout.figures()),
    }
}

/// [`AdminControl`] over the runtime.
pub struct Control {
    runtime: Arc<Runtime>,
    admin: Arc<RuntimeAdmin>,
    config_path: PathBuf,
}

impl Control {
    /// The admin API's operations over `runtime`, keeping their state in `admin`;
    /// `config_path` is the file a rollback pins against.
    pub fn new(runtime: Arc<Runtime>, admin: Arc<RuntimeAdmin>, config_path: PathBuf) -> Control {
        Control {
            runtime,
            admin,
            config_path,
        }
    }

    fn admin(&self) -> &RuntimeAdmin {
        &self.admin
    }

    fn require_route(&self, route: &str) -> Result<Route, ControlError> {
        self.runtime
            .state
            .snapshot
            .load()
            .config
            .route(route)
            .cloned()
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))
    }

    /// Makes the kill set in force on the data plane and in metrics.
    fn publish_kills(&self, kills: &BTreeMap<String, Override>) {
        let set: HashSet<String> = kills.keys().cloned().collect();
        self.runtime.state.admin_kills.store(Arc::new(set));
        self.runtime.publish_kills();
        self.runtime.state.publish_all_splits();
    }

    fn set_pause(&self, route: &str, caller: &Caller, pause: bool) -> Result<Value, ControlError> {
        let r = self.require_route(route)?;
        if r.rollout.is_none() {
            return Err(ControlError::Conflict(format!(
                "route {route:?} has no rollout block: there is nothing to {}",
                if pause { "pause" } else { "resume" }
            )));
        }
        let admin = self.admin();
        let mut inner = admin.lock();
        let changed = if pause {
            let fresh = !inner.paused.contains_key(route);
            if fresh {
                inner.paused.insert(
                    route.to_string(),
                    Override {
                        reason: caller.reason.clone(),
                        actor: caller.actor.clone(),
                        at: now_text(),
                    },
                );
            }
            fresh
        } else {
            inner.paused.remove(route).is_some()
        };
        let persisted = admin.persist(PAUSED_FILE, &inner.paused);
        drop(inner);
        // The rollout engine holds (and persists) the pause itself; the record above keeps
        // who asked and why, for status.
        let snapshot = self.runtime.state.snapshot.load_full();
        let rollout = snapshot
            .config
            .routes
            .iter()
            .position(|x| x.name == route)
            .and_then(|i| snapshot.routes.get(i))
            .and_then(|rt| rt.rollout.as_ref());
        if let Some(rollout) = rollout {
            if pause {
                rollout.pause();
            } else {
                rollout.resume(SystemTime::now());
            }
            self.runtime.persist_rollouts();
            if let Some(index) = snapshot.config.routes.iter().position(|x| x.name == route) {
                self.runtime.state.publish_rollout(&snapshot, index);
                self.runtime.state.publish_split(&snapshot, index);
            }
        }
        Ok(json!({"route": route, "paused": pause, "changed": changed, "persisted": persisted}))
    }
}

fn percent(buckets: u16) -> f64 {
    f64::from(buckets) / 100.0
}

fn round2(x: f64) -> f64 {
    (x * 10_000.0).round() / 100.0
}

impl Control {
    /// The replica's status document (`GET /v1/status`, `docs/admin.md#status`), built from
    /// one snapshot: the applied config, every route's splits, breakers, kills and rollout,
    /// and every upstream.
    fn status_document(&self) -> status::Status {
        let state = &self.runtime.state;
        let snapshot = state.snapshot.load_full();
        let config = &snapshot.config;
        let now = Instant::now();
        let wall = SystemTime::now();
        let inner = self.admin().lock();
        let transitions = self
            .admin()
            .breakers
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default();
        let admin_kills = state.admin_kills.load();
        let expired: Vec<&str> = config
            .expired_routes(wall)
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let rt = snapshot.routes.get(i);
                let split = state.effective_split(&snapshot, i);
                let name_of = |slot: BackendSlot| {
                    config
                        .backend(route, slot)
                        .map(|u| u.name.clone())
                        .unwrap_or_default()
                };
                let configured_split = split
                    .iter()
                    .map(|(slot, share, _)| (name_of(*slot), percent(share.buckets())))
                    .collect();
                let effective_split = split
                    .iter()
                    .map(|(slot, _, ratio)| (name_of(*slot), round2(*ratio)))
                    .collect();
                let backends = route
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(slot_index, id)| {
                        let slot = BackendSlot(u8::try_from(slot_index).unwrap_or(u8::MAX));
                        let name = name_of(slot);
                        let upstream = snapshot.upstreams.get(id.index());
                        let breaker = rt
                            .and_then(|r| r.slot(slot))
                            .and_then(|s| s.breaker.as_ref())
                            .map(|b| {
                                let next = b.next_probe_at();
                                let in_ = next.map(|at| at.saturating_duration_since(now));
                                status::BreakerStatus {
                                    state: breaker_state(b.state()),
                                    next_probe_at: in_.map(|d| rfc3339_millis(wall + d)),
                                    next_probe_in_ms: in_
                                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                                    window: window_status(&b.figures(now)),
                                    last_transition: transitions
                                        .get(&(route.name.clone(), name.clone()))
                                        .cloned(),
                                }
                            });
                        status::BackendStatus {
                            backend: name,
                            stable: slot.is_stable(),
                            healthy: upstream.is_none_or(|u| u.is_healthy()),
                            inflight: upstream.map(|u| u.inflight()),
                            breaker,
                        }
                    })
                    .collect();
                let mut kills = Vec::new();
                if let Some(reason) = &route.killed {
                    kills.push(status::Kill {
                        source: status::KillSource::Config,
                        reason: Some(reason.clone()),
                        actor: None,
                        at: None,
                    });
                }
                if admin_kills.contains(&route.name) {
                    let record = inner.kills.get(&route.name);
                    kills.push(status::Kill {
                        source: status::KillSource::Admin,
                        reason: record.map(|r| r.reason.clone()),
                        actor: record.map(|r| r.actor.clone()),
                        at: record.map(|r| r.at.clone()),
                    });
                }
                let pause = inner.paused.get(&route.name).cloned();
                let rollout = rt
                    .and_then(|r| r.rollout.as_ref())
                    .and_then(|r| r.snapshot().map(|(state, config)| (r, state, config)))
                    .map(|(r, state, config)| rollout_status(r, &state, &config));
                status::RouteStatus {
                    name: route.name.clone(),
                    kind: route.kind.as_str().to_string(),
                    owner: route.owner.clone(),
                    expires: route.expires_text.clone(),
                    expired: expired.contains(&route.name.as_str()),
                    stable: name_of(BackendSlot::STABLE),
                    configured_split,
                    effective_split,
                    backends,
                    killed: !kills.is_empty(),
                    kills,
                    paused: pause.is_some(),
                    pause,
                    rollout,
                }
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .zip(snapshot.upstreams.iter())
            .map(|(u, rt)| status::UpstreamStatus {
                name: u.name.clone(),
                url: u.url.clone(),
                healthy: rt.is_healthy(),
                health_check: u.health_check.is_some(),
                inflight: rt.inflight(),
                max_inflight: u.max_inflight,
            })
            .collect();
        // Kills of routes the applied config no longer has: kept, in force if they return.
        let dormant_admin_kills = inner
            .kills
            .iter()
            .filter(|(name, _)| config.route(name).is_none())
            .map(|(name, o)| (name.clone(), o.clone()))
            .collect();
        status::Status {
            config: status::ConfigStatus {
                schema: config.version,
                sha256: snapshot.source.sha256.clone(),
                source: snapshot
                    .source
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string()),
                file: self.config_path.display().to_string(),
                previous: inner.previous.as_ref().map(Applied::reference),
                pinned: inner.pin.as_ref().map(|p| status::RollbackPin {
                    config_sha256: p.config_sha256.clone(),
                    until_file_changes_from: p.file_sha256.clone(),
                    actor: p.actor.clone(),
                    reason: p.reason.clone(),
                    at: p.at.clone(),
                }),
                last_reload: inner.last_reload.clone(),
            },
            routes,
            upstreams,
            dormant_admin_kills,
        }
    }
}

impl AdminControl for Control {
    fn status(&self) -> status::Status {
        self.status_document()
    }

    fn explain(&self, route: &str, identity: &str) -> Result<Value, ControlError> {
        let state = &self.runtime.state;
        let snapshot = state.snapshot.load_full();
        let config = &snapshot.config;
        let (_, decided) = state
            .explain(&snapshot, route, identity, &decision::IdentityOnly)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))?;
        let r = config
            .route(route)
            .ok_or_else(|| ControlError::UnknownRoute(route.to_string()))?;
        let name = |slot| {
            config
                .backend(r, slot)
                .map(|u| u.name.clone())
                .unwrap_or_default()
        };
        let mut out = json!({
            "route": route,
            "bucket": decided.bucket,
            "backend": name(decided.slot),
            "reason": decided.reason.as_str(),
        });
        if decided.diverted() {
            out["candidate"] = Value::String(name(decided.candidate));
        }
        Ok(out)
    }

    fn kill(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        let r = self.require_route(route)?;
        let admin = self.admin();
        let mut inner = admin.lock();
        let changed = !inner.kills.contains_key(route);
        if changed {
            inner.kills.insert(
                route.to_string(),
                Override {
                    reason: caller.reason.clone(),
                    actor: caller.actor.clone(),
                    at: now_text(),
                },
            );
        }
        // In force first: in an incident the kill must hold even if the disk does not.
        self.publish_kills(&inner.kills);
        let persisted = admin.persist(KILLS_FILE, &inner.kills);
        Ok(json!({
            "route": route,
            "killed": true,
            "changed": changed,
            "persisted": persisted,
            "also_killed_by_config": r.killed.is_some(),
        }))
    }

    fn unkill(&self, route: &str, _caller: &Caller) -> Result<Value, ControlError> {
        let admin = self.admin();
        let mut inner = admin.lock();
        let known = self.require_route(route);
        if known.is_err() && !inner.kills.contains_key(route) {
            return Err(ControlError::UnknownRoute(route.to_string()));
        }
        let changed = inner.kills.remove(route).is_some();
        self.publish_kills(&inner.kills);
        let persisted = admin.persist(KILLS_FILE, &inner.kills);
        let config_kill = known.ok().and_then(|r| r.killed);
        Ok(json!({
            "route": route,
            "killed": config_kill.is_some(),
            "changed": changed,
            "persisted": persisted,
            "still_killed_by_config": config_kill,
        }))
    }

    fn pause(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.set_pause(route, caller, true)
    }

    fn resume(&self, route: &str, caller: &Caller) -> Result<Value, ControlError> {
        self.set_pause(route, caller, false)
    }

    fn rollback(&self, caller: &Caller) -> Result<Value, ControlError> {
        let admin = self.admin();
        let (previous, replaced) = {
            let inner = admin.lock();
            let Some(previous) = inner.previous.clone() else {
                return Err(ControlError::Conflict(
                    "no previous good config to roll back to (none was applied before this one)"
                        .to_string(),
                ));
            };
            (previous, inner.current.as_ref().map(Applied::summary))
        };
        let file_sha256 = std::fs::read(&self.config_path)
            .map(|b| config::sha256_hex(&b))
            .unwrap_or_else(|_| "unreadable".to_string());
        if let Err(e) = self
            .runtime
            .apply(previous.to_loaded(), Cause::AdminRollback)
        {
            return Err(ControlError::Failed(format!(
                "the previous config could not be applied: {e}"
            )));
        }
        let pin = Pin {
            file_sha256: file_sha256.clone(),
            config_sha256: previous.source.sha256.clone(),
            actor: caller.actor.clone(),
            reason: caller.reason.clone(),
            at: now_text(),
        };
        let mut persisted = false;
        if let Some(dir) = &admin.state_dir {
            match serde_json::to_vec_pretty(&pin).map(|b| write_atomic(dir, PIN_FILE, &b)) {
                Ok(Ok(())) => persisted = true,
                Ok(Err(e)) => tracing::error!(error = %e, "cannot persist the rollback pin"),
                Err(e) => tracing::error!(error = %e, "cannot encode the rollback pin"),
            }
        }
        admin.lock().pin = Some(pin);
        tracing::warn!(sha256 = %previous.source.sha256, "rolled back to the previous good config; pinned until the config file's content changes");
        Ok(json!({
            "applied": previous.summary(),
            "replaced": replaced,
            "pinned_until_file_changes_from": file_sha256,
            "persisted": persisted,
        }))
    }
}

/// The running admin listener.
pub struct AdminServer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Stops the listener and writes any pending refusal summary.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `admin_listen` if it is set.
pub async fn bind(config: &Config) -> Result<Option<TcpListener>, BindError> {
    let Some(addr) = config.admin_listen else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| BindError {
            what: "admin_listen",
            addr,
            source,
        })
}

/// Serves the admin API on `listener` over `runtime`, its state in `admin`.
///
/// `tls` is the data plane's TLS acceptor: used when `admin_listen` is not a loopback
/// address (validation refuses such a listener without `tls`).
pub fn spawn(
    runtime: &Arc<Runtime>,
    admin: &Arc<RuntimeAdmin>,
    listener: TcpListener,
    config_path: PathBuf,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> AdminServer {
    let config = runtime.state.snapshot.load().config.clone();
    let tokens = TokenStore::new(config.admin_tokens_file.clone());
    let control = Arc::new(Control::new(
        Arc::clone(runtime),
        Arc::clone(admin),
        config_path,
    ));
    let api = Arc::new(AdminApi::new(
        control,
        tokens,
        admin.audit.clone(),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    ));
    let off_loopback = listener.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    let tls = tls.filter(|_| off_loopback);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin_listen = %addr, tls = tls.is_some(), "admin API listening");
    }
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(api::serve(listener, api, tls, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    AdminServer { stop, task }
}
