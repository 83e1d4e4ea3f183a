use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::{AggregateSlot, ProjectionSlot, wit_aggregate::Guest as _, wit_projection::Guest as _};
use crate::bindings::types::{Batch, CommandError, ContentType, Event, NewEvent, Span};
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
