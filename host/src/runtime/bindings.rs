//! Host-side bindings generated from `wit/foldhost.wit` (one module per world),
//! the per-store data every plugin instance carries, and the batch encoding.

use std::sync::Arc;

use super::limits::Limits;
use super::sandbox::{LogBudget, StoreBudget, one_line};
use crate::journal::{ContentType, RecordedEvent};

/// Bindings for the `aggregate-plugin` world.
pub mod aggregate {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregate-plugin",
    });
}

/// Bindings for the `projection-plugin` world; shares the aggregate world's types.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "projection-plugin",
        with: {
            "foldhost:plugin/types": super::aggregate::foldhost::plugin::types,
            "foldhost:plugin/host": super::aggregate::foldhost::plugin::host,
        },
    });
}

/// Bindings for the `upcaster-plugin` world; shares the aggregate world's types.
pub mod upcaster {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "upcaster-plugin",
        with: {
            "foldhost:plugin/types": super::aggregate::foldhost::plugin::types,
            "foldhost:plugin/host": super::aggregate::foldhost::plugin::host,
        },
    });
}

pub use aggregate::foldhost::plugin::host::Level;
pub use aggregate::foldhost::plugin::types;

/// The data held by each plugin's wasmtime `Store`.
pub struct PluginData {
    /// Plugin name, for log lines.
    pub plugin: String,
    /// The plugin's limits, for each call and for messages.
    pub limits: Limits,
    /// This store's memory budget (its `ResourceLimiter`).
    pub budget: StoreBudget,
    /// The plugin's allowance of log lines, shared by all its stores.
    pub log: Arc<LogBudget>,
}

impl aggregate::foldhost::plugin::host::Host for PluginData {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.admit() {
            return;
        }
        let plugin = self.plugin.as_str();
        let message = one_line(&message);
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }
}

impl aggregate::foldhost::plugin::types::Host for PluginData {}

impl From<ContentType> for types::ContentType {
    fn from(value: ContentType) -> Self {
        match value {
            ContentType::Json => Self::Json,
            ContentType::Binary => Self::Binary,
        }
    }
}

impl From<types::ContentType> for ContentType {
    fn from(value: types::ContentType) -> Self {
        match value {
            types::ContentType::Json => Self::Json,
            types::ContentType::Binary => Self::Binary,
        }
    }
}

/// Packs events into the contract's batch shape: flat scalar records whose
/// strings and payloads are spans of one shared buffer.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> types::Batch {
    let mut batch = types::Batch {
        events: Vec::new(),
        buffer: Vec::new(),
    };
    for event in events {
        let buffer = &mut batch.buffer;
        let mut span = |bytes: &[u8]| {
            let offset = buffer.len() as u32;
            buffer.extend_from_slice(bytes);
            types::Span {
                offset,
                len: bytes.len() as u32,
            }
        };
        let stream = span(event.stream.as_bytes());
        let event_type = span(event.event_type.as_bytes());
        let data = span(&event.data);
        let metadata = span(event.metadata.as_deref().unwrap_or_default().as_bytes());
        batch.events.push(types::Event {
            position: event.position,
            version: event.version,
            recorded_at: event.recorded_at,
            content_type: event.content_type.into(),
            stream,
            event_type,
            data,
            metadata,
        });
    }
    batch
}
