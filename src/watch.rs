//! Reload triggers for files Rampart reads while serving (SPEC section 8): the config, and
//! the TLS certificate and key. Each file is watched through its DIRECTORY with `notify`,
//! so in-place writes, atomic renames and the Kubernetes ConfigMap/Secret `..data` symlink
//! swap are all seen (a watch on the file itself dies at the first swap, and no event names
//! the file during a swap). Bursts are debounced; the callback re-reads through the path and
//! acts only if the content changed. SIGHUP and a periodic check are backups.

use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a burst of file events must be quiet before the callback runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

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
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
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
            // Debounce: wait until the directory has been quiet for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
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
