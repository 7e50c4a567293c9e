//! Black-box: the breaker, fallback and bulkhead of docs/breaker.md, against the real
//! binary and real upstreams on 127.0.0.1. Thresholds use short windows so the suite stays
//! fast; every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An upstream that answers 200 `x-upstream: NAME` after `delay`.
async fn slow_upstream(
    name: &'static str,
    delay: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-upstream", name)
                            .body(Full::new(Bytes::from_static(b"slow")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_answering_500_trips_the_breaker_and_the_last_100_of_200_requests_go_to_stable() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_status(500);
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &canary],
        "routes:
           - name: checkout
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
             breaker: {window: 10s, min_requests: 10, max_error_rate: 0.5, open_for: 60s}
        ",
    ))
    .await;
    let mut answers = Vec::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        answers.push(rampart.get("/x", &[("x-user-id", &user)]).await);
    }
    let canary_hits = canary.hits();
    assert_eq!(
        canary_hits, 5,
        "consecutive_errors (default 5) opens the breaker before min_requests is reached"
    );
    for r in &answers[100..] {
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "stable");
    }
    let text = rampart.metrics_text().await;
    let open = [
        ("route", "checkout"),
        ("backend", "canary"),
        ("state", "open"),
    ];
    assert_eq!(
        metric_value(&text, "rampart_breaker_state", &open),
        Some(1.0),
        "{text}"
    );
    let to_open = [("route", "checkout"), ("backend", "canary"), ("to", "open")];
    assert_eq!(
        metric_value(&text, "rampart_breaker_transitions_total", &to_open),
        Some(1.0)
    );
    let ratio = [("route", "checkout"), ("backend", "canary")];
    assert_eq!(
        metric_value(&text, "rampart_split_ratio", &ratio),
        Some(0.0)
    );
    let errors = [
        ("route", "checkout"),
        ("backend", "canary"),
        ("outcome", "error"),
    ];
    assert_eq!(
        metric_value(&text, "rampart_upstream_attempts_total", &errors),
        Some(canary_hits as f64)
    );
    assert!(
        rampart.stderr().contains("breaker open"),
        "a transition is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_closes_after_the_canary_recovers() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_status(500);
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &canary],
        "routes:
           - name: checkout
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
             breaker: {window: 10s, min_requests: 5, max_error_rate: 0.5, open_for: 300ms, half_open_requests: 3}
        ",
    ))
    .await;
    for i in 0..10 {
        rampart.get("/x", &[("x-user-id", &format!("u{i}"))]).await;
    }
    let text = rampart.metrics_text().await;
    let open = [("backend", "canary"), ("state", "open")];
    assert_eq!(
        metric_value(&text, "rampart_breaker_state", &open),
        Some(1.0)
    );
    canary.set_status(200);
    // After open_for, probes reach the healed canary; all three passing close the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    for i in 0..500 {
        if Instant::now() > deadline {
            break;
        }
        rampart.get("/x", &[("x-user-id", &format!("v{i}"))]).await;
        let text = rampart.metrics_text().await;
        if metric_value(
            &text,
            "rampart_breaker_state",
            &[("backend", "canary"), ("state", "closed")],
        ) == Some(1.0)
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "breaker did not close; stderr:\n{}",
        rampart.stderr()
    );
    let r = rampart.get("/x", &[("x-user-id", "after")]).await;
    assert_eq!(
        r.upstream(),
        "canary",
        "a closed breaker lets the split send users to the canary again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_trips_the_latency_threshold() {
    let stable = Upstream::start("stable").await;
    let (slow_addr, _task) = slow_upstream("canary", Duration::from_millis(150)).await;
    let body = format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: {}}}\n  canary: {{url: http://{slow_addr}}}\n{}",
        stable.url(),
        dedent(
            "routes:
               - name: checkout
                 identity: [header:x-user-id]
                 split: [{backend: canary, percent: 100}]
                 breaker:
                   window: 10s
                   min_requests: 5
                   max_error_rate: 0.5
                   max_latency: {quantile: 0.9, threshold: 50ms}
                   open_for: 60s
            "
        )
    );
    let rampart = Rampart::start(&body).await;
    let mut last = None;
    for i in 0..20 {
        last = Some(rampart.get("/x", &[("x-user-id", &format!("u{i}"))]).await);
    }
    let last = last.unwrap();
    assert_eq!(
        last.upstream(),
        "stable",
        "slow canary traffic moved to stable"
    );
    let text = rampart.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "rampart_breaker_state",
            &[("backend", "canary"), ("state", "open")]
        ),
        Some(1.0)
    );
    assert!(rampart.stderr().contains("latency"), "the cause is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_canary_port_with_connect_failure_fallback_gives_zero_client_errors() {
    let stable = Upstream::start("stable").await;
    let closed_port = free_port();
    let body = format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: {}}}\n  canary: {{url: http://127.0.0.1:{closed_port}}}\n{}",
        stable.url(),
        dedent(
            "routes:
               - name: checkout
                 identity: [header:x-user-id]
                 split: [{backend: canary, percent: 50}]
                 fallback: connect_failure
            "
        )
    );
    let rampart = Rampart::start(&body).await;
    for i in 0..300 {
        let r = rampart
            .get("/x", &[("x-user-id", &format!("user-{i}"))])
            .await;
        assert_eq!(r.status, 200, "request {i} failed: {}", r.text());
        assert_eq!(r.upstream(), "stable");
    }
    let text = rampart.metrics_text().await;
    let fallbacks = metric_value(
        &text,
        "rampart_fallbacks_total",
        &[
            ("route", "checkout"),
            ("from", "canary"),
            ("reason", "connect_failure"),
        ],
    )
    .unwrap_or(0.0);
    assert!(
        fallbacks > 100.0,
        "about half the requests fell back: {fallbacks}"
    );
    let canary_errors = metric_value(
        &text,
        "rampart_upstream_attempts_total",
        &[("backend", "canary"), ("outcome", "error")],
    );
    assert_eq!(
        canary_errors,
        Some(fallbacks),
        "each retried attempt counts as the canary's error"
    );
}

