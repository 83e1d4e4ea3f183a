//! Upcasters on a real `foldhost serve`: old `bank-account` event shapes reach a plugin build
//! that only understands the current shape, through a chain of two example upcasters
//! (`bank-upcast-v1` splits, `bank-upcast-v2` renames); loading one rebuilds the projection in
//! the background and the next command rehydrates through it; stored bytes never change; a
//! misbehaving upcaster is contained; a plugin built against contract 0.1.0 still loads; the
//! offline `replay` and `plugins diff` take upcasters too.

use crate::serve;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};
use serve::{BIN, Dirs, PATIENCE, Server, SseReader, json};

const TOKEN: &str = "upcaster-admin-token";

async fn call(
    client: &Client,
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, server.url(path)).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json(request.send().await.unwrap()).await
}

async fn get(client: &Client, server: &Server, path: &str) -> (u16, Value) {
    call(client, server, Method::GET, path, None).await
}

async fn load(client: &Client, server: &Server, artifact: &str) -> Value {
    let response = client
        .put(server.url(&format!("/plugins/{artifact}")))
        .bearer_auth(TOKEN)
        .body(std::fs::read(foldhost_plugins::path(artifact)).unwrap())
        .send()
        .await
        .unwrap();
    let (status, info) = json(response).await;
    assert_eq!(status, 200, "{info}");
    info
}

