//! Unauthenticated clients cannot exhaust a real `foldhost serve`: overflowing numbers, huge
//! pages, made-up aggregates, live-feed floods and write floods are refused or bounded, and the
//! process's memory and thread count stay put (read from /proc).

use crate::serve;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, Server, Usage, json, metric};

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

/// Posts `body` as it is, valid JSON or not.
async fn post_text(
    client: &Client,
    server: &Server,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    json(
        client
            .post(server.url(path))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Whether the server has answered or closed `connection` (peeked, nothing read).
fn answered(connection: &TcpStream) -> bool {
    connection.set_nonblocking(true).unwrap();
    let peeked = connection.peek(&mut [0; 1]);
    connection.set_nonblocking(false).unwrap();
    match peeked {
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(error) => panic!("the stalled connection failed: {error}"),
    }
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
    let (status, body) = post_text(&client, &server, "/streams/s/events", body).await;
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
        "GET /events/live HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 18446744073709551614\r\n\r\n",
    );
    assert!(status.contains(" 200 "), "{status}");

    // A declared body length past any limit is refused before a byte of it is read.
    let status = raw_status_line(
        &server,
        "POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18446744073709551615\r\n\r\n{",
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
async fn a_page_that_starts_with_small_events_stays_within_its_bound_when_large_ones_follow() {
    const PAGE_BYTES: usize = 16 << 20;
    const LARGE: usize = 35;
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    // One tiny event, then ~35 MB of events just under the 1 MiB event limit: a read sized
    // by the tiny event's weight would take them all into one page.
    let tiny = json!({"events": [{"type": "Tiny", "data": {}}]});
    let (status, answer) = post(&client, &server, "/streams/mixed/events", tiny).await;
    assert_eq!(status, 200, "{answer}");
    append_heavy(&client, &server, "mixed", LARGE, 1_000_000).await;
    let total = (LARGE + 1) as u64;

    // (the path of a page but for where it starts, the field that counts)
    let reads = [
        ("/streams/mixed/events?limit=10000&from_version=", "version"),
        ("/events?limit=10000&from_position=", "position"),
    ];
    for (path, key) in reads {
        let (mut seen, mut from, mut pages) = (Vec::new(), 1, 0);
        loop {
            let response = client
                .get(server.url(&format!("{path}{from}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.bytes().await.unwrap();
            // The page's bound, plus one event's slack.
            assert!(
                body.len() <= PAGE_BYTES + (1 << 20),
                "{path}{from}: a page of {} bytes",
                body.len()
            );
            let page: Vec<Value> = serde_json::from_slice(&body).unwrap();
            let Some(last) = page.last() else { break };
            from = last[key].as_u64().unwrap() + 1;
            seen.extend(page.iter().map(|e| e[key].as_u64().unwrap()));
            pages += 1;
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "{key}s read");
        assert!(pages >= 3, "{key}: {pages} pages hold ~35 MB");
    }

    // A live feed (1 MiB buffer) still delivers every event once, in order.
    let response = client.get(server.url("/events/live")).send().await.unwrap();
    let mut feed = serve::SseReader::new(response);
    for position in 1..=total {
        let event = feed.next().await.unwrap();
        assert_eq!(event["position"], position);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_aggregates_keep_within_the_cache_budget() {
    const BUDGET_MIB: u64 = 8;
    const ACCOUNTS: usize = 3000;
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    command.args(["--aggregate-cache", &format!("{BUDGET_MIB}MiB")]);
    let server = Server::launch(command);
    let client = Client::new();
    let open = |i: usize| {
        let (client, url) = (
            client.clone(),
            server.url(&format!("/aggregates/bank-account/acct-{i}/commands")),
        );
        tokio::spawn(async move {
            let body = json!({"type": "Open", "data": {"owner": "O"}});
            json(client.post(url).json(&body).send().await.unwrap()).await
        })
    };
    // Warm up: the plugin's code, the pools and the projection are in place.
    for i in 0..50 {
        assert_eq!(open(i).await.unwrap().0, 200);
    }
    let before = server.usage();
    // Eight at a time; each would keep a live state of ~60 KiB resident if none were dropped.
    for start in (50..ACCOUNTS).step_by(8) {
        let batch: Vec<_> = (start..(start + 8).min(ACCOUNTS)).map(open).collect();
        for opened in batch {
            let (status, body) = opened.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    // The budget plus what the journal, the projection and the allocator keep.
    assert_bounded(before, server.usage(), BUDGET_MIB + 32, 16);
    let metrics = server.metrics(&client).await;
    let cached: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("foldhost_aggregate_cache_bytes "))
        .unwrap_or_else(|| panic!("no cache bytes in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // Only the states in use may stand beyond the budget.
    assert!(
        cached <= ((BUDGET_MIB + 2) << 20) as f64,
        "the cache counts {cached} bytes against a budget of {BUDGET_MIB} MiB"
    );
}

/// A client that asks for large pages on many connections and reads none of them holds at
/// most its share of the body budget: past it, its next large answer is refused (429), while
/// small ones still go out; once its connections close, large pages are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_responses_hold_at_most_the_clients_share_of_the_body_budget() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--body-budget-per-client", "20MiB"]);
    let server = Server::launch(command);
    let client = Client::new();
    append_heavy(&client, &server, "big-1", 16, 1_000_000).await;
    let page = "/streams/big-1/events?limit=16";
    let (status, events) = get(&client, &server, page).await;
    assert_eq!(status, 200);
    assert_eq!(events.as_array().unwrap().len(), 16);

    // Each page is ~16 MB: more than the socket buffers take, so an unread one stays held.
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let request = format!("GET {page} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();
    for stream in &stalled {
        while !answered(stream) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, refused) = get(&client, &server, page).await;
    let said: String = refused.to_string().chars().take(300).collect();
    assert_eq!(status, 429, "{said}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("cannot be held"),
        "{refused}"
    );
    assert_eq!(get(&client, &server, "/health").await.0, 200);

    drop(stalled);
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    loop {
        let (status, _) = get(&client, &server, page).await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_of_too_many_tiny_events_is_refused_before_they_are_all_parsed() {
    let dirs = Dirs::new();
    let server = Server::launch(Server::command(&dirs.data, None));
    let client = Client::new();
    let tiny = r#"{"type":"t","data":0}"#;
    let count = 7_800_000 / (tiny.len() + 1);
    let body = format!(r#"{{"events":[{}]}}"#, vec![tiny; count].join(","));
    let (status, _) = post(
        &client,
        &server,
        "/streams/s/events",
        json!({"events": [{"type": "t", "data": 0}]}),
    )
    .await;
    assert_eq!(status, 200);

    let before = server.usage();
    let (status, refused) = post_text(&client, &server, "/streams/s/events", body).await;
    assert_eq!(status, 413, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "append of {count} events exceeds the limit of 10000"
        )),
        "{error}"
    );
    // Parsed whole, the ~340,000 events took ~11× the body's 7.8 MB.
    let after = server.usage();
    let grew_mib = (after.peak_rss_kib - before.peak_rss_kib) / 1024;
    eprintln!("peak RSS {before:?} -> {after:?}: +{grew_mib} MiB");
    assert!(
        grew_mib < 40,
        "parsing the refused append took {grew_mib} MiB"
    );
    let (status, events) = get(&client, &server, "/streams/s/events").await;
    assert_eq!((status, events.as_array().unwrap().len()), (200, 1));
}

/// Appends `count` events of about `size` bytes each to `stream`, 7 per request.
async fn append_heavy(client: &Client, server: &Server, stream: &str, count: usize, size: usize) {
    let data = "d".repeat(size);
    for chunk in (0..count).collect::<Vec<_>>().chunks(7) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "Heavy", "data": {"i": i, "pad": data}}))
            .collect();
        let path = format!("/streams/{stream}/events");
        let (status, answer) = post(client, server, &path, json!({"events": events})).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// Reads what a stalled client was sent until the server closes the connection; returns the
/// id of the last complete SSE event in it.
fn drain_until_closed(mut stream: TcpStream) -> u64 {
    stream.set_read_timeout(Some(serve::PATIENCE)).unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("the server never closed the stalled feed: {error}"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    let complete = &text[..text.rfind("\n\n").expect("no complete event")];
    complete
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("no event id")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_are_capped_and_clients_that_stop_reading_are_cut_off() {
    const FEEDS: usize = 12;
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    // Every feed comes from 127.0.0.1: no per-client share, the host-wide cap is tested.
    command.args(["--max-live-feeds", &FEEDS.to_string()]);
    command.args(["--live-feeds-per-client", "0"]);
    command.args(["--live-buffer-bytes", "262144"]);
    command.args(["--write-stall-timeout", "8"]);
    let server = Server::launch(command);
    let client = Client::new();
    // ~48 MB of history: far more than a stalled feed may hold or the sockets can buffer.
    append_heavy(&client, &server, "history", 60, 800_000).await;
    let before = server.usage();

    // Clients that ask for the whole log and then never read a byte.
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let stalled: Vec<TcpStream> = (0..FEEDS)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /events/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    while open_feeds(&client, &server).await < FEEDS as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the feeds did not open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One feed more than the cap is refused, with a time to come back.
    let refused = client.get(server.url("/events/live")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let (_, body) = json(refused).await;
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("too many live feeds"), "{error}");

    // The server cuts each stalled client off (without a byte read by any of them); until
    // then each holds its read-ahead and the server's write buffer, not the log.
    let mut holding = server.usage();
    while open_feeds(&client, &server).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled feeds stay open"
        );
        let now = server.usage();
        if now.rss_kib > holding.rss_kib {
            holding = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each can resume from its last complete event.
    let resume_points: Vec<u64> =
        tokio::task::spawn_blocking(move || stalled.into_iter().map(drain_until_closed).collect())
            .await
            .unwrap();
    let last = *resume_points.iter().max().unwrap();
    assert!(last < 60, "a stalled client was sent the whole log");
    let response = client
        .get(server.url("/events/live"))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let mut feed = serve::SseReader::new(response);
    assert_eq!(feed.next().await.unwrap()["position"], last + 1);
    drop(feed);

    // Every slot is free again.
    let mut feeds = Vec::new();
    while feeds.len() < FEEDS {
        assert!(
            std::time::Instant::now() < deadline,
            "the slots were not freed"
        );
        let response = client
            .get(server.url("/events/live?from_position=60"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            feeds.push(response);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(feeds);
    assert_bounded(before, holding, 96, 24);
    assert_bounded(before, server.usage(), 96, 24);
}

/// The `foldhost_live_feeds` gauge of `/metrics`.
async fn open_feeds(client: &Client, server: &Server) -> u64 {
    let text = server.metrics(client).await;
    let line = text
        .lines()
        .find(|line| line.starts_with("foldhost_live_feeds "))
        .unwrap_or_else(|| panic!("no foldhost_live_feeds in {text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens `GET /events/live?from_position=` from `client`; the response, whatever its status.
async fn open_feed(client: &Client, server: &Server, from: u64) -> reqwest::Response {
    let path = format!("/events/live?from_position={from}");
    client.get(server.url(&path)).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_its_share_of_the_live_feeds_and_others_still_get_in() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--max-live-feeds", "16", "--live-feeds-per-client", "2"]);
    let server = Server::launch(command);
    let client = client_without_reuse(None);
    let event = json!({"events": [{"type": "T", "data": {}}]});
    assert_eq!(
        post(&client, &server, "/streams/s/events", event.clone())
            .await
            .0,
        200
    );

    // Two feeds from 127.0.0.1 waiting past the head: before, such feeds (1,024 of them, a
    // keep-alive every 15 s, never cut off as stalled) left every other client 503.
    let mut first = serve::SseReader::new(open_feed(&client, &server, 2).await);
    let mut second = serve::SseReader::new(open_feed(&client, &server, 2).await);
    // Its third is refused with a time to come back, though the server has room.
    let refused = open_feed(&client, &server, 2).await;
    // Checked before its body is read: a feed's body never ends.
    assert_eq!(
        refused.status(),
        429,
        "a third feed of one client was let in"
    );
    assert_eq!(refused.headers()["retry-after"], "5");
    let (_, answer) = json(refused).await;
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1") && error.contains("2 live feeds open"),
        "{error}"
    );
    // A client from another address still gets in.
    let other = client_without_reuse(Some([127, 0, 0, 2]));
    let mut others = serve::SseReader::new(open_feed(&other, &server, 2).await);
    let metrics = server.metrics(&client).await;
    assert_eq!(metric(&metrics, "foldhost_live_feeds_per_client"), 2.0);
    assert_eq!(
        metric(&metrics, "foldhost_live_feeds_held_by_one_client_max"),
        2.0
    );
    assert_eq!(metric(&metrics, "foldhost_live_feeds"), 3.0);

    // The refusal cost the client's feeds nothing: each delivers the next event.
    assert_eq!(
        post(&client, &server, "/streams/s/events", event.clone())
            .await
            .0,
        200
    );
    for feed in [&mut first, &mut second, &mut others] {
        assert_eq!(feed.next().await.unwrap()["position"], 2);
    }

    // Once one of its feeds is closed, its client may open another.
    drop(first);
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    let mut third = loop {
        let response = open_feed(&client, &server, 3).await;
        if response.status() == 200 {
            break serve::SseReader::new(response);
        }
        assert_eq!(response.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the closed feed's place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        post(&client, &server, "/streams/s/events", event).await.0,
        200
    );
    assert_eq!(third.next().await.unwrap()["position"], 3);
    assert_eq!(second.next().await.unwrap()["position"], 3);
}

/// Sends `count` requests at once; returns each one's status and `Retry-After`.
async fn flood(
    client: &Client,
    server: &Server,
    count: usize,
    request: impl Fn(usize) -> (String, Value),
) -> Vec<(u16, Option<String>)> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (path, body) = request(i);
            let send = client.post(server.url(&path)).json(&body).send();
            tokio::spawn(async move {
                let response = send.await.unwrap();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned());
                (response.status().as_u16(), retry)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_with_retry_after_for_appends_and_commands() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    command.args(["--max-queued-writes", "1"]);
    let server = Server::launch(command);
    let client = Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let before = server.usage();

    let ids: Vec<uuid::Uuid> = (0..400).map(|_| uuid::Uuid::new_v4()).collect();
    let append = |i: usize| {
        let body = json!({"events": [{"id": ids[i], "type": "Flooded", "data": {"i": i}}]});
        (format!("/streams/flood-{}/events", i % 16), body)
    };
    let outcomes = flood(&client, &server, ids.len(), append).await;
    let refused: Vec<usize> = (0..ids.len()).filter(|&i| outcomes[i].0 == 503).collect();
    for (status, retry) in &outcomes {
        assert!(*status == 200 || *status == 503, "status {status}");
        assert_eq!(retry.is_some(), *status == 503);
    }
    assert!(
        !refused.is_empty(),
        "400 concurrent appends never filled a queue of 1"
    );
    // A refused append was never queued: it is not in the log, and retrying it lands it.
    let logged = serve::all_events(&client, &server).await;
    assert_eq!(logged.len(), ids.len() - refused.len());
    for &i in &refused {
        assert!(!logged.iter().any(|e| e["id"] == json!(ids[i])));
        let (path, body) = append(i);
        let (status, answer) = post(&client, &server, &path, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(serve::all_events(&client, &server).await.len(), ids.len());

    let open = |i: usize| {
        let body = json!({"type": "Open", "data": {"owner": format!("o{i}")}});
        (format!("/aggregates/bank-account/flood-{i}/commands"), body)
    };
    let outcomes = flood(&client, &server, 300, open).await;
    for (status, retry) in &outcomes {
        assert!(*status == 200 || *status == 503, "status {status}");
        assert_eq!(retry.as_deref(), (*status == 503).then_some("1"));
    }
    let opened = outcomes.iter().filter(|(status, _)| *status == 200).count();
    assert!(
        opened < 300,
        "300 concurrent commands never filled a queue of 1"
    );
    assert_eq!(
        serve::all_events(&client, &server).await.len(),
        ids.len() + opened
    );
    // The blocking threads those commands ran on are let go once idle (tokio: 10 s).
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    while server.usage().threads > before.threads + 16 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_bounded(before, server.usage(), 96, 16);
}

/// Reads `stream` until the server closes it (end of file or reset) and returns what it was
/// sent; panics if the server keeps it open for [`serve::PATIENCE`].
fn read_until_closed(mut stream: TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(serve::PATIENCE)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("the server kept the connection open: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_request_are_closed_live_feeds_are_not() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--read-timeout", "1"]);
    let server = Server::launch(command);
    let client = Client::new();
    let feed = client.get(server.url("/events/live")).send().await.unwrap();
    let mut feed = serve::SseReader::new(feed);

    // A client that connects and says nothing, one that sends half a request's headers, and
    // one that keeps its connection open after a response: each used to hold a task and a
    // file descriptor for as long as it liked (enough of them and nobody could connect).
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let silent = TcpStream::connect(&address).unwrap();
    let mut trickling = TcpStream::connect(&address).unwrap();
    trickling
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let [silent, _, idle] =
        tokio::task::spawn_blocking(move || [silent, trickling, idle].map(read_until_closed))
            .await
            .unwrap();
    assert!(silent.is_empty());
    let idle = String::from_utf8_lossy(&idle);
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");

    // A live feed sends no request either while it waits for events: it stays open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = json!({"events": [{"type": "T", "data": {}}]});
    let (status, answer) = post(&client, &server, "/streams/s/events", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(feed.next().await.unwrap()["stream"], "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_stall_are_refused_and_all_bodies_share_one_budget() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--read-timeout", "3", "--body-budget", "1MiB"]);
    // The host-wide budget alone, every body here coming from one address.
    command.args(["--body-budget-per-client", "0"]);
    let server = Server::launch(command);
    // No pooled connections: the server closes one idle for the 3 s read timeout, which the
    // wait for the stalled body below takes, and a request sent on it as it closes fails.
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();

    // A client sends 600 KiB of a 700 KiB body and waits: it used to hold that memory for as
    // long as it kept the connection, and enough of them exhausted the host.
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let stall = || {
        let mut stalled = TcpStream::connect(&address).unwrap();
        stalled
            .write_all(
                b"POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 716800\r\n\r\n",
            )
            .unwrap();
        stalled.write_all(&[b' '; 600 << 10]).unwrap();
        stalled
    };
    let mut stalled = stall();

    // While it holds 600 KiB of the 1 MiB budget, another such body is refused at once
    // (before the server has read the first, the second is read and fails as JSON: retry; if
    // the second was read first, the first got the 503: stall again).
    let spaces = " ".repeat(600 << 10);
    let mut attempts = 0;
    let refused = loop {
        if answered(&stalled) {
            stalled = stall();
        }
        let response = client
            .post(server.url("/streams/t/events"))
            .body(spaces.clone())
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, answer) = json(response).await;
        if status == 503 {
            assert_eq!(retry_after.unwrap(), "1");
            break answer;
        }
        assert_eq!(status, 400, "{answer}");
        attempts += 1;
        assert!(attempts < 100, "the second body was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused["error"].as_str().unwrap().contains("budget"),
        "{refused}"
    );
    // `/metrics` shows the stalled body's bytes held (more than the 503 left room for), of the
    // budget.
    let metrics = server.metrics(&client).await;
    assert_eq!(metric(&metrics, "foldhost_body_budget_bytes"), 1048576.0);
    let held = metric(&metrics, "foldhost_body_bytes_held");
    assert!((424.0 * 1024.0..=700.0 * 1024.0).contains(&held), "{held}");
    // A small body fits in what is left.
    let body = json!({"events": [{"type": "T", "data": {}}]});
    let (status, answer) = post(&client, &server, "/streams/u/events", body.clone()).await;
    assert_eq!(status, 200, "{answer}");

    // The stalled body is refused once nothing of it has arrived for the read timeout, and its
    // bytes go back to the budget.
    let answer = tokio::task::spawn_blocking(move || read_until_closed(stalled))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("nothing of it arrived for 3 s"), "{answer}");
    let (status, answer) = json(
        client
            .post(server.url("/streams/t/events"))
            .body(spaces)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("invalid JSON"),
        "{answer}"
    );
    let metrics = server.metrics(&client).await;
    assert_eq!(
        metric(&metrics, "foldhost_body_bytes_held"),
        0.0,
        "all given back"
    );
    // A body larger than the whole budget could never fit: 413, not a 503 to retry for ever.
    let response = client
        .post(server.url("/streams/t/events"))
        .body(" ".repeat(1100 << 10))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("retry-after").is_none());
    let (status, answer) = json(response).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("larger than"),
        "{answer}"
    );
    // Nothing of the stalled request was stored.
    let (status, stream) = get(&client, &server, "/streams/s/events").await;
    assert_eq!(status, 404, "{stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_trickle_below_the_minimum_rate_are_refused_and_give_back_their_budget() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--read-timeout", "3", "--body-min-rate", "128KiB"]);
    command.args(["--body-budget", "1MiB", "--body-budget-per-client", "0"]);
    let server = Server::launch(command);
    let client = Client::new();

    // A client sends 512 KiB of a body at once, then a byte every half second: it never stalls
    // for the read timeout, so it used to hold its 512 KiB for as long as it kept trickling
    // (200 s here). At 128 KiB/s its bytes are used up 4 s after the server began reading.
    const TRICKLE: usize = 400;
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let mut trickler = TcpStream::connect(&address).unwrap();
    write!(
        trickler,
        "POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        (512 << 10) + TRICKLE
    )
    .unwrap();
    trickler.write_all(&[b' '; 512 << 10]).unwrap();
    let trickling = tokio::task::spawn_blocking(move || {
        // Waits half a second for an answer before each byte.
        trickler
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut sent = 0;
        while sent < TRICKLE {
            match trickler.peek(&mut [0]) {
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) && trickler.write_all(b" ").is_ok() =>
                {
                    sent += 1
                }
                _ => break,
            }
        }
        (sent, read_until_closed(trickler))
    });

    // Its 512 KiB held first: a 600 KiB body sent before then could take the budget and get
    // the trickler refused instead (seen under load).
    held_at_least(&client, &server, 512 << 10, "the trickler's").await;
    // While it holds 512 KiB of the 1 MiB budget, a 600 KiB body is refused (before the server
    // has read the trickler's bytes it is read and fails as JSON: retry).
    let spaces = " ".repeat(600 << 10);
    let mut attempts = 0;
    loop {
        let response = client.post(server.url("/streams/t/events"));
        let (status, answer) = json(response.body(spaces.clone()).send().await.unwrap()).await;
        if status == 503 {
            break;
        }
        assert_eq!(status, 400, "{answer}");
        attempts += 1;
        assert!(attempts < 100, "the trickler's body never held the budget");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the trickler is cut off, its bytes go back to the budget and such a body gets in.
    let append = padded_append(600 << 10);
    let trickler = "the trickler";
    append_once_the_budget_frees(&client, &server, &append, (503, 60), trickler).await;
    let (sent, answer) = trickling.await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("the trickler sent {sent} bytes one at a time before it was cut off: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("slower than the server's minimum of 131072 bytes/s"),
        "{answer}"
    );
    assert!(sent < TRICKLE, "the trickler finished its body: {answer}");

    // A body that arrives slowly for longer than the read timeout, but above the rate, is
    // taken: 300 KiB at once, then 50 KiB every half second (200 KiB/s on average over 3 s).
    let mut slow = TcpStream::connect(&address).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        write!(
            slow,
            "POST /streams/u/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            append.len()
        )
        .unwrap();
        let (first, rest) = append.as_bytes().split_at(300 << 10);
        slow.write_all(first).unwrap();
        for chunk in rest.chunks(50 << 10) {
            std::thread::sleep(Duration::from_millis(500));
            slow.write_all(chunk).unwrap();
        }
        slow.set_read_timeout(Some(serve::PATIENCE)).unwrap();
        let mut answer = [0; 12];
        slow.read_exact(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    // A body that falls below the rate while its client waits is refused then, not at its next
    // chunk or its stall: 512 KiB at once, a byte 2 s later, then nothing (the average falls
    // below 128 KiB/s 4 s after the first read; a stall would be 5 s after it).
    let mut waiting = TcpStream::connect(&address).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        write!(
            waiting,
            "POST /streams/v/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            (512 << 10) + 2
        )
        .unwrap();
        waiting.write_all(&[b' '; 512 << 10]).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        waiting.write_all(b" ").unwrap();
        read_until_closed(waiting)
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("slower than the server's minimum"),
        "{answer}"
    );

    // Nothing of the refused requests was stored.
    for refused in ["s", "v"] {
        let (status, stream) = get(&client, &server, &format!("/streams/{refused}/events")).await;
        assert_eq!(status, 404, "{stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_from_a_slow_link_is_taken_at_the_default_minimum_rate() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    // The default --body-min-rate, counted from 3 s after the first read instead of 60 s.
    command.env_remove("FOLDHOST_BODY_MIN_RATE");
    command.args(["--read-timeout", "3"]);
    let server = Server::launch(command);

    // 160 KiB at 16 KiB/s (128 kbit/s: a weak mobile uplink, or a plugin upload sharing a
    // slow link with others) for 10 s, well past the read timeout (64 KiB/s refused it).
    let append = padded_append(160 << 10);
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(&address).unwrap();
        write!(
            slow,
            "POST /streams/slow/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            append.len()
        )
        .unwrap();
        for chunk in append.as_bytes().chunks(8 << 10) {
            // A refusal closes the connection: then read it.
            if slow.write_all(chunk).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        read_until_closed(slow)
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_gives_its_budget_back_at_once() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--read-timeout", "30", "--body-budget", "1MiB"]);
    command.args(["--body-budget-per-client", "0"]);
    let server = Server::launch(command);
    let client = Client::new();
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let spaces = " ".repeat(600 << 10);
    let append = padded_append(600 << 10);

    // One client closes its connection, the other resets it, each 600 KiB into a 900 KiB body.
    for reset in [false, true] {
        // Once the server holds its 600 KiB, another 600 KiB body is refused (one read before
        // them may get the leaving body refused instead: then it comes again).
        let mut attempts = 0;
        let leaving = loop {
            let leaving = TcpStream::connect(&address).unwrap();
            let mut writer = &leaving;
            write!(
                writer,
                "POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
                900 << 10
            )
            .unwrap();
            writer.write_all(spaces.as_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let response = client.post(server.url("/streams/t/events"));
            let (status, answer) = json(response.body(spaces.clone()).send().await.unwrap()).await;
            if status == 503 {
                break leaving;
            }
            assert_eq!(status, 400, "{answer}");
            attempts += 1;
            assert!(attempts < 20, "the leaving body never held the budget");
        };
        if reset {
            leaving.set_nonblocking(true).unwrap();
            let leaving = tokio::net::TcpStream::from_std(leaving).unwrap();
            leaving.set_zero_linger().unwrap();
        } else {
            drop(leaving);
        }
        // Its share comes back when it leaves, not at the read timeout (30 s).
        let holder = format!("a client that left (reset: {reset})");
        append_once_the_budget_frees(&client, &server, &append, (503, 40), &holder).await;
    }
}

/// Opens a connection to `server` that sends `sent` bytes of a `length`-byte append to stream
/// `s`, and then nothing: its body holds `sent` bytes once the server has read them.
fn hold_body(server: &Server, sent: usize, length: usize) -> TcpStream {
    let address = server.url.strip_prefix("http://").unwrap();
    let mut holder = TcpStream::connect(address).unwrap();
    write!(
        holder,
        "POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    holder.write_all(&vec![b' '; sent]).unwrap();
    holder
}

/// Waits until request bodies hold at least `bytes` (`foldhost_body_bytes_held`), e.g. those
/// of `whose` held bodies, before a test sends a body that must find them held.
async fn held_at_least(client: &Client, server: &Server, bytes: usize, whose: &str) {
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    while metric(&server.metrics(client).await, "foldhost_body_bytes_held") < bytes as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{whose} {bytes} bytes were never held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `body` (not JSON) to stream `t` until it is refused rather than read (a body the
/// server reads before the held ones fails as JSON: retry, calling `again` first), at most 100
/// times; returns the refusal's status, `Retry-After` and answer.
async fn refused_while_held(
    client: &Client,
    server: &Server,
    body: &str,
    mut again: impl FnMut(),
) -> (u16, Option<String>, Value) {
    for _ in 0..100 {
        let response = client.post(server.url("/streams/t/events"));
        let response = response.body(body.to_owned()).send().await.unwrap();
        let retry_after =
            (response.headers().get("retry-after")).map(|value| value.to_str().unwrap().to_owned());
        let (status, answer) = json(response).await;
        if status != 400 {
            return (status, retry_after, answer);
        }
        again();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the body was never refused while the others were held");
}

/// A client that opens a connection per request (a refusal closes its connection, which a
/// pooled one could be reused just before), from `address` if given (all of 127/8 is
/// loopback).
fn client_without_reuse(address: Option<[u8; 4]>) -> Client {
    let builder = Client::builder().pool_max_idle_per_host(0);
    let address = address.map(std::net::IpAddr::from);
    builder.local_address(address).build().unwrap()
}

/// An append of one event padded with spaces to `bytes`.
fn padded_append(bytes: usize) -> String {
    let mut append = json!({"events": [{"type": "T", "data": {}}]}).to_string();
    append.push_str(&" ".repeat(bytes - append.len()));
    append
}

/// `foldhost serve` with `--read-timeout` seconds and a 4 MiB body budget of which one address
/// may hold 1 MiB, and a client of it from 127.0.0.1.
fn serve_with_shares(dirs: &Dirs, read_timeout: &str) -> (Server, Client) {
    let mut command = Server::command(&dirs.data, None);
    command.args(["--read-timeout", read_timeout, "--body-budget", "4MiB"]);
    command.args(["--body-budget-per-client", "1MiB"]);
    (Server::launch(command), client_without_reuse(None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_its_share_of_the_body_budget_and_others_still_get_in() {
    let dirs = Dirs::new();
    let (server, client) = serve_with_shares(&dirs, "30");

    // Two connections from 127.0.0.1 send 400 KiB of a 500 KiB body each and wait: 800 KiB
    // of its 1 MiB share. Such clients, 32 of them at 8 MiB, used to hold the whole budget.
    let holders = [0; 2].map(|_| hold_body(&server, 400 << 10, 500 << 10));
    // Both held first: a body read before them could take the share and get one refused.
    held_at_least(&client, &server, 800 << 10, "the two holders'").await;
    let (status, retry_after, answer) =
        refused_while_held(&client, &server, &" ".repeat(300 << 10), || {}).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (429, Some("1")),
        "{answer}"
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1") && error.contains("share of 1048576 bytes"),
        "{error}"
    );
    // A client from another address is not affected: its 600 KiB body is taken.
    let other = client_without_reuse(Some([127, 0, 0, 2]));
    let response = other.post(server.url("/streams/u/events"));
    let append = padded_append(600 << 10);
    let (status, answer) = json(response.body(append.clone()).send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    // A body larger than the whole share could never be taken: 413, not a 429 to retry.
    let response = other.post(server.url("/streams/u/events"));
    let (status, answer) = json(response.body(" ".repeat(1100 << 10)).send().await.unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("one client may hold"),
        "{answer}"
    );
    // `/metrics` shows the most one client holds (the two held bodies: more than the 429
    // left room for; the refused one holds nothing), of its share.
    let metrics = server.metrics(&client).await;
    let share = metric(&metrics, "foldhost_body_budget_per_client_bytes");
    assert_eq!(share, 1048576.0);
    let most = metric(&metrics, "foldhost_body_bytes_held_by_one_client_max");
    assert!((724.0 * 1024.0..=800.0 * 1024.0).contains(&most), "{most}");

    // One holder leaves: its 400 KiB go back to its client's share, and 600 KiB more fit.
    let [leaving, staying] = holders;
    drop(leaving);
    let holder = "a client that left";
    append_once_the_budget_frees(&client, &server, &append, (429, 40), holder).await;
    drop(staying);
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    loop {
        let metrics = server.metrics(&client).await;
        let held = metric(&metrics, "foldhost_body_bytes_held");
        let most = metric(&metrics, "foldhost_body_bytes_held_by_one_client_max");
        if (held, most) == (0.0, 0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still held after the clients left: {held} bytes, {most} by one client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_body_that_is_refused_gives_its_clients_share_back() {
    let dirs = Dirs::new();
    let (server, client) = serve_with_shares(&dirs, "3");

    // 800 KiB of a 900 KiB body, then nothing: refused (408) once it has stalled for 3 s.
    let stall = || hold_body(&server, 800 << 10, 900 << 10);
    let mut stalled = stall();
    // Meanwhile 300 KiB more from its address are refused (if the stalled body was refused
    // before the server read this one, stall again).
    let (status, _, answer) = refused_while_held(&client, &server, &" ".repeat(300 << 10), || {
        if answered(&stalled) {
            stalled = stall();
        }
    })
    .await;
    assert_eq!(status, 429, "{answer}");
    let answer = tokio::task::spawn_blocking(move || read_until_closed(stalled))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Its 800 KiB went back to the client's share with the refusal: 600 KiB fit again.
    let append = padded_append(600 << 10);
    let holder = "a refused body";
    append_once_the_budget_frees(&client, &server, &append, (429, 40), holder).await;
}

/// Appends `body` to stream `t`, retrying every 250 ms while the body budget refuses it with
/// `refusal` (503 for the host's budget, 429 for the client's share), at most `tries` times:
/// `holder` must give its share back by then.
async fn append_once_the_budget_frees(
    client: &Client,
    server: &Server,
    body: &str,
    (refusal, tries): (u16, u32),
    holder: &str,
) {
    for _ in 0..tries {
        let response = client.post(server.url("/streams/t/events"));
        let (status, answer) = json(response.body(body.to_owned()).send().await.unwrap()).await;
        if status == 200 {
            return;
        }
        assert_eq!(status, refusal, "{answer}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{holder} still holds the budget after {} s",
        f64::from(tries) / 4.0
    );
}

/// Whether `GET /plugins` lists `origin` as being compiled.
async fn compiling(client: &Client, server: &Server, origin: &str) -> bool {
    let (status, list) = get(client, server, "/plugins").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .any(|row| row["origin"] == origin && row["status"]["status"] == "compiling")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_left_holds_its_body_budget_until_its_compile_ends() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--admin-token", "secret", "--body-budget", "24MiB"]);
    command.args(["--body-budget-per-client", "0"]);
    let server = Server::launch(command);
    let client = Client::new();
    // An 18 MB Python component: with no compiled cache, seconds of compiling.
    let component = std::fs::read(foldhost_plugins::path(
        foldhost_plugins::BANK_ACCOUNT_PYTHON,
    ))
    .unwrap();
    let origin = "bank-account-python";
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let mut upload = TcpStream::connect(&address).unwrap();
    write!(
        upload,
        "PUT /plugins/{origin} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer secret\r\n\
         Content-Length: {}\r\n\r\n",
        component.len()
    )
    .unwrap();
    upload.write_all(&component).unwrap();
    let deadline = std::time::Instant::now() + serve::PATIENCE;
    while !compiling(&client, &server, origin).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never compiled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client leaves; the server drops its request but the compile goes on with a copy.
    drop(upload);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 7 MiB more would take the bodies held past 24 MiB while the compile holds the upload's.
    let spaces = " ".repeat(7 << 20);
    let send = || async {
        json(
            client
                .post(server.url("/streams/t/events"))
                .body(spaces.clone())
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (status, answer) = send().await;
    assert!(
        compiling(&client, &server, origin).await,
        "the compile ended before the test could see it hold the budget"
    );
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("budget"),
        "{answer}"
    );

    // Once the compile ends its share goes back (the body is then read, and is not JSON); the
    // plugin is not installed, its client having left.
    let deadline = std::time::Instant::now() + serve::LOADING_PATIENCE;
    while compiling(&client, &server, origin).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the compile never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = send().await;
    assert_eq!(status, 400, "{answer}");
    let (_, list) = get(&client, &server, "/plugins").await;
    assert_eq!(list, json!([]));
}

/// A body refused before it is read leaves the rest of it on its way: a client still sending
/// must get to read the refusal, not have it destroyed by the reset that closing a socket with
/// unread bytes makes.
#[test]
fn a_client_still_sending_a_refused_body_reads_the_refusal() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--body-budget", "1MiB"]);
    let server = Server::launch(command);
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let body = vec![b' '; 16 << 20];
    for attempt in 0..3 {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .write_all(
                b"POST /streams/s/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16777216\r\n\r\n",
            )
            .unwrap();
        if let Err(error) = stream.write_all(&body) {
            panic!("attempt {attempt}: the body was cut off: {error}");
        }
        let answer = read_until_closed(stream);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "attempt {attempt}: {answer:?}"
        );
    }
}
