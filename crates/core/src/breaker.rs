//! The circuit breaker of one (route, non-stable backend) (docs/breaker.md).
//!
//! Closed: outcomes go into a sliding window kept in ten slices of `window / 10`. It opens
//! when `consecutive_errors` errors come in a row, or when the window holds at least
//! `min_requests` attempts and either the error rate exceeds `max_error_rate` or the
//! latency quantile exceeds its threshold. The quantile needs no histogram: the
//! q-quantile of latencies is above T exactly when more than `1 - q` of them are above T,
//! so each slice only counts attempts slower than the threshold.
//!
//! Open: nothing is admitted until `open_for` has passed; then half-open, where
//! `half_open_requests` probes are admitted. A failed probe re-opens with `open_for`
//! doubled (up to `max_open_for`); all probes passing closes and clears the window.
//!
//! The hot path is lock-free: admitting reads one atomic in the closed state, and
//! recording an outcome adds to three counters of the current slice. Only transitions
//! (rare) take a mutex. Time is passed in as an `Instant`, never read here.

use crate::config::BreakerConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SLICES: usize = 10;

/// The three breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Traffic flows; outcomes are judged.
    Closed,
    /// Traffic goes to stable until the open interval ends.
    Open,
    /// A few probes test whether the backend recovered.
    HalfOpen,
}

impl BreakerState {
    /// The state's label in metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Every state, for publishing one gauge series per state.
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_code(code: u8) -> BreakerState {
        match code {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// What an attempt's outcome was, as the breaker classes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Connect or TLS failure, reset, timeout, 5xx, or a gRPC error status.
    pub error: bool,
    /// Time to response headers (for timeouts and connect failures: the time waited).
    pub latency: Duration,
}

/// Whether a request may go to the backend, and if so whether it is a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not admitted: the request goes to stable.
    Rejected,
    /// Admitted in the closed state.
    Admitted,
    /// Admitted as one of the half-open probes; its outcome decides the state.
    Probe,
}

impl Admission {
    /// Whether the request may go to the backend.
    pub fn admitted(self) -> bool {
        !matches!(self, Admission::Rejected)
    }
}

/// The figures behind a transition, for logs, audit entries and status.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFigures {
    /// Attempts in the window.
    pub requests: u32,
    /// Errors in the window.
    pub errors: u32,
    /// Attempts slower than the latency threshold in the window.
    pub slow: u32,
    /// Errors in a row at the time.
    pub consecutive_errors: u32,
}

impl WindowFigures {
    /// Errors / requests, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            f64::from(self.errors) / f64::from(self.requests)
        }
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionCause {
    /// Too many errors in a row.
    ConsecutiveErrors,
    /// The window's error rate crossed `max_error_rate`.
    ErrorRate,
    /// The window's latency quantile crossed its threshold.
    Latency,
    /// The open interval ended.
    OpenIntervalEnded,
    /// A half-open probe failed.
    ProbeFailed,
    /// Every half-open probe passed.
    ProbesPassed,
}

impl TransitionCause {
    /// The cause's name in logs and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionCause::ConsecutiveErrors => "consecutive_errors",
            TransitionCause::ErrorRate => "error_rate",
            TransitionCause::Latency => "latency",
            TransitionCause::OpenIntervalEnded => "open_interval_ended",
            TransitionCause::ProbeFailed => "probe_failed",
            TransitionCause::ProbesPassed => "probes_passed",
        }
    }
}

/// A state change, reported once by the call that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// State left.
    pub from: BreakerState,
    /// State entered.
    pub to: BreakerState,
    /// Why.
    pub cause: TransitionCause,
    /// The window at the time.
    pub figures: WindowFigures,
    /// When opening: how long it stays open before probing.
    pub open_for: Option<Duration>,
}

struct Slice {
    epoch: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
    slow: AtomicU32,
}

