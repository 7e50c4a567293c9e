//! What reaches the upstream (docs/proxying.md): forwarding headers, request ids, trace
//! context, Rampart's own route/backend headers, and hop-by-hop headers. Each test reads the
//! upstream's JSON echo of the request it received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, find_identity, parse_echo, Rampart, RawConn, Upstream};

/// stable + canary upstreams and one `checkout` route with a 10 % canary split.
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

#[tokio::test]
async fn upstream_receives_x_forwarded_for_with_the_client_ip_appended() {
    let (_stable, _canary, rampart) = setup().await;

    let with_xff = rampart
        .get("/checkout", &[("x-forwarded-for", "203.0.113.9")])
        .await
        .echo();
    assert_eq!(
        with_xff.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    let without_xff = rampart.get("/checkout", &[]).await.echo();
    assert_eq!(without_xff.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn upstream_receives_x_forwarded_proto_http() {
    let (_stable, _canary, rampart) = setup().await;

    let echo = rampart.get("/checkout", &[]).await.echo();
    assert_eq!(echo.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn x_request_id_is_generated_when_absent_and_kept_when_present() {
    let (_stable, _canary, rampart) = setup().await;

    let first = rampart.get("/checkout", &[]).await.echo();
    let second = rampart.get("/checkout", &[]).await.echo();
    let id1 = first
        .header("x-request-id")
        .expect("x-request-id generated");
    let id2 = second
        .header("x-request-id")
        .expect("x-request-id generated");
    assert!(!id1.trim().is_empty(), "generated x-request-id is empty");
    assert_ne!(id1, id2, "two requests got the same generated id");

    let kept = rampart
        .get("/checkout", &[("x-request-id", "client-req-42")])
        .await
        .echo();
    assert_eq!(kept.header("x-request-id"), Some("client-req-42"));
}

#[tokio::test]
async fn traceparent_and_tracestate_pass_through_unchanged() {
    let (_stable, _canary, rampart) = setup().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

    let echo = rampart
        .get(
            "/checkout",
            &[("traceparent", traceparent), ("tracestate", tracestate)],
        )
        .await
        .echo();
    assert_eq!(echo.header("traceparent"), Some(traceparent));
    assert_eq!(echo.header("tracestate"), Some(tracestate));
}

#[tokio::test]
async fn upstream_receives_x_rampart_route_and_backend_naming_the_decision() {
    let (_stable, _canary, rampart) = setup().await;
    let canary_user = find_identity("checkout", "hdr-c", |b| b < 1000);
    let stable_user = find_identity("checkout", "hdr-s", |b| b >= 1000);

    let to_canary = rampart
        .get("/checkout", &[("x-user-id", &canary_user)])
        .await;
    assert_eq!(to_canary.upstream(), "canary");
    let echo = to_canary.echo();
    assert_eq!(echo.header("x-rampart-route"), Some("checkout"));
    assert_eq!(echo.header("x-rampart-backend"), Some("canary"));

    let echo = rampart
        .get("/checkout", &[("x-user-id", &stable_user)])
        .await
        .echo();
    assert_eq!(echo.upstream, "stable");
    assert_eq!(echo.header("x-rampart-route"), Some("checkout"));
    assert_eq!(echo.header("x-rampart-backend"), Some("stable"));
}

#[tokio::test]
async fn client_sent_x_rampart_route_and_backend_are_replaced_not_forwarded() {
    let (_stable, _canary, rampart) = setup().await;
    let stable_user = find_identity("checkout", "spoof", |b| b >= 1000);

    let resp = rampart
        .get(
            "/checkout",
            &[
                ("x-user-id", &stable_user),
                ("x-rampart-route", "spoofed-route"),
                ("x-rampart-backend", "canary"),
            ],
        )
        .await;
    assert_eq!(
        resp.upstream(),
        "stable",
        "the client header must not steer"
    );
    let echo = resp.echo();
    // `header` also fails if the client's value was forwarded beside Rampart's.
    assert_eq!(echo.header("x-rampart-route"), Some("checkout"));
    assert_eq!(echo.header("x-rampart-backend"), Some("stable"));
}

#[tokio::test]
async fn hop_by_hop_headers_named_in_connection_are_not_forwarded() {
    let (_stable, _canary, rampart) = setup().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let request = format!(
        "GET /checkout HTTP/1.1\r\n\
         Host: {}\r\n\
         Connection: keep-alive, x-secret-hop\r\n\
         Keep-Alive: timeout=5\r\n\
         X-Secret-Hop: do-not-forward\r\n\
         X-End-To-End: forward-me\r\n\
         \r\n",
        rampart.addr
    );

    let resp = conn.exchange(request.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 200);
    let echo = parse_echo(&resp.body);
    assert_eq!(echo.header("x-end-to-end"), Some("forward-me"));
    assert_eq!(
        echo.header("x-secret-hop"),
        None,
        "a header named in Connection was forwarded"
    );
    assert_eq!(echo.header("keep-alive"), None, "keep-alive is hop-by-hop");
    for value in echo.header_all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-secret-hop"),
            "the client's Connection header was forwarded: {value}"
        );
    }
}
