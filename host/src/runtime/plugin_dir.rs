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
//! is retried on its next change; one whose load met a host fault that may pass
//! (its compiler killed, memory ran out) is retried after a wait. Deleting a
//! file does not unload its plugin (use `DELETE /plugins/{name}`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use foldhost_plugin_build::{World, componentize, contract};
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::watch;

use super::error::RuntimeError;
use super::registry::{FileInstall, Runtime};
use super::uploads::Uploads;
use sha2::Digest;

/// How long the directory must be quiet before a change is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(400);

/// The plugin files in `dir`, smallest first: at start they load one after another, and a
/// Rust plugin (kilobytes, compiled in a blink) should not wait behind a Python one (18 MB).
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    list_with(dir, "wasm")
}

/// The files in `dir` ending in `.{extension}`, smallest first (see [`list`]).
pub(super) fn list_with(dir: &Path, extension: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
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

/// What a plugin file was when it was last read: a change of the file changes it, while
/// opening or reading it (which the watcher also reports) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    /// The stamp of the regular file at `path`, if there is one.
    fn of(path: &Path) -> Option<Stamp> {
        let metadata = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
        })
    }
}

/// The plugin files read so far, by name in the directory, as they were when read. By name,
/// since the watcher reports a file by another path than the listing when the directory was
/// given as a relative path (every file then loaded twice at start).
#[derive(Debug, Default)]
pub struct Read {
    stamps: HashMap<OsString, Stamp>,
    /// Held by each load of a file of the directory, so that loads (and retries, see
    /// [`retry_later`]) run one at a time, in the order they began: a retry of an old version
    /// never installs over a newer one loaded beside it.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl Read {
    /// Whether the file at `path` changed since it was last read (or was never read); if so,
    /// it counts as read as it is now.
    fn changed(&mut self, path: &Path) -> bool {
        let (Some(name), Some(stamp)) = (path.file_name(), Stamp::of(path)) else {
            return false;
        };
        self.stamps.insert(name.to_owned(), stamp) != Some(stamp)
    }
}

/// Where a plugin file lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The plugins directory: its build replaces the plugin's kept upload, unless that
    /// replaced this very file (see [`Runtime::install_file`]).
    Directory,
    /// The uploads kept in the data directory (see [`Runtime::install_upload`]).
    Uploads,
}

/// Loads `files` (of the plugins directory), then `uploads` (kept from earlier runs), one
/// after another, each listed as queued in [`Runtime::compiling`] until its turn, logging (not
/// failing on) the ones that are refused: first all but the projections, then the
/// projections, reporting each stage on `progress`, and noting each file in `read`. A file
/// whose build the plugin's kept upload replaced is passed over for the upload, and installed
/// after all if the upload does not load. Returns how many loaded.
pub async fn load_all(
    runtime: &Arc<Runtime>,
    files: &[PathBuf],
    uploads: &[PathBuf],
    progress: &watch::Sender<StartupLoad>,
    read: &mut Read,
) -> usize {
    for path in files {
        read.changed(path);
    }
    let placed = files
        .iter()
        .map(|path| (path, Place::Directory))
        .chain(uploads.iter().map(|path| (path, Place::Uploads)));
    let placed: Vec<(&PathBuf, Place)> = placed.collect();
    for (path, place) in &placed {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        runtime.queue(&origin(path, *place), size);
    }
    let (mut aggregates, mut projections) = (Vec::new(), Vec::new());
    for (path, place) in placed {
        match is_projection(path, place).await {
            true => projections.push((path, place)),
            false => aggregates.push((path, place)),
        }
    }
    let mut fallbacks = Fallbacks::default();
    let mut loaded = load_stage(runtime, &aggregates, &read.loading, &mut fallbacks).await;
    progress.send_replace(StartupLoad::AggregatesLoaded);
    loaded += load_stage(runtime, &projections, &read.loading, &mut fallbacks).await;
    progress.send_replace(StartupLoad::Loaded);
    loaded
}

/// The directory builds passed over at start for kept uploads, and the kept uploads that did
/// not load, by plugin: a build passed over for an upload that did not load is installed.
#[derive(Default)]
struct Fallbacks {
    passed: HashMap<String, (Arc<super::Plugin>, String)>,
    failed: HashSet<String>,
}

/// Loads one stage of the files at start, in order (see [`Fallbacks`]). Returns how many
/// loaded.
async fn load_stage(
    runtime: &Arc<Runtime>,
    stage: &[(&PathBuf, Place)],
    loading: &Arc<tokio::sync::Mutex<()>>,
    fallbacks: &mut Fallbacks,
) -> usize {
    let mut loaded = 0;
    for &(path, place) in stage {
        let fallback = match load_file(runtime, path, place, loading).await {
            Attempt::Loaded => {
                loaded += 1;
                continue;
            }
            Attempt::PassedOver(plugin) => {
                let name = plugin.name().to_owned();
                if !fallbacks.failed.contains(&name) {
                    fallbacks.passed.insert(name, (plugin, origin(path, place)));
                    continue;
                }
                (plugin, origin(path, place))
            }
            Attempt::Refused | Attempt::MayPass => {
                let Some(name) = Uploads::name_of(path).filter(|_| place == Place::Uploads) else {
                    continue;
                };
                fallbacks.failed.insert(name.to_owned());
                let Some(fallback) = fallbacks.passed.remove(name) else {
                    continue;
                };
                fallback
            }
        };
        let (plugin, origin) = fallback;
        loaded += usize::from(fall_back(runtime, plugin, &origin).await);
    }
    loaded
}

