//! Black-box: graceful shutdown (docs/proxying.md) against the real binary. SIGTERM turns
//! `/readyz` to 503 at once, requests are still served for `drain.delay`, in-flight
//! requests finish within `drain.timeout`, a second SIGTERM or SIGINT cuts the drain short,
//! and the exit code is 0 every time. Durations are short so the file runs in seconds;
//! every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upstream that answers 200 `x-upstream: slow` `delay` after each request arrives, and
/// counts arrivals (so a test knows its requests are in flight).
struct SlowUpstream {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    async fn start(delay: Duration) -> SlowUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&arrived);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-upstream", "slow")
                                    .body(Full::new(Bytes::from_static(b"slow")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        SlowUpstream {
            addr,
            arrived,
            task,
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// A config body sending everything to this upstream, with these drain timings.
    fn config(&self, drain: &str) -> String {
        format!(
            "drain: {drain}\ndefault_upstream: slow\nupstreams:\n  slow:\n    url: http://{}\n",
            self.addr
        )
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `count` GETs through Rampart, each on its own connection, and waits (bounded)
/// until the upstream has seen all of them: they are in flight.
async fn in_flight(
    rampart: &Rampart,
    upstream: &SlowUpstream,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<Resp, String>>> {
    let before = upstream.arrived();
    let requests: Vec<_> = (0..count)
        .map(|i| {
            let url = rampart.url(&format!("/slow/{i}"));
            tokio::spawn(async move { try_get(&client(), &url, &[]).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.arrived() < before + count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} requests reached the upstream",
            upstream.arrived() - before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    requests
}

/// Polls `/readyz` (every 20 ms, at most 5 s) until it answers 503.
async fn wait_unready(rampart: &Rampart) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if rampart.readyz().await == Some(503) {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz did not turn 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_8_slow_requests_in_flight_with_readyz_503_meanwhile_and_exits_0() {
    let upstream = SlowUpstream::start(Duration::from_millis(1500)).await;
    let mut rampart = Rampart::start(&upstream.config("{delay: 0s, timeout: 10s}")).await;
    assert_eq!(rampart.readyz().await, Some(200));
    let requests = in_flight(&rampart, &upstream, 8).await;

    rampart.signal("TERM");
    // The signal is delivered asynchronously: a probe sent in the same instant may still
    // be answered 200. From the first 503 on (well before the 1.5 s requests end), /readyz
    // says 503, every time it is asked, while the 8 are in flight.
    let mut probes = Vec::new();
    while !requests.iter().all(|r| r.is_finished()) {
        probes.push((
            rampart.readyz().await,
            requests.iter().filter(|r| r.is_finished()).count(),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(probes.len() < 1000, "the requests did not finish");
    }
    let first_503 = probes.iter().position(|(status, _)| *status == Some(503));
    let Some(first_503) = first_503 else {
        panic!("/readyz never said 503 while draining: {probes:?}");
    };
    assert_eq!(
        probes[first_503].1, 0,
        "/readyz said 503 only after a request had finished: {probes:?}"
    );
    assert!(
        probes[..first_503]
            .iter()
            .all(|(status, _)| *status == Some(200)),
        "before the signal took effect: {probes:?}"
    );
    assert!(
        first_503 <= 10,
        "the signal took more than ~10 probes (200 ms) to turn /readyz to 503: {probes:?}"
    );
    assert!(
        probes[first_503..]
            .iter()
            .all(|(status, _)| matches!(status, Some(503) | None)),
        "/readyz answered something else than 503 while draining: {probes:?}"
    );

    for request in requests {
        let resp = request.await.unwrap().expect("an in-flight request failed");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-upstream").as_deref(), Some("slow"));
    }
    let code = rampart.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "stderr:\n{}", rampart.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_are_still_served_during_drain_delay_and_the_process_exits_0_after_it() {
    let upstream = Upstream::start("stable").await;
    let body = format!(
        "drain: {{delay: 3s, timeout: 5s}}\n{}",
        config("stable", &[&upstream], "")
    );
    let mut rampart = Rampart::start(&body).await;
    assert_eq!(rampart.get("/", &[]).await.status, 200);

    let sigterm = Instant::now();
    rampart.signal("TERM");
    wait_unready(&rampart).await;
    // Endpoint removal lags: for the first second, new connections are still served.
    let mut served = 0;
    while sigterm.elapsed() < Duration::from_secs(1) {
        let resp = try_get(&client(), &rampart.url("/during-delay"), &[])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a request {:?} after SIGTERM failed: {e}",
                    sigterm.elapsed()
                )
            });
        assert_eq!(resp.status, 200);
        assert_eq!(resp.upstream(), "stable");
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 1);
    assert_eq!(rampart.exit_code(), None, "exited during drain.delay");

    let code = rampart.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "stderr:\n{}", rampart.stderr());
    assert!(
        sigterm.elapsed() >= Duration::from_secs(2),
        "exited {:?} after SIGTERM, before drain.delay",
        sigterm.elapsed()
    );
}

#[tokio::test]
async fn a_second_sigterm_during_drain_delay_exits_0_at_once() {
    let upstream = Upstream::start("stable").await;
    let body = format!(
        "drain: {{delay: 20s, timeout: 20s}}\n{}",
        config("stable", &[&upstream], "")
    );
    let mut rampart = Rampart::start(&body).await;
    rampart.signal("TERM");
    wait_unready(&rampart).await;
    let second = Instant::now();
    rampart.signal("TERM");
    let code = rampart.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "stderr:\n{}", rampart.stderr());
    eprintln!("exited {:?} after the second SIGTERM", second.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_while_in_flight_requests_finish_skips_the_rest_of_drain_timeout_and_exits_0() {
    let upstream = SlowUpstream::start(Duration::from_secs(60)).await;
    let mut rampart = Rampart::start(&upstream.config("{delay: 0s, timeout: 30s}")).await;
    let requests = in_flight(&rampart, &upstream, 2).await;

    rampart.signal("TERM");
    wait_unready(&rampart).await;
    // drain.delay is 0: the listener closes; the two requests are still in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(rampart.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener did not close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rampart.exit_code(), None, "exited with requests in flight");
    assert!(requests.iter().all(|r| !r.is_finished()));

    let second = Instant::now();
    rampart.signal("INT");
    let code = rampart.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "stderr:\n{}", rampart.stderr());
    eprintln!("exited {:?} after SIGINT", second.elapsed());
    for request in requests {
        request.abort();
    }
}
