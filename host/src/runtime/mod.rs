//! The plugin runtime: loads WebAssembly components behind the WIT contract
//! and runs them confined — one store per instance, one memory budget for its
//! memories and tables, a deadline (and optionally fuel) per call, bounded
//! answers and log lines — as aggregates (per-stream write side), projections
//! (folds over the global log) and upcasters (rewriting old event shapes for both).

mod aggregate;
mod appends;
mod bindings;
mod cache;
mod commands;
mod data_gate;
mod dehydrated;
mod diff;
mod engine;
mod error;
mod footprint;
mod host_fault;
mod idempotency;
mod limits;
mod pipeline;
mod plugin;
pub mod plugin_dir;
mod projection;
mod registry;
mod sandbox;
mod upcast;
mod uploads;

pub use aggregate::{AggregateInstance, REPLAY_LIMIT};
pub use commands::{
    AggregateConfig, Aggregates, Command, CommandOutcome, CommandStats, DEFAULT_CACHE_BYTES,
    DEFAULT_PASSIVATE_AFTER, HISTORY_SLOTS, stream_name,
};
pub use diff::{DiffReport, StateDiff, diff_versions};
pub use engine::{COMPILE_COMMAND, CompileError, ComponentRefused, PluginEngine, compile_child};
pub use error::RuntimeError;
pub use host_fault::HostFault;
pub use limits::{
    DEFAULT_MEMORY_BUDGET, LimitPolicy, Limits, PluginLimits, parse_duration, parse_size, show_size,
};
pub use plugin::{CONTRACT_VERSION, Description, Plugin, PluginKind, Subscription};
pub use projection::{
    CheckpointPolicy, FailurePolicy, ParkReport, ProjectionInstance, ProjectionRunner,
    ProjectionStatus, RunnerOptions,
};
pub use registry::{
    CompileStatus, CompilingInfo, FileInstall, LoadFailure, PluginInfo, Runtime, RuntimeConfig,
};
pub use sandbox::MemoryBudget;
pub use upcast::{Upcaster, UpcasterChain};
pub use uploads::Uploads;

/// Runs `work` on a task of its own, to its end even if the caller stops waiting (a client
/// hanging up), inside the caller's tracing span: a change to the plugins left half way could
/// leave a projection stopped with no run after it, or an upload kept for a build not serving.
pub(crate) async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    use tracing::Instrument;
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

/// Runs plugin calls and journal reads on the blocking pool, off the async
/// workers, inside the caller's tracing span (so plugin logs carry it).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}
