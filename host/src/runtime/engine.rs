//! The one wasmtime [`Engine`] shared by every plugin, its epoch clock and the
//! on-disk cache of compiled components.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits that confine every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget for one call into a plugin (one batch, one command).
    pub call_timeout: Duration,
    /// Linear-memory cap per plugin instance.
    pub max_memory: usize,
    /// Maximum wasm stack per call.
    pub max_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(1),
            max_memory: 64 << 20,
            max_stack: 512 << 10,
        }
    }
}

impl Limits {
    /// The call timeout in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// The shared engine plus what every instance needs to be confined.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    _ticker: Arc<EpochTicker>,
}

impl PluginEngine {
    /// Builds the engine. Compiled components are cached in `cache_dir` when given.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .max_wasm_stack(limits.max_stack)
            .concurrency_support(false);
        let engine = Engine::new(&config)?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating component cache {}", dir.display()))?;
        }
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Self {
            engine,
            limits,
            cache_dir,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles `bytes`, or loads the precompiled artifact cached for the same
    /// content and engine. Returns the component and its content hash (hex SHA-256).
    pub fn compile(&self, bytes: &[u8]) -> Result<(Component, String)> {
        let hash = hex::encode(Sha256::digest(bytes));
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::from_binary(&self.engine, bytes)?, hash));
        };
        let artifact = dir.join(format!("{hash}-{:016x}.cwasm", self.compatibility_hash()));
        if artifact.exists() {
            // SAFETY: the artifact was written by `Component::serialize` of this
            // engine configuration (the file name carries its compatibility hash)
            // into a directory owned by this host; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(&self.engine, &artifact) } {
                Ok(component) => return Ok((component, hash)),
                Err(error) => {
                    tracing::warn!(%error, path = %artifact.display(), "discarding unusable cached component")
                }
            }
        }
        let component = Component::from_binary(&self.engine, bytes)?;
        write_atomically(&artifact, &component.serialize()?)
            .with_context(|| format!("caching compiled component at {}", artifact.display()))?;
        Ok((component, hash))
    }

    fn compatibility_hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::Builder::new()
            .name("foldhost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
