//! Replay through WASM against the same logic compiled natively, in one run.
//!
//! `cargo bench -p foldhost-tests --bench runtime` (FOLDHOST_BENCH_SCALE=0.1
//! for a quick pass). Prints a markdown table.

use foldhost_tests::bench::scale;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_account::{Account, AccountEvent};
use bank_analytics::{Analytics, BankEvent};
use foldhost::journal::{
    ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent, Pages, RecordedEvent,
};
use foldhost::runtime::{
    AggregateInstance, Limits, Plugin, PluginEngine, ProjectionInstance, REPLAY_LIMIT,
};
use foldhost_guest::codec::decode_json;
use foldhost_guest::{Aggregate, EventMeta, Projection};
use serde_json::json;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("bench.redb"), JournalConfig::default()).unwrap();
    let engine = PluginEngine::new(Default::default(), None).unwrap();
    let account = load(&engine, "bank-account");
    let analytics = load(&engine, "bank-analytics");

    let long = scale(100_000, 100);
    let short = scale(10_000, 100);
    fill_account(&journal, "bank-account-long", long);
    fill_account(&journal, "bank-account-short", short);
    let spread = scale(200_000, 100);
    fill_many_accounts(&journal, spread, 1_000);

    println!("| fold only (events already in memory) | WASM | native | WASM/native |");
    println!("|---|---:|---:|---:|");
    let events = journal.read_stream("bank-account-long", 1, long).unwrap();
    for batch in [1, 10, 100, 1024] {
        let wasm = rate(events.len(), || fold(&account, &events, batch));
        let native = rate(events.len(), || native_account(&events));
        row(
            &format!("bank-account apply, {batch} events/call"),
            wasm,
            native,
        );
    }
    let all = read_everything(&journal);
    let wasm = rate(all.len(), || {
        let mut instance = ProjectionInstance::new(analytics.clone(), None).unwrap();
        for chunk in all.chunks(1024) {
            instance.apply(chunk).unwrap();
        }
    });
    let native = rate(all.len(), || native_analytics(&all));
    row("bank-analytics apply, 1024 events/call", wasm, native);

    println!();
    println!("| fuel metering (fold only) | metered | unmetered | metered/unmetered |");
    println!("|---|---:|---:|---:|");
    let metered = PluginEngine::new(
        Limits {
            fuel: Some(u64::MAX),
            ..Limits::default()
        },
        None,
    )
    .unwrap();
    let metered_account = load(&metered, "bank-account");
    for batch in [1, 1024] {
        let with = rate(events.len(), || fold(&metered_account, &events, batch));
        let without = rate(events.len(), || fold(&account, &events, batch));
        row(
            &format!("bank-account apply, {batch} events/call"),
            with,
            without,
        );
    }

    println!();
    println!(
        "| rehydrate one aggregate (journal read + fold) | no snapshot | snapshot 100 events back |"
    );
    println!("|---|---:|---:|");
    for (stream, len) in [("bank-account-short", short), ("bank-account-long", long)] {
        let cold = best_time(|| {
            let mut instance = AggregateInstance::new(account.clone(), stream, None).unwrap();
            instance.catch_up(&journal, u64::MAX).unwrap();
        });
        let snapshot_at = len as u64 - 100;
        let mut instance = AggregateInstance::new(account.clone(), stream, None).unwrap();
        instance.catch_up(&journal, snapshot_at).unwrap();
        let bytes = instance.snapshot().unwrap();
        block_on(journal.put_snapshot(&account.hash, stream, snapshot_at, bytes)).unwrap();
        let warm = best_time(|| {
            AggregateInstance::rehydrate(account.clone(), &journal, stream, u64::MAX).unwrap();
        });
        println!("| {len} events | {} | {} |", ms(cold), ms(warm));
    }
    println!();
    println!(
        "| replay from the journal (read + fold, 1024-event pages) | WASM | native | WASM/native |"
    );
    println!("|---|---:|---:|---:|");
    // Sequential: read a page, fold it, read the next. Read-ahead: the host's catch-up, which
    // reads the next page on another thread while one folds; the native fold goes through the
    // same `Pages::fold_ahead`, so the ratio still compares the folds.
    let stream = || Pages::Stream {
        stream: "bank-account-long".into(),
        from: 1,
        to: u64::MAX,
    };
    let wasm = rate(long, || {
        let mut instance =
            AggregateInstance::new(account.clone(), "bank-account-long", None).unwrap();
        sequentially(&journal, stream(), |page| instance.apply(page).unwrap());
        instance
    });
    let native = rate(long, || {
        let mut state = Account::default();
        sequentially(&journal, stream(), |page| fold_account(&mut state, page));
        state
    });
    row(
        &format!("bank-account, one stream of {long}, sequential"),
        wasm,
        native,
    );
    let wasm = rate(long, || {
        let mut instance =
            AggregateInstance::new(account.clone(), "bank-account-long", None).unwrap();
        instance.catch_up(&journal, u64::MAX).unwrap();
        instance
    });
    let native = rate(long, || {
        let mut state = Account::default();
        ahead(&journal, stream(), |page| fold_account(&mut state, page));
        state
    });
    row(
        &format!("bank-account, one stream of {long}, read-ahead"),
        wasm,
        native,
    );
    let log = || Pages::All { from: 1 };
    let wasm = rate(all.len(), || {
        let mut instance = ProjectionInstance::new(analytics.clone(), None).unwrap();
        sequentially(&journal, log(), |page| instance.apply(page).unwrap());
        instance
    });
    let native = rate(all.len(), || {
        let mut state = Analytics::default();
        sequentially(&journal, log(), |page| fold_analytics(&mut state, page));
        state
    });
    row(
        &format!("bank-analytics, global log of {}, sequential", all.len()),
        wasm,
        native,
    );
    let wasm = rate(all.len(), || {
        let mut instance = ProjectionInstance::new(analytics.clone(), None).unwrap();
        instance.catch_up(&journal).unwrap();
        instance
    });
    let native = rate(all.len(), || {
        let mut state = Analytics::default();
        ahead(&journal, log(), |page| fold_analytics(&mut state, page));
        state
    });
    row(
        &format!("bank-analytics, global log of {}, read-ahead", all.len()),
        wasm,
        native,
    );
}

