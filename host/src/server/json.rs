//! The JSON form of a stored event, shared by the HTTP API, the live feed and the NDJSON
//! export/import.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::journal::{ContentType, NewEvent, RecordedEvent};

/// A stored event on the wire.
///
/// `data` is the event's JSON when `content_type` is `json`, and a base64 string (standard
/// alphabet, padded) of its bytes when it is `binary`. `metadata` is a JSON object or null.
/// `recorded_at` is in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventJson {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub content_type: ContentType,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: u64,
}

impl From<RecordedEvent> for EventJson {
    fn from(event: RecordedEvent) -> Self {
        let json = match event.content_type {
            ContentType::Json => serde_json::from_slice(&event.data).ok(),
            ContentType::Binary => None,
        };
        // Bytes stored as JSON that do not parse are shown losslessly, as binary.
        let (content_type, data) = match json {
            Some(data) => (ContentType::Json, data),
            None => (
                ContentType::Binary,
                Value::String(BASE64.encode(&event.data)),
            ),
        };
        let metadata = event
            .metadata
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        Self {
            position: event.position,
            stream: event.stream,
            version: event.version,
            id: event.id,
            event_type: event.event_type,
            content_type,
            data,
            metadata,
            recorded_at: event.recorded_at,
        }
    }
}

impl EventJson {
    /// The event to append to re-create this one elsewhere: same id, type, data and metadata
    /// (its position, version and time are the new journal's).
    pub fn to_new_event(&self) -> Result<NewEvent, String> {
        let data = match self.content_type {
            ContentType::Json => serde_json::to_vec(&self.data).expect("a JSON value serialises"),
            ContentType::Binary => {
                let text = self
                    .data
                    .as_str()
                    .ok_or("binary data must be a base64 string")?;
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
            metadata: metadata_text(&self.metadata)?,
        })
    }
}

/// The stored form of event metadata: a JSON object as text, or none for null.
pub fn metadata_text(metadata: &Value) -> Result<Option<String>, String> {
    match metadata {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(metadata.to_string())),
        other => Err(format!("metadata must be a JSON object, not {other}")),
    }
}
