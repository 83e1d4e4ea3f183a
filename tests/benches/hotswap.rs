//! What hot-loading and hot-swapping a projection costs on a large journal.
//!
//! Fills a journal with 1M bank-account events, then, in one `Runtime`:
//! loads `bank-analytics` and measures its catch-up to the head; uploads
//! `bank-analytics-v2` and measures upload-to-cutover (compile, full replay of
//! the new version in the background, takeover); rolls back to v1, which
//! resumes from its own checkpoint; and swaps the `bank-account` aggregate.
//!
//! `cargo bench -p foldhost-tests --bench hotswap` (FOLDHOST_BENCH_SCALE=0.1
//! for a quick pass). Prints a markdown table.

use foldhost_tests::bench::scale;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use foldhost::runtime::{Plugin, ProjectionStatus, Runtime, RuntimeConfig};
use serde_json::json;

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
    let rows = rt.block_on(measure(journal, head));

    println!("| hot-swap on a journal of {head} events | time | events read | events/s |");
    println!("|---|---:|---:|---:|");
    let fill_rate = per_sec(head, fill_time);
    println!(
        "| fill the journal ({APPEND}-event appends) | {} | {head} | {fill_rate} |",
        secs(fill_time)
    );
    for row in rows {
        let events = row.events.map_or(String::new(), |n| n.to_string());
        let rate = match (row.rate, row.events) {
            (true, Some(n)) => per_sec(n, row.time),
            _ => String::new(),
        };
        println!("| {} | {} | {events} | {rate} |", row.what, secs(row.time));
    }
}

/// One line of the table.
struct Row {
    what: &'static str,
    time: Duration,
    /// Events the projection read from the journal in that time.
    events: Option<u64>,
    /// Whether `time` is all folding, so that events/s means something.
    rate: bool,
}

impl Row {
    fn new(what: &'static str, time: Duration) -> Row {
        Row {
            what,
            time,
            events: None,
            rate: false,
        }
    }

    fn read(self, events: Option<u64>) -> Row {
        Row { events, ..self }
    }
}

/// Runs the loads and swaps, one [`Row`] each.
async fn measure(journal: Journal, head: u64) -> Vec<Row> {
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
            "bank-analytics: catch-up from position 0 to the head",
            caught_up,
        )
        .read(Some(runner.replayed()))
    });

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
            "bank-analytics-v2: upload to cutover (compile, replay from 0, takeover)",
            cutover,
        )
        .read(replayed),
    );

    // v1 checkpointed while it was active: going back only replays the tail.
    let (rollback, replayed) = swap_projection(&runtime, v1, "1.0.0").await;
    rows.push(
        Row::new(
            "back to bank-analytics v1: upload to cutover (compile, resume from its checkpoint)",
            rollback,
        )
        .read(replayed),
    );

    runtime
        .load(bytes("bank-account"), "bank-account")
        .await
        .unwrap();
    let started = Instant::now();
    let info = runtime
        .load(bytes("bank-account-v2"), "bank-account")
        .await
        .unwrap();
    assert_eq!(info.version, "1.1.0");
    rows.push(Row::new(
        "bank-account-v2 (aggregate): upload to cutover (compile, install)",
        started.elapsed(),
    ));

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

async fn wait_live(runner: &foldhost::runtime::ProjectionRunner, head: u64) {
    let mut status = runner.watch_status();
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| match s {
            ProjectionStatus::Live { position } => *position >= head,
            ProjectionStatus::Faulted { reason, .. } => panic!("projection faulted: {reason}"),
            _ => false,
        }),
    )
    .await
    .expect("the projection caught up in time")
    .unwrap();
}

/// Appends `events` as accounts of [`APPEND`] events each (opened, then
/// deposits), one append per account; returns the head position.
fn fill(journal: &Journal, events: usize) -> u64 {
    for account in 0..events / APPEND {
        let mut batch = vec![NewEvent::json(
            "Opened",
            &json!({"owner": format!("owner {account}")}),
        )];
        batch.extend(
            (1..APPEND).map(|i| NewEvent::json("Deposited", &json!({"amount": i % 50 + 1}))),
        );
        journal
            .append_blocking(
                &format!("bank-account-{account}"),
                ExpectedVersion::NoStream,
                batch,
            )
            .unwrap();
    }
    journal.head_position()
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
