//! What the data plane publishes about its state: breaker transitions (log, metrics,
//! events), the effective split of each route (`rampart_split_ratio`), rollout gauges, and
//! the [`ProxyEvent`]s the runtime turns into audit entries.

use crate::handler::ProxyState;
use crate::snapshot::Snapshot;
use rampart_core::breaker::Transition;
use rampart_core::config::{BackendSlot, Route};
use rampart_core::rollout::{RolloutEvent, RolloutStatus};
use std::sync::Arc;

/// Something the data plane did that the audit log and operators want to know.
#[derive(Debug, Clone)]
pub enum ProxyEvent {
    /// A rollout verdict ran (pass, inconclusive or fail), possibly changing step or status.
    Rollout {
        /// Route name.
        route: String,
        /// The verdict and its effect.
        event: RolloutEvent,
    },
    /// A breaker changed state.
    Breaker {
        /// Route name.
        route: String,
        /// Backend name.
        backend: String,
        /// The change and its figures.
        transition: Transition,
    },
}

/// Receives [`ProxyEvent`]s (the runtime writes them to the audit log).
pub type EventSink = Arc<dyn Fn(&ProxyEvent) + Send + Sync>;

impl ProxyState {
    /// Reports a breaker transition: log at warn, metrics, split ratios, event sink.
    pub fn breaker_transition(
        &self,
        snapshot: &Snapshot,
        route: usize,
        slot: BackendSlot,
        t: Transition,
    ) {
        let Some(rt) = snapshot.routes.get(route) else {
            return;
        };
        let Some(slot_rt) = rt.slot(slot) else { return };
        slot_rt.publish_breaker_state();
        if let Some(counters) = &slot_rt.breaker_transitions {
            let index = rampart_core::breaker::BreakerState::ALL
                .iter()
                .position(|s| *s == t.to)
                .unwrap_or(0);
            if let Some(c) = counters.get(index) {
                c.inc();
            }
        }
        let next_probe_in_ms = t.open_for.map(|d| d.as_millis() as u64);
        let next_probe_at = t.open_for.map(|d| {
            humantime::format_rfc3339_millis(std::time::SystemTime::now() + d).to_string()
        });
        tracing::warn!(
            next_probe_at,
            route = rt.name_str.as_str(),
            backend = slot_rt.name_str.as_str(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            cause = t.cause.as_str(),
            requests = t.figures.requests,
            errors = t.figures.errors,
            error_rate = t.figures.error_rate(),
            slow = t.figures.slow,
            consecutive_errors = t.figures.consecutive_errors,
            next_probe_in_ms,
            "breaker {}",
            t.to.as_str()
        );
        if let Some(rollout) = &rt.rollout {
            if t.to == rampart_core::breaker::BreakerState::Open && slot == rollout.canary_slot {
                rollout.breaker_opened();
            }
        }
        self.publish_split(snapshot, route);
        self.emit(&ProxyEvent::Breaker {
            route: rt.name_str.clone(),
            backend: slot_rt.name_str.clone(),
            transition: t,
        });
    }

    /// Whether the route is killed now, and by what (`config` first).
    pub fn kill_source(&self, route: &Route) -> Option<&'static str> {
        if route.killed.is_some() {
            Some("config")
        } else if self.admin_kills.load().contains(&route.name) {
            Some("admin")
        } else {
            None
        }
    }

    /// The effective share (0..1) of each backend slot of one route, beside its configured
    /// share: the split, with killed, breaker-open and unhealthy backends' shares moved to
    /// stable. What `rampart_split_ratio` and the admin status show.
    pub fn effective_split(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
    ) -> Vec<(BackendSlot, rampart_core::config::Percent, f64)> {
        let Some(route) = snapshot.config.routes.get(route_index) else {
            return Vec::new();
        };
        let Some(rt) = snapshot.routes.get(route_index) else {
            return Vec::new();
        };
        let shares = route.shares(rt.rollout.as_ref().map(|r| r.first_entry()));
        let mut to_stable = 0.0;
        let mut ratios: Vec<f64> = Vec::with_capacity(shares.len());
        for (slot, share) in &shares {
            if self.closed_gate(snapshot, route_index, *slot).is_none() {
                ratios.push(share.ratio());
            } else {
                to_stable += share.ratio();
                ratios.push(0.0);
            }
        }
        if let Some(stable) = ratios.first_mut() {
            *stable += to_stable;
        }
        shares
            .into_iter()
            .zip(ratios)
            .map(|((slot, share), ratio)| (slot, share, ratio))
            .collect()
    }

    /// Sets `rampart_split_ratio` of one route to its effective shares
    /// ([`ProxyState::effective_split`]).
    pub fn publish_split(&self, snapshot: &Snapshot, route_index: usize) {
        let Some(rt) = snapshot.routes.get(route_index) else {
            return;
        };
        for (slot, _, ratio) in self.effective_split(snapshot, route_index) {
            if let Some(s) = rt.slot(slot) {
                self.metrics
                    .split_ratio
                    .with_label_values(&[&rt.name_str, &s.name_str])
                    .set(ratio);
            }
        }
    }

    /// Sets `rampart_rollout_step` and `rampart_rollout_status` of one route.
    pub fn publish_rollout(&self, snapshot: &Snapshot, route_index: usize) {
        let Some(rt) = snapshot.routes.get(route_index) else {
            return;
        };
        let Some((state, _)) = rt.rollout.as_ref().and_then(|r| r.snapshot()) else {
            return;
        };
        self.metrics
            .rollout_step
            .with_label_values(&[&rt.name_str])
            .set(i64::try_from(state.step).unwrap_or(i64::MAX));
        for status in RolloutStatus::ALL {
            self.metrics
                .rollout_status
                .with_label_values(&[&rt.name_str, status.as_str()])
                .set(i64::from(status == state.status));
        }
    }

    /// Publishes the effective split of every route of the applied snapshot.
    pub fn publish_all_splits(&self) {
        let snapshot = self.snapshot.load_full();
        self.metrics.split_ratio.reset();
        self.metrics.rollout_step.reset();
        self.metrics.rollout_status.reset();
        for i in 0..snapshot.config.routes.len() {
            self.publish_split(&snapshot, i);
            self.publish_rollout(&snapshot, i);
        }
    }
}
