//! The stored form of an event: a layout byte followed by the event in that layout.
//!
//! The leading byte lets the stored form evolve: a new layout gets a new byte and old records
//! keep decoding with their own layout. This build writes layout 2 and reads both:
//! - Layout 1: a postcard-encoded [`Envelope`] (varints, field by field).
//! - Layout 2: a fixed-size little-endian [`Header`], read in place, then the stream name, the
//!   event type, the data and the metadata, their lengths in the header. Decoding it is a few
//!   bounds checks rather than a call per field (a tenth of a scan's instructions).
//!
//! Records are read back borrowing their text and data from the stored bytes, so a read
//! allocates only where its events are made (`Page`).

use serde::Deserialize;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{ContentType, JournalError, NewEvent};

/// The postcard layout, written by builds before layout 2.
const LAYOUT_1: u8 = 1;
/// The fixed-header layout written by this build.
const LAYOUT_2: u8 = 2;

/// A decoded record, borrowing its text and data from the stored bytes.
///
/// It is also layout 1's wire form: there field order is the format, never reorder. Postcard
/// writes a `str` and a byte string alike (length, then bytes), so `Name` only chooses whether
/// decoding checks the names.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<'a, Name = &'a str> {
    pub stream: Name,
    pub version: u64,
    pub id: [u8; 16],
    pub event_type: Name,
    pub content_type: ContentType,
    pub data: &'a [u8],
    #[serde(borrow)]
    pub metadata: Option<&'a str>,
    pub recorded_at: u64,
}

/// A decoded record whose stream and type names are not yet checked to be UTF-8: a page of
/// many events checks each name once, not once per event (see `Page`).
pub(super) type RawEnvelope<'a> = Envelope<'a, &'a [u8]>;

impl<Name: AsRef<[u8]>> Envelope<'_, Name> {
    /// What a read's size limit counts, as [`RecordedEvent::size`](super::RecordedEvent::size).
    pub fn size(&self) -> usize {
        self.data.len() + self.event_type.as_ref().len() + self.metadata.map_or(0, str::len)
    }
}

/// Layout 2's fixed part, after the layout byte; the stream name, event type, data and
/// metadata follow in that order. Every field is a byte array (alignment 1), so it is read in
/// place wherever the record starts. Never reorder or resize: a change is a new layout.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    version: U64,
    recorded_at: U64,
    id: [u8; 16],
    stream_len: U32,
    type_len: U32,
    data_len: U32,
    metadata_len: U32,
    /// 0 JSON, 1 binary.
    content_type: u8,
    /// 1 when the event has metadata (possibly empty), else 0 and `metadata_len` is 0.
    has_metadata: u8,
}

/// The length of a field in layout 2's header. A field of 4 GiB or more makes a record redb
/// refuses to store (its values stop at 3 GiB), so a saturated length never reaches a file.
fn length(bytes: &[u8]) -> U32 {
    U32::new(u32::try_from(bytes.len()).unwrap_or(u32::MAX))
}

/// Encodes `event` as the record for `version` of `stream`, in layout 2.
#[cfg(test)]
pub(super) fn encode(stream: &str, version: u64, event: &NewEvent, recorded_at: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_into(&mut bytes, stream, version, event, recorded_at);
    bytes
}

/// Appends the record for `version` of `stream` holding `event`, in layout 2, to `bytes`: a
/// batch encodes its records into one buffer rather than allocating one each.
pub(super) fn encode_into(
    bytes: &mut Vec<u8>,
    stream: &str,
    version: u64,
    event: &NewEvent,
    recorded_at: u64,
) {
    let metadata = event.metadata.as_deref();
    let metadata_bytes = metadata.unwrap_or_default().as_bytes();
    let header = Header {
        version: U64::new(version),
        recorded_at: U64::new(recorded_at),
        id: *event.id.as_bytes(),
        stream_len: length(stream.as_bytes()),
        type_len: length(event.event_type.as_bytes()),
        data_len: length(&event.data),
        metadata_len: length(metadata_bytes),
        content_type: match event.content_type {
            ContentType::Json => 0,
            ContentType::Binary => 1,
        },
        has_metadata: metadata.is_some().into(),
    };
    let fields = [
        header.as_bytes(),
        stream.as_bytes(),
        event.event_type.as_bytes(),
        event.data.as_slice(),
        metadata_bytes,
    ];
    bytes.reserve(1 + fields.iter().map(|field| field.len()).sum::<usize>());
    bytes.push(LAYOUT_2);
    for field in fields {
        bytes.extend_from_slice(field);
    }
}