impl Slice {
    fn new() -> Slice {
        Slice {
            epoch: AtomicU64::new(u64::MAX),
            requests: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }
}

struct Transitions {
    /// The interval the next opening lasts.
    next_open_for: Duration,
}

/// One breaker.
pub struct Breaker {
    config: BreakerConfig,
    base: Instant,
    slice_nanos: u64,
    state: AtomicU8,
    /// Nanoseconds since `base` at which an open breaker turns half-open.
    open_until: AtomicU64,
    /// The interval of the current or last opening, in nanoseconds.
    open_for_nanos: AtomicU64,
    probes_issued: AtomicU32,
    probes_passed: AtomicU32,
    consecutive: AtomicU32,
    slices: [Slice; SLICES],
    transitions: Mutex<Transitions>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A closed breaker; `base` is any instant not after the first `now` it will see.
    pub fn new(config: BreakerConfig, base: Instant) -> Breaker {
        let slice_nanos = (nanos(config.window) / SLICES as u64).max(1);
        let open_for = config.open_for;
        Breaker {
            config,
            base,
            slice_nanos,
            state: AtomicU8::new(BreakerState::Closed.code()),
            open_until: AtomicU64::new(0),
            open_for_nanos: AtomicU64::new(0),
            probes_issued: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            slices: std::array::from_fn(|_| Slice::new()),
            transitions: Mutex::new(Transitions {
                next_open_for: open_for,
            }),
        }
    }

    /// A breaker for `config` that keeps `previous`'s state (a reload kept the route and
    /// backend names): an open breaker stays open, a half-open one probes again.
    pub fn carry_over(previous: &Breaker, config: BreakerConfig) -> Breaker {
        let breaker = Breaker::new(config, previous.base);
        let state = previous.state();
        if state != BreakerState::Closed {
            breaker
                .state
                .store(BreakerState::Open.code(), Ordering::Release);
            let until = if state == BreakerState::HalfOpen {
                0
            } else {
                previous.open_until.load(Ordering::Acquire)
            };
            breaker.open_until.store(until, Ordering::Release);
            breaker.open_for_nanos.store(
                previous.open_for_nanos.load(Ordering::Acquire),
                Ordering::Release,
            );
            if let (Ok(mut new), Ok(old)) =
                (breaker.transitions.lock(), previous.transitions.lock())
            {
                new.next_open_for = old.next_open_for.min(breaker.config.max_open_for);
            }
        }
        breaker
    }

    /// The settings it judges by.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code(self.state.load(Ordering::Acquire))
    }

