//! `rampart check` and `rampart explain` (docs/cli.md): exit codes, the `ok:` summary, and
//! errors printed as `FILE:LINE:COL: path.to.field: message`. Every bad config is the valid
//! one below with one change, so each test fails for the one reason it names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{bucket, dedent, line_of, run_cli, CliOutput, TempDir};

/// A valid config using most of docs/config.md without files that must exist (TLS, tokens).
/// Two routes, two upstreams.
const VALID: &str = "
    version: 1
    listen: 127.0.0.1:18080
    metrics_listen: 127.0.0.1:19090
    default_upstream: stable
    upstreams:
      stable:
        url: http://127.0.0.1:13000
      canary:
        url: http://127.0.0.1:13001
        connect_timeout: 1s
        request_timeout: 30s
        max_inflight: 512
    routes:
      - name: checkout
        kind: canary
        owner: team-payments
        match:
          path_prefix: /checkout
          methods: [GET, POST]
        identity: [header:x-user-id, cookie:sid, client_ip]
        missing_identity: stable
        stable: stable
        split:
          - {backend: canary, percent: 10}
        overrides:
          force_header: x-rampart-force
          identities: {canary: [carol]}
          headers: [{name: x-employee, value: \"true\", backend: canary}]
        breaker:
          window: 30s
          min_requests: 20
          max_error_rate: 0.05
          open_for: 30s
        fallback: connect_failure
      - name: cart
        match: {path_prefix: /cart}
        identity: [cookie:sid]
        split:
          - {backend: canary}
        rollout:
          steps: [1, 5, 25, 50, 100]
          step_interval: 5m
          min_requests: 100
          max_error_rate_increase: 0.01
          max_latency_ratio: 1.5
          on_failure: rollback
";

fn valid() -> String {
    dedent(VALID)
}

/// `valid()` with `from` replaced by `to` (which must occur).
fn valid_with(from: &str, to: &str) -> String {
    let v = valid();
    assert!(v.contains(from), "{from:?} not in the valid config");
    v.replacen(from, to, 1)
}

/// One error line `FILE:LINE:COL: rest` (or `FILE: rest` when no position is given).
#[derive(Debug)]
struct ErrLine {
    line: Option<usize>,
    col: Option<usize>,
    rest: String,
}

fn error_lines(out: &CliOutput, file: &Path) -> Vec<ErrLine> {
    let prefix = format!("{}:", file.display());
    out.all()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix.as_str()))
        .map(|after| {
            let mut parts = after.splitn(3, ':');
            let a = parts.next().and_then(|s| s.trim().parse::<usize>().ok());
            let b = parts.next().and_then(|s| s.trim().parse::<usize>().ok());
            match (a, b, parts.next()) {
                (Some(line), Some(col), Some(rest)) => ErrLine {
                    line: Some(line),
                    col: Some(col),
                    rest: rest.trim().to_string(),
                },
                _ => ErrLine {
                    line: None,
                    col: None,
                    rest: after.trim().to_string(),
                },
            }
        })
        .collect()
}

/// Runs `check` on `config`, asserts exit 1 and no `ok:` line, and returns the error lines.
fn check_fails(config: &str) -> (Vec<ErrLine>, String) {
    let dir = TempDir::new("check");
    let file = dir.write("rampart.yaml", config);
    let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
    let all = out.all();
    assert_eq!(out.code, Some(1), "exit code; output:\n{all}");
    assert!(
        !all.lines().any(|l| l.starts_with("ok: ")),
        "an invalid config printed ok:\n{all}"
    );
    let errors = error_lines(&out, &file);
    assert!(
        !errors.is_empty(),
        "no `{}:LINE:COL: path: message` line in:\n{all}",
        file.display()
    );
    (errors, all)
}

