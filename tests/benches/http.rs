//! Load on the HTTP API: commands and appends per second with 1 and 64 concurrent clients,
//! on distinct aggregates/streams and on one hot one, with p50/p99 latency.
//!
//! `cargo bench -p foldhost-tests --bench http` (about a minute; FOLDHOST_BENCH_SECONDS sets
//! the seconds per scenario, default 5). The server runs in this process on 127.0.0.1:0 with
//! a temp data directory and the real bank-account plugin; clients are reqwest over loopback
//! keep-alive connections, sharing the machine's cores with the server. Appends are durable
//! (fsync via group commit) before they are acknowledged. Prints a markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::server::{Server, ServerConfig};
use reqwest::Client;
use serde_json::json;

/// What one request does.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `POST /aggregates/bank-account/{id}/commands` with a Deposit.
    Command,
    /// `POST /streams/{stream}/events` with one event, expected version any.
    Append,
}

/// Which aggregates or streams the clients hit.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// One per client.
    Distinct,
    /// All clients on the same one.
    Hot,
}

struct Outcome {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commits: u64,
}

fn seconds() -> Duration {
    let seconds: f64 = std::env::var("FOLDHOST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(seconds)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        foldhost_plugins::path(foldhost_plugins::BANK_ACCOUNT),
        plugins.join("bank-account.wasm"),
    )
    .unwrap();
    let server = Server::start(ServerConfig {
        data_dir: dir.path().join("data"),
        journal_url: None,
        accept_non_durable_postgres: false,
        plugins_dir: Some(plugins),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: None,
        metrics: None,
        failure_policy: Default::default(),
        limits: Default::default(),
        plugin_limits: Default::default(),
        aggregate_cache_bytes: foldhost::runtime::DEFAULT_CACHE_BYTES,
        journal_cache_bytes: foldhost::journal::DEFAULT_CACHE_BYTES,
        compiler: None,
        passivate_after: Some(foldhost::runtime::DEFAULT_PASSIVATE_AFTER),
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let duration = seconds();

    println!("| workload | clients | target | ops/s | p50 ms | p99 ms | requests/commit |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    let mut busy = Vec::new();
    for kind in [Kind::Command, Kind::Append] {
        for (clients, target) in [
            (1, Target::Distinct),
            (64, Target::Distinct),
            (1, Target::Hot),
            (64, Target::Hot),
        ] {
            let outcome = run(&server, &client, &base, kind, clients, target, duration).await;
            let per_second = outcome.requests as f64 / outcome.elapsed.as_secs_f64();
            if kind == Kind::Command && clients == 64 {
                busy.push(per_second);
            }
            let mut latencies = outcome.latencies;
            latencies.sort();
            let quantile = |q: f64| {
                let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
                latencies[index].as_secs_f64() * 1e3
            };
            println!(
                "| {} | {clients} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
                match kind {
                    Kind::Command => "command (Deposit)",
                    Kind::Append => "append (1 event)",
                },
                match target {
                    Target::Distinct => "distinct ids",
                    Target::Hot => "one hot id",
                },
                per_second,
                quantile(0.5),
                quantile(0.99),
                outcome.requests as f64 / outcome.commits.max(1) as f64,
            );
        }
    }
    println!(
        "\ncommands, 64 clients: one hot id / distinct ids (baseline) = {:.2}×",
        busy[1] / busy[0]
    );
    server.shutdown().await.unwrap();
}

/// One scenario: `clients` tasks sending requests back to back for `duration`.
async fn run(
    server: &Server,
    client: &Client,
    base: &str,
    kind: Kind,
    clients: usize,
    target: Target,
    duration: Duration,
) -> Outcome {
    static SCENARIO: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let scenario = SCENARIO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let urls: Vec<String> = (0..clients)
        .map(|c| {
            let id = match target {
                Target::Distinct => format!("s{scenario}-c{c}"),
                Target::Hot => format!("s{scenario}-hot"),
            };
            match kind {
                Kind::Command => format!("{base}/aggregates/bank-account/{id}/commands"),
                Kind::Append => format!("{base}/streams/{id}/events"),
            }
        })
        .collect();
    if kind == Kind::Command {
        let mut opened = std::collections::HashSet::new();
        for url in urls.iter().filter(|url| opened.insert(url.as_str())) {
            let open = json!({"type": "Open", "data": {"owner": "bench"}});
            let response = client.post(url).json(&open).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let body = match kind {
        Kind::Command => json!({"type": "Deposit", "data": {"amount": 1}}),
        Kind::Append => json!({"events": [{"type": "Deposited", "data": {"amount": 1}}]}),
    };
    let body = Arc::new(serde_json::to_vec(&body).unwrap());
    let before = server.runtime().journal().stats();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let (client, body) = (client.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.as_ref().clone())
                        .send()
                        .await
                        .unwrap();
                    if response.status() != 200 {
                        panic!("{}", response.text().await.unwrap());
                    }
                    response.bytes().await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let after = server.runtime().journal().stats();
    Outcome {
        requests: latencies.len(),
        elapsed,
        latencies,
        commits: after.commits - before.commits,
    }
}
