//! Black-box: the contract's finer points (docs/config.md, docs/routing.md#bucketing, docs/proxying.md, issue 11) that no other
//! test file covers, each against the real binary and real upstreams on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn routes(upstreams: &str, routes: &str) -> String {
    format!(
        "default_upstream: stable\nupstreams:\n{upstreams}{}",
        dedent(routes)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_case_insensitively_with_the_port_ignored() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &canary],
        "routes:
           - name: shop
             match: {hosts: [shop.example.com]}
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
        ",
    ))
    .await;
    let r = rampart
        .get(
            "/",
            &[("host", "SHOP.Example.com:8443"), ("x-user-id", "a")],
        )
        .await;
    assert_eq!(r.upstream(), "canary");
    let r = rampart
        .get("/", &[("host", "other.example.com"), ("x-user-id", "a")])
        .await;
    assert_eq!(
        r.upstream(),
        "stable",
        "another host falls through to the default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_kill_beats_every_override_and_is_exported_with_its_source() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &canary],
        "routes:
           - name: checkout
             killed: \"INC-42 canary corrupts carts\"
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
             overrides:
               force_header: x-rampart-force
               identities: {canary: [alice]}
               headers: [{name: x-employee, value: \"true\", backend: canary}]
        ",
    ))
    .await;
    for headers in [
        vec![("x-user-id", "bob")],
        vec![("x-user-id", "alice")],
        vec![("x-user-id", "bob"), ("x-rampart-force", "canary")],
        vec![("x-user-id", "bob"), ("x-employee", "true")],
    ] {
        let r = rampart.get("/x", &headers).await;
        assert_eq!(
            r.upstream(),
            "stable",
            "{headers:?} reached the killed canary"
        );
    }
    assert_eq!(canary.hits(), 0);
    let text = rampart.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "rampart_kill_active",
            &[("route", "checkout"), ("source", "config")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "rampart_split_ratio",
            &[("route", "checkout"), ("backend", "canary")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "rampart_split_ratio",
            &[("route", "checkout"), ("backend", "stable")]
        ),
        Some(1.0)
    );
}

