//! Black-box: the upstream pool is bounded as nginx's `keepalive N` is
//! (docs/config.md#upstreams): after a burst of concurrent requests, the connections beyond
//! `pool.max_idle` are closed as they go idle instead of staying open.
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

/// An HTTP/1.1 upstream that answers after `delay` and counts its open connections.
async fn counting_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    // A listen backlog of 1,024, as servers in production have (nginx 511, Go's
    // somaxconn): with tokio's default of 128, the burst's 200 simultaneous connects
    // overflow the accept queue, and the dropped SYNs retry only after the 1 s
    // connect_timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (open_task, peak_task) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let now = open_task.fetch_add(1, Ordering::SeqCst) + 1;
            peak_task.fetch_max(now, Ordering::SeqCst);
            let open = open_task.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-upstream", "stable")
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_only_max_idle_upstream_connections_stay_open() {
    let (upstream, open, peak) = counting_upstream(Duration::from_millis(300)).await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable:
    url: http://{upstream}
    pool: {{max_idle: 8, idle_timeout: 60s}}
"
    ))
    .await;
    let burst = 200;
    let mut tasks = Vec::new();
    for _ in 0..burst {
        let client = rampart.client().clone();
        let url = rampart.url("/");
        tasks.push(tokio::spawn(async move {
            try_get(&client, &url, &[]).await.map(|r| r.status)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Ok(s) if s == 200) {
            ok += 1;
        }
    }
    assert_eq!(ok, burst, "every request of the burst is served");
    assert!(
        peak.load(Ordering::SeqCst) > 8,
        "the burst needed more than max_idle connections (peak {})",
        peak.load(Ordering::SeqCst)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open.load(Ordering::SeqCst) <= 8,
        "{} upstream connections still open after the burst (max_idle 8, peak {})",
        open.load(Ordering::SeqCst),
        peak.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection_until_idle_timeout() {
    let (upstream, open, peak) = counting_upstream(Duration::ZERO).await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable:
    url: http://{upstream}
    pool: {{max_idle: 8, idle_timeout: 500ms}}
"
    ))
    .await;
    for i in 0..20 {
        let r = rampart.get(&format!("/{i}"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "one kept-alive upstream connection carried every request"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        open.load(Ordering::SeqCst),
        0,
        "the idle upstream connection is closed after pool.idle_timeout"
    );
}
