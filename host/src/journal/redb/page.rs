//! Owned events for reads of many: their text and data are copied into shared,
//! reference-counted chunks, and a run of events of one stream or type shares one copy of its
//! name, so a page of events costs a few allocations rather than three or four per event.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use uuid::Uuid;

use super::record::{self, RawEnvelope};
use super::{JournalError, RecordedEvent};

/// The first chunk's size; each later one doubles, up to `MAX_CHUNK`.
const FIRST_CHUNK: usize = 4 << 10;
/// Bounds the memory one event kept after its read can hold on to.
const MAX_CHUNK: usize = 64 << 10;

/// Turns the decoded records of one read into events.
#[derive(Default)]
pub(super) struct Page {
    /// The unused rest of the current chunk.
    chunk: BytesMut,
    chunk_size: usize,
    /// The last stream and type names seen, checked to be UTF-8: a record holding the same
    /// bytes needs no check of its own.
    stream: ByteString,
    event_type: ByteString,
}

impl Page {
    /// Holds the names of `record`, stored at `position`, checking any the page does not hold
    /// yet; the event is then made with [`Held::own`].
    pub fn hold<'p, 'r>(
        &'p mut self,
        position: u64,
        record: &'p RawEnvelope<'r>,
    ) -> Result<Held<'p, 'r>, JournalError> {
        if self.stream.as_bytes() != record.stream {
            let name = record::utf8(position, "stream name", record.stream)?;
            self.stream = self.text(name);
        }
        if self.event_type.as_bytes() != record.event_type {
            let name = record::utf8(position, "event type", record.event_type)?;
            self.event_type = self.text(name);
        }
        Ok(Held {
            page: self,
            position,
            record,
        })
    }

    /// A copy of `bytes` in the current chunk (a new one if it is full).
    fn bytes(&mut self, bytes: &[u8]) -> Bytes {
        if self.chunk.capacity() < bytes.len() {
            self.chunk_size = (self.chunk_size * 2).clamp(FIRST_CHUNK, MAX_CHUNK);
            self.chunk = BytesMut::with_capacity(bytes.len().max(self.chunk_size));
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }

    fn text(&mut self, text: &str) -> ByteString {
        ByteString::try_from(self.bytes(text.as_bytes())).expect("copied from a str")
    }
}

/// A record whose names its page holds, checked.
pub(super) struct Held<'p, 'r> {
    page: &'p mut Page,
    position: u64,
    record: &'p RawEnvelope<'r>,
}

impl Held<'_, '_> {
    /// The record's stream name.
    pub fn stream(&self) -> &str {
        &self.page.stream
    }

    /// The event.
    pub fn own(self) -> RecordedEvent {
        let Held {
            page,
            position,
            record,
        } = self;
        RecordedEvent {
            position,
            stream: page.stream.clone(),
            version: record.version,
            id: Uuid::from_bytes(record.id),
            event_type: page.event_type.clone(),
            content_type: record.content_type,
            data: page.bytes(record.data),
            metadata: record.metadata.map(|text| page.text(text)),
            recorded_at: record.recorded_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::ContentType;

    fn envelope<'a>(stream: &'a str, event_type: &'a str, data: &'a [u8]) -> RawEnvelope<'a> {
        RawEnvelope {
            stream: stream.as_bytes(),
            version: 1,
            id: [7; 16],
            event_type: event_type.as_bytes(),
            content_type: ContentType::Binary,
            data,
            metadata: Some("{}"),
            recorded_at: 2,
        }
    }

    #[test]
    fn events_keep_their_own_text_and_data_across_chunks() {
        let mut page = Page::default();
        let big = vec![9; 3 * MAX_CHUNK];
        let inputs: Vec<(String, String, Vec<u8>)> = (0..2000)
            .map(|n| {
                let data = if n == 1000 {
                    big.clone()
                } else {
                    vec![n as u8; n % 70]
                };
                (format!("s-{}", n / 3), format!("T{}", n % 2), data)
            })
            .collect();
        let events: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(n, (stream, event_type, data))| {
                page.hold(n as u64 + 1, &envelope(stream, event_type, data))
                    .unwrap()
                    .own()
            })
            .collect();
        for (event, (stream, event_type, data)) in events.iter().zip(&inputs) {
            assert_eq!(event.stream, stream);
            assert_eq!(event.event_type, event_type);
            assert_eq!(event.data, data);
            assert_eq!(event.metadata.as_deref(), Some("{}"));
            assert_eq!(event.id, Uuid::from_bytes([7; 16]));
        }
    }

    #[test]
    fn a_run_of_one_stream_shares_its_name() {
        let mut page = Page::default();
        let a = page
            .hold(1, &envelope("account-1", "Deposited", b"1"))
            .unwrap()
            .own();
        let b = page
            .hold(2, &envelope("account-1", "Deposited", b"2"))
            .unwrap()
            .own();
        assert_eq!(a.stream.as_ptr(), b.stream.as_ptr());
        assert_eq!(a.event_type.as_ptr(), b.event_type.as_ptr());
        assert_ne!(a.data.as_ptr(), b.data.as_ptr());
    }

    #[test]
    fn a_name_that_is_not_utf8_is_corrupt_at_its_position() {
        let mut page = Page::default();
        page.hold(1, &envelope("s", "T", b"")).unwrap();
        let mut bad = envelope("s", "T", b"");
        bad.stream = b"s\xff";
        let Err(JournalError::Corrupt {
            position: 2,
            reason,
        }) = page.hold(2, &bad)
        else {
            panic!("a stream name that is not UTF-8 was read");
        };
        assert!(reason.contains("stream name"), "{reason}");
        let mut bad = envelope("s", "T", b"");
        bad.event_type = b"T\xff";
        let Err(JournalError::Corrupt {
            position: 3,
            reason,
        }) = page.hold(3, &bad)
        else {
            panic!("an event type that is not UTF-8 was read");
        };
        assert!(reason.contains("event type"), "{reason}");
        // The page still holds the last good names.
        assert_eq!(
            page.hold(4, &envelope("s", "T", b"")).unwrap().stream(),
            "s"
        );
    }
}