/// Appends events in their stored shape, as an old build of bank-account wrote them (the
/// current build refuses them, so unchecked: `validate=false`).
async fn append(client: &Client, server: &Server, stream: &str, events: Value) {
    let path = format!("/streams/{stream}/events?validate=false");
    let (status, body) = call(
        client,
        server,
        Method::POST,
        &path,
        Some(json!({"events": events})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn command(client: &Client, server: &Server, id: &str, command: Value) -> (u16, Value) {
    let path = format!("/aggregates/bank-account/{id}/commands");
    call(client, server, Method::POST, &path, Some(command)).await
}

/// Waits until bank-analytics serves a state whose `open_accounts` is `open`, at the head.
async fn analytics_with(client: &Client, server: &Server, open: u64) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, health) = get(client, server, "/health").await;
        let (_, body) = get(client, server, "/projections/bank-analytics").await;
        if body["state"]["open_accounts"] == open && body["position"] == health["head_position"] {
            return body["state"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "bank-analytics never had {open} open accounts: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn types_and_versions(events: &Value) -> Vec<(String, u64, u64)> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap().to_owned();
            (
                kind,
                e["version"].as_u64().unwrap(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_event_shapes_reach_plugins_in_the_current_shape_through_a_chain() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let open = |owner: &str| json!({"type": "Open", "data": {"owner": owner}});
    let deposit = |amount: u64| json!({"type": "Deposit", "data": {"amount": amount}});
    assert_eq!(command(&client, &server, "new", open("Cy")).await.0, 200);
    assert_eq!(command(&client, &server, "new", deposit(1)).await.0, 200);
    // The first shape (positions 3, 4) and the second (positions 5, 6).
    append(
        &client,
        &server,
        "bank-account-old",
        json!([
            {"type": "OpenedWithDeposit", "data": {"holder": "Ada", "initial": 100}},
            {"type": "Credited", "data": {"amount": 5}},
        ]),
    )
    .await;
    append(
        &client,
        &server,
        "bank-account-mid",
        json!([
            {"type": "AccountOpened", "data": {"holder": "Bo"}},
            {"type": "Credited", "data": {"amount": 7}},
        ]),
    )
    .await;
    let (_, stored) = get(&client, &server, "/events").await;

    // bank-account only understands the current shape.
    let (status, body) = get(&client, &server, "/aggregates/bank-account/old").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("OpenedWithDeposit"),
        "{body}"
    );
    analytics_with(&client, &server, 1).await;

    // The second upcaster alone: the second shape reads; bank-analytics is rebuilt through it.
    let info = load(&client, &server, "bank-upcast-v2").await;
    assert_eq!(
        (info["kind"].clone(), info["status"]["status"].clone()),
        (json!("upcaster"), json!("live"))
    );
    let (status, body) = get(&client, &server, "/aggregates/bank-account/mid").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["state"],
        json!({"owner": "Bo", "balance": 7, "status": "open"})
    );
    assert_eq!(
        get(&client, &server, "/aggregates/bank-account/old")
            .await
            .0,
        500
    );
    let state = analytics_with(&client, &server, 2).await;
    assert_eq!(
        state["total_balance"], 13,
        "old's Credited counts, its opening not: {state}"
    );

    // Both: v1 splits OpenedWithDeposit, then v2 renames both halves.
    load(&client, &server, "bank-upcast-v1").await;
    let (status, body) = get(&client, &server, "/aggregates/bank-account/old").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].clone(), body["state"]["balance"].clone()),
        (json!(2), json!(105))
    );
    let (status, body) = command(&client, &server, "old", deposit(10)).await;
    assert_eq!((status, body["version"].clone()), (200, json!(3)), "{body}");
    let state = analytics_with(&client, &server, 3).await;
    assert_eq!(state["total_balance"], 123, "{state}");
    let (_, plugins) = get(&client, &server, "/plugins").await;
    let names: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bank-account",
            "bank-analytics",
            "bank-upcast-v1",
            "bank-upcast-v2",
            "shopping-cart"
        ]
    );

    // Readers may ask for the upcast events; the stored ones never change.
    let (_, raw) = get(&client, &server, "/streams/bank-account-old/events").await;
    let stored_types = [
        ("OpenedWithDeposit", 1, 3),
        ("Credited", 2, 4),
        ("Deposited", 3, 7),
    ];
    let expected: Vec<_> = stored_types
        .iter()
        .map(|(t, v, p)| (t.to_string(), *v, *p))
        .collect();
    assert_eq!(types_and_versions(&raw), expected);
    let (_, upcast) = get(
        &client,
        &server,
        "/streams/bank-account-old/events?upcast=true",
    )
    .await;
    let upcast_types = [
        ("Opened", 1, 3),
        ("Deposited", 1, 3),
        ("Deposited", 2, 4),
        ("Deposited", 3, 7),
    ];
    let expected: Vec<_> = upcast_types
        .iter()
        .map(|(t, v, p)| (t.to_string(), *v, *p))
        .collect();
    assert_eq!(types_and_versions(&upcast), expected);
    assert_eq!(upcast[0]["data"], json!({"owner": "Ada"}));
    assert_eq!(upcast[1]["data"], json!({"amount": 100}));
    assert_eq!(
        upcast[0]["id"], raw[0]["id"],
        "an upcast event keeps its stored id"
    );
    let (_, all) = get(
        &client,
        &server,
        "/events?upcast=true&from_position=3&limit=2",
    )
    .await;
    assert_eq!(
        types_and_versions(&all).len(),
        3,
        "one stored event became two: {all}"
    );
    let response = client
        .get(server.url("/events/live?upcast=true&from_position=5"))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::new(response);
    assert_eq!(feed.next().await.unwrap()["type"], "Opened");
    assert_eq!(feed.next().await.unwrap()["data"], json!({"amount": 7}));
    let (_, now) = get(&client, &server, "/events?limit=6").await;
    assert_eq!(now, stored, "stored events are unchanged");

    // Unloading v1: the old shape fails again, the projection is rebuilt without it.
    let (status, body) = call(
        &client,
        &server,
        Method::DELETE,
        "/plugins/bank-upcast-v1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&client, &server, "/aggregates/bank-account/old").await;
    assert_eq!(status, 500, "{body}");
    let state = analytics_with(&client, &server, 2).await;
    assert_eq!(state["total_balance"], 23, "{state}");
    server.terminate();

    // Offline, `replay` and `plugins diff` take the same upcasters.
    let data = dirs.data.display().to_string();
    let wasm = |name: &str| foldhost_plugins::path(name).display().to_string();
    let (v1, v2) = (wasm("bank-upcast-v1"), wasm("bank-upcast-v2"));
    let replay = offline(&[
        "replay",
        "--plugin",
        &wasm("bank-account"),
        "--stream",
        "old",
        "--upcaster",
        &v2,
        "--upcaster",
        &v1,
        "--data",
        &data,
    ]);
    assert_eq!(replay["balance"], 115, "{replay}");
    let diff = offline(&[
        "plugins",
        "diff",
        &wasm("bank-account"),
        &wasm("bank-account-v2"),
        "--upcaster",
        &v1,
        "--upcaster",
        &v2,
        "--data",
        &data,
    ]);
    assert_eq!(
        (diff["compared"].clone(), diff["differing"].clone()),
        (json!(3), json!(0)),
        "{diff}"
    );
}