async fn send(client: &HttpClient, method: &str, url: &str) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-user-id", "someone")
        .body(Full::new(Bytes::from_static(b"{\"order\":1}")))
        .unwrap();
    let resp = tokio::time::timeout(IO_TIMEOUT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_fallback_resends_a_get_after_a_500_but_never_a_post() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_status(500);
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &canary],
        "routes:
           - name: checkout
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
             fallback: idempotent
        ",
    ))
    .await;
    let get = send(rampart.client(), "GET", &rampart.url("/cart")).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.upstream(), "stable");
    assert_eq!(
        (canary.hits(), stable.hits()),
        (1, 1),
        "one canary attempt, one retry on stable"
    );

    let post = send(rampart.client(), "POST", &rampart.url("/cart")).await;
    assert_eq!(
        post.status, 500,
        "a POST that reached the canary is never re-sent"
    );
    assert_eq!(post.upstream(), "canary");
    assert_eq!((canary.hits(), stable.hits()), (2, 1));
    let text = rampart.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "rampart_fallbacks_total",
            &[("from", "canary"), ("reason", "server_error")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_canary_bulkhead_overflows_to_stable_and_a_full_stable_bulkhead_answers_503() {
    let (canary_addr, _c) = slow_upstream("canary", Duration::from_millis(400)).await;
    let (stable_addr, _s) = slow_upstream("stable", Duration::from_millis(400)).await;
    let body = format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: http://{stable_addr}, max_inflight: 2}}\n  canary: {{url: http://{canary_addr}, max_inflight: 1}}\n{}",
        dedent(
            "routes:
               - name: checkout
                 identity: [header:x-user-id]
                 split: [{backend: canary, percent: 100}]
            "
        )
    );
    let rampart = Rampart::start(&body).await;
    let url = rampart.url("/x");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = client();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{i}");
            get(&client, &url, &[("x-user-id", &user)]).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let from = |name: &str| {
        answers
            .iter()
            .filter(|r| r.status == 200 && r.header("x-upstream").as_deref() == Some(name))
            .count()
    };
    let refused: Vec<&Resp> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(from("canary"), 1, "the canary holds one request at a time");
    assert_eq!(
        from("stable"),
        2,
        "the overflow goes to stable, up to its own limit"
    );
    assert_eq!(
        refused.len(),
        3,
        "beyond stable's limit: 503 at once, not a queue"
    );
    for r in refused {
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        assert_eq!(r.header("x-rampart-error").as_deref(), Some("bulkhead"));
    }
    let text = rampart.metrics_text().await;
    let canary_rejections = metric_value(
        &text,
        "rampart_bulkhead_rejections_total",
        &[("backend", "canary")],
    );
    assert_eq!(canary_rejections, Some(5.0), "{text}");
}
