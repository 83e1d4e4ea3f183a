//! Reading a batch: events whose strings and payloads are spans into one buffer.
//!
//! Spans are resolved only when asked for: an aggregate never reads the stream
//! name, and in a replay the bounds and UTF-8 checks of unused fields were a
//! large share of the per-event cost.

use serde::de::DeserializeOwned;

use crate::bindings::types::{Batch, ContentType, Event, Span};
use crate::codec;
use crate::projection::EventMeta;

/// One event of a batch with its type and payload resolved.
pub(crate) struct RawEvent<'a> {
    event: &'a Event,
    buffer: &'a [u8],
    pub(crate) event_type: &'a str,
    data: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// Resolves `event`'s type and payload spans in `buffer`.
    fn read(event: &'a Event, buffer: &'a [u8]) -> Result<Self, String> {
        Ok(Self {
            event,
            buffer,
            event_type: text(event, buffer, "event type", event.event_type)?,
            data: bytes(event, buffer, "data", event.data)?,
        })
    }

    /// Where the event sits: resolves its stream span.
    pub(crate) fn meta(&self) -> Result<EventMeta<'a>, String> {
        Ok(EventMeta {
            stream: text(self.event, self.buffer, "stream", self.event.stream)?,
            version: self.event.version,
            position: self.event.position,
            recorded_at: self.event.recorded_at,
        })
    }

    /// Decodes the payload into the plugin's event enum.
    pub(crate) fn decode<E: DeserializeOwned>(&self) -> Result<E, String> {
        let decoded = match self.event.content_type {
            ContentType::Json => codec::decode_json(self.event_type, self.data),
            ContentType::Binary => codec::decode_postcard(self.event_type, self.data),
        };
        decoded.map_err(|e| {
            format!(
                "cannot apply event at position {} of type `{}`: {e}",
                self.event.position, self.event_type
            )
        })
    }
}

/// The bytes of `span` in `buffer`; `field` names it in the error.
#[inline]
fn bytes<'a>(event: &Event, buffer: &'a [u8], field: &str, span: Span) -> Result<&'a [u8], String> {
    let start = span.offset as usize;
    match buffer.get(start..start.saturating_add(span.len as usize)) {
        Some(bytes) => Ok(bytes),
        None => Err(outside(event, buffer, field, span)),
    }
}

/// The UTF-8 text of `span` in `buffer`; `field` names it in the error.
#[inline]
fn text<'a>(event: &Event, buffer: &'a [u8], field: &str, span: Span) -> Result<&'a str, String> {
    std::str::from_utf8(bytes(event, buffer, field, span)?)
        .map_err(|_| format!("event at position {}: {field} is not UTF-8", event.position))
}

#[cold]
fn outside(event: &Event, buffer: &[u8], field: &str, span: Span) -> String {
    format!(
        "event at position {}: {field} span {}+{} lies outside the {}-byte buffer",
        event.position,
        span.offset,
        span.len,
        buffer.len()
    )
}

/// The batch's events in order.
pub(crate) fn events(batch: &Batch) -> impl Iterator<Item = Result<RawEvent<'_>, String>> {
    batch
        .events
        .iter()
        .map(|event| RawEvent::read(event, &batch.buffer))
}
