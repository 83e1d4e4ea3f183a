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
use crate::text;

/// Bytes per event in a packed batch's `headers`.
pub(crate) const PACKED_HEADER_LEN: usize = 60;

/// One event of a batch, read lazily: a field is looked up (and a span checked
/// against the buffer) only when asked for, so a fold touches just what it uses.
#[derive(Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    header: Header<'a>,
    buffer: &'a [u8],
}

/// Where an event's fixed-size fields are: a `batch` record, or a packed
/// record read in place.
#[derive(Clone, Copy)]
enum Header<'a> {
    Record(&'a Event),
    Packed(&'a [u8; PACKED_HEADER_LEN]),
}

/// A span field of the header.
#[derive(Clone, Copy)]
enum Field {
    Stream,
    EventType,
    Data,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Stream => "stream",
            Field::EventType => "event type",
            Field::Data => "data",
        }
    }
}

impl<'a> Header<'a> {
    #[inline]
    fn u64_at(record: &[u8; PACKED_HEADER_LEN], at: usize) -> u64 {
        u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"))
    }

    #[inline]
    fn u32_at(record: &[u8; PACKED_HEADER_LEN], at: usize) -> u32 {
        u32::from_le_bytes(record[at..at + 4].try_into().expect("4 bytes"))
    }

    #[inline]
    fn position(self) -> u64 {
        match self {
            Header::Record(event) => event.position,
            Header::Packed(record) => Self::u64_at(record, 0),
        }
    }

    #[inline]
    fn version(self) -> u64 {
        match self {
            Header::Record(event) => event.version,
            Header::Packed(record) => Self::u64_at(record, 8),
        }
    }

    #[inline]
    fn recorded_at(self) -> u64 {
        match self {
            Header::Record(event) => event.recorded_at,
            Header::Packed(record) => Self::u64_at(record, 16),
        }
    }

    #[inline]
    fn span(self, field: Field) -> Span {
        match self {
            Header::Record(event) => match field {
                Field::Stream => event.stream,
                Field::EventType => event.event_type,
                Field::Data => event.data,
            },
            Header::Packed(record) => {
                let at = match field {
                    Field::Stream => 24,
                    Field::EventType => 32,
                    Field::Data => 40,
                };
                Span {
                    offset: Self::u32_at(record, at),
                    len: Self::u32_at(record, at + 4),
                }
            }
        }
    }

    #[inline]
    fn content_type(self) -> Result<ContentType, String> {
        match self {
            Header::Record(event) => Ok(event.content_type),
            Header::Packed(record) => match Self::u32_at(record, 56) {
                0 => Ok(ContentType::Json),
                1 => Ok(ContentType::Binary),
                other => Err(format!(
                    "event at position {}: content type {other} is neither 0 (json) nor \
                     1 (binary)",
                    self.position()
                )),
            },
        }
    }
}