/// Decodes the record stored at `position`, borrowing from `bytes`.
pub(super) fn decode(position: u64, bytes: &[u8]) -> Result<Envelope<'_>, JournalError> {
    let raw = decode_raw(position, bytes)?;
    Ok(Envelope {
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
    decode_raw_inline(position, bytes)
}

/// [`decode_raw`] inlined into its caller: for a scan's loop, where it saves moving the
/// record out of a call (in `read_all`'s larger loop inlining made it slower).
#[inline(always)]
pub(super) fn decode_raw_inline(
    position: u64,
    bytes: &[u8],
) -> Result<RawEnvelope<'_>, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt { position, reason };
    match bytes.split_first() {
        Some((&LAYOUT_2, body)) => decode_layout_2(body).map_err(corrupt),
        Some((&LAYOUT_1, body)) => decode_layout_1(body).map_err(corrupt),
        Some((layout, _)) => Err(corrupt(format!("unknown record layout {layout}"))),
        None => Err(corrupt("empty record".to_owned())),
    }
}

/// Layout 1's `body`, or why it is damaged.
fn decode_layout_1(body: &[u8]) -> Result<RawEnvelope<'_>, String> {
    let (envelope, rest) = postcard::take_from_bytes::<RawEnvelope<'_>>(body)
        .map_err(|error| format!("undecodable envelope: {error}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(envelope)
}

/// Layout 2's `body`, or why it is damaged.
#[inline]
fn decode_layout_2(body: &[u8]) -> Result<RawEnvelope<'_>, String> {
    let (header, rest) = Header::ref_from_prefix(body)
        .map_err(|_| format!("a truncated header: {} bytes", body.len()))?;
    let (stream, rest) = field(rest, header.stream_len, "stream name")?;
    let (event_type, rest) = field(rest, header.type_len, "event type")?;
    let (data, rest) = field(rest, header.data_len, "data")?;
    let (metadata, rest) = field(rest, header.metadata_len, "metadata")?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    let content_type = match header.content_type {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => return Err(format!("unknown content type {other}")),
    };
    let metadata = match (header.has_metadata, metadata.len()) {
        (0, 0) => None,
        (1, _) => Some(
            std::str::from_utf8(metadata)
                .map_err(|error| format!("its metadata is not UTF-8: {error}"))?,
        ),
        (flag, len) => return Err(format!("metadata flag {flag} with {len} bytes")),
    };
    Ok(Envelope {
        stream,
        version: header.version.get(),
        id: header.id,
        event_type,
        content_type,
        data,
        metadata,
        recorded_at: header.recorded_at.get(),
    })
}

/// The `len` bytes `what` at the start of `rest`, and what follows them.
#[inline]
fn field<'a>(rest: &'a [u8], len: U32, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let len = len.get() as usize;
    rest.split_at_checked(len).ok_or_else(|| {
        format!(
            "its {what} of {len} bytes runs past the end ({} left)",
            rest.len()
        )
    })
}

