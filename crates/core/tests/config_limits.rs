//! `limits:` (docs/config.md#limits) and upstream host names: defaults, bounds, and the
//! errors a silly value gets.

use rampart_core::config::{parse, Limits};
use std::time::Duration;

const BASE: &str = "version: 1
listen: 127.0.0.1:8080
metrics_listen: 127.0.0.1:9090
upstreams:
  stable: {url: http://127.0.0.1:3000}
";

fn rendered_errors(extra: &str) -> String {
    match parse(&format!("{BASE}{extra}")) {
        Ok(_) => panic!("config was accepted:\n{extra}"),
        Err(e) => e.render("f.yaml"),
    }
}

#[test]
fn limits_default_when_absent() {
    let config = parse(BASE).unwrap_or_else(|e| panic!("{}", e.render("f.yaml")));
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.max_connections, None);
    assert_eq!(config.limits.listen_backlog, 1024);
    assert!(config.limits.header_timeout <= Duration::from_secs(30));
    assert_eq!(config.limits.send_timeout, Duration::from_secs(60));
    assert_eq!(config.limits.h2_max_concurrent_streams, 128);
    // Above the 60 s idle timeout of the usual load balancers in front.
    assert!(config.limits.keepalive_timeout > Duration::from_secs(60));
}

#[test]
fn every_limit_can_be_set() {
    let config = parse(&format!(
        "{BASE}limits:\n  max_connections: 500\n  listen_backlog: 4096\n  header_timeout: 2s\n  keepalive_timeout: 90s\n  h2_idle_timeout: 1m\n  send_timeout: 500ms\n  h2_max_concurrent_streams: 64\n"
    ))
    .unwrap_or_else(|e| panic!("{}", e.render("f.yaml")));
    let l = config.limits;
    assert_eq!(l.max_connections, Some(500));
    assert_eq!(l.listen_backlog, 4096);
    assert_eq!(l.header_timeout, Duration::from_secs(2));
    assert_eq!(l.keepalive_timeout, Duration::from_secs(90));
    assert_eq!(l.h2_idle_timeout, Duration::from_secs(60));
    assert_eq!(l.send_timeout, Duration::from_millis(500));
    assert_eq!(l.h2_max_concurrent_streams, 64);
}

#[test]
fn silly_limits_are_errors_with_their_path_and_line() {
    let out = rendered_errors(
        "limits:\n  max_connections: 0\n  listen_backlog: 70000\n  header_timeout: 1ms\n  send_timeout: 2h\n  h2_max_concurrent_streams: 0\n  keepalive_timeout: 0s\n",
    );
    for (line, path) in [
        (7, "limits.max_connections"),
        (8, "limits.listen_backlog"),
        (9, "limits.header_timeout"),
        (10, "limits.send_timeout"),
        (11, "limits.h2_max_concurrent_streams"),
        (12, "limits.keepalive_timeout"),
    ] {
        assert!(out.contains(&format!("f.yaml:{line}:")), "{path}: {out}");
        assert!(out.contains(&format!("{path}: invalid")), "{path}: {out}");
    }
}

#[test]
fn an_unknown_limit_is_refused() {
    let out = rendered_errors("limits:\n  max_conections: 10\n");
    assert!(out.contains("max_conections"), "{out}");
}

#[test]
fn a_non_ascii_upstream_host_is_refused_with_a_hint() {
    let out = rendered_errors("  canary: {url: \"http://bücher.example:80\"}\n");
    assert!(out.contains("upstreams.canary.url"), "{out}");
    assert!(out.contains("IDNA"), "{out}");
    let out = rendered_errors("  canary: {url: \"http://bad host:80\"}\n");
    assert!(out.contains("upstreams.canary.url"), "{out}");
}

#[test]
fn an_idna_upstream_host_is_accepted() {
    let config = parse(&format!(
        "{BASE}  canary: {{url: \"http://xn--bcher-kva.example:80\"}}\n"
    ))
    .unwrap_or_else(|e| panic!("{}", e.render("f.yaml")));
    assert_eq!(config.upstreams[1].authority, "xn--bcher-kva.example:80");
}

#[test]
fn max_connections_may_be_written_at_the_top_level_but_not_twice() {
    let config = parse(&format!("{BASE}max_connections: 64\n"))
        .unwrap_or_else(|e| panic!("{}", e.render("f.yaml")));
    assert_eq!(config.limits.max_connections, Some(64));
    let out = rendered_errors("max_connections: 64\nlimits: {max_connections: 32}\n");
    assert!(
        out.contains("max_connections: also set as limits.max_connections"),
        "{out}"
    );
    let out = rendered_errors("max_connections: 0\n");
    assert!(out.contains("must be 1 to 1000000"), "{out}");
}
