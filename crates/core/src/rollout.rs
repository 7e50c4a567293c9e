//! The progressive rollout of a canary route's first split entry (docs/rollout.md).
//!
//! The rollout walks `steps`. A step lasts at least `step_interval`; at its boundary a
//! verdict compares the canary with `stable` over that step: pass -> next step (the last
//! step passing -> `promoted`, its percent kept); fewer than `min_requests` canary attempts
//! -> inconclusive, judged again one interval later over the step so far; a threshold
//! crossed, or the canary's breaker opening during the step -> `on_failure` (`rollback`:
//! 0 % and `aborted`; `pause`: the step is held, `paused`). A failure is final until the
//! rollout block changes or an operator resumes.
//!
//! Everything here is pure: the caller passes wall-clock `now` and the step's figures, and
//! persists [`RolloutState`] (it is serde-free plain data the runtime stores as JSON).

use crate::config::{OnFailure, Percent, RolloutConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutStatus {
    /// Moving through the steps.
    Progressing,
    /// Held at its step (operator pause, or `on_failure: pause`).
    Paused,
    /// The last step passed; its percent is kept.
    Promoted,
    /// A verdict failed with `on_failure: rollback`: 0 %.
    Aborted,
}

impl RolloutStatus {
    /// The status label in metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Progressing => "progressing",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Promoted => "promoted",
            RolloutStatus::Aborted => "aborted",
        }
    }

    /// Every status, for publishing one gauge series per status.
    pub const ALL: [RolloutStatus; 4] = [
        RolloutStatus::Progressing,
        RolloutStatus::Paused,
        RolloutStatus::Promoted,
        RolloutStatus::Aborted,
    ];

    /// Parses a label written by [`RolloutStatus::as_str`].
    pub fn parse(text: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One side's figures over a step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SideFigures {
    /// Attempts.
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// 99th percentile latency to response headers, if any attempt was seen.
    pub p99: Option<Duration>,
}

impl SideFigures {
    /// errors / requests (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What the verdict of a step looks at.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepFigures {
    /// The canary (first split entry's backend).
    pub canary: SideFigures,
    /// The route's stable backend.
    pub stable: SideFigures,
    /// Whether the canary's breaker opened during the step.
    pub breaker_opened: bool,
}

/// A verdict's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The step passed.
    Pass,
    /// Too little canary traffic: the step goes on.
    Inconclusive,
    /// The canary's error rate exceeded stable's by more than allowed.
    FailErrorRate,
    /// The canary's p99 exceeded stable's by more than allowed.
    FailLatency,
    /// The canary's breaker opened during the step.
    FailBreaker,
}

impl Verdict {
    /// The verdict's name in logs, audit entries and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Inconclusive => "inconclusive",
            Verdict::FailErrorRate => "fail_error_rate",
            Verdict::FailLatency => "fail_latency",
            Verdict::FailBreaker => "fail_breaker",
        }
    }

    /// Whether this verdict triggers `on_failure`.
    pub fn failed(self) -> bool {
        matches!(
            self,
            Verdict::FailErrorRate | Verdict::FailLatency | Verdict::FailBreaker
        )
    }
}

/// The last analysis, kept for status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analysis {
    /// When it ran.
    pub at: SystemTime,
    /// The step it judged.
    pub step: usize,
    /// Its outcome.
    pub verdict: Verdict,
    /// The figures it judged (with the stable baseline actually used).
    pub figures: StepFigures,
}

/// A rollout's persistent state.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutState {
    /// Index of the current step.
    pub step: usize,
    /// Status.
    pub status: RolloutStatus,
    /// When the current step began (its verdicts run `step_interval` after, and after).
    pub step_started: SystemTime,
    /// When the next verdict is due.
    pub next_decision: SystemTime,
    /// An operator paused it on this replica.
    pub operator_paused: bool,
    /// Fingerprint of the rollout block this state belongs to.
    pub block: String,
    /// The last verdict.
    pub last_analysis: Option<Analysis>,
    /// The last stable figures with at least `min_requests` attempts (baseline at 100 %).
    pub baseline: Option<SideFigures>,
    /// The first split entry's percent in this state (what an edited block resumes from).
    pub percent: Percent,
    /// Where the schedule's boundaries start: `started_at`, or when this replica first
    /// applied the block. Boundary k is `schedule_start + k * step_interval`.
    pub schedule_start: SystemTime,
}

