//! The two journal backends side by side: appends/s and commands/s, redb vs PostgreSQL.
//!
//! `FOLDHOST_TEST_POSTGRES=postgres://… cargo bench -p foldhost-tests --bench backends`
//! (scripts/postgres starts a throwaway cluster; note it runs with fsync off, so its PostgreSQL
//! numbers are an upper bound). FOLDHOST_BENCH_SCALE=0.1 for a quick pass. Prints a markdown
//! table, with PostgreSQL's rates as a multiple of redb's measured in the same run. Without
//! FOLDHOST_TEST_POSTGRES only redb is measured.

use foldhost_tests::bench::scale;
use std::sync::Arc;
use std::time::Instant;

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use foldhost::runtime::{Runtime, RuntimeConfig};
use serde_json::json;

async fn fresh_database(admin: &str) -> String {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = admin.split('?').next().unwrap();
    match base.rfind('/').filter(|&i| i > "postgres://".len()) {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    }
}

/// `total` single-event appends by `appenders` concurrent tasks, each on its own stream.
async fn appends_per_second(journal: &Journal, appenders: usize, total: usize) -> f64 {
    let per_task = total / appenders;
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for n in 0..per_task {
                    let event = NewEvent::json("Counted", &json!({ "n": n }));
                    journal
                        .append(&format!("bench-{task}"), ExpectedVersion::Any, vec![event])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * appenders) as f64 / started.elapsed().as_secs_f64()
}

/// `total` Deposit commands by `clients` concurrent tasks, each on its own account.
async fn commands_per_second(runtime: &Arc<Runtime>, clients: usize, total: usize) -> f64 {
    let per_task = total / clients;
    for client in 0..clients {
        let open = serde_json::to_vec(&json!({"owner": "bench"})).unwrap();
        runtime
            .execute("bank-account", &format!("c{client}"), "Open", open)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let deposit = serde_json::to_vec(&json!({"amount": 1})).unwrap();
                    runtime
                        .execute("bank-account", &format!("c{client}"), "Deposit", deposit)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * clients) as f64 / started.elapsed().as_secs_f64()
}

/// The four rates of one backend, in [`LOADS`]' order.
async fn measure(open: impl AsyncFn() -> Journal) -> Vec<f64> {
    let mut rates = Vec::new();
    for appenders in [1, 64] {
        let journal = open().await;
        let total = scale(if appenders == 1 { 2_000 } else { 20_000 }, 64);
        rates.push(appends_per_second(&journal, appenders, total).await);
    }
    for clients in [1, 64] {
        let journal = open().await;
        let runtime = Runtime::new(journal, RuntimeConfig::default()).unwrap();
        let bytes = std::fs::read(foldhost_plugins::path(foldhost_plugins::BANK_ACCOUNT)).unwrap();
        runtime.load(bytes, "bank-account").await.unwrap();
        let total = scale(if clients == 1 { 2_000 } else { 10_000 }, 64);
        rates.push(commands_per_second(&runtime, clients, total).await);
        runtime.shutdown().await;
    }
    rates
}

/// The columns: what each rate of [`measure`] counts.
const LOADS: [&str; 4] = [
    "appends, 1",
    "appends, 64 concurrent",
    "commands, 1",
    "commands, 64 concurrent",
];

fn row(name: &str, cells: impl IntoIterator<Item = String>) {
    let cells: Vec<String> = cells.into_iter().collect();
    println!("| {name} | {} |", cells.join(" | "));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    row("backend", LOADS.map(String::from));
    row("---", LOADS.map(|_| "---:".to_owned()));
    let count = std::sync::atomic::AtomicUsize::new(0);
    let redb = measure(async || {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("bench-{n}.redb"));
        tokio::task::spawn_blocking(move || Journal::open(path, JournalConfig::default()))
            .await
            .unwrap()
            .unwrap()
    })
    .await;
    row("redb", redb.iter().map(|rate| format!("{rate:.0}/s")));
    match std::env::var("FOLDHOST_TEST_POSTGRES") {
        Ok(admin) => {
            let postgres = measure(async || {
                let url = fresh_database(&admin).await;
                // The throwaway cluster of scripts/postgres runs with fsync=off.
                let config = JournalConfig {
                    accept_non_durable_postgres: true,
                    ..JournalConfig::default()
                };
                Journal::open_postgres(&url, config).await.unwrap()
            })
            .await;
            row(
                "PostgreSQL",
                postgres.iter().map(|rate| format!("{rate:.0}/s")),
            );
            row(
                "PostgreSQL ÷ redb",
                postgres
                    .iter()
                    .zip(&redb)
                    .map(|(pg, redb)| format!("{:.2}×", pg / redb)),
            );
        }
        Err(_) => println!("| PostgreSQL | not measured: FOLDHOST_TEST_POSTGRES is unset | | | |"),
    }
}
