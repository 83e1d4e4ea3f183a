//! The stored form of an event: a format byte followed by a postcard-encoded envelope.
//!
//! The leading byte lets the envelope evolve: a new layout gets a new byte and old records keep
//! decoding with their own layout.

use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use super::{ContentType, JournalError, NewEvent, RecordedEvent};

/// The layout written by this build.
const FORMAT_V1: u8 = 1;

/// Layout 1. Field order is the wire format: never reorder, only add a new layout.
#[derive(Serialize, Deserialize)]
struct EnvelopeV1<'a> {
    stream: &'a str,
    version: u64,
    id: [u8; 16],
    event_type: &'a str,
    content_type: ContentType,
    #[serde(serialize_with = "as_bytes")]
    data: &'a [u8],
    #[serde(borrow)]
    metadata: Option<&'a str>,
    recorded_at: u64,
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

/// Decodes the record stored at `position`.
pub(super) fn decode(position: u64, bytes: &[u8]) -> Result<RecordedEvent, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt { position, reason };
    let (&format, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".to_owned()))?;
    if format != FORMAT_V1 {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    let (envelope, rest) = postcard::take_from_bytes::<EnvelopeV1<'_>>(body)
        .map_err(|error| corrupt(format!("undecodable envelope: {error}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(RecordedEvent {
        position,
        stream: envelope.stream.to_owned(),
        version: envelope.version,
        id: Uuid::from_bytes(envelope.id),
        event_type: envelope.event_type.to_owned(),
        content_type: envelope.content_type,
        data: envelope.data.to_vec(),
        metadata: envelope.metadata.map(str::to_owned),
        recorded_at: envelope.recorded_at,
    })
}

#[cfg(test)]
mod tests {
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
    fn round_trips_every_field() {
        let new = event();
        let bytes = encode("account-1", 7, &new, 1_700_000_000_123);
        assert_eq!(bytes[0], FORMAT_V1);
        let recorded = decode(42, &bytes).unwrap();
        assert_eq!(
            recorded,
            RecordedEvent {
                position: 42,
                stream: "account-1".to_owned(),
                version: 7,
                id: new.id,
                event_type: new.event_type,
                content_type: new.content_type,
                data: new.data,
                metadata: new.metadata,
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