impl<'a> RawEvent<'a> {
    /// The bytes of `field`'s span in the buffer.
    #[inline]
    fn bytes(self, field: Field) -> Result<&'a [u8], String> {
        let span = self.header.span(field);
        let start = span.offset as usize;
        match self
            .buffer
            .get(start..start.saturating_add(span.len as usize))
        {
            Some(bytes) => Ok(bytes),
            None => Err(self.outside(field, span)),
        }
    }

    /// The UTF-8 text of `field`'s span in the buffer.
    #[inline]
    fn text(self, field: Field) -> Result<&'a str, String> {
        let bytes = self.bytes(field)?;
        text::utf8(bytes).ok_or_else(|| {
            let position = self.header.position();
            format!(
                "event at position {position}: {} is not UTF-8",
                field.name()
            )
        })
    }

    #[cold]
    fn outside(self, field: Field, span: Span) -> String {
        format!(
            "event at position {}: {} span {}+{} lies outside the {}-byte buffer",
            self.header.position(),
            field.name(),
            span.offset,
            span.len,
            self.buffer.len()
        )
    }

    /// The event's type.
    #[inline]
    pub(crate) fn event_type(self) -> Result<&'a str, String> {
        self.text(Field::EventType)
    }

    /// Where the event sits: resolves its stream span.
    #[inline]
    pub(crate) fn meta(self) -> Result<EventMeta<'a>, String> {
        Ok(self.meta_in(self.text(Field::Stream)?))
    }

    /// Where the event sits, its stream already resolved (see [`stream_span`](Self::stream_span)).
    #[inline]
    pub(crate) fn meta_in(self, stream: &'a str) -> EventMeta<'a> {
        EventMeta {
            stream,
            version: self.header.version(),
            position: self.header.position(),
            recorded_at: self.header.recorded_at(),
        }
    }

    /// The stream's span as `(offset, len)`: two events with the same span in one batch
    /// have the same stream (the host stores a run of one stream's name once).
    #[inline]
    pub(crate) fn stream_span(self) -> (u32, u32) {
        let span = self.header.span(Field::Stream);
        (span.offset, span.len)
    }

    /// The event type's span as `(offset, len)`; like [`stream_span`](Self::stream_span).
    #[inline]
    pub(crate) fn type_span(self) -> (u32, u32) {
        let span = self.header.span(Field::EventType);
        (span.offset, span.len)
    }

    /// The event's stream name.
    #[inline]
    pub(crate) fn stream(self) -> Result<&'a str, String> {
        self.text(Field::Stream)
    }

    /// Decodes the payload into the plugin's event enum; `event_type` is
    /// [`event_type`](Self::event_type)'s answer. Inlined into the fold's loop: a call
    /// per event costs wasm a prologue and an epoch check.
    #[inline(always)]
    pub(crate) fn decode<E: DeserializeOwned>(self, event_type: &str) -> Result<E, String> {
        let content_type = self.header.content_type()?;
        let data = self.bytes(Field::Data)?;
        let decoded = match content_type {
            ContentType::Json => codec::decode_json(event_type, data),
            ContentType::Binary => codec::decode_postcard(event_type, data),
        };
        decoded.map_err(|e| {
            let position = self.header.position();
            format!("cannot apply event at position {position} of type `{event_type}`: {e}")
        })
    }
}

/// The batch's events in order.
pub(crate) fn events(batch: &Batch) -> impl ExactSizeIterator<Item = RawEvent<'_>> {
    batch.events.iter().map(|event| RawEvent {
        header: Header::Record(event),
        buffer: &batch.buffer,
    })
}

/// The packed batch's events in order; an error if its headers are not whole records.
pub(crate) fn packed_events(
    batch: &PackedBatch,
) -> Result<impl ExactSizeIterator<Item = RawEvent<'_>>, String> {
    let (records, rest) = batch.headers.as_chunks::<PACKED_HEADER_LEN>();
    if !rest.is_empty() {
        return Err(format!(
            "packed batch headers are {} bytes, not a whole number of {PACKED_HEADER_LEN}-byte \
             records",
            batch.headers.len()
        ));
    }
    Ok(records.iter().map(|record| RawEvent {
        header: Header::Packed(record),
        buffer: &batch.buffer,
    }))
}

/// What was made of the span of the event before: the host stores a run of one
/// stream's or type's name once, so a run's events share a span, which is then
/// resolved (checked, compared) once per run instead of once per event.
pub(crate) struct LastSpan<T> {
    last: Option<((u32, u32), T)>,
}

impl<T: Copy> LastSpan<T> {
    pub(crate) fn new() -> Self {
        Self { last: None }
    }

    /// `resolve()`'s answer for `span`, remembered from the event before when it had the
    /// same span.
    #[inline]
    pub(crate) fn get(
        &mut self,
        span: (u32, u32),
        resolve: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        match self.last {
            Some((last, value)) if last == span => Ok(value),
            _ => {
                let value = resolve()?;
                self.last = Some((span, value));
                Ok(value)
            }
        }
    }
}
