//! Measurements for the issue notes, not assertions: run by hand with
//! `cargo test --release --test measure -- --ignored --nocapture`. Each prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends about `rate` requests a second with fresh identities until stopped (bounded to
/// 60 s); records when the first non-200 answer came.
fn steady_traffic(
    rampart: &Rampart,
    rate: u64,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Option<Instant>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = rampart.url("/checkout");
    let client = client();
    let stop2 = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut first_error = None;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            tick.tick().await;
            n += 1;
            let user = format!("user-{n}");
            if let Ok(r) = try_get(&client, &url, &[("x-user-id", &user)]).await {
                if r.status != 200 && first_error.is_none() {
                    first_error = Some(Instant::now());
                }
            }
        }
        first_error
    });
    (stop, task)
}

async fn until_canary_share_is_zero(rampart: &Rampart, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    for _ in 0..100_000 {
        let text = rampart.metrics_text().await;
        if metric(
            &text,
            "rampart_split_ratio",
            &[("route", "checkout"), ("backend", "canary")],
        ) == Some(0.0)
        {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for the issue notes; prints figures, asserts nothing"]
async fn measure_time_from_canary_going_bad_to_zero_share_breaker_and_analysis_paths() {
    for rate in [50u64, 200] {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let rampart = Rampart::start(&config(
            "stable",
            &[&stable, &canary],
            "routes:
               - name: checkout
                 identity: [header:x-user-id]
                 split: [{backend: canary, percent: 50}]
                 breaker: {window: 10s, min_requests: 20, max_error_rate: 0.05, open_for: 60s}
            ",
        ))
        .await;
        let (stop, task) = steady_traffic(&rampart, rate);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bad = Instant::now();
        canary.set_status(500);
        let zero = until_canary_share_is_zero(&rampart, Duration::from_secs(20)).await;
        stop.store(true, Ordering::Relaxed);
        let first_error = task.await.unwrap();
        println!(
            "breaker path at {rate} req/s (50 % canary): canary bad -> share 0: {:?}; first client-visible error -> share 0: {:?}",
            zero.map(|z| z - bad),
            zero.zip(first_error).map(|(z, e)| z.saturating_duration_since(e))
        );
    }
    for interval in ["2s", "5s"] {
        let stable = Upstream::start("stable").await;
        let canary = Upstream::start("canary").await;
        let rampart = Rampart::start(&config(
            "stable",
            &[&stable, &canary],
            &format!(
                "routes:
                   - name: checkout
                     identity: [header:x-user-id]
                     split: [{{backend: canary}}]
                     rollout: {{steps: [50, 100], step_interval: {interval}, min_requests: 20}}
                "
            ),
        ))
        .await;
        let (stop, task) = steady_traffic(&rampart, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bad = Instant::now();
        canary.set_status(500);
        let zero = until_canary_share_is_zero(&rampart, Duration::from_secs(30)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        println!(
            "analysis path (no breaker), step_interval {interval}, 200 req/s: canary bad -> share 0: {:?}",
            zero.map(|z| z - bad)
        );
    }
}
