use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::{AggregateSlot, ProjectionSlot, wit_aggregate::Guest as _, wit_projection::Guest as _};
use super::{wit_packed_aggregate, wit_packed_projection};
use crate::batch::PACKED_HEADER_LEN;
use crate::bindings::types::{
    Batch, CommandError, ContentType, Event, NewEvent, PackedBatch, Span,
};
use crate::{Aggregate, EventMeta, Projection, Rejection, Subscription};

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Added {
    Added { by: u64 },
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    const VERSION: &'static str = "0.0.1";
    type Event = Added;
    type Command = Added;

    fn apply(&mut self, Added::Added { by }: Added) {
        self.total += by;
    }

    fn handle(&self, Added::Added { by }: Added) -> Result<Vec<Added>, Rejection> {
        match by {
            0 => Err(Rejection::new("zero")),
            _ => Ok(vec![Added::Added { by }]),
        }
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Streams {
    seen: Vec<(String, u64)>,
}

impl Projection for Streams {
    const NAME: &'static str = "streams";
    const VERSION: &'static str = "0.0.1";
    type Event = Added;

    fn subscription() -> Subscription {
        Subscription::categories(["counter"])
    }

    fn apply(&mut self, Added::Added { by }: Added, meta: &EventMeta<'_>) {
        self.seen
            .push((meta.stream.to_owned(), by + meta.position * 1000));
    }
}

thread_local! {
    static COUNTER: RefCell<Option<Counter>> = const { RefCell::new(None) };
    static STREAMS: RefCell<Option<Streams>> = const { RefCell::new(None) };
}

/// What the export macros generate, by hand.
struct CounterSlot;
impl AggregateSlot for CounterSlot {
    type Aggregate = Counter;
    fn with<R>(f: impl FnOnce(&mut Counter) -> R) -> R {
        COUNTER.with_borrow_mut(|s| f(s.get_or_insert_with(Default::default)))
    }
}

struct StreamsSlot;
impl ProjectionSlot for StreamsSlot {
    type Projection = Streams;
    fn with<R>(f: impl FnOnce(&mut Streams) -> R) -> R {
        STREAMS.with_borrow_mut(|s| f(s.get_or_insert_with(Default::default)))
    }
}

/// A batch as the host encodes it: every string and payload in one buffer.
fn batch(events: &[(&str, &str, ContentType, &[u8])]) -> Batch {
    let mut buffer = Vec::new();
    let mut span = |bytes: &[u8]| {
        let offset = buffer.len() as u32;
        buffer.extend_from_slice(bytes);
        Span {
            offset,
            len: bytes.len() as u32,
        }
    };
    let events = events
        .iter()
        .enumerate()
        .map(|(i, (stream, ty, content_type, data))| Event {
            position: i as u64 + 1,
            version: 1,
            recorded_at: 0,
            content_type: *content_type,
            stream: span(stream.as_bytes()),
            event_type: span(ty.as_bytes()),
            data: span(data),
            metadata: span(b""),
        })
        .collect();
    Batch { events, buffer }
}

/// The same batch packed as the host packs it (the layout in the WIT).
fn packed(batch: Batch) -> PackedBatch {
    let mut headers = Vec::new();
    for event in &batch.events {
        headers.extend_from_slice(&event.position.to_le_bytes());
        headers.extend_from_slice(&event.version.to_le_bytes());
        headers.extend_from_slice(&event.recorded_at.to_le_bytes());
        for span in [event.stream, event.event_type, event.data, event.metadata] {
            headers.extend_from_slice(&span.offset.to_le_bytes());
            headers.extend_from_slice(&span.len.to_le_bytes());
        }
        let content_type: u32 = match event.content_type {
            ContentType::Json => 0,
            ContentType::Binary => 1,
        };
        headers.extend_from_slice(&content_type.to_le_bytes());
    }
    assert_eq!(headers.len(), batch.events.len() * PACKED_HEADER_LEN);
    PackedBatch {
        headers,
        buffer: batch.buffer,
    }
}

const JSON: ContentType = ContentType::Json;

#[test]
fn aggregate_applies_json_and_binary_events() {
    CounterSlot::init(None).unwrap();
    let binary = postcard::to_allocvec(&(5u64,)).unwrap();
    let events = batch(&[
        ("counter-1", "Added", JSON, br#"{"by":2}"#),
        ("counter-1", "Added", ContentType::Binary, &binary),
    ]);
    CounterSlot::apply(events).unwrap();
    assert_eq!(CounterSlot::state(), r#"{"total":7}"#);
}

#[test]
fn a_bad_event_fails_the_whole_batch_and_names_it() {
    CounterSlot::init(None).unwrap();
    let events = batch(&[
        ("counter-1", "Added", JSON, br#"{"by":2}"#),
        ("counter-1", "Removed", JSON, b"{}"),
    ]);
    let err = CounterSlot::apply(events).unwrap_err();
    assert!(
        err.contains("position 2") && err.contains("`Removed`"),
        "{err}"
    );
    assert_eq!(CounterSlot::state(), r#"{"total":0}"#, "state untouched");

    let mut events = batch(&[("counter-1", "Added", JSON, br#"{"by":2}"#)]);
    events.events[0].data = Span {
        offset: 3,
        len: 1000,
    };
    let err = CounterSlot::apply(events).unwrap_err();
    assert!(err.contains("data span 3+1000 lies outside"), "{err}");
}

#[test]
fn commands_map_to_new_events_or_errors() {
    CounterSlot::init(None).unwrap();
    let [
        NewEvent {
            event_type,
            content_type: ContentType::Json,
            data,
        },
    ] = &CounterSlot::handle("Added".into(), br#"{"by":3}"#.to_vec()).unwrap()[..]
    else {
        panic!("expected one JSON event");
    };
    assert_eq!(
        (event_type.as_str(), &data[..]),
        ("Added", &br#"{"by":3}"#[..])
    );
    let Err(CommandError::Rejected(reason)) =
        CounterSlot::handle("Added".into(), br#"{"by":0}"#.to_vec())
    else {
        panic!("expected a rejection");
    };
    assert_eq!(reason, "zero");
    let Err(CommandError::Invalid(message)) = CounterSlot::handle("Nope".into(), b"{}".to_vec())
    else {
        panic!("expected an invalid command");
    };
    assert!(message.contains("unknown variant `Nope`"), "{message}");
}

#[test]
fn snapshots_restore_and_bad_snapshots_are_errors() {
    CounterSlot::init(None).unwrap();
    CounterSlot::apply(batch(&[("counter-1", "Added", JSON, br#"{"by":4}"#)])).unwrap();
    let snapshot = CounterSlot::snapshot();
    CounterSlot::init(None).unwrap();
    CounterSlot::init(Some(snapshot)).unwrap();
    assert_eq!(CounterSlot::state(), r#"{"total":4}"#);
    assert!(CounterSlot::init(Some(vec![0xff, 0xff])).is_err());
    let description = CounterSlot::describe();
    assert_eq!(
        (description.name.as_str(), description.state_schema),
        ("counter", 1)
    );
}

#[test]
fn projections_skip_events_outside_their_subscription() {
    StreamsSlot::init(None).unwrap();
    let events = batch(&[
        ("counter-a", "Added", JSON, br#"{"by":1}"#),
        ("other-b", "Unrelated", JSON, b"{}"),
        ("counters-c", "Added", JSON, br#"{"by":1}"#),
        ("counter-d", "Added", JSON, br#"{"by":3}"#),
    ]);
    StreamsSlot::apply(events).unwrap();
    assert_eq!(
        StreamsSlot::state(),
        r#"{"seen":[["counter-a",1001],["counter-d",4003]]}"#
    );
    assert_eq!(StreamsSlot::subscription().categories, ["counter"]);
}

#[test]
fn a_projection_checks_the_stream_span_an_aggregate_never_reads() {
    let broken = || {
        let mut events = batch(&[
            ("counter-a", "Added", JSON, br#"{"by":1}"#),
            ("counter-b", "Added", JSON, br#"{"by":2}"#),
        ]);
        events.events[1].stream = Span {
            offset: 7,
            len: 1000,
        };
        events
    };
    StreamsSlot::init(None).unwrap();
    let err = StreamsSlot::apply(broken()).unwrap_err();
    assert!(
        err.contains("position 2: stream span 7+1000 lies outside"),
        "{err}"
    );
    assert_eq!(StreamsSlot::state(), r#"{"seen":[]}"#, "state untouched");

    CounterSlot::init(None).unwrap();
    CounterSlot::apply(broken()).unwrap();
    assert_eq!(CounterSlot::state(), r#"{"total":3}"#);
}

#[test]
fn projection_queries() {
    StreamsSlot::init(None).unwrap();
    let err = StreamsSlot::query("top".into(), String::new()).unwrap_err();
    assert_eq!(err, "unknown query `top`");
    let err = StreamsSlot::query("top".into(), "{".into()).unwrap_err();
    assert!(err.starts_with("query arguments are not JSON"), "{err}");
}

#[test]
fn packed_batches_fold_like_span_batches() {
    let binary = postcard::to_allocvec(&(5u64,)).unwrap();
    let events = || {
        batch(&[
            ("counter-a", "Added", JSON, br#"{"by":2}"#),
            ("other-b", "Added", JSON, br#"{"by":3}"#),
            ("counter-c", "Added", ContentType::Binary, &binary),
        ])
    };
    CounterSlot::init(None).unwrap();
    <CounterSlot as wit_packed_aggregate::Guest>::apply(packed(events())).unwrap();
    let packed_state = CounterSlot::state();
    CounterSlot::init(None).unwrap();
    CounterSlot::apply(events()).unwrap();
    assert_eq!(packed_state, CounterSlot::state());
    assert_eq!(packed_state, r#"{"total":10}"#);

    StreamsSlot::init(None).unwrap();
    <StreamsSlot as wit_packed_projection::Guest>::apply(packed(events())).unwrap();
    assert_eq!(
        StreamsSlot::state(),
        r#"{"seen":[["counter-a",1002],["counter-c",3005]]}"#
    );
}

#[test]
fn a_packed_header_pointing_outside_the_buffer_names_the_event() {
    let apply = |events: PackedBatch| {
        CounterSlot::init(None).unwrap();
        let err = <CounterSlot as wit_packed_aggregate::Guest>::apply(events).unwrap_err();
        assert_eq!(CounterSlot::state(), r#"{"total":0}"#, "state untouched");
        err
    };
    let events = || {
        packed(batch(&[
            ("counter-1", "Added", JSON, br#"{"by":2}"#),
            ("counter-1", "Added", JSON, br#"{"by":3}"#),
        ]))
    };
    // The second event's header with one u32 field (at a byte offset) overwritten.
    let with_field = |at: usize, value: u32| {
        let mut batch = events();
        let field = PACKED_HEADER_LEN + at..PACKED_HEADER_LEN + at + 4;
        batch.headers[field].copy_from_slice(&value.to_le_bytes());
        batch
    };
    for (at, value, expected) in [
        (
            44,
            1000,
            "event at position 2: data span 36+1000 lies outside the 44-byte buffer",
        ),
        (
            32,
            u32::MAX,
            "event at position 2: event type span 4294967295+5 lies outside",
        ),
        (56, 7, "event at position 2: content type 7 is neither"),
    ] {
        let err = apply(with_field(at, value));
        assert!(err.contains(expected), "{err}");
    }

    let mut torn = events();
    torn.headers.pop();
    let err = apply(torn);
    assert!(
        err.contains("headers are 119 bytes, not a whole number of 60-byte records"),
        "{err}"
    );
}

#[test]
fn a_packed_projection_checks_the_stream_span() {
    let mut events = packed(batch(&[
        ("counter-a", "Added", JSON, br#"{"by":1}"#),
        ("counter-b", "Added", JSON, br#"{"by":2}"#),
    ]));
    let stream = PACKED_HEADER_LEN + 28..PACKED_HEADER_LEN + 32;
    events.headers[stream].copy_from_slice(&1000u32.to_le_bytes());
    StreamsSlot::init(None).unwrap();
    let err = <StreamsSlot as wit_packed_projection::Guest>::apply(events).unwrap_err();
    assert!(
        err.contains("position 2: stream span 22+1000 lies outside"),
        "{err}"
    );
    assert_eq!(StreamsSlot::state(), r#"{"seen":[]}"#, "state untouched");
}

#[test]
fn events_sharing_a_stream_span_are_each_judged_by_their_own_stream() {
    // As the host packs a run of one stream: the name once, its span repeated.
    let events = || {
        let mut events = batch(&[
            ("counter-a", "Added", JSON, br#"{"by":1}"#),
            ("counter-x", "Added", JSON, br#"{"by":2}"#),
            ("other-b", "Added", JSON, br#"{"by":4}"#),
            ("other-y", "Added", JSON, br#"{"by":8}"#),
            ("counter-c", "Added", JSON, br#"{"by":16}"#),
        ]);
        events.events[1].stream = events.events[0].stream;
        events.events[3].stream = events.events[2].stream;
        events
    };
    let expected = r#"{"seen":[["counter-a",1001],["counter-a",2002],["counter-c",5016]]}"#;
    StreamsSlot::init(None).unwrap();
    StreamsSlot::apply(events()).unwrap();
    assert_eq!(StreamsSlot::state(), expected);
    StreamsSlot::init(None).unwrap();
    <StreamsSlot as wit_packed_projection::Guest>::apply(packed(events())).unwrap();
    assert_eq!(StreamsSlot::state(), expected);
}

#[test]
fn events_sharing_a_type_span_are_each_decoded_as_their_own_type() {
    // As the host packs a run of one type: the name once, its span repeated.
    let events = || {
        let mut events = batch(&[
            ("counter-1", "Added", JSON, br#"{"by":1}"#),
            ("counter-1", "Added", JSON, br#"{"by":2}"#),
            ("counter-1", "Removed", JSON, br#"{"by":4}"#),
        ]);
        events.events[1].event_type = events.events[0].event_type;
        events
    };
    CounterSlot::init(None).unwrap();
    let err = CounterSlot::apply(events()).unwrap_err();
    assert!(err.contains("position 3 of type `Removed`"), "{err}");
    let err = <CounterSlot as wit_packed_aggregate::Guest>::apply(packed(events())).unwrap_err();
    assert!(err.contains("position 3 of type `Removed`"), "{err}");
    let mut events = events();
    events.events.pop();
    <CounterSlot as wit_packed_aggregate::Guest>::apply(packed(events)).unwrap();
    assert_eq!(CounterSlot::state(), r#"{"total":3}"#);
}
