//! Black-box: a fault in what the client sent or did is the client's (docs/breaker.md#what-counts-against-an-upstream).
//! Malformed chunked bodies, bodies cut short and bodies that stall are answered (or not)
//! by Rampart and never count against the canary: its attempts counter shows no error, its
//! breaker stays closed, so no unauthenticated client can switch a canary off or fail its
//! rollout. And after a fallback, stable's bodies run under stable's own idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A canary route whose breaker opens after two errors in a row.
fn canary_route(stable: &Upstream, canary: &Upstream, canary_idle: &str) -> String {
    format!(
        "default_upstream: stable
upstreams:
  stable:
    url: {}
  canary:
    url: {}
    idle_timeout: {canary_idle}
routes:
  - name: checkout
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
    breaker: {{window: 30s, min_requests: 100, max_error_rate: 0.5, consecutive_errors: 2, open_for: 60s}}
",
        stable.url(),
        canary.url()
    )
}

/// Polls `/metrics` until `pred` holds (at most 10 s), returning the last text.
async fn metrics_until(rampart: &Rampart, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = rampart.metrics_text().await;
        if pred(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn canary_errors(text: &str) -> f64 {
    metric_sum(
        text,
        "rampart_upstream_attempts_total",
        &[("backend", "canary"), ("outcome", "error")],
    )
}

fn canary_breaker_closed(text: &str) -> Option<f64> {
    metric(
        text,
        "rampart_breaker_state",
        &[
            ("route", "checkout"),
            ("backend", "canary"),
            ("state", "closed"),
        ],
    )
}

fn own_4xx(text: &str) -> f64 {
    metric_sum(
        text,
        "rampart_requests_total",
        &[
            ("route", "checkout"),
            ("backend", "_rampart"),
            ("code_class", "4xx"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_leave_the_canary_breaker_closed() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&canary_route(&stable, &canary, "5m")).await;
    for i in 0..5 {
        let mut conn = RawConn::connect(rampart.addr).await;
        let request = format!(
            "POST /cart HTTP/1.1\r\nhost: shop\r\nx-user-id: u{i}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        );
        let response = conn.exchange(request.as_bytes()).await.unwrap();
        assert_eq!(response.status, 400, "request {i}: {response:?}");
        assert_eq!(response.header("x-rampart-error"), Some("bad_request"));
        assert!(
            conn.closed_by_peer().await,
            "the connection closes after a bad body"
        );
    }
    let text = metrics_until(&rampart, |t| own_4xx(t) >= 5.0).await;
    assert_eq!(own_4xx(&text), 5.0, "{text}");
    assert_eq!(
        canary_errors(&text),
        0.0,
        "client faults are not the canary's"
    );
    assert_eq!(canary_breaker_closed(&text), Some(1.0));
    assert!(
        metric(
            &text,
            "rampart_malformed_requests_total",
            &[("reason", "bad_body")]
        )
        .is_some_and(|n| n >= 5.0),
        "{text}"
    );
    // The canary still serves.
    let r = rampart.get("/cart", &[("x-user-id", "after")]).await;
    assert_eq!(r.upstream(), "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_body_are_not_counted_against_the_canary() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&canary_route(&stable, &canary, "5m")).await;
    for i in 0..5 {
        let mut stream = TcpStream::connect(rampart.addr).await.unwrap();
        let head = format!(
            "POST /cart HTTP/1.1\r\nhost: shop\r\nx-user-id: gone{i}\r\ncontent-length: 100\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Wait until the request reached the canary, then leave.
        let deadline = Instant::now() + Duration::from_secs(10);
        while canary.hits() <= i && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stream);
    }
    assert_eq!(
        canary.hits(),
        5,
        "each request reached the canary before the client left"
    );
    let text = metrics_until(&rampart, |t| own_4xx(t) >= 5.0).await;
    assert_eq!(
        own_4xx(&text),
        5.0,
        "each is recorded as the client's: {text}"
    );
    assert_eq!(canary_errors(&text), 0.0);
    assert_eq!(canary_breaker_closed(&text), Some(1.0));
    let r = rampart.get("/cart", &[("x-user-id", "after")]).await;
    assert_eq!(r.upstream(), "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_after_the_idle_timeout_and_is_not_the_canarys_error() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&canary_route(&stable, &canary, "500ms")).await;
    for i in 0..3 {
        let mut stream = TcpStream::connect(rampart.addr).await.unwrap();
        let head = format!(
            "POST /cart HTTP/1.1\r\nhost: shop\r\nx-user-id: slow{i}\r\ncontent-length: 100\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the connection is closed after the answer");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("x-rampart-error: client_timeout"), "{text}");
    }
    let text = rampart.metrics_text().await;
    assert_eq!(canary_errors(&text), 0.0, "{text}");
    assert_eq!(canary_breaker_closed(&text), Some(1.0));
}

/// An HTTP/1.1 upstream that answers every request with a chunked body whose two chunks
/// are `gap` apart.
async fn gappy_upstream(gap: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nx-upstream: stable\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nfirst\r\n")
                    .await;
                tokio::time::sleep(gap).await;
                let _ = stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fallback_stables_body_runs_under_stables_idle_timeout_not_the_canarys() {
    let stable = gappy_upstream(Duration::from_millis(1500)).await;
    // Nothing listens here: the canary refuses the connection and the request falls back.
    let canary_port = free_port();
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable:
    url: http://{stable}
    idle_timeout: 30s
  canary:
    url: http://127.0.0.1:{canary_port}
    idle_timeout: 300ms
routes:
  - name: checkout
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
"
    ))
    .await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let response = conn
        .exchange(b"GET /cart HTTP/1.1\r\nhost: shop\r\nx-user-id: u1\r\n\r\n")
        .await
        .expect("the whole body arrives");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream"), Some("stable"));
    assert_eq!(response.body, b"firstsecond");
    let text = rampart.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "rampart_fallbacks_total",
            &[
                ("route", "checkout"),
                ("from", "canary"),
                ("reason", "connect_failure")
            ]
        ),
        Some(1.0)
    );
}
