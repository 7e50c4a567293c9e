//! Rollouts at run time: the core's [`Rollout`] state machine behind a mutex that only the
//! rollout ticker and operators take, with the first split entry's current percent in an
//! atomic the request path reads, and lock-free per-step counters of canary and stable
//! attempts.

use rampart_core::config::{BackendSlot, Percent, PrometheusSource, RolloutConfig, Route};
use rampart_core::rollout::{
    fingerprint, Rollout, RolloutEvent, RolloutState, SideCounters, StepFigures,
};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A fleet verdict to fetch: Prometheus figures at `boundary` over `window`.
#[derive(Debug, Clone)]
pub struct FleetQuery {
    /// The schedule boundary the verdict judges (the queries' evaluation time).
    pub boundary: SystemTime,
    /// The step so far, ending at `boundary`.
    pub window: Duration,
    /// Where to query.
    pub source: PrometheusSource,
}

/// One route's rollout at run time.
#[derive(Debug)]
pub struct RolloutRuntime {
    /// The route's name.
    pub route: String,
    /// The backend slot the rollout drives (the first split entry's backend).
    pub canary_slot: BackendSlot,
    block: String,
    rollout: Mutex<Rollout>,
    percent: AtomicU16,
    canary: SideCounters,
    stable: SideCounters,
    breaker_opened: AtomicBool,
}

impl RolloutRuntime {
    /// The rollout of `route` (which has a `rollout` block) at `now`, resuming `persisted`.
    pub fn new(
        route: &Route,
        config: &RolloutConfig,
        now: SystemTime,
        persisted: Option<RolloutState>,
    ) -> Option<RolloutRuntime> {
        let canary_slot = route.split.first()?.backend;
        let rollout = Rollout::new(config.clone(), now, persisted);
        Some(RolloutRuntime {
            route: route.name.clone(),
            canary_slot,
            block: fingerprint(config),
            percent: AtomicU16::new(rollout.percent_at(now).buckets()),
            rollout: Mutex::new(rollout),
            canary: SideCounters::default(),
            stable: SideCounters::default(),
            breaker_opened: AtomicBool::new(false),
        })
    }

    /// Whether this runtime belongs to `config` (an unchanged block keeps its runtime).
    pub fn same_block(&self, config: &RolloutConfig) -> bool {
        self.block == fingerprint(config)
    }

    /// The first split entry's share now (read per request).
    pub fn first_entry(&self) -> Percent {
        Percent::from_buckets(self.percent.load(Ordering::Acquire))
    }

    /// Counts an attempt on the canary or the stable backend for the current step.
    pub fn record(&self, slot: BackendSlot, error: bool, latency: Duration) {
        if slot == self.canary_slot {
            self.canary.record(error, latency);
        } else if slot.is_stable() {
            self.stable.record(error, latency);
        }
    }

    /// Notes that the canary's breaker opened: the step fails at the next tick.
    pub fn breaker_opened(&self) {
        self.breaker_opened.store(true, Ordering::Release);
    }

    /// The figures of the current step so far.
    pub fn figures(&self) -> StepFigures {
        StepFigures {
            canary: self.canary.figures(),
            stable: self.stable.figures(),
            breaker_opened: self.breaker_opened.load(Ordering::Acquire),
        }
    }

    /// Runs a verdict from this replica's own counters if one is due at `now` (rollouts
    /// without `prometheus`); a step change starts fresh counters. Also keeps the request
    /// path's percent current (0 before a shared `started_at`).
    pub fn tick(&self, now: SystemTime) -> Option<RolloutEvent> {
        let mut rollout = self.rollout.lock().ok()?;
        self.percent
            .store(rollout.percent_at(now).buckets(), Ordering::Release);
        if rollout.config().prometheus.is_some() {
            return None;
        }
        let event = rollout.tick(now, self.figures())?;
        self.after_event(&rollout, &event, now);
        Some(event)
    }

    /// In fleet mode, the boundary whose verdict is due at `now`, the window to query
    /// (the step so far), and where to query it.
    pub fn fleet_due(&self, now: SystemTime) -> Option<FleetQuery> {
        let rollout = self.rollout.lock().ok()?;
        let source = rollout.config().prometheus.clone()?;
        if !rollout.due(now) {
            return None;
        }
        let boundary = rollout.pending_boundary();
        let window = boundary
            .duration_since(rollout.state().step_started)
            .unwrap_or(rollout.config().step_interval)
            .max(Duration::from_secs(1));
        Some(FleetQuery {
            boundary,
            window,
            source,
        })
    }

    /// Applies a fleet verdict for `query.boundary` from figures Prometheus gave; ignored
    /// if that boundary is no longer the pending one (a reload or an operator intervened).
    pub fn tick_with(
        &self,
        now: SystemTime,
        query: &FleetQuery,
        figures: StepFigures,
    ) -> Option<RolloutEvent> {
        let mut rollout = self.rollout.lock().ok()?;
        if rollout.pending_boundary() != query.boundary || !rollout.due(now) {
            return None;
        }
        let event = rollout.tick(now, figures)?;
        self.after_event(&rollout, &event, now);
        Some(event)
    }

    fn after_event(&self, rollout: &Rollout, event: &RolloutEvent, now: SystemTime) {
        if event.step.0 != event.step.1 || event.status.0 != event.status.1 {
            self.canary.reset();
            self.stable.reset();
            self.breaker_opened.store(false, Ordering::Release);
        }
        self.percent
            .store(rollout.percent_at(now).buckets(), Ordering::Release);
    }

    /// A copy of the state (to persist or show) with the settings.
    pub fn snapshot(&self) -> Option<(RolloutState, RolloutConfig)> {
        let rollout = self.rollout.lock().ok()?;
        Some((rollout.state().clone(), rollout.config().clone()))
    }

    /// Operator pause on this replica.
    pub fn pause(&self) {
        if let Ok(mut r) = self.rollout.lock() {
            r.pause();
        }
    }

    /// Operator resume on this replica; a new step interval begins with fresh counters.
    pub fn resume(&self, now: SystemTime) {
        if let Ok(mut r) = self.rollout.lock() {
            r.resume(now);
            self.canary.reset();
            self.stable.reset();
            self.breaker_opened.store(false, Ordering::Release);
            self.percent.store(r.percent().buckets(), Ordering::Release);
        }
    }
}
