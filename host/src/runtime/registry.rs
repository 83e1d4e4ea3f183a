//! The set of loaded plugins, by name, and how a new version replaces an old one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use super::commands::{AggregateConfig, Aggregates, Command, CommandOutcome, CommandStats};
use super::engine::PluginEngine;
use super::error::RuntimeError;
use super::limits::LimitPolicy;
use super::plugin::{Plugin, PluginKind};
use super::projection::{
    CheckpointPolicy, FailurePolicy, ParkReport, ProjectionRunner, ProjectionStatus, RunnerOptions,
};
use super::upcast::{Upcaster, UpcasterChain};
use super::uploads::Uploads;
use crate::journal::{AppendResult, ExpectedVersion, Journal, NewEvent, ParkedEvent, in_category};

/// Query calls running at once in the whole host (see `projection::runner`).
const QUERY_SLOTS: usize = 8;

/// Everything the runtime is tuned by.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Every plugin's limits.
    pub limits: LimitPolicy,
    /// The live aggregate cache.
    pub aggregates: AggregateConfig,
    /// When projections save checkpoints.
    pub checkpoints: CheckpointPolicy,
    /// What projections do with an event they cannot fold, unless set per plugin.
    pub failure_policy: FailurePolicy,
    /// Where compiled components are cached (none: compile every load).
    pub cache_dir: Option<std::path::PathBuf>,
    /// The `foldhost` binary that compiles plugins in a child process (see
    /// [`PluginEngine::compile_in_child`]); none: in this process.
    pub compiler: Option<std::path::PathBuf>,
    /// Where uploaded plugins are kept so that a restart loads them again (see [`Uploads`]);
    /// none: an upload lasts until the runtime stops.
    pub uploads_dir: Option<std::path::PathBuf>,
}

/// What [`Runtime::install_file`] did with a file's build.
pub enum FileInstall {
    /// Installed, replacing the kept upload if there was one.
    Installed(PluginInfo),
    /// Passed over for the kept upload deployed after it; installed after all if that upload
    /// does not load at start.
    PassedOver(Arc<Plugin>),
}

/// A loaded plugin as `GET /plugins` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// The world it implements.
    pub kind: PluginKind,
    /// Hex SHA-256 of its component.
    pub hash: String,
    /// Its own release, free-form.
    pub version: String,
    /// Its snapshot encoding (bumped when that changes).
    pub state_schema: u32,
    /// `live` for aggregates; the projection's status otherwise.
    pub status: ProjectionStatus,
    /// A newer version still catching up before it takes over.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub pending: Option<Box<PluginInfo>>,
    /// Why the last attempt to replace this plugin failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Projections: events read from the journal since this version started
    /// (after a restart, only those past its checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// Projections: events it skipped because it could not fold them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parked: Option<usize>,
    /// Projections: what it does with an event it cannot fold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<FailurePolicy>,
}

/// A plugin file or upload being compiled, or a plugins-directory file waiting
/// for its turn at start, as `GET /plugins` shows it (a Python or JavaScript
/// component takes seconds to compile).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompilingInfo {
    /// The file or upload name.
    pub origin: String,
    /// Queued or compiling.
    pub status: CompileStatus,
}

/// `{"status": "queued", "bytes"}` or `{"status": "compiling", "bytes", "seconds"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CompileStatus {
    /// Waiting for its turn.
    Queued {
        /// Size of the file.
        bytes: usize,
    },
    /// Being compiled.
    Compiling {
        /// Size of the upload or file.
        bytes: usize,
        /// Since the compilation started.
        seconds: f64,
    },
}

/// A plugin file or upload that was refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The file or upload name.
    pub origin: String,
    /// Why it was refused.
    pub reason: String,
}

enum Entry {
    Aggregate(Arc<Plugin>),
    Projection {
        active: Arc<ProjectionRunner>,
        pending: Option<Arc<ProjectionRunner>>,
    },
    Upcaster(Arc<Upcaster>),
}

#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
    last_error: Option<String>,
    /// While an uploaded projection build catches up: its hash, and the kept upload as it was
    /// before (see [`Uploads::store`]), put back unless that build takes over, so a restart
    /// loads what serves rather than a build that faulted or was superseded.
    upload_before: Option<(String, Option<Vec<u8>>)>,
}