/// The first error line whose text (after the position) contains every needle.
fn find_error<'a>(errors: &'a [ErrLine], all: &str, needles: &[&str]) -> &'a ErrLine {
    errors
        .iter()
        .find(|e| needles.iter().all(|n| e.rest.contains(n)))
        .unwrap_or_else(|| panic!("no error line mentioning {needles:?} in:\n{all}"))
}

fn assert_position(e: &ErrLine, want_line: usize, all: &str) {
    assert_eq!(e.line, Some(want_line), "error line number; output:\n{all}");
    assert!(
        e.col.is_some_and(|c| c >= 1),
        "error column; output:\n{all}"
    );
}

#[test]
fn check_accepts_the_valid_config_and_prints_the_route_and_upstream_counts() {
    let dir = TempDir::new("check");
    let file = dir.write("rampart.yaml", &valid());
    let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    assert!(
        out.all()
            .lines()
            .any(|l| l.trim_end() == "ok: 2 routes, 2 upstreams"),
        "no `ok: 2 routes, 2 upstreams` line in:\n{}",
        out.all()
    );
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rampart.yaml");
    let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    let ok = out
        .all()
        .lines()
        .find(|l| l.starts_with("ok: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no `ok: ` line in:\n{}", out.all()));
    let words: Vec<&str> = ok.split_whitespace().collect();
    assert!(
        matches!(
            words.as_slice(),
            ["ok:", n, "routes,", m, "upstreams"]
                if n.parse::<u32>().is_ok() && m.parse::<u32>().is_ok()
        ),
        "not `ok: N routes, M upstreams`: {ok:?}"
    );
}

#[test]
fn check_rejects_every_shipped_invalid_fixture_with_a_file_prefixed_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/invalid");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty(), "no fixtures in {}", dir.display());
    for file in &fixtures {
        let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
        let all = out.all();
        assert_eq!(out.code, Some(1), "{}: output:\n{all}", file.display());
        let errors = error_lines(&out, file);
        assert!(
            !errors.is_empty(),
            "{}: no `FILE:LINE:COL: path: message` line in:\n{all}",
            file.display()
        );
        let name = file.file_name().unwrap().to_string_lossy();
        // docs/config.md#errors: the position is always given for syntax, unknown-field and type errors.
        if ["syntax", "unknown-field", "wrong-type"]
            .iter()
            .any(|k| name.contains(k))
        {
            assert!(
                errors.iter().all(|e| e.line.is_some() && e.col.is_some()),
                "{}: an error without a position:\n{all}",
                file.display()
            );
        }
    }
}

#[test]
fn check_reports_a_yaml_syntax_error_with_its_position() {
    let config = valid_with("default_upstream: stable", "default_upstream: stable: oops");
    let (errors, all) = check_fails(&config);
    let e = errors
        .iter()
        .find(|e| e.line.is_some())
        .unwrap_or_else(|| panic!("no positioned error in:\n{all}"));
    assert_position(e, line_of(&config, "stable: oops"), &all);
}

#[test]
fn check_reports_an_unknown_field_with_its_position_and_name() {
    let config = valid_with(
        "    owner: team-payments\n",
        "    owner: team-payments\n    retries: 3\n",
    );
    let (errors, all) = check_fails(&config);
    let e = find_error(&errors, &all, &["retries"]);
    assert_position(e, line_of(&config, "retries: 3"), &all);
    assert!(
        e.rest.starts_with("routes[0]"),
        "path of the unknown field: {}",
        e.rest
    );
}

#[test]
fn check_reports_a_wrong_type_with_its_position_and_path() {
    let config = valid_with("min_requests: 20", "min_requests: lots");
    let (errors, all) = check_fails(&config);
    let e = find_error(&errors, &all, &["routes[0].breaker.min_requests"]);
    assert_position(e, line_of(&config, "min_requests: lots"), &all);
}

#[test]
fn check_reports_a_split_backend_naming_an_unknown_upstream() {
    let config = valid_with(
        "{backend: canary, percent: 10}",
        "{backend: canry, percent: 10}",
    );
    let (errors, all) = check_fails(&config);
    let e = find_error(&errors, &all, &["routes[0].split[0].backend", "canry"]);
    if e.line.is_some() {
        assert_position(e, line_of(&config, "backend: canry"), &all);
    }
}

