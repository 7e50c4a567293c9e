//! The config loader: any text gives a [`Config`] or errors that say what is wrong, never a
//! panic; and a config it accepts keeps every promise validation makes (docs/config.md),
//! including that `run` can build it: what `rampart check` accepts, `run` must serve.

use rampart_core::config::{parse, Config, ConfigErrors, Percent, RouteKind};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Parses `data` as a config file (the binary refuses a file that is not UTF-8 before
/// parsing) and checks the outcome.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Err(errors) => rejected(&errors),
        Ok(config) => accepted(&config),
    }
}

fn rejected(errors: &ConfigErrors) {
    assert!(
        !errors.0.is_empty(),
        "a config was refused without an error"
    );
    for error in &errors.0 {
        assert!(
            !error.message.trim().is_empty(),
            "an error without a message at {:?}",
            error.path
        );
        let _ = error.render("rampart.yaml");
    }
    let _ = errors.to_string();
}

fn percent_round_trips(what: &str, percent: Percent) {
    assert!(percent <= Percent::FULL, "{what}: {percent} is over 100");
    assert_eq!(
        Percent::parse(&percent.to_string()),
        Ok(percent),
        "{what}: {percent} does not read back as itself"
    );
}

fn accepted(config: &Config) {
    assert_eq!(config.version, 1);
    assert!(
        (0.0..=1.0).contains(&config.access_log_sample),
        "access_log.sample {}",
        config.access_log_sample
    );
    if let Some(threads) = config.threads {
        assert!((1..=1024).contains(&threads), "threads {threads}");
    }

    let mut names = HashSet::new();
    for upstream in &config.upstreams {
        assert!(
            names.insert(upstream.name.as_str()),
            "upstream {:?} twice",
            upstream.name
        );
        assert!(
            !upstream.host.is_empty() && upstream.port != 0,
            "{upstream:?}"
        );
        // What `run` does first with an upstream (rampart_proxy::upstream::UpstreamRuntime):
        // a config `check` accepts must not stop `run` here.
        assert!(
            http::uri::Authority::from_maybe_shared(bytes::Bytes::from(upstream.authority.clone()))
                .is_ok(),
            "upstream {:?}: accepted, but `run` cannot use its authority {:?} (url {:?})",
            upstream.name,
            upstream.authority,
            upstream.url
        );
    }
    assert!(
        config.upstream(config.default_upstream).is_some(),
        "default_upstream {:?} of {} upstreams",
        config.default_upstream,
        config.upstreams.len()
    );

    let mut routes = HashSet::new();
    for route in &config.routes {
        let r = route.name.as_str();
        assert!(routes.insert(r), "route {r:?} twice");
        assert!(
            !route.backends.is_empty() && route.backends.len() <= 255,
            "route {r:?}: {} backends",
            route.backends.len()
        );
        for id in &route.backends {
            assert!(
                config.upstream(*id).is_some(),
                "route {r:?}: backend {id:?}"
            );
        }
        let slot_ok = |slot: rampart_core::config::BackendSlot| slot.index() < route.backends.len();
        let mut split_slots = HashSet::new();
        let mut others: u32 = 0;
        for (i, entry) in route.split.iter().enumerate() {
            assert!(
                slot_ok(entry.backend),
                "route {r:?}: split slot {:?}",
                entry.backend
            );
            assert!(
                split_slots.insert(entry.backend),
                "route {r:?}: a backend twice in the split"
            );
            percent_round_trips(r, entry.percent);
            if i > 0 || route.rollout.is_none() {
                others += u32::from(entry.percent.buckets());
            }
            if route.kind == RouteKind::Toggle {
                assert!(
                    entry.percent == Percent::ZERO || entry.percent == Percent::FULL,
                    "route {r:?}: a toggle at {}",
                    entry.percent
                );
            }
        }
        assert!(
            others <= 10_000,
            "route {r:?}: percents sum to {others} buckets"
        );
        match route.kind {
            RouteKind::Gate => assert!(
                route.split.is_empty() && !route.overrides.is_empty(),
                "route {r:?}: a gate with a split or without overrides"
            ),
            RouteKind::Experiment => {
                assert!(
                    !route.split.is_empty(),
                    "route {r:?}: an experiment without variants"
                )
            }
            _ => {}
        }
        for slot in route.overrides.identities.values() {
            assert!(slot_ok(*slot), "route {r:?}: override slot {slot:?}");
        }
        for header in &route.overrides.headers {
            assert!(
                slot_ok(header.backend),
                "route {r:?}: override slot {:?}",
                header.backend
            );
        }

        // Every share the route can be asked to split by: the configured one and, with a
        // rollout, each of its steps in place of the first entry.
        let mut firsts: Vec<Option<Percent>> = vec![None];
        if let Some(rollout) = &route.rollout {
            assert_eq!(
                route.kind,
                RouteKind::Canary,
                "route {r:?}: rollout on a {:?}",
                route.kind
            );
            assert!(
                !route.split.is_empty(),
                "route {r:?}: rollout without a split"
            );
            assert!(
                rollout.steps.first().is_some_and(|s| *s > Percent::ZERO),
                "route {r:?}: rollout steps {:?}",
                rollout.steps
            );
            assert!(
                rollout.steps.windows(2).all(|w| w[0] < w[1]),
                "route {r:?}: rollout steps do not rise: {:?}",
                rollout.steps
            );
            assert!(
                !rollout.step_interval.is_zero(),
                "route {r:?}: step_interval 0"
            );
            for step in &rollout.steps {
                percent_round_trips(r, *step);
                let total = others + u32::from(step.buckets());
                assert!(
                    total <= 10_000,
                    "route {r:?}: at rollout step {step} the split sums to {total} buckets"
                );
                firsts.push(Some(*step));
            }
        }
        for first in firsts {
            let shares = route.shares(first);
            assert_eq!(shares.len(), route.backends.len(), "route {r:?}: shares");
            let total: u32 = shares.iter().map(|(_, p)| u32::from(p.buckets())).sum();
            assert_eq!(total, 10_000, "route {r:?}: shares {shares:?} at {first:?}");
            for bucket in [0u16, 1, 4_999, 5_000, 9_998, 9_999] {
                if let Some(slot) = route.split_slot(bucket, first) {
                    assert!(
                        slot_ok(slot),
                        "route {r:?}: bucket {bucket} to slot {slot:?}"
                    );
                }
            }
        }

        if let Some(breaker) = &route.breaker {
            assert!(
                breaker.max_error_rate > 0.0 && breaker.max_error_rate <= 1.0,
                "route {r:?}: {breaker:?}"
            );
            assert!(
                !breaker.open_for.is_zero() && breaker.max_open_for >= breaker.open_for,
                "route {r:?}: {breaker:?}"
            );
            assert!(breaker.half_open_requests >= 1, "route {r:?}: {breaker:?}");
            assert!(
                breaker.window >= Duration::from_millis(100),
                "route {r:?}: {breaker:?}"
            );
            assert!(
                breaker.grpc_error_codes.iter().all(|c| *c <= 16),
                "route {r:?}: {breaker:?}"
            );
            if let Some(latency) = &breaker.max_latency {
                assert!(
                    latency.quantile > 0.0
                        && latency.quantile < 1.0
                        && !latency.threshold.is_zero(),
                    "route {r:?}: {breaker:?}"
                );
            }
        }
    }

    // What the binary does with a config at start and on every status call.
    for now in [SystemTime::UNIX_EPOCH, SystemTime::now()] {
        let _ = config.warnings(now);
    }
    let _ = rampart_core::config::sha256_hex(format!("{config:?}").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_passes_and_garbage_is_refused_with_errors() {
        check(include_bytes!("../../config/rampart.yaml"));
        check(b"version: [");
        check(b"\xff\xfe");
    }
}
