//! The admin API's operations over the running [`Runtime`] (SPEC sections 5 and 6), and the
//! state they keep: admin kills and rollout pauses (persisted in `state_dir`, so they last
//! across reloads and restarts), the previous good config (for rollback, kept in memory and
//! as `state_dir/previous-good.yaml`), the rollback pin, and the audit log entries of
//! config reloads and breaker transitions.
//!
//! `runtime.rs` calls in at four points: [`RuntimeAdmin::new`] and [`RuntimeAdmin::start`]
//! when the runtime is built, [`RuntimeAdmin::applied`] after every apply and
//! [`RuntimeAdmin::rejected`] after a rejected reload. Everything else lives here.

use crate::runtime::{self, BindError, Loaded, Runtime, LAST_GOOD_FILE};
use rampart_admin::api::{self, AdminApi, AdminControl, Caller, ControlError};
use rampart_admin::audit::{self, rfc3339_millis, AuditLog, NewEntry};
use rampart_admin::tokens::TokenStore;
use rampart_core::breaker::BreakerState;
use rampart_core::bucket::Bucket;
use rampart_core::clock::{Clock, SystemClock};
use rampart_core::config::{self, BackendSlot, Config, Route, UpstreamId};
use rampart_core::decision::{self, Decision, Gates};
use rampart_core::matching::RequestFacts;
use rampart_proxy::handler::{ProxyEvent, ProxyState};
use rampart_proxy::{Snapshot, SnapshotSource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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

/// Who set an override (kill or pause), why and when: shown by status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The operator's reason.
    pub reason: String,
    /// The token's name.
    pub actor: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

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
        json!({
            "sha256": self.source.sha256,
            "source": self.source.path.as_ref().map(|p| p.display().to_string()),
        })
    }
}

#[derive(Default)]
struct Inner {
    current: Option<Applied>,
    previous: Option<Applied>,
    pin: Option<Pin>,
    /// A pinned config to re-apply at start (the file did not change since the rollback).
    pinned_at_start: Option<Loaded>,
    /// Why the next apply happens, when it is not a reload of the file.
    cause: Option<&'static str>,
    kills: BTreeMap<String, Override>,
    paused: BTreeMap<String, Override>,
    last_reload: Option<Value>,
}

/// The runtime's admin state: overrides, config history, pin, audit log.
pub struct RuntimeAdmin {
    state_dir: Option<PathBuf>,
    /// The audit log, when there is a `state_dir`.
    pub audit: Option<Arc<AuditLog>>,
    inner: Mutex<Inner>,
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

/// `{backend: percent}` of a route's configured split (stable gets the rest).
fn split_of(config: &Config, route: &Route) -> BTreeMap<String, f64> {
    route
        .shares(None)
        .into_iter()
        .filter_map(|(slot, share)| {
            let name = config.backend(route, slot)?.name.clone();
            Some((name, f64::from(share.buckets()) / 100.0))
        })
        .collect()
}

/// The routes that differ between two configs: added, removed, split or kill changed.
fn routes_changed(old: &Config, new: &Config) -> Vec<Value> {
    let mut changes = Vec::new();
    for route in &new.routes {
        match old.route(&route.name) {
            None => changes.push(
                json!({"route": route.name, "change": "added", "split": split_of(new, route)}),
            ),
            Some(before) => {
                let (from, to) = (split_of(old, before), split_of(new, route));
                if from != to {
                    changes.push(
                        json!({"route": route.name, "change": "split", "from": from, "to": to}),
                    );
                }
                if before.killed != route.killed {
                    changes.push(json!({"route": route.name, "change": "killed", "from": before.killed, "to": route.killed}));
                }
            }
        }
    }
    for route in &old.routes {
        if new.route(&route.name).is_none() {
            changes.push(json!({"route": route.name, "change": "removed"}));
        }
    }
    changes
}

impl RuntimeAdmin {
    /// Reads the admin state kept in `state_dir` for the config about to be served: kills,
    /// pauses, the previous good config and a rollback pin. Called by `Runtime::new` before
    /// it overwrites `last-good.yaml`.
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

