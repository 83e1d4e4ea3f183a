//! The JSON form of a stored event, shared by the HTTP API, the live feed and the NDJSON
//! export/import.
//!
//! `data` and `metadata` are carried as [`RawValue`]: the exact text a client sent is what
//! is stored and what every reader gets back (key order, spacing, numbers of any size).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::journal::{ContentType, NewEvent, RecordedEvent};

/// A stored event on the wire.
///
/// `data` is the event's JSON when `content_type` is `json`, and a base64 string (standard
/// alphabet, padded) of its bytes when it is `binary`. `metadata` is a JSON object or null.
/// `recorded_at` is in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventJson {
    /// Global position.
    pub position: u64,
    /// The stream.
    pub stream: String,
    /// Version within the stream.
    pub version: u64,
    /// Unique event id.
    pub id: Uuid,
    #[serde(rename = "type")]
    /// The type name.
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    #[schema(value_type = Value)]
    /// The payload (see above).
    pub data: Box<RawValue>,
    #[schema(value_type = Option<Value>)]
    /// A JSON object or null.
    pub metadata: Option<Box<RawValue>>,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: u64,
}

impl From<RecordedEvent> for EventJson {
    fn from(event: RecordedEvent) -> Self {
        let is_json = event.content_type == ContentType::Json
            && serde_json::from_slice::<&RawValue>(&event.data).is_ok();
        let json = match String::from_utf8(Vec::from(event.data)) {
            Ok(text) if is_json => Ok(RawValue::from_string(text).expect("checked above")),
            Ok(text) => Err(text.into_bytes()),
            Err(error) => Err(error.into_bytes()),
        };
        // Bytes stored as JSON that do not parse are shown losslessly, as binary.
        let (content_type, data) = match json {
            Ok(data) => (ContentType::Json, data),
            Err(bytes) => (ContentType::Binary, base64_string(&bytes)),
        };
        let metadata = event
            .metadata
            .and_then(|text| RawValue::from_string(text.into()).ok());
        Self {
            position: event.position,
            stream: event.stream.into(),
            version: event.version,
            id: event.id,
            event_type: event.event_type.into(),
            content_type,
            data,
            metadata,
            recorded_at: event.recorded_at,
        }
    }
}

fn base64_string(bytes: &[u8]) -> Box<RawValue> {
    serde_json::value::to_raw_value(&BASE64.encode(bytes)).expect("a string serialises")
}

impl EventJson {
    /// The event to append to re-create this one elsewhere: same id, type, data and metadata
    /// (its position and version are the new journal's; its time is kept by an import).
    pub fn to_new_event(&self) -> Result<NewEvent, String> {
        let data = match self.content_type {
            ContentType::Json => self.data.get().as_bytes().to_vec(),
            ContentType::Binary => {
                let text: String = serde_json::from_str(self.data.get())
                    .map_err(|_| "binary data must be a base64 string")?;
                BASE64
                    .decode(text)
                    .map_err(|error| format!("binary data is not valid base64: {error}"))?
            }
        };
        Ok(NewEvent {
            id: self.id,
            event_type: self.event_type.clone(),
            content_type: self.content_type,
            data,
            metadata: metadata_text(self.metadata.as_deref())?,
        })
    }
}

/// The stored form of event metadata: a JSON object's text exactly as sent, or none for
/// null (or absent).
pub fn metadata_text(metadata: Option<&RawValue>) -> Result<Option<String>, String> {
    match metadata {
        None => Ok(None),
        Some(object) if object.get().starts_with('{') => Ok(Some(object.get().to_owned())),
        Some(other) => Err(format!(
            "metadata must be a JSON object, not {}",
            other.get()
        )),
    }
}