/// Something that happened to a rollout, for logs, metrics and the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutEvent {
    /// The verdict that caused it.
    pub analysis: Analysis,
    /// Step before and after.
    pub step: (usize, usize),
    /// Status before and after.
    pub status: (RolloutStatus, RolloutStatus),
    /// Percent of the first split entry after the event.
    pub percent: Percent,
}

/// Fewest attempts on each side for a latency verdict: below 100 samples the nearest-rank
/// p99 is the maximum, so one outlier (a GC pause, a cold connection) would fail a healthy
/// canary. With fewer, the step is judged on errors alone.
pub const LATENCY_MIN_SAMPLES: u64 = 100;

/// Latencies closer than this are sub-millisecond noise, never a latency failure.
pub const LATENCY_NOISE_FLOOR: Duration = Duration::from_millis(5);

/// Upper bounds of the latency buckets step figures are kept in: 0.1 ms growing by 20 %
/// per bucket up to about 60 s, so a p99 is known within 20 %.
fn latency_bound(index: usize) -> Duration {
    Duration::from_secs_f64(0.0001 * 1.2f64.powi(i32::try_from(index).unwrap_or(i32::MAX)))
}

/// Number of latency buckets (the last one takes everything slower).
pub const LATENCY_BUCKETS: usize = 74;