    /// Finishes start-up once the runtime exists: admin kills in force, breaker transitions
    /// into the audit log, the start audited, and a pinned rollback re-applied.
    pub fn start(&self, runtime: &Runtime) {
        let kills: HashSet<String> = self.lock().kills.keys().cloned().collect();
        if !kills.is_empty() {
            tracing::warn!(routes = ?kills, "admin kills from state_dir are in force");
        }
        runtime.state.admin_kills.store(Arc::new(kills));
        if let Some(audit) = &self.audit {
            let (tx, rx) = std::sync::mpsc::channel::<NewEntry>();
            let writer = Arc::clone(audit);
            // Breaker transitions happen on the request path: they are written by a thread
            // of their own so no request waits for an fsync.
            let spawned = std::thread::Builder::new()
                .name("rampart-audit".into())
                .spawn(move || {
                    for entry in rx {
                        if let Err(e) = writer.append(&entry) {
                            tracing::error!(error = %e, "cannot write the audit log");
                        }
                    }
                });
            if spawned.is_ok() {
                let _ = runtime
                    .state
                    .events
                    .set(Arc::new(move |event: &ProxyEvent| {
                        let entry = breaker_entry(event);
                        rampart_admin::audit::log_entry(&entry);
                        let _ = tx.send(entry);
                    }));
            }
        }
        let snapshot = runtime.state.snapshot.load_full();
        self.record(&NewEntry::new(
            "system",
            "config.applied",
            json!({
                "cause": "start",
                "sha256": snapshot.source.sha256,
                "file": snapshot.source.path.as_ref().map(|p| p.display().to_string()),
            }),
        ));
        let pinned = self.lock().pinned_at_start.take();
        if let Some(loaded) = pinned {
            self.lock().cause = Some("pinned_rollback");
            if let Err(e) = runtime.apply(loaded) {
                tracing::error!(error = %format!("{e:#}"), "cannot re-apply the pinned rollback; serving the file's config");
                self.lock().cause = None;
            }
        }
        runtime.publish_kills();
        runtime.state.publish_all_splits();
    }

    /// Called after every apply: the outgoing config becomes the previous good one (memory
    /// and `previous-good.yaml`), a reload of the file lifts a rollback pin, and the apply
    /// is audited with the routes it changed.
    pub fn applied(&self, old: &Snapshot, new: &Snapshot, bytes: &[u8]) {
        let mut inner = self.lock();
        let cause = inner.cause.take();
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
        if cause.is_none() && inner.pin.take().is_some() {
            unpinned = true;
            if let Some(dir) = &self.state_dir {
                let _ = std::fs::remove_file(dir.join(PIN_FILE));
            }
            tracing::info!("the config file changed: the rollback pin is lifted");
        }
        let detail = json!({
            "cause": cause.unwrap_or("reload"),
            "sha256": new.source.sha256,
            "file": new.source.path.as_ref().map(|p| p.display().to_string()),
            "previous_sha256": old.source.sha256,
            "routes_changed": routes_changed(&old.config, &new.config),
            "unpinned": unpinned,
        });
        inner.last_reload =
            Some(json!({"result": "applied", "at": now_text(), "sha256": new.source.sha256}));
        drop(inner);
        self.record(&NewEntry::new("system", "config.applied", detail));
    }

