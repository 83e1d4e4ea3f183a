//! What poison events (events a projection's plugin cannot fold) cost its catch-up.
//!
//! Fills a journal with bank-account histories in which one deposit in `n` has the amount
//! `"lots"`, which `bank-analytics` cannot decode, loads `bank-analytics` and times its
//! catch-up from position 0 to the head: every poison event is parked, the others fold. The
//! baseline is the same catch-up over the same number of events with no poison, in the same
//! run. A client can append such events at will, so this is what it costs a projection.
//!
//! `cargo bench -p foldhost-tests --bench poison` (FOLDHOST_BENCH_SCALE=0.1 for a quick pass).
//! Prints a markdown table.

use foldhost_tests::bench::{deposit, fill_accounts, scale, wait_live};
use std::time::{Duration, Instant};

use foldhost::journal::{Journal, JournalConfig};
use foldhost::runtime::{Runtime, RuntimeConfig};
use serde_json::json;

/// Events per append, and per account.
const APPEND: usize = 1000;

fn main() {
    let events = scale(100_000, APPEND);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| catch-up of bank-analytics over {events} events | parked | time | events/s | × the clean catch-up |"
    );
    println!("|---|---:|---:|---:|---:|");
    let clean = catch_up(&rt, events, None);
    row("no poison (baseline)", &clean, clean.time);
    for every in [1000, 100, 10] {
        let poisoned = catch_up(&rt, events, Some(every));
        row(
            &format!("1 deposit in {every} poison"),
            &poisoned,
            clean.time,
        );
    }
}

/// What one catch-up measured.
struct CatchUp {
    time: Duration,
    events: u64,
    parked: usize,
}

fn row(what: &str, run: &CatchUp, baseline: Duration) {
    println!(
        "| {what} | {} | {:.3} s | {:.0} | {:.2}× |",
        run.parked,
        run.time.as_secs_f64(),
        run.events as f64 / run.time.as_secs_f64(),
        run.time.as_secs_f64() / baseline.as_secs_f64()
    );
}

/// Loads `bank-analytics` over a fresh journal of `events` events, one deposit in `poison`
/// undecodable, and times its catch-up to the head.
fn catch_up(rt: &tokio::runtime::Runtime, events: usize, poison: Option<usize>) -> CatchUp {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("bench.redb"), JournalConfig::default()).unwrap();
    let head = fill(&journal, events, poison);
    rt.block_on(async {
        let runtime = Runtime::new(journal, RuntimeConfig::default()).unwrap();
        let bytes = std::fs::read(foldhost_plugins::path("bank-analytics")).unwrap();
        runtime.load(bytes, "bank-analytics").await.unwrap();
        // From the load's answer: compiling the plugin is not the catch-up's.
        let started = Instant::now();
        let runner = runtime.projection("bank-analytics").unwrap();
        wait_live(&runner, head).await;
        let time = started.elapsed();
        let parked = runner.parked_count();
        let expected = poison.map_or(0, |every| events / every);
        assert!(
            parked.abs_diff(expected) <= events / APPEND,
            "{parked} parked"
        );
        runtime.shutdown().await;
        CatchUp {
            time,
            events: head,
            parked,
        }
    })
}

/// Appends `events` as accounts of [`APPEND`] events each (see [`fill_accounts`]), one
/// deposit in `poison` with an amount no plugin reads; returns the head position.
fn fill(journal: &Journal, events: usize, poison: Option<usize>) -> u64 {
    fill_accounts(journal, events / APPEND, APPEND, |account, i| {
        let n = account * (APPEND - 1) + i;
        match poison.is_some_and(|every| n.is_multiple_of(every)) {
            true => json!({"amount": "lots"}),
            false => deposit(account, i),
        }
    })
}
