//! Unauthenticated clients cannot exhaust a real `foldhost serve`: overflowing numbers, huge
//! pages, made-up aggregates, live-feed floods and write floods are refused or bounded, and the
//! process's memory and thread count stay put (read from /proc).

mod serve;

use std::io::{Read, Write};
use std::net::TcpStream;

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, Server, Usage, json};

async fn get(client: &Client, server: &Server, path: &str) -> (u16, Value) {
    json(client.get(server.url(path)).send().await.unwrap()).await
}

async fn post(client: &Client, server: &Server, path: &str, body: Value) -> (u16, Value) {
    json(
        client
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Sends `request` as is on a fresh connection and returns the response's status line.
fn raw_status_line(server: &Server, request: &str) -> String {
    let address = server.url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(serve::PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buffer = [0; 4096];
    while !response.windows(2).any(|w| w == b"\r\n") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the connection closed without a response");
        response.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap().to_owned()
}

/// Memory and threads after the work are within `slack_mib` and `slack_threads` of before.
fn assert_bounded(before: Usage, after: Usage, slack_mib: u64, slack_threads: u64) {
    eprintln!("before {before:?}, after {after:?}");
    assert!(
        after.rss_kib <= before.rss_kib + slack_mib * 1024,
        "RSS grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    assert!(
        after.threads <= before.threads + slack_threads,
        "threads grew from {} to {}",
        before.threads,
        after.threads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_that_overflow_are_refused_never_wrapped() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let (status, _) = post(
        &client,
        &server,
        "/streams/s/events",
        json!({"events": [{"type": "T", "data": {}}]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &client,
        &server,
        "/aggregates/bank-account/a/commands",
        json!({"type": "Open", "data": {"owner": "A"}}),
    )
    .await;
    assert_eq!(status, 200);
    let before = server.usage();

    for id in ["18446744073709551615", "18446744073709551616", "-1", "1e3"] {
        let response = client
            .get(server.url("/events/live"))
            .header("last-event-id", id)
            .send()
            .await
            .unwrap();
        // Checked before the body: a wrapped id would start an endless feed.
        assert_eq!(response.status(), 400, "Last-Event-ID {id}");
        let (_, body) = json(response).await;
        assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
    }
    for path in [
        "/events?from_position=18446744073709551616",
        "/events?from_position=-1",
        "/events?limit=18446744073709551616",
        "/streams/s/events?from_version=18446744073709551616",
        "/streams/s/events?limit=-1",
        "/events/live?from_position=18446744073709551616",
        "/aggregates/bank-account/a?at_version=18446744073709551616",
        "/aggregates/bank-account/a?at_version=-1",
    ] {
        let (status, body) = get(&client, &server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let body =
        r#"{"expected_version": 18446744073709551616, "events": [{"type": "T", "data": {}}]}"#;
    let response = client
        .post(server.url("/streams/s/events"))
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(status, 400, "{body}");

    // The largest values that fit are answered, not wrapped to the start of the log.
    let (status, page) = get(
        &client,
        &server,
        "/events?from_position=18446744073709551615",
    )
    .await;
    assert_eq!((status, page), (200, json!([])));
    let (status, state) = get(
        &client,
        &server,
        "/aggregates/bank-account/a?at_version=18446744073709551615",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(state["version"], 1);
    let status = raw_status_line(
        &server,
        "GET /events/live HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 18446744073709551614\r\n\r\n",
    );
    assert!(status.contains(" 200 "), "{status}");

    // A declared body length past any limit is refused before a byte of it is read.
    let status = raw_status_line(
        &server,
        "POST /streams/s/events HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n{",
    );
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");

    // Nothing was appended by any of it, and the server is unharmed.
    let (status, log) = get(&client, &server, "/events").await;
    assert_eq!(status, 200);
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_bounded(before, server.usage(), 64, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_counts_every_field_of_its_events_toward_its_size() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    // Events whose weight is all in their type and metadata, none in their data.
    let heavy_type = "T".repeat(500_000);
    let metadata = json!({"note": "m".repeat(400_000)});
    for _ in 0..4 {
        let events: Vec<Value> = (0..6)
            .map(|_| json!({"type": heavy_type, "data": {}, "metadata": metadata}))
            .collect();
        let (status, answer) = post(
            &client,
            &server,
            "/streams/heavy/events",
            json!({"events": events}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let before = server.usage();
    // 24 events of ~900 KB each: about 16 MiB fit in a page.
    for path in ["/events?limit=10000", "/streams/heavy/events?limit=10000"] {
        let (status, page) = get(&client, &server, path).await;
        assert_eq!(status, 200);
        let count = page.as_array().unwrap().len();
        assert!(
            (1..=19).contains(&count),
            "{path}: {count} events of ~900 KB in one page"
        );
    }
    // Paging on from the last event returns the rest.
    let all = serve::all_events(&client, &server).await;
    assert_eq!(all.len(), 24);
    assert_bounded(before, server.usage(), 256, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_aggregates_leave_nothing_behind() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    // Warm up: one real aggregate, so the plugin's code and the pools are in place.
    for i in 0..20 {
        let (status, _) = post(
            &client,
            &server,
            &format!("/aggregates/bank-account/real-{i}/commands"),
            json!({"type": "Open", "data": {"owner": "R"}}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = get(
            &client,
            &server,
            &format!("/aggregates/bank-account/real-{i}"),
        )
        .await;
        assert_eq!(status, 200);
    }
    let before = server.usage();
    for i in 0..1500 {
        let (status, body) = get(
            &client,
            &server,
            &format!("/aggregates/bank-account/ghost-{i}"),
        )
        .await;
        assert_eq!(status, 404, "{body}");
        // A command the plugin rejects on a stream that does not exist.
        let (status, body) = post(
            &client,
            &server,
            &format!("/aggregates/bank-account/phantom-{i}/commands"),
            json!({"type": "Deposit", "data": {"amount": 5}}),
        )
        .await;
        assert_eq!(status, 422, "{body}");
    }
    assert_bounded(before, server.usage(), 48, 16);
    let (_, log) = get(&client, &server, "/events").await;
    assert_eq!(log.as_array().unwrap().len(), 20);
}