    fn since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }

    /// When an open breaker will admit its first probe (`None` unless open).
    pub fn next_probe_at(&self) -> Option<Instant> {
        (self.state() == BreakerState::Open)
            .then(|| self.base + Duration::from_nanos(self.open_until.load(Ordering::Acquire)))
    }

    /// May a request go to the backend at `now`? Moves an open breaker whose interval
    /// ended to half-open (reported in the second value) and hands out probe slots.
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state() {
            BreakerState::Closed => (Admission::Admitted, None),
            BreakerState::Open => {
                if self.since_base(now) < self.open_until.load(Ordering::Acquire) {
                    return (Admission::Rejected, None);
                }
                let transition = self.to_half_open(now);
                (self.take_probe(), transition)
            }
            BreakerState::HalfOpen => (self.take_probe(), None),
        }
    }

    fn take_probe(&self) -> Admission {
        if self.state() != BreakerState::HalfOpen {
            return Admission::Rejected;
        }
        let limit = self.config.half_open_requests;
        match self
            .probes_issued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Rejected,
        }
    }

    fn to_half_open(&self, now: Instant) -> Option<Transition> {
        let Ok(_guard) = self.transitions.lock() else {
            return None;
        };
        if self.state() != BreakerState::Open
            || self.since_base(now) < self.open_until.load(Ordering::Acquire)
        {
            return None;
        }
        self.probes_issued.store(0, Ordering::Release);
        self.probes_passed.store(0, Ordering::Release);
        self.state
            .store(BreakerState::HalfOpen.code(), Ordering::Release);
        Some(Transition {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen,
            cause: TransitionCause::OpenIntervalEnded,
            figures: self.figures(now),
            open_for: None,
        })
    }

    /// Gives back what [`Breaker::admit`] handed out for an attempt that will not be
    /// judged (the client failed it or went away before the upstream answered): a
    /// half-open probe slot goes back so another request can probe. Nothing else changes.
    pub fn release(&self, admission: Admission) {
        if admission != Admission::Probe || self.state() != BreakerState::HalfOpen {
            return;
        }
        let _ = self
            .probes_issued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records an attempt's outcome at `now`; `admission` is what [`Breaker::admit`]
    /// said for it. Returns the transition this outcome caused, if any.
    pub fn record(
        &self,
        now: Instant,
        admission: Admission,
        outcome: Outcome,
    ) -> Option<Transition> {
        let slow = self
            .config
            .max_latency
            .is_some_and(|m| outcome.latency > m.threshold);
        match (self.state(), admission) {
            (BreakerState::HalfOpen, Admission::Probe) => {
                self.record_probe(now, outcome.error || slow)
            }
            (BreakerState::Closed, _) => {
                self.add_to_window(now, outcome.error, slow);
                let consecutive = if outcome.error {
                    self.consecutive
                        .fetch_add(1, Ordering::AcqRel)
                        .saturating_add(1)
                } else {
                    self.consecutive.store(0, Ordering::Release);
                    0
                };
                if outcome.error || slow {
                    self.judge(now, consecutive)
                } else {
                    None
                }
            }
            // Outcomes of requests admitted before the breaker opened, or probes of an
            // earlier half-open round: they change nothing now.
            _ => None,
        }
    }

    fn add_to_window(&self, now: Instant, error: bool, slow: bool) {
        let epoch = self.since_base(now) / self.slice_nanos;
        let Some(slice) = self.slices.get((epoch % SLICES as u64) as usize) else {
            return;
        };
        let seen = slice.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slice
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slice.requests.store(0, Ordering::Release);
            slice.errors.store(0, Ordering::Release);
            slice.slow.store(0, Ordering::Release);
        }
        slice.requests.fetch_add(1, Ordering::AcqRel);
        if error {
            slice.errors.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            slice.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The window's totals at `now` (slices older than the window are left out).
    pub fn figures(&self, now: Instant) -> WindowFigures {
        let current = self.since_base(now) / self.slice_nanos;
        let oldest = current.saturating_sub(SLICES as u64 - 1);
        let mut figures = WindowFigures {
            requests: 0,
            errors: 0,
            slow: 0,
            consecutive_errors: self.consecutive.load(Ordering::Acquire),
        };
        for slice in &self.slices {
            let epoch = slice.epoch.load(Ordering::Acquire);
            if epoch == u64::MAX || epoch < oldest || epoch > current {
                continue;
            }
            figures.requests = figures
                .requests
                .saturating_add(slice.requests.load(Ordering::Acquire));
            figures.errors = figures
                .errors
                .saturating_add(slice.errors.load(Ordering::Acquire));
            figures.slow = figures
                .slow
                .saturating_add(slice.slow.load(Ordering::Acquire));
        }
        figures
    }

    fn judge(&self, now: Instant, consecutive: u32) -> Option<Transition> {
        let cause = if self.config.consecutive_errors > 0
            && consecutive >= self.config.consecutive_errors
        {
            Some(TransitionCause::ConsecutiveErrors)
        } else {
            let f = self.figures(now);
            if f.requests < self.config.min_requests || f.requests == 0 {
                None
            } else if f.error_rate() > self.config.max_error_rate {
                Some(TransitionCause::ErrorRate)
            } else if let Some(m) = self.config.max_latency {
                (f.slow > allowed_slow(m.quantile, f.requests)).then_some(TransitionCause::Latency)
            } else {
                None
            }
        };
        self.open(now, BreakerState::Closed, cause?)
    }

    fn record_probe(&self, now: Instant, failed: bool) -> Option<Transition> {
        if failed {
            return self.open(now, BreakerState::HalfOpen, TransitionCause::ProbeFailed);
        }
        let passed = self
            .probes_passed
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if passed < self.config.half_open_requests {
            return None;
        }
        let Ok(mut t) = self.transitions.lock() else {
            return None;
        };
        if self.state() != BreakerState::HalfOpen {
            return None;
        }
        let figures = self.figures(now);
        for slice in &self.slices {
            slice.epoch.store(u64::MAX, Ordering::Release);
        }
        self.consecutive.store(0, Ordering::Release);
        t.next_open_for = self.config.open_for;
        self.state
            .store(BreakerState::Closed.code(), Ordering::Release);
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            cause: TransitionCause::ProbesPassed,
            figures,
            open_for: None,
        })
    }

    fn open(&self, now: Instant, from: BreakerState, cause: TransitionCause) -> Option<Transition> {
        let Ok(mut t) = self.transitions.lock() else {
            return None;
        };
        if self.state() != from {
            return None; // another outcome already moved it
        }
        let open_for = t.next_open_for;
        t.next_open_for = (open_for * 2).min(self.config.max_open_for);
        let figures = self.figures(now);
        self.open_until.store(
            self.since_base(now).saturating_add(nanos(open_for)),
            Ordering::Release,
        );
        self.open_for_nanos
            .store(nanos(open_for), Ordering::Release);
        self.state
            .store(BreakerState::Open.code(), Ordering::Release);
        Some(Transition {
            from,
            to: BreakerState::Open,
            cause,
            figures,
            open_for: Some(open_for),
        })
    }
}