#[test]
fn check_reports_split_percents_summing_over_100() {
    let config = valid_with(
        "      - {backend: canary, percent: 10}\n",
        "      - {backend: canary, percent: 60}\n      - {backend: beta, percent: 50}\n",
    )
    .replacen(
        "upstreams:\n",
        "upstreams:\n  beta:\n    url: http://127.0.0.1:13002\n",
        1,
    );
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[0].split"]);
}

#[test]
fn check_reports_duplicate_route_names() {
    let config = valid_with("- name: cart", "- name: checkout");
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[1].name", "checkout"]);
}

#[test]
fn check_reports_a_listen_address_that_does_not_parse() {
    let config = valid_with("listen: 127.0.0.1:18080", "listen: not-an-address");
    let (errors, all) = check_fails(&config);
    let e = find_error(&errors, &all, &["listen"]);
    assert!(
        e.rest.starts_with("listen"),
        "path should be `listen`: {}",
        e.rest
    );
}

#[test]
fn check_rejects_a_toggle_with_a_10_percent_split() {
    let config = valid_with("kind: canary", "kind: toggle");
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[0]"]);
}

#[test]
fn check_rejects_a_gate_with_a_split() {
    let config = valid_with("kind: canary", "kind: gate");
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[0]"]);
}

#[test]
fn check_rejects_a_percent_beside_a_rollout_block() {
    let config = valid_with("- {backend: canary}", "- {backend: canary, percent: 5}");
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[1]"]);
}

#[test]
fn check_reports_every_error_in_a_file_not_just_the_first() {
    let config = valid_with(
        "{backend: canary, percent: 10}",
        "{backend: canry, percent: 10}",
    )
    .replacen("- name: cart", "- name: checkout", 1);
    let (errors, all) = check_fails(&config);
    find_error(&errors, &all, &["routes[0].split[0].backend", "canry"]);
    find_error(&errors, &all, &["routes[1].name", "checkout"]);
}

/// (line, column) of `needle` in `text`, both 1-based.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[test]
fn check_prints_one_line_for_each_of_five_kinds_of_error_in_one_run() {
    // A type error, an unknown field, a bad duration, an unknown backend and a duplicate
    // route name: the first three stop a serde pass, the last two are semantic.
    let config = valid_with("min_requests: 20", "min_requests: lots")
        .replacen(
            "    owner: team-payments\n",
            "    owner: team-payments\n    retries: 3\n",
            1,
        )
        .replacen("open_for: 30s", "open_for: 30x", 1)
        .replacen(
            "{backend: canary, percent: 10}",
            "{backend: canry, percent: 10}",
            1,
        )
        .replacen("- name: cart", "- name: checkout", 1);
    let dir = TempDir::new("check");
    let file = dir.write("rampart.yaml", &config);
    let out = run_cli(&["check", "-c", file.to_str().unwrap()]);
    let all = out.all();
    assert_eq!(out.code, Some(1), "exit code; output:\n{all}");
    let printed: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(printed.len(), 5, "not five lines:\n{all}");
    let f = file.display().to_string();
    let expect = |needle: &str, path: &str, message: &str| {
        let (line, col) = position_of(&config, needle);
        let want = format!("{f}:{line}:{col}: {path}: {message}");
        assert!(
            printed.iter().any(|l| l.starts_with(&want)),
            "no line starting {want:?} in:\n{all}"
        );
    };
    expect(
        "retries: 3",
        "routes[0].retries",
        "unknown field \"retries\"",
    );
    expect(
        "canry",
        "routes[0].split[0].backend",
        "unknown upstream \"canry\"",
    );
    expect(
        "lots",
        "routes[0].breaker.min_requests",
        "expected a whole number",
    );
    expect(
        "30x",
        "routes[0].breaker.open_for",
        "invalid duration \"30x\": write a whole number and a unit, ms, s, m or h",
    );
    expect(
        "checkout\n    match: {path_prefix: /cart}",
        "routes[1].name",
        "duplicate route name \"checkout\"",
    );
    // File order.
    let lines: Vec<usize> = printed
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{f}:")))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(lines.len(), 5, "{all}");
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "not in file order:\n{all}"
    );
}

