//! Malformed HTTP/1.1 requests (docs/proxying.md) are answered by Rampart itself and never
//! reach an upstream. Each test sends its bad request over a raw TCP connection, then one good
//! request through the same proxy: the upstream must have seen exactly that one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{metric_sum, Rampart, RawConn, Upstream};

/// One upstream server behind both backends of a `checkout` route, so every request that
/// gets through, whichever backend it is given, is counted in one place.
async fn setup() -> (Upstream, Rampart) {
    let up = Upstream::start("stable").await;
    let cfg = format!(
        "default_upstream: stable\nupstreams:\n  stable:\n    url: {url}\n  canary:\n    url: {url}\n{}",
        common::dedent(
            "
            routes:
              - name: checkout
                match: {path_prefix: /checkout}
                identity: [header:x-user-id]
                split:
                  - {backend: canary, percent: 10}
            "
        ),
        url = up.url()
    );
    let rampart = Rampart::start(&cfg).await;
    (up, rampart)
}

/// Sends a good request on a fresh connection and checks the upstream saw exactly it.
async fn assert_only_the_good_request_reached_the_upstream(rampart: &Rampart, up: &Upstream) {
    let resp = rampart.get("/checkout/good", &[]).await;
    assert_eq!(resp.status, 200, "the good request: {}", resp.text());
    let seen: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(
        seen,
        vec!["/checkout/good".to_string()],
        "requests the upstream received"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn content_length_with_chunked_transfer_encoding_gets_400_closes_and_never_reaches_upstream()
{
    let (up, rampart) = setup().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let request = format!(
        "POST /checkout/smuggle HTTP/1.1\r\n\
         Host: {}\r\n\
         Content-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\
         \r\n\
         0\r\n\r\n",
        rampart.addr
    );

    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 400);
    assert!(
        conn.closed_by_peer().await,
        "the connection stays open after a 400"
    );
    assert_only_the_good_request_reached_the_upstream(&rampart, &up).await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_gets_400_and_never_reaches_upstream() {
    let (up, rampart) = setup().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let request = format!(
        "POST /checkout/te HTTP/1.1\r\n\
         Host: {}\r\n\
         Transfer-Encoding: chunked, gzip\r\n\
         \r\n\
         0\r\n\r\n",
        rampart.addr
    );

    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 400);
    assert_only_the_good_request_reached_the_upstream(&rampart, &up).await;
}

#[tokio::test]
async fn differing_content_lengths_get_400_and_never_reach_upstream() {
    let (up, rampart) = setup().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let request = format!(
        "POST /checkout/cl HTTP/1.1\r\n\
         Host: {}\r\n\
         Content-Length: 3\r\n\
         Content-Length: 4\r\n\
         \r\n\
         abcd",
        rampart.addr
    );

    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 400);
    assert_only_the_good_request_reached_the_upstream(&rampart, &up).await;
}

#[tokio::test]
async fn a_single_70_kb_header_gets_431_and_never_reaches_upstream() {
    let (up, rampart) = setup().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let big = "a".repeat(70 * 1024);
    let request = format!(
        "GET /checkout/big HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n",
        rampart.addr
    );

    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 431);
    assert_only_the_good_request_reached_the_upstream(&rampart, &up).await;
}

#[tokio::test]
async fn malformed_requests_are_counted_in_rampart_malformed_requests_total() {
    let (_up, rampart) = setup().await;
    let before = metric_sum(
        &rampart.metrics_text().await,
        "rampart_malformed_requests_total",
        &[],
    );
    let mut conn = RawConn::connect(rampart.addr).await;
    let request = format!(
        "POST /checkout HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        rampart.addr
    );
    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 400);

    let text = rampart
        .metrics_until(|t| metric_sum(t, "rampart_malformed_requests_total", &[]) >= before + 1.0)
        .await;
    assert_eq!(
        metric_sum(&text, "rampart_malformed_requests_total", &[]),
        before + 1.0,
        "metrics:\n{text}"
    );
}
