//! foldhost: an event-sourcing host whose aggregate logic ships as sandboxed
//! WebAssembly components.
//!
//! - [`journal`]: the durable, append-only event journal (redb).
//! - [`runtime`]: loads plugins and runs aggregates and projections inside wasmtime.

pub mod journal;
