//! Replays the fuzz seed corpus and every input kept in `fuzz/regressions/` through the
//! checks the fuzz targets run (docs/fuzzing.md), so a bug the fuzzer found once stays fixed
//! in plain `cargo test`, without libFuzzer.
//!
//! An input whose bug is known but not fixed yet sits beside a `NAME.skip` file that says
//! why; it is skipped, and listed in the test output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// The inputs of one directory, sorted, each with the reason it is skipped, if it is.
fn inputs(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !(name.ends_with(".skip") || name.ends_with(".md") || name.starts_with('.'))
        })
        .map(|p| {
            let mut skip = p.clone().into_os_string();
            skip.push(".skip");
            let reason = std::fs::read_to_string(skip).ok();
            (p.clone(), reason)
        })
        .collect()
}

fn replay(target: &str) {
    let (_, check) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of fuzz/src/lib.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    let mut failures = Vec::new();
    for kind in ["corpus", "regressions"] {
        for (path, skip) in inputs(&root.join(kind).join(target)) {
            let shown = path.strip_prefix(&root).unwrap().display().to_string();
            if let Some(reason) = skip {
                let reason = reason.trim();
                assert!(!reason.is_empty(), "{shown}.skip must say why");
                println!("skipped fuzz/{shown}: {reason}");
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            match std::panic::catch_unwind(|| check(&data)) {
                Ok(()) => replayed += 1,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("fuzz/{shown}: {message}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seed corpus is checked in: finding nothing means the directories moved.
    assert!(
        replayed >= 5,
        "only {replayed} inputs replayed for {target}"
    );
}

#[test]
fn the_codec_reads_the_same_requests_whatever_the_read_boundaries() {
    replay("h1_split");
}

#[test]
fn the_http1_server_serves_exactly_the_requests_the_codec_lets_through() {
    replay("h1_serve");
}

#[test]
fn configs_are_refused_with_errors_or_accepted_with_every_promise_kept() {
    replay("config");
}

#[test]
fn admin_bodies_get_200_with_their_reason_or_400_with_a_message() {
    replay("admin_body");
}

#[test]
fn ofrep_bodies_get_a_context_answered_as_the_proxy_routes_or_an_error_code() {
    replay("ofrep_body");
}

#[test]
fn every_skip_file_belongs_to_an_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for (target, _) in harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if let Some(input) = path.to_str().and_then(|p| p.strip_suffix(".skip")) {
                assert!(
                    Path::new(input).is_file(),
                    "{} has no input beside it",
                    path.display()
                );
            }
        }
    }
}
