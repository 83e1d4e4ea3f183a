//! The body of `POST /streams/{stream}/events`, parsed no further than the journal's limit on
//! events: past it the rest are counted, not kept. A parsed event holds a string and a boxed
//! copy of its data beside its fields, ~11× the bytes of a tiny event as sent, so an 8 MiB body
//! of `{"type":"a","data":0}` would take ~90 MB before the journal counted its events.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::errors::ApiError;
use super::extract::invalid_json;
use crate::journal::{ExpectedVersion, JournalError};

/// `POST /streams/{stream}/events`. Parsed by hand (see [`AppendRequest::parse`]); the serde
/// attributes tell the schema what the parser does.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    #[serde(default)]
    pub(super) expected_version: Expected,
    pub(super) events: Vec<EventInput>,
}

/// One event to append. `data` and `metadata` are kept as the exact JSON text sent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EventInput {
    /// Re-sending an event id makes the append idempotent; a fresh (time-ordered) one is
    /// made if absent.
    pub(super) id: Option<Uuid>,
    #[serde(rename = "type")]
    pub(super) event_type: String,
    #[schema(value_type = Value)]
    pub(super) data: Box<RawValue>,
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub(super) metadata: Option<Box<RawValue>>,
}

impl AppendRequest {
    /// Parses `body`, refusing (413) an append of more than `max_events` events once the rest
    /// of the array has been read through without keeping it.
    pub(super) fn parse(body: &[u8], max_events: usize) -> Result<Self, ApiError> {
        let mut json = serde_json::Deserializer::from_slice(body);
        let request = UpTo(max_events)
            .deserialize(&mut json)
            .and_then(|request| json.end().map(|()| request))
            .map_err(invalid_json)?;
        Ok(request?)
    }
}

/// Parses a request, or an array of events, keeping at most `.0` events.
struct UpTo(usize);

/// The fields of [`AppendRequest`]; any other is refused.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    ExpectedVersion,
    Events,
}

impl<'de> DeserializeSeed<'de> for UpTo {
    type Value = Result<AppendRequest, JournalError>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for UpTo {
    type Value = Result<AppendRequest, JournalError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `events` and optionally `expected_version`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut expected_version, mut events) = (None, None);
        while let Some(field) = map.next_key()? {
            match field {
                Field::ExpectedVersion if expected_version.is_none() => {
                    expected_version = Some(map.next_value()?);
                }
                Field::Events if events.is_none() => {
                    events = Some(map.next_value_seed(EventsUpTo(self.0))?);
                }
                Field::ExpectedVersion => {
                    return Err(de::Error::duplicate_field("expected_version"));
                }
                Field::Events => return Err(de::Error::duplicate_field("events")),
            }
        }
        let events = events.ok_or_else(|| de::Error::missing_field("events"))?;
        Ok(events.map(|events| AppendRequest {
            expected_version: expected_version.unwrap_or_default(),
            events,
        }))
    }
}

/// Parses an array of events, keeping at most `.0` of them.
struct EventsUpTo(usize);

impl<'de> DeserializeSeed<'de> for EventsUpTo {
    type Value = Result<Vec<EventInput>, JournalError>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsUpTo {
    type Value = Result<Vec<EventInput>, JournalError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let max = self.0;
        let mut events = Vec::new();
        while let Some(event) = seq.next_element()? {
            if events.len() == max {
                // One past the limit: free what was kept and only count the rest.
                drop((event, events));
                let mut count = max + 1;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                return Ok(Err(JournalError::TooManyEvents { count, max }));
            }
            events.push(event);
        }
        Ok(Ok(events))
    }
}

/// `expected_version`: a version number, `"any"` or `"no_stream"`; absent means any.
pub(super) struct Expected(pub(super) ExpectedVersion);

impl Default for Expected {
    fn default() -> Self {
        Self(ExpectedVersion::Any)
    }
}

/// Documents what [`Expected`] deserialises by hand.
impl utoipa::PartialSchema for Expected {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["any", "no_stream"])),
            )
            .description(Some(
                "The stream's version must be exactly this number, or `any` (the default), or \
                 `no_stream` (it must not exist yet)",
            ))
            .into()
    }
}

impl ToSchema for Expected {
    fn name() -> std::borrow::Cow<'static, str> {
        "ExpectedVersion".into()
    }
}