/// Reads each page of `pages`, then folds it, then reads the next.
fn sequentially(journal: &Journal, mut pages: Pages, mut fold: impl FnMut(&[RecordedEvent])) {
    loop {
        let page = pages.read(journal, REPLAY_LIMIT).unwrap();
        if page.is_empty() {
            return;
        }
        fold(&page);
    }
}

/// Folds `pages` as the host's catch-up does: the next page read while one folds.
fn ahead(journal: &Journal, pages: Pages, mut fold: impl FnMut(&[RecordedEvent])) {
    pages
        .fold_ahead(journal, REPLAY_LIMIT, |page| {
            fold(page);
            Ok::<_, JournalError>(())
        })
        .unwrap();
}

/// Folds `events` into a fresh instance of aggregate `plugin`, `batch` per call.
fn fold(plugin: &Arc<Plugin>, events: &[RecordedEvent], batch: usize) -> AggregateInstance {
    let mut instance = AggregateInstance::new(plugin.clone(), "bank-account-long", None).unwrap();
    for chunk in events.chunks(batch) {
        instance.apply(chunk).unwrap();
    }
    instance
}

fn load(engine: &PluginEngine, name: &str) -> Arc<Plugin> {
    let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
    Plugin::load(engine, &bytes, name).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn fill_account(journal: &Journal, stream: &str, events: usize) {
    let mut batch = vec![NewEvent::json("Opened", &json!({"owner": "bench"}))];
    let mut version = 0;
    for i in 1..events {
        batch.push(NewEvent::json("Deposited", &json!({"amount": i % 100 + 1})));
        if batch.len() == 1000 || i + 1 == events {
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            let appended = journal
                .append_blocking(stream, expected, std::mem::take(&mut batch))
                .unwrap();
            version = appended.last_version;
        }
    }
}

fn fill_many_accounts(journal: &Journal, events: usize, accounts: usize) {
    for a in 0..accounts {
        journal
            .append_blocking(
                &format!("bank-account-{a}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::json(
                    "Opened",
                    &json!({"owner": format!("owner {a}")}),
                )],
            )
            .unwrap();
    }
    let per_account = events / accounts;
    for a in 0..accounts {
        let deposits = (0..per_account.saturating_sub(1))
            .map(|i| NewEvent::json("Deposited", &json!({"amount": i % 50 + 1})))
            .collect::<Vec<_>>();
        if !deposits.is_empty() {
            journal
                .append_blocking(&format!("bank-account-{a}"), ExpectedVersion::Any, deposits)
                .unwrap();
        }
    }
}

fn read_everything(journal: &Journal) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let page = journal.read_all(all.len() as u64 + 1, 10_000).unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// The same fold with the plugin's own Rust code, called directly.
fn native_account(events: &[RecordedEvent]) -> Account {
    let mut state = Account::default();
    fold_account(&mut state, events);
    state
}

fn fold_account(state: &mut Account, events: &[RecordedEvent]) {
    for event in events {
        let decoded: AccountEvent = decode_json(&event.event_type, &event.data).unwrap();
        state.apply(decoded);
    }
}

fn native_analytics(events: &[RecordedEvent]) -> Analytics {
    let mut state = Analytics::default();
    fold_analytics(&mut state, events);
    state
}

fn fold_analytics(state: &mut Analytics, events: &[RecordedEvent]) {
    let subscription = Analytics::subscription();
    for event in events {
        if !subscription.matches(&event.stream, &event.event_type) {
            continue;
        }
        let decoded: BankEvent = decode_json(&event.event_type, &event.data).unwrap();
        let meta = EventMeta {
            stream: &event.stream,
            version: event.version,
            position: event.position,
            recorded_at: event.recorded_at,
        };
        state.apply(decoded, &meta);
    }
}

/// The best run (see [`best_time`]), as events per second.
fn rate<T>(events: usize, run: impl FnMut() -> T) -> f64 {
    events as f64 / best_time(run).as_secs_f64()
}

/// The fastest of at least five runs, and of as many as fit in a quarter of a second: a fold of
/// a few milliseconds, timed only three times, read up to half its speed whenever the other
/// core's work preempted it.
fn best_time<T>(mut run: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 5 || started.elapsed() < Duration::from_millis(250) {
        best = best.min(time(&mut run));
        runs += 1;
    }
    best
}

fn time<T>(mut run: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    std::hint::black_box(run());
    started.elapsed()
}

fn row(label: &str, wasm: f64, native: f64) {
    println!(
        "| {label} | {} ev/s | {} ev/s | {:.2}x |",
        per_sec(wasm),
        per_sec(native),
        wasm / native
    );
}

fn per_sec(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else {
        format!("{:.0}k", rate / 1e3)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
