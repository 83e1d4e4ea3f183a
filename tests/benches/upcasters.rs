//! Replay through a chain of two upcasters against a replay of the same history without
//! any, in one run.
//!
//! Two journals hold the same history of one bank account: one in the current event shape
//! (`Opened`, `Deposited`), one in the old shapes (`OpenedWithDeposit`, then `Credited`)
//! that `bank-upcast-v1` and `bank-upcast-v2` turn into the current one. Both replays end in
//! the same state (checked). A third column replays the current shape with the chain loaded:
//! the cost of upcasters that match no event.
//!
//! `cargo bench -p foldhost-tests --bench upcasters` (FOLDHOST_BENCH_SCALE=0.1 for a quick
//! pass). Prints a markdown table.

use foldhost_tests::bench::scale;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use foldhost::runtime::{
    AggregateInstance, Plugin, PluginEngine, ProjectionInstance, Upcaster, UpcasterChain,
};
use serde_json::{Value, json};

const STREAM: &str = "bank-account-bench";

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let engine = PluginEngine::new(Default::default(), None).unwrap();
    let account = load(&engine, "bank-account");
    let analytics = load(&engine, "bank-analytics");
    let chain = UpcasterChain::new(vec![
        Upcaster::new(load(&engine, "bank-upcast-v1")).unwrap(),
        Upcaster::new(load(&engine, "bank-upcast-v2")).unwrap(),
    ]);

    let events = scale(100_000, 100);
    let current = fill(&dir.path().join("current.redb"), events, |i| match i {
        0 => NewEvent::json("Opened", &json!({"owner": "bench"})),
        i => NewEvent::json("Deposited", &json!({"amount": i % 100 + 1})),
    });
    let old = fill(&dir.path().join("old.redb"), events, |i| match i {
        0 => NewEvent::json(
            "OpenedWithDeposit",
            &json!({"holder": "bench", "initial": 0}),
        ),
        i => NewEvent::json("Credited", &json!({"amount": i % 100 + 1})),
    });

    let replay_account = |journal: &Journal, chain: &Arc<UpcasterChain>| {
        let chain = chain.for_plugin(&account);
        let mut instance =
            AggregateInstance::through(account.clone(), chain, STREAM, None).unwrap();
        instance.catch_up(journal, u64::MAX).unwrap();
        instance.state().unwrap()
    };
    let replay_analytics = |journal: &Journal, chain: &Arc<UpcasterChain>| {
        let chain = chain.for_plugin(&analytics);
        let mut instance = ProjectionInstance::through(analytics.clone(), chain, None).unwrap();
        instance.catch_up(journal).unwrap();
        instance.state().unwrap()
    };

    println!(
        "| replay of {events} events (read + fold) | no upcasters | chain of two, old shapes | \
         chain/none | chain of two, nothing to upcast | idle chain/none |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let journals = Journals {
        current: &current,
        old: &old,
        chain: &chain,
        events,
    };
    journals.compare("bank-account, one stream", replay_account);
    journals.compare("bank-analytics, the global log", replay_analytics);
}

/// The two journals and the chain, for one row of the table.
struct Journals<'a> {
    current: &'a Journal,
    old: &'a Journal,
    chain: &'a Arc<UpcasterChain>,
    events: usize,
}

impl Journals<'_> {
    /// Prints the row of one `replay`: current shape without upcasters, old shapes through
    /// the chain, current shape through the chain.
    fn compare(&self, label: &str, replay: impl Fn(&Journal, &Arc<UpcasterChain>) -> Value) {
        let none = UpcasterChain::none();
        assert_eq!(
            replay(self.current, &none),
            replay(self.old, self.chain),
            "{label}: the upcast history folds to the same state"
        );
        let baseline = rate(self.events, || replay(self.current, &none));
        let upcast = rate(self.events, || replay(self.old, self.chain));
        let idle = rate(self.events, || replay(self.current, self.chain));
        println!(
            "| {label} | {} | {} | {:.2}x | {} | {:.2}x |",
            per_sec(baseline),
            per_sec(upcast),
            upcast / baseline,
            per_sec(idle),
            idle / baseline
        );
    }
}

fn load(engine: &PluginEngine, name: &str) -> Arc<Plugin> {
    let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
    Plugin::load(engine, &bytes, name).unwrap()
}

/// A journal at `path` whose one stream holds `events` events made by `event(i)`.
fn fill(path: &Path, events: usize, event: impl Fn(usize) -> NewEvent) -> Journal {
    let journal = Journal::open(path, JournalConfig::default()).unwrap();
    let mut version = 0;
    let mut i = 0;
    while i < events {
        let batch: Vec<NewEvent> = (i..events.min(i + 1000)).map(&event).collect();
        i += batch.len();
        let expected = match version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        version = journal
            .append_blocking(STREAM, expected, batch)
            .unwrap()
            .last_version;
    }
    journal
}

/// Best of three runs, as events per second.
fn rate<T>(events: usize, mut run: impl FnMut() -> T) -> f64 {
    let best = (0..3).map(|_| time(&mut run)).min().unwrap();
    events as f64 / best.as_secs_f64()
}

fn time<T>(mut run: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    std::hint::black_box(run());
    started.elapsed()
}

fn per_sec(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M ev/s", rate / 1e6)
    } else {
        format!("{:.0}k ev/s", rate / 1e3)
    }
}
