//! Host-side bindings generated from `wit/foldhost.wit` (one module per world),
//! the per-store data every plugin instance carries, and the batch encoding.

use std::sync::Arc;

use super::limits::Limits;
use super::sandbox::{LogBudget, StoreBudget, one_line};
use crate::journal::{ContentType, EventRef, RecordedEvent};

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

/// Bindings for the packed folds of contract 0.1.2, apart from the worlds: a
/// plugin may export them or not, and its world's bindings work either way.
pub mod packed {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package foldhost:host;
            world packed-folds {
                export foldhost:plugin/packed-aggregate@0.1.2;
                export foldhost:plugin/packed-projection@0.1.2;
            }
        ",
        world: "foldhost:host/packed-folds",
        with: {
            "foldhost:plugin/types": super::aggregate::foldhost::plugin::types,
        },
    });

    pub use exports::foldhost::plugin::packed_aggregate as aggregate;
    pub use exports::foldhost::plugin::packed_projection as projection;
}

pub use aggregate::foldhost::plugin::host::Level;
pub use aggregate::foldhost::plugin::types;

/// An instance's exports: its world's, and its packed fold when the plugin
/// exports one (contract 0.1.2), which the host then calls instead of `apply`.
pub struct Exports<W, P> {
    pub world: W,
    pub packed: Option<P>,
}

/// An aggregate instance's exports.
pub type AggregateExports = Exports<aggregate::AggregatePlugin, packed::aggregate::Guest>;
/// A projection instance's exports.
pub type ProjectionExports = Exports<projection::ProjectionPlugin, packed::projection::Guest>;

/// `apply` for an instance's exports: the packed fold when it has one, else
/// its world's `apply` over a span batch.
macro_rules! apply_through_exports {
    ($exports:ty, $world_guest:ident) => {
        impl $exports {
            /// Folds `events` into the instance's state.
            pub fn call_apply<'a>(
                &self,
                store: &mut wasmtime::Store<PluginData>,
                events: impl IntoIterator<Item = &'a RecordedEvent>,
            ) -> wasmtime::Result<Result<(), String>> {
                match &self.packed {
                    Some(packed) => packed.call_apply(store, &encode_packed_batch(events)),
                    None => (self.world.$world_guest()).call_apply(store, &encode_batch(events)),
                }
            }
        }
    };
}
apply_through_exports!(AggregateExports, foldhost_plugin_aggregate);
apply_through_exports!(ProjectionExports, foldhost_plugin_projection);

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

/// Bytes per event in a packed batch's `headers` (the layout is in the WIT).
pub const PACKED_HEADER_LEN: usize = 60;

/// Packs events into a `packed-batch` (contract 0.1.2): one little-endian
/// header record per event, strings and payloads in the shared buffer.
///
/// One pass over the events: the headers are allocated for as many events as
/// the iterator may yield, the buffer for `PACKED_BYTES_PER_EVENT` each and
/// grown (doubling) when they carry more. An event of the same stream or type as the one
/// before shares its span, so an aggregate's batch carries its stream name
/// once and a run of one type its name once; empty spans copy nothing.
pub fn encode_packed_batch<'a>(
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> types::PackedBatch {
    let events = events.into_iter();
    let (least, most) = events.size_hint();
    let capacity = most.unwrap_or(least);
    let mut headers = Vec::with_capacity(capacity.saturating_mul(PACKED_HEADER_LEN));
    let mut buffer = Vec::with_capacity(capacity.saturating_mul(PACKED_BYTES_PER_EVENT));
    let (mut stream, mut event_type) = (Run::default(), Run::default());
    for event in events {
        let metadata = event.metadata.as_deref().unwrap_or_default().as_bytes();
        let spans = [
            stream.place(event.stream.as_bytes(), &mut buffer),
            event_type.place(event.event_type.as_bytes(), &mut buffer),
            put(&event.data, &mut buffer),
            put(metadata, &mut buffer),
        ];
        headers.extend_from_slice(&packed_header(&EventRef::from(event), spans));
    }
    types::PackedBatch { headers, buffer }
}

/// The header record of `event` in a packed batch, its stream, type, data and metadata at
/// `spans` of the buffer.
#[inline]
fn packed_header(event: &EventRef<'_>, spans: [types::Span; 4]) -> [u8; PACKED_HEADER_LEN] {
    let mut record = [0; PACKED_HEADER_LEN];
    record[0..8].copy_from_slice(&event.position.to_le_bytes());
    record[8..16].copy_from_slice(&event.version.to_le_bytes());
    record[16..24].copy_from_slice(&event.recorded_at.to_le_bytes());
    for (span, at) in spans.into_iter().zip([24, 32, 40, 48]) {
        record[at..at + 4].copy_from_slice(&span.offset.to_le_bytes());
        record[at + 4..at + 8].copy_from_slice(&span.len.to_le_bytes());
    }
    let content_type: u32 = match event.content_type {
        ContentType::Json => 0,
        ContentType::Binary => 1,
    };
    record[56..60].copy_from_slice(&content_type.to_le_bytes());
    record
}

/// A packed batch built one borrowed event at a time (from a journal scan's visitor), laid out
/// as [`encode_packed_batch`] lays out owned events: an event naming the stream or type of the
/// one before shares its span, recognised by the copy already in the buffer.
pub struct PackedBuilder {
    headers: Vec<u8>,
    buffer: Vec<u8>,
    stream: Option<types::Span>,
    event_type: Option<types::Span>,
}

