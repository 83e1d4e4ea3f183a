//! The stored form of an event: a format byte followed by a postcard-encoded envelope.
//!
//! The leading byte lets the envelope evolve: a new layout gets a new byte and old records keep
//! decoding with their own layout.
//!
//! Records are read back borrowing their text and data from the stored bytes, so a read
//! allocates only where its events are made (`Page`).

use serde::{Deserialize, Serialize, Serializer};

use super::{ContentType, JournalError, NewEvent};

/// The layout written by this build.
const FORMAT_V1: u8 = 1;

/// A decoded record, borrowing its text and data from the stored bytes.
pub(super) type Envelope<'a> = EnvelopeV1<'a>;

/// A decoded record whose stream and type names are not yet checked to be UTF-8: a page of
/// many events checks each name once, not once per event (see `Page`).
pub(super) type RawEnvelope<'a> = EnvelopeV1<'a, &'a [u8]>;

/// Layout 1. Field order is the wire format: never reorder, only add a new layout. Postcard
/// writes a `str` and a byte string alike (length, then bytes), so `Name` only chooses whether
/// decoding checks the names.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EnvelopeV1<'a, Name = &'a str> {
    pub stream: Name,
    pub version: u64,
    pub id: [u8; 16],
    pub event_type: Name,
    pub content_type: ContentType,
    #[serde(serialize_with = "as_bytes")]
    pub data: &'a [u8],
    #[serde(borrow)]
    pub metadata: Option<&'a str>,
    pub recorded_at: u64,
}

impl<Name: AsRef<[u8]>> EnvelopeV1<'_, Name> {
    /// What a read's size limit counts, as [`RecordedEvent::size`](super::RecordedEvent::size).
    pub fn size(&self) -> usize {
        self.data.len() + self.event_type.as_ref().len() + self.metadata.map_or(0, str::len)
    }
}

/// Writes `data` as one length-prefixed block rather than element by element.
fn as_bytes<S: Serializer>(data: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(data)
}

/// Encodes `event` as the record for `version` of `stream`.
pub(super) fn encode(stream: &str, version: u64, event: &NewEvent, recorded_at: u64) -> Vec<u8> {
    let envelope = EnvelopeV1 {
        stream,
        version,
        id: *event.id.as_bytes(),
        event_type: &event.event_type,
        content_type: event.content_type,
        data: &event.data,
        metadata: event.metadata.as_deref(),
        recorded_at,
    };
    let mut bytes =
        Vec::with_capacity(48 + stream.len() + event.event_type.len() + event.data.len());
    bytes.push(FORMAT_V1);
    postcard::to_extend(&envelope, bytes).expect("encoding into a Vec cannot fail")
}

/// Decodes the record stored at `position`, borrowing from `bytes`.
pub(super) fn decode(position: u64, bytes: &[u8]) -> Result<Envelope<'_>, JournalError> {
    let raw = decode_raw(position, bytes)?;
    Ok(EnvelopeV1 {
        stream: utf8(position, "stream name", raw.stream)?,
        version: raw.version,
        id: raw.id,
        event_type: utf8(position, "event type", raw.event_type)?,
        content_type: raw.content_type,
        data: raw.data,
        metadata: raw.metadata,
        recorded_at: raw.recorded_at,
    })
}

/// Decodes the record stored at `position`, borrowing from `bytes`, leaving its names
/// unchecked: each must go through [`utf8`] before it is used as text.
pub(super) fn decode_raw(position: u64, bytes: &[u8]) -> Result<RawEnvelope<'_>, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt { position, reason };
    let (&format, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".to_owned()))?;
    if format != FORMAT_V1 {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    let (envelope, rest) = postcard::take_from_bytes::<RawEnvelope<'_>>(body)
        .map_err(|error| corrupt(format!("undecodable envelope: {error}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(envelope)
}

/// `name`, the `what` of the record stored at `position`, as text.
pub(super) fn utf8<'a>(position: u64, what: &str, name: &'a [u8]) -> Result<&'a str, JournalError> {
    std::str::from_utf8(name).map_err(|error| JournalError::Corrupt {
        position,
        reason: format!("its {what} is not UTF-8: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::RecordedEvent;
    use super::super::page::Page;
    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            id: Uuid::new_v4(),
            event_type: "Deposited".to_owned(),
            content_type: ContentType::Binary,
            data: vec![0, 1, 2, 255],
            metadata: Some(r#"{"by":"test"}"#.to_owned()),
        }
    }

    #[test]
    fn reads_back_what_postcard_wrote() {
        let long = NewEvent {
            id: Uuid::now_v7(),
            event_type: "é".repeat(100),
            content_type: ContentType::Json,
            data: vec![7; 300],
            metadata: None,
        };
        let empty = NewEvent {
            data: Vec::new(),
            metadata: Some(String::new()),
            ..event()
        };
        for (new, version, recorded_at) in [
            (long, u64::MAX, u64::MAX),
            (empty, 0, 0),
            (event(), 127, 128),
        ] {
            let bytes = encode("s", version, &new, recorded_at);
            let envelope = decode(1, &bytes).unwrap();
            assert_eq!(
                (envelope.stream, envelope.version, envelope.id),
                ("s", version, *new.id.as_bytes())
            );
            assert_eq!(
                (envelope.event_type, envelope.content_type, envelope.data),
                (new.event_type.as_str(), new.content_type, &new.data[..])
            );
            assert_eq!(
                (envelope.metadata, envelope.recorded_at),
                (new.metadata.as_deref(), recorded_at)
            );
        }
    }

    #[test]
    fn round_trips_every_field() {
        let new = event();
        let bytes = encode("account-1", 7, &new, 1_700_000_000_123);
        assert_eq!(bytes[0], FORMAT_V1);
        let record = decode_raw(42, &bytes).unwrap();
        let recorded = Page::default().hold(42, &record).unwrap().own();
        assert_eq!(
            recorded,
            RecordedEvent {
                position: 42,
                stream: "account-1".into(),
                version: 7,
                id: new.id,
                event_type: new.event_type.into(),
                content_type: new.content_type,
                data: new.data.into(),
                metadata: new.metadata.map(Into::into),
                recorded_at: 1_700_000_000_123,
            }
        );
    }

    #[test]
    fn damaged_records_are_corrupt_at_their_position() {
        let bytes = encode("s", 1, &event(), 1);
        let mut unknown_format = bytes.clone();
        unknown_format[0] = 99;
        let mut trailing = bytes.clone();
        trailing.push(0);
        for (damaged, reason) in [
            (&[][..], "empty"),
            (&unknown_format[..], "unknown record format 99"),
            (&bytes[..bytes.len() - 3], "undecodable"),
            (&trailing[..], "trailing"),
        ] {
            match decode(5, damaged) {
                Err(JournalError::Corrupt {
                    position: 5,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{got:?} should mention {reason:?}")
                }
                other => panic!("expected Corrupt for {reason}, got {other:?}"),
            }
        }
    }
}