    /// Called when a reload is rejected: audited with the file's sha256 and the errors.
    /// A rollback pin ends here too: the file's content changed, though to something invalid.
    pub fn rejected(&self, file: &Path, sha256: &str, error: &str) {
        {
            let mut inner = self.lock();
            inner.last_reload =
                Some(json!({"result": "rejected", "at": now_text(), "sha256": sha256}));
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
fn figures_json(side: &rampart_core::rollout::SideFigures) -> Value {
    json!({
        "requests": side.requests,
        "errors": side.errors,
        "error_rate": side.error_rate(),
        "p99_ms": side.p99.map(|d| d.as_secs_f64() * 1000.0),
    })
}

/// The decision the proxy would make now for a request on route `index` of `snapshot`
/// with `facts` (its headers) and `identity`, without side effects: no breaker probe slot
/// taken, no bulkhead permit, the rollout's current step applied. What the admin API's
/// explain and OFREP flag evaluation (docs/ofrep.md) answer; `None` if there is no such
/// route. A missing identity on a `missing_identity: random` route draws `random_bucket`.
pub fn peek_decision<F: RequestFacts + ?Sized>(
    state: &ProxyState,
    snapshot: &Snapshot,
    index: usize,
    facts: &F,
    identity: Option<&str>,
    random_bucket: impl FnOnce() -> Bucket,
) -> Option<Decision> {
    let config = &snapshot.config;
    let route = config.routes.get(index)?;
    let first_entry = snapshot
        .routes
        .get(index)
        .and_then(|rt| rt.rollout.as_ref())
        .map(|r| r.first_entry());
    let candidate = decision::candidate(config, route, facts, identity, random_bucket, first_entry);
    let gates = ReadOnlyGates { state, snapshot };
    Some(decision::gate(index, route, candidate, &gates))
}

/// The gates as they stand, without side effects: a breaker is asked for its state, not for
/// a probe slot, so explaining never takes one from real traffic.
struct ReadOnlyGates<'a> {
    state: &'a ProxyState,
    snapshot: &'a Snapshot,
}

impl Gates for ReadOnlyGates<'_> {
    fn admin_killed(&self, route: usize) -> bool {
        self.snapshot
            .config
            .routes
            .get(route)
            .is_some_and(|r| self.state.admin_kills.load().contains(&r.name))
    }
    fn breaker_admits(&self, route: usize, slot: BackendSlot) -> bool {
        self.snapshot
            .routes
            .get(route)
            .and_then(|r| r.slot(slot))
            .and_then(|s| s.breaker.as_ref())
            .is_none_or(|b| b.state() == BreakerState::Closed)
    }
    fn healthy(&self, upstream: UpstreamId) -> bool {
        self.snapshot
            .upstreams
            .get(upstream.index())
            .is_none_or(|u| u.is_healthy())
    }
}

/// [`AdminControl`] over the runtime.
pub struct Control {
    runtime: Arc<Runtime>,
    config_path: PathBuf,
}

impl Control {
    fn admin(&self) -> &RuntimeAdmin {
        &self.runtime.admin
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

impl AdminControl for Control {
    fn status(&self) -> Value {
        let state = &self.runtime.state;
        let snapshot = state.snapshot.load_full();
        let config = &snapshot.config;
        let now = Instant::now();
        let wall = SystemTime::now();
        let inner = self.admin().lock();
        let admin_kills = state.admin_kills.load();
        let expired: Vec<&str> = config
            .expired_routes(wall)
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let routes: Vec<Value> = config
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
                let configured: BTreeMap<String, f64> = split
                    .iter()
                    .map(|(slot, share, _)| (name_of(*slot), percent(share.buckets())))
                    .collect();
                let effective: BTreeMap<String, f64> = split
                    .iter()
                    .map(|(slot, _, ratio)| (name_of(*slot), round2(*ratio)))
                    .collect();
                let backends: Vec<Value> = route
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(slot_index, id)| {
                        let slot = BackendSlot(u8::try_from(slot_index).unwrap_or(u8::MAX));
                        let upstream = snapshot.upstreams.get(id.index());
                        let breaker = rt
                            .and_then(|r| r.slot(slot))
                            .and_then(|s| s.breaker.as_ref())
                            .map(|b| {
                                let next = b.next_probe_at();
                                let figures = b.figures(now);
                                json!({
                                    "state": b.state().as_str(),
                                    "next_probe_at": next.map(|at| rfc3339_millis(wall + at.saturating_duration_since(now))),
                                    "next_probe_in_ms": next.map(|at| u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
                                    "window": {
                                        "requests": figures.requests,
                                        "errors": figures.errors,
                                        "error_rate": figures.error_rate(),
                                        "slow": figures.slow,
                                        "consecutive_errors": figures.consecutive_errors,
                                    },
                                })
                            });
                        json!({
                            "backend": name_of(slot),
                            "stable": slot.is_stable(),
                            "healthy": upstream.is_none_or(|u| u.is_healthy()),
                            "inflight": upstream.map(|u| u.inflight()),
                            "breaker": breaker,
                        })
                    })
                    .collect();
                let mut kills = Vec::new();
                if let Some(reason) = &route.killed {
                    kills.push(json!({"source": "config", "reason": reason}));
                }
                if admin_kills.contains(&route.name) {
                    let record = inner.kills.get(&route.name);
                    kills.push(json!({
                        "source": "admin",
                        "reason": record.map(|r| r.reason.as_str()),
                        "actor": record.map(|r| r.actor.as_str()),
                        "at": record.map(|r| r.at.as_str()),
                    }));
                }
                let pause = inner.paused.get(&route.name);
                let rollout = rt
                    .and_then(|r| r.rollout.as_ref())
                    .and_then(|r| r.snapshot().map(|(state, config)| (r, state, config)))
                    .map(|(r, state, config)| {
                        let mut value = crate::rollout_store::state_json(&state);
                        let millis_to_rfc3339 = |ms: &Value| {
                            ms.as_u64().map(|ms| {
                                rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                            })
                        };
                        value["steps"] = json!(config.steps.iter().map(|p| p.to_string()).collect::<Vec<_>>());
                        value["step_interval_ms"] = json!(u64::try_from(config.step_interval.as_millis()).unwrap_or(u64::MAX));
                        value["current_percent"] = json!(r.first_entry().to_string());
                        value["fleet"] = json!(config.prometheus.is_some());
                        value["next_decision_at"] = if state.status == rampart_core::rollout::RolloutStatus::Progressing {
                            millis_to_rfc3339(&value["next_decision_ms"]).map(Value::String).unwrap_or(Value::Null)
                        } else {
                            Value::Null
                        };
                        value["step_started_at"] = millis_to_rfc3339(&value["step_started_ms"]).map(Value::String).unwrap_or(Value::Null);
                        value["this_step"] = json!({
                            "canary": figures_json(&r.figures().canary),
                            "stable": figures_json(&r.figures().stable),
                            "breaker_opened": r.figures().breaker_opened,
                        });
                        value
                    })
                    .unwrap_or(Value::Null);
                json!({
                    "name": route.name,
                    "kind": route.kind.as_str(),
                    "owner": route.owner,
                    "expires": route.expires_text,
                    "expired": expired.contains(&route.name.as_str()),
                    "stable": name_of(BackendSlot::STABLE),
                    "configured_split": configured,
                    "effective_split": effective,
                    "backends": backends,
                    "killed": !kills.is_empty(),
                    "kills": kills,
                    "paused": pause.is_some(),
                    "pause": pause,
                    "rollout": rollout,
                })
            })
            .collect();
        let upstreams: Vec<Value> = config
            .upstreams
            .iter()
            .zip(snapshot.upstreams.iter())
            .map(|(u, rt)| {
                json!({
                    "name": u.name,
                    "url": u.url,
                    "healthy": rt.is_healthy(),
                    "health_check": u.health_check.is_some(),
                    "inflight": rt.inflight(),
                    "max_inflight": u.max_inflight,
                })
            })
            .collect();
        // Kills of routes the applied config no longer has: kept, in force if they return.
        let dormant_kills: BTreeMap<&String, &Override> = inner
            .kills
            .iter()
            .filter(|(name, _)| config.route(name).is_none())
            .collect();
        json!({
            "config": {
                "schema": config.version,
                "sha256": snapshot.source.sha256,
                "source": snapshot.source.path.as_ref().map(|p| p.display().to_string()),
                "file": self.config_path.display().to_string(),
                "previous": inner.previous.as_ref().map(Applied::summary),
                "pinned": inner.pin.as_ref().map(|p| json!({
                    "config_sha256": p.config_sha256,
                    "until_file_changes_from": p.file_sha256,
                    "actor": p.actor,
                    "reason": p.reason,
                    "at": p.at,
                })),
                "last_reload": inner.last_reload,
            },
            "routes": routes,
            "upstreams": upstreams,
            "dormant_admin_kills": dormant_kills,
        })
    }

