//! Black-box: live config reload (docs/reload.md, issue 4) against the real binary and real
//! upstreams on 127.0.0.1. The file is changed every way it is changed in the field (the
//! Kubernetes ConfigMap `..data` symlink swap, an atomic rename, an in-place write, a
//! half-finished write, a deletion, SIGHUP) and the proof is what clients and `/metrics`
//! see. Every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUTE: &str = "checkout";
/// ConfigMap key of the config file.
const FILE: &str = "rampart.yaml";
/// How long a change seen by the watcher may take to apply in these tests: the debounce is
/// 200 ms, the rest is margin for a loaded CI machine.
const APPLY_WITHIN: Duration = Duration::from_secs(5);

/// The config body: stable and canary, one route sending `percent` % of buckets (from 0)
/// to the canary.
fn body(stable: &Upstream, canary: &Upstream, percent: u32) -> String {
    config(
        "stable",
        &[stable, canary],
        &format!(
            "
            routes:
              - name: checkout
                identity: [header:x-user-id]
                split: [{{backend: canary, percent: {percent}}}]
            "
        ),
    )
}

/// An identity in buckets 2500..7500: stable under a 25 % split, canary under 75 %.
fn probe() -> String {
    find_identity(ROUTE, "probe", |b| (2500..7500).contains(&b))
}

/// Which upstream answers the probe.
async fn backend_of(rampart: &Rampart, identity: &str) -> String {
    rampart
        .get("/checkout", &[("x-user-id", identity)])
        .await
        .upstream()
}