/// Runs an offline subcommand that must succeed; returns its stdout as JSON.
fn offline(args: &[&str]) -> Value {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "foldhost {args:?} failed: {stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A direct append to an aggregate's stream is checked by folding its events through the same
/// upcasters the aggregate folds its stream through: an event in an old shape the chain
/// upcasts is taken (and folded), as commands on that stream would fold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_append_folds_old_shapes_through_the_upcasters() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    load(&client, &server, "bank-upcast-v1").await;
    load(&client, &server, "bank-upcast-v2").await;
    let events = json!({"events": [
        {"type": "AccountOpened", "data": {"holder": "Bo"}},
        {"type": "Credited", "data": {"amount": 7}},
    ]});
    let path = "/streams/bank-account-direct/events";
    let (status, body) = call(&client, &server, Method::POST, path, Some(events)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&client, &server, "/aggregates/bank-account/direct").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].clone(), body["state"].clone()),
        (
            json!(2),
            json!({"owner": "Bo", "balance": 7, "status": "open"})
        )
    );
    let old = json!({"events": [
        {"type": "OpenedWithDeposit", "data": {"holder": "Ada", "initial": 100}},
    ]});
    let path = "/streams/bank-account-older/events";
    let (status, body) = call(&client, &server, Method::POST, path, Some(old)).await;
    assert_eq!(status, 200, "{body}");
    let deposit = json!({"type": "Deposit", "data": {"amount": 5}});
    let (status, body) = command(&client, &server, "older", deposit).await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(105)),
        "{body}"
    );
    // What no upcaster turns into a shape the aggregate folds is still refused, nothing stored.
    let unknown = json!({"events": [{"type": "Credited", "data": {"amount": "many"}}]});
    let (status, body) = call(&client, &server, Method::POST, path, Some(unknown)).await;
    assert_eq!((status, body["index"].clone()), (422, json!(0)), "{body}");
    let (_, stream) = get(&client, &server, "/streams/bank-account-older/events").await;
    assert_eq!(stream.as_array().unwrap().len(), 2, "{stream}");
}

