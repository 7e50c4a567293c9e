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

/// The rendered error lines, in file order.
fn lines(routes: &str) -> Vec<String> {
    rendered(routes).lines().map(str::to_string).collect()
}

#[test]
fn a_bad_duration_an_unknown_field_and_an_unknown_backend_are_three_lines() {
    let got = lines(
        "routes:\n  - name: checkout\n    retries: 3\n    split: [{backend: nosuch, percent: 10}]\n    breaker: {window: 30x}\n",
    );
    assert_eq!(
        got,
        [
            "f.yaml:10:5: routes[0].retries: unknown field \"retries\"; expected one of: name, salt, kind, owner, expires, killed, match, identity, missing_identity, stable, split, overrides, breaker, fallback, rollout",
            "f.yaml:11:23: routes[0].split[0].backend: unknown upstream \"nosuch\"",
            "f.yaml:12:23: routes[0].breaker.window: invalid duration \"30x\": write a whole number and a unit, ms, s, m or h (e.g. 500ms, 30s, 5m, 1h)",
        ],
    );
}

#[test]
fn type_errors_in_many_places_are_all_reported_without_knock_on_errors() {
    let got = lines(
        "routes:\n  - name: checkout\n    kind: canry\n    split: [{backend: canary, percent: lots}]\n    breaker: {min_requests: many, open_for: 1d}\n  - name: [cart]\n    stable: nosuch\n    rollout: {steps: [1, 5], step_interval: soon}\n    split: [{backend: canary}]\n",
    );
    let paths: Vec<&str> = got
        .iter()
        .map(|l| l.splitn(4, ':').nth(3).unwrap_or("").trim())
        .map(|rest| rest.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "routes[0].kind",
            "routes[0].split[0].percent",
            "routes[0].breaker.min_requests",
            "routes[0].breaker.open_for",
            "routes[1].name",
            "routes[1].stable",
            "routes[1].rollout.step_interval",
        ],
        "{got:#?}"
    );
}

#[test]
fn a_missing_required_field_is_reported_once_at_its_mapping() {
    let got = lines("routes:\n  - split: [{percent: 10}]\n");
    assert_eq!(
        got,
        [
            "f.yaml:9:5: routes[0]: missing field `name`",
            "f.yaml:9:13: routes[0].split[0]: missing field `backend`",
        ],
    );
}

#[test]
fn a_misspelt_field_gets_a_suggestion() {
    let got = lines("routes:\n  - name: r\n    split: [{backend: canary}]\n    rollout: {step: [1, 5], step_interval: 1m}\n");
    assert!(
        got.iter().any(|l| l
            .contains("routes[0].rollout.step: unknown field \"step\"; did you mean \"steps\"?")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|l| l.contains("routes[0].rollout: missing field `steps`")),
        "{got:#?}"
    );
}

#[test]
fn top_level_type_errors_are_all_reported() {
    let e = parse(
        "version: one\nlisten: [127.0.0.1:8080]\nthreads: -1\nupstreams:\n  stable: {url: http://127.0.0.1:3000, max_inflight: lots}\ndrain: {delay: 5}\n",
    )
    .err()
    .map(|e| e.render("f.yaml"))
    .unwrap_or_default();
    let got: Vec<&str> = e.lines().collect();
    assert_eq!(got.len(), 5, "{e}");
    for (line, path) in [
        (1, "version"),
        (2, "listen"),
        (3, "threads"),
        (5, "upstreams.stable.max_inflight"),
        (6, "drain.delay"),
    ] {
        assert!(
            got.iter()
                .any(|l| l.starts_with(&format!("f.yaml:{line}:"))
                    && l.contains(&format!(" {path}: "))),
            "no {path} error on line {line}:\n{e}"
        );
    }
}

#[test]
fn an_upstream_without_a_url_is_one_error_not_one_per_route_naming_it() {
    let e = parse(
        "version: 1\nupstreams:\n  stable: {url: http://127.0.0.1:3000}\n  canary: {uri: http://127.0.0.1:3001, ca_file: /x.pem}\nroutes:\n  - name: a\n    split: [{backend: canary, percent: 5}]\n  - name: b\n    split: [{backend: canary, percent: 5}]\n",
    )
    .err()
    .map(|e| e.render("f.yaml"))
    .unwrap_or_default();
    assert_eq!(
        e.lines().collect::<Vec<_>>(),
        [
            "f.yaml:4:11: upstreams.canary: missing field `url`",
            "f.yaml:4:12: upstreams.canary.uri: unknown field \"uri\"; did you mean \"url\"?",
        ],
        "{e}"
    );
}
