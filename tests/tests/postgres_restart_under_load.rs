//! PostgreSQL restarted (`pg_ctl restart -m fast`) while three `foldhost serve` hosts append
//! through it: the hosts reconnect by themselves, a write that failed says whether it was
//! written (503: nothing written; 504 `"outcome":"unknown"`: maybe), clients that retry with
//! the same event ids get every event stored exactly once, and the projections resume.
//!
//! Runs a private cluster (`pgcluster`), since it restarts the server; `scripts/postgres`
//! installs the binaries.

use crate::pgcluster;
use crate::serve;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, all_events};
use uuid::Uuid;

const HOSTS: usize = 3;
const WRITERS_PER_HOST: usize = 2;
/// Appends each writer makes: an `Opened` event, then deposits of 1, 2, ...
const APPENDS: u64 = 40;

/// What the writers saw besides 200s, by status (0: the connection itself failed).
type Failures = Arc<std::sync::Mutex<BTreeMap<u16, u64>>>;

/// Appends `body` (events with fixed ids) until it is acknowledged, as a careful client does:
/// a 503 or a 504 with an unknown outcome is retried with the same ids.
async fn append_until_acknowledged(
    client: &Client,
    url: &str,
    body: &Value,
    failures: &Failures,
) -> Value {
    let started = Instant::now();
    loop {
        let status = match client.post(url).json(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                match status {
                    200 => return answer,
                    503 => {}
                    504 => assert_eq!(answer["outcome"], "unknown", "{answer}"),
                    other => panic!("{url}: {other} {answer}"),
                }
                status
            }
            Err(_) => 0,
        };
        *failures.lock().unwrap().entry(status).or_default() += 1;
        assert!(started.elapsed() < PATIENCE, "{url}: never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_out_a_postgres_restart_under_load_and_store_every_acknowledged_event_once() {
    let cluster = pgcluster::Cluster::start();
    let dirs: Vec<Dirs> = (0..HOSTS).map(|_| Dirs::new()).collect();
    let hosts: Vec<Server> = dirs
        .iter()
        .map(|dirs| Server::start_on_journal(&dirs.data, &dirs.plugins, &cluster.url()))
        .collect();
    let client = Client::new();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failures = Failures::default();
    let mut writers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for w in 0..WRITERS_PER_HOST {
            let (client, acknowledged, failures) =
                (client.clone(), acknowledged.clone(), failures.clone());
            let url = host.url(&format!("/streams/bank-account-h{h}w{w}/events"));
            writers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..APPENDS {
                    let id = Uuid::new_v4();
                    let event = if n == 0 {
                        json!({"id": id, "type": "Opened", "data": {"owner": format!("h{h}w{w}")}})
                    } else {
                        json!({"id": id, "type": "Deposited", "data": {"amount": n}})
                    };
                    let body = json!({"events": [event]});
                    append_until_acknowledged(&client, &url, &body, &failures).await;
                    ids.push(id);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                ids
            }));
        }
    }
    let total = (HOSTS * WRITERS_PER_HOST) as u64 * APPENDS;
    // Two restarts, each while the writers are in full flow.
    for at in [total / 4, total / 2] {
        let started = Instant::now();
        while acknowledged.load(Ordering::Relaxed) < at {
            assert!(started.elapsed() < PATIENCE, "the writers are stuck");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cluster = &cluster;
        tokio::task::block_in_place(|| cluster.restart());
    }
    let mut stored_ids = Vec::new();
    for writer in writers {
        stored_ids.extend(writer.await.unwrap());
    }
    eprintln!("failed attempts by status (0: no connection): {failures:?}");

    // Every acknowledged event is in the log exactly once, and nothing else is.
    for host in &hosts {
        let events = all_events(&client, host).await;
        let mut seen: HashMap<String, u64> = HashMap::new();
        for event in &events {
            *seen
                .entry(event["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(
            events.len() as u64,
            total,
            "the log has {} events",
            events.len()
        );
        for id in &stored_ids {
            assert_eq!(seen.get(&id.to_string()), Some(&1), "event {id}");
        }
    }
    // Every host's projection resumed and folded each deposit once.
    let per_writer: u64 = (1..APPENDS).sum();
    let expected = json!(per_writer * (HOSTS * WRITERS_PER_HOST) as u64);
    for host in &hosts {
        let started = Instant::now();
        loop {
            let response = client
                .get(host.url("/projections/bank-analytics"))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if body["state"]["total_balance"] == expected {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "bank-analytics never caught up: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
