//! `GET /events/live`: catching up and then following, while appends keep landing.

use crate::serve;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use reqwest::Client;
use serde_json::json;
use serve::{Dirs, Server, SseReader, all_events};
use uuid::Uuid;

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 60;

async fn append(client: &Client, server: &Server, stream: &str, id: Uuid) {
    let body = json!({"events": [{"id": id, "type": "Ticked", "data": {"n": 1}}]});
    let response = client
        .post(server.url(&format!("/streams/{stream}/events")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_switches_from_history_to_live_without_gap_or_duplicate() {
    let dirs = Dirs::new();
    let server = Arc::new(Server::start(&dirs, None));
    let client = Client::new();
    let appended = Arc::new(Mutex::new(HashSet::new()));
    for i in 0..100 {
        let id = Uuid::new_v4();
        append(&client, &server, &format!("history-{}", i % 7), id).await;
        appended.lock().unwrap().insert(id);
    }

    // Writers run before, during and after the feed's catch-up.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, server, appended) = (client.clone(), server.clone(), appended.clone());
            tokio::spawn(async move {
                for _ in 0..APPENDS_PER_WRITER {
                    let id = Uuid::new_v4();
                    append(&client, &server, &format!("writer-{w}"), id).await;
                    appended.lock().unwrap().insert(id);
                }
            })
        })
        .collect();
    let total = 100 + WRITERS * APPENDS_PER_WRITER;
    let response = client
        .get(server.url("/events/live?from_position=1"))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::new(response);
    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        let event = feed.next().await.expect("the feed ended early");
        seen.push(event);
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let positions: Vec<u64> = seen
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    let ids: HashSet<Uuid> = seen
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, *appended.lock().unwrap());
    // The feed is the log: same events, same order, same fields.
    assert_eq!(seen, all_events(&client, &server).await);

    // Still live: one more append arrives.
    let id = Uuid::new_v4();
    append(&client, &server, "late", id).await;
    let late = feed.next().await.unwrap();
    assert_eq!(
        (late["position"].as_u64(), late["id"].clone()),
        (Some(total as u64 + 1), json!(id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_after_last_event_id_and_ends_on_shutdown() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    for _ in 0..5 {
        append(&client, &server, "s", Uuid::new_v4()).await;
    }
    let from_three = client
        .get(server.url("/events/live?from_position=3"))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::new(from_three);
    assert_eq!(feed.next().await.unwrap()["position"], 3);

    let resumed = client
        .get(server.url("/events/live?from_position=1"))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let mut resumed = SseReader::new(resumed);
    assert_eq!(resumed.next().await.unwrap()["position"], 5);

    let bad = client
        .get(server.url("/events/live"))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = client
        .get(server.url("/events/live?from_position=first"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Graceful shutdown does not wait for open feeds: they end.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    while feed.next().await.is_some() {}
}