impl PackedBuilder {
    /// An empty batch with room for about `events` events.
    pub fn with_capacity(events: usize) -> Self {
        Self {
            headers: Vec::with_capacity(events.saturating_mul(PACKED_HEADER_LEN)),
            buffer: Vec::with_capacity(events.saturating_mul(PACKED_BYTES_PER_EVENT)),
            stream: None,
            event_type: None,
        }
    }

    /// Appends `event`.
    #[inline]
    pub fn push(&mut self, event: &EventRef<'_>) {
        let buffer = &mut self.buffer;
        let spans = [
            Self::place(&mut self.stream, event.stream.as_bytes(), buffer),
            Self::place(&mut self.event_type, event.event_type.as_bytes(), buffer),
            put(event.data, buffer),
            put(event.metadata.unwrap_or_default().as_bytes(), buffer),
        ];
        self.headers.extend_from_slice(&packed_header(event, spans));
    }

    /// The span of `name`: `last`'s if the buffer holds `name` there, else a new copy's.
    #[inline]
    fn place(last: &mut Option<types::Span>, name: &[u8], buffer: &mut Vec<u8>) -> types::Span {
        if let Some(span) = *last {
            let at = span.offset as usize;
            if buffer.get(at..at + span.len as usize) == Some(name) {
                return span;
            }
        }
        *last.insert(put(name, buffer))
    }

    /// The batch.
    pub fn finish(self) -> types::PackedBatch {
        types::PackedBatch {
            headers: self.headers,
            buffer: self.buffer,
        }
    }
}

/// The buffer bytes a packed batch reserves per event before it knows them:
/// a small JSON payload such as `{"amount":42}` and a share of the names
/// (stored once per run). More only costs the buffer a reallocation.
const PACKED_BYTES_PER_EVENT: usize = 32;

/// Appends `bytes` to `buffer` (copying nothing when empty) and returns their span.
#[inline]
fn put(bytes: &[u8], buffer: &mut Vec<u8>) -> types::Span {
    let offset = buffer.len() as u32;
    if !bytes.is_empty() {
        buffer.extend_from_slice(bytes);
    }
    types::Span {
        offset,
        len: bytes.len() as u32,
    }
}

/// The name last placed in a packed batch's buffer: the next event naming the same is given
/// its span instead of another copy.
#[derive(Default)]
struct Run<'a> {
    name: &'a [u8],
    span: Option<types::Span>,
}

impl<'a> Run<'a> {
    /// The span of `name` in `buffer`, placing it there unless it was the last one placed.
    /// A page read from the journal shares one copy of a run's name, so comparing where the
    /// names are answers most events without reading them.
    #[inline]
    fn place(&mut self, name: &'a [u8], buffer: &mut Vec<u8>) -> types::Span {
        match self.span {
            Some(span) if std::ptr::eq(name, self.name) || name == self.name => span,
            _ => {
                let span = put(name, buffer);
                *self = Run {
                    name,
                    span: Some(span),
                };
                span
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, stream: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: stream.into(),
            version: position,
            id: uuid::Uuid::nil(),
            event_type: event_type.into(),
            content_type: ContentType::Json,
            data: format!("{{\"n\":{position}}}").into_bytes().into(),
            metadata: None,
            recorded_at: 0,
        }
    }

    /// The text of span `field` (0 stream, 1 type, 2 data, 3 metadata) of header `index`.
    fn field(batch: &types::PackedBatch, index: usize, field: usize) -> &str {
        let at = index * PACKED_HEADER_LEN + 24 + field * 8;
        let word = |at: usize| u32::from_le_bytes(batch.headers[at..at + 4].try_into().unwrap());
        let (offset, len) = (word(at) as usize, word(at + 4) as usize);
        std::str::from_utf8(&batch.buffer[offset..offset + len]).unwrap()
    }

    #[test]
    fn packed_spans_resolve_and_a_repeated_stream_or_type_is_stored_once() {
        let mut events = vec![
            event(1, "account-a", "Opened"),
            event(2, "account-a", "Deposited"),
            event(3, "account-b", "Deposited"),
            event(4, "account-a", "Closed"),
            event(5, "account-a", "Deposited"),
        ];
        // As a journal page holds a run's names: one copy, shared. A name starting where the
        // one before starts is still a different name.
        let shared = events[1].event_type.clone();
        events[2].event_type = shared.clone();
        events[4].event_type = shared.clone();
        events.push(event(6, "account-a", ""));
        events[5].event_type = shared.slice_ref(&shared[..7]);
        let batch = encode_packed_batch(&events);
        for (index, event) in events.iter().enumerate() {
            assert_eq!(field(&batch, index, 0), &*event.stream);
            assert_eq!(field(&batch, index, 1), &*event.event_type);
            assert_eq!(field(&batch, index, 2).as_bytes(), &event.data[..]);
            assert_eq!(field(&batch, index, 3), "");
        }
        let buffer = std::str::from_utf8(&batch.buffer).unwrap();
        assert_eq!(buffer.matches("account-a").count(), 2);
        assert_eq!(buffer.matches("account-b").count(), 1);
        assert_eq!(buffer.matches("Deposit").count(), 3);
        assert_eq!(buffer.matches("Deposited").count(), 2);
    }
}