/// Reads an [`Expected`] from what it is sent as, without building a value of anything else
/// (an array as `expected_version` is refused at its first bracket).
impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ExpectedVisitor)
    }
}

struct ExpectedVisitor;

impl ExpectedVisitor {
    fn not<E: de::Error>(sent: impl fmt::Display) -> E {
        E::custom(format!(
            r#"expected_version must be a version number, "any" or "no_stream", not {sent}"#
        ))
    }
}

impl<'de> Visitor<'de> for ExpectedVisitor {
    type Value = Expected;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a version number, "any" or "no_stream""#)
    }

    fn visit_u64<E: de::Error>(self, version: u64) -> Result<Expected, E> {
        Ok(Expected(ExpectedVersion::Exact(version)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Expected, E> {
        Err(Self::not(number))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Expected, E> {
        Err(Self::not(number))
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Expected, E> {
        Err(Self::not(flag))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Expected, E> {
        Err(Self::not("null"))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Expected, E> {
        match text {
            "any" => Ok(Expected(ExpectedVersion::Any)),
            "no_stream" => Ok(Expected(ExpectedVersion::NoStream)),
            // A query string (`?expected_version=3`) carries numbers as text.
            number => number
                .parse()
                .map(|version| Expected(ExpectedVersion::Exact(version)))
                .map_err(|_| Self::not(format!("{text:?}"))),
        }
    }

    /// Refused at its first bracket: nothing of it is read.
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Expected, A::Error> {
        Err(Self::not("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Expected, A::Error> {
        Err(Self::not("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> String {
        let event = r#"{"type":"t","data":{"n":1}}"#;
        format!(r#"{{"events":[{}]}}"#, vec![event; n].join(","))
    }

    fn refusal(body: &str, max: usize) -> String {
        let Err(error) = AppendRequest::parse(body.as_bytes(), max) else {
            panic!("{body} was taken");
        };
        format!("{error:?}")
    }

    #[test]
    fn an_append_of_the_limit_is_kept_whole_and_one_more_is_counted() {
        let kept = AppendRequest::parse(events(3).as_bytes(), 3).unwrap();
        assert_eq!(kept.events.len(), 3);
        assert_eq!(kept.events[2].data.get(), r#"{"n":1}"#);
        assert!(matches!(kept.expected_version.0, ExpectedVersion::Any));
        let over = refusal(&events(5), 3);
        assert!(
            over.contains("append of 5 events exceeds the limit of 3"),
            "{over}"
        );
    }

    #[test]
    fn malformed_requests_are_refused_as_such() {
        let missing = refusal(r#"{"expected_version":2}"#, 3);
        assert!(missing.contains("missing field `events`"), "{missing}");
        let unknown = refusal(r#"{"events":[],"extra":1}"#, 3);
        assert!(unknown.contains("unknown field `extra`"), "{unknown}");
        let twice = refusal(r#"{"events":[],"events":[]}"#, 3);
        assert!(twice.contains("duplicate field `events`"), "{twice}");
        let trailing = refusal(r#"{"events":[]} x"#, 3);
        assert!(trailing.contains("trailing characters"), "{trailing}");
        // Past the limit the rest is still read as JSON: a broken tail is a broken body.
        let broken = refusal(&format!("{}]", &events(5)[..events(5).len() - 2]), 3);
        assert!(broken.contains("invalid JSON body"), "{broken}");
    }

    #[test]
    fn an_expected_version_is_read_before_or_after_the_events() {
        let after = AppendRequest::parse(br#"{"events":[],"expected_version":"no_stream"}"#, 3);
        assert!(matches!(
            after.unwrap().expected_version.0,
            ExpectedVersion::NoStream
        ));
        let before = AppendRequest::parse(br#"{"expected_version":7,"events":[]}"#, 3);
        assert!(matches!(
            before.unwrap().expected_version.0,
            ExpectedVersion::Exact(7)
        ));
        for wrong in [r#""7x""#, "-1", "1.5", "null", "[1]", r#"{"v":1}"#] {
            let body = format!(r#"{{"expected_version":{wrong},"events":[]}}"#);
            let refused = refusal(&body, 3);
            assert!(
                refused.contains(
                    r#"expected_version must be a version number, \"any\" or \"no_stream\", not "#
                ),
                "{wrong}: {refused}"
            );
        }
    }
}
