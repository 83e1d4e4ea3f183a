//! Idempotency keys of commands: the ids a keyed command's events get, how a retry finds the
//! command stored under its key, and the check that it is the same command.
//!
//! A key makes retries safe: a command whose key was stored answers that command's outcome
//! and appends nothing. As the IETF Idempotency-Key draft asks, a key sent again with another
//! command (another type, or other data) is refused (422), never answered with the first
//! command's outcome: the first event of a keyed command carries the key and SHA-256s of the
//! command in its metadata, `{"idempotency_key": …, "command_sha256": …,
//! "canonical_command_sha256": …}`: of its data as sent, and in a canonical form (see
//! [`canonical`]), so that a retry that serialized the same JSON with other spacing or key
//! order is the same command. A host of an earlier release, sharing a PostgreSQL journal,
//! checks the first only, as it always did.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::commands::Command;
use super::error::RuntimeError;
use crate::journal::{Journal, JournalError, NewEvent, ReadLimit, RecordedEvent};

/// The namespace of event ids derived from idempotency keys.
const IDEMPOTENCY_IDS: Uuid = Uuid::from_u128(0x6f6c_6468_6f73_7449_6465_6d70_6f74_656e);

/// The id of event `index` of the command with idempotency `key` on `stream`: the same on
/// every retry and every host, so the journal's idempotent append recognises a retry.
fn derived_id(stream: &str, key: &str, index: usize) -> Uuid {
    let name = format!("{}:{stream}{}:{key}{index}", stream.len(), key.len());
    Uuid::new_v5(&IDEMPOTENCY_IDS, name.as_bytes())
}

/// The stored events of the command with idempotency `key` on `stream`, if it was stored:
/// consecutive events whose ids derive from the key.
///
/// Event ids are the client's to choose, so the first derived id may be taken by an event of
/// another stream (by mistake, or to pass that event off as this command's outcome): that is
/// [`JournalError::DuplicateEventId`], as the command's own append of it would be.
pub(super) fn committed(
    journal: &Journal,
    stream: &str,
    key: &str,
) -> Result<Option<Vec<RecordedEvent>>, JournalError> {
    let Some(first) = journal.event_by_id(derived_id(stream, key, 0))? else {
        return Ok(None);
    };
    if &*first.stream != stream {
        return Err(JournalError::DuplicateEventId {
            id: first.id,
            stream: first.stream.to_string(),
            position: Some(first.position),
        });
    }
    let mut events = vec![first];
    loop {
        let next = events.last().expect("not empty").version + 1;
        let page = journal.read_stream_within(stream, next, ReadLimit::events(64))?;
        let before = events.len();
        for event in page {
            if event.id != derived_id(stream, key, events.len()) {
                break;
            }
            events.push(event);
        }
        if events.len() - before < 64 {
            return Ok(Some(events));
        }
    }
}

/// What the first event of a keyed command records of it, as its metadata.
#[derive(Serialize)]
struct KeyUse<'a> {
    idempotency_key: &'a str,
    command_sha256: String,
    canonical_command_sha256: String,
}

/// The part of [`KeyUse`] read back: owned, as a key may hold characters JSON escapes.
/// Keys recorded before the canonical form have no `canonical_command_sha256`.
#[derive(Deserialize)]
struct RecordedUse {
    command_sha256: String,
    canonical_command_sha256: Option<String>,
}

/// The SHA-256 of `command`'s type and `data` (its data, or that in canonical form), in hex.
fn command_sha256(command: &Command, data: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update((command.command_type.len() as u64).to_le_bytes());
    hasher.update(&command.command_type);
    hasher.update(data);
    hex::encode(hasher.finalize())
}

/// JSON `data` with no whitespace and every object's keys in order, so that two
/// serializations of the same command compare equal. Data that a parse could not give back
/// exactly stays as it is, so that two commands that differ never compare equal: a number that
/// is not a 64-bit integer (parsed, it is rounded to a float), an object with a key twice (the
/// parse keeps the last, where a plugin may refuse the command), and data that is not JSON.
fn canonical(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let value = serde_json::from_slice::<UniqueKeys>(data)
        .and_then(|UniqueKeys| serde_json::from_slice::<serde_json::Value>(data));
    match value {
        Ok(value) if integers_only(&value) => {
            std::borrow::Cow::Owned(serde_json::to_vec(&value).expect("serializable"))
        }
        _ => std::borrow::Cow::Borrowed(data),
    }
}

