//! The journal through its public API: append rules, idempotency, reads, snapshots, reopening.
//!
//! Every test runs against both backends: redb (a temporary file) and PostgreSQL (a fresh
//! database in the cluster named by `FOLDHOST_TEST_POSTGRES`, which `scripts/test` starts).

use std::time::{SystemTime, UNIX_EPOCH};

use foldhost::journal::{
    AppendResult, ContentType, EventRef, ExpectedVersion, Journal, JournalConfig, JournalError,
    NewEvent, ParkedEvent, ReadLimit, RecordedEvent, StreamMetadata, StreamWindow,
};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Redb,
    Postgres,
}

enum Place {
    Redb(tempfile::TempDir),
    Postgres(String),
}

struct Fixture {
    place: Place,
    journal: Journal,
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own, so it can be
/// awaited from sync tests and async ones alike.
fn run<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    })
    .join()
    .unwrap()
}

/// Creates an empty database in the test cluster and returns its URL.
fn fresh_database() -> String {
    fresh_database_with("")
}

/// Creates an empty database with `options` (`CREATE DATABASE name options`) in the test
/// cluster and returns its URL.
fn fresh_database_with(options: &str) -> String {
    let admin = std::env::var("FOLDHOST_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "FOLDHOST_TEST_POSTGRES is not set: the PostgreSQL journal tests need a throwaway \
             cluster; run scripts/test (or `. scripts/postgres` first)"
        )
    });
    let name = format!("t_{}", Uuid::new_v4().simple());
    let url = admin.clone();
    let create = name.clone();
    let options = options.to_owned();
    run(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to FOLDHOST_TEST_POSTGRES");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {create} {options}"))
            .await
            .expect("create a test database");
    });
    let base = admin.split('?').next().unwrap();
    let cut = base.rfind('/').filter(|&i| i > "postgres://".len());
    match cut {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    }
}

/// Opens the journal in `url` of the shared test cluster, which runs with `fsync=off` (see
/// scripts/postgres): the durability check is told to accept it.
fn open_postgres(url: &str, config: JournalConfig) -> Journal {
    let url = url.to_owned();
    let config = JournalConfig {
        accept_non_durable_postgres: true,
        ..config
    };
    run(async move { Journal::open_postgres(&url, config).await.unwrap() })
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        Self::with(backend, JournalConfig::default())
    }

    fn with(backend: Backend, config: JournalConfig) -> Self {
        match backend {
            Backend::Redb => {
                let dir = tempfile::tempdir().unwrap();
                let journal = Journal::open(dir.path().join("journal.redb"), config).unwrap();
                Self {
                    place: Place::Redb(dir),
                    journal,
                }
            }
            Backend::Postgres => {
                let url = fresh_database();
                let journal = open_postgres(&url, config);
                Self {
                    place: Place::Postgres(url),
                    journal,
                }
            }
        }
    }

    fn reopen(self) -> Self {
        let Fixture { place, journal } = self;
        drop(journal);
        let journal = match &place {
            Place::Redb(dir) => {
                Journal::open(dir.path().join("journal.redb"), JournalConfig::default()).unwrap()
            }
            Place::Postgres(url) => open_postgres(url, JournalConfig::default()),
        };
        Self { place, journal }
    }

    fn all(&self) -> Vec<RecordedEvent> {
        read_all_within(&self.journal, 0, ReadLimit::events(usize::MAX))
    }
}

/// `journal.read_all_within(from, limit)`, checked to be exactly what
/// [`Journal::scan_all`] visits (every field), and the position the scan returns its last.
fn read_all_within(journal: &Journal, from: u64, limit: ReadLimit) -> Vec<RecordedEvent> {
    let read = journal.read_all_within(from, limit).unwrap();
    let mut visited = Vec::new();
    let last = journal
        .scan_all(from, limit, |event: EventRef<'_>| {
            visited.push(event.to_recorded());
            Ok::<_, JournalError>(())
        })
        .unwrap();
    assert_eq!(visited, read, "scan_all from {from} within {limit:?}");
    assert_eq!(last, read.last().map(|event| event.position));
    read
}