/// How many of `n` latencies may exceed the threshold while the nearest-rank
/// `quantile` stays at or under it: `n - ceil(quantile * n)`.
fn allowed_slow(quantile: f64, n: u32) -> u32 {
    // The epsilon keeps 0.9 * 10 at rank 9 despite 0.9 having no exact binary form.
    let rank = (quantile * f64::from(n) - 1e-9).ceil().max(1.0);
    n.saturating_sub(rank as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaxLatency;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 10,
            max_error_rate: 0.5,
            consecutive_errors: 0,
            max_latency: None,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(12),
            half_open_requests: 2,
            grpc_error_codes: vec![],
        }
    }

    const OK: Outcome = Outcome {
        error: false,
        latency: Duration::from_millis(1),
    };
    const ERR: Outcome = Outcome {
        error: true,
        latency: Duration::from_millis(1),
    };

    fn feed(b: &Breaker, now: Instant, outcome: Outcome, n: usize) -> Vec<Transition> {
        (0..n)
            .filter_map(|_| {
                let (admission, _) = b.admit(now);
                b.record(now, admission, outcome)
            })
            .collect()
    }

    #[test]
    fn no_verdict_below_min_requests_and_a_verdict_at_exactly_min_requests() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        assert!(feed(&b, t0, ERR, 9).is_empty());
        assert_eq!(b.state(), BreakerState::Closed);
        let transitions = feed(&b, t0, ERR, 1);
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].cause, TransitionCause::ErrorRate);
        assert_eq!(transitions[0].figures.requests, 10);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn an_error_rate_at_the_threshold_does_not_trip_but_above_does() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, OK, 5);
        assert!(
            feed(&b, t0, ERR, 5).is_empty(),
            "5/10 = 0.5 is not above 0.5"
        );
        assert_eq!(feed(&b, t0, ERR, 1).len(), 1, "6/11 is above 0.5");
    }

    #[test]
    fn consecutive_errors_trip_without_min_requests() {
        let t0 = Instant::now();
        let b = Breaker::new(
            BreakerConfig {
                consecutive_errors: 3,
                ..config()
            },
            t0,
        );
        feed(&b, t0, ERR, 2);
        feed(&b, t0, OK, 1);
        assert!(feed(&b, t0, ERR, 2).is_empty());
        let t = feed(&b, t0, ERR, 1);
        assert_eq!(t[0].cause, TransitionCause::ConsecutiveErrors);
    }

    #[test]
    fn old_slices_roll_out_of_the_window() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 9);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.figures(later).requests, 0);
        assert!(
            feed(&b, later, ERR, 9).is_empty(),
            "the first 9 errors left the window"
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn latency_quantile_over_threshold_trips() {
        let t0 = Instant::now();
        let cfg = BreakerConfig {
            max_latency: Some(MaxLatency {
                quantile: 0.9,
                threshold: Duration::from_millis(100),
            }),
            ..config()
        };
        let b = Breaker::new(cfg, t0);
        let slow = Outcome {
            error: false,
            latency: Duration::from_millis(150),
        };
        feed(&b, t0, OK, 9);
        assert!(
            feed(&b, t0, slow, 1).is_empty(),
            "1 slow of 10: p90 still fast"
        );
        let t = feed(&b, t0, slow, 1);
        assert_eq!(
            t[0].cause,
            TransitionCause::Latency,
            "2 slow of 11: p90 is slow"
        );
    }

    #[test]
    fn open_rejects_until_open_for_then_probes_and_closes_when_all_pass() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 10);
        assert_eq!(b.admit(t0 + Duration::from_secs(4)).0, Admission::Rejected);
        let t5 = t0 + Duration::from_secs(5);
        let (a1, transition) = b.admit(t5);
        assert_eq!(a1, Admission::Probe);
        assert_eq!(transition.map(|t| t.to), Some(BreakerState::HalfOpen));
        let (a2, _) = b.admit(t5);
        assert_eq!(a2, Admission::Probe);
        assert_eq!(
            b.admit(t5).0,
            Admission::Rejected,
            "only half_open_requests probes"
        );
        assert!(b.record(t5, a1, OK).is_none());
        let closed = b.record(t5, a2, OK);
        assert_eq!(closed.map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.figures(t5).requests, 0, "closing clears the window");
    }

    #[test]
    fn a_released_probe_slot_lets_another_request_probe_and_the_breaker_still_closes() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 10);
        let t5 = t0 + Duration::from_secs(5);
        let (a1, _) = b.admit(t5);
        let (a2, _) = b.admit(t5);
        assert_eq!(b.admit(t5).0, Admission::Rejected);
        // The client behind a1 went away: its probe is not judged, and its slot is free.
        b.release(a1);
        let (a3, _) = b.admit(t5);
        assert_eq!(a3, Admission::Probe);
        assert!(b.record(t5, a2, OK).is_none());
        assert_eq!(
            b.record(t5, a3, OK).map(|t| t.to),
            Some(BreakerState::Closed)
        );
        // Releasing outside half-open, or a non-probe admission, changes nothing.
        b.release(Admission::Admitted);
        b.release(Admission::Probe);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_interval_capped_at_max_open_for() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 10);
        let mut now = t0;
        for expected in [10, 12, 12] {
            now += Duration::from_secs(13);
            let (probe, _) = b.admit(now);
            assert_eq!(probe, Admission::Probe);
            let t = b.record(now, probe, ERR);
            assert_eq!(
                t.as_ref().and_then(|t| t.open_for),
                Some(Duration::from_secs(expected))
            );
            assert_eq!(t.map(|t| t.cause), Some(TransitionCause::ProbeFailed));
        }
    }

    #[test]
    fn racing_probes_close_or_reopen_exactly_once() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(Breaker::new(
            BreakerConfig {
                half_open_requests: 8,
                ..config()
            },
            t0,
        ));
        feed(&b, t0, ERR, 10);
        let t5 = t0 + Duration::from_secs(5);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || {
                    let (a, _) = b.admit(t5);
                    b.record(t5, a, OK)
                })
            })
            .collect();
        let closings = handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .filter(|t| t.to == BreakerState::Closed)
            .count();
        assert_eq!(closings, 1);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn outcomes_admitted_before_opening_change_nothing_while_open() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 10);
        assert!(b.record(t0, Admission::Admitted, ERR).is_none());
        assert!(b.record(t0, Admission::Admitted, OK).is_none());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn carry_over_keeps_an_open_breaker_open() {
        let t0 = Instant::now();
        let b = Breaker::new(config(), t0);
        feed(&b, t0, ERR, 10);
        let next = Breaker::carry_over(
            &b,
            BreakerConfig {
                min_requests: 3,
                ..config()
            },
        );
        assert_eq!(next.state(), BreakerState::Open);
        assert_eq!(
            next.admit(t0 + Duration::from_secs(1)).0,
            Admission::Rejected
        );
        assert_eq!(next.admit(t0 + Duration::from_secs(5)).0, Admission::Probe);
    }
}