/// An upcaster replaced by a plugin of another kind under its name leaves the chain: readers
/// asking for upcast events get the stored ones again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upcaster_replaced_by_another_kind_stops_upcasting() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let stored = json!([
        {"type": "AccountOpened", "data": {"holder": "Bo"}},
        {"type": "Credited", "data": {"amount": 7}},
    ]);
    append(&client, &server, "bank-account-mid", stored).await;
    let upcast = "/streams/bank-account-mid/events?upcast=true";
    let types = |events: &Value| -> Vec<String> {
        types_and_versions(events)
            .into_iter()
            .map(|(kind, _, _)| kind)
            .collect()
    };

    load(&client, &server, "bank-upcast-v2").await;
    let (_, events) = get(&client, &server, upcast).await;
    assert_eq!(types(&events), ["Opened", "Deposited"]);

    let aggregate = std::fs::read(foldhost_plugins::path(
        foldhost_plugins::HOSTILE_AS_UPCASTER,
    ));
    let response = client
        .put(server.url("/plugins/bank-upcast-v2"))
        .bearer_auth(TOKEN)
        .body(aggregate.unwrap())
        .send()
        .await
        .unwrap();
    let (status, info) = json(response).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (info["name"].clone(), info["kind"].clone()),
        (json!("bank-upcast-v2"), json!("aggregate"))
    );
    let (_, events) = get(&client, &server, upcast).await;
    assert_eq!(types(&events), ["AccountOpened", "Credited"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_upcaster_is_contained() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let open = json!({"type": "Open", "data": {"owner": "Ok"}});
    assert_eq!(command(&client, &server, "fine", open.clone()).await.0, 200);
    assert_eq!(
        command(&client, &server, "poisoned", open.clone()).await.0,
        200
    );
    assert_eq!(command(&client, &server, "spinning", open).await.0, 200);
    append(
        &client,
        &server,
        "bank-account-poisoned",
        json!([{"type": "Poison", "data": null}]),
    )
    .await;
    append(
        &client,
        &server,
        "bank-account-spinning",
        json!([{"type": "Spin", "data": null}]),
    )
    .await;
    let before = analytics_with(&client, &server, 3).await;

    load(&client, &server, "hostile-upcaster").await;
    let (status, body) = get(&client, &server, "/aggregates/bank-account/poisoned").await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("hostile-upcaster") && error.contains("panicked"),
        "{error}"
    );
    let (status, body) = get(&client, &server, "/aggregates/bank-account/spinning").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    let deposit = json!({"type": "Deposit", "data": {"amount": 3}});
    let (status, body) = command(&client, &server, "fine", deposit).await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(3)),
        "{body}"
    );

    // Checked appends pass through the upcaster too: its panic on an event refuses the event
    // (422, nothing stored); running out of time is no verdict on it (500, not a refusal).
    let append_one = |kind: &str| {
        let events = json!({"events": [{"type": kind, "data": null}]});
        let path = "/streams/bank-account-fine/events";
        call(&client, &server, Method::POST, path, Some(events))
    };
    let (status, body) = append_one("Poison").await;
    assert_eq!(status, 422, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("hostile-upcaster"), "{body}");
    // The event was not stored: it is named by its index in the append, not by a position.
    assert!(!reason.contains("position"), "{body}");
    assert!(reason.contains("event at index 0 of the append"), "{body}");
    let (status, body) = append_one("Spin").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    let (_, stream) = get(&client, &server, "/streams/bank-account-fine/events").await;
    assert_eq!(stream.as_array().unwrap().len(), 2, "{stream}");

    // The projection is rebuilt through the upcaster: the two events it cannot upcast are
    // parked, as events a projection cannot fold are, and the rebuild takes over.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, plugins) = get(&client, &server, "/plugins").await;
        let info = plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "bank-analytics")
            .unwrap()
            .clone();
        if info.get("pending").is_none() && info["parked"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never parked both: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, parked) = get(&client, &server, "/plugins/bank-analytics/parked").await;
    assert_eq!(status, 200, "{parked}");
    let parked = parked.as_array().unwrap();
    let types: Vec<&str> = parked.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Poison", "Spin"], "{parked:?}");
    for event in parked {
        let reason = event["reason"].as_str().unwrap();
        assert!(reason.contains("hostile-upcaster"), "{reason}");
    }
    let (_, body) = get(&client, &server, "/projections/bank-analytics").await;
    assert_eq!(body["state"]["open_accounts"], before["open_accounts"]);
    assert_eq!(body["status"]["status"], "live", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_contract_0_1_0_still_loads_and_runs() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let info = load(&client, &server, "old-contract").await;
    assert_eq!(info["kind"], "aggregate", "{info}");
    for pings in 1..=2 {
        let path = "/aggregates/old-contract/one/commands";
        let (status, body) = call(
            &client,
            &server,
            Method::POST,
            path,
            Some(json!({"type": "Ping", "data": null})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], json!({"pings": pings}));
    }
}
