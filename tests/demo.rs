//! `rampart demo` reads like a story (README.md "Try it", docs/deploy.md#rampart-demo): the
//! screen shows the tables and, between their rows, one human line per event that matters;
//! no JSON log line reaches the screen; the full logs are in a file named at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TempDir, RAMPART};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `rampart demo ARGS` with the temp dir at `tmp`, up to `limit`; returns (exit code,
/// stdout, stderr).
fn run_demo(args: &[&str], tmp: &TempDir, limit: Duration) -> (Option<i32>, String, String) {
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut child = Command::new(RAMPART)
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmp.path())
        .env_remove("RAMPART_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn rampart demo");
    let deadline = Instant::now() + limit;
    let mut status = None;
    for _ in 0..10_000 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "rampart demo did not exit within {limit:?}; stdout so far:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default()
        );
    };
    (
        status.code(),
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&err_path).unwrap(),
    )
}

fn is_json_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line.trim()).is_ok_and(|v| v.is_object())
}

#[test]
fn demo_prints_a_table_and_event_lines_and_writes_its_json_logs_to_the_file_it_names() {
    let tmp = TempDir::new("demo");
    // A 14 s first act: the canary fails from 3.5 s to 8.4 s, the breaker opens, fails a
    // probe at 5.5 s, and closes at the probe after the canary healed (about 9.5 s).
    let (code, stdout, stderr) = run_demo(&["--seconds", "14"], &tmp, Duration::from_secs(120));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let json_on_screen: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| is_json_line(l))
        .collect();
    assert!(
        json_on_screen.is_empty(),
        "JSON log lines on the screen: {json_on_screen:#?}\nstdout:\n{stdout}"
    );

    let has = |needle: &str| stdout.lines().any(|l| l.contains(needle));
    for needle in [
        "breaker OPENED     checkout -> canary",
        "breaker closed     checkout -> canary",
        "rollout ramp: step 1 passed",
        // Act 3: the breaker and the rollout together.
        "breaker OPENED     ramp -> canary",
        "FAILED, the canary's breaker opened",
        "rolled back to 0 %",
    ] {
        assert!(has(needle), "no event line with {needle:?}:\n{stdout}");
    }

    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let path = last
        .strip_prefix("Full logs (JSON lines): ")
        .unwrap_or_else(|| panic!("the last line names no log file: {last:?}\n{stdout}"));
    assert!(
        path.starts_with(&tmp.path().display().to_string()),
        "log file {path} is not in the temp dir"
    );
    let logs = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{path} is empty");
    for line in &lines {
        assert!(is_json_line(line), "not a JSON line in {path}: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("rollout verdict")),
        "no rollout verdict in the logs"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"breaker open\"")),
        "no breaker transition in the logs"
    );
}
