//! Default state encodings shared by aggregates and projections.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The state as JSON; a state that cannot be written as JSON is a plugin bug.
pub(crate) fn to_json<T: Serialize>(state: &T) -> String {
    serde_json::to_string(state)
        .unwrap_or_else(|e| panic!("plugin state cannot be written as JSON: {e}"))
}

/// The state as a postcard snapshot; failure is a plugin bug.
pub(crate) fn to_snapshot<T: Serialize>(state: &T) -> Vec<u8> {
    postcard::to_allocvec(state)
        .unwrap_or_else(|e| panic!("plugin state cannot be written as postcard: {e}"))
}

/// Reads a snapshot written by [`to_snapshot`].
pub(crate) fn from_snapshot<T: DeserializeOwned>(snapshot: &[u8]) -> Result<T, String> {
    postcard::from_bytes(snapshot).map_err(|e| format!("snapshot cannot be decoded: {e}"))
}
