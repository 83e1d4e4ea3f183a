//! Several `foldhost serve` processes sharing one PostgreSQL journal: commands on one account
//! through different hosts all count, and every host's live feed sees the one global order.
//!
//! Needs `FOLDHOST_TEST_POSTGRES` (a throwaway cluster, started by scripts/test).

use crate::serve;

use std::collections::HashSet;

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, SseReader, json};

/// Creates an empty database in the test cluster and returns its URL.
async fn fresh_database() -> String {
    let admin = std::env::var("FOLDHOST_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "FOLDHOST_TEST_POSTGRES is not set: the multi-host tests need a throwaway PostgreSQL \
             cluster; run scripts/test (or `. scripts/postgres` first)"
        )
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to FOLDHOST_TEST_POSTGRES");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let base = admin.split('?').next().unwrap();
    match base.rfind('/').filter(|&i| i > "postgres://".len()) {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    }
}

async fn post(client: &Client, url: String, body: Value) -> (u16, Value) {
    json(client.post(url).json(&body).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_journal_agree_on_balances_and_global_order() {
    let journal = fresh_database().await;
    let dirs: Vec<Dirs> = (0..3).map(|_| Dirs::new()).collect();
    let hosts: Vec<Server> = dirs
        .iter()
        .map(|dirs| Server::start_on_journal(&dirs.data, &dirs.plugins, &journal))
        .collect();
    let client = Client::new();
    let commands = "/aggregates/bank-account/shared/commands";

    let mut feeds = Vec::new();
    for host in &hosts {
        let response = client
            .get(host.url("/events/live?from_position=1"))
            .send()
            .await
            .unwrap();
        feeds.push(SseReader::new(response));
    }

    let (status, opened) = post(
        &client,
        hosts[0].url(commands),
        json!({"type": "Open", "data": {"owner": "Shared"}}),
    )
    .await;
    assert_eq!(status, 200, "{opened}");

    // Concurrent deposits on the same account through every host; distinct amounts, so the
    // final balance tells exactly which ones landed.
    let mut tasks = Vec::new();
    for (index, host) in hosts.iter().enumerate() {
        for n in 0..8u64 {
            let amount = 1 + (index as u64) * 100 + n;
            let client = client.clone();
            let url = host.url(commands);
            tasks.push(tokio::spawn(async move {
                let (status, body) = post(
                    &client,
                    url,
                    json!({"type": "Deposit", "data": {"amount": amount}}),
                )
                .await;
                match status {
                    200 => Some(amount),
                    // Too many expected-version conflicts in a row: refused, not counted.
                    409 => None,
                    other => panic!("deposit of {amount}: status {other}: {body}"),
                }
            }));
        }
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    assert!(!accepted.is_empty(), "no deposit was accepted");
    let expected_balance: u64 = accepted.iter().sum();

    for host in &hosts {
        let (status, state) = json(
            client
                .get(host.url("/aggregates/bank-account/shared"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{state}");
        assert_eq!(state["state"]["balance"], expected_balance, "{state}");
        assert_eq!(state["version"], 1 + accepted.len() as u64, "{state}");
    }

    // Every host's live feed: each event exactly once, in global order, no gaps.
    let total = 1 + accepted.len();
    for (index, feed) in feeds.iter_mut().enumerate() {
        let mut ids = HashSet::new();
        for position in 1..=total as u64 {
            let event = tokio::time::timeout(PATIENCE, feed.next())
                .await
                .unwrap_or_else(|_| panic!("host {index}: no event {position}"))
                .unwrap_or_else(|| panic!("host {index}: the feed ended"));
            assert_eq!(event["position"], position, "host {index}: {event}");
            assert!(ids.insert(event["id"].to_string()), "host {index}: {event}");
        }
    }

    // And every host's bank-analytics projection folds the whole shared log.
    for (index, host) in hosts.iter().enumerate() {
        let started = std::time::Instant::now();
        loop {
            let (status, projection) = json(
                client
                    .get(host.url("/projections/bank-analytics"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 200, "{projection}");
            if projection["position"] == total as u64 {
                assert_eq!(projection["state"]["open_accounts"], 1, "{projection}");
                assert_eq!(
                    projection["state"]["total_balance"], expected_balance,
                    "host {index}: {projection}"
                );
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "host {index}: the projection did not catch up: {projection}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