// ---------------------------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------------------------

/// The valid config with checkout at 31 %, so alice (bucket 3009) is in the canary range.
fn explain_config(dir: &TempDir) -> String {
    let config = valid_with(
        "{backend: canary, percent: 10}",
        "{backend: canary, percent: 31}",
    );
    dir.write("rampart.yaml", &config)
        .to_str()
        .unwrap()
        .to_string()
}

/// The `key=value` pairs of the stdout line starting with `route=`.
fn explain_fields(out: &CliOutput) -> Vec<(String, String)> {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("route="))
        .unwrap_or_else(|| panic!("no `route=...` line in:\n{}", out.all()));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn explain_prints_route_bucket_backend_and_reason_for_the_golden_vector() {
    let dir = TempDir::new("explain");
    let file = explain_config(&dir);
    let out = run_cli(&[
        "explain",
        "-c",
        &file,
        "--route",
        "checkout",
        "--identity",
        "alice",
    ]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end() == "route=checkout bucket=3009 backend=canary reason=split"),
        "stdout:\n{}",
        out.stdout
    );
}

#[test]
fn explain_names_the_stable_backend_for_a_bucket_outside_the_split() {
    let dir = TempDir::new("explain");
    let file = explain_config(&dir);
    let out = run_cli(&[
        "explain",
        "-c",
        &file,
        "--route",
        "checkout",
        "--identity",
        "bob",
    ]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    let fields = explain_fields(&out);
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("route"), Some("checkout"));
    assert_eq!(get("bucket"), Some("6439"));
    assert_eq!(get("backend"), Some("stable"));
    assert!(
        matches!(get("reason"), Some("split" | "stable")),
        "reason: {:?}",
        get("reason")
    );
}

#[test]
fn explain_gives_reason_identity_for_an_allowlisted_identity() {
    let dir = TempDir::new("explain");
    let file = explain_config(&dir);
    let out = run_cli(&[
        "explain",
        "-c",
        &file,
        "--route",
        "checkout",
        "--identity",
        "carol",
    ]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    let want = format!(
        "route=checkout bucket={} backend=canary reason=identity",
        bucket("checkout", "carol")
    );
    assert!(
        out.stdout.lines().any(|l| l.trim_end() == want),
        "want {want:?}; stdout:\n{}",
        out.stdout
    );
}

#[test]
fn explain_exits_1_for_an_unknown_route() {
    let dir = TempDir::new("explain");
    let file = explain_config(&dir);
    let out = run_cli(&[
        "explain",
        "-c",
        &file,
        "--route",
        "no-such-route",
        "--identity",
        "alice",
    ]);
    assert_eq!(out.code, Some(1), "output:\n{}", out.all());
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("route=")),
        "printed a decision for an unknown route:\n{}",
        out.stdout
    );
}

#[test]
fn explain_json_prints_bucket_backend_and_reason() {
    let dir = TempDir::new("explain");
    let file = explain_config(&dir);
    let out = run_cli(&[
        "explain",
        "-c",
        &file,
        "--route",
        "checkout",
        "--identity",
        "alice",
        "--json",
    ]);
    assert_eq!(out.code, Some(0), "output:\n{}", out.all());
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", out.stdout));
    assert!(v.is_object(), "not an object: {v}");
    assert_eq!(v["bucket"], serde_json::json!(3009));
    assert_eq!(v["backend"], serde_json::json!("canary"));
    assert_eq!(v["reason"], serde_json::json!("split"));
}