    fn explain(&self, route: &str, identity: &str) -> Result<Value, ControlError> {
        let state = &self.runtime.state;
        let snapshot = state.snapshot.load_full();
        let config = &snapshot.config;
        let decided = config
            .routes
            .iter()
            .position(|r| r.name == route)
            .and_then(|index| {
                let facts = decision::IdentityOnly;
                peek_decision(state, &snapshot, index, &facts, Some(identity), || 0)
            })
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
        admin.lock().cause = Some("rollback");
        if let Err(e) = self.runtime.apply(previous.to_loaded()) {
            admin.lock().cause = None;
            return Err(ControlError::Failed(format!(
                "the previous config could not be applied: {e:#}"
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

/// Serves the admin API on `listener` over `runtime`.
///
/// `tls` is the data plane's TLS acceptor: used when `admin_listen` is not a loopback
/// address (validation refuses such a listener without `tls`).
pub fn spawn(
    runtime: &Arc<Runtime>,
    listener: TcpListener,
    config_path: PathBuf,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> AdminServer {
    let config = runtime.state.snapshot.load().config.clone();
    let tokens = TokenStore::new(config.admin_tokens_file.clone());
    let control = Arc::new(Control {
        runtime: Arc::clone(runtime),
        config_path,
    });
    let api = Arc::new(AdminApi::new(
        control,
        tokens,
        runtime.admin.audit.clone(),
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

/// `rampart audit verify FILE [--head HASH]`: 0 intact, 1 with the first bad line.
pub fn verify_command(file: &Path, head: Option<&str>) -> ExitCode {
    match audit::verify(file, head) {
        Ok(report) => {
            for line in &report.torn_acknowledged {
                println!(
                    "note: {}: line {line}: torn by a crash and acknowledged by the writer",
                    file.display()
                );
            }
            println!(
                "ok: {} entries, chain intact; last hash {}",
                report.entries, report.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}
