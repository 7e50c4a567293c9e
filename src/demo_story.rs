//! The demo's narration: the events that matter (a breaker opening, probing, closing; each
//! rollout verdict), one short human line each, printed between the table's rows.
//!
//! They come from the proxy's own event stream ([`ProxyEvent`], what the audit log
//! records), not from the logs, which the demo writes to a file.

use rampart_core::breaker::{BreakerState, Transition, TransitionCause};
use rampart_core::rollout::{RolloutEvent, RolloutStatus, Verdict};
use rampart_proxy::handler::{ProxyEvent, ProxyState};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The events of one act, as they happen.
pub(crate) struct Story {
    events: Receiver<(Instant, ProxyEvent)>,
    started: Instant,
}

impl Story {
    /// Subscribes to the proxy's events. Times are printed from `started`.
    pub(crate) fn subscribe(state: &ProxyState, started: Instant) -> Story {
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        state.subscribe(std::sync::Arc::new(move |event: &ProxyEvent| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send((Instant::now(), event.clone()));
            }
        }));
        Story {
            events: rx,
            started,
        }
    }

    /// Prints the events that arrived since the last call, one line each; returns them.
    pub(crate) fn print_new(&self) -> Vec<ProxyEvent> {
        let mut seen = Vec::new();
        while let Ok((at, event)) = self.events.try_recv() {
            if let Some(line) = describe(&event) {
                println!(
                    "{:>5.1}  {line}",
                    at.saturating_duration_since(self.started).as_secs_f64()
                );
            }
            seen.push(event);
        }
        seen
    }
}

/// The line a person reads for `event`, or `None` for one not worth a line.
pub(crate) fn describe(event: &ProxyEvent) -> Option<String> {
    match event {
        ProxyEvent::Breaker {
            route,
            backend,
            transition,
        } => Some(breaker_line(route, backend, transition)),
        ProxyEvent::Rollout { route, event } => Some(rollout_line(route, event)),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn breaker_line(route: &str, backend: &str, t: &Transition) -> String {
    let f = &t.figures;
    let who = format!("{route} -> {backend}");
    let probe = t
        .open_for
        .map(|d| format!(", next probe in {}", seconds(d)))
        .unwrap_or_default();
    match (t.to, t.cause) {
        (BreakerState::Open, TransitionCause::ProbeFailed) => {
            format!("! breaker re-opened  {who}: a probe failed, the canary is still sick{probe}")
        }
        (BreakerState::Open, cause) => {
            let why = match cause {
                TransitionCause::ConsecutiveErrors => {
                    format!("{} errors in a row", f.consecutive_errors)
                }
                TransitionCause::Latency => {
                    format!("{} of {} requests too slow", f.slow, f.requests)
                }
                _ => format!(
                    "{} of {} requests failed ({:.0} %)",
                    f.errors,
                    f.requests,
                    100.0 * f.error_rate()
                ),
            };
            format!("! breaker OPENED     {who}: {why}; its users go to stable now{probe}")
        }
        (BreakerState::HalfOpen, _) => {
            format!("~ breaker half-open  {who}: open interval over, a few probe requests go to the canary")
        }
        (BreakerState::Closed, _) => {
            format!(
                "+ breaker closed     {who}: every probe passed, its users are back on the canary"
            )
        }
    }
}

fn rollout_line(route: &str, e: &RolloutEvent) -> String {
    let a = &e.analysis;
    let f = &a.figures;
    let figures = format!(
        "canary {} requests, {:.1} % errors; stable {} requests, {:.1} % errors",
        f.canary.requests,
        100.0 * f.canary.error_rate(),
        f.stable.requests,
        100.0 * f.stable.error_rate()
    );
    let step = a.step + 1;
    let outcome = match e.status.1 {
        RolloutStatus::Promoted if e.status.0 != RolloutStatus::Promoted => {
            format!("promoted, the canary keeps {} %", e.percent)
        }
        RolloutStatus::Aborted => format!("rolled back to {} %, rollout aborted", e.percent),
        RolloutStatus::Paused => format!("paused at {} %", e.percent),
        _ if e.step.1 != e.step.0 => format!("step {} now, {} %", e.step.1 + 1, e.percent),
        _ => "the step goes on".to_string(),
    };
    match a.verdict {
        Verdict::Pass => format!("+ rollout {route}: step {step} passed ({figures}) -> {outcome}"),
        Verdict::Inconclusive => {
            format!("~ rollout {route}: step {step} too little canary traffic to judge ({figures}) -> {outcome}")
        }
        Verdict::FailBreaker => format!(
            "! rollout {route}: step {step} FAILED, the canary's breaker opened ({figures}) -> {outcome}"
        ),
        Verdict::FailErrorRate => format!(
            "! rollout {route}: step {step} FAILED on errors ({figures}) -> {outcome}"
        ),
        Verdict::FailLatency => {
            let p99 = |d: Option<Duration>| {
                d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "-".to_string())
            };
            format!(
                "! rollout {route}: step {step} FAILED on latency (canary p99 {}, stable p99 {}) -> {outcome}",
                p99(f.canary.p99),
                p99(f.stable.p99)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::breaker::WindowFigures;
    use rampart_core::config::Percent;
    use rampart_core::rollout::{Analysis, SideFigures, StepFigures};

    #[test]
    fn a_verdict_that_rolls_back_names_the_breaker_and_its_figures() {
        let side = |requests, errors| SideFigures {
            requests,
            errors,
            p99: None,
        };
        let event = RolloutEvent {
            analysis: Analysis {
                at: std::time::SystemTime::UNIX_EPOCH,
                step: 1,
                verdict: Verdict::FailBreaker,
                figures: StepFigures {
                    canary: side(120, 6),
                    stable: side(400, 0),
                    breaker_opened: true,
                },
            },
            step: (1, 1),
            status: (RolloutStatus::Progressing, RolloutStatus::Aborted),
            percent: Percent::ZERO,
        };
        assert_eq!(
            rollout_line("ramp", &event),
            "! rollout ramp: step 2 FAILED, the canary's breaker opened (canary 120 requests, 5.0 % errors; stable 400 requests, 0.0 % errors) -> rolled back to 0 %, rollout aborted"
        );
    }

    #[test]
    fn a_breaker_opening_names_its_cause_and_next_probe() {
        let line = breaker_line(
            "checkout",
            "canary",
            &Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                cause: TransitionCause::ErrorRate,
                figures: WindowFigures {
                    requests: 40,
                    errors: 12,
                    slow: 0,
                    consecutive_errors: 3,
                },
                open_for: Some(Duration::from_secs(2)),
            },
        );
        assert_eq!(
            line,
            "! breaker OPENED     checkout -> canary: 12 of 40 requests failed (30 %); its users go to stable now, next probe in 2s"
        );
    }
}