/// `name`, the `what` of the record stored at `position`, as text.
pub(super) fn utf8<'a>(position: u64, what: &str, name: &'a [u8]) -> Result<&'a str, JournalError> {
    std::str::from_utf8(name).map_err(|error| JournalError::Corrupt {
        position,
        reason: format!("its {what} is not UTF-8: {error}"),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use uuid::Uuid;

    use super::super::page::Page;
    use super::super::store::{self, EVENTS, FORMAT_KEY, FORMAT_VERSION, META};
    use super::*;
    use crate::journal::{
        DEFAULT_CACHE_BYTES, ExpectedVersion, Journal, JournalConfig, RecordedEvent,
    };

    fn event() -> NewEvent {
        NewEvent {
            id: Uuid::new_v4(),
            event_type: "Deposited".to_owned(),
            content_type: ContentType::Binary,
            data: vec![0, 1, 2, 255],
            metadata: Some(r#"{"by":"test"}"#.to_owned()),
        }
    }

    const ID: [u8; 16] = [0xa5; 16];

    /// Version 1 of `account-1` as builds before layout 2 stored it: layout byte 1, then
    /// postcard (names and data length-prefixed, numbers as varints, the id byte by byte).
    pub(in crate::journal::redb) fn layout_1_binary() -> Vec<u8> {
        [
            &[1, 9][..],
            b"account-1",
            &[1],
            &ID,
            &[9],
            b"Deposited",
            &[1],               // ContentType::Binary
            &[4, 0, 1, 2, 255], // data
            &[1, 13],           // Some(metadata), 13 bytes
            br#"{"by":"test"}"#,
            &[251, 208, 149, 255, 188, 49], // recorded_at 1_700_000_000_123
        ]
        .concat()
    }

    /// Version 2 of `account-1` in layout 1: JSON, no metadata, recorded at 0.
    pub(in crate::journal::redb) fn layout_1_json() -> Vec<u8> {
        let id = [0x5a; 16];
        [
            &[1, 9][..],
            b"account-1",
            &[2],
            &id,
            &[4],
            b"Paid",
            &[0],
            &[2],
            b"{}",
            &[0],
            &[0],
        ]
        .concat()
    }

    pub(in crate::journal::redb) fn layout_1_events() -> [RecordedEvent; 2] {
        [
            RecordedEvent {
                position: 1,
                stream: "account-1".into(),
                version: 1,
                id: Uuid::from_bytes(ID),
                event_type: "Deposited".into(),
                content_type: ContentType::Binary,
                data: vec![0, 1, 2, 255].into(),
                metadata: Some(r#"{"by":"test"}"#.into()),
                recorded_at: 1_700_000_000_123,
            },
            RecordedEvent {
                position: 2,
                stream: "account-1".into(),
                version: 2,
                id: Uuid::from_bytes([0x5a; 16]),
                event_type: "Paid".into(),
                content_type: ContentType::Json,
                data: b"{}".to_vec().into(),
                metadata: None,
                recorded_at: 0,
            },
        ]
    }

    fn recorded(position: u64, bytes: &[u8]) -> RecordedEvent {
        let record = decode_raw(position, bytes).unwrap();
        Page::default().hold(position, &record).unwrap().own()
    }

    #[test]
    fn reads_back_what_it_wrote() {
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
            assert_eq!(bytes[0], LAYOUT_2);
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
        assert_eq!(
            recorded(42, &bytes),
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
    fn decodes_stored_layout_1_records() {
        let [binary, json] = layout_1_events();
        assert_eq!(recorded(1, &layout_1_binary()), binary);
        assert_eq!(recorded(2, &layout_1_json()), json);
        // The same event in layout 2 reads back the same.
        let new = NewEvent {
            id: binary.id,
            event_type: "Deposited".to_owned(),
            content_type: ContentType::Binary,
            data: vec![0, 1, 2, 255],
            metadata: Some(r#"{"by":"test"}"#.to_owned()),
        };
        assert_eq!(
            recorded(1, &encode("account-1", 1, &new, 1_700_000_000_123)),
            binary
        );
    }

    fn assert_corrupt(damaged: &[u8], reason: &str) {
        match decode(5, damaged) {
            Err(JournalError::Corrupt {
                position: 5,
                reason: got,
            }) => assert!(got.contains(reason), "{got:?} should mention {reason:?}"),
            other => panic!("expected Corrupt for {reason}, got {other:?}"),
        }
    }

    /// `bytes`, a layout-2 record, with its header changed by `change`.
    fn with_header(bytes: &[u8], change: impl FnOnce(&mut Header)) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        let (header, _) = Header::mut_from_prefix(&mut bytes[1..]).unwrap();
        change(header);
        bytes
    }

    #[test]
    fn damaged_records_are_corrupt_at_their_position() {
        let bytes = encode("s", 1, &event(), 1);
        let header = 1 + size_of::<Header>();
        let mut unknown_layout = bytes.clone();
        unknown_layout[0] = 99;
        let mut trailing = bytes.clone();
        trailing.push(0);
        let mut old_trailing = layout_1_binary();
        old_trailing.push(0);
        let old = layout_1_binary();
        let damaged: [(Vec<u8>, &str); 15] = [
            (Vec::new(), "empty"),
            (unknown_layout, "unknown record layout 99"),
            (bytes[..header - 1].to_vec(), "truncated header"),
            (
                bytes[..bytes.len() - 3].to_vec(),
                "metadata of 13 bytes runs past the end",
            ),
            (trailing, "1 trailing bytes"),
            (
                with_header(&bytes, |h| h.stream_len = U32::new(u32::MAX)),
                "stream name of 4294967295 bytes runs past the end",
            ),
            (
                with_header(&bytes, |h| h.data_len = U32::new(1 << 20)),
                "data of 1048576 bytes runs past the end",
            ),
            (
                with_header(&bytes, |h| h.content_type = 2),
                "unknown content type 2",
            ),
            (
                with_header(&bytes, |h| h.has_metadata = 0),
                "metadata flag 0 with 13 bytes",
            ),
            (
                with_header(&bytes, |h| h.has_metadata = 7),
                "metadata flag 7",
            ),
            (
                [&bytes[..bytes.len() - 1], b"\xff"].concat(),
                "metadata is not UTF-8",
            ),
            (
                [&bytes[..header], b"\xff", &bytes[header + 1..]].concat(),
                "stream name is not UTF-8",
            ),
            (
                [&bytes[..header + 1], b"\xc3", &bytes[header + 2..]].concat(),
                "event type is not UTF-8",
            ),
            (old[..old.len() - 3].to_vec(), "undecodable"),
            (old_trailing, "1 trailing bytes"),
        ];
        for (damaged, reason) in damaged {
            assert_corrupt(&damaged, reason);
        }
    }

    #[test]
    fn a_journal_of_layout_1_records_reads_and_grows_in_layout_2() {
        use redb::{ReadableDatabase, ReadableTable};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        // A file a format 3 build wrote: two layout-1 events whose indexes are not yet in
        // the tables, so opening rebuilds them from the records too (see `Memtable::load`).
        {
            let db = store::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            let txn = db.begin_write().unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(FORMAT_KEY, 3).unwrap();
            let mut log = txn.open_table(EVENTS).unwrap();
            log.insert(1, layout_1_binary().as_slice()).unwrap();
            log.insert(2, layout_1_json().as_slice()).unwrap();
            drop((meta, log));
            txn.commit().unwrap();
        }
        let journal = Journal::open(&path, JournalConfig::default()).unwrap();
        let new = NewEvent {
            metadata: None,
            ..event()
        };
        let appended = journal
            .append_blocking("account-1", ExpectedVersion::Exact(2), vec![new.clone()])
            .unwrap();
        assert_eq!((appended.first_version, appended.first_position), (3, 3));
        let [binary, json] = layout_1_events();
        let mut expected = vec![binary.clone(), json];
        let third = journal.read_all(3, 1).unwrap().remove(0);
        assert_eq!((third.id, &third.data[..]), (new.id, &new.data[..]));
        expected.push(third);
        let reads = |journal: &Journal| {
            assert_eq!(journal.read_all(1, 10).unwrap(), expected);
            assert_eq!(journal.read_stream("account-1", 1, 10).unwrap(), expected);
            assert_eq!(
                journal.event_by_id(binary.id).unwrap(),
                Some(binary.clone())
            );
        };
        reads(&journal);
        drop(journal);
        reads(&Journal::open(&path, JournalConfig::default()).unwrap());
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let log = txn.open_table(EVENTS).unwrap();
        let layouts: Vec<u8> = log
            .iter()
            .unwrap()
            .map(|entry| entry.unwrap().1.value()[0])
            .collect();
        assert_eq!(layouts, [LAYOUT_1, LAYOUT_1, LAYOUT_2]);
        let format = txn.open_table(META).unwrap().get(FORMAT_KEY).unwrap();
        assert_eq!(format.unwrap().value(), FORMAT_VERSION);
    }
}
