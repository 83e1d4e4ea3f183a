//! Stream lifecycles on a real `foldhost serve`: soft and hard deletes, retention metadata,
//! scavenging, what projections and live feeds see afterwards, and the right to be forgotten:
//! after a hard delete and a scavenge a customer's data is gone from the database's files,
//! on redb and on PostgreSQL.

use crate::pgcluster;
use crate::serve;

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, SseReader, all_events, json};

const TOKEN: &str = "lifecycle-admin-token";

async fn call(
    client: &Client,
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
    admin: bool,
) -> (u16, Value) {
    let mut request = client.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if admin {
        request = request.bearer_auth(TOKEN);
    }
    json(request.send().await.unwrap()).await
}

async fn append(client: &Client, server: &Server, stream: &str, expected: Value, data: Value) {
    let body = json!({"expected_version": expected, "events": [{"type": "Noted", "data": data}]});
    let path = format!("/streams/{stream}/events");
    let (status, body) = call(client, server, Method::POST, &path, Some(body), false).await;
    assert_eq!(status, 200, "{body}");
}

fn versions(events: &Value) -> Vec<u64> {
    let events = events
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {events}"));
    events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_deleted_and_truncated_over_http() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    for n in 0..3 {
        append(&client, &server, "order-1", json!("any"), json!({"n": n})).await;
    }
    let events = "/streams/order-1/events";

    // Soft delete: reads answer 404; an append recreates the stream and its versions go on.
    let (status, body) = call(
        &client,
        &server,
        Method::DELETE,
        "/streams/order-1?expected_version=2",
        None,
        false,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["current_version"], 3);
    assert_eq!(
        body["error"],
        "wrong expected version for stream \"order-1\": expected 2, current 3"
    );
    let (status, body) = call(
        &client,
        &server,
        Method::DELETE,
        "/streams/order-1",
        None,
        false,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"stream": "order-1", "hard": false}))
    );
    let (status, body) = call(&client, &server, Method::GET, events, None, false).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(
        &client,
        &server,
        Method::DELETE,
        "/streams/order-1",
        None,
        false,
    )
    .await;
    assert_eq!(status, 404);
    append(
        &client,
        &server,
        "order-1",
        json!("no_stream"),
        json!({"n": 3}),
    )
    .await;
    let (status, body) = call(&client, &server, Method::GET, events, None, false).await;
    assert_eq!((status, versions(&body)), (200, vec![4]), "{body}");

    // Retention metadata. New rules never show what the soft delete hid (a scavenge may have
    // removed it already): its `truncate_before` stays.
    let metadata = "/streams/order-1/metadata";
    let (status, body) = call(&client, &server, Method::GET, metadata, None, false).await;
    assert_eq!((status, body), (200, json!({"truncate_before": 4})));
    for lower in [json!({}), json!({"truncate_before": 1})] {
        let (status, body) =
            call(&client, &server, Method::PUT, metadata, Some(lower), false).await;
        assert_eq!((status, body), (200, json!({"truncate_before": 4})));
    }
    let (_, body) = call(&client, &server, Method::GET, events, None, false).await;
    assert_eq!(versions(&body), [4]);
    let logged: Vec<_> = all_events(&client, &server)
        .await
        .into_iter()
        .filter(|event| event["stream"] == "order-1")
        .collect();
    assert_eq!(versions(&json!(logged)), [4]);
    for n in 4..8 {
        append(&client, &server, "order-1", json!("any"), json!({"n": n})).await;
    }
    let rules = json!({"max_count": 2});
    let (status, body) = call(&client, &server, Method::PUT, metadata, Some(rules), false).await;
    let stored = json!({"max_count": 2, "truncate_before": 4});
    assert_eq!((status, body), (200, stored.clone()));
    let (_, body) = call(&client, &server, Method::GET, metadata, None, false).await;
    assert_eq!(body, stored);
    let (_, body) = call(&client, &server, Method::GET, events, None, false).await;
    assert_eq!(versions(&body), [7, 8]);
    for bad in [
        json!({"max_count": -1}),
        json!({"max_count": 0}),
        json!({"max_age": 0}),
        json!({"max_size": 3}),
        json!("max_count"),
    ] {
        let (status, body) = call(&client, &server, Method::PUT, metadata, Some(bad), false).await;
        assert_eq!(status, 400, "{body}");
    }

    // Hard delete: admin only, then 410 for every read and write.
    let (status, _) = call(
        &client,
        &server,
        Method::DELETE,
        "/streams/order-1?hard=true",
        None,
        false,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = call(
        &client,
        &server,
        Method::DELETE,
        "/streams/order-1?hard=true",
        None,
        true,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"stream": "order-1", "hard": true}))
    );
    let body = json!({"events": [{"type": "Noted", "data": {}}]});
    for (method, path, body) in [
        (Method::GET, events, None),
        (Method::POST, events, Some(body)),
        (Method::GET, metadata, None),
        (Method::PUT, metadata, Some(json!({}))),
        (Method::DELETE, "/streams/order-1", None),
    ] {
        let (status, answer) = call(&client, &server, method.clone(), path, body, true).await;
        assert_eq!(status, 410, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("deleted"),
            "{answer}"
        );
    }
    assert_eq!(all_events(&client, &server).await, Vec::<Value>::new());
}