/// Installs a directory file's build passed over for a kept upload that did not load, unless
/// a build of the plugin serves by now; whether it was installed.
async fn fall_back(runtime: &Arc<Runtime>, plugin: Arc<super::Plugin>, origin: &str) -> bool {
    match runtime.install_fallback(plugin, origin).await {
        Ok(Some(info)) => {
            tracing::warn!(file = %origin, plugin = %info.name, "the upload kept did not load: the plugins directory's build serves");
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::error!(file = %origin, %error, "plugin file refused");
            false
        }
    }
}

/// Whether the file at `path` is a projection, as far as its declared world tells without
/// compiling it. A file that cannot be read or checked counts as not one: it loads early.
async fn is_projection(path: &Path, place: Place) -> bool {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = match place {
            Place::Uploads => Uploads::read_file(&path).ok()?.bytes,
            Place::Directory => std::fs::read(&path).ok()?,
        };
        let component = componentize::to_component(&bytes).ok()?;
        contract::check(&component).ok()
    })
    .await
    .is_ok_and(|world| world == Some(World::Projection))
}

/// Watches `dir` and loads each plugin file that changes, until the returned guard is dropped.
pub fn watch(runtime: Arc<Runtime>, dir: &Path) -> anyhow::Result<DirWatcher> {
    Ok(start_watching(dir)?.load_changes(runtime, Read::default()))
}

/// Changes to a watched directory, kept until [`load_changes`](Self::load_changes): a file
/// written while the directory is first loaded is not missed.
pub struct Watching {
    debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    changes: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
}

/// Starts watching `dir`.
pub fn start_watching(dir: &Path) -> anyhow::Result<Watching> {
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
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
    tracing::info!(dir = %dir.display(), "watching for plugins");
    Ok(Watching { debouncer, changes })
}

impl Watching {
    /// Loads each plugin file that changed since it was `read` (the watcher also reports files
    /// being opened and read, such as by the loads themselves).
    pub fn load_changes(self, runtime: Arc<Runtime>, mut read: Read) -> DirWatcher {
        let mut changes = self.changes;
        let task = tokio::spawn(async move {
            while let Some(path) = changes.recv().await {
                if is_plugin(&path) && read.changed(&path) {
                    load_file(&runtime, &path, Place::Directory, &read.loading).await;
                }
            }
        });
        DirWatcher {
            _debouncer: self.debouncer,
            task,
        }
    }
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

/// A plugin file's name, which names it in `GET /plugins` and in errors; an upload's is
/// `uploads/NAME.upload`.
fn origin(path: &Path, place: Place) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match place {
        Place::Directory => name,
        Place::Uploads => format!("uploads/{name}"),
    }
}

/// Loads the file at `path`, logging the outcome; a load that failed for a host reason that
/// may pass is tried again later (see [`retry_later`]). Whether it loaded.
async fn load_file(
    runtime: &Arc<Runtime>,
    path: &Path,
    place: Place,
    loading: &Arc<tokio::sync::Mutex<()>>,
) -> Attempt {
    let outcome = {
        let _turn = loading.lock().await;
        attempt(runtime, path, place).await
    };
    if let Attempt::MayPass = outcome {
        retry_later(runtime, path, place, loading.clone());
    }
    outcome
}

/// How one load of a plugin file ended.
enum Attempt {
    Loaded,
    /// A directory file's build, passed over for the plugin's kept upload.
    PassedOver(Arc<super::Plugin>),
    /// The file is not a plugin this host loads, or the host failed for good.
    Refused,
    /// The host failed for a reason that may pass (memory, disk space or processes ran out,
    /// the compiler was killed, the plugins' memory budget was held).
    MayPass,
}

/// The wait before a file whose load may pass is loaded again; it doubles after each failure,
/// up to [`RETRY_LONGEST`], as Akka's backoff supervisor restarts a failing child.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two loads of a file whose load may pass.
const RETRY_LONGEST: Duration = Duration::from_secs(60);
/// How many times a file whose load may pass is loaded again (over about two minutes) before
/// it waits for a change of the file or a restart: a compiler the out-of-memory killer ends
/// every time should not keep inviting it.
const RETRIES: u32 = 7;

