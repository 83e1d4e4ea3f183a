//! The same aggregate, `bank-account`, built from each language, side by side in one run:
//! component size, compile, instantiate, per-event fold cost and memory per live instance,
//! with the Rust build as the baseline.
//!
//! `cargo bench -p foldhost-tests --bench languages` (FOLDHOST_BENCH_SCALE=0.1 for a quick
//! pass). Prints a markdown table.

use foldhost_tests::bench::scale;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use foldhost::runtime::{AggregateInstance, Plugin, PluginEngine};
use serde_json::json;

/// The builds compared, the first is the baseline: a language is one line.
const BUILDS: &[(&str, &str)] = &[
    ("Rust", foldhost_plugins::BANK_ACCOUNT),
    ("Python", foldhost_plugins::BANK_ACCOUNT_PYTHON),
    ("JavaScript", foldhost_plugins::BANK_ACCOUNT_JS),
];
/// Live instances created to measure memory per instance.
const INSTANCES: usize = 40;
const STREAM: &str = "bank-account-bench";

struct Measured {
    size: usize,
    compile: Duration,
    instantiate: Duration,
    per_event: Duration,
    rss_per_instance: usize,
    /// What the aggregate cache counts for one such instance.
    counted_per_instance: usize,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("bench.redb"), JournalConfig::default()).unwrap();
    let events = scale(20_000, 100);
    fill(&journal, events);
    let stored = journal.read_stream(STREAM, 1, events).unwrap();
    let engine = PluginEngine::new(Default::default(), None).unwrap();

    let measured: Vec<Measured> = BUILDS
        .iter()
        .map(|(_, artifact)| {
            let bytes = std::fs::read(foldhost_plugins::path(artifact)).unwrap();
            let started = Instant::now();
            let plugin = Plugin::load(&engine, &bytes, artifact).unwrap();
            let compile = started.elapsed();
            let instantiate = best(20, || {
                AggregateInstance::new(plugin.clone(), STREAM, None).unwrap();
            });
            let fold = best(3, || {
                let mut instance = AggregateInstance::new(plugin.clone(), STREAM, None).unwrap();
                for page in stored.chunks(1024) {
                    instance.apply(page).unwrap();
                }
            });
            let (rss_per_instance, counted_per_instance) =
                memory_per_instance(&plugin, &stored[..100]);
            Measured {
                size: bytes.len(),
                compile,
                instantiate,
                per_event: fold.saturating_sub(instantiate) / stored.len() as u32,
                rss_per_instance,
                counted_per_instance,
            }
        })
        .collect();

    let base = &measured[0];
    println!(
        "| bank-account, {events} events | .wasm | compile | instantiate | apply per event | vs {} | RSS per live instance | vs {} | counted by the cache |",
        BUILDS[0].0, BUILDS[0].0
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((language, _), m) in BUILDS.iter().zip(&measured) {
        println!(
            "| {language} | {:.1} MB | {:.2} s | {:.0} µs | {:.2} µs | {:.0}× | {:.2} MiB | {:.0}× | {:.2} MiB |",
            m.size as f64 / 1e6,
            m.compile.as_secs_f64(),
            m.instantiate.as_secs_f64() * 1e6,
            m.per_event.as_secs_f64() * 1e6,
            m.per_event.as_secs_f64() / base.per_event.as_secs_f64(),
            m.rss_per_instance as f64 / (1 << 20) as f64,
            m.rss_per_instance as f64 / base.rss_per_instance.max(1) as f64,
            m.counted_per_instance as f64 / (1 << 20) as f64,
        );
    }
}

/// Resident memory added per live instance (each instantiated and fed `events`),
/// as `INSTANCES` of them raise the process's RSS, and the footprint the aggregate cache
/// counts for one.
fn memory_per_instance(
    plugin: &Arc<Plugin>,
    events: &[foldhost::journal::RecordedEvent],
) -> (usize, usize) {
    let before = rss();
    let instances: Vec<AggregateInstance> = (0..INSTANCES)
        .map(|_| {
            let mut instance = AggregateInstance::new(plugin.clone(), STREAM, None).unwrap();
            instance.apply(events).unwrap();
            instance
        })
        .collect();
    let grown = rss().saturating_sub(before);
    let counted: usize = instances.iter().map(AggregateInstance::footprint).sum();
    drop(instances);
    (grown / INSTANCES, counted / INSTANCES)
}

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn best(runs: usize, mut work: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn fill(journal: &Journal, events: usize) {
    let mut batch = vec![NewEvent::json("Opened", &json!({"owner": "bench"}))];
    batch.extend((1..events).map(|i| NewEvent::json("Deposited", &json!({"amount": i % 100 + 1}))));
    for (n, chunk) in batch.chunks(1000).enumerate() {
        let expected = if n == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Any
        };
        journal
            .append_blocking(STREAM, expected, chunk.to_vec())
            .unwrap();
    }
}