/// A projection rebuilt from position 1 after a scavenge, and a live feed from position 1,
/// see only what is left: the global log skips the removed positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_and_live_feeds_skip_scavenged_positions() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    for (id, amount) in [("alice", 10), ("bob", 20), ("carol", 40)] {
        let path = format!("/aggregates/bank-account/{id}/commands");
        let open = json!({"type": "Open", "data": {"owner": id}});
        let (status, body) = call(&client, &server, Method::POST, &path, Some(open), false).await;
        assert_eq!(status, 200, "{body}");
        let deposit = json!({"type": "Deposit", "data": {"amount": amount}});
        let (status, body) =
            call(&client, &server, Method::POST, &path, Some(deposit), false).await;
        assert_eq!(status, 200, "{body}");
    }
    // Bob's events sit in the middle of the log, carol's at its head.
    let deletes = [
        "/streams/bank-account-bob?hard=true",
        "/streams/bank-account-carol",
    ];
    for path in deletes {
        let (status, body) = call(&client, &server, Method::DELETE, path, None, true).await;
        assert_eq!(status, 200, "{body}");
    }
    let scavenge = "/admin/scavenge";
    let (status, report) = call(&client, &server, Method::POST, scavenge, None, false).await;
    assert_eq!(status, 401, "{report}");
    let (status, report) = call(&client, &server, Method::POST, scavenge, None, true).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["events"], 4, "{report}");

    // A new build of bank-analytics replays the log from position 1, and goes live at the
    // head although the last visible event is at position 2.
    let response = client
        .put(server.url("/plugins/bank-analytics"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(foldhost_plugins::path("bank-analytics-v2")).unwrap())
        .send()
        .await
        .unwrap();
    let (status, uploaded) = json(response).await;
    assert_eq!(status, 200, "{uploaded}");
    let deadline = Instant::now() + PATIENCE;
    let projection = "/projections/bank-analytics";
    let state = loop {
        let (_, body) = call(&client, &server, Method::GET, projection, None, false).await;
        if body["state"].get("largest_deposit").is_some() && body["position"] == 6 {
            break body["state"].clone();
        }
        assert!(Instant::now() < deadline, "no rebuilt projection: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state["open_accounts"], 1, "{state}");
    assert_eq!(state["total_balance"], 10, "{state}");

    // The feed skips positions 3 to 6 and goes on live.
    let response = client
        .get(server.url("/events/live?from_position=1"))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::new(response);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(feed.next().await.unwrap()["position"].as_u64().unwrap());
    }
    assert_eq!(seen, [1, 2]);
    append(&client, &server, "note-1", json!("no_stream"), json!({})).await;
    assert_eq!(feed.next().await.unwrap()["position"], 7);
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Occurrences of `marker` in every file under `dir`.
fn occurrences_in_dir(dir: &Path, marker: &[u8]) -> usize {
    let mut found = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        found += if path.is_dir() {
            occurrences_in_dir(&path, marker)
        } else {
            std::fs::read(&path).map_or(0, |bytes| occurrences(&bytes, marker))
        };
    }
    found
}

/// Writes a customer's events between other streams' events, hard-deletes the customer,
/// scavenges, and checks with `count` (occurrences of the marker in the database's files)
/// that the marker was stored before and is gone after, while everything else is left.
async fn forget_a_customer(server: &Server, count: impl Fn(&[u8]) -> usize) {
    let client = Client::new();
    let marker = format!("forget-me-{}", uuid::Uuid::new_v4().simple());
    for n in 0..300 {
        append(
            &client,
            server,
            &format!("other-{}", n % 7),
            json!("any"),
            json!({"n": n, "pad": "x".repeat(200)}),
        )
        .await;
        // Between other events, and last (what plain VACUUM would leave in a page's free space).
        if n % 100 == 50 || n == 299 {
            let event = json!({"type": "AddressChanged", "data": {"street": marker}, "metadata": {"note": marker}});
            let body = json!({"events": [event]});
            let (status, body) = call(
                &client,
                server,
                Method::POST,
                "/streams/customer-42/events",
                Some(body),
                false,
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let before = all_events(&client, server).await;
    assert_eq!(before.len(), 304);
    assert!(
        count(marker.as_bytes()) >= 3,
        "the marker should be stored before the delete"
    );

    let (status, body) = call(
        &client,
        server,
        Method::DELETE,
        "/streams/customer-42?hard=true",
        None,
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        count(marker.as_bytes()) >= 3,
        "a delete alone does not erase the bytes"
    );
    let (status, report) = call(&client, server, Method::POST, "/admin/scavenge", None, true).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["events"], 4, "{report}");
    assert_eq!(
        count(marker.as_bytes()),
        0,
        "the customer's data is still in the files"
    );

    let left: Vec<Value> = before
        .into_iter()
        .filter(|event| event["stream"] != "customer-42")
        .collect();
    let after = all_events(&client, server).await;
    assert_eq!(after.len(), 300);
    assert!(after == left, "the other streams' events changed");
    append(&client, server, "other-0", json!("any"), json!({})).await;
    let (_, last) = call(
        &client,
        server,
        Method::GET,
        "/events?from_position=305",
        None,
        false,
    )
    .await;
    assert_eq!(last[0]["position"], 305, "positions are not reused: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_customer_is_gone_from_the_redb_file() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let file = dirs.data.join("journal.redb");
    forget_a_customer(&server, |marker| {
        occurrences(&std::fs::read(&file).unwrap(), marker)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_customer_is_gone_from_the_postgres_files() {
    let cluster = pgcluster::Cluster::start();
    let (admin, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let oid: u32 = admin
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let files = cluster.data().join("base").join(oid.to_string());
    let dirs = Dirs::new();
    let server =
        Server::start_on_journal_with(&dirs.data, &dirs.plugins, &cluster.url(), Some(TOKEN));
    let count = |marker: &[u8]| {
        // Flush dirty pages so the files hold what the tables hold.
        let admin = &admin;
        let flushed = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(admin.batch_execute("CHECKPOINT"))
        });
        flushed.unwrap();
        occurrences_in_dir(&files, marker)
    };
    forget_a_customer(&server, count).await;
}

async fn command(client: &Client, server: &Server, id: &str, command: Value) -> (u16, Value) {
    let path = format!("/aggregates/bank-account/{id}/commands");
    call(client, server, Method::POST, &path, Some(command), false).await
}

/// An aggregate folds only what readers see: after a soft delete its cached state is dropped
/// and the account can be opened again (its versions go on); after a truncation the state
/// refolds from the window; after a hard delete commands answer 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_fold_only_the_visible_part_of_their_stream() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let open = json!({"type": "Open", "data": {"owner": "Ada"}});
    let deposit = |amount: u64| json!({"type": "Deposit", "data": {"amount": amount}});
    assert_eq!(command(&client, &server, "ada", open.clone()).await.0, 200);
    assert_eq!(command(&client, &server, "ada", deposit(100)).await.0, 200);

    let stream = "/streams/bank-account-ada";
    let (status, body) = call(&client, &server, Method::DELETE, stream, None, false).await;
    assert_eq!(status, 200, "{body}");
    let state = "/aggregates/bank-account/ada";
    let (status, body) = call(&client, &server, Method::GET, state, None, false).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = command(&client, &server, "ada", deposit(1)).await;
    assert_eq!(
        status, 422,
        "the deleted account is not open any more: {body}"
    );
    let (status, body) = command(&client, &server, "ada", open).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["state"]["balance"], 0, "{body}");
    for amount in [5, 7] {
        assert_eq!(
            command(&client, &server, "ada", deposit(amount)).await.0,
            200
        );
    }

    // Keep only the last two events: the state is their fold, Opened is not among them.
    let rules = json!({"max_count": 2});
    let metadata = "/streams/bank-account-ada/metadata";
    let (status, body) = call(&client, &server, Method::PUT, metadata, Some(rules), false).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&client, &server, Method::GET, state, None, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].clone(), body["state"]["status"].clone()),
        (json!(5), json!("new")),
        "{body}"
    );

    // Rules that hide a command's events at once: it is stored, and its answer says why its
    // state is unknown instead of calling the stream corrupt.
    let past = json!({"truncate_before": 100});
    let (status, body) = call(&client, &server, Method::PUT, metadata, Some(past), false).await;
    assert_eq!(status, 200, "{body}");
    let reopen = json!({"type": "Open", "data": {"owner": "Ada"}});
    let (status, body) = command(&client, &server, "ada", reopen).await;
    assert_eq!((status, body["version"].clone()), (200, json!(6)), "{body}");
    let why = body["state_error"].as_str().unwrap_or_default();
    assert!(why.contains("retention rules hide them"), "{body}");
    assert!(!why.contains("corrupt"), "{body}");

    let hard = "/streams/bank-account-ada?hard=true";
    let (status, body) = call(&client, &server, Method::DELETE, hard, None, true).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = command(&client, &server, "ada", deposit(1)).await;
    assert_eq!(status, 410, "{body}");
    let (status, body) = call(&client, &server, Method::GET, state, None, false).await;
    assert_eq!(status, 410, "{body}");
}
