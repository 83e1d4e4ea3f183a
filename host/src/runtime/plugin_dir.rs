//! The plugins directory: every `*.wasm` in it is loaded at start (in the
//! background: the server already answers), and changes are picked up while
//! serving.
//!
//! At start, upcasters and aggregates load before projections, so that commands and appends,
//! which depend on them and never on a projection, need not wait for a projection to compile
//! (a Python one takes seconds): see [`StartupLoad`].
//!
//! Writers should create the file under another name and rename it into place;
//! in any case a change is only read once the directory has been quiet for the
//! debounce period, and a file that is still incomplete fails validation and
//! is retried on its next change. Deleting a file does not unload its plugin
//! (use `DELETE /plugins/{name}`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use foldhost_plugin_build::{World, componentize, contract};
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::watch;

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

/// How far the load of the plugins directory at start has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StartupLoad {
    /// Upcasters and aggregates are still loading.
    Loading,
    /// Every file but the projections has loaded (or been refused): commands and appends can
    /// go ahead.
    AggregatesLoaded,
    /// Every file has loaded (or been refused).
    Loaded,
}

/// Loads `files` one after another, each listed as queued in [`Runtime::compiling`] until its
/// turn, logging (not failing on) the ones that are refused: first all but the projections,
/// then the projections, reporting each stage on `progress`. Returns how many loaded.
pub async fn load_all(
    runtime: &Arc<Runtime>,
    files: &[PathBuf],
    progress: &watch::Sender<StartupLoad>,
) -> usize {
    for path in files {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        runtime.queue(&origin(path), usize::try_from(size).unwrap_or(usize::MAX));
    }
    let mut projections = Vec::new();
    let mut loaded = 0;
    for path in files {
        if is_projection(path).await {
            projections.push(path);
        } else {
            loaded += usize::from(load_file(runtime, path).await);
        }
    }
    progress.send_replace(StartupLoad::AggregatesLoaded);
    for path in projections {
        loaded += usize::from(load_file(runtime, path).await);
    }
    progress.send_replace(StartupLoad::Loaded);
    loaded
}

/// Whether the file at `path` is a projection, as far as its declared world tells without
/// compiling it. A file that cannot be read or checked counts as not one: it loads early.
async fn is_projection(path: &Path) -> bool {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let component = componentize::to_component(&bytes).ok()?;
        contract::check(&component).ok()
    })
    .await
    .is_ok_and(|world| world == Some(World::Projection))
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
