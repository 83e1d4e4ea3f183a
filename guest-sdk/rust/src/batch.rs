//! Reading a batch: events whose strings and payloads are spans into one buffer.

use serde::de::DeserializeOwned;

use crate::bindings::types::{Batch, ContentType, Event, Span};
use crate::codec;
use crate::projection::EventMeta;

/// One event of a batch with its spans resolved.
pub(crate) struct RawEvent<'a> {
    pub(crate) meta: EventMeta<'a>,
    pub(crate) event_type: &'a str,
    content_type: ContentType,
    data: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// Resolves `event`'s spans in `buffer`.
    fn read(event: &Event, buffer: &'a [u8]) -> Result<Self, String> {
        let bytes = |field: &str, span: Span| {
            let start = span.offset as usize;
            buffer
                .get(start..start.saturating_add(span.len as usize))
                .ok_or_else(|| {
                    format!(
                        "event at position {}: {field} span {}+{} lies outside the {}-byte buffer",
                        event.position,
                        span.offset,
                        span.len,
                        buffer.len()
                    )
                })
        };
        let text = |field: &str, span: Span| {
            std::str::from_utf8(bytes(field, span)?)
                .map_err(|_| format!("event at position {}: {field} is not UTF-8", event.position))
        };
        Ok(Self {
            meta: EventMeta {
                stream: text("stream", event.stream)?,
                version: event.version,
                position: event.position,
                recorded_at: event.recorded_at,
            },
            event_type: text("event type", event.event_type)?,
            content_type: event.content_type,
            data: bytes("data", event.data)?,
        })
    }

    /// Decodes the payload into the plugin's event enum.
    pub(crate) fn decode<E: DeserializeOwned>(&self) -> Result<E, String> {
        let decoded = match self.content_type {
            ContentType::Json => codec::decode_json(self.event_type, self.data),
            ContentType::Binary => codec::decode_postcard(self.event_type, self.data),
        };
        decoded.map_err(|e| {
            format!(
                "cannot apply event at position {} of type `{}`: {e}",
                self.meta.position, self.event_type
            )
        })
    }
}

/// The batch's events in order.
pub(crate) fn events(batch: &Batch) -> impl Iterator<Item = Result<RawEvent<'_>, String>> {
    batch
        .events
        .iter()
        .map(|event| RawEvent::read(event, &batch.buffer))
}
