//! The plugins directory: every `*.wasm` in it is loaded at start (in the
//! background: the server already answers), and changes are picked up while
//! serving.
//!
//! Writers should create the file under another name and rename it into place;
//! in any case a change is only read once the directory has been quiet for the
//! debounce period, and a file that is still incomplete fails validation and
//! is retried on its next change. Deleting a file does not unload its plugin
//! (use `DELETE /plugins/{name}`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use super::registry::Runtime;

/// How long the directory must be quiet before a change is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(400);

/// The plugin files in `dir`, smallest first: at start they load one after another, and a
/// Rust plugin (kilobytes, compiled in a blink) should not wait behind a Python one (18 MB).
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_plugin(path))
        .map(|path| (std::fs::metadata(&path).map_or(0, |m| m.len()), path))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Loads `files` one after another, each listed as queued in [`Runtime::compiling`] until its
/// turn, logging (not failing on) the ones that are refused. Returns how many loaded.
pub async fn load_all(runtime: &Arc<Runtime>, files: &[PathBuf]) -> usize {
    for path in files {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        runtime.queue(&origin(path), usize::try_from(size).unwrap_or(usize::MAX));
    }
    let mut loaded = 0;
    for path in files {
        loaded += usize::from(load_file(runtime, path).await);
    }
    loaded
}

/// Watches `dir` until the returned guard is dropped.
pub fn watch(runtime: Arc<Runtime>, dir: &Path) -> anyhow::Result<DirWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| match result {
        Ok(events) => {
            for event in events {
                let _ = tx.send(event.path);
            }
        }
        Err(error) => tracing::warn!(%error, "plugin directory watch error"),
    })?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while let Some(path) = rx.recv().await {
            if is_plugin(&path) && path.is_file() {
                load_file(&runtime, &path).await;
            }
        }
    });
    tracing::info!(dir = %dir.display(), "watching for plugins");
    Ok(DirWatcher {
        _debouncer: debouncer,
        task,
    })
}

/// Keeps the directory watched while alive.
pub struct DirWatcher {
    _debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_plugin(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
}

/// A plugin file's name, which names it in `GET /plugins` and in errors.
fn origin(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

async fn load_file(runtime: &Arc<Runtime>, path: &Path) -> bool {
    let origin = origin(path);
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(file = %origin, %error, "cannot read plugin");
            runtime.dequeue(&origin);
            return false;
        }
    };
    match runtime.load(bytes, &origin).await {
        Ok(info) => {
            tracing::info!(file = %origin, plugin = %info.name, hash = %info.hash, "plugin file loaded");
            true
        }
        Err(error) => {
            tracing::error!(file = %origin, %error, "plugin file refused");
            false
        }
    }
}
