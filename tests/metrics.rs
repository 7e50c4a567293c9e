//! The metrics listener (docs/proxying.md, docs/metrics.md): `/metrics` after real proxied traffic,
//! `/healthz` and `/readyz`. Counters are read by polling `/metrics` (bounded) until they
//! settle, since a counter may be bumped just after the response is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, find_identities, metric, metric_sum, sha256_hex, Rampart, Upstream};

async fn setup() -> (Upstream, Upstream, Rampart) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let cfg = config(
        "stable",
        &[&stable, &canary],
        "
        routes:
          - name: checkout
            match: {path_prefix: /checkout}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 10}
        ",
    );
    let rampart = Rampart::start(&cfg).await;
    (stable, canary, rampart)
}

/// Sends `n_canary` requests that bucket into canary and `n_stable` into stable.
async fn send_split_traffic(rampart: &Rampart, n_canary: usize, n_stable: usize) {
    let canary_ids = find_identities("checkout", "m-c", n_canary, |b| b < 1000);
    let stable_ids = find_identities("checkout", "m-s", n_stable, |b| b >= 1000);
    for (ids, want) in [(&canary_ids, "canary"), (&stable_ids, "stable")] {
        for id in ids {
            let resp = rampart.get("/checkout", &[("x-user-id", id)]).await;
            assert_eq!(resp.status, 200);
            assert_eq!(resp.upstream(), want);
        }
    }
}

fn requests_total(text: &str, route: &str, backend: &str, class: &str) -> Option<f64> {
    metric(
        text,
        "rampart_requests_total",
        &[
            ("route", route),
            ("backend", backend),
            ("code_class", class),
        ],
    )
}

#[tokio::test]
async fn requests_total_counts_proxied_requests_by_route_backend_and_code_class() {
    let (_stable, _canary, rampart) = setup().await;
    send_split_traffic(&rampart, 7, 13).await;

    let text = rampart
        .metrics_until(|t| {
            requests_total(t, "checkout", "canary", "2xx") == Some(7.0)
                && requests_total(t, "checkout", "stable", "2xx") == Some(13.0)
        })
        .await;
    assert_eq!(
        requests_total(&text, "checkout", "canary", "2xx"),
        Some(7.0),
        "metrics:\n{text}"
    );
    assert_eq!(
        requests_total(&text, "checkout", "stable", "2xx"),
        Some(13.0),
        "metrics:\n{text}"
    );
}

#[tokio::test]
async fn upstream_5xx_is_counted_under_code_class_5xx_and_as_an_error_attempt() {
    let (_stable, canary, rampart) = setup().await;
    canary.set_status(500);
    let ids = find_identities("checkout", "m-err", 3, |b| b < 1000);
    for id in &ids {
        let resp = rampart.get("/checkout", &[("x-user-id", id)]).await;
        assert_eq!(resp.status, 500, "the upstream's 500 reaches the client");
        assert_eq!(resp.upstream(), "canary");
    }

    let text = rampart
        .metrics_until(|t| requests_total(t, "checkout", "canary", "5xx") == Some(3.0))
        .await;
    assert_eq!(
        requests_total(&text, "checkout", "canary", "5xx"),
        Some(3.0),
        "metrics:\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_attempts_total",
            &[
                ("route", "checkout"),
                ("backend", "canary"),
                ("outcome", "error")
            ]
        ),
        Some(3.0),
        "metrics:\n{text}"
    );
}

#[tokio::test]
async fn request_duration_histogram_is_exported_per_route_and_backend() {
    let (_stable, _canary, rampart) = setup().await;
    send_split_traffic(&rampart, 4, 5).await;

    let count = |t: &str, backend: &str| {
        metric(
            t,
            "rampart_request_duration_seconds_count",
            &[("route", "checkout"), ("backend", backend)],
        )
    };
    let text = rampart
        .metrics_until(|t| count(t, "canary") == Some(4.0) && count(t, "stable") == Some(5.0))
        .await;
    assert_eq!(count(&text, "canary"), Some(4.0), "metrics:\n{text}");
    assert_eq!(count(&text, "stable"), Some(5.0), "metrics:\n{text}");
    assert_eq!(
        metric(
            &text,
            "rampart_request_duration_seconds_bucket",
            &[("route", "checkout"), ("backend", "canary"), ("le", "+Inf")]
        ),
        Some(4.0),
        "metrics:\n{text}"
    );
    assert!(
        metric_sum(
            &text,
            "rampart_request_duration_seconds_bucket",
            &[("route", "checkout"), ("backend", "canary")]
        ) >= 4.0
    );
}

#[tokio::test]
async fn split_ratio_gauge_shows_the_configured_share() {
    let (_stable, _canary, rampart) = setup().await;

    let text = rampart.metrics_text().await;
    let ratio = metric(
        &text,
        "rampart_split_ratio",
        &[("route", "checkout"), ("backend", "canary")],
    );
    assert!(
        ratio.is_some_and(|r| (r - 0.1).abs() < 1e-9),
        "rampart_split_ratio{{route=\"checkout\",backend=\"canary\"}} = {ratio:?}; metrics:\n{text}"
    );
}

#[tokio::test]
async fn config_info_carries_the_sha256_of_the_config_file_and_build_info_is_exported() {
    let (_stable, _canary, rampart) = setup().await;
    let sha = sha256_hex(&std::fs::read(&rampart.config_path).unwrap());

    let text = rampart.metrics_text().await;
    assert_eq!(
        metric(&text, "rampart_config_info", &[("sha256", &sha)]),
        Some(1.0),
        "want rampart_config_info{{sha256=\"{sha}\"}} 1; metrics:\n{text}"
    );
    let all = common::parse_metrics(&text);
    let build = common::samples(&all, "rampart_build_info", &[]);
    assert_eq!(build.len(), 1, "rampart_build_info samples: {build:?}");
    assert_eq!(build[0].value, 1.0);
    assert!(
        build[0]
            .label("version")
            .is_some_and(|v| v.starts_with(env!("CARGO_PKG_VERSION"))),
        "rampart_build_info version label: {:?}",
        build[0].label("version")
    );
}

#[tokio::test]
async fn unmatched_requests_are_counted_under_route_default() {
    let (stable, _canary, rampart) = setup().await;

    let resp = rampart.get("/not-a-route", &[]).await;
    assert_eq!(resp.upstream(), "stable");
    assert_eq!(stable.hits(), 1);

    let text = rampart
        .metrics_until(|t| requests_total(t, "_default", "stable", "2xx") == Some(1.0))
        .await;
    assert_eq!(
        requests_total(&text, "_default", "stable", "2xx"),
        Some(1.0),
        "metrics:\n{text}"
    );
    assert_eq!(
        metric_sum(&text, "rampart_requests_total", &[("route", "checkout")]),
        0.0,
        "an unmatched request was counted under checkout"
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let (_stable, _canary, rampart) = setup().await;

    for path in ["/healthz", "/readyz"] {
        let resp = common::get(rampart.client(), &rampart.metrics_url(path), &[]).await;
        assert_eq!(resp.status, 200, "{path}");
    }
}
