//! The demo's rollout acts: a canary ramped through steps by the real rollout engine, once
//! healthy (promoted step by step) and once degrading at 25 % (the step's verdict rolls it
//! back to 0 %, status `aborted`). Each act runs its own proxy on loopback ports.
//!
//! In the degrading act the route's breaker and its rollout work together: the breaker
//! opens after a few failed canary requests and sends the canary's users to stable at once;
//! the next verdict sees that and rolls the rollout back.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rampart_core::rollout::RolloutStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RAMP_CONFIG: &str = r#"version: 1
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
default_upstream: stable
access_log: {sample: 0}
upstreams:
  stable: {url: "http://STABLE"}
  canary: {url: "http://CANARY"}
routes:
  - name: ramp
    kind: canary
    owner: team-demo
    identity: [header:x-user-id]
    split: [{backend: canary}]
    rollout:
      steps: [5, 25, 50, 100]
      step_interval: 2s
      min_requests: 20
      max_error_rate_increase: 0.02
      # Loose: the demo runs on laptops and shared CI machines, where a canary's fresh
      # connections make its p99 noisy; this story is about errors.
      max_latency_ratio: 4
      on_failure: rollback
    # The breaker acts within a request or two of a failing canary; the rollout's verdict
    # then sees it opened during the step and rolls back.
    breaker: {window: 5s, min_requests: 10, max_error_rate: 0.2, consecutive_errors: 5, open_for: 5s}
"#;

/// Longest an act runs, whatever happens.
const ACT_LIMIT: Duration = Duration::from_secs(20);

/// Runs one ramp act; `degrade_at` is the percent at which the canary starts answering 500.
pub async fn ramp_act(title: &str, degrade_at: Option<u16>) -> anyhow::Result<()> {
    let failing = Arc::new(AtomicBool::new(false));
    let stable = crate::demo::upstream("v1", Arc::new(AtomicBool::new(false))).await?;
    let canary = crate::demo::upstream("v2", Arc::clone(&failing)).await?;
    let text = RAMP_CONFIG
        .replace("STABLE", &stable.to_string())
        .replace("CANARY", &canary.to_string());
    let crate::demo::Embedded {
        runtime,
        proxy_addr,
        stop,
        ..
    } = crate::demo::start_embedded(&text, "ramp.yaml").await?;
    // The rollout engine's ticker runs in the runtime, as in `rampart run`.

    let started = Instant::now();
    let story = crate::demo_story::Story::subscribe(&runtime.state, started);
    println!();
    println!("{title}");
    println!();
    println!(
        "{:>5}  {:>8}  {:>14}  {:>6}  {:>5}  {:>8}  {:<12}  {:<10}  canary",
        "t(s)", "req/s", "to canary v2", "5xx", "step", "percent", "status", "breaker"
    );

    let canary_hits = Arc::new(AtomicU64::new(0));
    let all_hits = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + ACT_LIMIT;
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let (client, canary_hits, all_hits, errors, done) = (
            client.clone(),
            Arc::clone(&canary_hits),
            Arc::clone(&all_hits),
            Arc::clone(&errors),
            Arc::clone(&done),
        );
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                n = n.wrapping_add(4);
                let request = Request::get(format!("http://{proxy_addr}/ramp"))
                    .header("x-user-id", format!("user-{}", fastrand::u32(..100_000)))
                    .body(Empty::new());
                let Ok(request) = request else { continue };
                if let Ok(response) = client.request(request).await {
                    let canary = response
                        .headers()
                        .get("x-version")
                        .is_some_and(|v| v == "v2");
                    let failed = response.status().is_server_error();
                    let _ = response.into_body().collect().await;
                    all_hits.fetch_add(1, Ordering::Relaxed);
                    if canary {
                        canary_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if failed {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (0u64, 0u64, 0u64);
    let mut finished_at: Option<Instant> = None;
    while Instant::now() < deadline {
        tick.tick().await;
        let snapshot = runtime.state.snapshot.load_full();
        let rollout = snapshot.routes.first().and_then(|r| r.rollout.clone());
        let Some((state, _)) = rollout.as_ref().and_then(|r| r.snapshot()) else {
            break;
        };
        let percent = rollout
            .as_ref()
            .map(|r| r.first_entry())
            .unwrap_or_default();
        // The row describes the second just past; the canary's health changes after it.
        let was_failing = failing.load(Ordering::Relaxed);
        if let Some(at) = degrade_at {
            if percent.buckets() >= at * 100
                && !failing.load(Ordering::Relaxed)
                && state.status == RolloutStatus::Progressing
            {
                failing.store(true, Ordering::Relaxed);
            }
        }
        let now = (
            all_hits.load(Ordering::Relaxed),
            canary_hits.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        );
        story.print_new();
        let (all, canary, errs) = (now.0 - last.0, now.1 - last.1, now.2 - last.2);
        last = now;
        let share = if all == 0 {
            0.0
        } else {
            100.0 * canary as f64 / all as f64
        };
        println!(
            "{:>5}  {:>8}  {:>7} {:>5.1}%  {:>6}  {:>5}  {:>7}%  {:<12}  {:<10}  {}",
            started.elapsed().as_secs(),
            all,
            canary,
            share,
            errs,
            state.step + 1,
            percent.to_string(),
            state.status.as_str(),
            crate::demo::breaker_state(&runtime),
            if was_failing {
                "failing (500)"
            } else {
                "healthy"
            }
        );
        let terminal = matches!(
            state.status,
            RolloutStatus::Promoted | RolloutStatus::Aborted
        );
        match (terminal, finished_at) {
            (true, None) => finished_at = Some(Instant::now()),
            (true, Some(at)) if at.elapsed() >= Duration::from_secs(2) => break,
            _ => {}
        }
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    story.print_new();
    let failed = errors.load(Ordering::Relaxed);
    let total = all_hits.load(Ordering::Relaxed);
    if let Some((state, _)) = runtime
        .state
        .snapshot
        .load()
        .routes
        .first()
        .and_then(|r| r.rollout.as_ref())
        .and_then(|r| r.snapshot())
    {
        println!();
        println!(
            "Rollout {} at step {}; {failed} of {total} requests failed.",
            state.status.as_str(),
            state.step + 1
        );
    }
    stop.now().await;
    Ok(())
}
