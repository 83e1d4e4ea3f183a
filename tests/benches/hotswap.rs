//! What hot-loading and hot-swapping a projection costs on a large journal.
//!
//! Fills a journal with 1M bank-account events, then, in one `Runtime`:
//! loads `bank-analytics` and measures its catch-up to the head; uploads
//! `bank-analytics-v2` and measures upload-to-cutover (compile, full replay of
//! the new version in the background, takeover); rolls back to v1, which
//! resumes from its own checkpoint; and swaps the `bank-account` aggregate.
//! Each row is a multiple of a baseline measured in the same run: the
//! catch-up of reading the same events with no plugin (pages of 1024, as a
//! catch-up reads them), a swap of the first load of the plugin it replaces
//! (compile, install and, for a projection, catch up from 0).
//!
//! `cargo bench -p foldhost-tests --bench hotswap` (FOLDHOST_BENCH_SCALE=0.1
//! for a quick pass). Prints a markdown table.

use foldhost_tests::bench::{deposit, fill_accounts, scale, wait_live};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::journal::{Journal, JournalConfig};
use foldhost::runtime::{Plugin, Runtime, RuntimeConfig};

/// Failure guard for every wait (not a measurement bound).
const PATIENCE: Duration = Duration::from_secs(600);
/// Events per append, and per account.
const APPEND: usize = 1000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("bench.redb"), JournalConfig::default()).unwrap();
    let started = Instant::now();
    let head = fill(&journal, scale(1_000_000, APPEND));
    let fill_time = started.elapsed();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = read_to_head(&journal, head);
    let rows = rt.block_on(measure(journal, head, read));

    println!(
        "| hot-swap on a journal of {head} events | time | events read | events/s | ÷ baseline |"
    );
    println!("|---|---:|---:|---:|---:|");
    let fill_rate = per_sec(head, fill_time);
    println!(
        "| fill the journal ({APPEND}-event appends) | {} | {head} | {fill_rate} | |",
        secs(fill_time)
    );
    println!(
        "| baseline: read the global log to the head, no plugin | {} | {head} | {} | |",
        secs(read),
        per_sec(head, read)
    );
    for row in rows {
        let events = row.events.map_or(String::new(), |n| n.to_string());
        let rate = match (row.rate, row.events) {
            (true, Some(n)) => per_sec(n, row.time),
            _ => String::new(),
        };
        let ratio = row.baseline.map_or(String::new(), |baseline| {
            format!("{:.2}×", row.time.as_secs_f64() / baseline.as_secs_f64())
        });
        println!(
            "| {} | {} | {events} | {rate} | {ratio} |",
            row.what,
            secs(row.time)
        );
    }
}

/// How long reading the global log from position 1 to `head` takes with no plugin: the best
/// of three passes, in pages of 1024 events.
fn read_to_head(journal: &Journal, head: u64) -> Duration {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut next = 1;
            while next <= head {
                let page = journal.read_all(next, 1024).unwrap();
                next = page.last().expect("events up to the head").position + 1;
                std::hint::black_box(page);
            }
            started.elapsed()
        })
        .min()
        .unwrap()
}

/// One line of the table.
struct Row {
    what: &'static str,
    time: Duration,
    /// Events the projection read from the journal in that time.
    events: Option<u64>,
    /// Whether `time` is all folding, so that events/s means something.
    rate: bool,
    /// What `time` is compared with.
    baseline: Option<Duration>,
}

impl Row {
    fn new(what: &'static str, time: Duration) -> Row {
        Row {
            what,
            time,
            events: None,
            rate: false,
            baseline: None,
        }
    }

    fn read(self, events: Option<u64>) -> Row {
        Row { events, ..self }
    }

    fn against(self, baseline: Duration) -> Row {
        Row {
            baseline: Some(baseline),
            ..self
        }
    }
}

