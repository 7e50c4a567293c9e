//! Clients that hold on to resources, against the real binary (docs/proxying.md#hostile-clients):
//! the deadline from accept to the first request head whatever the protocol, idle HTTP/2
//! GOAWAY, the connection cap with `/metrics` still answering, the send timeout releasing a
//! stalled reader's upstream slot, `Host` rules, and `check`/`run` agreeing on what a file
//! can be applied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads (and discards) until the peer closes or resets; `Some(elapsed)` if that happened
/// within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Polls `/metrics` until `pred` holds (at most 15 s); returns the last text either way.
async fn metrics_within(rampart: &Rampart, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut text = rampart.metrics_text().await;
    for _ in 0..300 {
        if pred(&text) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = rampart.metrics_text().await;
    }
    text
}

#[tokio::test]
async fn silent_slow_preface_and_stalled_h2_connections_are_closed_at_the_header_deadline() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "{}limits: {{header_timeout: 1s}}\n",
        config("stable", &[&stable], "")
    ))
    .await;

    let mut silent = connect(rampart.addr).await;
    let mut slow_preface = connect(rampart.addr).await;
    slow_preface.write_all(&H2_PREFACE[..10]).await.unwrap();
    let mut settings_only = connect(rampart.addr).await;
    settings_only.write_all(H2_PREFACE).await.unwrap();
    settings_only.write_all(H2_SETTINGS).await.unwrap();
    let mut half_headers = connect(rampart.addr).await;
    half_headers.write_all(H2_PREFACE).await.unwrap();
    half_headers.write_all(H2_SETTINGS).await.unwrap();
    // A HEADERS frame announcing 100 bytes of stream 1, of which 3 arrive.
    half_headers
        .write_all(&[0, 0, 100, 1, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84])
        .await
        .unwrap();
    let mut half_h1 = connect(rampart.addr).await;
    half_h1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    for (name, stream) in [
        ("silent", &mut silent),
        ("slow preface", &mut slow_preface),
        ("preface and SETTINGS", &mut settings_only),
        ("half a HEADERS frame", &mut half_headers),
        ("HTTP/1.1 head without its final CRLF", &mut half_h1),
    ] {
        let closed = closed_within(stream, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "{name}: still open 10 s after accept with header_timeout 1s"
        );
    }
    assert_eq!(stable.hits(), 0);
    let m = metrics_within(&rampart, |m| {
        value(
            m,
            "rampart_client_timeouts_total",
            &[("timeout", "header_timeout")],
        ) >= 4.0
    })
    .await;
    assert!(
        value(
            &m,
            "rampart_client_timeouts_total",
            &[("timeout", "header_timeout")]
        ) >= 4.0,
        "{m}"
    );
    // A closed connection is not a malformed request.
    assert_eq!(
        value(
            &m,
            "rampart_malformed_requests_total",
            &[("reason", "bad_request")]
        ),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_idle_h2_connection_gets_goaway_after_h2_idle_timeout_and_streams_default_to_128() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "{}limits: {{h2_idle_timeout: 1s}}\n",
        config("stable", &[&stable], "")
    ))
    .await;
    let tcp = connect(rampart.addr).await;
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&streams);
    let connection = tokio::spawn(async move {
        let started = Instant::now();
        let ended = std::future::poll_fn(|cx| {
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            seen.store(
                connection.max_concurrent_send_streams(),
                std::sync::atomic::Ordering::SeqCst,
            );
            polled
        })
        .await;
        (started.elapsed(), ended)
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/", rampart.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 128);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    drop(client);

    let (after, ended) = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle h2 connection was not closed within 10 s")
        .unwrap();
    assert!(ended.is_ok(), "not a graceful GOAWAY: {ended:?}");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    let m = metrics_within(&rampart, |m| {
        value(
            m,
            "rampart_client_timeouts_total",
            &[("timeout", "h2_idle_timeout")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &m,
            "rampart_client_timeouts_total",
            &[("timeout", "h2_idle_timeout")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_client_closing_inside_the_h2_preface_is_not_a_malformed_request() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&config("stable", &[&stable], "")).await;
    for cut in [10, 18, 20, 23] {
        let mut tcp = connect(rampart.addr).await;
        tcp.write_all(&H2_PREFACE[..cut]).await.unwrap();
        tcp.shutdown().await.unwrap();
        assert!(closed_within(&mut tcp, IO_TIMEOUT).await.is_some());
    }
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_connections_open", &[]) == 0.0
    })
    .await;
    assert_eq!(value(&m, "rampart_connections_open", &[]), 0.0, "{m}");
    assert_eq!(
        value(
            &m,
            "rampart_malformed_requests_total",
            &[("reason", "bad_request")]
        ),
        0.0,
        "{m}"
    );
    assert!(!rampart.stderr().contains("malformed request refused"));
}

#[tokio::test]
async fn at_the_connection_cap_metrics_still_answer_and_accepting_resumes_when_one_closes() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "{}limits: {{max_connections: 4, header_timeout: 20s}}\n",
        config("stable", &[&stable], "")
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(rampart.addr).await);
    }
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_connections_open", &[]) == 4.0
    })
    .await;
    assert_eq!(value(&m, "rampart_connections_open", &[]), 4.0, "{m}");
    assert_eq!(value(&m, "rampart_connections_max", &[]), 4.0, "{m}");

    // The fifth connection waits in the listen queue: no answer while the cap holds.
    let mut fifth = RawConn::connect(rampart.addr).await;
    let waiting = tokio::spawn(async move {
        let response = fifth
            .exchange(b"GET /fifth HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        (Instant::now(), response)
    });
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_connection_cap_reached_total", &[]) >= 1.0
    })
    .await;
    assert!(
        value(&m, "rampart_connection_cap_reached_total", &[]) >= 1.0,
        "{m}"
    );
    // /metrics answered all along (metrics_within asserts 200 every time).
    assert_eq!(stable.hits(), 0);
    assert!(!waiting.is_finished(), "served above the cap");

    let released = Instant::now();
    drop(held.pop());
    let (answered, response) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the queued connection was not served after a slot freed")
        .unwrap();
    assert_eq!(response.unwrap().status, 200);
    assert!(answered >= released);
    assert_eq!(stable.hits(), 1);
}