/// Runs `check` every 20 ms until it holds or `within` has passed; how long it took.
async fn poll_until<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let tries = within.as_millis() / 20 + 2;
    for _ in 0..tries {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The canary's `rampart_split_ratio` on the route.
fn canary_ratio(metrics: &str) -> Option<f64> {
    metric(
        metrics,
        "rampart_split_ratio",
        &[("route", ROUTE), ("backend", "canary")],
    )
}

/// Whether `/metrics` says the config with this sha256 is the applied one.
fn applied_sha(metrics: &str, sha: &str) -> bool {
    metric(metrics, "rampart_config_info", &[("sha256", sha)]) == Some(1.0)
}

fn reloads(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        "rampart_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

fn last_reload_ok(metrics: &str) -> Option<f64> {
    metric(metrics, "rampart_config_last_reload_successful", &[])
}

/// Waits until `/metrics` shows `contents` applied with the canary at `percent` %;
/// panics with the metrics text if not within `within`. Returns how long it took.
async fn wait_applied(
    rampart: &Rampart,
    contents: &str,
    percent: u32,
    within: Duration,
) -> Duration {
    let sha = sha256_hex(contents.as_bytes());
    let ratio = f64::from(percent) / 100.0;
    let took = poll_until(within, || async {
        let m = rampart.metrics_text().await;
        applied_sha(&m, &sha) && canary_ratio(&m).is_some_and(|r| (r - ratio).abs() < 1e-9)
    })
    .await;
    match took {
        Some(took) => took,
        None => panic!(
            "config {sha} (canary {percent} %) not applied within {within:?}; metrics:\n{}",
            rampart.metrics_text().await
        ),
    }
}

/// Waits until the rejection counter exceeds `before`; the metrics text then.
async fn wait_rejected(rampart: &Rampart, before: f64) -> String {
    let found = poll_until(APPLY_WITHIN, || async {
        reloads(&rampart.metrics_text().await, "rejected") > before
    })
    .await;
    let metrics = rampart.metrics_text().await;
    assert!(
        found.is_some(),
        "no rejection counted within {APPLY_WITHIN:?}; metrics:\n{metrics}"
    );
    metrics
}

/// The process's JSON log lines.
fn log_lines(rampart: &Rampart) -> Vec<serde_json::Value> {
    rampart
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

/// Asserts `rampart` is still running.
fn assert_alive(rampart: &mut Rampart) {
    assert_eq!(
        rampart.exit_code(),
        None,
        "rampart exited; stderr:\n{}",
        rampart.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// How the file changes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn configmap_symlink_swap_is_applied_within_2s_twice_in_a_row() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    // The volume holds the ConfigMap's files only (rampart's log is one level up).
    let rampart = Rampart::start_at(&body(&stable, &canary, 25), |dir, contents| {
        let volume = dir.join("configmap");
        std::fs::create_dir_all(&volume).unwrap();
        configmap_create(&volume, "..2026_11_24_a", FILE, contents)
    })
    .await;
    let dir = rampart.dir().join("configmap");
    assert_eq!(rampart.config_path, dir.join(FILE));
    assert!(rampart
        .config_path
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(backend_of(&rampart, &probe).await, "stable");

    let swaps = [
        ("..2026_11_24_a", "..2026_11_24_b", 75, "canary"),
        ("..2026_11_24_b", "..2026_11_24_c", 25, "stable"),
    ];
    for (old, new, percent, expected) in swaps {
        let contents = format!(
            "{}{}",
            rampart.config_head(),
            body(&stable, &canary, percent)
        );
        configmap_swap(&dir, old, new, FILE, &contents);
        let took = wait_applied(&rampart, &contents, percent, Duration::from_secs(2)).await;
        eprintln!("ConfigMap swap {old} -> {new} applied after {took:?}");
        assert_eq!(backend_of(&rampart, &probe).await, expected);
        assert!(!dir.join(old).exists());
    }
    let m = rampart.metrics_text().await;
    assert_eq!(reloads(&m, "rejected"), 0.0, "{m}");
    assert_eq!(last_reload_ok(&m), Some(1.0), "{m}");
}

#[tokio::test]
async fn atomic_rename_over_the_file_is_applied() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    assert_eq!(backend_of(&rampart, &probe).await, "stable");

    let contents = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    rename_over(&rampart.config_path, &contents);
    wait_applied(&rampart, &contents, 75, APPLY_WITHIN).await;
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
}

#[tokio::test]
async fn in_place_write_is_applied() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    assert_eq!(backend_of(&rampart, &probe).await, "stable");

    let contents = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    std::fs::write(&rampart.config_path, &contents).unwrap();
    wait_applied(&rampart, &contents, 75, APPLY_WITHIN).await;
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
}

#[tokio::test]
async fn a_change_is_applied_while_another_file_in_the_directory_changes_all_the_time() {
    // A log written every 50 ms beside the config: the directory is never quiet for the
    // 200 ms debounce, yet the change must not wait for the 10 s periodic check.
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    let noise = rampart.dir().join("noise.log");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            use std::io::Write;
            let mut file = std::fs::File::create(&noise).unwrap();
            while !stop.load(Ordering::Relaxed) {
                writeln!(file, "noise").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let contents = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    rename_over(&rampart.config_path, &contents);
    let took = wait_applied(&rampart, &contents, 75, Duration::from_secs(4)).await;
    eprintln!("applied after {took:?} in a busy directory");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
}

#[tokio::test]
async fn sighup_applies_a_changed_file_at_once_even_where_the_watcher_cannot_see_it() {
    // The config is a symlink to a file in another directory: writes there raise no event
    // in the watched directory, so only SIGHUP (or the 10 s periodic check) can find them.
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start_at(&body(&stable, &canary, 25), |dir, contents| {
        let elsewhere = dir.join("elsewhere");
        let watched = dir.join("watched");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(&watched).unwrap();
        std::fs::write(elsewhere.join(FILE), contents).unwrap();
        let link = watched.join(FILE);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(elsewhere.join(FILE), &link).unwrap();
        link
    })
    .await;
    assert_eq!(backend_of(&rampart, &probe).await, "stable");

    let contents = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    std::fs::write(rampart.dir().join("elsewhere").join(FILE), &contents).unwrap();
    rampart.signal("HUP");
    let took = wait_applied(&rampart, &contents, 75, Duration::from_secs(2)).await;
    eprintln!("applied {took:?} after SIGHUP");
    assert_eq!(backend_of(&rampart, &probe).await, "canary");

    // It was the SIGHUP that applied it, not the periodic check.
    let lines = log_lines(&rampart);
    let hup = lines
        .iter()
        .position(|l| message(l).contains("SIGHUP"))
        .unwrap_or_else(|| panic!("no SIGHUP log line:\n{}", rampart.stderr()));
    let sha = sha256_hex(contents.as_bytes());
    let applied = lines
        .iter()
        .position(|l| message(l) == "config applied" && l["sha256"] == sha.as_str())
        .unwrap_or_else(|| panic!("no 'config applied' line for {sha}:\n{}", rampart.stderr()));
    assert!(
        hup < applied,
        "applied before the SIGHUP:\n{}",
        rampart.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Rejected files
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_yaml_is_rejected_counted_and_logged_with_its_position_and_restoring_the_file_turns_the_gauge_back_to_1(
) {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let mut rampart = Rampart::start(&body(&stable, &canary, 75)).await;
    let good = std::fs::read_to_string(&rampart.config_path).unwrap();
    let good_sha = sha256_hex(good.as_bytes());
    let before = rampart.metrics_text().await;
    assert_eq!(last_reload_ok(&before), Some(1.0), "{before}");

    // An unclosed flow sequence on the split line.
    let bad = good.replace("percent: 75}]", "percent: 25}");
    assert_ne!(bad, good);
    rename_over(&rampart.config_path, &bad);
    let m = wait_rejected(&rampart, reloads(&before, "rejected")).await;
    assert_eq!(last_reload_ok(&m), Some(0.0), "{m}");
    assert_eq!(reloads(&m, "applied"), reloads(&before, "applied"), "{m}");
    assert!(applied_sha(&m, &good_sha), "{m}");
    assert_eq!(canary_ratio(&m), Some(0.75), "{m}");
    assert_eq!(backend_of(&rampart, &probe).await, "canary");

    // The log names the file, line and column.
    let line = line_of(&bad, "split:");
    let path = rampart.config_path.display().to_string();
    let rejected: Vec<String> = log_lines(&rampart)
        .iter()
        .filter(|l| message(l).contains("config rejected"))
        .map(|l| l["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        rejected
            .iter()
            .any(|e| e.starts_with(&format!("{path}:{line}:"))),
        "no rejection naming {path}:{line}:COL: {rejected:?}"
    );

    // Putting the good file back (a revert) leaves the serving config as it is, and the
    // file and the running config agree again.
    rename_over(&rampart.config_path, &good);
    let ok = poll_until(APPLY_WITHIN, || async {
        last_reload_ok(&rampart.metrics_text().await) == Some(1.0)
    })
    .await;
    let m = rampart.metrics_text().await;
    assert!(ok.is_some(), "gauge not back to 1 after the revert:\n{m}");
    assert!(applied_sha(&m, &good_sha), "{m}");
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
    assert_alive(&mut rampart);
}

#[tokio::test]
async fn dangling_backend_is_rejected_routing_is_unchanged_and_fixing_the_file_applies_it() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    let before = rampart.metrics_text().await;
    let good_sha = sha256_hex(
        std::fs::read_to_string(&rampart.config_path)
            .unwrap()
            .as_bytes(),
    );

    let good_next = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    let dangling = good_next.replace("backend: canary", "backend: canaryy");
    rename_over(&rampart.config_path, &dangling);
    let m = wait_rejected(&rampart, reloads(&before, "rejected")).await;
    assert_eq!(last_reload_ok(&m), Some(0.0), "{m}");
    assert!(applied_sha(&m, &good_sha), "{m}");
    assert_eq!(canary_ratio(&m), Some(0.25), "{m}");
    assert_eq!(backend_of(&rampart, &probe).await, "stable");
    let line = line_of(&dangling, "canaryy");
    let stderr = rampart.stderr();
    assert!(
        stderr.contains(&format!("{}:{line}:", rampart.config_path.display()))
            && stderr.contains("canaryy"),
        "the rejection does not name line {line} and the backend:\n{stderr}"
    );

    rename_over(&rampart.config_path, &good_next);
    wait_applied(&rampart, &good_next, 75, APPLY_WITHIN).await;
    let m = rampart.metrics_text().await;
    assert_eq!(last_reload_ok(&m), Some(1.0), "{m}");
    assert_eq!(
        reloads(&m, "applied"),
        reloads(&before, "applied") + 1.0,
        "{m}"
    );
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
}

#[tokio::test]
async fn a_write_cut_off_mid_file_neither_crashes_nor_changes_routing_and_finishing_it_applies() {
    use std::io::Write;
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let mut rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    let before = rampart.metrics_text().await;
    let good_sha = sha256_hex(
        std::fs::read_to_string(&rampart.config_path)
            .unwrap()
            .as_bytes(),
    );

    // A writer that truncates the file, writes half of it (cut in the middle of the split
    // line), and stalls.
    let contents = format!("{}{}", rampart.config_head(), body(&stable, &canary, 75));
    let split_at = contents.find("split:").unwrap();
    let line_len = contents[split_at..].find('\n').unwrap();
    let cut = split_at + line_len / 2;
    let mut file = std::fs::File::create(&rampart.config_path).unwrap();
    file.write_all(&contents.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    let m = wait_rejected(&rampart, reloads(&before, "rejected")).await;
    assert!(applied_sha(&m, &good_sha), "{m}");
    assert_eq!(canary_ratio(&m), Some(0.25), "{m}");
    for _ in 0..5 {
        assert_eq!(backend_of(&rampart, &probe).await, "stable");
    }
    assert_alive(&mut rampart);

    // The writer finishes: the whole file applies.
    file.write_all(&contents.as_bytes()[cut..]).unwrap();
    file.flush().unwrap();
    drop(file);
    wait_applied(&rampart, &contents, 75, APPLY_WITHIN).await;
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
    let m = rampart.metrics_text().await;
    assert_eq!(last_reload_ok(&m), Some(1.0), "{m}");
    assert_alive(&mut rampart);
}

#[tokio::test]
async fn deleting_the_config_file_is_a_rejection_and_the_old_config_keeps_serving() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let mut rampart = Rampart::start(&body(&stable, &canary, 75)).await;
    let good = std::fs::read_to_string(&rampart.config_path).unwrap();
    let before = rampart.metrics_text().await;

    std::fs::remove_file(&rampart.config_path).unwrap();
    let m = wait_rejected(&rampart, reloads(&before, "rejected")).await;
    assert_eq!(last_reload_ok(&m), Some(0.0), "{m}");
    assert!(applied_sha(&m, &sha256_hex(good.as_bytes())), "{m}");
    for _ in 0..5 {
        assert_eq!(backend_of(&rampart, &probe).await, "canary");
    }
    assert_alive(&mut rampart);

    // The file comes back with new content: applied.
    let next = format!("{}{}", rampart.config_head(), body(&stable, &canary, 25));
    rename_over(&rampart.config_path, &next);
    wait_applied(&rampart, &next, 25, APPLY_WITHIN).await;
    assert_eq!(backend_of(&rampart, &probe).await, "stable");
    assert_eq!(last_reload_ok(&rampart.metrics_text().await), Some(1.0));
}

// ---------------------------------------------------------------------------------------------
// State across reloads, and requests during them
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_reload_that_keeps_route_and_backend_names() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    canary.set_status(500);
    let routes = "
        routes:
          - name: checkout
            identity: [header:x-user-id]
            split: [{backend: canary, percent: 100}]
            breaker: {window: 10s, min_requests: 100, max_error_rate: 0.5, consecutive_errors: 3, open_for: 60s}
        ";
    let rampart = Rampart::start(&config("stable", &[&stable, &canary], routes)).await;
    let open = |m: &str| {
        metric(
            m,
            "rampart_breaker_state",
            &[("route", ROUTE), ("backend", "canary"), ("state", "open")],
        )
    };
    for i in 0..10 {
        rampart
            .get("/checkout", &[("x-user-id", &format!("user-{i}"))])
            .await;
    }
    let m = rampart.metrics_text().await;
    assert_eq!(open(&m), Some(1.0), "the breaker did not open:\n{m}");
    assert_eq!(canary.hits(), 3);

    // An unrelated edit: another route appears; checkout, its backends and breaker stay.
    let extra = "  - name: search\n    match: {path_prefix: /search}\n    identity: [header:x-user-id]\n    split: [{backend: canary, percent: 10}]\n";
    let contents = format!(
        "{}{}{extra}",
        rampart.config_head(),
        config("stable", &[&stable, &canary], routes)
    );
    rename_over(&rampart.config_path, &contents);
    let sha = sha256_hex(contents.as_bytes());
    let applied = poll_until(APPLY_WITHIN, || async {
        applied_sha(&rampart.metrics_text().await, &sha)
    })
    .await;
    let m = rampart.metrics_text().await;
    assert!(applied.is_some(), "the edit was not applied:\n{m}");
    assert_eq!(open(&m), Some(1.0), "the breaker did not survive:\n{m}");
    for i in 0..10 {
        let resp = rampart
            .get("/checkout", &[("x-user-id", &format!("later-{i}"))])
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.upstream(), "stable");
    }
    assert_eq!(canary.hits(), 3, "the canary got traffic after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_see_no_failed_request_while_the_config_is_rewritten_40_times() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let rampart = Arc::new(Rampart::start(&body(&stable, &canary, 20)).await);
    let before = rampart.metrics_text().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let url = rampart.url("/checkout");
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut failures) = (0usize, Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("c{c}-{n}");
                match try_get(&client, &url, &[("x-user-id", &id)]).await {
                    Ok(r) if r.status == 200 && r.header("x-upstream").is_some() => ok += 1,
                    Ok(r) => failures.push(format!("{} {:?} {}", r.status, r.headers, r.text())),
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        }));
    }
    // Let every client get going before the first rewrite.
    let started = poll_until(APPLY_WITHIN, || async {
        stable.hits() + canary.hits() >= 8
    })
    .await;
    assert!(started.is_some(), "the clients did not get going");

    let mut last = String::new();
    let mut last_percent = 0;
    for i in 0..40 {
        let percent = if i % 2 == 0 { 80 } else { 20 };
        last = format!(
            "{}{}",
            rampart.config_head(),
            body(&stable, &canary, percent)
        );
        last_percent = percent;
        // Atomic renames, so no read can see half a file (in-place writes are tested
        // above; one read mid-write would be a legitimate rejection). Each is followed by
        // SIGHUP so every rewrite is applied: the watcher waits for 200 ms of quiet.
        rename_over(&rampart.config_path, &last);
        rampart.signal("HUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_applied(&rampart, &last, last_percent, APPLY_WITHIN).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    let m = rampart.metrics_text().await;
    let applied = reloads(&m, "applied") - reloads(&before, "applied");
    eprintln!("{ok} requests succeeded during {applied} applied reloads");
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok >= 40, "only {ok} requests were sent");
    assert!(applied >= 20.0, "only {applied} reloads applied:\n{m}");
    assert_eq!(reloads(&m, "rejected"), reloads(&before, "rejected"), "{m}");
    assert!(stable.hits() > 0 && canary.hits() > 0);
}

// ---------------------------------------------------------------------------------------------
// Start-up on an invalid file; settings that change only at restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn run_with_an_invalid_file_starts_on_the_last_good_config_and_says_so_loudly() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let mut rampart = Rampart::start(&body(&stable, &canary, 75)).await;
    let good = std::fs::read_to_string(&rampart.config_path).unwrap();
    let last_good = rampart.state_dir().join("last-good.yaml");
    let kept = poll_until(APPLY_WITHIN, || async {
        std::fs::read_to_string(&last_good).is_ok_and(|t| t == good)
    })
    .await;
    assert!(
        kept.is_some(),
        "no last good config in {}",
        last_good.display()
    );

    // Stopped, the file broken (bad YAML, so even `state_dir` cannot be parsed from it),
    // started again.
    rampart.signal("KILL");
    assert!(rampart.wait_exit(Duration::from_secs(10)).await.is_some());
    let broken = good.replace("percent: 75}]", "percent: 25}");
    std::fs::write(&rampart.config_path, &broken).unwrap();
    rampart.restart().await;

    assert_eq!(backend_of(&rampart, &probe).await, "canary");
    let m = rampart.metrics_text().await;
    assert_eq!(last_reload_ok(&m), Some(0.0), "{m}");
    assert!(applied_sha(&m, &sha256_hex(good.as_bytes())), "{m}");
    let loud = log_lines(&rampart)
        .into_iter()
        .find(|l| l["level"] == "ERROR" && message(l).contains("last good"));
    assert!(
        loud.is_some(),
        "no ERROR line about the last good config:\n{}",
        rampart.stderr()
    );

    // Reverting the file to the content that is serving: the file and the running config
    // agree again.
    rename_over(&rampart.config_path, &good);
    let ok = poll_until(APPLY_WITHIN, || async {
        last_reload_ok(&rampart.metrics_text().await) == Some(1.0)
    })
    .await;
    assert!(
        ok.is_some(),
        "gauge not back to 1:\n{}",
        rampart.metrics_text().await
    );
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
    assert_alive(&mut rampart);
}

#[tokio::test]
async fn run_with_an_invalid_file_and_no_last_good_config_exits_1() {
    let dir = TempDir::new("no-last-good");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let text = format!(
        "version: 1\nlisten: 127.0.0.1:{}\nmetrics_listen: 127.0.0.1:{}\nstate_dir: {}\ndefault_upstream: stable\nupstreams:\n  stable:\n    url: http://127.0.0.1:9\nroutes:\n  - name: checkout\n    split: [{{backend: nowhere, percent: 10}}]\n",
        free_port(),
        free_port(),
        state_dir.display()
    );
    let path = dir.write(FILE, &text);
    let out = run_cli(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = line_of(&text, "nowhere");
    assert!(
        out.all().contains(&format!("{}:{line}:", path.display())),
        "the error does not name line {line}:\n{}",
        out.all()
    );

    // Bad YAML and no state_dir at all: the same.
    let path = dir.write("broken.yaml", "version: 1\nlisten: [\n");
    let out = run_cli(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.all());
}

#[tokio::test]
async fn changing_listen_in_a_reload_applies_the_rest_warns_and_keeps_the_old_listener() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let probe = probe();
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;

    let head = rampart.config_head();
    let new_listen = format!("listen: 127.0.0.1:{}", free_port());
    let moved = head.replace(&format!("listen: {}", rampart.addr), &new_listen);
    assert_ne!(moved, head);
    let contents = format!("{moved}{}", body(&stable, &canary, 75));
    rename_over(&rampart.config_path, &contents);
    wait_applied(&rampart, &contents, 75, APPLY_WITHIN).await;
    // The old listener still serves, with the new split.
    assert_eq!(backend_of(&rampart, &probe).await, "canary");
    let warned = log_lines(&rampart)
        .into_iter()
        .any(|l| l["level"] == "WARN" && l["field"] == "listen");
    assert!(warned, "no warning naming listen:\n{}", rampart.stderr());
}

// ---------------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------------

/// Median and worst of `samples`.
fn median_and_worst(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

/// Changes the file `n` times with `change(i, contents)`, each time flipping the probe
/// between stable and canary, and times each from the change to the first request that
/// lands on the new backend. The probe's requests are the traffic.
async fn time_reloads(
    rampart: &Rampart,
    stable: &Upstream,
    canary: &Upstream,
    n: usize,
    mut change: impl FnMut(usize, &str),
) -> Vec<Duration> {
    let probe = probe();
    let mut samples = Vec::new();
    for i in 0..n {
        let (percent, expected) = if i % 2 == 0 {
            (75, "canary")
        } else {
            (25, "stable")
        };
        let contents = format!("{}{}", rampart.config_head(), body(stable, canary, percent));
        let start = Instant::now();
        change(i, &contents);
        let mut live = None;
        for _ in 0..100_000 {
            if backend_of(rampart, &probe).await == expected {
                live = Some(start.elapsed());
                break;
            }
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        samples.push(live.unwrap_or_else(|| panic!("reload {i} not live within 15 s")));
    }
    samples
}

/// Starts rampart with its config in `dir/conf/` (nothing else changes there).
async fn start_in_own_dir(body: &str) -> Rampart {
    Rampart::start_at(body, |dir, contents| {
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        let path = dir.join("conf").join(FILE);
        std::fs::write(&path, contents).unwrap();
        path
    })
    .await
}

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture to print the figures"]
async fn measure_time_from_file_change_to_new_split_live_over_20_reloads() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let mut results = Vec::new();

    let rampart = start_in_own_dir(&body(&stable, &canary, 25)).await;
    let path = rampart.config_path.clone();
    let samples = time_reloads(&rampart, &stable, &canary, 20, |_, c| rename_over(&path, c)).await;
    results.push(("atomic rename", samples));
    drop(rampart);

    let rampart = Rampart::start_at(&body(&stable, &canary, 25), |dir, contents| {
        let volume = dir.join("configmap");
        std::fs::create_dir_all(&volume).unwrap();
        configmap_create(&volume, "..gen_0", FILE, contents)
    })
    .await;
    let volume = rampart.dir().join("configmap");
    let samples = time_reloads(&rampart, &stable, &canary, 20, |i, c| {
        configmap_swap(
            &volume,
            &format!("..gen_{i}"),
            &format!("..gen_{}", i + 1),
            FILE,
            c,
        )
    })
    .await;
    results.push(("ConfigMap swap", samples));
    drop(rampart);

    // Rampart::start keeps rampart's stderr beside the config: under traffic its sampled
    // access log changes the watched directory all the time.
    let rampart = Rampart::start(&body(&stable, &canary, 25)).await;
    let path = rampart.config_path.clone();
    let samples = time_reloads(&rampart, &stable, &canary, 20, |_, c| rename_over(&path, c)).await;
    results.push(("atomic rename, log in the same directory", samples));

    for (what, samples) in results {
        let (median, worst) = median_and_worst(samples.clone());
        eprintln!(
            "{what}: median {median:?}, worst {worst:?} over {} reloads; all: {samples:?}",
            samples.len()
        );
    }
}
