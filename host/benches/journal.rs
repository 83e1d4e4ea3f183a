//! Journal throughput against raw redb on the same disk.
//!
//! `cargo bench -p foldhost --bench journal`, about a minute. `FOLDHOST_BENCH_SCALE` (default 1)
//! scales every timed phase and the size of the scan data set; files go to a temporary
//! directory under `FOLDHOST_BENCH_DIR` (default: the system temp dir).
//!
//! A disk's fsync rate can swing several-fold within minutes, so besides the fixed raw rows
//! every journal case is paired with raw redb at the journal's own batch size, measured in
//! alternating slices of 0.4 s.

use std::path::Path;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foldhost::journal::{
    ContentType, ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent, ReadLimit,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use uuid::Uuid;

/// The size of a journal record holding one `event()` (layout byte, a 50-byte header of version,
/// timestamp, id, four lengths, content type and metadata flag, then stream name, type and
/// data), so raw redb writes the same bytes.
const RECORD_SIZE: usize = 145;
/// Data bytes that make `event()`'s stored record `RECORD_SIZE` bytes long with an 11-byte
/// stream name and the 9-byte type `Deposited`: 71 bytes of record around it (74 bytes of data,
/// as when records were 124 bytes in layout 1).
const EVENT_DATA: usize = RECORD_SIZE - 71;
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
/// Alternating journal/raw slices per journal case.
const ROUNDS: u32 = 8;

fn main() {
    let scale: f64 = std::env::var("FOLDHOST_BENCH_SCALE").map_or(1.0, |s| {
        s.parse().expect("FOLDHOST_BENCH_SCALE is a number")
    });
    let slice = Duration::from_secs_f64(0.4 * scale);
    let dir = match std::env::var_os("FOLDHOST_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("create a temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("start tokio");

    println!(
        "(a) raw redb: {RECORD_SIZE}-byte records into a u64 → bytes table, Durability::Immediate"
    );
    println!("{:>10} {:>10} {:>12}", "records/tx", "tx/s", "records/s");
    let rows: Vec<(u64, f64)> = [1, 10, 100, 1000]
        .into_iter()
        .map(|per_tx| {
            let mut raw = RawDb::create(&dir.path().join(format!("raw-{per_tx}.redb")));
            let run = raw.run(per_tx, 5 * slice);
            println!(
                "{:>10} {:>10.0} {:>12.0}",
                per_tx,
                run.txs as f64 / run.seconds,
                run.rate()
            );
            (per_tx, run.rate())
        })
        .collect();

    println!();
    println!(
        "(b) journal appends, one stream per appender; ids: v7 (time-ordered, as NewEvent::json)"
    );
    println!(
        "    or v4 (random). raw@interp: raw records/s interpolated log-log between the (a) rows at"
    );
    println!(
        "    the journal's events per commit; raw@paired: raw redb at that same batch size, measured"
    );
    println!(
        "    in slices alternating with the journal's. ratio = journal events/s ÷ raw records/s."
    );
    println!(
        "{:>4} {:>6} {:>3} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>10} {:>6}",
        "apps",
        "ev/app",
        "ids",
        "appends/s",
        "events/s",
        "app/commit",
        "ev/commit",
        "raw@interp",
        "ratio",
        "raw@paired",
        "ratio"
    );
    let cases = [
        (1, 1, true),
        (8, 1, true),
        (64, 1, true),
        (1, 10, true),
        (8, 10, true),
        (64, 10, true),
        (64, 1, false),
        (64, 10, false),
    ];
    for (n, (appenders, per_append, time_ordered)) in cases.into_iter().enumerate() {
        let row = paired(
            &runtime,
            &dir.path().join(format!("case-{n}")),
            appenders,
            per_append,
            time_ordered,
            slice,
        );
        let journal_rate = row.events as f64 / row.seconds;
        let per_commit = row.events as f64 / row.commits as f64;
        let interpolated = interpolate(&rows, per_commit);
        println!(
            "{:>4} {:>6} {:>3} {:>9.0} {:>9.0} {:>9.1} {:>9.1} {:>10.0} {:>6.2} {:>10.0} {:>6.2}",
            appenders,
            per_append,
            if time_ordered { "v7" } else { "v4" },
            row.appends as f64 / row.seconds,
            journal_rate,
            row.appends as f64 / row.commits as f64,
            per_commit,
            interpolated,
            journal_rate / interpolated,
            row.raw.rate(),
            journal_rate / row.raw.rate()
        );
    }

    println!();
    let scan = scans(
        &runtime,
        &dir.path().join("scan.redb"),
        (200_000.0 * scale) as u64,
    );
    println!(
        "(c) reads of {} events in 100 interleaved streams, pages of 1000; raw redb iterates the",
        scan.events
    );
    println!(
        "    same file's log table in pages of 1000 without decoding (best of {PASSES} passes each);"
    );
    println!(
        "    the global log scan is scan_all, its visitor reading every field of each borrowed event;"
    );
    println!("    read_all (owned) reads the same pages as RecordedEvents");
    println!(
        "{:>22} {:>12} {:>12} {:>6}",
        "", "events/s", "raw redb/s", "ratio"
    );
    println!(
        "{:>22} {:>12.0} {:>12.0} {:>6.2}",
        "global log scan",
        scan.log,
        scan.raw,
        scan.log / scan.raw
    );
    println!(
        "{:>22} {:>12.0} {:>12.0} {:>6.2}",
        "read_all (owned)",
        scan.read_all,
        scan.raw,
        scan.read_all / scan.raw
    );
    println!("{:>22} {:>12.0}", "per-stream replay", scan.replay);
}

/// A raw redb file appending records under increasing keys.
struct RawDb {
    db: Database,
    next_key: u64,
}

/// What a raw run did.
#[derive(Default)]
struct RawRun {
    records: u64,
    txs: u64,
    seconds: f64,
}

impl RawRun {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

impl RawDb {
    fn create(path: &Path) -> Self {
        let db = Database::create(path).expect("create a raw database");
        Self { db, next_key: 0 }
    }

    /// Durable transactions of `per_tx` inserts each, for `phase` (at least 3).
    fn run(&mut self, per_tx: u64, phase: Duration) -> RawRun {
        let record = vec![7u8; RECORD_SIZE];
        let mut txs = 0;
        let started = Instant::now();
        while started.elapsed() < phase || txs < 3 {
            let mut txn = self.db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            {
                let mut table = txn.open_table(RAW).unwrap();
                for _ in 0..per_tx {
                    self.next_key += 1;
                    table.insert(self.next_key, record.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            txs += 1;
        }
        RawRun {
            records: txs * per_tx,
            txs,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Raw records/s at `per_tx` records per transaction, log-log between the nearest `rows`
/// of (records per transaction, records/s).
fn interpolate(rows: &[(u64, f64)], per_tx: f64) -> f64 {
    let per_tx = per_tx.clamp(rows[0].0 as f64, rows[rows.len() - 1].0 as f64);
    let upper = rows
        .iter()
        .position(|&(n, _)| n as f64 >= per_tx)
        .unwrap()
        .max(1);
    let ((n0, r0), (n1, r1)) = (rows[upper - 1], rows[upper]);
    let (x0, x1) = ((n0 as f64).ln(), (n1 as f64).ln());
    (r0.ln() + (r1.ln() - r0.ln()) * (per_tx.ln() - x0) / (x1 - x0)).exp()
}

/// A v7 id from uuid with its 62 random low bits cleared, which `Ids` count up in.
static V7_BASE: LazyLock<u128> =
    LazyLock::new(|| Uuid::now_v7().as_u128() & !u128::from(u64::MAX >> 2));
/// Time-ordered ids made so far.
static V7_MADE: AtomicU64 = AtomicU64::new(0);

/// Where an appender's event ids come from. Raw redb's loop makes its keys by adding one,
/// while uuid makes each id with a `getrandom` system call (and v7 ids under a lock), charged
/// to the journal's column until 2026-12-02: time-ordered (v7) ids count up from one made by
/// uuid, so they stay time-ordered across appenders, and random (v4) ids come from a small
/// generator per appender (`rand`'s thread-local ChaCha cost ~2 % of an event until
/// 2026-12-03), as uniform as any.
enum Ids {
    TimeOrdered,
    Random(SmallRng),
}

impl Ids {
    fn new(time_ordered: bool) -> Self {
        if time_ordered {
            Self::TimeOrdered
        } else {
            Self::Random(SmallRng::from_rng(&mut rand::rng()))
        }
    }

    fn next(&mut self) -> Uuid {
        match self {
            Self::TimeOrdered => {
                let made = V7_MADE.fetch_add(1, Ordering::Relaxed) + 1;
                Uuid::from_u128(*V7_BASE + u128::from(made))
            }
            Self::Random(rng) => uuid::Builder::from_random_bytes(rng.random()).into_uuid(),
        }
    }
}

/// An event as a client makes it.
fn event(id: Uuid) -> NewEvent {
    NewEvent {
        id,
        event_type: "Deposited".to_owned(),
        content_type: ContentType::Json,
        data: vec![b'1'; EVENT_DATA],
        metadata: None,
    }
}

/// One bench stream per appender: an 11-byte name.
fn stream(n: usize) -> String {
    format!("bench-{n:05}")
}

/// A journal case with its paired raw measurement.
struct Paired {
    seconds: f64,
    commits: u64,
    appends: u64,
    events: u64,
    raw: RawRun,
}

/// `appenders` tasks appending `per_append` events at a time, in `ROUNDS` slices, each followed
/// by a slice of raw redb at the batch size the journal just reached.
fn paired(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    appenders: usize,
    per_append: usize,
    time_ordered: bool,
    slice: Duration,
) -> Paired {
    std::fs::create_dir_all(dir).unwrap();
    let journal = Journal::open(dir.join("journal.redb"), JournalConfig::default())
        .expect("open the journal");
    let mut raw = RawDb::create(&dir.join("raw.redb"));
    let mut row = Paired {
        seconds: 0.0,
        commits: 0,
        appends: 0,
        events: 0,
        raw: RawRun::default(),
    };
    for _ in 0..ROUNDS {
        let before = journal.stats();
        let started = Instant::now();
        runtime.block_on(append_for(
            &journal,
            appenders,
            per_append,
            time_ordered,
            slice,
        ));
        row.seconds += started.elapsed().as_secs_f64();
        let after = journal.stats();
        row.commits += after.commits - before.commits;
        row.appends += after.appends - before.appends;
        row.events += after.events - before.events;

        let per_tx =
            (after.events - before.events) as f64 / (after.commits - before.commits) as f64;
        let run = raw.run(per_tx.round().max(1.0) as u64, slice);
        row.raw.records += run.records;
        row.raw.txs += run.txs;
        row.raw.seconds += run.seconds;
    }
    row
}

async fn append_for(
    journal: &Journal,
    appenders: usize,
    per_append: usize,
    time_ordered: bool,
    phase: Duration,
) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|n| {
            let journal = journal.clone();
            tokio::spawn(async move {
                // Named once per appender: raw redb's loop makes no name per transaction.
                let stream = stream(n);
                let mut ids = Ids::new(time_ordered);
                while started.elapsed() < phase {
                    let events = (0..per_append).map(|_| event(ids.next())).collect();
                    journal
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Timed passes over the scan data set, per reader; the best counts (other processes share
/// the cores).
const PASSES: usize = 3;
/// The journal's global log table (see `journal/redb/store.rs`), for the raw scan.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// What `scans` measured, in events/s.
struct Scans {
    events: u64,
    /// Paged `scan_all` of the global log, its visitor reading every field.
    log: f64,
    /// Paged `read_all` of the global log (owned events).
    read_all: f64,
    /// Raw redb paging through the same log table, reading each record's length.
    raw: f64,
    /// Paged `read_stream` of every stream.
    replay: f64,
}

/// The best of `PASSES` runs of `pass`, which returns how many events it read.
fn best(mut pass: impl FnMut() -> u64) -> (u64, f64) {
    let mut best = (0, 0.0);
    for _ in 0..PASSES {
        let started = Instant::now();
        let read = pass();
        let rate = read as f64 / started.elapsed().as_secs_f64();
        if rate > best.1 {
            best = (read, rate);
        }
    }
    best
}

/// Fills a journal with about `events` events in 100 interleaved streams, then times a paged
/// scan of the global log, a paged replay of every stream, and raw redb scanning the same file.
fn scans(runtime: &tokio::runtime::Runtime, path: &Path, events: u64) -> Scans {
    const STREAMS: usize = 100;
    const PER_APPEND: usize = 100;
    const PAGE: usize = 1000;
    let journal = Journal::open(path, JournalConfig::default()).expect("open the journal");
    let rounds = (events as usize / (STREAMS * PER_APPEND)).max(1);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..STREAMS)
            .map(|n| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut ids = Ids::new(true);
                    for _ in 0..rounds {
                        let events = (0..PER_APPEND).map(|_| event(ids.next())).collect();
                        journal
                            .append(&stream(n), ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let head = journal.head_position();

    let (scanned, log) = best(|| {
        // A consumer's touch of every field: what a fold reading the events would read.
        let (mut scanned, mut touched) = (0, 0u64);
        let mut next = 1;
        while let Some(last) = journal
            .scan_all(next, ReadLimit::events(PAGE), |event| {
                touched = touched
                    .wrapping_add(event.version ^ event.recorded_at)
                    .wrapping_add(event.id.as_u128() as u64)
                    .wrapping_add((event.stream.len() + event.event_type.len()) as u64)
                    .wrapping_add((event.data.len() + event.metadata.map_or(0, str::len)) as u64)
                    .wrapping_add(event.content_type as u64);
                scanned += 1;
                Ok::<_, JournalError>(())
            })
            .unwrap()
        {
            next = last + 1;
        }
        std::hint::black_box(touched);
        scanned
    });
    let (owned, read_all) = best(|| {
        let mut scanned = 0;
        loop {
            let page = journal.read_all(scanned + 1, PAGE).unwrap();
            if page.is_empty() {
                break scanned;
            }
            scanned += page.len() as u64;
        }
    });
    let (replayed, replay) = best(|| {
        let mut replayed = 0;
        for stream in journal.streams_with_prefix("bench-").unwrap() {
            let mut version = 0;
            loop {
                let page = journal.read_stream(&stream, version + 1, PAGE).unwrap();
                let Some(last) = page.last() else { break };
                version = last.version;
                replayed += page.len() as u64;
            }
        }
        replayed
    });
    assert_eq!((scanned, owned, replayed), (head, head, head));
    drop(journal);

    // The same cache size as the journal's, so both read the file the same way.
    let db = Database::builder()
        .set_cache_size(JournalConfig::default().cache_bytes)
        .open(path)
        .expect("open the journal's file");
    let (raw_scanned, raw) = best(|| {
        let (mut scanned, mut bytes) = (0, 0);
        loop {
            let txn = db.begin_read().unwrap();
            let log = txn.open_table(LOG).unwrap();
            let before = scanned;
            for entry in log.range(scanned + 1..).unwrap().take(PAGE) {
                bytes += entry.unwrap().1.value().len();
                scanned += 1;
            }
            if scanned == before {
                break;
            }
        }
        std::hint::black_box(bytes);
        scanned
    });
    assert_eq!(raw_scanned, head);
    Scans {
        events: head,
        log,
        read_all,
        raw,
        replay,
    }
}
