//! The durable, append-only event journal.

mod types;

pub use types::*;
