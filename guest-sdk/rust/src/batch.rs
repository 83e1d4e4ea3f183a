//! Reading a batch: events whose strings and payloads are spans into one buffer,
//! their fixed-size fields either records of a `list<event>` (`batch`) or
//! little-endian records read in place from one byte list (`packed-batch`,
//! contract 0.1.2; the layout is in the WIT).
//!
//! Spans are resolved only when asked for: an aggregate never reads the stream
//! name, and in a replay the bounds and UTF-8 checks of unused fields were a
//! large share of the per-event cost.

use serde::de::DeserializeOwned;

use crate::bindings::types::{Batch, ContentType, Event, PackedBatch, Span};
use crate::codec;
use crate::projection::EventMeta;

/// Bytes per event in a packed batch's `headers`.
pub(crate) const PACKED_HEADER_LEN: usize = 60;

/// One event of a batch with its type and payload resolved.
pub(crate) struct RawEvent<'a> {
    event: Event,
    buffer: &'a [u8],
    pub(crate) event_type: &'a str,
    data: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// Resolves `event`'s type and payload spans in `buffer`.
    fn read(event: Event, buffer: &'a [u8]) -> Result<Self, String> {
        Ok(Self {
            event,
            buffer,
            event_type: text(&event, buffer, "event type", event.event_type)?,
            data: bytes(&event, buffer, "data", event.data)?,
        })
    }

    /// Where the event sits: resolves its stream span.
    pub(crate) fn meta(&self) -> Result<EventMeta<'a>, String> {
        Ok(EventMeta {
            stream: text(&self.event, self.buffer, "stream", self.event.stream)?,
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
        .map(|event| RawEvent::read(*event, &batch.buffer))
}

/// The packed batch's events in order; an error if its headers are not whole records.
pub(crate) fn packed_events(
    batch: &PackedBatch,
) -> Result<impl Iterator<Item = Result<RawEvent<'_>, String>>, String> {
    let (records, rest) = batch.headers.as_chunks::<PACKED_HEADER_LEN>();
    if !rest.is_empty() {
        return Err(format!(
            "packed batch headers are {} bytes, not a whole number of {PACKED_HEADER_LEN}-byte \
             records",
            batch.headers.len()
        ));
    }
    Ok(records
        .iter()
        .map(|record| RawEvent::read(unpack(record)?, &batch.buffer)))
}

/// One header record (little-endian, the layout in the WIT) as an [`Event`].
#[inline]
fn unpack(record: &[u8; PACKED_HEADER_LEN]) -> Result<Event, String> {
    let u32_at = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    let span_at = |at: usize| Span {
        offset: u32_at(at),
        len: u32_at(at + 4),
    };
    let position = u64_at(0);
    let content_type = match u32_at(56) {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => {
            return Err(format!(
                "event at position {position}: content type {other} is neither 0 (json) nor \
                 1 (binary)"
            ));
        }
    };
    Ok(Event {
        position,
        version: u64_at(8),
        recorded_at: u64_at(16),
        stream: span_at(24),
        event_type: span_at(32),
        data: span_at(40),
        metadata: span_at(48),
        content_type,
    })
}
