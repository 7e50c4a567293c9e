//! Reload triggers for files Rampart reads while serving (docs/reload.md): the config, and
//! the TLS certificate and key. Each file is watched through its DIRECTORY with `notify`,
//! so in-place writes, atomic renames and the Kubernetes ConfigMap/Secret `..data` symlink
//! swap are all seen (a watch on the file itself dies at the first swap, and no event names
//! the file during a swap). Bursts are debounced; the callback re-reads through the path and
//! acts only if the content changed. SIGHUP and a periodic check are backups.
//!
//! Public because `rampart injector` reloads its own certificate the same way.

use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a burst of file events must be quiet before the callback runs.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(200);

/// Longest a burst may defer the callback, a safety net: events about other files are
/// already ignored (see [`relevant_names`]), so only the watched files themselves changing
/// without pause could hold a reload back.
pub(crate) const MAX_DEFER: Duration = Duration::from_secs(2);

/// The directory entries whose events matter for `files`: the files' own names, the names
/// they link to inside the same directory, and Kubernetes' `..data`-style entries (during
/// a ConfigMap or Secret swap no event names the file itself). A log written beside the
/// config then never delays or triggers a reload.
fn relevant_names(files: &[&Path]) -> Vec<std::ffi::OsString> {
    let mut names = Vec::new();
    for file in files {
        if let Some(name) = file.file_name() {
            names.push(name.to_os_string());
        }
        if let Ok(target) = std::fs::read_link(file) {
            if target.parent().is_none_or(|p| p.as_os_str().is_empty()) {
                if let Some(name) = target.file_name() {
                    names.push(name.to_os_string());
                }
            }
        }
    }
    names
}

fn is_relevant(event: &notify::Event, names: &[std::ffi::OsString]) -> bool {
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy().starts_with("..") || names.iter().any(|n| n == name)
            })
        })
}

/// Watches the directories of `files` and runs `on_change` (on a blocking thread) after
/// each debounced burst of events. Returns the watcher, which must be kept alive; `None`
/// if watching is impossible (the periodic check still catches changes).
pub fn spawn<F>(
    what: &'static str,
    files: &[&Path],
    on_change: F,
) -> Option<notify::RecommendedWatcher>
where
    F: Fn() + Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let names = relevant_names(files);
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !is_relevant(&event, &names) => {}
            // An error (e.g. the kernel's event queue overflowed) may hide a change: look.
            _ => {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(what, error = %e, "cannot watch files; relying on SIGHUP and the periodic check");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| watch_dir(f)).collect();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(what, error = %e, dir = %dir.display(), "cannot watch the directory; relying on SIGHUP and the periodic check");
            return None;
        }
        tracing::info!(what, dir = %dir.display(), "watching for changes");
    }
    let on_change = Arc::new(on_change);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for DEBOUNCE, or at most
            // MAX_DEFER since the burst began.
            let burst_end = tokio::time::Instant::now() + MAX_DEFER;
            loop {
                let quiet = tokio::time::Instant::now() + DEBOUNCE;
                match tokio::time::timeout_at(quiet.min(burst_end), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet_or_too_long) => break,
                }
            }
            let on_change = Arc::clone(&on_change);
            // Reading and hashing files is blocking I/O: keep it off the data plane.
            let _ = tokio::task::spawn_blocking(move || on_change()).await;
        }
    });
    Some(watcher)
}

fn watch_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> notify::Event {
        notify::Event::new(notify::EventKind::Any).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_the_config_and_configmap_entries_are_relevant() {
        let names = relevant_names(&[Path::new("/etc/rampart/rampart.yaml")]);
        assert!(is_relevant(&event("/etc/rampart/rampart.yaml"), &names));
        assert!(is_relevant(&event("/etc/rampart/..data_tmp"), &names));
        assert!(is_relevant(
            &event("/etc/rampart/..2026_11_25_10_00_00.123"),
            &names
        ));
        assert!(!is_relevant(&event("/etc/rampart/stderr.log"), &names));
        assert!(!is_relevant(
            &event("/etc/rampart/.rampart.yaml.swp"),
            &names
        ));
    }
}
