//! Owned events for reads of many: their text and data are copied into shared,
//! reference-counted chunks, and a run of events of one stream or type shares one copy of its
//! name, so a page of events costs a few allocations rather than three or four per event.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use uuid::Uuid;

use super::RecordedEvent;
use super::record::Envelope;

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
    stream: ByteString,
    event_type: ByteString,
}

impl Page {
    /// The event whose record, stored at `position`, decoded to `envelope`.
    pub fn own(&mut self, position: u64, envelope: &Envelope<'_>) -> RecordedEvent {
        if self.stream != envelope.stream {
            self.stream = self.text(envelope.stream);
        }
        if self.event_type != envelope.event_type {
            self.event_type = self.text(envelope.event_type);
        }
        RecordedEvent {
            position,
            stream: self.stream.clone(),
            version: envelope.version,
            id: Uuid::from_bytes(envelope.id),
            event_type: self.event_type.clone(),
            content_type: envelope.content_type,
            data: self.bytes(envelope.data),
            metadata: envelope.metadata.map(|text| self.text(text)),
            recorded_at: envelope.recorded_at,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::ContentType;

    fn envelope<'a>(stream: &'a str, event_type: &'a str, data: &'a [u8]) -> Envelope<'a> {
        Envelope {
            stream,
            version: 1,
            id: [7; 16],
            event_type,
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
                page.own(n as u64 + 1, &envelope(stream, event_type, data))
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
        let a = page.own(1, &envelope("account-1", "Deposited", b"1"));
        let b = page.own(2, &envelope("account-1", "Deposited", b"2"));
        assert_eq!(a.stream.as_ptr(), b.stream.as_ptr());
        assert_eq!(a.event_type.as_ptr(), b.event_type.as_ptr());
        assert_ne!(a.data.as_ptr(), b.data.as_ptr());
    }
}
