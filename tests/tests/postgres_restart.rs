//! A projection rides out a restart of its PostgreSQL journal: while the database is away it
//! keeps retrying (status `retrying`, with the reason and the attempt), and once it is back
//! the projection goes live by itself with every event folded exactly once.
//!
//! Runs a private cluster (`pgcluster`), since it stops the server; `scripts/postgres`
//! installs the binaries.

use crate::pgcluster;
use crate::serve;

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, json};

const TOKEN: &str = "s3cret-admin-token";

async fn analytics(client: &Client, server: &Server) -> Value {
    let response = client.get(server.url("/plugins")).send().await;
    let (status, list) = json(response.unwrap()).await;
    assert_eq!(status, 200, "{list}");
    let found = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bank-analytics");
    found.expect("bank-analytics is loaded").clone()
}

/// Polls until bank-analytics satisfies `done` (a failure guard, not a timing assertion).
async fn wait_for(client: &Client, server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let info = analytics(client, server).await;
        if done(&info) {
            return info;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "bank-analytics never got there: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a command with an idempotency key until it is answered 200: safe to repeat while
/// the database comes back.
async fn command(client: &Client, server: &Server, id: &str, key: &str, body: Value) {
    let url = server.url(&format!("/aggregates/bank-account/{id}/commands"));
    let started = Instant::now();
    loop {
        let request = client.post(&url).header("Idempotency-Key", key).json(&body);
        let (status, answer) = json(request.send().await.unwrap()).await;
        if status == 200 {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{key}: {status} {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_retries_through_a_postgres_restart_and_folds_every_event_once() {
    let cluster = pgcluster::Cluster::start();
    let dirs = Dirs::new();
    let server =
        Server::start_on_journal_with(&dirs.data, &dirs.plugins, &cluster.url(), Some(TOKEN));
    let client = Client::new();
    // Three accounts, 40 deposits of 1..=40 each.
    for account in 0..3 {
        let id = format!("a{account}");
        let open = json!({"type": "Open", "data": {"owner": id}});
        command(&client, &server, &id, &format!("{id}-open"), open).await;
        for amount in 1..=40 {
            let deposit = json!({"type": "Deposit", "data": {"amount": amount}});
            command(&client, &server, &id, &format!("{id}-{amount}"), deposit).await;
        }
    }
    let live_at = |position: u64| {
        move |p: &Value| p["status"] == json!({"status": "live", "position": position})
    };
    wait_for(&client, &server, live_at(123)).await;

    // The database goes away (`pg_ctl stop`, then `start`: a restart with room to look).
    // The projection, restarted meanwhile, cannot read its checkpoint: it retries.
    cluster.stop();
    let restart = client
        .post(server.url("/plugins/bank-analytics/restart"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(restart.status(), 200);
    let retrying = wait_for(&client, &server, |p| {
        p["status"]["status"] == "retrying" && p["status"]["attempt"].as_u64() >= Some(2)
    })
    .await;
    assert!(
        retrying["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("checkpoint"),
        "{retrying}"
    );
    cluster.start_again();

    // Back by itself, and following: live at the head with every event folded once.
    let deposit = json!({"type": "Deposit", "data": {"amount": 1000}});
    command(&client, &server, "a0", "a0-after", deposit).await;
    wait_for(&client, &server, live_at(124)).await;
    let (status, body) = json(
        client
            .get(server.url("/projections/bank-analytics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let state = &body["state"];
    let deposits: u64 = state["deposits_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|day| day["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        (
            state["open_accounts"].clone(),
            state["total_balance"].clone(),
            deposits
        ),
        (json!(3), json!(3 * 820 + 1000), 121),
        "{state}"
    );
}