/// Any JSON whose objects hold each key once (deserializing fails otherwise).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut fields: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = fields.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(serde::de::Error::custom("a key twice"));
            }
            fields.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

/// Whether every number in `value` is a 64-bit integer (read exactly).
fn integers_only(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(number) => !number.is_f64(),
        Value::Array(items) => items.iter().all(integers_only),
        Value::Object(fields) => fields.values().all(integers_only),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

/// Gives the events `command` decided under `key` on `stream` their derived ids, and the
/// first one the key's metadata (see the module's doc).
pub(super) fn mark(events: &mut [NewEvent], stream: &str, key: &str, command: &Command) {
    for (index, event) in events.iter_mut().enumerate() {
        event.id = derived_id(stream, key, index);
    }
    if let Some(first) = events.first_mut() {
        let key_use = KeyUse {
            idempotency_key: key,
            command_sha256: command_sha256(command, &command.data),
            canonical_command_sha256: command_sha256(command, &canonical(&command.data)),
        };
        first.metadata = Some(serde_json::to_string(&key_use).expect("serializable"));
    }
}

/// Refuses `command` if the command stored under its key (whose first event is `first`) was
/// another one: neither its data as sent nor its canonical form is the recorded one's. Events
/// stored before keys recorded their command pass.
pub(super) fn check_same(
    first: &RecordedEvent,
    command: &Command,
    key: &str,
) -> Result<(), RuntimeError> {
    let recorded = first
        .metadata
        .as_deref()
        .and_then(|metadata| serde_json::from_str::<RecordedUse>(metadata).ok());
    let same = |recorded: &RecordedUse| {
        let canonical = || command_sha256(command, &canonical(&command.data));
        recorded.command_sha256 == command_sha256(command, &command.data)
            || match &recorded.canonical_command_sha256 {
                Some(hash) => *hash == canonical(),
                // A few development builds recorded the canonical hash as `command_sha256`.
                None => recorded.command_sha256 == canonical(),
            }
    };
    match recorded {
        Some(recorded) if !same(&recorded) => Err(RuntimeError::KeyReused {
            stream: first.stream.to_string(),
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Refuses `command` if an earlier command of the same round used its key for another command.
pub(super) fn check_same_as(
    earlier: &Command,
    command: &Command,
    stream: &str,
    key: &str,
) -> Result<(), RuntimeError> {
    if earlier.command_type == command.command_type
        && canonical(&earlier.data) == canonical(&command.data)
    {
        Ok(())
    } else {
        Err(RuntimeError::KeyReused {
            stream: stream.to_owned(),
            key: key.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        canonical(a.as_bytes()) == canonical(b.as_bytes())
    }

    #[test]
    fn the_canonical_form_ignores_spacing_and_key_order_but_not_values() {
        assert!(same(
            r#"{"amount": 5, "note": {"b": [1, 2], "a": "x"}}"#,
            r#"{"note":{"a":"x","b":[1,2]},"amount":5}"#
        ));
        assert!(same(r#"{"s": "A"}"#, r#"{"s": "\u0041"}"#));
        assert!(!same(r#"{"amount": 5}"#, r#"{"amount": 6}"#));
        assert!(!same(r#"{"b": [1, 2]}"#, r#"{"b": [2, 1]}"#));
        // Numbers a parse would round are compared as sent.
        assert!(!same(
            r#"{"amount": 18446744073709551616}"#,
            r#"{"amount": 18446744073709551617}"#
        ));
        assert!(!same(r#"{"x": 0.1}"#, r#"{"x": 0.10}"#));
        // A key twice: a plugin may refuse the one and take the other.
        assert!(!same(r#"{"amount": 1, "amount": 5}"#, r#"{"amount": 5}"#));
        assert!(!same(r#"[{"a": 1, "a": 1}]"#, r#"[{"a": 1}]"#));
        assert!(!same("not json", "not  json"));
    }
}
