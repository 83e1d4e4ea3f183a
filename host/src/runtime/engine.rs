//! The one wasmtime [`Engine`] shared by every plugin, its epoch clock, the
//! on-disk cache of compiled components and the child process that may compile them.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::host_fault::HostFault;
use super::limits::{LimitPolicy, Limits};
use super::sandbox::MemoryBudget;
use crate::durable;

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Maximum wasm stack per call, for every plugin (an engine-wide setting).
pub const MAX_WASM_STACK: usize = 512 << 10;

/// The shared engine plus what every instance needs to be confined.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    limits: LimitPolicy,
    /// What every store's memories and tables hold together, against the policy's budget.
    memory_budget: Arc<MemoryBudget>,
    cache_dir: Option<PathBuf>,
    /// The `foldhost` binary that compiles components in a child process, if any.
    compiler: Option<PathBuf>,
    _ticker: Arc<EpochTicker>,
}

impl PluginEngine {
    /// Builds the engine for plugins that all have the same `limits`.
    /// Compiled components are cached in `cache_dir` when given.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self> {
        Self::with_policy(limits.into(), cache_dir)
    }

    /// Builds the engine for plugins confined by `limits`. Compiled components
    /// are cached in `cache_dir` when given.
    pub fn with_policy(limits: LimitPolicy, cache_dir: Option<PathBuf>) -> Result<Self> {
        let engine = Engine::new(&config(limits.meters_fuel()))?;
        if let Some(dir) = &cache_dir {
            durable::create_dir_all(dir)
                .with_context(|| format!("creating component cache {}", dir.display()))?;
        }
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Self {
            engine,
            memory_budget: Arc::new(MemoryBudget::new(limits.memory_budget)),
            limits,
            cache_dir,
            compiler: None,
            _ticker: ticker,
        })
    }

    /// Compiles components with `foldhost compile-component` run from `binary` (see
    /// [`compile_child`]) rather than in this process, which then keeps none of the
    /// compiler's code pages, threads or working memory: a first start costs no more resident
    /// memory than a restart from the cache. Only with a cache directory.
    pub fn compile_in_child(mut self, binary: PathBuf) -> Self {
        self.compiler = Some(binary);
        self
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits of every plugin.
    pub fn limits(&self) -> &LimitPolicy {
        &self.limits
    }

    /// The host-wide budget every plugin instance's memories and tables draw on.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.memory_budget
    }

    /// Whether calls are metered with fuel (some plugin has a fuel budget).
    pub fn meters_fuel(&self) -> bool {
        self.limits.meters_fuel()
    }

    /// Compiles `bytes`, or loads the precompiled artifact cached for the same
    /// content and engine. Returns the component and its content hash (hex SHA-256).
    ///
    /// The cache only saves the next start a compilation: an artifact that cannot be read is
    /// compiled again, and one that cannot be written (a full or read-only disk) is logged and
    /// the component served as compiled.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Component, String), CompileError> {
        let hash = hex::encode(Sha256::digest(bytes));
        let Some(dir) = &self.cache_dir else {
            let component = Component::from_binary(&self.engine, bytes)
                .map_err(|error| CompileError::Refused(format!("{error:#}")))?;
            return Ok((component, hash));
        };
        let key = format!("{hash}-{:016x}", self.compatibility_hash());
        let artifact = dir.join(format!("{key}.cwasm"));
        if let Some(component) = self.load_cached(&key, &artifact) {
            return Ok((component, hash));
        }
        let compiled = match &self.compiler {
            Some(binary) => self.compile_in(binary, bytes)?,
            None => self
                .engine
                .precompile_component(bytes)
                .map_err(|error| CompileError::Refused(format!("{error:#}")))?,
        };
        // SAFETY: `compiled` is what `precompile_component` produced for this engine's
        // configuration, here or in a child running this same binary; wasmtime re-checks the
        // header.
        let component =
            unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(|error| {
                CompileError::Host(HostFault::new(
                    format!("could not load the code the compiler produced: {error:#}"),
                    false,
                ))
            })?;
        if let Err(error) = durable::write_atomically(&artifact, &seal(&key, &compiled)) {
            tracing::warn!(
                "could not write the compiled plugin cache at {}: {error}; the plugin is served \
                 as compiled, and the next start compiles it again",
                artifact.display()
            );
        }
        Ok((component, hash))
    }

    /// Runs `binary compile-component` on `bytes` and returns the compiled component.
    fn compile_in(&self, binary: &Path, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
        let mut command = Command::new(binary);
        command.arg(COMPILE_COMMAND);
        if self.meters_fuel() {
            command.arg("--fuel");
        }
        let mut child = command
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                let what = format!("could not start the compiler {}", binary.display());
                CompileError::Host(HostFault::io(what, &error))
            })?;
        // A child that failed early closed its stdin: its stderr says why.
        let _ = child.stdin.take().expect("piped").write_all(bytes);
        let output = child.wait_with_output().map_err(|error| {
            CompileError::Host(HostFault::io("could not wait for the compiler", &error))
        })?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let message = String::from_utf8_lossy(&output.stderr);
        let message = message.trim().trim_start_matches("error: ");
        Err(CompileError::of_child(output.status, message))
    }

    /// The component cached under `key` at `artifact`, unless it is missing, torn or foreign.
    fn load_cached(&self, key: &str, artifact: &Path) -> Option<Component> {
        let file = match std::fs::read(artifact) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(
                    "could not read the compiled plugin cache at {}: {error}; compiling again",
                    artifact.display()
                );
                return None;
            }
        };
        let Some(payload) = unseal(key, &file) else {
            tracing::warn!(path = %artifact.display(), "discarding cached component: checksum mismatch");
            return None;
        };
        // SAFETY: the checksum proves these are the bytes `Component::serialize` produced for
        // this content and engine configuration (both in `key`), written into a directory owned
        // by this host; wasmtime re-checks the header.
        match unsafe { Component::deserialize(&self.engine, payload) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(%error, path = %artifact.display(), "discarding unusable cached component");
                None
            }
        }
    }

    fn compatibility_hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish()
    }
}