/// Declares each listed test body (a function taking a [`Backend`]) as two tests,
/// `name::redb` and `name::postgres`.
macro_rules! on_both_backends {
    () => {};
    ($(#[$attr:meta])* async fn $name:ident; $($rest:tt)*) => {
        mod $name {
            use super::*;
            $(#[$attr])* async fn redb() {
                super::$name(Backend::Redb).await
            }
            $(#[$attr])* async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
        on_both_backends!($($rest)*);
    };
    ($(#[$attr:meta])* fn $name:ident; $($rest:tt)*) => {
        mod $name {
            use super::*;
            $(#[$attr])* fn redb() {
                super::$name(Backend::Redb)
            }
            $(#[$attr])* fn postgres() {
                super::$name(Backend::Postgres)
            }
        }
        on_both_backends!($($rest)*);
    };
}

on_both_backends! {
    #[tokio::test] async fn appended_events_read_back_with_positions_and_versions;
    #[tokio::test] async fn expected_version_is_enforced;
    #[tokio::test] async fn a_refused_append_writes_nothing;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refusals_batched_with_other_appends_leave_them_alone;
    #[tokio::test] async fn a_retried_append_returns_the_original_result_and_writes_nothing;
    #[tokio::test] async fn a_retry_that_differs_from_the_original_is_refused;
    #[tokio::test] async fn event_ids_are_unique_across_the_journal;
    #[tokio::test] async fn limits_are_refused_before_touching_the_journal;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn text_with_a_nul_character_is_refused_alike_and_alone;
    #[tokio::test] async fn an_import_keeps_the_time_it_is_given;
    #[tokio::test] async fn reads_are_paged_and_ascending;
    #[tokio::test] async fn streams_are_listed_by_prefix;
    #[tokio::test] async fn subscribers_see_the_head_move_before_the_ack;
    #[tokio::test] async fn a_lone_append_costs_one_commit;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_gapless_positions_and_versions;
    #[test] fn append_blocking_works_outside_a_runtime;
    #[test] fn a_task_appends_back_to_back_on_a_current_thread_runtime;
    #[test] fn appends_survive_closing_and_reopening;
    #[tokio::test] async fn snapshots_keep_the_newest_per_stream;
    #[tokio::test] async fn checkpoints_are_replaced_and_plugin_data_is_deleted_per_plugin;
    #[tokio::test] async fn a_soft_deleted_stream_reads_as_missing_until_an_append_recreates_it;
    #[tokio::test] async fn a_hard_deleted_stream_is_gone_for_good;
    #[tokio::test] async fn retention_metadata_hides_events_from_every_reader_at_once;
    #[tokio::test] async fn a_window_read_with_its_page_is_what_the_two_reads_return;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_read_with_its_page_holds_while_the_stream_is_truncated;
    #[tokio::test] async fn a_scavenge_removes_hidden_events_and_never_reuses_their_positions;
    #[tokio::test] async fn a_delete_and_appends_in_one_batch_apply_in_order;
    #[tokio::test] async fn reads_within_a_byte_limit_stop_before_the_event_that_would_pass_it;
    #[tokio::test] async fn events_are_found_by_id;
    #[tokio::test] async fn a_scan_visits_every_field_of_what_a_read_returns;
    #[test] fn parked_events_are_kept_per_plugin_replaced_and_forgotten;
}

fn event(n: u64) -> NewEvent {
    NewEvent::json("Counted", &serde_json::json!({ "n": n }))
}

fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(event).collect()
}

fn result(versions: (u64, u64), positions: (u64, u64)) -> AppendResult {
    AppendResult {
        first_version: versions.0,
        last_version: versions.1,
        first_position: positions.0,
        last_position: positions.1,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn appended_events_read_back_with_positions_and_versions(backend: Backend) {
    let f = Fixture::new(backend);
    let before = now_millis();
    let first = NewEvent {
        id: Uuid::new_v4(),
        event_type: "Opened".to_owned(),
        content_type: ContentType::Binary,
        data: vec![1, 2, 3],
        metadata: Some(r#"{"user":"ann"}"#.to_owned()),
    };
    let appended = f.journal.append(
        "account-1",
        ExpectedVersion::NoStream,
        vec![first.clone(), event(2)],
    );
    assert_eq!(appended.await.unwrap(), result((1, 2), (1, 2)));
    let other = f
        .journal
        .append("account-2", ExpectedVersion::Any, events(1))
        .await;
    assert_eq!(other.unwrap(), result((1, 1), (3, 3)));

    let stream = f.journal.read_stream("account-1", 1, 10).unwrap();
    assert_eq!(stream.len(), 2);
    let recorded = &stream[0];
    assert_eq!(
        (recorded.position, recorded.version, &*recorded.stream),
        (1, 1, "account-1")
    );
    assert_eq!(
        (recorded.id, &*recorded.event_type, recorded.content_type),
        (first.id, first.event_type.as_str(), first.content_type)
    );
    assert_eq!(
        (&recorded.data[..], recorded.metadata.as_deref()),
        (&first.data[..], first.metadata.as_deref())
    );
    assert!((before..=now_millis()).contains(&recorded.recorded_at));
    assert_eq!(f.journal.stream_version("account-1").unwrap(), Some(2));
    assert_eq!(f.journal.stream_version("account-3").unwrap(), None);
    assert_eq!(f.journal.head_position(), 3);
    let positions: Vec<u64> = f.all().iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3]);
}

async fn expected_version_is_enforced(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    assert!(
        j.append("s", ExpectedVersion::NoStream, events(2))
            .await
            .is_ok()
    );
    let conflicts = [
        (ExpectedVersion::NoStream, "s", Some(2)),
        (ExpectedVersion::Exact(1), "s", Some(2)),
        (ExpectedVersion::Exact(3), "s", Some(2)),
        (ExpectedVersion::Exact(1), "missing", None),
    ];
    for (expected, stream, current) in conflicts {
        match j.append(stream, expected, events(1)).await {
            Err(JournalError::Conflict {
                stream: s,
                expected: e,
                current: c,
            }) => assert_eq!((s.as_str(), e, c), (stream, expected, current)),
            other => panic!("{expected:?} on {stream}: expected a conflict, got {other:?}"),
        }
    }
    let exact = j
        .append("s", ExpectedVersion::Exact(2), events(1))
        .await
        .unwrap();
    assert_eq!(exact, result((3, 3), (3, 3)));
    let any = j
        .append("s", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!(any, result((4, 4), (4, 4)));
    let exact_zero = j.append("new", ExpectedVersion::Exact(0), events(1)).await;
    assert_eq!(
        exact_zero.unwrap(),
        result((1, 1), (5, 5)),
        "Exact(0) means no stream yet"
    );
}

async fn a_refused_append_writes_nothing(backend: Backend) {
    let f = Fixture::new(backend);
    f.journal
        .append("s", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    let refused = events(3);
    let conflict = f
        .journal
        .append("s", ExpectedVersion::NoStream, refused.clone())
        .await;
    assert!(matches!(conflict, Err(JournalError::Conflict { .. })));
    assert_eq!(f.journal.head_position(), 1);
    assert_eq!(f.all().len(), 1);
    assert_eq!(f.journal.stream_version("s").unwrap(), Some(1));
    // Its ids were not recorded either: the same events are accepted later as new ones.
    let later = f
        .journal
        .append("s", ExpectedVersion::Exact(1), refused)
        .await;
    assert_eq!(later.unwrap(), result((2, 4), (2, 4)));
}

async fn refusals_batched_with_other_appends_leave_them_alone(backend: Backend) {
    let f = Fixture::new(backend);
    // Queued together, so the writer may batch them: one creates "s", the others conflict,
    // and the appends to other streams land whatever their neighbours did.
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let journal = f.journal.clone();
            tokio::spawn(async move {
                let stream = if n % 2 == 0 {
                    "s".to_owned()
                } else {
                    format!("t-{n}")
                };
                journal
                    .append(&stream, ExpectedVersion::NoStream, events(2))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(JournalError::Conflict { current, .. }) => assert_eq!(current, Some(2)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 9, "\"s\" once and the eight t-streams");
    let all = f.all();
    assert_eq!(all.len(), 18);
    assert!(all.iter().zip(1..).all(|(event, p)| event.position == p));
    assert_eq!(f.journal.head_position(), 18);
    assert_eq!(f.journal.stream_version("s").unwrap(), Some(2));
}

async fn a_retried_append_returns_the_original_result_and_writes_nothing(backend: Backend) {
    let f = Fixture::new(backend);
    let batch = events(3);
    let original = f
        .journal
        .append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    f.journal
        .append("s", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    let stats = f.journal.stats();
    // The expected version no longer holds, yet a retry is recognised by its ids.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(3),
        ExpectedVersion::Any,
    ] {
        let retried = f
            .journal
            .append("s", expected, batch.clone())
            .await
            .unwrap();
        assert_eq!(retried, original);
    }
    assert_eq!(f.all().len(), 4);
    assert_eq!(f.journal.stats(), stats, "a retry commits nothing");
}

async fn a_retry_that_differs_from_the_original_is_refused(backend: Backend) {
    let f = Fixture::new(backend);
    let batch = events(3);
    f.journal
        .append("s", ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    // Two appends with another stream's event between them: as one retry, its answer's
    // positions would span that event.
    let (later, between) = (event(7), event(8));
    f.journal
        .append("other", ExpectedVersion::Any, vec![between])
        .await
        .unwrap();
    f.journal
        .append("s", ExpectedVersion::Any, vec![later.clone()])
        .await
        .unwrap();
    let mixed = vec![batch[0].clone(), event(9)];
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    let two_appends = vec![batch[2].clone(), later];
    for attempt in [mixed, reordered, two_appends] {
        match f.journal.append("s", ExpectedVersion::Any, attempt).await {
            Err(JournalError::IdempotencyMismatch { stream, .. }) => assert_eq!(stream, "s"),
            other => panic!("expected IdempotencyMismatch, got {other:?}"),
        }
    }
    assert_eq!(f.all().len(), 5);
}

async fn event_ids_are_unique_across_the_journal(backend: Backend) {
    let f = Fixture::new(backend);
    let used = event(1);
    f.journal
        .append("a", ExpectedVersion::Any, vec![event(0), used.clone()])
        .await
        .unwrap();
    match f
        .journal
        .append("b", ExpectedVersion::Any, vec![used.clone()])
        .await
    {
        Err(JournalError::DuplicateEventId {
            id,
            stream,
            position,
        }) => {
            assert_eq!((id, stream.as_str(), position), (used.id, "a", Some(2)))
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    let repeated = event(5);
    let twice = vec![repeated.clone(), event(6), repeated];
    match f
        .journal
        .append("c", ExpectedVersion::Any, twice.clone())
        .await
    {
        Err(JournalError::DuplicateEventId {
            id,
            stream,
            position,
        }) => {
            assert_eq!((id, stream.as_str(), position), (twice[0].id, "c", None))
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    assert_eq!(f.all().len(), 2);
    assert_eq!(f.journal.streams_with_prefix("").unwrap(), ["a"]);
}

async fn limits_are_refused_before_touching_the_journal(backend: Backend) {
    let f = Fixture::with(
        backend,
        JournalConfig {
            max_event_size: 100,
            max_append_events: 3,
            ..JournalConfig::default()
        },
    );
    let j = &f.journal;
    let mut big = event(0);
    big.event_type = "T".repeat(10);
    big.data = vec![b'x'; 80];
    big.metadata = Some("m".repeat(11));
    assert!(matches!(
        j.append("s", ExpectedVersion::Any, vec![big.clone()]).await,
        Err(JournalError::EventTooLarge {
            size: 101,
            max: 100
        })
    ));
    big.metadata = Some("m".repeat(10));
    assert!(j.append("s", ExpectedVersion::Any, vec![big]).await.is_ok());
    assert!(matches!(
        j.append("s", ExpectedVersion::Any, events(4)).await,
        Err(JournalError::TooManyEvents { count: 4, max: 3 })
    ));
    assert!(matches!(
        j.append("s", ExpectedVersion::Any, vec![]).await,
        Err(JournalError::NoEvents)
    ));
    for name in [String::new(), "s".repeat(257)] {
        match j.append(&name, ExpectedVersion::Any, events(1)).await {
            Err(JournalError::InvalidStreamName(got)) => assert_eq!(got, name),
            other => panic!("expected InvalidStreamName, got {other:?}"),
        }
    }
    assert!(
        j.append(&"s".repeat(256), ExpectedVersion::Any, events(3))
            .await
            .is_ok()
    );
    assert_eq!(j.head_position(), 4);
    assert_eq!(
        j.stats().commits,
        2,
        "refused appends never reach the writer"
    );
}

async fn text_with_a_nul_character_is_refused_alike_and_alone(backend: Backend) {
    let f = Fixture::with(
        backend,
        JournalConfig {
            max_append_bytes: 1000,
            ..JournalConfig::default()
        },
    );
    // Queued together with good appends: only the bad ones fail, and with the same error on
    // both backends (PostgreSQL cannot store a NUL character in text).
    let tasks: Vec<_> = (0..12u64)
        .map(|n| {
            let journal = f.journal.clone();
            tokio::spawn(async move {
                let mut stream = format!("s-{n}");
                let mut batch = events(2);
                match n % 4 {
                    1 => stream.push('\0'),
                    2 => batch[1].event_type = "Bad\0Type".into(),
                    3 => batch[0].metadata = Some("{\"note\":\"a\u{0}b\"}".into()),
                    _ => {}
                }
                (
                    n,
                    journal
                        .append(&stream, ExpectedVersion::NoStream, batch)
                        .await,
                )
            })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            (n, Ok(_)) => assert_eq!(n % 4, 0, "append {n} should have been refused"),
            (n, Err(JournalError::InvalidStreamName(name))) if n % 4 == 1 => {
                assert_eq!(name, format!("s-{n}\0"))
            }
            (n, Err(JournalError::NulCharacter("event type"))) if n % 4 == 2 => {}
            (n, Err(JournalError::NulCharacter("metadata"))) if n % 4 == 3 => {}
            (n, other) => panic!("append {n}: unexpected {other:?}"),
        }
    }
    assert_eq!(f.all().len(), 6, "the three good appends, whole");
    assert_eq!(
        f.journal.streams_with_prefix("").unwrap(),
        ["s-0", "s-4", "s-8"]
    );
    // Reads of such a name are refused alike too (PostgreSQL could not even look it up).
    let reads = [
        f.journal.stream_version("s-1\0").map(drop),
        f.journal.read_stream("s-1\0", 1, 10).map(drop),
        f.journal.stream_metadata("s-1\0").map(drop),
        f.journal.latest_snapshot("p", "s-1\0", u64::MAX).map(drop),
    ];
    for read in reads {
        assert!(
            matches!(read, Err(JournalError::InvalidStreamName(_))),
            "{read:?}"
        );
    }
    // An append larger than max_append_bytes is refused whole, before it is queued.
    let big: Vec<NewEvent> = (0..11)
        .map(|_| NewEvent::json("Big", &serde_json::json!("x".repeat(90))))
        .collect();
    assert!(matches!(
        f.journal.append("big", ExpectedVersion::Any, big).await,
        Err(JournalError::AppendTooLarge { max: 1000, .. })
    ));
    assert_eq!(f.all().len(), 6);
}

async fn an_import_keeps_the_time_it_is_given(backend: Backend) {
    let f = Fixture::new(backend);
    let before = now_millis();
    f.journal
        .append("now", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    let (old, older) = (1_709_251_200_000, 1_700_000_000_000);
    let imported = events(3);
    f.journal
        .import("s", ExpectedVersion::NoStream, imported[..2].to_vec(), old)
        .await
        .unwrap();
    // Queued together: each append keeps its own time.
    let (late, early) = tokio::join!(
        f.journal.import(
            "s",
            ExpectedVersion::Exact(2),
            imported[2..].to_vec(),
            older
        ),
        f.journal.append("t", ExpectedVersion::Any, events(1)),
    );
    late.unwrap();
    early.unwrap();
    let times: Vec<(String, u64)> = f
        .all()
        .into_iter()
        .map(|event| (event.stream.into(), event.recorded_at))
        .collect();
    assert_eq!(
        times[1..4],
        [("s".into(), old), ("s".into(), old), ("s".into(), older)]
    );
    for (stream, at) in [&times[0], &times[4]] {
        assert!(
            stream != "s" && *at >= before,
            "{stream} got {at}, not the commit's time"
        );
    }
    // An import is idempotent like any append.
    f.journal
        .import("s", ExpectedVersion::Any, imported[..2].to_vec(), old)
        .await
        .unwrap();
    assert_eq!(f.all().len(), 5);
}

async fn reads_are_paged_and_ascending(backend: Backend) {
    let f = Fixture::new(backend);
    for n in 0..10 {
        let stream = if n % 2 == 0 { "even" } else { "odd" };
        f.journal
            .append(stream, ExpectedVersion::Any, events(1))
            .await
            .unwrap();
    }
    let positions =
        |events: Vec<RecordedEvent>| events.iter().map(|e| e.position).collect::<Vec<_>>();
    let versions =
        |events: Vec<RecordedEvent>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let all = |from, n| read_all_within(&f.journal, from, ReadLimit::events(n));
    assert_eq!(positions(all(0, 3)), [1, 2, 3]);
    assert_eq!(positions(all(4, 3)), [4, 5, 6]);
    assert_eq!(positions(all(9, 3)), [9, 10]);
    assert!(all(11, 3).is_empty());
    assert!(all(1, 0).is_empty());
    assert_eq!(
        positions(f.journal.read_stream("odd", 0, 2).unwrap()),
        [2, 4]
    );
    assert_eq!(
        versions(f.journal.read_stream("odd", 2, 2).unwrap()),
        [2, 3]
    );
    assert_eq!(
        versions(f.journal.read_stream("odd", 4, 9).unwrap()),
        [4, 5]
    );
    assert!(f.journal.read_stream("odd", 6, 9).unwrap().is_empty());
    assert!(f.journal.read_stream("none", 1, 9).unwrap().is_empty());
}

async fn streams_are_listed_by_prefix(backend: Backend) {
    let f = Fixture::new(backend);
    for stream in [
        "bank-account-2",
        "bank-1",
        "bank-account-1",
        "bankaccount-1",
        "shop-1",
    ] {
        f.journal
            .append(stream, ExpectedVersion::Any, events(1))
            .await
            .unwrap();
    }
    let listed = f.journal.streams_with_prefix("bank-account-").unwrap();
    assert_eq!(listed, ["bank-account-1", "bank-account-2"]);
    assert_eq!(f.journal.streams_with_prefix("bank").unwrap().len(), 4);
    assert!(f.journal.streams_with_prefix("zzz").unwrap().is_empty());
}

async fn subscribers_see_the_head_move_before_the_ack(backend: Backend) {
    let f = Fixture::new(backend);
    let mut head = f.journal.subscribe();
    assert_eq!(*head.borrow_and_update(), 0);
    let appended = f
        .journal
        .append("s", ExpectedVersion::Any, events(2))
        .await
        .unwrap();
    assert!(head.has_changed().unwrap());
    assert_eq!(*head.borrow_and_update(), appended.last_position);
    assert_eq!(f.journal.head_position(), 2);

    let waiter = tokio::spawn(async move {
        head.changed().await.unwrap();
        *head.borrow()
    });
    f.journal
        .append("s", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), 3);
}

async fn a_lone_append_costs_one_commit(backend: Backend) {
    let f = Fixture::new(backend);
    for n in 1..=3 {
        f.journal
            .append("s", ExpectedVersion::Any, events(2))
            .await
            .unwrap();
        let stats = f.journal.stats();
        assert_eq!((stats.commits, stats.appends, stats.events), (n, n, 2 * n));
    }
}

/// Tasks and threads appending at once: on redb each commit is made by the writer thread or
/// by an appender that found it idle, and either way they must follow one another.
async fn concurrent_appends_get_gapless_positions_and_versions(backend: Backend) {
    let f = Fixture::new(backend);
    // The stream and event count of appender `n`'s append `round`.
    let nth =
        |n: usize, round: usize| (format!("s-{}", (n + round) % 5), 1 + (n + round) as u64 % 3);
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let journal = f.journal.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for round in 0..20 {
                    let (stream, count) = nth(task, round);
                    let appended = journal
                        .append(&stream, ExpectedVersion::Any, events(count))
                        .await;
                    results.push((stream, count, appended.unwrap()));
                }
                results
            })
        })
        .collect();
    let threads: Vec<_> = (32..36)
        .map(|thread| {
            let journal = f.journal.clone();
            tokio::task::spawn_blocking(move || {
                let mut results = Vec::new();
                for round in 0..20 {
                    let (stream, count) = nth(thread, round);
                    let appended =
                        journal.append_blocking(&stream, ExpectedVersion::Any, events(count));
                    results.push((stream, count, appended.unwrap()));
                }
                results
            })
        })
        .collect();
    let mut acked = Vec::new();
    for appender in tasks.into_iter().chain(threads) {
        acked.extend(appender.await.unwrap());
    }
    let all = f.all();
    let total: u64 = acked.iter().map(|(_, count, _)| count).sum();
    assert_eq!(all.len() as u64, total);
    assert!(
        all.iter()
            .zip(1..)
            .all(|(event, position)| event.position == position)
    );
    for (stream, count, result) in &acked {
        assert_eq!(result.last_position - result.first_position + 1, *count);
        for (position, version) in
            (result.first_position..=result.last_position).zip(result.first_version..)
        {
            let event = &all[position as usize - 1];
            assert_eq!((&*event.stream, event.version), (stream.as_str(), version));
        }
    }
    for stream in f.journal.streams_with_prefix("s-").unwrap() {
        let versions: Vec<u64> = f
            .journal
            .read_stream(&stream, 1, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
    let stats = f.journal.stats();
    assert_eq!((stats.appends, stats.events), (acked.len() as u64, total));
    assert!(stats.commits <= stats.appends);
}

fn append_blocking_works_outside_a_runtime(backend: Backend) {
    let f = Fixture::new(backend);
    let appended = f
        .journal
        .append_blocking("s", ExpectedVersion::NoStream, events(2));
    assert_eq!(appended.unwrap(), result((1, 2), (1, 2)));
    let conflict = f
        .journal
        .append_blocking("s", ExpectedVersion::NoStream, events(1));
    assert!(matches!(
        conflict,
        Err(JournalError::Conflict {
            current: Some(2),
            ..
        })
    ));
}

/// A task appending back to back may commit in place (redb), which blocks its thread: only on
/// a multi-threaded runtime, which hands the thread's other tasks on. On a runtime of one
/// thread its appends go through the writer thread, as they always did.
fn a_task_appends_back_to_back_on_a_current_thread_runtime(backend: Backend) {
    let f = Fixture::new(backend);
    let journal = f.journal.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let appended = runtime
        .block_on(runtime.spawn(async move {
            let mut appended = Vec::new();
            for _ in 0..3 {
                appended.push(journal.append("s", ExpectedVersion::Any, events(1)).await);
            }
            appended
        }))
        .expect("the task ran to its end");
    let appended: Vec<_> = appended.into_iter().map(Result::unwrap).collect();
    assert_eq!(appended[2], result((3, 3), (3, 3)));
}

fn appends_survive_closing_and_reopening(backend: Backend) {
    let f = Fixture::new(backend);
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let journal = f.journal.clone();
            std::thread::spawn(move || {
                journal
                    .append_blocking(&format!("s-{n}"), ExpectedVersion::Any, events(3))
                    .unwrap()
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let before = f.all();
    let f = f.reopen();
    assert_eq!(f.all(), before);
    assert_eq!(f.journal.head_position(), 24);
    let next = f
        .journal
        .append_blocking("s-0", ExpectedVersion::Exact(3), events(1))
        .unwrap();
    assert_eq!(next, result((4, 4), (25, 25)));
    // Event ids are remembered across reopening.
    let retried = vec![before[0].clone()]
        .into_iter()
        .map(|e| NewEvent {
            id: e.id,
            event_type: e.event_type.into(),
            content_type: e.content_type,
            data: e.data.into(),
            metadata: e.metadata.map(Into::into),
        })
        .collect();
    let retry = f
        .journal
        .append_blocking(&before[0].stream, ExpectedVersion::NoStream, retried);
    assert_eq!(retry.unwrap(), result((1, 1), (1, 1)));
}

async fn snapshots_keep_the_newest_per_stream(backend: Backend) {
    let f = Fixture::with(
        backend,
        JournalConfig {
            keep_snapshots: 2,
            ..JournalConfig::default()
        },
    );
    let j = &f.journal;
    for version in [10, 20, 30] {
        j.put_snapshot("p1", "s", version, format!("state {version}").into_bytes())
            .await
            .unwrap();
    }
    j.put_snapshot("p1", "t", 5, b"t5".to_vec()).await.unwrap();
    j.put_snapshot("p2", "s", 7, b"p2".to_vec()).await.unwrap();

    let latest =
        |plugin: &str, stream: &str, at_most| j.latest_snapshot(plugin, stream, at_most).unwrap();
    assert_eq!(
        latest("p1", "s", u64::MAX),
        Some((30, b"state 30".to_vec()))
    );
    assert_eq!(latest("p1", "s", 29), Some((20, b"state 20".to_vec())));
    assert_eq!(latest("p1", "s", 19), None, "version 10 was pruned");
    assert_eq!(latest("p1", "t", 5), Some((5, b"t5".to_vec())));
    assert_eq!(latest("p2", "s", 100), Some((7, b"p2".to_vec())));
    assert_eq!(latest("p3", "s", 100), None);
}

async fn checkpoints_are_replaced_and_plugin_data_is_deleted_per_plugin(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    assert_eq!(j.checkpoint("p1").unwrap(), None);
    j.put_checkpoint("p1", 10, b"ten".to_vec()).await.unwrap();
    j.put_checkpoint("p1", 20, b"twenty".to_vec())
        .await
        .unwrap();
    j.put_checkpoint("p2", 5, b"five".to_vec()).await.unwrap();
    assert_eq!(j.checkpoint("p1").unwrap(), Some((20, b"twenty".to_vec())));
    for stream in ["a", "b"] {
        j.put_snapshot("p1", stream, 1, b"s".to_vec())
            .await
            .unwrap();
        j.put_snapshot("p2", stream, 1, b"s".to_vec())
            .await
            .unwrap();
    }
    j.put_snapshot("p10", "a", 1, b"s".to_vec()).await.unwrap();
    // Keys of states folded through an upcaster chain belong to the plugin too.
    j.put_checkpoint("p1+chain", 3, b"three".to_vec())
        .await
        .unwrap();
    j.put_snapshot("p1+chain", "a", 1, b"s".to_vec())
        .await
        .unwrap();

    j.delete_plugin_data("p1").await.unwrap();
    assert_eq!(j.checkpoint("p1").unwrap(), None);
    assert_eq!(j.checkpoint("p1+chain").unwrap(), None);
    assert_eq!(j.latest_snapshot("p1+chain", "a", 9).unwrap(), None);
    assert_eq!(j.latest_snapshot("p1", "a", 9).unwrap(), None);
    assert_eq!(j.latest_snapshot("p1", "b", 9).unwrap(), None);
    assert_eq!(j.checkpoint("p2").unwrap(), Some((5, b"five".to_vec())));
    assert!(j.latest_snapshot("p2", "b", 9).unwrap().is_some());
    assert!(j.latest_snapshot("p10", "a", 9).unwrap().is_some());
    assert_eq!(
        j.head_position(),
        0,
        "snapshots and checkpoints are not events"
    );
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.position).collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.version).collect()
}

async fn a_soft_deleted_stream_reads_as_missing_until_an_append_recreates_it(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    j.append("gone-1", ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    j.append("kept-1", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    match j
        .delete_stream("gone-1", ExpectedVersion::Exact(2), false)
        .await
    {
        Err(JournalError::Conflict { current, .. }) => assert_eq!(current, Some(3)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    j.delete_stream("gone-1", ExpectedVersion::Exact(3), false)
        .await
        .unwrap();

    assert_eq!(j.stream_version("gone-1").unwrap(), None);
    assert_eq!(j.read_stream("gone-1", 1, 100).unwrap(), []);
    assert_eq!(positions(&f.all()), [4], "the global log skips its events");
    assert_eq!(j.streams_with_prefix("").unwrap(), ["kept-1"]);
    assert!(matches!(
        j.delete_stream("gone-1", ExpectedVersion::Any, false).await,
        Err(JournalError::StreamNotFound(_))
    ));
    // It counts as no stream: a stale expected version conflicts, `no_stream` recreates it
    // and its version numbers go on.
    assert!(matches!(
        j.append("gone-1", ExpectedVersion::Exact(3), events(1))
            .await,
        Err(JournalError::Conflict { current: None, .. })
    ));
    let recreated = j
        .append("gone-1", ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    assert_eq!(recreated, result((4, 5), (5, 6)));
    assert_eq!(j.stream_version("gone-1").unwrap(), Some(5));
    assert_eq!(versions(&j.read_stream("gone-1", 1, 100).unwrap()), [4, 5]);
    assert_eq!(positions(&f.all()), [4, 5, 6]);
    assert_eq!(j.streams_with_prefix("gone").unwrap(), ["gone-1"]);
    assert_eq!(
        j.stream_window("gone-1").unwrap(),
        StreamWindow {
            current: Some(5),
            first: 4,
            expires: false
        }
    );
    // `any` recreates a soft-deleted stream too.
    j.delete_stream("kept-1", ExpectedVersion::Any, false)
        .await
        .unwrap();
    let again = j
        .append("kept-1", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!((again.first_version, again.first_position), (2, 7));
    // And so does `0`, which means no stream, as `no_stream` does.
    j.delete_stream("kept-1", ExpectedVersion::Exact(2), false)
        .await
        .unwrap();
    let from_zero = j
        .append("kept-1", ExpectedVersion::Exact(0), events(1))
        .await
        .unwrap();
    assert_eq!((from_zero.first_version, from_zero.first_position), (3, 8));

    // The lifecycle survives a restart.
    let f = f.reopen();
    assert_eq!(
        versions(&f.journal.read_stream("gone-1", 1, 100).unwrap()),
        [4, 5]
    );
    assert_eq!(positions(&f.all()), [5, 6, 8]);
}

async fn a_hard_deleted_stream_is_gone_for_good(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    let original = events(2);
    j.append("customer-1", ExpectedVersion::NoStream, original.clone())
        .await
        .unwrap();
    assert!(matches!(
        j.delete_stream("nobody", ExpectedVersion::Any, true).await,
        Err(JournalError::StreamNotFound(_))
    ));
    j.delete_stream("customer-1", ExpectedVersion::Any, true)
        .await
        .unwrap();
    let gone = |outcome: Result<(), JournalError>| {
        assert!(
            matches!(&outcome, Err(JournalError::StreamDeleted(s)) if s == "customer-1"),
            "{outcome:?}"
        )
    };
    gone(j.stream_version("customer-1").map(drop));
    gone(j.stream_window("customer-1").map(drop));
    gone(j.read_stream("customer-1", 1, 10).map(drop));
    gone(j.stream_metadata("customer-1").map(drop));
    // No append recreates it, not even a retry of its own events.
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        gone(j.append("customer-1", expected, events(1)).await.map(drop));
    }
    gone(
        j.append("customer-1", ExpectedVersion::Any, original)
            .await
            .map(drop),
    );
    gone(
        j.set_stream_metadata("customer-1", StreamMetadata::default())
            .await,
    );
    gone(
        j.delete_stream("customer-1", ExpectedVersion::Any, false)
            .await,
    );
    assert_eq!(f.all(), []);
    assert_eq!(j.streams_with_prefix("").unwrap(), Vec::<String>::new());
    let f = f.reopen();
    gone(f.journal.read_stream("customer-1", 1, 10).map(drop));
}

async fn retention_metadata_hides_events_from_every_reader_at_once(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    for stream in ["counted-1", "truncated-1", "aged-1", "other-1"] {
        j.append(stream, ExpectedVersion::Any, events(4))
            .await
            .unwrap();
    }
    // Metadata may be set before its stream exists.
    assert_eq!(
        j.stream_metadata("counted-1").unwrap(),
        StreamMetadata::default()
    );
    let count = StreamMetadata {
        max_count: Some(2),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("counted-1", count).await.unwrap();
    assert_eq!(j.stream_metadata("counted-1").unwrap(), count);
    let truncate = StreamMetadata {
        truncate_before: Some(4),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("truncated-1", truncate)
        .await
        .unwrap();
    assert_eq!(
        versions(&j.read_stream("counted-1", 1, 100).unwrap()),
        [3, 4]
    );
    assert_eq!(versions(&j.read_stream("counted-1", 4, 100).unwrap()), [4]);
    assert_eq!(versions(&j.read_stream("truncated-1", 1, 1).unwrap()), [4]);
    assert_eq!(
        j.stream_window("counted-1").unwrap(),
        StreamWindow {
            current: Some(4),
            first: 3,
            expires: false
        }
    );
    assert!(j.stream_window("other-1").unwrap().is_whole());
    // The window moves with appends.
    j.append("counted-1", ExpectedVersion::Exact(4), events(1))
        .await
        .unwrap();
    assert_eq!(
        versions(&j.read_stream("counted-1", 1, 100).unwrap()),
        [4, 5]
    );

    // Age: everything recorded more than a second ago.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    j.append("aged-1", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    let age = StreamMetadata {
        max_age: Some(1),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("aged-1", age).await.unwrap();
    assert_eq!(versions(&j.read_stream("aged-1", 1, 100).unwrap()), [5]);
    assert!(j.stream_window("aged-1").unwrap().expires);

    // The global log, paged one event at a time, skips every hidden event.
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut from = 1;
    while let Some(event) = read_all_within(j, from, ReadLimit::events(1)).pop() {
        from = event.position + 1;
        seen.push((event.stream.into(), event.version));
    }
    let expected: Vec<(String, u64)> = [
        ("counted-1", 4),
        ("truncated-1", 4),
        ("other-1", 1),
        ("other-1", 2),
        ("other-1", 3),
        ("other-1", 4),
        ("counted-1", 5),
        ("aged-1", 5),
    ]
    .into_iter()
    .map(|(stream, version)| (stream.to_owned(), version))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        f.all()
            .into_iter()
            .map(|event| (event.stream.into(), event.version))
            .collect::<Vec<(String, u64)>>(),
        expected
    );

    // Clearing the metadata shows what no scavenge removed yet.
    j.set_stream_metadata("truncated-1", StreamMetadata::default())
        .await
        .unwrap();
    assert_eq!(j.read_stream("truncated-1", 1, 100).unwrap().len(), 4);
}

/// `stream_window_and_page` (one query on PostgreSQL) answers exactly what `stream_window` and
/// `read_stream_within` do, on streams in every lifecycle state.
async fn a_window_read_with_its_page_is_what_the_two_reads_return(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    for stream in ["plain-1", "counted-1", "truncated-1", "soft-1", "hard-1"] {
        j.append(stream, ExpectedVersion::Any, events(5))
            .await
            .unwrap();
    }
    let count = StreamMetadata {
        max_count: Some(2),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("counted-1", count).await.unwrap();
    let truncate = StreamMetadata {
        truncate_before: Some(3),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("truncated-1", truncate)
        .await
        .unwrap();
    // Metadata of a stream without events: its window is the metadata's.
    j.set_stream_metadata("ghost-1", truncate).await.unwrap();
    j.delete_stream("soft-1", ExpectedVersion::Any, false)
        .await
        .unwrap();
    j.delete_stream("hard-1", ExpectedVersion::Any, true)
        .await
        .unwrap();
    for stream in [
        "plain-1",
        "counted-1",
        "truncated-1",
        "ghost-1",
        "soft-1",
        "hard-1",
        "nobody-1",
    ] {
        for from in [1, 4, 9] {
            let limit = ReadLimit::events(2);
            let together = j.stream_window_and_page(stream, from, limit);
            let apart = j
                .stream_window(stream)
                .and_then(|window| Ok((window, j.read_stream_within(stream, from, limit)?)));
            match (together, apart) {
                (Ok((window, page)), Ok((expected_window, expected_page))) => {
                    assert_eq!(window, expected_window, "{stream} from {from}");
                    assert_eq!(page, expected_page, "{stream} from {from}");
                }
                (Err(error), Err(expected)) => {
                    assert_eq!(error.to_string(), expected.to_string(), "{stream}");
                }
                (together, apart) => panic!("{stream} from {from}: {together:?} vs {apart:?}"),
            }
        }
    }
}

/// The window and its page come from one read: while another task truncates the stream
/// and lifts the truncation again, no page starts past its window's first version (an
/// aggregate would fold versions 1–3 and then 10–12 as one state).
async fn a_window_read_with_its_page_holds_while_the_stream_is_truncated(backend: Backend) {
    let f = Fixture::new(backend);
    let j = f.journal.clone();
    j.append("toggled-1", ExpectedVersion::NoStream, events(12))
        .await
        .unwrap();
    let toggles = if matches!(backend, Backend::Redb) {
        400
    } else {
        100
    };
    let toggling = tokio::spawn({
        let j = j.clone();
        async move {
            for round in 0..toggles {
                let truncate_before = (round % 2 == 0).then_some(10);
                let metadata = StreamMetadata {
                    truncate_before,
                    ..StreamMetadata::default()
                };
                j.set_stream_metadata("toggled-1", metadata).await.unwrap();
            }
        }
    });
    let reading = tokio::task::spawn_blocking(move || {
        let mut reads = 0;
        while reads < 1000 || !toggling.is_finished() {
            let (window, page) = j
                .stream_window_and_page("toggled-1", 4, ReadLimit::events(100))
                .unwrap();
            let first = page.first().map(|event| event.version);
            assert_eq!(first, Some(window.first.max(4)), "{window:?}");
            reads += 1;
        }
        toggling
    });
    reading.await.unwrap().await.unwrap();
}

async fn a_scavenge_removes_hidden_events_and_never_reuses_their_positions(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    j.append("kept-1", ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    j.append("short-1", ExpectedVersion::NoStream, events(5))
        .await
        .unwrap();
    // The newest events of the log belong to the stream that goes.
    j.append("customer-1", ExpectedVersion::NoStream, events(4))
        .await
        .unwrap();
    for (stream, plugin) in [("kept-1", "p"), ("customer-1", "p"), ("short-1", "q")] {
        j.put_snapshot(plugin, stream, 2, b"state".to_vec())
            .await
            .unwrap();
    }
    j.set_stream_metadata(
        "short-1",
        StreamMetadata {
            max_count: Some(2),
            ..StreamMetadata::default()
        },
    )
    .await
    .unwrap();
    j.delete_stream("customer-1", ExpectedVersion::Any, true)
        .await
        .unwrap();
    let visible = f.all();
    assert_eq!(positions(&visible), [1, 2, 3, 7, 8]);

    let report = j.scavenge().await.unwrap();
    assert_eq!(
        (report.streams, report.events, report.snapshots),
        (2, 7, 2),
        "{report:?}"
    );
    assert_eq!(f.all(), visible, "readers see no difference");
    let short = j.read_stream("short-1", 1, 10).unwrap();
    assert_eq!(
        versions(&short),
        [4, 5],
        "the rest of a partly removed append"
    );
    assert_eq!(j.latest_snapshot("p", "customer-1", 9).unwrap(), None);
    assert_eq!(j.latest_snapshot("q", "short-1", 9).unwrap(), None);
    assert!(j.latest_snapshot("p", "kept-1", 9).unwrap().is_some());
    assert_eq!(j.head_position(), 12);
    // Nothing left to remove.
    assert_eq!(j.scavenge().await.unwrap().events, 0);

    // Positions 9..=12 are gone but stay used, also after a restart.
    let f = f.reopen();
    assert_eq!(f.journal.head_position(), 12);
    let next = f
        .journal
        .append("kept-1", ExpectedVersion::Exact(3), events(1))
        .await
        .unwrap();
    assert_eq!(next.first_position, 13);
    let f = f.reopen();
    assert_eq!(f.journal.head_position(), 13);
    let after = f
        .journal
        .append("kept-1", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!((after.first_version, after.first_position), (5, 14));
    assert_eq!(positions(&f.all()), [1, 2, 3, 7, 8, 13, 14]);
}

async fn a_delete_and_appends_in_one_batch_apply_in_order(backend: Backend) {
    let f = Fixture::new(backend);
    let j = &f.journal;
    j.append("s", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    // Queued together, so the writer puts them into one commit, in this order.
    let (before, deleted, after) = tokio::join!(
        j.append("s", ExpectedVersion::Exact(1), events(1)),
        j.delete_stream("s", ExpectedVersion::Exact(2), false),
        j.append("s", ExpectedVersion::NoStream, events(1)),
    );
    assert_eq!(before.unwrap(), result((2, 2), (2, 2)));
    deleted.unwrap();
    assert_eq!(after.unwrap(), result((3, 3), (3, 3)));
    assert_eq!(versions(&j.read_stream("s", 1, 10).unwrap()), [3]);
}

async fn reads_within_a_byte_limit_stop_before_the_event_that_would_pass_it(backend: Backend) {
    let f = Fixture::new(backend);
    // Sizes count data, metadata and type: `"xxxx"` (6 bytes incl. quotes) + "Sized" (5).
    let sized = |len: usize| NewEvent::json("Sized", &serde_json::json!("x".repeat(len - 7)));
    let batch = vec![sized(100), sized(100), sized(300), sized(50)];
    assert_eq!(batch[0].data.len() + 5, 100);
    f.journal
        .append("s", ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    let limit = |events, bytes| ReadLimit { events, bytes };
    let versions =
        |events: Vec<RecordedEvent>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let stream = |from, l| versions(f.journal.read_stream_within("s", from, l).unwrap());
    let all = |from, l| versions(read_all_within(&f.journal, from, l));
    assert_eq!(stream(1, limit(10, 200)), [1, 2]);
    assert_eq!(stream(1, limit(10, 199)), [1]);
    assert_eq!(stream(1, limit(10, 10)), [1], "the first event always");
    assert_eq!(stream(3, limit(10, 10)), [3], "the first event always");
    assert_eq!(stream(2, limit(10, 450)), [2, 3, 4]);
    assert_eq!(stream(1, limit(3, usize::MAX)), [1, 2, 3]);
    assert_eq!(all(1, limit(10, 500)), [1, 2, 3]);
    assert_eq!(all(4, limit(10, 1)), [4]);
    assert!(all(5, limit(10, 1)).is_empty());
    assert_eq!(
        f.journal.read_all_within(1, limit(10, 200)).unwrap()[1].size(),
        100
    );

    // Hidden events take no room: large ones (imported long ago, past max_age) between small
    // visible ones, at positions and versions 5..=9 of `aged`.
    let j = &f.journal;
    let old = 1_234;
    j.import("aged", ExpectedVersion::Any, vec![sized(1000)], old)
        .await
        .unwrap();
    j.append("aged", ExpectedVersion::Any, vec![sized(100)])
        .await
        .unwrap();
    j.import("aged", ExpectedVersion::Any, vec![sized(1000)], old)
        .await
        .unwrap();
    j.append("aged", ExpectedVersion::Any, vec![sized(100), sized(100)])
        .await
        .unwrap();
    let age = StreamMetadata {
        max_age: Some(3600),
        ..StreamMetadata::default()
    };
    j.set_stream_metadata("aged", age).await.unwrap();
    let aged = |from, l| versions(j.read_stream_within("aged", from, l).unwrap());
    assert_eq!(aged(1, limit(10, 250)), [2, 4]);
    assert_eq!(aged(1, limit(10, 300)), [2, 4, 5]);
    assert_eq!(
        aged(1, limit(10, 10)),
        [2],
        "the first visible event always"
    );
    let positions =
        |events: Vec<RecordedEvent>| events.iter().map(|e| e.position).collect::<Vec<_>>();
    let all = |from, l| positions(read_all_within(j, from, l));
    assert_eq!(all(4, limit(10, 250)), [4, 6, 8]);
    assert_eq!(all(5, limit(10, 250)), [6, 8]);
    assert_eq!(all(5, limit(10, 10)), [6], "the first visible event always");
    assert_eq!(all(5, limit(2, usize::MAX)), [6, 8]);
}

async fn events_are_found_by_id(backend: Backend) {
    let f = Fixture::new(backend);
    let batch = events(3);
    f.journal
        .append("s", ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    f.journal
        .append("t", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let found = f.journal.event_by_id(batch[1].id).unwrap().unwrap();
    assert_eq!(
        (found.position, &*found.stream, found.version, found.id),
        (4, "t", 2, batch[1].id)
    );
    assert_eq!(found.data, batch[1].data);
    assert_eq!(f.journal.event_by_id(Uuid::new_v4()).unwrap(), None);
}

fn parked_events_are_kept_per_plugin_replaced_and_forgotten(backend: Backend) {
    let parked = |position: u64, reason: &str| ParkedEvent {
        position,
        stream: format!("s-{position}"),
        event_type: "Bad".to_owned(),
        reason: reason.to_owned(),
        attempts: 3,
        parked_at: 1_700_000_000_000 + position,
    };
    let f = Fixture::new(backend);
    let j = f.journal.clone();
    run(async move {
        assert_eq!(j.parked("p1", 0, 100).unwrap(), []);
        j.park("p1", vec![parked(7, "bad"), parked(3, "worse")])
            .await
            .unwrap();
        j.park("p2", vec![parked(5, "other")]).await.unwrap();
        j.park("p1", vec![parked(7, "still bad")]).await.unwrap();
        assert_eq!(
            j.parked("p1", 0, 100).unwrap(),
            [parked(3, "worse"), parked(7, "still bad")]
        );
        // A page at a time, from the first after a position.
        assert_eq!(j.parked("p1", 0, 1).unwrap(), [parked(3, "worse")]);
        assert_eq!(j.parked("p1", 3, 1).unwrap(), [parked(7, "still bad")]);
        assert_eq!(j.parked("p1", 7, 100).unwrap(), []);
        assert_eq!(j.parked("p1", u64::MAX, 100).unwrap(), []);
    });
    // Durable: they survive closing and reopening.
    let f = f.reopen();
    let j = f.journal.clone();
    run(async move {
        assert_eq!(j.parked("p1", 0, 100).unwrap().len(), 2);
        j.unpark("p1", vec![3, 99]).await.unwrap();
        assert_eq!(j.parked("p1", 0, 100).unwrap(), [parked(7, "still bad")]);
        j.delete_plugin_data("p1").await.unwrap();
        assert_eq!(j.parked("p1", 0, 100).unwrap(), []);
        assert_eq!(j.parked("p2", 0, 100).unwrap(), [parked(5, "other")]);
        assert_eq!(j.head_position(), 0, "parked records are not events");
    });
}

// PostgreSQL only: what several hosts on one database see.

#[tokio::test]
async fn postgres_hosts_follow_each_others_commits() {
    let url = fresh_database();
    let (one, two) = (
        open_postgres(&url, JournalConfig::default()),
        open_postgres(&url, JournalConfig::default()),
    );
    let mut head = two.subscribe();
    let batch = events(3);
    let appended = one
        .append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while *head.borrow_and_update() < appended.last_position {
            head.changed().await.unwrap();
        }
    })
    .await
    .expect("the other host's head follows the commit (NOTIFY)");
    assert_eq!(two.head_position(), 3);
    assert_eq!(two.read_all(1, 10).unwrap().len(), 3);
    // Expected versions hold across hosts: the second host's stale view is refused.
    let stale = two.append("s", ExpectedVersion::NoStream, events(1)).await;
    assert!(matches!(
        stale,
        Err(JournalError::Conflict {
            current: Some(3),
            ..
        })
    ));
    // A retry through another host is recognised by its event ids.
    let retried = two.append("s", ExpectedVersion::NoStream, batch).await;
    assert_eq!(retried.unwrap(), appended);
    let reopened = open_postgres(&url, JournalConfig::default());
    assert_eq!(reopened.head_position(), 3);
}

/// A connection of another client that holds the log lock, as a host frozen inside its write
/// transaction would.
struct FrozenPeer(tokio_postgres::Client);

impl FrozenPeer {
    async fn hold_log_lock(url: &str) -> FrozenPeer {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("BEGIN; SELECT position FROM log_head FOR UPDATE")
            .await
            .unwrap();
        FrozenPeer(client)
    }

    /// Waits until a session of the journal waits for the peer's lock.
    async fn wait_for_a_blocked_writer(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let waiting = self
                .0
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            if waiting > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no writer waits for the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn let_go(self) {
        self.0.batch_execute("ROLLBACK").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_frozen_peer_holding_the_log_lock_fails_appends_only_for_a_while() {
    let url = fresh_database();
    let journal = open_postgres(&format!("{url}?lock_timeout=1s"), JournalConfig::default());
    journal
        .append("s", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let peer = FrozenPeer::hold_log_lock(&url).await;
    let stalled = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        journal.append("s", ExpectedVersion::Any, events(1)),
    )
    .await
    .expect("an append gives up instead of waiting for the lock for ever");
    match stalled {
        Err(JournalError::Unavailable(message)) => {
            assert!(message.contains("lock timeout"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(journal.head_position(), 1);
    assert_eq!(
        journal.read_all(0, 10).unwrap().len(),
        1,
        "reads need no lock and are served meanwhile"
    );
    peer.let_go().await;
    let recovered = journal
        .append("s", ExpectedVersion::Exact(1), events(1))
        .await;
    assert_eq!(recovered.unwrap(), result((2, 2), (2, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_row_the_server_refuses_fails_only_its_own_append() {
    // A LATIN1 database cannot store "€": PostgreSQL refuses the row, not the host's checks.
    let url =
        fresh_database_with("ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    let journal = open_postgres(&format!("{url}?lock_timeout=60s"), JournalConfig::default());
    // While a peer holds the log lock the appends queue up, and commit as one batch after it.
    let peer = FrozenPeer::hold_log_lock(&url).await;
    let first = {
        let journal = journal.clone();
        tokio::spawn(async move {
            journal
                .append("first", ExpectedVersion::NoStream, events(1))
                .await
        })
    };
    peer.wait_for_a_blocked_writer().await;
    let tasks: Vec<_> = (0..12u64)
        .map(|n| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut batch = events(2);
                if n == 7 {
                    batch[1].metadata = Some("{\"price\":\"5 €\"}".into());
                }
                (
                    n,
                    journal
                        .append(&format!("s-{n}"), ExpectedVersion::NoStream, batch)
                        .await,
                )
            })
        })
        .collect();
    // The batch forms only if all twelve wait in the writer's queue when the lock is let go:
    // the writer then takes them together (up to `max_batch_appends`, 1024).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while journal.queued_writes() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of the 12 appends queued",
            journal.queued_writes()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    peer.let_go().await;
    assert!(first.await.unwrap().is_ok());
    for task in tasks {
        match task.await.unwrap() {
            (7, Err(JournalError::Rejected(message))) => {
                assert!(message.contains("LATIN1"), "{message}")
            }
            (7, other) => panic!("expected Rejected, got {other:?}"),
            (n, outcome) => assert!(outcome.is_ok(), "append {n}: {outcome:?}"),
        }
    }
    let all = journal.read_all(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 23);
    assert!(all.iter().zip(1..).all(|(event, p)| event.position == p));
    assert!(all.iter().all(|event| event.stream != "s-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_session_lost_at_commit_is_an_unknown_outcome_and_a_retry_lands_once() {
    let url = fresh_database();
    let journal = open_postgres(&url, JournalConfig::default());
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // A deferred constraint trigger runs inside COMMIT: this one ends its own session there,
    // as a server crash or a cut network would between the COMMIT and its answer.
    admin
        .batch_execute(
            "CREATE FUNCTION cut_the_session() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER cut_at_commit AFTER INSERT ON events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_the_session()",
        )
        .await
        .unwrap();
    let batch = events(2);
    match journal
        .append("s", ExpectedVersion::NoStream, batch.clone())
        .await
    {
        Err(JournalError::OutcomeUnknown(_)) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    admin
        .batch_execute("DROP TRIGGER cut_at_commit ON events")
        .await
        .unwrap();
    // The client retries with the same ids: they land once, and a second retry is idempotent.
    for _ in 0..2 {
        let retried = journal
            .append("s", ExpectedVersion::NoStream, batch.clone())
            .await;
        assert_eq!(retried.unwrap(), result((1, 2), (1, 2)));
    }
    let stored = journal.read_all(0, 10).unwrap();
    let ids: Vec<_> = stored.iter().map(|event| event.id).collect();
    assert_eq!(ids, batch.iter().map(|event| event.id).collect::<Vec<_>>());
}

#[tokio::test]
async fn postgres_refuses_a_schema_of_another_version() {
    let url = fresh_database();
    drop(open_postgres(&url, JournalConfig::default()));
    let bump = url.clone();
    run(async move {
        let (client, connection) = tokio_postgres::connect(&bump, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("UPDATE schema_version SET version = version + 1")
            .await
            .unwrap();
    });
    let config = JournalConfig {
        accept_non_durable_postgres: true,
        ..JournalConfig::default()
    };
    let refused = run(async move { Journal::open_postgres(&url, config).await.err() });
    match refused {
        Some(JournalError::UnsupportedFormat { found, supported }) => {
            assert_eq!(found, supported + 1)
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

/// Runs `sql` in the database at `url`, returning the first column of each row as text.
fn sql(url: &str, sql: &str) -> Vec<Option<String>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    run(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let rows = client.simple_query(&sql).await.unwrap();
        rows.iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect()
    })
}

#[test]
fn postgres_that_may_lose_commits_is_refused_unless_accepted() {
    // The shared test cluster runs with fsync, synchronous_commit and full_page_writes off.
    let url = fresh_database();
    let open = |config: JournalConfig| {
        let url = url.clone();
        run(async move { Journal::open_postgres(&url, config).await })
    };
    let refused_settings = |outcome: Result<Journal, JournalError>| match outcome {
        Err(error @ JournalError::NotDurable(_)) => {
            let message = error.to_string();
            assert!(message.contains("--unsafe-accept-non-durable-postgres"));
            message
        }
        Err(other) => panic!("expected NotDurable, got {other}"),
        Ok(_) => panic!("a server without fsync was accepted"),
    };
    let message = refused_settings(open(JournalConfig::default()));
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        assert!(message.contains(&format!("{setting}=off")), "{message}");
    }
    assert_eq!(
        sql(&url, "SELECT to_regclass('events')::text"),
        [None],
        "a refused server is left untouched"
    );

    // synchronous_commit may be set per database: the check reads what the journal's sessions get.
    let database = url.rsplit('/').next().unwrap();
    sql(
        &url,
        &format!("ALTER DATABASE {database} SET synchronous_commit = on"),
    );
    let message = refused_settings(open(JournalConfig::default()));
    assert!(message.contains("fsync=off"), "{message}");
    assert!(!message.contains("synchronous_commit"), "{message}");

    let accepted = open(JournalConfig {
        accept_non_durable_postgres: true,
        ..JournalConfig::default()
    })
    .expect("accepted explicitly");
    let appended = accepted.append_blocking("s", ExpectedVersion::NoStream, events(1));
    assert_eq!(appended.unwrap().last_position, 1);
}

async fn a_scan_visits_every_field_of_what_a_read_returns(backend: Backend) {
    let f = Fixture::new(backend);
    let tagged = |metadata: Option<&str>| NewEvent {
        id: Uuid::new_v4(),
        event_type: "Tagged".to_owned(),
        content_type: ContentType::Binary,
        data: vec![0, 159, 146, 150, 255],
        metadata: metadata.map(str::to_owned),
    };
    let mixed = vec![
        tagged(Some(r#"{"by":"ann"}"#)),
        event(1),
        tagged(Some("")),
        tagged(None),
    ];
    f.journal
        .append("mixed-1", ExpectedVersion::NoStream, mixed)
        .await
        .unwrap();
    f.journal
        .import("imported-1", ExpectedVersion::NoStream, events(2), 1_234)
        .await
        .unwrap();
    let all = f.all();
    assert_eq!(all.len(), 6);
    assert_eq!(all[4].recorded_at, 1_234);
    for from in 0..=7 {
        for events in [0, 1, 2, 5, 100] {
            for bytes in [0, 12, 40, usize::MAX] {
                read_all_within(&f.journal, from, ReadLimit { events, bytes });
            }
        }
    }
    // A visitor's error stops the scan after the event it failed on.
    let mut visited = Vec::new();
    let outcome = f.journal.scan_all(1, ReadLimit::events(100), |event| {
        visited.push(event.position);
        match event.position {
            3 => Err(JournalError::Unavailable("the visitor failed".to_owned())),
            _ => Ok(()),
        }
    });
    assert!(
        matches!(outcome, Err(JournalError::Unavailable(_))),
        "{outcome:?}"
    );
    assert_eq!(visited, [1, 2, 3]);
}
