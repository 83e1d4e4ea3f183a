//! The HTTP API of a real `foldhost serve` process: every endpoint and every error status.

use crate::serve;

use std::time::Instant;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, json};

const TOKEN: &str = "s3cret-admin-token";

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

async fn get(client: &Client, server: &Server, path: &str) -> (u16, Value) {
    json(client.get(server.url(path)).send().await.unwrap()).await
}

/// Posts raw bytes as a request body.
async fn post_raw(client: &Client, server: &Server, path: &str, body: Vec<u8>) -> (u16, Value) {
    json(
        client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Sends a request whose body may be over a size limit. The server answers 413 once the limit
/// is reached and closes the connection without reading the rest, so on a busy machine the
/// client can meet the closed connection before it reads the answer: then it tries again.
async fn send_oversized(request: reqwest::RequestBuilder) -> (u16, Value) {
    for _ in 0..10 {
        match request
            .try_clone()
            .expect("a body held in memory")
            .send()
            .await
        {
            Ok(response) => return json(response).await,
            Err(error) => eprintln!("the connection closed before the answer, again: {error}"),
        }
    }
    panic!("no answer to an oversized request in 10 tries");
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_append_and_read_with_expected_versions() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let id = uuid::Uuid::new_v4();
    let first = json!({
        "expected_version": "no_stream",
        "events": [
            {"id": id, "type": "Registered", "data": {"name": "ada"}, "metadata": {"by": "test"}},
            {"id": uuid::Uuid::new_v4(), "type": "Renamed", "data": {"name": "Ada"}},
        ]
    });
    let (status, body) = post(&client, &server, "/streams/user-1/events", first.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"first_version": 1, "last_version": 2, "first_position": 1, "last_position": 2})
    );

    // Exactly the current version appends; a stale one conflicts and says where the stream is.
    let next = |expected: Value| json!({"expected_version": expected, "events": [{"type": "Touched", "data": null}]});
    let (status, body) = post(&client, &server, "/streams/user-1/events", next(json!(2))).await;
    assert_eq!(
        (status, body["last_version"].clone()),
        (200, json!(3)),
        "{body}"
    );
    let (status, body) = post(&client, &server, "/streams/user-1/events", next(json!(2))).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["current_version"], json!(3), "{body}");
    // The message spells the expectation as the API does, not as Rust does.
    assert_eq!(
        error_of(&body),
        "wrong expected version for stream \"user-1\": expected 2, current 3"
    );
    let (status, body) = post(
        &client,
        &server,
        "/streams/user-1/events",
        next(json!("no_stream")),
    )
    .await;
    assert_eq!(
        (status, body["current_version"].clone()),
        (409, json!(3)),
        "{body}"
    );
    assert_eq!(
        error_of(&body),
        "wrong expected version for stream \"user-1\": expected \"no_stream\", current 3"
    );
    let (status, body) = post(&client, &server, "/streams/other/events", next(json!(1))).await;
    assert_eq!(
        (status, body["current_version"].clone()),
        (409, Value::Null),
        "{body}"
    );
    let (status, _) = post(
        &client,
        &server,
        "/streams/user-1/events",
        next(json!("any")),
    )
    .await;
    assert_eq!(status, 200);
    let absent = json!({"events": [{"type": "Touched", "data": 1}]});
    let (status, body) = post(&client, &server, "/streams/user-1/events", absent).await;
    assert_eq!(
        (status, body["last_version"].clone()),
        (200, json!(5)),
        "{body}"
    );

    // Re-sending the first append (same ids) is idempotent: nothing new, same answer.
    let (status, body) = post(&client, &server, "/streams/user-1/events", first.clone()).await;
    assert_eq!(
        (status, body["last_version"].clone()),
        (200, json!(2)),
        "{body}"
    );
    // One of its ids in another stream is refused.
    let (status, body) = post(&client, &server, "/streams/user-2/events", first).await;
    assert_eq!(status, 409, "{body}");

    // Reading a stream: pages by version, events as JSON.
    let (status, events) = get(&client, &server, "/streams/user-1/events").await;
    assert_eq!(status, 200, "{events}");
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 5);
    let registered = &events[0];
    assert_eq!(registered["id"], json!(id));
    assert_eq!(registered["type"], "Registered");
    assert_eq!(registered["stream"], "user-1");
    assert_eq!(
        (
            registered["position"].clone(),
            registered["version"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(registered["data"], json!({"name": "ada"}));
    assert_eq!(registered["metadata"], json!({"by": "test"}));
    assert_eq!(registered["content_type"], "json");
    assert!(registered["recorded_at"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(events[1]["metadata"], Value::Null);
    let (_, page) = get(
        &client,
        &server,
        "/streams/user-1/events?from_version=2&limit=2",
    )
    .await;
    let versions: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);

    // The global log, by position.
    post(
        &client,
        &server,
        "/streams/user-2/events",
        next(json!("any")),
    )
    .await;
    let (status, log) = get(&client, &server, "/events?from_position=5").await;
    assert_eq!(status, 200, "{log}");
    let log: Vec<(u64, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["stream"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(log, [(5, "user-1".to_owned()), (6, "user-2".to_owned())]);
    let (_, page) = get(&client, &server, "/events?limit=1").await;
    assert_eq!(page.as_array().unwrap().len(), 1);

    // Stream names travel percent-encoded in one path segment.
    let (status, _) = post(
        &client,
        &server,
        "/streams/a%2Fb%20c/events",
        next(json!("any")),
    )
    .await;
    assert_eq!(status, 200);
    let (_, events) = get(&client, &server, "/streams/a%2Fb%20c/events").await;
    assert_eq!(events[0]["stream"], "a/b c");

    let (status, body) = get(&client, &server, "/streams/nobody/events").await;
    assert_eq!(status, 404, "{body}");
    error_of(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_json_errors_and_write_nothing() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let path = "/streams/s/events";
    let event = json!({"type": "T", "data": {}});
    let refused: Vec<(Vec<u8>, u16)> = vec![
        (b"{not json".to_vec(), 400),
        (
            b"{\"events\": [{\"type\": \"T\", \"data\": \"\xff\xfe\"}]}".to_vec(),
            400,
        ),
        (b"".to_vec(), 400),
        (
            json!({"expected_version": "sometimes", "events": [event]})
                .to_string()
                .into(),
            400,
        ),
        (
            json!({"expected_version": -1, "events": [event]})
                .to_string()
                .into(),
            400,
        ),
        (
            json!({"expected_version": 1.5, "events": [event]})
                .to_string()
                .into(),
            400,
        ),
        (
            json!({"events": [{"type": "T", "data": 1, "metadata": [1, 2]}]})
                .to_string()
                .into(),
            400,
        ),
        (
            json!({"events": [{"type": "T", "data": 1, "metadata": "x"}]})
                .to_string()
                .into(),
            400,
        ),
        (json!({"events": [{"type": "T"}]}).to_string().into(), 400),
        (json!({"events": [{"data": 1}]}).to_string().into(), 400),
        (
            json!({"events": [{"type": "T", "data": 1, "id": "not-a-uuid"}]})
                .to_string()
                .into(),
            400,
        ),
        (
            json!({"events": [{"type": "T", "data": 1, "typo": 1}]})
                .to_string()
                .into(),
            400,
        ),
        (json!({"events": []}).to_string().into(), 400),
        (json!({"events": {}}).to_string().into(), 400),
        (json!([1, 2]).to_string().into(), 400),
    ];
    for (body, expected) in refused {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (status, answer) = post_raw(&client, &server, path, body).await;
        assert_eq!(status, expected, "{shown} -> {answer}");
        error_of(&answer);
    }
    // The same id twice in one append.
    let id = uuid::Uuid::new_v4();
    let twice =
        json!({"events": [{"id": id, "type": "T", "data": 1}, {"id": id, "type": "T", "data": 2}]});
    let (status, body) = post(&client, &server, path, twice).await;
    assert_eq!(status, 400, "{body}");
    // A stream name over 256 bytes.
    let long = format!("/streams/{}/events", "x".repeat(300));
    let (status, body) = post(&client, &server, &long, json!({"events": [event]})).await;
    assert_eq!(status, 400, "{body}");

    // Over the size limits: one event over 1 MiB, a body over 8 MiB.
    let big = "x".repeat(1_100_000);
    let (status, body) = post(
        &client,
        &server,
        path,
        json!({"events": [{"type": "T", "data": big}]}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let huge = vec![b' '; 9 << 20];
    let (status, body) = send_oversized(
        client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(huge),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    // Bad query strings and unknown routes and methods are JSON errors too.
    for path in [
        "/events?from_position=minus-one",
        "/events?limit=x",
        "/events?bogus=1",
        "/streams/s/events?from_version=-1",
    ] {
        let (status, body) = get(&client, &server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, body) = get(&client, &server, "/nowhere").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = json(client.delete(server.url("/events")).send().await.unwrap()).await;
    assert_eq!(status, 405, "{body}");

    // None of that touched the journal.
    let (_, log) = get(&client, &server, "/events").await;
    assert_eq!(log, json!([]));
    let (status, health) = get(&client, &server, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health, json!({"status": "ok", "head_position": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_run_commands_explain_rejections_and_travel_in_time() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let command = |kind: &str, data: Value| json!({"type": kind, "data": data});
    let url = "/aggregates/bank-account/alice/commands";

    let (status, opened) = post(
        &client,
        &server,
        url,
        command("Open", json!({"owner": "Alice"})),
    )
    .await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["version"], 1);
    assert_eq!(opened["state"]["balance"], 0);
    let events = opened["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["stream"], "bank-account-alice");
    assert_eq!(events[0]["version"], 1);
    let (_, deposited) = post(
        &client,
        &server,
        url,
        command("Deposit", json!({"amount": 100})),
    )
    .await;
    assert_eq!(
        (
            deposited["version"].clone(),
            deposited["state"]["balance"].clone()
        ),
        (json!(2), json!(100))
    );
    let (_, withdrawn) = post(
        &client,
        &server,
        url,
        command("Withdraw", json!({"amount": 30})),
    )
    .await;
    assert_eq!(withdrawn["state"]["balance"], 70);

    // The plugin's refusal: 422 with its reason; nothing appended.
    let (status, body) = post(
        &client,
        &server,
        url,
        command("Withdraw", json!({"amount": 71})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient funds"),
        "{body}"
    );
    error_of(&body);
    // A command the plugin cannot decode, or a body that is no command.
    let (status, body) = post(
        &client,
        &server,
        url,
        command("Deposit", json!({"amount": "lots"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&client, &server, url, command("Explode", json!({}))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&client, &server, url, json!({"data": {}})).await;
    assert_eq!(status, 400, "{body}");
    // Unknown plugins, and plugins of the other kind.
    let (status, body) = post(
        &client,
        &server,
        "/aggregates/nope/x/commands",
        command("Open", json!({})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &client,
        &server,
        "/aggregates/bank-analytics/x/commands",
        command("Open", json!({})),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // State now, and as it was.
    let (status, state) = get(&client, &server, "/aggregates/bank-account/alice").await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(
        (state["version"].clone(), state["state"]["balance"].clone()),
        (json!(3), json!(70))
    );
    let (_, past) = get(
        &client,
        &server,
        "/aggregates/bank-account/alice?at_version=2",
    )
    .await;
    assert_eq!(
        (past["version"].clone(), past["state"]["balance"].clone()),
        (json!(2), json!(100))
    );
    let (_, first) = get(
        &client,
        &server,
        "/aggregates/bank-account/alice?at_version=1",
    )
    .await;
    assert_eq!(first["state"]["balance"], 0);
    let (status, body) = get(
        &client,
        &server,
        "/aggregates/bank-account/alice?at_version=soon",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&client, &server, "/aggregates/bank-account/nobody").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&client, &server, "/aggregates/nope/alice").await;
    assert_eq!(status, 404, "{body}");

    // Commands of one account are serialised; concurrent ones all land.
    let deposits = (0..20).map(|_| {
        let client = client.clone();
        let url = server.url(url);
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"type": "Deposit", "data": {"amount": 1}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    for deposit in deposits.collect::<Vec<_>>() {
        deposit.await.unwrap();
    }
    let (_, state) = get(&client, &server, "/aggregates/bank-account/alice").await;
    assert_eq!(
        (state["version"].clone(), state["state"]["balance"].clone()),
        (json!(23), json!(90))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_fold_the_log_and_answer_queries() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    for (i, owner) in ["ann", "bob", "cy"].into_iter().enumerate() {
        let url = format!("/aggregates/bank-account/{owner}/commands");
        let (status, _) = post(
            &client,
            &server,
            &url,
            json!({"type": "Open", "data": {"owner": owner}}),
        )
        .await;
        assert_eq!(status, 200);
        let amount = 100 * (i + 1);
        post(
            &client,
            &server,
            &url,
            json!({"type": "Deposit", "data": {"amount": amount}}),
        )
        .await;
    }
    let head = 6;
    let started = Instant::now();
    let projection = loop {
        let (status, projection) = get(&client, &server, "/projections/bank-analytics").await;
        assert_eq!(status, 200, "{projection}");
        if projection["position"] == head {
            break projection;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the projection did not catch up: {projection}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(projection["state"]["open_accounts"], 3, "{projection}");
    assert_eq!(projection["state"]["total_balance"], 600, "{projection}");
    assert!(projection["status"]["status"].is_string(), "{projection}");

    let (status, top) = get(
        &client,
        &server,
        "/projections/bank-analytics/query/top?n=2",
    )
    .await;
    assert_eq!(status, 200, "{top}");
    let top = top.as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(top[0].to_string().contains("cy"), "{top:?}");
    let (status, account) = get(
        &client,
        &server,
        "/projections/bank-analytics/query/account?id=bank-account-bob",
    )
    .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["balance"], 200, "{account}");

    // The plugin's own refusals, and unknown projections.
    let (status, body) = get(
        &client,
        &server,
        "/projections/bank-analytics/query/account?id=zed",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        &client,
        &server,
        "/projections/bank-analytics/query/nonsense",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&client, &server, "/projections/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&client, &server, "/projections/bank-account").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&client, &server, "/projections/nope/query/top").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_and_changed_only_with_the_admin_token() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let (status, list) = get(&client, &server, "/plugins").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bank-account", "bank-analytics", "shopping-cart"]);
    assert_eq!(list[0]["kind"], "aggregate");
    assert_eq!(list[1]["kind"], "projection");

    let wasm = |name: &str| std::fs::read(foldhost_plugins::path(name)).unwrap();
    let put = |name: &str, body: Vec<u8>, token: Option<&str>| {
        let mut request = client
            .put(server.url(&format!("/plugins/{name}")))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send_oversized(request)
    };
    let hostile = wasm(foldhost_plugins::HOSTILE);
    let (status, body) = put("hostile", hostile.clone(), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = put("hostile", hostile.clone(), Some("guess")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = put("other-name", hostile.clone(), Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("hostile"), "{body}");
    let (status, body) = put("hostile", b"\0asm garbage".to_vec(), Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(
        "wrong-contract",
        wasm(foldhost_plugins::WRONG_CONTRACT),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put("hostile", vec![0; 65 << 20], Some(TOKEN)).await;
    assert_eq!(status, 413, "{body}");
    let (status, info) = put("hostile", hostile, Some(TOKEN)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (info["name"].clone(), info["kind"].clone()),
        (json!("hostile"), json!("aggregate"))
    );

    // A plugin that traps answers 500 with the reason; its next command runs on a fresh instance.
    let url = "/aggregates/hostile/h1/commands";
    let (status, body) = post(
        &client,
        &server,
        url,
        json!({"type": "Panic", "data": null}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert!(error_of(&body).contains("trapped"), "{body}");
    let (status, body) = post(&client, &server, url, json!({"type": "Ping", "data": null})).await;
    assert_eq!(status, 200, "{body}");

    // A new version of a projection replaces the old one (same name).
    let (status, info) = put(
        "bank-analytics",
        wasm(foldhost_plugins::BANK_ANALYTICS_V2),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{info}");

    let delete = |path: &str, token: Option<&str>| {
        let mut request = client.delete(server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { json(request.send().await.unwrap()).await }
    };
    let (status, body) = delete("/plugins/shopping-cart", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = delete("/plugins/shopping-cart?drop_data=true", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"unloaded": "shopping-cart", "dropped_data": true})
    );
    let (status, body) = delete("/plugins/shopping-cart", Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &client,
        &server,
        "/aggregates/shopping-cart/c/commands",
        json!({"type": "AddItem", "data": {}}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = delete("/plugins/hostile?drop_data=perhaps", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = get(&client, &server, "/plugins").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bank-account", "bank-analytics", "hostile"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_disabled_without_a_token() {
    let dirs = Dirs::new();
    // A plugin file that fails to load is skipped, not fatal.
    std::fs::write(dirs.plugins.join("broken.wasm"), b"\0asm broken").unwrap();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let response = client
        .put(server.url("/plugins/hostile"))
        .bearer_auth("anything")
        .body(std::fs::read(foldhost_plugins::path(foldhost_plugins::HOSTILE)).unwrap())
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("--admin-token"), "{body}");
    let response = client
        .delete(server.url("/plugins/bank-account"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (_, list) = get(&client, &server, "/plugins").await;
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_journal_commands_projections_and_plugins() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let url = "/aggregates/bank-account/m/commands";
    post(
        &client,
        &server,
        url,
        json!({"type": "Open", "data": {"owner": "M"}}),
    )
    .await;
    post(
        &client,
        &server,
        url,
        json!({"type": "Withdraw", "data": {"amount": 5}}),
    )
    .await;
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for series in [
        "foldhost_appends_total 1",
        "foldhost_events_appended_total 1",
        "foldhost_commit_batch_size_bucket{le=\"1\"}",
        "foldhost_commit_seconds_bucket",
        "foldhost_command_seconds_bucket{plugin=\"bank-account\"",
        "foldhost_command_rejections_total{plugin=\"bank-account\"} 1",
        "foldhost_plugin_traps_total{plugin=\"bank-account\"} 0",
        "foldhost_projection_events_total{plugin=\"bank-analytics\"}",
        "foldhost_aggregate_cache_hits_total",
        "foldhost_aggregate_cache_misses_total",
        "foldhost_http_requests_total{",
        "foldhost_http_request_seconds_bucket{route=\"/aggregates/{plugin}/{id}/commands\"",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_large_events_are_cut_into_pages_by_size() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let big = "x".repeat(900_000);
    for _ in 0..20 {
        let body = json!({"events": [{"type": "Big", "data": big}]});
        let (status, answer) = post(&client, &server, "/streams/big/events", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // About 16 MiB per page, then on from the last event.
    let (status, first) = get(&client, &server, "/streams/big/events").await;
    assert_eq!(status, 200);
    let first = first.as_array().unwrap().len();
    assert!((1..20).contains(&first), "{first} events in the first page");
    let (_, rest) = get(
        &client,
        &server,
        &format!("/streams/big/events?from_version={}", first + 1),
    )
    .await;
    assert_eq!(first + rest.as_array().unwrap().len(), 20);
    let (_, log) = get(&client, &server, "/events").await;
    assert_eq!(log.as_array().unwrap().len(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_listed_most_recently_written_first() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let touch = json!({"events": [{"type": "Touched", "data": null}]});
    for stream in ["cart-1", "user-1", "cart-2", "cart-1", "user-2", "cart-3"] {
        let (status, body) = post(
            &client,
            &server,
            &format!("/streams/{stream}/events"),
            touch.clone(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = json(
        client
            .delete(server.url("/streams/cart-3"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let names = |page: &Value| -> Vec<String> {
        page["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stream"].as_str().unwrap().to_owned())
            .collect()
    };

    // Newest first, each stream once at its newest event, the deleted one left out.
    let (status, page) = get(&client, &server, "/streams").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["user-2", "cart-1", "cart-2", "user-1"]);
    assert_eq!(page["next_after"], Value::Null);
    let cart_1 = &page["streams"][1];
    assert_eq!(
        (cart_1["version"].as_u64(), cart_1["last_position"].as_u64()),
        (Some(2), Some(4)),
        "{page}"
    );
    assert!(
        cart_1["last_written_at"].as_u64().unwrap() > 1_700_000_000_000,
        "{page}"
    );

    // A category, a page at a time.
    let (_, first) = get(&client, &server, "/streams?prefix=cart-&limit=1").await;
    assert_eq!(names(&first), ["cart-1"]);
    let after = first["next_after"].as_u64().unwrap();
    let (_, second) = get(
        &client,
        &server,
        &format!("/streams?prefix=cart-&limit=1&after={after}"),
    )
    .await;
    assert_eq!(names(&second), ["cart-2"]);
    let after = second["next_after"].as_u64().unwrap();
    let (_, rest) = get(
        &client,
        &server,
        &format!("/streams?prefix=cart-&after={after}"),
    )
    .await;
    assert_eq!(names(&rest), Vec::<String>::new());
    assert_eq!(rest["next_after"], Value::Null);

    let (status, body) = get(&client, &server, "/streams?limit=many").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_cannot_reach_the_server_through_a_browser() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    command.args(["--allowed-host", "events.example"]);
    let server = Server::launch(command);
    let client = Client::new();
    let append = |origin: Option<&str>, host: Option<&str>| {
        let mut request = client
            .post(server.url("/streams/csrf/events"))
            // What a `no-cors` fetch or a form of another site may send.
            .header("content-type", "text/plain")
            .body(r#"{"expected_version": "any", "events": [{"type": "Touched", "data": null}]}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        async move { json(request.send().await.unwrap()).await }
    };
    let (status, body) = append(Some("http://evil.example"), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("another origin"), "{body}");
    // DNS rebinding: the other site's own name resolved to this loopback server.
    let rebound = client
        .get(server.url("/events"))
        .header("host", "rebind.evil.example")
        .send()
        .await
        .unwrap();
    let (status, body) = json(rebound).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("--allowed-host"), "{body}");
    let (status, stream) = get(&client, &server, "/streams/csrf/events").await;
    assert_eq!(status, 404, "nothing appended: {stream}");

    // The console's own pages, an allowed proxy's name and clients that are not browsers are
    // served.
    let own = server.url("");
    for (origin, host) in [
        (Some(own.as_str()), None),
        (Some("https://events.example"), Some("events.example")),
        (None, None),
    ] {
        let (status, body) = append(origin, host).await;
        assert_eq!(status, 200, "{origin:?} {host:?}: {body}");
    }
}
