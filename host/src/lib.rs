//! foldhost: an event-sourcing host whose aggregate logic ships as sandboxed
//! WebAssembly components.
//!
//! - [`journal`]: the durable, append-only event journal (redb).
//! - [`runtime`]: loads plugins and runs aggregates and projections inside wasmtime.
//! - [`server`]: the JSON HTTP API of `foldhost serve`.
//! - [`cli`]: the `foldhost` command line (server, client and offline subcommands).

#![warn(missing_docs)]

mod allocator;
pub mod cli;
mod durable;
pub mod journal;
pub mod runtime;
pub mod server;
