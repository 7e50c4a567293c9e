//! `rampart check` depends on these: every error names its path, and its position where the
//! parser kept it; all errors of a file are reported, not only the first.

use rampart_core::config::{parse, ConfigErrors, Percent};

const BASE: &str = "version: 1
listen: 127.0.0.1:8080
metrics_listen: 127.0.0.1:9090
default_upstream: stable
upstreams:
  stable: {url: http://127.0.0.1:3000}
  canary: {url: http://127.0.0.1:3001}
";

fn errors(routes: &str) -> ConfigErrors {
    match parse(&format!("{BASE}{routes}")) {
        Ok(_) => panic!("config was accepted:\n{routes}"),
        Err(e) => e,
    }
}

fn rendered(routes: &str) -> String {
    errors(routes).render("f.yaml")
}

#[test]
fn a_valid_config_parses_with_exact_bucket_counts() {
    let config = parse(&format!(
        "{BASE}routes:\n  - name: checkout\n    match: {{path_prefix: /checkout/}}\n    identity: [header:X-User-Id]\n    split: [{{backend: canary, percent: 0.29}}]\n"
    ))
    .unwrap_or_else(|e| panic!("{}", e.render("f.yaml")));
    let route = &config.routes[0];
    assert_eq!(route.split[0].percent, Percent::from_buckets(29));
    assert_eq!(route.matcher.path_prefix, "/checkout");
    assert_eq!(route.salt, "checkout");
    assert_eq!(route.split_slot(28, None).map(|s| s.0), Some(1));
    assert_eq!(route.split_slot(29, None), None);
}

#[test]
fn unknown_backend_names_its_path_and_position() {
    let out =
        rendered("routes:\n  - name: checkout\n    split: [{backend: nosuch, percent: 10}]\n");
    assert!(out.contains("f.yaml:10:"), "{out}");
    assert!(
        out.contains("routes[0].split[0].backend: unknown upstream \"nosuch\""),
        "{out}"
    );
}

#[test]
fn unknown_field_is_reported_with_position_and_path() {
    let out = rendered("routes:\n  - name: checkout\n    retires: 3\n");
    assert!(out.starts_with("f.yaml:10:5: "), "{out}");
    assert!(out.contains("retires"), "{out}");
}

#[test]
fn type_error_has_a_position() {
    let out =
        rendered("routes:\n  - name: checkout\n    split: [{backend: canary, percent: lots}]\n");
    assert!(out.starts_with("f.yaml:10:"), "{out}");
    assert!(out.contains("percent"), "{out}");
}

#[test]
fn syntax_error_has_a_position() {
    let out = rendered("routes:\n  - name: [unclosed\n");
    assert!(out.starts_with("f.yaml:"), "{out}");
    let mut parts = out.splitn(4, ':');
    parts.next();
    assert!(
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok()),
        "{out}"
    );
}

#[test]
fn every_error_of_a_file_is_reported() {
    let e = errors("routes:\n  - name: a\n    split: [{backend: nosuch, percent: 10}]\n  - name: a\n    split: [{backend: canary, percent: 60}, {backend: stable, percent: 50}]\n");
    let out = e.render("f.yaml");
    assert!(e.0.len() >= 3, "{out}");
    assert!(out.contains("duplicate route name"), "{out}");
    assert!(out.contains("sum to 110"), "{out}");
}

#[test]
fn route_kinds_are_held_to_their_shapes() {
    let toggle = rendered(
        "routes:\n  - name: t\n    kind: toggle\n    split: [{backend: canary, percent: 10}]\n",
    );
    assert!(
        toggle.contains("routes[0].split[0].percent: a toggle splits 0 or 100 %"),
        "{toggle}"
    );
    let gate = rendered(
        "routes:\n  - name: g\n    kind: gate\n    split: [{backend: canary, percent: 10}]\n",
    );
    assert!(gate.contains("a gate routes by overrides only"), "{gate}");
    assert!(
        gate.contains("a gate needs at least one override"),
        "{gate}"
    );
    let experiment = rendered("routes:\n  - name: e\n    kind: experiment\n");
    assert!(
        experiment.contains("an experiment needs one or more variants"),
        "{experiment}"
    );
    let rollout = rendered("routes:\n  - name: r\n    split: [{backend: canary, percent: 5}]\n    rollout: {steps: [1, 5], step_interval: 1m}\n");
    assert!(
        rollout.contains("routes[0].split[0].percent: a rollout drives this percent"),
        "{rollout}"
    );
}

#[test]
fn rollout_sum_counts_the_largest_step() {
    let out = rendered("routes:\n  - name: r\n    split: [{backend: canary}, {backend: stable, percent: 60}]\n    rollout: {steps: [10, 50], step_interval: 1m}\n");
    assert!(
        out.contains("sum to 110 (with the rollout's largest step)"),
        "{out}"
    );
}

#[test]
fn bad_listen_address_is_refused() {
    let e = parse(&BASE.replace("127.0.0.1:8080", "localhost:http")).err();
    let out = e.map(|e| e.render("f.yaml")).unwrap_or_default();
    assert!(out.starts_with("f.yaml:2:"), "{out}");
    assert!(out.contains("listen: invalid listen address"), "{out}");
}