/// The hidden subcommand of `foldhost` that runs [`compile_child`].
pub const COMPILE_COMMAND: &str = "compile-component";

/// Why [`PluginEngine::compile`] failed: the component's fault, or the host's.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The component is not one wasmtime compiles (invalid, or beyond the compiler's limits).
    #[error("{0}")]
    Refused(String),
    /// The host failed compiling it.
    #[error(transparent)]
    Host(HostFault),
}

impl CompileError {
    /// How a [`compile_child`] that ended with `status` after saying `message` failed: it
    /// exits with [`ComponentRefused::EXIT_CODE`] only when the component is at fault.
    fn of_child(status: ExitStatus, message: &str) -> Self {
        if status.code() == Some(ComponentRefused::EXIT_CODE.into()) {
            return Self::Refused(format!("{message} (compiler {status})"));
        }
        // SIGKILL is how the kernel's out-of-memory killer ends a process, and Rust aborts on
        // a failed allocation with this message: memory may be found on a retry.
        let out_of_memory =
            status.signal() == Some(libc::SIGKILL) || message.starts_with("memory allocation of");
        let message = match message {
            "" => format!("the compiler failed ({status})"),
            said => format!("the compiler failed ({status}): {said}"),
        };
        Self::Host(HostFault::new(message, out_of_memory))
    }
}

/// [`compile_child`]'s error when the component itself does not compile, as opposed to a
/// failure of its own (reading, writing): the parent tells them apart by its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComponentRefused(String);

impl ComponentRefused {
    /// The child's exit code for it (sysexits' EX_DATAERR).
    pub const EXIT_CODE: u8 = 65;
}

