//! The journal's data model: what callers append and what they read back.

use bytes::Bytes;
pub use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How an event's `data` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// UTF-8 JSON (the default).
    #[default]
    Json,
    /// Opaque bytes.
    Binary,
}

/// The condition an append places on the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's current version must be exactly this (1 = one event).
    Exact(u64),
}

/// As the JSON API spells it: `9`, `"no_stream"` or `"any"`.
impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("\"any\""),
            Self::NoStream => f.write_str("\"no_stream\""),
            Self::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// An event as handed to [`append`](super::Journal::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the journal; re-sending the same id makes an append idempotent.
    pub id: Uuid,
    /// The type name.
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Vec<u8>,
    /// A JSON object as text, if any.
    pub metadata: Option<String>,
}

impl NewEvent {
    /// A JSON event with a fresh id and no metadata.
    ///
    /// The id is a UUIDv7 (time-ordered): the journal's event-id index then grows at its end
    /// instead of at random places, which keeps commits small (in the journal benchmark,
    /// batched appends with random v4 ids ran at about half the rate).
    pub fn json(event_type: impl Into<String>, data: &serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            content_type: ContentType::Json,
            data: serde_json::to_vec(data).expect("a JSON value always serialises"),
            metadata: None,
        }
    }

    /// The bytes the journal's size limits count: `data`, `metadata` and `event_type`.
    pub fn size(&self) -> usize {
        self.data.len() + self.event_type.len() + self.metadata.as_ref().map_or(0, String::len)
    }
}

/// An event as stored in the journal.
///
/// Its text and data are reference-counted slices: the events of one read share a few buffers
/// instead of owning three or four each, and clones are cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// 1-based, gapless position in the global log.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: ByteString,
    /// 1-based version within the stream.
    pub version: u64,
    /// Unique across the journal.
    pub id: Uuid,
    /// The type name.
    pub event_type: ByteString,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// A JSON object as text, if any.
    pub metadata: Option<ByteString>,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: u64,
}

/// A stored event as [`Journal::scan_all`](super::Journal::scan_all) hands it to its visitor:
/// the fields of a [`RecordedEvent`], its text and data borrowed from the page the journal read
/// (valid for the one call), so a scan copies and counts nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// 1-based, gapless position in the global log.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: &'a str,
    /// 1-based version within the stream.
    pub version: u64,
    /// Unique across the journal.
    pub id: Uuid,
    /// The type name.
    pub event_type: &'a str,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: &'a [u8],
    /// A JSON object as text, if any.
    pub metadata: Option<&'a str>,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: u64,
}

impl EventRef<'_> {
    /// The event as an owned [`RecordedEvent`] (copying its text and data).
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            stream: self.stream.into(),
            version: self.version,
            id: self.id,
            event_type: self.event_type.into(),
            content_type: self.content_type,
            data: Bytes::copy_from_slice(self.data),
            metadata: self.metadata.map(ByteString::from),
            recorded_at: self.recorded_at,
        }
    }
}

impl<'a> From<&'a RecordedEvent> for EventRef<'a> {
    fn from(event: &'a RecordedEvent) -> Self {
        EventRef {
            position: event.position,
            stream: &event.stream,
            version: event.version,
            id: event.id,
            event_type: &event.event_type,
            content_type: event.content_type,
            data: &event.data,
            metadata: event.metadata.as_deref(),
            recorded_at: event.recorded_at,
        }
    }
}

/// Where an append's events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppendResult {
    /// Stream version of the first event.
    pub first_version: u64,
    /// Stream version of the last event.
    pub last_version: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// Global position of the last event.
    pub last_position: u64,
}

/// Whether `stream` belongs to `category`, i.e. is named `{category}-{id}`.
///
/// Categories may themselves contain '-' (plugin `bank-account` owns stream
/// `bank-account-42`), so membership is a prefix test, not a split.
pub fn in_category(stream: &str, category: &str) -> bool {
    stream
        .strip_prefix(category)
        .is_some_and(|rest| rest.starts_with('-'))
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// Every event up to this global position is in it, none after.
    pub position: u64,
    /// Events it holds (fewer than `position` when some were scavenged).
    pub events: u64,
    /// Size of the backup file.
    pub bytes: u64,
}

/// How much one read may return: at most `events` events, and no event that would bring the
/// [sizes](RecordedEvent::size) read over `bytes` — except the first, so a read always makes
/// progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    /// Most events.
    pub events: usize,
    /// Most bytes of events (the first event excepted).
    pub bytes: usize,
}

impl ReadLimit {
    /// At most `events` events, whatever their size.
    pub fn events(events: usize) -> Self {
        Self {
            events,
            bytes: usize::MAX,
        }
    }

    /// Whether an event of [`size`](RecordedEvent::size) still fits after `used` bytes (then
    /// counted into `used`).
    pub(super) fn admits(&self, used: &mut usize, size: usize, first: bool) -> bool {
        let total = used.saturating_add(size);
        if !first && total > self.bytes {
            return false;
        }
        *used = total;
        true
    }
}

impl RecordedEvent {
    /// The bytes the journal's size limit counts: `data`, `metadata` and `event_type`.
    pub fn size(&self) -> usize {
        self.data.len() + self.event_type.len() + self.metadata.as_deref().map_or(0, str::len)
    }
}

/// An event a projection could not fold and skipped, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParkedEvent {
    /// The event's global position.
    pub position: u64,
    /// The event's stream.
    pub stream: String,
    #[serde(rename = "type")]
    /// The event's type.
    pub event_type: String,
    /// Why the last attempt to fold it failed.
    pub reason: String,
    /// How many times folding it was tried.
    pub attempts: u32,
    /// When it was parked, in milliseconds since the Unix epoch.
    pub parked_at: u64,
}