/// The bucket of `ip` under salt `ipsalt`, and whether it lands in a 50 % split.
fn in_first_half(ip: &str) -> bool {
    bucket("ipsalt", ip) < 5000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() {
    // Two client addresses on opposite sides of a 50 % split, found independently.
    let inside = (1..=250)
        .map(|i| format!("203.0.113.{i}"))
        .find(|ip| in_first_half(ip))
        .unwrap();
    let outside = (1..=250)
        .map(|i| format!("203.0.113.{i}"))
        .find(|ip| !in_first_half(ip))
        .unwrap();
    let peer_in_canary = in_first_half("127.0.0.1");
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let route = "routes:
           - name: byip
             salt: ipsalt
             identity: [client_ip]
             split: [{backend: canary, percent: 50}]
        ";
    let trusting = Rampart::start(&format!(
        "trusted_proxies: [127.0.0.0/8]\n{}",
        config("stable", &[&stable, &canary], route)
    ))
    .await;
    let want = |canary: bool| if canary { "canary" } else { "stable" };
    let r = trusting
        .get("/", &[("x-forwarded-for", &format!("{inside}, 127.0.0.5"))])
        .await;
    assert_eq!(
        r.upstream(),
        "canary",
        "rightmost untrusted address {inside} is the client"
    );
    assert_eq!(
        r.echo().header("x-forwarded-for"),
        Some(format!("{inside}, 127.0.0.5, 127.0.0.1").as_str())
    );
    let r = trusting
        .get("/", &[("x-forwarded-for", &format!("{inside}, {outside}"))])
        .await;
    assert_eq!(
        r.upstream(),
        "stable",
        "the rightmost untrusted entry wins, not the leftmost"
    );
    let untrusting = Rampart::start(&config("stable", &[&stable, &canary], route)).await;
    for xff in [&inside, &outside] {
        let r = untrusting.get("/", &[("x-forwarded-for", xff)]).await;
        assert_eq!(
            r.upstream(),
            want(peer_in_canary),
            "an untrusted peer's x-forwarded-for is not believed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_the_file_is_not_in_a_configmap_style_directory() {
    let dir = TempDir::new("cm");
    let body = "version: 1\nupstreams:\n  stable: {url: http://127.0.0.1:9}\n";
    let plain = dir.write("plain.yaml", body);
    let out = run_cli(&["check", "-c", plain.to_str().unwrap()]);
    assert_eq!(out.code, Some(0));
    assert!(out.all().contains("..data"), "{}", out.all());
    std::fs::create_dir_all(dir.path().join("cm/..2026_11_25")).unwrap();
    std::fs::write(dir.path().join("cm/..2026_11_25/rampart.yaml"), body).unwrap();
    std::os::unix::fs::symlink("..2026_11_25", dir.path().join("cm/..data")).unwrap();
    std::os::unix::fs::symlink("..data/rampart.yaml", dir.path().join("cm/rampart.yaml")).unwrap();
    let out = run_cli(&[
        "check",
        "-c",
        dir.path().join("cm/rampart.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0));
    assert!(
        !out.all().contains("..data"),
        "no warning inside a ConfigMap volume: {}",
        out.all()
    );
}

/// An upstream that sends its headers, then `chunks` body chunks `gap` apart.
async fn trickle_upstream(
    gap: Duration,
    chunks: usize,
    header_delay: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(header_delay).await;
                    let stream = futures_util::stream::unfold(0usize, move |i| async move {
                        if i == chunks {
                            return None;
                        }
                        tokio::time::sleep(gap).await;
                        Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i}\n")))),
                            i + 1,
                        ))
                    });
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-upstream", "stable")
                            .body(StreamBody::new(stream))
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

async fn get_full(url: &str) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    let client = client();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(IO_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timeout")?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(IO_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "body timeout")?;
    match body {
        Ok(b) => Ok((status, headers, b.to_bytes().to_vec())),
        Err(e) => Err(format!("body error: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_stream_outlives_request_timeout_and_a_stalled_one_is_cut_at_idle_timeout() {
    // 8 chunks 150 ms apart: 1.2 s in all, far past the 300 ms request_timeout.
    let (moving, _m) = trickle_upstream(Duration::from_millis(150), 8, Duration::ZERO).await;
    let upstreams = format!(
        "  stable: {{url: http://{moving}, request_timeout: 300ms, idle_timeout: 500ms}}\n"
    );
    let rampart = Rampart::start(&routes(&upstreams, "routes: []\n")).await;
    let (status, _, body) = get_full(&rampart.url("/sse")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body).lines().count(),
        8,
        "the whole stream arrived"
    );

    // One chunk, then 1.5 s of silence: cut at the 500 ms idle timeout.
    let (stalled, _s) = trickle_upstream(Duration::from_millis(1500), 2, Duration::ZERO).await;
    let upstreams =
        format!("  stable: {{url: http://{stalled}, request_timeout: 5s, idle_timeout: 500ms}}\n");
    let rampart = Rampart::start(&routes(&upstreams, "routes: []\n")).await;
    let started = Instant::now();
    let result = get_full(&rampart.url("/sse")).await;
    assert!(
        result.is_err(),
        "a stalled body must be cut, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "cut before the upstream finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_answers_502_504_and_grpc_trailers_only_with_x_rampart_error_and_counts_them_as_rampart(
) {
    let closed = free_port();
    let (slow, _task) = trickle_upstream(Duration::ZERO, 1, Duration::from_secs(3)).await;
    let upstreams = format!(
        "  stable: {{url: http://127.0.0.1:{closed}}}\n  slow: {{url: http://{slow}, request_timeout: 300ms}}\n"
    );
    let rampart = Rampart::start(&routes(
        &upstreams,
        "routes:
           - name: slowroute
             match: {path_prefix: /slow}
             stable: slow
        ",
    ))
    .await;
    let r = rampart.get("/down", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("x-rampart-error").as_deref(),
        Some("connect_failure")
    );
    let r = rampart.get("/slow", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-rampart-error").as_deref(), Some("timeout"));
    let r = rampart
        .get("/down", &[("content-type", "application/grpc")])
        .await;
    assert_eq!(r.status, 200, "gRPC clients get trailers-only");
    assert_eq!(r.header("grpc-status").as_deref(), Some("14"));
    let r = rampart
        .get("/slow", &[("content-type", "application/grpc+proto")])
        .await;
    assert_eq!(
        r.header("grpc-status").as_deref(),
        Some("4"),
        "a timeout is DEADLINE_EXCEEDED"
    );
    let text = rampart.metrics_text().await;
    let own = |route: &str, class: &str| {
        metric(
            &text,
            "rampart_requests_total",
            &[
                ("route", route),
                ("backend", "_rampart"),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(own("_default", "5xx"), Some(1.0), "{text}");
    assert_eq!(own("slowroute", "5xx"), Some(1.0));
    assert_eq!(
        own("_default", "error"),
        Some(1.0),
        "a failed gRPC call is never 2xx"
    );
    assert_eq!(own("slowroute", "error"), Some(1.0));
    assert_eq!(own("_default", "2xx"), Some(0.0));
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_attempts_total",
            &[("route", "_default"), ("outcome", "error")]
        ),
        Some(2.0)
    );
}

/// A WebSocket echo server on 127.0.0.1.
async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_tunnelled_to_the_backend_the_decision_picked() {
    let stable = Upstream::start("stable").await;
    let (echo, _task) = websocket_echo().await;
    let upstreams = format!(
        "  stable: {{url: {}}}\n  canary: {{url: http://{echo}}}\n",
        stable.url()
    );
    let rampart = Rampart::start(&routes(
        &upstreams,
        "routes:
           - name: ws
             match: {path_prefix: /ws}
             identity: [header:x-user-id]
             split: [{backend: canary, percent: 100}]
        ",
    ))
    .await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            rampart.addr
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("x-user-id", "alice".parse().unwrap());
    let stream = tokio::net::TcpStream::connect(rampart.addr).await.unwrap();
    let (mut ws, response) =
        tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(request, stream))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through rampart"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    assert_eq!(
        stable.hits(),
        0,
        "the decision sent the upgrade to the canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_records_completed_requests_with_their_bucket_and_never_the_identity() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Rampart::start(&format!(
        "access_log: {{sample: 1}}\n{}",
        config(
            "stable",
            &[&stable, &canary],
            "routes:
               - name: checkout
                 identity: [header:x-user-id]
                 split: [{backend: canary, percent: 50}]
            ",
        )
    ))
    .await;
    let identity = "secret-user-8d2f";
    let r = rampart.get("/checkout", &[("x-user-id", identity)]).await;
    assert_eq!(r.status, 200);
    let expected_bucket = format!("\"bucket\":{}", bucket("checkout", identity));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut line = None;
    for _ in 0..100 {
        line = rampart
            .stderr()
            .lines()
            .find(|l| l.contains("rampart::access") && l.contains(&expected_bucket))
            .map(str::to_string);
        if line.is_some() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = line.unwrap_or_else(|| {
        panic!(
            "no access log line with {expected_bucket}:\n{}",
            rampart.stderr()
        )
    });
    assert!(line.contains("\"end\":\"Complete\""), "{line}");
    assert!(line.contains("\"route\":\"checkout\""), "{line}");
    assert!(
        !rampart.stderr().contains(identity),
        "the identity was logged raw"
    );
}