/// An upstream whose every response is an endless stream of 64 KiB chunks (bounded at
/// 1 GiB), so a client that stops reading fills every buffer on the way.
async fn endless_upstream() -> SocketAddr {
    use futures_util::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                    let frames = futures_util::stream::repeat_with(move || {
                        Ok::<_, Infallible>(Frame::data(chunk.clone()))
                    })
                    .take(16 * 1024);
                    Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(frames)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn endless_config(limits: &str) -> String {
    format!(
        "default_upstream: endless\nupstreams:\n  endless:\n    url: http://{}\n{limits}",
        "{ENDLESS}"
    )
}

async fn inflight(rampart: &Rampart) -> f64 {
    value(
        &rampart.metrics_text().await,
        "rampart_upstream_inflight",
        &[("upstream", "endless")],
    )
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_releases_its_upstream_slot_within_send_timeout() {
    let upstream = endless_upstream().await;
    let body =
        endless_config("limits: {send_timeout: 1s}\n").replace("{ENDLESS}", &upstream.to_string());
    let rampart = Rampart::start(&body).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(rampart.addr).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read. The slot is taken, then released by the send timeout.
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_upstream_inflight", &[("upstream", "endless")]) == 1.0
    })
    .await;
    assert_eq!(
        value(&m, "rampart_upstream_inflight", &[("upstream", "endless")]),
        1.0,
        "{m}"
    );
    let started = Instant::now();
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_upstream_inflight", &[("upstream", "endless")]) == 0.0
    })
    .await;
    assert_eq!(
        value(&m, "rampart_upstream_inflight", &[("upstream", "endless")]),
        0.0,
        "slot still held {:?} later:\n{m}",
        started.elapsed()
    );
    assert!(
        value(
            &m,
            "rampart_client_timeouts_total",
            &[("timeout", "send_timeout")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(inflight(&rampart).await, 0.0);
}

#[tokio::test]
async fn an_h2_stream_whose_window_stays_zero_releases_its_upstream_slot_within_send_timeout() {
    let upstream = endless_upstream().await;
    let body =
        endless_config("limits: {send_timeout: 1s}\n").replace("{ENDLESS}", &upstream.to_string());
    let rampart = Rampart::start(&body).await;

    let tcp = connect(rampart.addr).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/big", rampart.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(IO_TIMEOUT, response)
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(response.status(), 200);
    // The stream's window stays 0: no data can come, and nothing is read.
    let m = metrics_within(&rampart, |m| {
        value(m, "rampart_upstream_inflight", &[("upstream", "endless")]) == 0.0
    })
    .await;
    assert_eq!(
        value(&m, "rampart_upstream_inflight", &[("upstream", "endless")]),
        0.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "rampart_client_timeouts_total",
            &[("timeout", "send_timeout")]
        ) >= 1.0,
        "{m}"
    );
    let _ = tokio::time::timeout(IO_TIMEOUT, connection).await;
    drop(response);
}

#[tokio::test]
async fn duplicate_or_missing_host_gets_400_and_reaches_no_upstream() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&config("stable", &[&stable], "")).await;
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET /dup HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "duplicate_host",
        ),
        (b"GET /none HTTP/1.1\r\nAccept: */*\r\n\r\n", "missing_host"),
        (
            b"GET http://a.example/abs HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            "duplicate_host",
        ),
    ];
    for (request, reason) in cases {
        let mut conn = RawConn::connect(rampart.addr).await;
        let response = conn.exchange(request).await.unwrap();
        assert_eq!(response.status, 400, "{reason}");
        assert_eq!(response.header("x-rampart-error"), Some("bad_request"));
        assert!(
            conn.closed_by_peer().await,
            "{reason}: connection kept open"
        );
    }
    // HTTP/1.0 without Host is allowed.
    let mut conn = RawConn::connect(rampart.addr).await;
    let response = conn.exchange(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(stable.hits(), 1);

    let m = rampart.metrics_text().await;
    assert_eq!(
        value(
            &m,
            "rampart_malformed_requests_total",
            &[("reason", "duplicate_host")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "rampart_malformed_requests_total",
            &[("reason", "missing_host")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_absolute_form_target_routes_by_its_authority_which_replaces_host() {
    let stable = Upstream::start("stable").await;
    let shop = Upstream::start("shop").await;
    let rampart = Rampart::start(&config(
        "stable",
        &[&stable, &shop],
        "
        routes:
          - name: shop
            match: {hosts: [shop.example]}
            split: [{backend: shop, percent: 100}]
        ",
    ))
    .await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let response = conn
        .exchange(b"GET http://shop.example:8080/cart HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let echo = parse_echo(&response.body);
    assert_eq!(response.header("x-upstream"), Some("shop"));
    assert_eq!(echo.header("host"), Some("shop.example:8080"));
    assert_eq!(echo.header_all("host").len(), 1);
    assert_eq!(stable.hits(), 0);
}

#[tokio::test]
async fn check_refuses_a_non_ascii_upstream_host_that_run_could_not_serve() {
    let dir = TempDir::new("idn");
    let path = dir.write(
        "rampart.yaml",
        "version: 1\nupstreams:\n  stable: {url: \"http://127.0.0.1:3000\"}\n  canary:\n    url: \"http://bücher.example:80\"\n",
    );
    let out = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.all().contains(&format!("{}:5:", path.display())),
        "{}",
        out.all()
    );
    assert!(out.all().contains("upstreams.canary.url"), "{}", out.all());
}

#[tokio::test]
async fn check_refuses_and_run_falls_back_on_a_file_that_parses_but_cannot_be_applied() {
    let stable = Upstream::start("stable").await;
    let mut rampart = Rampart::start(&config("stable", &[&stable], "")).await;
    let good = std::fs::read_to_string(&rampart.config_path).unwrap();
    let last_good = rampart.state_dir().join("last-good.yaml");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&last_good).ok().as_deref() != Some(good.as_str()) {
        assert!(Instant::now() < deadline, "no last good config");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Valid YAML, valid fields, but a CA file that does not exist: only building the
    // upstream's TLS client finds out.
    let unappliable = format!(
        "{good}  other:\n    url: https://127.0.0.1:9443\n    ca_file: {}\n",
        rampart.state_dir().join("no-such-ca.pem").display()
    );
    std::fs::write(&rampart.config_path, &unappliable).unwrap();
    let out = run_cli(&["check", "-c", rampart.config_path.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(1),
        "check passed a file run cannot apply:\n{}",
        out.all()
    );
    assert!(out.all().contains("no-such-ca.pem"), "{}", out.all());

    rampart.signal("KILL");
    assert!(rampart.wait_exit(Duration::from_secs(10)).await.is_some());
    rampart.restart().await;
    let response = rampart.get("/after-restart", &[]).await;
    assert_eq!(response.status, 200);
    assert_eq!(stable.hits(), 1);
    let m = rampart.metrics_text().await;
    assert_eq!(
        metric(&m, "rampart_config_last_reload_successful", &[]),
        Some(0.0),
        "{m}"
    );
    assert!(
        rampart.stderr().contains("no-such-ca.pem"),
        "{}",
        rampart.stderr()
    );
}

#[tokio::test]
async fn a_client_reading_normally_is_not_cut_by_a_short_send_timeout() {
    // The watchdog measures blocked writes only: a slow upstream (no bytes to send) and a
    // client that reads are never cut.
    let upstream = endless_upstream().await;
    let body = endless_config("limits: {send_timeout: 300ms}\n")
        .replace("{ENDLESS}", &upstream.to_string());
    let rampart = Rampart::start(&body).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let response = client
        .get(rampart.url("/big").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < 32 * 1024 * 1024 {
        let frame = tokio::time::timeout(IO_TIMEOUT, body.frame())
            .await
            .expect("body stalled")
            .expect("body ended early")
            .expect("body failed");
        if let Some(data) = frame.data_ref() {
            read += data.len();
        }
    }
    drop(body);
    let m = rampart.metrics_text().await;
    assert_eq!(
        value(
            &m,
            "rampart_client_timeouts_total",
            &[("timeout", "send_timeout")]
        ),
        0.0,
        "{m}"
    );
}

/// Sends `GET /` on `stream` and reads its whole answer (a `Content-Length` body); the
/// status code.
async fn get_on(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed before the answer ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .expect("a Content-Length");
        if got.len() >= end + 4 + length {
            return text[9..12].parse().unwrap();
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lives_past_header_timeout_until_keepalive_timeout() {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "{}limits: {{header_timeout: 1s, keepalive_timeout: 3s}}\n",
        config("stable", &[&stable], "")
    ))
    .await;
    let mut stream = connect(rampart.addr).await;
    assert_eq!(get_on(&mut stream).await, 200);
    // Idle for longer than header_timeout: a load balancer reusing the connection now
    // must be served, not find it closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_on(&mut stream).await, 200);
    // Then, idle, it is closed at keepalive_timeout (3 s), not before header_timeout's 1 s.
    let closed = closed_within(&mut stream, Duration::from_secs(15)).await;
    let Some(after) = closed else {
        panic!("an idle keep-alive connection still open 15 s after keepalive_timeout 3s");
    };
    assert!(
        after >= Duration::from_millis(2500),
        "closed {after:?} after the answer, before keepalive_timeout"
    );
    assert_eq!(stable.hits(), 2);
}