/// Loaded plugins plus the services that run them.
pub struct Runtime {
    engine: PluginEngine,
    journal: Journal,
    aggregates: Aggregates,
    checkpoints: CheckpointPolicy,
    failure_policy: FailurePolicy,
    /// Each projection's failure policy, by plugin name, shared with its runs.
    policies: Mutex<BTreeMap<String, Arc<watch::Sender<FailurePolicy>>>>,
    queries: Arc<Semaphore>,
    plugins: RwLock<BTreeMap<String, Slot>>,
    /// Every loaded upcaster, in the order they run (changed only under the `plugins` lock).
    upcasters: RwLock<Arc<UpcasterChain>>,
    /// Refused loads whose plugin name is unknown, by origin.
    failures: RwLock<BTreeMap<String, String>>,
    /// Files queued at start (no start time yet), then compilations in progress: origin, size
    /// and start of each.
    compiling: Mutex<Vec<(String, usize, Option<Instant>)>>,
    /// The uploads kept for the next start.
    uploads: Option<Uploads>,
    /// By plugin, the SHA-256 of the plugins directory file whose build was last installed (or
    /// passed over for a kept upload): what an upload of the plugin replaces.
    directory_builds: Mutex<BTreeMap<String, String>>,
    /// Held while an upload is stored and installed, a directory file's build installed and
    /// the upload it supersedes removed, or a plugin unloaded and its upload removed: the
    /// uploads kept and the builds serving change together; and while a projection restarts
    /// or a reset's rebuild takes over its build's records.
    installing: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// A runtime on `journal`, with no plugins loaded yet.
    pub fn new(journal: Journal, config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        let mut engine = PluginEngine::with_policy(config.limits, config.cache_dir)?;
        if let Some(binary) = config.compiler {
            engine = engine.compile_in_child(binary);
        }
        let uploads = config
            .uploads_dir
            .map(|dir| {
                Uploads::open(&dir)
                    .with_context(|| format!("creating the directory of uploads {}", dir.display()))
            })
            .transpose()?;
        Ok(Arc::new(Self {
            aggregates: Aggregates::new(journal.clone(), config.aggregates),
            engine,
            journal,
            checkpoints: config.checkpoints,
            failure_policy: config.failure_policy,
            policies: Mutex::new(BTreeMap::new()),
            queries: Arc::new(Semaphore::new(QUERY_SLOTS)),
            plugins: RwLock::new(BTreeMap::new()),
            upcasters: RwLock::new(UpcasterChain::none()),
            failures: RwLock::new(BTreeMap::new()),
            compiling: Mutex::new(Vec::new()),
            uploads,
            directory_builds: Mutex::new(BTreeMap::new()),
            installing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The journal it runs on.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The engine plugins are compiled with.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Counters of the command pipeline (rounds, commands, re-decided rounds, queued commands).
    pub fn command_stats(&self) -> CommandStats {
        self.aggregates.stats()
    }

    /// Validates and installs a plugin (see [`compile`](Self::compile)).
    ///
    /// A new aggregate version takes effect for the next command; commands in
    /// flight finish on the old one. A new projection version catches up in the
    /// background while the old one keeps answering, and takes over once it
    /// reaches the head; if it fails first, the old one stays.
    pub async fn load(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<PluginInfo, RuntimeError> {
        let plugin = self.compile(bytes, origin).await?;
        self.install(plugin, origin)
    }

    /// Validates and compiles a plugin on the blocking pool, listed by
    /// [`compiling`](Self::compiling) meanwhile; a refusal is recorded (see
    /// [`PluginInfo::last_error`]). Install it with [`install`](Self::install).
    pub async fn compile(
        self: &Arc<Self>,
        bytes: impl AsRef<[u8]> + Send + 'static,
        origin: &str,
    ) -> Result<Arc<Plugin>, RuntimeError> {
        let len = bytes.as_ref().len();
        let engine = self.engine.clone();
        let origin_ = origin.to_owned();
        let started = Some(Instant::now());
        {
            let mut compiling = self.compiling.lock().expect("compiling lock");
            compiling.retain(|(o, _, s)| !(o == origin && s.is_none()));
            compiling.push((origin.to_owned(), len, started));
        }
        let loaded = super::blocking(move || {
            let loaded = Plugin::load(&engine, bytes.as_ref(), &origin_);
            crate::allocator::release_free_memory();
            loaded
        })
        .await;
        self.compiling
            .lock()
            .expect("compiling lock")
            .retain(|(o, _, s)| !(o == origin && *s == started));
        match loaded {
            Ok(plugin) => {
                self.failures.write().expect("failures lock").remove(origin);
                Ok(plugin)
            }
            Err(error) => {
                self.record_failure(origin, &error);
                Err(error)
            }
        }
    }

    /// Plugins being compiled now, and files queued at start.
    pub fn compiling(&self) -> Vec<CompilingInfo> {
        let compiling = self.compiling.lock().expect("compiling lock");
        compiling
            .iter()
            .map(|(origin, bytes, started)| CompilingInfo {
                origin: origin.clone(),
                status: match started {
                    None => CompileStatus::Queued { bytes: *bytes },
                    Some(started) => CompileStatus::Compiling {
                        bytes: *bytes,
                        seconds: started.elapsed().as_secs_f64(),
                    },
                },
            })
            .collect()
    }

    /// Lists file `origin` as queued in [`compiling`](Self::compiling) until its compilation
    /// starts (or [`dequeue`](Self::dequeue)).
    pub fn queue(&self, origin: &str, bytes: usize) {
        let mut compiling = self.compiling.lock().expect("compiling lock");
        compiling.push((origin.to_owned(), bytes, None));
    }

    /// Drops queued file `origin` that will not be compiled after all.
    pub fn dequeue(&self, origin: &str) {
        let mut compiling = self.compiling.lock().expect("compiling lock");
        compiling.retain(|(o, _, s)| !(o == origin && s.is_none()));
    }

    /// Refused loads not attributable to a loaded plugin (see [`PluginInfo::last_error`]).
    pub fn failures(&self) -> Vec<LoadFailure> {
        let failures = self.failures.read().expect("failures lock");
        failures
            .iter()
            .map(|(origin, reason)| LoadFailure {
                origin: origin.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// A refused new version of a loaded plugin (`name.wasm` or an upload named
    /// `name`) is reported on that plugin; anything else by origin.
    fn record_failure(&self, origin: &str, error: &RuntimeError) {
        let file = origin.strip_prefix("uploads/").unwrap_or(origin);
        let name = file
            .strip_suffix(".wasm")
            .or_else(|| file.strip_suffix(".upload"))
            .unwrap_or(file);
        let mut plugins = self.plugins.write().expect("plugin table lock");
        match plugins.get_mut(name) {
            Some(slot) if slot.entry.is_some() => slot.last_error = Some(error.to_string()),
            _ => {
                drop(plugins);
                let mut failures = self.failures.write().expect("failures lock");
                failures.insert(origin.to_owned(), error.to_string());
            }
        }
    }

    /// Installs a compiled plugin (see [`load`](Self::load)); a refusal (a name
    /// clash) is recorded under `origin` like a compile failure.
    pub fn install(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        origin: &str,
    ) -> Result<PluginInfo, RuntimeError> {
        let installed = self.try_install(plugin);
        if let Err(error) = &installed {
            self.record_failure(origin, error);
        }
        installed
    }

    /// Installs an uploaded plugin and keeps `bytes`, the component it was compiled from, so
    /// that a restart loads it again (see [`Uploads`]): stored first, so a build that answered
    /// an upload is never lost, and put back as it was if the install is refused.
    pub async fn install_upload(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        bytes: bytes::Bytes,
    ) -> Result<PluginInfo, RuntimeError> {
        let name = plugin.name().to_owned();
        let _turn = self.installing.lock().await;
        let Some(uploads) = self.uploads.clone() else {
            return self.install(plugin, &name);
        };
        // The file of the plugins directory this upload replaces: the one an earlier upload
        // replaced, or the last one installed.
        let directory = self
            .directory_builds
            .lock()
            .expect("builds lock")
            .get(&name)
            .cloned();
        let before = on_kept(&uploads, &name, "storing", move |uploads, name| {
            let replaces = uploads.replaces(name)?.unwrap_or(directory);
            uploads.store(name, replaces.as_deref(), &bytes)
        })
        .await?;
        // An upload still catching up that this one supersedes had kept what serves.
        let earlier = self
            .slot_mut(&name, |slot| slot.upload_before.take())
            .flatten();
        let hash = plugin.hash.clone();
        let installed = self.install(plugin, &name);
        match &installed {
            Err(_) => {
                self.slot_mut(&name, |slot| slot.upload_before = earlier);
                self.put_back(&uploads, &name, before).await;
            }
            Ok(info) if info.pending.is_some() => {
                let before = earlier.map_or(before, |(_, serving)| serving);
                self.slot_mut(&name, |slot| slot.upload_before = Some((hash, before)));
            }
            Ok(_) => {}
        }
        installed
    }

    /// Runs `change` on the slot of `name`, if there is one.
    fn slot_mut<T>(&self, name: &str, change: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let mut plugins = self.plugins.write().expect("plugin table lock");
        plugins.get_mut(name).map(change)
    }

    /// Puts the kept upload of `name` back as it was (`before`), logging a failure.
    async fn put_back(&self, uploads: &Uploads, name: &str, before: Option<Vec<u8>>) {
        let restore = move |uploads: &Uploads, name: &str| uploads.restore(name, before);
        if let Err(error) = on_kept(uploads, name, "putting back", restore).await {
            tracing::error!(plugin = %name, %error, "a build that does not serve may load at the next start");
        }
    }

    /// Installs the build of a file of the plugins directory whose bytes have the SHA-256
    /// `file_hash`, and removes the kept upload of the same plugin, which it replaces; unless
    /// that upload replaced this very file (also copied again since): then the file's build is
    /// passed over, as the upload was deployed after it.
    pub async fn install_file(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        origin: &str,
        file_hash: String,
    ) -> Result<FileInstall, RuntimeError> {
        let _turn = self.installing.lock().await;
        let name = plugin.name().to_owned();
        let Some(uploads) = self.uploads.clone() else {
            return self.install(plugin, origin).map(FileInstall::Installed);
        };
        // An upload whose header cannot be read does not stand in the file's way (it fails to
        // load anyway): the file's build serves.
        let replaced = match on_kept(&uploads, &name, "reading", |u, n| u.replaces(n)).await {
            Ok(replaced) => replaced,
            Err(error) => {
                tracing::error!(file = %origin, %error, "the upload kept is unreadable: the plugins directory's file serves");
                None
            }
        };
        if replaced
            .as_ref()
            .is_some_and(|r| r.as_ref() == Some(&file_hash))
        {
            self.note_directory_build(&name, file_hash);
            tracing::info!(plugin = %name, file = %origin, "passed over for the upload kept, deployed after it");
            return Ok(FileInstall::PassedOver(plugin));
        }
        let info = self.install(plugin, origin)?;
        self.note_directory_build(&name, file_hash);
        if replaced.is_some() {
            match on_kept(&uploads, &name, "removing", |u, n| u.remove(n)).await {
                Ok(_) => {
                    tracing::info!(plugin = %name, file = %origin, "the plugins directory's file replaces the upload kept")
                }
                Err(error) => {
                    tracing::error!(%error, "the replaced upload may load at the next start")
                }
            }
        }
        Ok(FileInstall::Installed(info))
    }

    fn note_directory_build(&self, name: &str, file_hash: String) {
        let mut builds = self.directory_builds.lock().expect("builds lock");
        builds.insert(name.to_owned(), file_hash);
    }

    /// Installs a directory file's build passed over for a kept upload that did not load,
    /// unless a build of the plugin serves by now.
    pub async fn install_fallback(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        origin: &str,
    ) -> Result<Option<PluginInfo>, RuntimeError> {
        let _turn = self.installing.lock().await;
        if self.info(plugin.name()).is_ok() {
            return Ok(None);
        }
        self.install(plugin, origin).map(Some)
    }

    /// Installs the build of a kept upload whose file read `digest`, unless the file changed
    /// or was removed since (by an upload or an unload while it compiled). `None`: passed
    /// over.
    pub async fn install_kept(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        origin: &str,
        digest: [u8; 32],
    ) -> Result<Option<PluginInfo>, RuntimeError> {
        let _turn = self.installing.lock().await;
        if let Some(uploads) = &self.uploads {
            let now = on_kept(uploads, plugin.name(), "reading", |u, n| u.read(n)).await?;
            if now.is_none_or(|now| now.digest != digest) {
                tracing::info!(plugin = %plugin.name(), file = %origin, "not installed: the upload changed or was removed meanwhile");
                return Ok(None);
            }
        }
        self.install(plugin, origin).map(Some)
    }

    /// The files of the uploads kept from earlier runs (see [`Uploads`]), smallest first.
    pub fn kept_uploads(&self) -> std::io::Result<Vec<std::path::PathBuf>> {
        self.uploads
            .as_ref()
            .map_or(Ok(Vec::new()), |uploads| uploads.files())
    }

    fn try_install(self: &Arc<Self>, plugin: Arc<Plugin>) -> Result<PluginInfo, RuntimeError> {
        let name = plugin.name().to_owned();
        let mut plugins = self.plugins.write().expect("plugin table lock");
        // Only aggregates own streams, so only their names may not overlap.
        let clash = plugins
            .iter()
            .filter(|(_, slot)| matches!(slot.entry, Some(Entry::Aggregate(_))))
            .map(|(other, _)| other)
            .find(|other| in_category(other, &name) || in_category(&name, other))
            .filter(|_| plugin.kind() == PluginKind::Aggregate);
        if let Some(other) = clash {
            let longer = if other.len() > name.len() {
                other
            } else {
                &name
            };
            return Err(RuntimeError::NameClash {
                plugin: name.clone(),
                other: other.clone(),
                example: format!("{longer}-1"),
            });
        }
        // The key this build's state would have, folded through today's upcasters.
        let key = self.chain_for(&plugin).state_key(&plugin.hash);
        let slot = plugins.entry(name.clone()).or_default();
        let unchanged = match &mut slot.entry {
            Some(Entry::Aggregate(old)) => old.hash == plugin.hash,
            Some(Entry::Upcaster(old)) => old.plugin().hash == plugin.hash,
            Some(Entry::Projection { active, pending }) => {
                if active.state_key() == key {
                    // The latest upload wins: re-sending the serving build
                    // cancels a newer one still catching up.
                    if let Some(cancelled) = pending.take() {
                        // What serves is what is installed: kept or not, it stays.
                        slot.upload_before = None;
                        tracing::info!(plugin = %name, hash = %cancelled.plugin().hash, "pending projection version cancelled");
                        tokio::spawn(async move { cancelled.stop().await });
                    }
                    true
                } else {
                    pending.as_ref().is_some_and(|p| p.state_key() == key)
                }
            }
            None => false,
        };
        let policy = self.policy_of(&name);
        if unchanged {
            return Ok(info(slot, &policy).expect("slot is filled"));
        }
        tracing::info!(plugin = %name, hash = %plugin.hash, kind = ?plugin.kind(), "loading plugin");
        slot.last_error = None;
        slot.upload_before = None;
        let kind = plugin.kind();
        let old = slot.entry.take();
        let replaces_upcaster = matches!(old, Some(Entry::Upcaster(_)));
        match (kind, old) {
            (PluginKind::Aggregate, old) => {
                if let Some(old) = old {
                    self.retire(old);
                }
                self.aggregates.track(&plugin);
                slot.entry = Some(Entry::Aggregate(plugin));
            }
            (PluginKind::Projection, Some(Entry::Projection { active, pending })) => {
                // A still-pending older upload is superseded: stop its replay.
                if let Some(superseded) = pending {
                    tokio::spawn(async move { superseded.stop().await });
                }
                let pending = Arc::new(self.start_projection(plugin, false));
                self.promote_when_live(&name, pending.clone());
                slot.entry = Some(Entry::Projection {
                    active,
                    pending: Some(pending),
                });
            }
            (PluginKind::Projection, old) => {
                if let Some(old) = old {
                    self.retire(old);
                }
                let active = Arc::new(self.start_projection(plugin, false));
                slot.entry = Some(Entry::Projection {
                    active,
                    pending: None,
                });
            }
            (PluginKind::Upcaster, old) => {
                let upcaster = match Upcaster::new(plugin) {
                    Ok(upcaster) => upcaster,
                    Err(error) => {
                        // Refused: whatever served under this name stays.
                        slot.entry = old;
                        return Err(error);
                    }
                };
                if let Some(old) = old {
                    self.retire(old);
                }
                slot.entry = Some(Entry::Upcaster(upcaster));
            }
        }
        let info = info(slot, &policy).expect("slot was just filled");
        if kind == PluginKind::Upcaster || replaces_upcaster {
            self.rechain(&mut plugins);
        }
        Ok(info)
    }

    /// Stops what a plugin replaced by a new build serves: the cached states of an
    /// aggregate's build, a projection's replays. An upcaster leaves the chain when it is
    /// rebuilt.
    fn retire(&self, old: Entry) {
        match old {
            Entry::Aggregate(plugin) => self.aggregates.evict_plugin(&plugin.hash),
            Entry::Projection { active, pending } => {
                tokio::spawn(async move {
                    active.stop().await;
                    if let Some(pending) = pending {
                        pending.stop().await;
                    }
                });
            }
            Entry::Upcaster(_) => {}
        }
    }

    /// The upcasters that feed `plugin` (see [`UpcasterChain::for_plugin`]).
    fn chain_for(&self, plugin: &Plugin) -> Arc<UpcasterChain> {
        self.upcasters().for_plugin(plugin)
    }

    /// Every loaded upcaster, in the order they run: what readers asking for upcast events get.
    pub fn upcasters(&self) -> Arc<UpcasterChain> {
        self.upcasters.read().expect("upcaster chain lock").clone()
    }

    /// After an upcaster was loaded, replaced or unloaded: rebuilds the chain, and replays each
    /// projection whose events it changes through the new chain in the background; the rebuilt
    /// state takes over at the head, as a new build does (aggregates rehydrate through the new
    /// chain on their next command: their cached states carry the old chain's key).
    fn rechain(self: &Arc<Self>, plugins: &mut BTreeMap<String, Slot>) {
        let upcasters = plugins
            .values()
            .filter_map(|slot| match &slot.entry {
                Some(Entry::Upcaster(upcaster)) => Some(upcaster.clone()),
                _ => None,
            })
            .collect();
        *self.upcasters.write().expect("upcaster chain lock") = UpcasterChain::new(upcasters);
        for (name, slot) in plugins.iter_mut() {
            let Some(Entry::Projection { active, pending }) = &mut slot.entry else {
                continue;
            };
            // The newest build is the one to rebuild.
            let current = pending.as_ref().unwrap_or(active);
            let plugin = current.plugin().clone();
            let key = self.chain_for(&plugin).state_key(&plugin.hash);
            if current.state_key() == key {
                continue;
            }
            if let Some(superseded) = pending.take() {
                tokio::spawn(async move { superseded.stop().await });
            }
            if active.state_key() == key {
                continue; // back to the chain the serving state was folded through
            }
            tracing::info!(plugin = %name, "upcasters changed: rebuilding the projection");
            let rebuilt = Arc::new(self.start_projection(plugin, false));
            self.promote_when_live(name, rebuilt.clone());
            *pending = Some(rebuilt);
        }
    }

    /// Stops and forgets plugin `name`. Its snapshots and checkpoints stay in
    /// the journal (a later load of the same build resumes from them) unless
    /// `drop_data` is set.
    pub async fn unload(self: &Arc<Self>, name: &str, drop_data: bool) -> Result<(), RuntimeError> {
        let (runtime, name) = (self.clone(), name.to_owned());
        super::to_the_end(async move { runtime.unload_now(&name, drop_data).await }).await
    }

    async fn unload_now(self: &Arc<Self>, name: &str, drop_data: bool) -> Result<(), RuntimeError> {
        let _turn = self.installing.lock().await;
        // First, so that a plugin unloaded never comes back at the next start; an upload kept
        // that did not load (refused at start) is removed all the same.
        let removed = match &self.uploads {
            Some(uploads) => on_kept(uploads, name, "removing", |u, n| u.remove(n)).await?,
            None => false,
        };
        let slot = {
            let mut plugins = self.plugins.write().expect("plugin table lock");
            let slot = plugins.remove(name).and_then(|s| s.entry);
            if matches!(slot, Some(Entry::Upcaster(_))) {
                self.rechain(&mut plugins);
            }
            slot
        };
        let Some(slot) = slot else {
            if removed {
                tracing::info!(plugin = %name, "removed the upload kept of a plugin not loaded");
                return Ok(());
            }
            return Err(RuntimeError::UnknownPlugin(name.to_owned()));
        };
        let hashes = match slot {
            Entry::Upcaster(_) => Vec::new(),
            Entry::Aggregate(plugin) => {
                self.aggregates.evict_plugin(&plugin.hash);
                if drop_data {
                    // A command still deciding stores no snapshot after the delete below.
                    self.aggregates.close_data(&plugin.hash).await;
                }
                vec![plugin.hash.clone()]
            }
            Entry::Projection { active, pending } => {
                active.stop().await;
                let mut hashes = vec![active.plugin().hash.clone()];
                if let Some(pending) = pending {
                    pending.stop().await;
                    hashes.push(pending.plugin().hash.clone());
                }
                hashes
            }
        };
        // Still under the turn: a load of the same build does not resume from data about to go.
        if drop_data {
            for hash in hashes {
                self.journal.delete_plugin_data(&hash).await?;
            }
        }
        tracing::info!(plugin = %name, drop_data, "unloaded plugin");
        Ok(())
    }

    /// Stops every projection and forgets every plugin, so that the journal
    /// can be closed. Checkpoints stay.
    pub async fn shutdown(&self) {
        let slots = std::mem::take(&mut *self.plugins.write().expect("plugin table lock"));
        for slot in slots.into_values() {
            if let Some(Entry::Projection { active, pending }) = slot.entry {
                active.stop().await;
                // Save what was folded since the last checkpoint, so a restart
                // resumes exactly here.
                if let Err(error) = active.save_checkpoint(&self.journal).await {
                    tracing::warn!(plugin = %active.plugin().name(), %error, "no checkpoint at shutdown");
                }
                if let Some(pending) = pending {
                    pending.stop().await;
                }
            }
        }
    }

    /// The uploads kept in the data directory, if the runtime keeps them.
    pub fn uploads(&self) -> Option<&Uploads> {
        self.uploads.as_ref()
    }

    /// Every loaded plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let plugins = self.plugins.read().expect("plugin table lock");
        plugins
            .iter()
            .filter_map(|(name, slot)| info(slot, &self.policy_of(name)))
            .collect()
    }

    /// One plugin's info.
    pub fn info(&self, name: &str) -> Result<PluginInfo, RuntimeError> {
        let plugins = self.plugins.read().expect("plugin table lock");
        plugins
            .get(name)
            .and_then(|slot| info(slot, &self.policy_of(name)))
            .ok_or_else(|| RuntimeError::UnknownPlugin(name.to_owned()))
    }

    /// The failure policy shared by every run of projection `name`.
    fn policy_of(&self, name: &str) -> Arc<watch::Sender<FailurePolicy>> {
        let mut policies = self.policies.lock().expect("policies lock");
        policies
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(watch::Sender::new(self.failure_policy)))
            .clone()
    }

    /// Sets what projection `name` does with an event it cannot fold, from now on. A
    /// projection already stopped at one stays stopped until [restarted](Self::restart).
    pub fn set_policy(&self, name: &str, policy: FailurePolicy) -> Result<(), RuntimeError> {
        self.projection(name)?;
        self.policy_of(name).send_replace(policy);
        tracing::info!(plugin = %name, %policy, "failure policy set");
        Ok(())
    }

    /// Up to `limit` of the events projection `name` skipped, by position, from the first
    /// after position `after`.
    pub async fn parked(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, RuntimeError> {
        let projection = self.projection(name)?;
        projection.parked(&self.journal, after, limit).await
    }

    /// Folds the parked events of projection `name` again (say, after a fix elsewhere).
    pub async fn replay_parked(&self, name: &str) -> Result<ParkReport, RuntimeError> {
        self.projection(name)?.replay_parked().await
    }

    /// Restarts projection `name` from its checkpoint: a stopped (faulted) one tries its
    /// failing event again, under the current policy.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<PluginInfo, RuntimeError> {
        let (runtime, name) = (self.clone(), name.to_owned());
        super::to_the_end(async move { runtime.restart_now(&name).await }).await
    }

    async fn restart_now(self: &Arc<Self>, name: &str) -> Result<PluginInfo, RuntimeError> {
        // Under the install turn: an unload that drops the plugin's data cannot come between
        // the stop and the checkpoint saved after it, which would write that data back.
        let _turn = self.installing.lock().await;
        let old = self.projection(name)?;
        old.stop().await;
        if let Err(error) = old.save_checkpoint(&self.journal).await {
            tracing::warn!(plugin = %name, %error, "no checkpoint before the restart");
        }
        let fresh = Arc::new(self.start_projection(old.plugin().clone(), false));
        {
            let mut plugins = self.plugins.write().expect("plugin table lock");
            if let Some(Slot {
                entry: Some(Entry::Projection { active, .. }),
                ..
            }) = plugins.get_mut(name)
                && Arc::ptr_eq(active, &old)
            {
                *active = fresh;
            }
        }
        tracing::info!(plugin = %name, "projection restarted");
        self.info(name)
    }

    /// Rebuilds projection `name` from position 1 in the background, trying every event
    /// again (parked ones included), while the current run keeps answering; the rebuild
    /// takes over at the head, as a new version does. It supersedes a pending version.
    pub fn reset(self: &Arc<Self>, name: &str) -> Result<PluginInfo, RuntimeError> {
        let current = self.projection(name)?;
        let rebuild = Arc::new(self.start_projection(current.plugin().clone(), true));
        {
            let mut plugins = self.plugins.write().expect("plugin table lock");
            if let Some(Slot {
                entry: Some(Entry::Projection { pending, .. }),
                ..
            }) = plugins.get_mut(name)
                && let Some(superseded) = pending.replace(rebuild.clone())
            {
                tokio::spawn(async move { superseded.stop().await });
            }
        }
        self.promote_when_live(name, rebuild);
        tracing::info!(plugin = %name, "projection reset: rebuilding from position 1");
        self.info(name)
    }

    /// The current version of aggregate plugin `name`.
    pub fn aggregate(&self, name: &str) -> Result<Arc<Plugin>, RuntimeError> {
        let plugins = self.plugins.read().expect("plugin table lock");
        match plugins.get(name).and_then(|s| s.entry.as_ref()) {
            Some(Entry::Aggregate(plugin)) => Ok(plugin.clone()),
            Some(Entry::Projection { .. } | Entry::Upcaster(_)) => Err(RuntimeError::WrongKind {
                plugin: name.to_owned(),
                expected: "aggregate",
            }),
            None => Err(RuntimeError::UnknownPlugin(name.to_owned())),
        }
    }

    /// The projection currently answering for `name`.
    pub fn projection(&self, name: &str) -> Result<Arc<ProjectionRunner>, RuntimeError> {
        let plugins = self.plugins.read().expect("plugin table lock");
        match plugins.get(name).and_then(|s| s.entry.as_ref()) {
            Some(Entry::Projection { active, .. }) => Ok(active.clone()),
            Some(Entry::Aggregate(_) | Entry::Upcaster(_)) => Err(RuntimeError::WrongKind {
                plugin: name.to_owned(),
                expected: "projection",
            }),
            None => Err(RuntimeError::UnknownPlugin(name.to_owned())),
        }
    }

    /// Runs command `command_type` with JSON `data` on aggregate `id` of plugin `name`.
    pub async fn execute(
        &self,
        name: &str,
        id: &str,
        command_type: &str,
        data: Vec<u8>,
    ) -> Result<CommandOutcome, RuntimeError> {
        self.execute_command(name, id, Command::new(command_type, data))
            .await
    }

    /// Runs `command` (which may carry an idempotency key) on aggregate `id` of plugin `name`.
    pub async fn execute_command(
        &self,
        name: &str,
        id: &str,
        command: Command,
    ) -> Result<CommandOutcome, RuntimeError> {
        let plugin = self.aggregate(name)?;
        let upcasters = self.chain_for(&plugin);
        self.aggregates
            .execute(&plugin, &upcasters, id, command)
            .await
    }

    /// The aggregate plugin whose streams include `stream` (`{name}-{id}`), if one is loaded.
    /// Names never overlap (see [`RuntimeError::NameClash`]), so there is at most one.
    pub fn owner(&self, stream: &str) -> Option<Arc<Plugin>> {
        let plugins = self.plugins.read().expect("plugin table lock");
        plugins.iter().find_map(|(name, slot)| match &slot.entry {
            Some(Entry::Aggregate(plugin)) if in_category(stream, name) => Some(plugin.clone()),
            _ => None,
        })
    }

    /// Appends `events` to `stream`. A stream of a loaded aggregate takes only events its
    /// plugin can fold onto the stream's state ([`RuntimeError::Refused`] otherwise, and
    /// nothing is stored), unless `validate` is off; other streams take anything.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        validate: bool,
    ) -> Result<AppendResult, RuntimeError> {
        match self.owner(stream).filter(|_| validate) {
            Some(plugin) => {
                let upcasters = self.chain_for(&plugin);
                self.aggregates
                    .append_validated(&plugin, &upcasters, stream, expected, events)
                    .await
            }
            None => Ok(self.journal.append(stream, expected, events).await?),
        }
    }

    /// The state of aggregate `id` of plugin `name`, now or at a past version.
    pub async fn aggregate_state(
        &self,
        name: &str,
        id: &str,
        at_version: Option<u64>,
    ) -> Result<(u64, serde_json::Value), RuntimeError> {
        let plugin = self.aggregate(name)?;
        let upcasters = self.chain_for(&plugin);
        self.aggregates
            .state(&plugin, &upcasters, id, at_version)
            .await
    }

    /// Starts a run of projection `plugin` fed through today's upcasters; a `fresh` one
    /// starts from position 1 (a reset).
    fn start_projection(&self, plugin: Arc<Plugin>, fresh: bool) -> ProjectionRunner {
        let options = RunnerOptions {
            upcasters: self.chain_for(&plugin),
            checkpoints: self.checkpoints.clone(),
            policy: self.policy_of(plugin.name()),
            fresh,
            queries: self.queries.clone(),
        };
        ProjectionRunner::start(plugin, self.journal.clone(), options)
    }

    /// Swaps `pending` in for the active version of `name` once it is live;
    /// records the reason and keeps the old version if it stops at an event first.
    ///
    /// The wait holds `pending` weakly: a run replaced, cancelled or unloaded before it got
    /// there is dropped with the table's last handle, which ends the wait (its status sender
    /// goes with it), and its store and memory go too.
    fn promote_when_live(self: &Arc<Self>, name: &str, pending: Arc<ProjectionRunner>) {
        let runtime = Arc::downgrade(self);
        let name = name.to_owned();
        let mut status = pending.watch_status();
        let pending = Arc::downgrade(&pending);
        let settled = |s: &ProjectionStatus| {
            matches!(
                s,
                ProjectionStatus::Live { .. } | ProjectionStatus::Faulted { .. }
            )
        };
        tokio::spawn(async move {
            loop {
                if status.wait_for(settled).await.is_err() {
                    return;
                }
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                // The install turn is taken before the swap and held until the old run stopped
                // and the new one adopted its records: an unload dropping the build's data, or
                // a restart, comes wholly before the swap (and ends this run) or wholly after.
                let _turn = runtime.installing.lock().await;
                let Some(pending) = pending.upgrade() else {
                    return;
                };
                // As it is now: a run live before the turn may have stopped at an event since,
                // or fallen behind again (then it is waited for again).
                let outcome = status.borrow_and_update().clone();
                if settled(&outcome) {
                    runtime.promote(&name, &pending, outcome).await;
                    return;
                }
            }
        });
    }

    /// Swaps `pending` in for the active run of `name` if `outcome` is live, or records why
    /// it stopped; under the install turn. The kept upload is settled first, so nothing tells
    /// of the outcome before a restart would load the build that serves.
    async fn promote(
        &self,
        name: &str,
        pending: &Arc<ProjectionRunner>,
        outcome: ProjectionStatus,
    ) {
        let took_over = match outcome {
            ProjectionStatus::Live { .. } => true,
            ProjectionStatus::Faulted { .. } => false,
            _ => return,
        };
        let Some(upload_before) =
            self.pending_slot(name, pending, |slot| slot.upload_before.take())
        else {
            return; // superseded by an even newer version, or unloaded
        };
        // Kept as uploaded only if the uploaded build is the one taking over.
        let kept = |hash: &String| took_over && *hash == pending.plugin().hash;
        if let (Some((hash, before)), Some(uploads)) = (upload_before, &self.uploads)
            && !kept(&hash)
        {
            self.put_back(uploads, name, before).await;
        }
        let old = self.pending_slot(name, pending, |slot| {
            let Some(Entry::Projection { active, pending: waiting }) = &mut slot.entry else {
                unreachable!("a pending run's slot holds a projection");
            };
            *waiting = None;
            match outcome {
                ProjectionStatus::Faulted { reason, .. } => {
                    tracing::error!(plugin = %name, %reason, "new projection version stopped; keeping the old one");
                    slot.last_error = Some(reason);
                    None
                }
                _ => {
                    tracing::info!(plugin = %name, hash = %pending.plugin().hash, "new projection version took over");
                    Some(std::mem::replace(active, pending.clone()))
                }
            }
        });
        if let Some(Some(old)) = old {
            // A reset of the same build writes its records once the old run stopped.
            old.stop().await;
            pending.adopt().await;
        }
    }

    /// Runs `change` on the slot of `name` while `pending` is its pending projection run;
    /// `None` once it is not.
    fn pending_slot<T>(
        &self,
        name: &str,
        pending: &Arc<ProjectionRunner>,
        change: impl FnOnce(&mut Slot) -> T,
    ) -> Option<T> {
        let mut plugins = self.plugins.write().expect("plugin table lock");
        let slot = plugins.get_mut(name)?;
        match &slot.entry {
            Some(Entry::Projection {
                pending: Some(current),
                ..
            }) if Arc::ptr_eq(current, pending) => Some(change(slot)),
            _ => None,
        }
    }
}

fn info(slot: &Slot, policy: &watch::Sender<FailurePolicy>) -> Option<PluginInfo> {
    let describe = |plugin: &Plugin, status: ProjectionStatus| PluginInfo {
        name: plugin.name().to_owned(),
        kind: plugin.kind(),
        hash: plugin.hash.clone(),
        version: plugin.description.plugin_version.clone(),
        state_schema: plugin.description.state_schema,
        status,
        pending: None,
        last_error: None,
        replayed: None,
        parked: None,
        policy: None,
    };
    let mut info = match slot.entry.as_ref()? {
        Entry::Aggregate(plugin) => describe(plugin, ProjectionStatus::Serving),
        Entry::Upcaster(upcaster) => describe(upcaster.plugin(), ProjectionStatus::Serving),
        Entry::Projection { active, pending } => {
            let describe_run = |run: &ProjectionRunner| PluginInfo {
                replayed: Some(run.replayed()),
                parked: Some(run.parked_count()),
                ..describe(run.plugin(), run.status())
            };
            let mut info = describe_run(active);
            info.policy = Some(*policy.borrow());
            info.pending = pending.as_ref().map(|p| Box::new(describe_run(p)));
            info
        }
    };
    info.last_error = slot.last_error.clone();
    Some(info)
}

/// Runs `work` on the upload kept of `name` on the blocking pool; its failure is the host's,
/// `doing` that upload (see [`Uploads`]).
async fn on_kept<T: Send + 'static>(
    uploads: &Uploads,
    name: &str,
    doing: &'static str,
    work: impl FnOnce(&Uploads, &str) -> std::io::Result<T> + Send + 'static,
) -> Result<T, RuntimeError> {
    let (uploads, name) = (uploads.clone(), name.to_owned());
    super::blocking(move || {
        work(&uploads, &name).map_err(|error| RuntimeError::HostFault {
            origin: name.clone(),
            fault: super::HostFault::io(
                format!("{doing} the upload kept for the next start"),
                &error,
            ),
        })
    })
    .await
}