/// Loads the file at `path` again after a wait, and again after longer waits while its load
/// may pass, at most [`RETRIES`] times, until it loads or is refused; each load takes its turn
/// on `loading`. Stops once the file changes (the watcher loads it then) or the runtime is
/// gone. Without this a plugin that met a passing host fault at start (its compiler killed by
/// the out-of-memory killer, say) stayed unloaded until the file changed or the host
/// restarted.
fn retry_later(
    runtime: &Arc<Runtime>,
    path: &Path,
    place: Place,
    loading: Arc<tokio::sync::Mutex<()>>,
) {
    let Some(stamp) = Stamp::of(path) else {
        return;
    };
    let (runtime, path) = (Arc::downgrade(runtime), path.to_owned());
    tokio::spawn(async move {
        let mut wait = RETRY_FIRST;
        for _ in 0..RETRIES {
            tokio::time::sleep(wait).await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            let _turn = loading.lock().await;
            if Stamp::of(&path) != Some(stamp) {
                return;
            }
            match attempt(&runtime, &path, place).await {
                Attempt::MayPass => wait = (wait * 2).min(RETRY_LONGEST),
                // Passed over for a kept upload: installed if that did not load meanwhile.
                Attempt::PassedOver(plugin) => {
                    fall_back(&runtime, plugin, &origin(&path, place)).await;
                    return;
                }
                Attempt::Loaded | Attempt::Refused => return,
            }
        }
        tracing::error!(
            file = %path.display(),
            "plugin file still not loaded after {RETRIES} tries; it loads when the file changes \
             or the host restarts"
        );
    });
}

/// What tells a plugin file read from others (see [`read_plugin`]).
enum Identity {
    /// A directory file's SHA-256, in hex: what a kept upload records it replaced.
    File(String),
    /// A kept upload file's SHA-256: whether it is still the file read.
    Upload([u8; 32]),
}

/// The component in the plugin file at `path`, and its identity, read on the blocking pool.
async fn read_plugin(path: &Path, place: Place) -> std::io::Result<(Vec<u8>, Identity)> {
    let path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || match place {
        Place::Uploads => {
            Uploads::read_file(&path).map(|kept| (kept.bytes, Identity::Upload(kept.digest)))
        }
        Place::Directory => std::fs::read(&path).map(|bytes| {
            let hash = hex::encode(sha2::Sha256::digest(&bytes));
            (bytes, Identity::File(hash))
        }),
    });
    read.await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

/// One load of the file at `path`, logged.
async fn attempt(runtime: &Arc<Runtime>, path: &Path, place: Place) -> Attempt {
    let origin = origin(path, place);
    let (bytes, identity) = match read_plugin(path, place).await {
        Ok(read) => read,
        Err(error) if place == Place::Uploads && error.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %origin, "the upload was removed meanwhile");
            runtime.dequeue(&origin);
            return Attempt::Refused;
        }
        Err(error) => {
            tracing::warn!(file = %origin, %error, "cannot read plugin");
            runtime.dequeue(&origin);
            return Attempt::Refused;
        }
    };
    let plugin = match runtime.compile(bytes, &origin).await {
        Ok(plugin) => plugin,
        Err(error) => return refused(&origin, error),
    };
    let installed = match identity {
        Identity::Upload(digest) => match runtime.install_kept(plugin, &origin, digest).await {
            Ok(Some(info)) => Ok(info),
            // Passed over (logged).
            Ok(None) => return Attempt::Refused,
            Err(error) => Err(error),
        },
        Identity::File(hash) => match runtime.install_file(plugin, &origin, hash).await {
            Ok(FileInstall::Installed(info)) => Ok(info),
            Ok(FileInstall::PassedOver(plugin)) => return Attempt::PassedOver(plugin),
            Err(error) => Err(error),
        },
    };
    match installed {
        Ok(info) => {
            tracing::info!(file = %origin, plugin = %info.name, hash = %info.hash, "plugin file loaded");
            Attempt::Loaded
        }
        Err(error) => refused(&origin, error),
    }
}

/// How a load of the file `origin` that failed with `error` ends, logged.
fn refused(origin: &str, error: RuntimeError) -> Attempt {
    match error {
        error if may_pass(&error) => {
            tracing::error!(
                file = %origin,
                %error,
                "plugin file not loaded yet; it is loaded again after a wait"
            );
            Attempt::MayPass
        }
        error @ RuntimeError::HostFault { .. } => {
            tracing::error!(
                file = %origin,
                %error,
                "plugin file not loaded; it loads when the file changes or the host restarts"
            );
            Attempt::Refused
        }
        error => {
            tracing::error!(file = %origin, %error, "plugin file refused");
            Attempt::Refused
        }
    }
}

/// Whether a load that failed with `error` may succeed if the same file is loaded again.
fn may_pass(error: &RuntimeError) -> bool {
    match error {
        RuntimeError::HostFault { fault, .. } => fault.transient,
        RuntimeError::MemoryBudget { .. } => true,
        _ => false,
    }
}
