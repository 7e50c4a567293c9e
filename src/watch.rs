//! Config reload triggers (SPEC section 8): a `notify` watch on the config file's
//! DIRECTORY, so in-place writes, atomic renames and the Kubernetes ConfigMap `..data`
//! symlink swap are all seen (a watch on the file itself dies at the first swap). Events
//! are debounced; the reload re-reads the file through its path and applies it only if its
//! sha256 changed. SIGHUP and a periodic hash check (in `runtime::serve`) are backups.

use crate::runtime::Runtime;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a burst of file events must be quiet before the reload runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches `config_path`'s directory and reloads on changes until the runtime stops.
/// Returns the watcher, which must be kept alive; `None` if watching is impossible (the
/// periodic check still catches changes, within 10 s).
pub fn spawn(runtime: Arc<Runtime>, config_path: PathBuf) -> Option<notify::RecommendedWatcher> {
    let dir = watch_dir(&config_path);
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
            tracing::warn!(error = %e, "cannot watch the config directory; relying on SIGHUP and the 10 s check");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; relying on SIGHUP and the 10 s check");
        return None;
    }
    tracing::info!(dir = %dir.display(), "watching the config directory");
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
            let runtime = Arc::clone(&runtime);
            let path = config_path.clone();
            // Reading and hashing the file is blocking I/O: keep it off the data plane.
            let _ = tokio::task::spawn_blocking(move || runtime.reload(&path)).await;
        }
    });
    Some(watcher)
}

fn watch_dir(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