/// One side's counters for the current step: lock-free, recorded per request.
#[derive(Debug)]
pub struct SideCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for SideCounters {
    fn default() -> Self {
        SideCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SideCounters {
    /// Counts one attempt.
    pub fn record(&self, error: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64().max(0.0001);
        let index = ((secs / 0.0001).ln() / 1.2f64.ln()).ceil();
        let index = if index.is_finite() && index > 0.0 {
            index as usize
        } else {
            0
        };
        if let Some(bucket) = self.latency.get(index.min(LATENCY_BUCKETS - 1)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The figures so far.
    pub fn figures(&self) -> SideFigures {
        let requests = self.requests.load(Ordering::Relaxed);
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let p99 = (total > 0).then(|| {
            let rank = (total as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            let index = counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(LATENCY_BUCKETS - 1);
            latency_bound(index)
        });
        SideFigures {
            requests,
            errors: self.errors.load(Ordering::Relaxed),
            p99,
        }
    }

    /// Starts a new step.
    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        for b in &self.latency {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// A stable fingerprint of a rollout block: a change of any field starts it anew.
pub fn fingerprint(config: &RolloutConfig) -> String {
    crate::config::sha256_hex(format!("{config:?}").as_bytes())
}

/// One route's rollout.
#[derive(Debug, Clone)]
pub struct Rollout {
    config: RolloutConfig,
    state: RolloutState,
}

impl Rollout {
    /// A rollout for `config` at `now`: resumes `persisted` if it belongs to the same block;
    /// after an edit of the block, resumes at the highest step whose percent does not
    /// exceed the persisted percent (an aborted rollout starts again at the first step).
    pub fn new(config: RolloutConfig, now: SystemTime, persisted: Option<RolloutState>) -> Rollout {
        let block = fingerprint(&config);
        let schedule_start = config.started_at.unwrap_or(now);
        let fleet = config.prometheus.is_some();
        let fresh = |step: usize, operator_paused: bool| {
            // Fleet mode replays every boundary from the shared start; a lone replica's
            // first verdict is one full interval after it starts looking.
            let next_decision = if fleet && step == 0 {
                schedule_start + config.step_interval
            } else {
                boundary_at_or_after(
                    schedule_start,
                    config.step_interval,
                    now + config.step_interval,
                )
            };
            RolloutState {
                step,
                status: if operator_paused {
                    RolloutStatus::Paused
                } else {
                    RolloutStatus::Progressing
                },
                step_started: if step == 0 { schedule_start } else { now },
                next_decision,
                operator_paused,
                block: block.clone(),
                last_analysis: None,
                baseline: None,
                percent: config.steps.get(step).copied().unwrap_or(Percent::ZERO),
                schedule_start,
            }
        };
        let state = match persisted {
            Some(p) if p.block == block => p,
            Some(p) => {
                let current = p.percent;
                let step = config
                    .steps
                    .iter()
                    .rposition(|s| *s <= current)
                    .unwrap_or(0);
                fresh(step, p.operator_paused)
            }
            None => fresh(0, false),
        };
        Rollout { config, state }
    }

    /// The settings.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// The state, to persist and show.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// The first split entry's percent now.
    pub fn percent(&self) -> Percent {
        percent_of(&self.state, &self.config.steps)
    }

    /// When the next verdict is due, if one is pending.
    pub fn next_decision_at(&self) -> Option<SystemTime> {
        (self.state.status == RolloutStatus::Progressing).then_some(self.state.next_decision)
    }

    /// Whether a verdict is due at `now`: at the pending boundary, or (fleet mode) at the
    /// boundary plus `prometheus.delay`, when every replica's samples have been scraped.
    pub fn due(&self, now: SystemTime) -> bool {
        let delay = self
            .config
            .prometheus
            .as_ref()
            .map(|p| p.delay)
            .unwrap_or_default();
        self.state.status == RolloutStatus::Progressing && now >= self.state.next_decision + delay
    }

    /// The boundary the next verdict judges (fleet mode queries Prometheus at this time).
    pub fn pending_boundary(&self) -> SystemTime {
        self.state.next_decision
    }

    /// The first split entry's percent at `now`: 0 before a shared `started_at`.
    pub fn percent_at(&self, now: SystemTime) -> Percent {
        if now < self.state.schedule_start {
            Percent::ZERO
        } else {
            self.percent()
        }
    }

    /// Judges `figures` (the current step so far) if a verdict is due at `now`, or at
    /// once if the canary's breaker opened: such a step cannot pass, and waiting for its
    /// boundary would keep the canary at the step's percent.
    pub fn tick(&mut self, now: SystemTime, figures: StepFigures) -> Option<RolloutEvent> {
        // In fleet mode the verdict must be the same on every replica, so a local breaker
        // waits for the boundary (its opening reaches Prometheus through the metrics).
        let failing_now = figures.breaker_opened
            && self.config.prometheus.is_none()
            && self.state.status == RolloutStatus::Progressing;
        if !self.due(now) && !failing_now {
            return None;
        }
        let (verdict, used) = self.judge(figures);
        let before = (self.state.step, self.state.status);
        let boundary = self.state.next_decision;
        let analysis = Analysis {
            at: now,
            step: self.state.step,
            verdict,
            figures: used,
        };
        self.state.last_analysis = Some(analysis);
        // The next boundary on the grid; a lone replica that was down skips the boundaries
        // it missed (it has no figures for them), a fleet replica replays them one by one.
        let interval = self.config.step_interval;
        let mut next = boundary + interval;
        if self.config.prometheus.is_none() {
            next = next.max(boundary_at_or_after(
                self.state.schedule_start,
                interval,
                now + interval / 2,
            ));
        }
        match verdict {
            Verdict::Inconclusive => {
                self.state.next_decision = next;
            }
            Verdict::Pass => {
                if self.state.step + 1 >= self.config.steps.len() {
                    self.state.status = RolloutStatus::Promoted;
                } else {
                    self.state.step += 1;
                    self.state.step_started = boundary.min(now);
                    self.state.next_decision = next;
                }
            }
            _ => {
                self.state.status = match self.config.on_failure {
                    OnFailure::Rollback => RolloutStatus::Aborted,
                    OnFailure::Pause => RolloutStatus::Paused,
                };
            }
        }
        self.state.percent = self.percent();
        Some(RolloutEvent {
            analysis,
            step: (before.0, self.state.step),
            status: (before.1, self.state.status),
            percent: self.percent(),
        })
    }

    fn judge(&mut self, mut figures: StepFigures) -> (Verdict, StepFigures) {
        let min = u64::from(self.config.min_requests);
        if figures.stable.requests >= min {
            self.state.baseline = Some(figures.stable);
        } else if let Some(baseline) = self.state.baseline {
            figures.stable = baseline;
        }
        if figures.breaker_opened {
            return (Verdict::FailBreaker, figures);
        }
        if figures.canary.requests < min {
            return (Verdict::Inconclusive, figures);
        }
        let increase = figures.canary.error_rate() - figures.stable.error_rate();
        if increase > self.config.max_error_rate_increase {
            return (Verdict::FailErrorRate, figures);
        }
        let enough_for_p99 = figures.canary.requests >= LATENCY_MIN_SAMPLES
            && figures.stable.requests >= LATENCY_MIN_SAMPLES;
        if let (true, Some(canary), Some(stable)) =
            (enough_for_p99, figures.canary.p99, figures.stable.p99)
        {
            let ratio = canary.as_secs_f64() / stable.as_secs_f64().max(1e-9);
            if ratio > self.config.max_latency_ratio && canary >= stable + LATENCY_NOISE_FLOOR {
                return (Verdict::FailLatency, figures);
            }
        }
        (Verdict::Pass, figures)
    }

    /// Operator pause: holds the current step.
    pub fn pause(&mut self) {
        self.state.operator_paused = true;
        if self.state.status == RolloutStatus::Progressing {
            self.state.status = RolloutStatus::Paused;
        }
    }

    /// Operator resume: a paused or aborted rollout progresses again from its current
    /// step (an aborted one from the step it failed at), with a fresh step interval.
    pub fn resume(&mut self, now: SystemTime) {
        self.state.operator_paused = false;
        if matches!(
            self.state.status,
            RolloutStatus::Paused | RolloutStatus::Aborted
        ) {
            self.state.status = RolloutStatus::Progressing;
            self.state.step_started = now;
            self.state.next_decision = boundary_at_or_after(
                self.state.schedule_start,
                self.config.step_interval,
                now + self.config.step_interval,
            );
        }
        self.state.percent = self.percent();
    }
}

/// The first schedule boundary (`start + k * interval`, k >= 1) at or after `t`.
pub fn boundary_at_or_after(start: SystemTime, interval: Duration, t: SystemTime) -> SystemTime {
    let interval_ns = interval.as_nanos().max(1);
    let elapsed = t.duration_since(start).map(|d| d.as_nanos()).unwrap_or(0);
    let k = elapsed.div_ceil(interval_ns).max(1);
    let offset = k.saturating_mul(interval_ns);
    start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

fn percent_of(state: &RolloutState, steps: &[Percent]) -> Percent {
    match state.status {
        RolloutStatus::Aborted => Percent::ZERO,
        _ => steps.get(state.step).copied().unwrap_or(Percent::ZERO),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(on_failure: OnFailure) -> RolloutConfig {
        RolloutConfig {
            steps: ["1", "5", "25"]
                .iter()
                .filter_map(|s| Percent::parse(s).ok())
                .collect(),
            step_interval: Duration::from_secs(60),
            started_at: None,
            min_requests: 100,
            max_error_rate_increase: 0.01,
            max_latency_ratio: 1.5,
            on_failure,
            prometheus: None,
        }
    }

    fn side(requests: u64, errors: u64, p99_ms: u64) -> SideFigures {
        SideFigures {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    fn healthy() -> StepFigures {
        StepFigures {
            canary: side(200, 0, 10),
            stable: side(2000, 2, 10),
            breaker_opened: false,
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_healthy_canary_passes_each_step_and_is_promoted() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        assert_eq!(r.percent().to_string(), "1");
        assert!(
            r.tick(T0 + MIN / 2, healthy()).is_none(),
            "a step lasts at least step_interval"
        );
        let e = r.tick(T0 + MIN, healthy()).unwrap();
        assert_eq!(
            (e.analysis.verdict, e.step, r.percent().to_string()),
            (Verdict::Pass, (0, 1), "5".into())
        );
        r.tick(T0 + MIN * 2, healthy());
        let last = r.tick(T0 + MIN * 3, healthy()).unwrap();
        assert_eq!(last.status.1, RolloutStatus::Promoted);
        assert_eq!(
            r.percent().to_string(),
            "25",
            "promotion keeps the last step's percent"
        );
        assert!(r.tick(T0 + MIN * 10, healthy()).is_none());
    }

    #[test]
    fn too_little_traffic_is_inconclusive_and_judged_again_an_interval_later() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        let thin = StepFigures {
            canary: side(99, 0, 10),
            ..healthy()
        };
        let e = r.tick(T0 + MIN, thin).unwrap();
        assert_eq!(e.analysis.verdict, Verdict::Inconclusive);
        assert_eq!(r.state().step, 0, "the step does not pass by default");
        assert!(r.tick(T0 + MIN + MIN / 2, healthy()).is_none());
        assert_eq!(
            r.tick(T0 + MIN * 2, healthy()).unwrap().analysis.verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn errors_above_stable_roll_back_to_zero_and_abort() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.tick(T0 + MIN, healthy());
        let bad = StepFigures {
            canary: side(200, 5, 10),
            ..healthy()
        };
        let e = r.tick(T0 + MIN * 2, bad).unwrap();
        assert_eq!(e.analysis.verdict, Verdict::FailErrorRate);
        assert_eq!(e.status.1, RolloutStatus::Aborted);
        assert_eq!(r.percent(), Percent::ZERO);
        assert!(
            r.tick(T0 + MIN * 5, healthy()).is_none(),
            "aborted is final"
        );
    }

    #[test]
    fn slower_canary_fails_on_latency_but_not_within_the_noise_floor() {
        let mut r = Rollout::new(config(OnFailure::Pause), T0, None);
        let noisy = StepFigures {
            canary: side(200, 0, 4),
            stable: side(2000, 0, 1),
            breaker_opened: false,
        };
        assert_eq!(
            r.tick(T0 + MIN, noisy).unwrap().analysis.verdict,
            Verdict::Pass,
            "4x but only 3 ms slower"
        );
        let slow = StepFigures {
            canary: side(200, 0, 40),
            stable: side(2000, 0, 10),
            breaker_opened: false,
        };
        let e = r.tick(T0 + MIN * 2, slow).unwrap();
        assert_eq!(e.analysis.verdict, Verdict::FailLatency);
        assert_eq!(
            e.status.1,
            RolloutStatus::Paused,
            "on_failure: pause holds the step"
        );
        assert_eq!(r.percent().to_string(), "5");
    }

    #[test]
    fn a_p99_from_fewer_than_100_samples_is_not_judged() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        let outlier = StepFigures {
            canary: side(99, 0, 400),
            stable: side(2000, 0, 10),
            breaker_opened: false,
        };
        let mut cfg_min = config(OnFailure::Rollback);
        cfg_min.min_requests = 20;
        let mut small = Rollout::new(cfg_min, T0, None);
        assert_eq!(
            small.tick(T0 + MIN, outlier).unwrap().analysis.verdict,
            Verdict::Pass,
            "99 samples: p99 is the max"
        );
        let judged = StepFigures {
            canary: side(100, 0, 400),
            ..outlier
        };
        assert_eq!(
            r.tick(T0 + MIN, judged).unwrap().analysis.verdict,
            Verdict::FailLatency
        );
    }

    #[test]
    fn a_breaker_opening_during_the_step_fails_it_even_with_little_traffic() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        let f = StepFigures {
            canary: side(3, 3, 10),
            breaker_opened: true,
            ..healthy()
        };
        assert_eq!(
            r.tick(T0 + MIN, f).unwrap().analysis.verdict,
            Verdict::FailBreaker
        );
        assert_eq!(r.state().status, RolloutStatus::Aborted);
    }

    #[test]
    fn a_thin_stable_side_is_judged_against_the_last_good_baseline() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.tick(T0 + MIN, healthy());
        let at_full = StepFigures {
            canary: side(500, 0, 10),
            stable: side(0, 0, 0),
            breaker_opened: false,
        };
        let e = r.tick(T0 + MIN * 2, at_full).unwrap();
        assert_eq!(e.analysis.figures.stable.requests, 2000, "baseline reused");
        assert_eq!(e.analysis.verdict, Verdict::Pass);
    }

    #[test]
    fn pause_holds_and_resume_restarts_the_step_interval() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.pause();
        assert_eq!(r.state().status, RolloutStatus::Paused);
        assert!(r.tick(T0 + MIN * 3, healthy()).is_none());
        r.resume(T0 + MIN * 3);
        assert!(r.tick(T0 + MIN * 3 + MIN / 2, healthy()).is_none());
        assert_eq!(r.tick(T0 + MIN * 4, healthy()).unwrap().step, (0, 1));
    }

    #[test]
    fn side_counters_give_rates_and_a_p99_within_twenty_percent() {
        let c = SideCounters::default();
        for i in 0..1000u64 {
            c.record(
                i % 100 == 0,
                Duration::from_millis(if i < 990 { 10 } else { 200 }),
            );
        }
        let f = c.figures();
        assert_eq!((f.requests, f.errors), (1000, 10));
        let p99 = f.p99.unwrap().as_secs_f64();
        assert!((0.010..=0.012).contains(&p99), "p99 {p99}");
        c.reset();
        assert_eq!(c.figures().requests, 0);
        assert_eq!(c.figures().p99, None);
    }

    #[test]
    fn a_fleet_replica_starting_late_replays_past_boundaries_in_order() {
        let mut cfg = config(OnFailure::Rollback);
        cfg.started_at = Some(T0);
        cfg.prometheus = Some(crate::config::PrometheusSource {
            url: "http://prometheus:9090".into(),
            selector: "{}".into(),
            delay: Duration::from_secs(10),
        });
        let now = T0 + MIN * 2 + MIN / 2;
        let mut r = Rollout::new(cfg, now, None);
        assert_eq!(
            r.pending_boundary(),
            T0 + MIN,
            "the first boundary, though past"
        );
        assert!(r.due(now));
        r.tick(now, healthy()).unwrap();
        assert_eq!(
            r.pending_boundary(),
            T0 + MIN * 2,
            "replayed one boundary at a time"
        );
        r.tick(now, healthy()).unwrap();
        assert_eq!(r.state().step, 2, "lands on the step the fleet is at");
        assert!(!r.due(now), "t3 + delay has not come yet");
    }

    #[test]
    fn a_shared_start_in_the_future_sends_nobody_before_it() {
        let mut cfg = config(OnFailure::Rollback);
        cfg.started_at = Some(T0 + MIN);
        let r = Rollout::new(cfg, T0, None);
        assert_eq!(r.percent_at(T0), Percent::ZERO);
        assert_eq!(r.percent_at(T0 + MIN).to_string(), "1");
    }

    #[test]
    fn boundaries_sit_on_the_schedule_grid() {
        let b = boundary_at_or_after(T0, MIN, T0 + MIN * 2 + Duration::from_secs(1));
        assert_eq!(b, T0 + MIN * 3);
        assert_eq!(boundary_at_or_after(T0, MIN, T0 + MIN * 2), T0 + MIN * 2);
        assert_eq!(boundary_at_or_after(T0, MIN, T0), T0 + MIN, "k starts at 1");
    }

    #[test]
    fn a_restart_resumes_at_the_same_step() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.tick(T0 + MIN, healthy());
        let saved = r.state().clone();
        let resumed = Rollout::new(config(OnFailure::Rollback), T0 + MIN * 30, Some(saved));
        assert_eq!(resumed.state().step, 1);
        assert_eq!(resumed.percent().to_string(), "5");
    }

    #[test]
    fn edited_steps_resume_at_the_highest_step_not_above_the_current_percent() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.tick(T0 + MIN, healthy());
        r.tick(T0 + MIN * 2, healthy());
        assert_eq!(r.percent().to_string(), "25");
        let mut edited = config(OnFailure::Rollback);
        edited.steps = ["2", "10", "20", "50"]
            .iter()
            .filter_map(|s| Percent::parse(s).ok())
            .collect();
        let resumed = Rollout::new(edited, T0 + MIN * 3, Some(r.state().clone()));
        assert_eq!(resumed.percent().to_string(), "20");
    }

    #[test]
    fn an_aborted_rollout_starts_over_when_its_block_changes() {
        let mut r = Rollout::new(config(OnFailure::Rollback), T0, None);
        r.tick(
            T0 + MIN,
            StepFigures {
                breaker_opened: true,
                ..healthy()
            },
        );
        let same = Rollout::new(
            config(OnFailure::Rollback),
            T0 + MIN,
            Some(r.state().clone()),
        );
        assert_eq!(
            same.state().status,
            RolloutStatus::Aborted,
            "unchanged block: still aborted"
        );
        let mut edited = config(OnFailure::Rollback);
        edited.min_requests = 50;
        let fresh = Rollout::new(edited, T0 + MIN * 2, Some(r.state().clone()));
        assert_eq!(
            (fresh.state().status, fresh.state().step),
            (RolloutStatus::Progressing, 0)
        );
    }
}