/// The child side of [`PluginEngine::compile_in_child`]: compiles the component on stdin for
/// an engine that meters fuel or not, and writes the compiled component to stdout.
pub fn compile_child(meters_fuel: bool) -> Result<()> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading the component")?;
    let compiled = Engine::new(&config(meters_fuel))?
        .precompile_component(&bytes)
        .map_err(|error| ComponentRefused(format!("{error:#}")))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&compiled)?;
    stdout.flush()?;
    Ok(())
}

/// The engine configuration; a compiled component loads only into an engine configured alike.
///
/// memory64 (on by default in wasmtime 48, and what 64-bit tables validate under too) and
/// custom page sizes are off: wasmtime fails some growths of 64-bit tables and of 1-byte-page
/// memories without asking the store's limiter first, and a component using them is refused
/// at load ("memory64 must be enabled for 64-bit tables"). The enabled features are part of
/// the engine's compatibility hash, so components cached by an engine that had them miss.
fn config(meters_fuel: bool) -> Config {
    let mut config = Config::new();
    config
        .wasm_memory64(false)
        .wasm_custom_page_sizes(false)
        .epoch_interruption(true)
        // Metering costs every plugin 15-50 %, so only when a budget asks for it.
        .consume_fuel(meters_fuel)
        .max_wasm_stack(MAX_WASM_STACK)
        .concurrency_support(false);
    config
}

/// A cached artifact is a checksum followed by the serialized component. The checksum is the
/// SHA-256 of the artifact's key (content hash and engine) and the component, so a torn write,
/// or a file written for another key, is detected before wasmtime maps a byte of it as code.
const CHECKSUM_LEN: usize = 32;

fn checksum(key: &str, component: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    hasher.update((key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(component);
    hasher.finalize().into()
}

fn seal(key: &str, component: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(CHECKSUM_LEN + component.len());
    sealed.extend_from_slice(&checksum(key, component));
    sealed.extend_from_slice(component);
    sealed
}

/// The component inside `file` if it was sealed under `key` and is intact.
fn unseal<'a>(key: &str, file: &'a [u8]) -> Option<&'a [u8]> {
    let (sum, component) = file.split_at_checked(CHECKSUM_LEN)?;
    (checksum(key, component) == sum).then_some(component)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_artifact_unseals_only_intact_and_under_its_key() {
        let sealed = seal("key", b"compiled code");
        assert_eq!(unseal("key", &sealed), Some(&b"compiled code"[..]));
        assert_eq!(unseal("other key", &sealed), None);
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(unseal("key", &flipped), None);
        assert_eq!(unseal("key", &sealed[..sealed.len() - 1]), None);
        assert_eq!(unseal("key", &sealed[..CHECKSUM_LEN - 1]), None);
        assert_eq!(unseal("key", b""), None);
    }

    #[test]
    fn only_a_child_that_refuses_the_component_blames_it() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let refused = CompileError::of_child(exited(65), "unknown binary version");
        assert!(
            matches!(&refused, CompileError::Refused(message)
                if message == "unknown binary version (compiler exit status: 65)"),
            "{refused:?}"
        );
        let host = |status, message| match CompileError::of_child(status, message) {
            CompileError::Host(fault) => fault,
            refused => panic!("{message}: {refused:?}"),
        };
        let killed = host(ExitStatus::from_raw(libc::SIGKILL), "");
        assert_eq!(
            killed,
            HostFault::new("the compiler failed (signal: 9 (SIGKILL))", true)
        );
        let starved = host(
            ExitStatus::from_raw(libc::SIGABRT),
            "memory allocation of 1048576 bytes failed",
        );
        assert!(starved.transient, "{starved:?}");
        let panicked = host(exited(101), "thread 'main' panicked at cranelift");
        assert!(!panicked.transient, "{panicked:?}");
        assert!(
            panicked
                .message
                .ends_with("(exit status: 101): thread 'main' panicked at cranelift"),
            "{panicked:?}"
        );
        let unread = host(exited(1), "reading the component: Input/output error");
        assert!(!unread.transient, "{unread:?}");
    }
}
