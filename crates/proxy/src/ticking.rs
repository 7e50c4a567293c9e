//! Rollout ticking: due verdicts run at a tick, each logged with its figures, published
//! in metrics and reported as an event.

use crate::handler::ProxyState;
use crate::publish::ProxyEvent;
use crate::snapshot::Snapshot;
use rampart_core::rollout::RolloutEvent;

impl ProxyState {
    /// Runs due rollout verdicts at `now`; each verdict is logged with its figures,
    /// published in metrics and reported to the event sink. Returns whether any ran.
    pub fn tick_rollouts(&self, now: std::time::SystemTime) -> bool {
        let snapshot = self.snapshot.load_full();
        let mut any = false;
        for (index, rt) in snapshot.routes.iter().enumerate() {
            let Some(rollout) = &rt.rollout else { continue };
            let before = rollout.first_entry();
            match rollout.tick(now) {
                Some(event) => {
                    any = true;
                    self.report_rollout(&snapshot, index, event);
                }
                // A shared start passing moves the percent without a verdict.
                None if rollout.first_entry() != before => self.publish_split(&snapshot, index),
                None => {}
            }
        }
        any
    }

    /// Logs a verdict with its figures, publishes the route's rollout metrics and split,
    /// and reports the event to the sink (audit log).
    pub fn report_rollout(&self, snapshot: &Snapshot, index: usize, event: RolloutEvent) {
        let Some(rt) = snapshot.routes.get(index) else {
            return;
        };
        let a = &event.analysis;
        tracing::warn!(
            route = rt.name_str.as_str(),
            verdict = a.verdict.as_str(),
            step_from = event.step.0,
            step_to = event.step.1,
            status_from = event.status.0.as_str(),
            status_to = event.status.1.as_str(),
            percent = %event.percent,
            canary_requests = a.figures.canary.requests,
            canary_error_rate = a.figures.canary.error_rate(),
            canary_p99_ms = a.figures.canary.p99.map(|d| d.as_secs_f64() * 1000.0),
            stable_requests = a.figures.stable.requests,
            stable_error_rate = a.figures.stable.error_rate(),
            stable_p99_ms = a.figures.stable.p99.map(|d| d.as_secs_f64() * 1000.0),
            breaker_opened = a.figures.breaker_opened,
            "rollout verdict"
        );
        self.publish_rollout(snapshot, index);
        self.publish_split(snapshot, index);
        self.emit(&ProxyEvent::Rollout {
            route: rt.name_str.clone(),
            event,
        });
    }
}
