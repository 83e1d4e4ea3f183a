//! Confinement of plugin instances: one `Store` per instance with a memory cap,
//! and every call under an epoch deadline. A trapped store is never reused.

use wasmtime::{Store, StoreLimitsBuilder, Trap};

use super::bindings::PluginData;
use super::engine::PluginEngine;
use super::error::RuntimeError;

/// A fresh store for one instance of `plugin`, memory-capped.
pub fn new_store(engine: &PluginEngine, plugin: &str) -> Store<PluginData> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(engine.limits().max_memory)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine.engine(),
        PluginData {
            plugin: plugin.to_owned(),
            limits,
        },
    );
    store.limiter(|data| &mut data.limits);
    store.epoch_deadline_trap();
    store
}

/// Runs one call into the plugin with a fresh deadline. A wasm error becomes
/// [`RuntimeError::Trap`], described as `context` ("handling command X", ...).
pub fn guarded<R>(
    store: &mut Store<PluginData>,
    engine: &PluginEngine,
    context: impl FnOnce() -> String,
    call: impl FnOnce(&mut Store<PluginData>) -> wasmtime::Result<R>,
) -> Result<R, RuntimeError> {
    store.set_epoch_deadline(engine.limits().deadline_ticks());
    call(store).map_err(|error| {
        let message = describe_trap(&error, engine);
        let plugin = store.data().plugin.clone();
        metrics::counter!("foldhost_plugin_traps_total", "plugin" => plugin.clone()).increment(1);
        RuntimeError::Trap {
            plugin,
            context: context(),
            message,
        }
    })
}

/// A one-line reason; the wasm backtrace goes to the debug log.
fn describe_trap(error: &wasmtime::Error, engine: &PluginEngine) -> String {
    tracing::debug!(target: "plugin", "trap: {error:?}");
    let limits = engine.limits();
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "exceeded its time limit of {:?} per call",
            limits.call_timeout
        ),
        Some(Trap::StackOverflow) => {
            format!(
                "overflowed its stack (limit {} KiB)",
                limits.max_stack >> 10
            )
        }
        // Rust guests keep their stack in linear memory: running off its end
        // is how unbounded recursion shows up.
        Some(Trap::MemoryOutOfBounds) => {
            "accessed memory out of bounds (typically its stack overflowed)".to_owned()
        }
        Some(Trap::UnreachableCodeReached) => {
            "panicked or aborted (unreachable instruction)".to_owned()
        }
        Some(trap) => trap.to_string(),
        None if error.root_cause().to_string().contains("growing memory") => format!(
            "exceeded its memory limit of {} MiB ({})",
            limits.max_memory >> 20,
            error.root_cause()
        ),
        None => error.root_cause().to_string(),
    }
}