/// Runs the loads and swaps, one [`Row`] each; `read` is how long reading the log takes.
async fn measure(journal: Journal, head: u64, read: Duration) -> Vec<Row> {
    let runtime = Runtime::new(journal, RuntimeConfig::default()).unwrap();
    let mut rows = Vec::new();

    let v1 = bytes("bank-analytics");
    let started = Instant::now();
    runtime.load(v1.clone(), "bank-analytics").await.unwrap();
    let loaded = started.elapsed();
    let runner = runtime.projection("bank-analytics").unwrap();
    wait_live(&runner, head).await;
    let caught_up = started.elapsed() - loaded;
    rows.push(Row::new(
        "bank-analytics: compile and install (no cache)",
        loaded,
    ));
    rows.push(Row {
        rate: true,
        ..Row::new(
            "bank-analytics: catch-up from position 0 to the head (÷ the read)",
            caught_up,
        )
        .read(Some(runner.replayed()))
        .against(read)
    });
    let first_load = loaded + caught_up;

    let v2 = bytes("bank-analytics-v2");
    let started = Instant::now();
    Plugin::load(runtime.engine(), &v2, "bank-analytics-v2").unwrap();
    rows.push(Row::new(
        "bank-analytics-v2: compile alone (no cache)",
        started.elapsed(),
    ));
    let (cutover, replayed) = swap_projection(&runtime, v2, "2.0.0").await;
    rows.push(
        Row::new(
            "bank-analytics-v2: upload to cutover (compile, replay from 0, takeover; ÷ v1's first load)",
            cutover,
        )
        .read(replayed)
        .against(first_load),
    );

    // v1 checkpointed while it was active: going back only replays the tail.
    let (rollback, replayed) = swap_projection(&runtime, v1, "1.0.0").await;
    rows.push(
        Row::new(
            "back to bank-analytics v1: upload to cutover (compile, resume from its checkpoint; ÷ its first load)",
            rollback,
        )
        .read(replayed)
        .against(first_load),
    );

    let started = Instant::now();
    runtime
        .load(bytes("bank-account"), "bank-account")
        .await
        .unwrap();
    let account_loaded = started.elapsed();
    rows.push(Row::new(
        "bank-account (aggregate): first load (compile, install)",
        account_loaded,
    ));
    let started = Instant::now();
    let info = runtime
        .load(bytes("bank-account-v2"), "bank-account")
        .await
        .unwrap();
    assert_eq!(info.version, "1.1.0");
    rows.push(
        Row::new(
            "bank-account-v2 (aggregate): upload to cutover (compile, install; ÷ the first load)",
            started.elapsed(),
        )
        .against(account_loaded),
    );

    runtime.shutdown().await;
    rows
}

/// Loads a new build of `bank-analytics` and waits until it is the active
/// version with nothing pending; returns the time from the upload and how many
/// events the new version read.
async fn swap_projection(
    runtime: &Arc<Runtime>,
    build: Vec<u8>,
    version: &str,
) -> (Duration, Option<u64>) {
    let started = Instant::now();
    let pending = runtime.load(build, "bank-analytics").await.unwrap();
    let hash = pending.pending.expect("the new build is pending").hash;
    loop {
        let info = runtime.info("bank-analytics").unwrap();
        if let Some(error) = info.last_error {
            panic!("the swap failed: {error}");
        }
        if info.hash == hash && info.pending.is_none() {
            assert_eq!(info.version, version);
            return (started.elapsed(), info.replayed);
        }
        assert!(started.elapsed() < PATIENCE, "no cutover: {info:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Appends `events` as accounts of [`APPEND`] events each (see [`fill_accounts`]); returns
/// the head position.
fn fill(journal: &Journal, events: usize) -> u64 {
    fill_accounts(journal, events / APPEND, APPEND, deposit)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(foldhost_plugins::path(name)).unwrap()
}

fn secs(time: Duration) -> String {
    format!("{:.3} s", time.as_secs_f64())
}

fn per_sec(events: u64, time: Duration) -> String {
    format!("{:.0}", events as f64 / time.as_secs_f64())
}
