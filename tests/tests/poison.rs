//! Nothing a client sends can wedge a real `foldhost serve`: events an aggregate cannot fold
//! are refused at the door, a stream with one already stored answers a clear error while the
//! others serve, commands are idempotent by key, plugin names cannot overlap, projections
//! park what they cannot fold (or stop, by policy) and queries cannot hurt them.

use crate::serve;

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, json};

const TOKEN: &str = "s3cret-admin-token";

/// Talks to one server, optionally with the admin token.
struct Api {
    client: Client,
    server: Server,
}

impl Api {
    fn new(server: Server) -> Api {
        Api {
            client: Client::new(),
            server,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        json(self.client.get(self.server.url(path)).send().await.unwrap()).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let request = self.client.post(self.server.url(path)).json(&body);
        json(request.send().await.unwrap()).await
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let request = self.client.post(self.server.url(path)).json(&body);
        json(request.bearer_auth(TOKEN).send().await.unwrap()).await
    }

    async fn put_plugin(&self, name: &str, artifact: &str) -> (u16, Value) {
        let bytes = std::fs::read(foldhost_plugins::path(artifact)).unwrap();
        let request = self
            .client
            .put(self.server.url(&format!("/plugins/{name}")))
            .bearer_auth(TOKEN)
            .body(bytes);
        json(request.send().await.unwrap()).await
    }

    async fn command(&self, plugin: &str, id: &str, kind: &str, data: Value) -> (u16, Value) {
        let path = format!("/aggregates/{plugin}/{id}/commands");
        self.post(&path, json!({"type": kind, "data": data})).await
    }

    async fn keyed_command(&self, id: &str, key: &str, kind: &str, data: Value) -> (u16, Value) {
        let url = self
            .server
            .url(&format!("/aggregates/bank-account/{id}/commands"));
        let request = self
            .client
            .post(url)
            .header("Idempotency-Key", key)
            .json(&json!({"type": kind, "data": data}));
        json(request.send().await.unwrap()).await
    }

    async fn admin_put(&self, path: &str, body: Value) -> (u16, Value) {
        let request = self.client.put(self.server.url(path)).json(&body);
        json(request.bearer_auth(TOKEN).send().await.unwrap()).await
    }

    async fn metrics(&self) -> String {
        let response = self.client.get(self.server.url("/metrics")).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// Plugin `name` as `GET /plugins` lists it.
    async fn plugin(&self, name: &str) -> Value {
        let (status, list) = self.get("/plugins").await;
        assert_eq!(status, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not loaded: {list}"))
            .clone()
    }

    /// Polls `GET /plugins` until plugin `name` satisfies `done` (a failure guard, not a timing
    /// assertion).
    async fn wait_plugin(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let info = self.plugin(name).await;
            if done(&info) {
                return info;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} never got there: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads `artifact` as `name`, and waits until the new build was given up on (none
    /// pending, and an error to say why): what `name` runs then.
    async fn upload_refused(&self, name: &str, artifact: &str) -> Value {
        let (status, body) = self.put_plugin(name, artifact).await;
        assert_eq!(status, 200, "{body}");
        self.wait_plugin(name, |p| {
            p["pending"].is_null() && p["last_error"].is_string()
        })
        .await
    }

    /// Waits until projection `name` (with no new version pending) is live at `position`.
    async fn wait_live(&self, name: &str, position: u64) -> Value {
        self.wait_plugin(name, |p| {
            p["status"] == json!({"status": "live", "position": position}) && p["pending"].is_null()
        })
        .await
    }

    async fn analytics(&self) -> Value {
        let (status, body) = self.get("/projections/bank-analytics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn query(&self, projection: &str, query: &str) -> (u16, Value) {
        self.get(&format!("/projections/{projection}/query/{query}"))
            .await
    }

    /// Runs query `query` until it answers 200 (within [`PATIENCE`]), and its answer.
    async fn query_until_served(&self, projection: &str, query: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.query(projection, query).await;
            if status == 200 {
                return body;
            }
            assert!(started.elapsed() < PATIENCE, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn append(&self, stream: &str, events: Value) -> (u16, Value) {
        let path = format!("/streams/{stream}/events");
        self.post(&path, json!({"events": events})).await
    }

    async fn stream_types(&self, stream: &str) -> Vec<String> {
        let (status, events) = self.get(&format!("/streams/{stream}/events")).await;
        assert_eq!(status, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A server whose plugins directory holds the examples but `bank-account`: nothing checks
/// what goes into its streams, as before the aggregate was loaded. Plus `extra` artifacts.
fn without_bank_account(extra: &[&str]) -> Dirs {
    let dirs = Dirs::new();
    std::fs::remove_file(dirs.plugins.join("bank-account.wasm")).unwrap();
    for artifact in extra {
        let to = dirs.plugins.join(format!("{artifact}.wasm"));
        std::fs::copy(foldhost_plugins::path(artifact), to).unwrap();
    }
    dirs
}

/// Positions 1-5: two accounts, and at 4 the issue's poison: a deposit of "lots".
async fn history_with_poison(api: &Api) {
    let history = [
        ("x", json!({"type": "Opened", "data": {"owner": "X"}})),
        ("x", json!({"type": "Deposited", "data": {"amount": 10}})),
        ("y", json!({"type": "Opened", "data": {"owner": "Y"}})),
        (
            "y",
            json!({"type": "Deposited", "data": {"amount": "lots"}}),
        ),
        ("x", json!({"type": "Deposited", "data": {"amount": 5}})),
    ];
    for (id, event) in history {
        let (status, body) = api
            .append(&format!("bank-account-{id}"), json!([event]))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

fn reason(body: &Value) -> &str {
    body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {body}"))
}

/// A refused append's message and reason name the refused event by its `index` in the append,
/// never by a position: it was not stored.
fn assert_names_no_position(body: &Value, index: usize) {
    let error = body["error"].as_str().unwrap_or_default();
    for text in [error, reason(body)] {
        assert!(!text.contains("position"), "{body}");
        assert!(
            text.contains(&format!("event at index {index} of the append")),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_owning_aggregate_cannot_fold_are_refused_and_nothing_is_stored() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let (status, body) = api
        .command("bank-account", "y", "Open", json!({"owner": "Y"}))
        .await;
    assert_eq!(status, 200, "{body}");

    // The issue's poison: a deposit whose amount is no number.
    let poison = json!({"type": "Deposited", "data": {"amount": "lots"}});
    let (status, body) = api.append("bank-account-y", json!([poison])).await;
    assert_eq!(status, 422, "{body}");
    assert!(reason(&body).contains("lots"), "{body}");
    assert_eq!(body["index"], 0, "{body}");
    // Nothing was stored, so no position is claimed: the event is named by its index.
    assert_names_no_position(&body, 0);
    // In a batch, the whole append is refused and the culprit named.
    let good = json!({"type": "Deposited", "data": {"amount": 5}});
    let unknown = json!({"type": "Teleported", "data": {}});
    let (status, body) = api.append("bank-account-y", json!([good, unknown])).await;
    assert_eq!((status, body["index"].clone()), (422, json!(1)), "{body}");
    assert_names_no_position(&body, 1);
    assert_eq!(api.stream_types("bank-account-y").await, ["Opened"]);

    // What the aggregate folds goes in, and commands see it.
    let (status, body) = api.append("bank-account-y", json!([good, good])).await;
    assert_eq!(
        (status, body["last_version"].clone()),
        (200, json!(3)),
        "{body}"
    );
    let (_, state) = api.get("/aggregates/bank-account/y").await;
    assert_eq!(state["state"]["balance"], 10, "{state}");
    // The client's expected version still rules.
    let (status, body) = api
        .post(
            "/streams/bank-account-y/events",
            json!({"expected_version": 1, "events": [good]}),
        )
        .await;
    assert_eq!(
        (status, body["current_version"].clone()),
        (409, json!(3)),
        "{body}"
    );
    // Streams no aggregate owns take anything, as before.
    let (status, body) = api.append("audit-1", json!([poison])).await;
    assert_eq!(status, 200, "{body}");

    // The bypass needs the admin token.
    let unchecked = json!({"events": [poison]});
    let path = "/streams/bank-account-y/events?validate=false";
    let (status, body) = api.post(path, unchecked.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(api.stream_types("bank-account-y").await.len(), 3);
    let (status, body) = api.admin_post(path, unchecked).await;
    assert_eq!(
        (status, body["last_position"].clone()),
        (200, json!(5)),
        "{body}"
    );

    // Now the stream holds an event this build cannot fold: reads and commands say which
    // and why; every other stream keeps serving.
    for (status, body) in [
        api.get("/aggregates/bank-account/y").await,
        api.command("bank-account", "y", "Deposit", json!({"amount": 1}))
            .await,
        api.append("bank-account-y", json!([good])).await,
    ] {
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["position"], 5, "{body}");
        assert_eq!(body["version"], 4, "{body}");
        assert!(reason(&body).contains("lots"), "{body}");
    }
    let (status, body) = api
        .command("bank-account", "z", "Open", json!({"owner": "Z"}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Plugins run on a 128 KiB stack and are built to inline deeply (larger frames): query
/// arguments nested as deep as JSON may be (serde_json stops at 128 levels) still reach a
/// query, whose SDK decodes them into a `serde_json::Value` recursively, level by level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_arguments_nested_as_deep_as_json_allows_fit_on_the_plugins_stack() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    api.wait_live("bank-analytics", 0).await;

    let junk = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let url = api.server.url("/projections/bank-analytics/query/top");
    let request = api.client.get(url).query(&[("n", "3"), ("junk", &junk)]);
    let (status, body) = json(request.send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_events_are_stored_never_answers_5xx() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let (status, body) = api.put_plugin("hostile", foldhost_plugins::HOSTILE).await;
    assert_eq!(status, 200, "{body}");
    // `Poison` decides an event that hostile's own apply then panics on: the event is stored,
    // so the command succeeded; only the state is unknown.
    let (status, body) = api.command("hostile", "h", "Poison", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    assert_eq!(body["events"][0]["type"], "Poison", "{body}");
    assert_eq!(body["state"], Value::Null, "{body}");
    assert!(
        body["state_error"].as_str().unwrap().contains("stored"),
        "{body}"
    );
    // From then on the stream names its poison; other hostile streams work.
    let (status, body) = api.command("hostile", "h", "Ping", Value::Null).await;
    assert_eq!(
        (status, body["position"].clone()),
        (500, json!(1)),
        "{body}"
    );
    let (status, body) = api.command("hostile", "other", "Ping", Value::Null).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_events_of_950_kb_fold_on_one_stream() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, None));
    let (status, body) = api
        .command("bank-account", "big", "Open", json!({"owner": "Big"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let memo = "m".repeat(950_000);
    for _ in 0..80 {
        let deposit = json!({"type": "Deposited", "data": {"amount": 1, "memo": memo}});
        let (status, body) = api.append("bank-account-big", json!([deposit])).await;
        assert_eq!(status, 200, "{body}");
    }
    // A fresh server has nothing cached: the state is folded from the journal, 76 MB in all.
    let api = Api::new({
        api.server.terminate();
        Server::start(&dirs, None)
    });
    let (status, body) = api.get("/aggregates/bank-account/big").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["version"].clone(), body["state"]["balance"].clone()),
        (json!(81), json!(80))
    );
    // In batches that fit the plugin's memory: not one call had to fail first.
    let metrics = api
        .client
        .get(api.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("foldhost_plugin_traps_total{plugin=\"bank-account\"} 0"),
        "{metrics}"
    );
    let (status, body) = api
        .command("bank-account", "big", "Withdraw", json!({"amount": 80}))
        .await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(0)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_deposits_once() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, None));
    let (status, _) = api
        .keyed_command("k", "open-k", "Open", json!({"owner": "K"}))
        .await;
    assert_eq!(status, 200);
    let deposit = json!({"amount": 10});
    let (status, first) = api
        .keyed_command("k", "deposit-1", "Deposit", deposit.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["version"].clone(), first["state"]["balance"].clone()),
        (json!(2), json!(10))
    );

    // The client's natural retry: the original outcome, nothing appended.
    let (status, retry) = api
        .keyed_command("k", "deposit-1", "Deposit", deposit.clone())
        .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry, first);
    // Even after the account moved on, the retry answers what that command did.
    let (_, other) = api
        .keyed_command("k", "deposit-2", "Deposit", json!({"amount": 5}))
        .await;
    assert_eq!(other["state"]["balance"], 15, "{other}");
    let (status, late) = api
        .keyed_command("k", "deposit-1", "Deposit", deposit.clone())
        .await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late, first);
    // The same command serialized otherwise (a client's other JSON library): the same outcome.
    let respaced = api
        .client
        .post(api.server.url("/aggregates/bank-account/k/commands"))
        .header("Idempotency-Key", "deposit-1")
        .header("Content-Type", "application/json")
        .body(r#"{"data": { "amount" : 10 }, "type": "Deposit"}"#)
        .send()
        .await
        .unwrap();
    let (status, respaced) = json(respaced).await;
    assert_eq!(status, 200, "{respaced}");
    assert_eq!(respaced, first);
    // The key with another command: refused, nothing appended.
    let (status, body) = api
        .keyed_command("k", "deposit-1", "Deposit", json!({"amount": 11}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("deposit-1"),
        "{body}"
    );
    // Concurrent retries of a new key: one deposit.
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let url = api.server.url("/aggregates/bank-account/k/commands");
            let client = api.client.clone();
            tokio::spawn(async move {
                let request = client
                    .post(url)
                    .header("Idempotency-Key", "deposit-3")
                    .json(&json!({"type": "Deposit", "data": {"amount": 100}}));
                json(request.send().await.unwrap()).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for retry in retries {
        let (status, body) = retry.await.unwrap();
        assert_eq!(status, 200, "{body}");
        answers.push(body["events"].clone());
    }
    assert!(answers.iter().all(|events| *events == answers[0]));

    let (_, state) = api.get("/aggregates/bank-account/k").await;
    assert_eq!(
        (state["version"].clone(), state["state"]["balance"].clone()),
        (json!(4), json!(115))
    );
    assert_eq!(
        api.stream_types("bank-account-k").await,
        ["Opened", "Deposited", "Deposited", "Deposited"]
    );
    // Without a key, every command counts; a rejection is not remembered.
    let (status, _) = api
        .command("bank-account", "k", "Deposit", deposit.clone())
        .await;
    assert_eq!(status, 200);
    let withdraw = json!({"amount": 1000});
    let (status, _) = api
        .keyed_command("k", "w", "Withdraw", withdraw.clone())
        .await;
    assert_eq!(status, 422);
    api.command("bank-account", "k", "Deposit", json!({"amount": 875}))
        .await;
    let (status, body) = api.keyed_command("k", "w", "Withdraw", withdraw).await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(0)),
        "{body}"
    );
    let (status, body) = api.keyed_command("k", "", "Deposit", deposit).await;
    assert_eq!(status, 400, "{body}");
}

/// The id the host gives event `index` of the command with idempotency `key` on `stream`
/// (`derived_id` in `host/src/runtime/idempotency.rs`): anyone can compute it.
fn derived_id(stream: &str, key: &str, index: usize) -> uuid::Uuid {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6c_6468_6f73_7449_6465_6d70_6f74_656e);
    let name = format!("{}:{stream}{}:{key}{index}", stream.len(), key.len());
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_whose_id_another_stream_took_is_refused_never_answered() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, None));
    let (status, _) = api
        .command("bank-account", "victim", "Open", json!({"owner": "V"}))
        .await;
    assert_eq!(status, 200);
    // Another client appends, to a stream of its own, an event with the id the victim's next
    // keyed command will derive.
    let taken = derived_id("bank-account-victim", "deposit-1", 0);
    let event = json!({"id": taken, "type": "Deposited", "data": {"amount": 1_000_000}});
    let (status, body) = api
        .post("/streams/squatter/events", json!({"events": [event]}))
        .await;
    assert_eq!(status, 200, "{body}");

    // The victim's command is refused, not answered with that event as its stored outcome.
    let (status, body) = api
        .keyed_command("victim", "deposit-1", "Deposit", json!({"amount": 10}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("squatter"),
        "{body}"
    );
    let (_, state) = api.get("/aggregates/bank-account/victim").await;
    assert_eq!(
        (state["version"].clone(), state["state"]["balance"].clone()),
        (json!(1), json!(0))
    );
    // Its other keys work.
    let (status, body) = api
        .keyed_command("victim", "deposit-2", "Deposit", json!({"amount": 10}))
        .await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(10)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_whose_names_overlap_are_refused() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    // `bank` would own `bank-account-alice` too.
    let (status, body) = api
        .put_plugin("bank", foldhost_plugins::HOSTILE_AS_BANK)
        .await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("bank-account") && error.contains("\"bank\""),
        "{body}"
    );
    let (_, list) = api.get("/plugins").await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");

    // The other way round too: once `bank` is loaded, `bank-account` cannot come back.
    let response = api
        .client
        .delete(api.server.url("/plugins/bank-account"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = api
        .put_plugin("bank", foldhost_plugins::HOSTILE_AS_BANK)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .put_plugin("bank-account", foldhost_plugins::BANK_ACCOUNT)
        .await;
    assert_eq!(status, 409, "{body}");
    // Projections own no streams: `bank-analytics` was never in the way.
    let (_, list) = api.get("/plugins").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bank", "bank-analytics", "shopping-cart"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_listed_a_page_at_a_time() {
    let dirs = without_bank_account(&[]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    for n in 1..=5 {
        let poison = json!([{"type": "Deposited", "data": {"amount": "lots"}}]);
        let (status, body) = api.append(&format!("bank-account-{n}"), poison).await;
        assert_eq!(status, 200, "{body}");
    }
    let info = api.wait_live("bank-analytics", 5).await;
    assert_eq!(info["parked"], 5, "{info}");
    let page = |query: &'static str| {
        let api = &api;
        async move {
            let (status, page) = api
                .get(&format!("/plugins/bank-analytics/parked{query}"))
                .await;
            assert_eq!(status, 200, "{page}");
            let positions: Vec<u64> = page
                .as_array()
                .unwrap()
                .iter()
                .map(|parked| parked["position"].as_u64().unwrap())
                .collect();
            positions
        }
    };
    assert_eq!(page("?limit=2").await, [1, 2]);
    assert_eq!(page("?after=2&limit=2").await, [3, 4]);
    assert_eq!(page("?after=4").await, [5]);
    assert_eq!(page("?after=5").await, [] as [u64; 0]);
    assert_eq!(page("").await, [1, 2, 3, 4, 5]);
    let (status, body) = api.get("/plugins/bank-analytics/parked?limit=lots").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_already_in_the_log_is_parked_and_the_projection_stays_live() {
    let dirs = without_bank_account(&[]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    history_with_poison(&api).await;
    let info = api.wait_live("bank-analytics", 5).await;
    assert_eq!(info["parked"], 1, "{info}");
    // The good events around it all count.
    let state = &api.analytics().await["state"];
    assert_eq!(
        (
            state["open_accounts"].clone(),
            state["total_balance"].clone()
        ),
        (json!(2), json!(15)),
        "{state}"
    );
    let (status, parked) = api.get("/plugins/bank-analytics/parked").await;
    assert_eq!(status, 200, "{parked}");
    let parked = &parked[0];
    assert_eq!(
        (&parked["position"], &parked["stream"], &parked["type"]),
        (&json!(4), &json!("bank-account-y"), &json!("Deposited")),
        "{parked}"
    );
    assert!(reason(parked).contains("lots"), "{parked}");
    assert_eq!(parked["attempts"], 1, "{parked}");
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("foldhost_projection_parked{plugin=\"bank-analytics\"} 1"),
        "{metrics}"
    );
    // It keeps folding what comes next.
    let more = json!([{"type": "Deposited", "data": {"amount": 1}}]);
    api.append("bank-account-x", more).await;
    api.wait_live("bank-analytics", 6).await;
    assert_eq!(api.analytics().await["state"]["total_balance"], 16);

    // Parked durably: a restart neither forgets the event nor tries it again.
    api.server.terminate();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let info = api.wait_live("bank-analytics", 6).await;
    assert_eq!(
        (info["parked"].clone(), info["replayed"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(api.analytics().await["state"]["total_balance"], 16);

    // Loaded now, the aggregate names the stream's poison; its other streams serve.
    let (status, body) = api
        .put_plugin("bank-account", foldhost_plugins::BANK_ACCOUNT)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.get("/aggregates/bank-account/y").await;
    assert_eq!(
        (status, body["position"].clone()),
        (500, json!(4)),
        "{body}"
    );
    let (status, body) = api.get("/aggregates/bank-account/x").await;
    assert_eq!(
        (status, body["state"]["balance"].clone()),
        (200, json!(16)),
        "{body}"
    );
    let (status, body) = api.get("/plugins/bank-account/parked").await;
    assert_eq!(status, 404, "{body}");
}

/// A client can append events a projection cannot fold at will. Each costs one try on a
/// rebuilt state (no retries, no pauses), and the checkpoint that passes parked events records
/// them in the same write, so a kill -9 after it neither forgets one nor folds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_poison_events_is_parked_at_the_first_try_and_survives_a_kill() {
    let dirs = without_bank_account(&[]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    // 4,500 deposits, one in 50 poison: past the checkpoint taken every 4,000 events.
    let (per_append, appends) = (500, 9);
    for account in 0..appends {
        let events: Vec<Value> = (0..per_append)
            .map(|i| match (account * per_append + i) % 50 {
                0 => json!({"type": "Deposited", "data": {"amount": "lots"}}),
                _ => json!({"type": "Deposited", "data": {"amount": 1}}),
            })
            .collect();
        let (status, body) = api
            .append(&format!("bank-account-{account}"), json!(events))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let head = (appends * per_append) as u64;
    let (poisons, good) = (head / 50, head - head / 50);
    let info = api.wait_live("bank-analytics", head).await;
    assert_eq!(info["parked"], poisons, "{info}");
    let (status, parked) = api.get("/plugins/bank-analytics/parked?limit=1000").await;
    assert_eq!(status, 200, "{parked}");
    let parked = parked.as_array().unwrap();
    assert_eq!(parked.len() as u64, poisons);
    assert!(parked.iter().all(|p| p["attempts"] == 1), "{parked:?}");
    assert_eq!(api.analytics().await["state"]["total_balance"], good);

    // Dropping the server kills it: no checkpoint on the way out.
    drop(api);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let info = api.wait_live("bank-analytics", head).await;
    assert_eq!(info["parked"], poisons, "{info}");
    let replayed = info["replayed"].as_u64().unwrap();
    assert!(
        replayed < head,
        "it did not resume from a checkpoint: {info}"
    );
    assert_eq!(api.analytics().await["state"]["total_balance"], good);
    // Listed a page at a time: the records the checkpoint wrote come from the journal (memory
    // holds only their positions), the ones parked again since from memory.
    let mut listed: Vec<Value> = Vec::new();
    loop {
        let after = listed.last().map_or(0, |p| p["position"].as_u64().unwrap());
        let path = format!("/plugins/bank-analytics/parked?after={after}&limit=50");
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        listed.extend(page);
    }
    let positions: Vec<u64> = listed
        .iter()
        .map(|p| p["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (0..poisons).map(|n| n * 50 + 1).collect::<Vec<_>>()
    );
    assert!(
        listed
            .iter()
            .all(|p| p["attempts"] == 1 && reason(p).contains("lots")),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_fold_once_the_fix_is_there() {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    history_with_poison(&api).await;
    assert_eq!(api.wait_live("bank-analytics", 5).await["parked"], 1);

    // A fixed build replays history in order, folds the event in its place, takes over.
    let (status, body) = api
        .put_plugin("bank-analytics", foldhost_plugins::BANK_ANALYTICS_LENIENT)
        .await;
    assert_eq!(status, 200, "{body}");
    let info = api
        .wait_plugin("bank-analytics", |p| {
            p["version"] == "1.0.1" && p["pending"].is_null()
        })
        .await;
    assert_eq!(info["parked"], 0, "{info}");
    let (_, parked) = api.get("/plugins/bank-analytics/parked").await;
    assert_eq!(parked, json!([]));
    let state = &api.analytics().await["state"];
    let deposits: u64 = state["deposits_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|day| day["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        (deposits, state["total_balance"].clone()),
        (3, json!(15)),
        "{state}"
    );

    // Replaying parked events folds them at the head: mischief folds a Poison only after
    // an Antidote.
    let hostile = |kind: &str| json!([{"type": kind, "data": null}]);
    for kind in ["Ponged", "Poison", "Ponged"] {
        api.append("hostile-1", hostile(kind)).await;
    }
    assert_eq!(api.wait_live("mischief", 8).await["parked"], 1);
    let replay = "/plugins/mischief/parked/replay";
    let (status, body) = api.post(replay, Value::Null).await;
    assert_eq!(status, 401, "{body}");
    let (status, report) = api.admin_post(replay, Value::Null).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report, json!({"replayed": 0, "still_parked": 1}));
    let (_, parked) = api.get("/plugins/mischief/parked").await;
    assert_eq!(parked[0]["attempts"], 2, "{parked}");
    assert!(reason(&parked[0]).contains("panicked"), "{parked}");

    api.append("hostile-1", hostile("Antidote")).await;
    api.wait_live("mischief", 9).await;
    // Queried first: the readers' copy at position 9 is stale once the replay folds.
    let before = json!({"pongs": 2, "poisons": 0, "antidotes": 1});
    assert_eq!(api.query("mischief", "count").await, (200, before));
    let (_, report) = api.admin_post(replay, Value::Null).await;
    assert_eq!(report, json!({"replayed": 1, "still_parked": 0}));
    let counts = json!({"pongs": 2, "poisons": 1, "antidotes": 1});
    assert_eq!(api.query("mischief", "count").await, (200, counts.clone()));

    // Folded, checkpointed and unparked in one write: even after a kill -9 (dropping the
    // server kills it), the restart neither loses nor repeats it.
    drop(api);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    assert_eq!(api.wait_live("mischief", 9).await["parked"], 0);
    assert_eq!(api.query("mischief", "count").await, (200, counts));
}

/// A projection whose snapshots the plugin cannot restore is neither stuck nor unreadable:
/// its readers' copy, the rebuild after a poison event and a restart fold from position 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_snapshots_do_not_restore_folds_from_the_start() {
    snapshots_that_do_not_restore("Garbled", "garbled").await;
}

/// The same when restoring them runs out of time as often as an event may before it is given
/// up on: a busy machine would pass, bytes the plugin spins on do not. Until then a query
/// fails with the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_snapshots_take_too_long_to_restore_folds_from_the_start() {
    snapshots_that_do_not_restore("Stalled", "stalled").await;
}

/// mischief's state after `spoiler` (an event after which its snapshots do not restore),
/// which sets `flag`.
async fn snapshots_that_do_not_restore(spoiler: &str, flag: &str) {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let hostile =
        |kind: &str, count: usize| json!(vec![json!({"type": kind, "data": null}); count]);
    for kind in ["Ponged", spoiler, "Ponged"] {
        api.append("hostile-1", hostile(kind, 1)).await;
    }
    api.wait_live("mischief", 3).await;
    let count = |pongs: u64| json!({"pongs": pongs, "poisons": 0, "antidotes": 0, flag: true});
    assert_eq!(api.query_until_served("mischief", "count").await, count(2));

    // The first poison is parked far enough past the last snapshot (none) that the state
    // is snapshotted in memory; the second one's rebuild starts from that snapshot.
    api.append("hostile-1", hostile("Ponged", 70)).await;
    api.append("hostile-1", hostile("Poison", 1)).await;
    api.append("hostile-1", hostile("Poison", 1)).await;
    api.append("hostile-1", hostile("Ponged", 1)).await;
    let info = api.wait_live("mischief", 76).await;
    assert_eq!(info["parked"], 2, "{info}");
    assert_eq!(api.query_until_served("mischief", "count").await, count(73));

    api.server.terminate();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let info = api.wait_live("mischief", 76).await;
    assert_eq!(info["parked"], 2, "{info}");
    assert_eq!(api.query_until_served("mischief", "count").await, count(73));
}

/// A reader whose snapshot of the fold traps discards the fold, and the worker makes it again
/// at once: the projection does not sit `live` with no state until the next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_a_reader_discarded_is_made_again_without_waiting_for_a_commit() {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    for kind in ["Ponged", "Jammed"] {
        api.append("hostile-1", json!([{"type": kind, "data": null}]))
            .await;
    }
    api.wait_live("mischief", 2).await;
    let (status, body) = api.query("mischief", "count").await;
    assert_eq!(status, 500, "{body}");
    // Every read snapshots the fold again, fails the same way and discards it, as soon as
    // there is a fold to read: never a state of null at position 0 for long. Twice: the
    // first time, the worker's next checkpoint (every 5 s) would also make it again, but it
    // takes no more checkpoints once one failed.
    for _ in 0..2 {
        let started = Instant::now();
        loop {
            let (status, body) = api.get("/projections/mischief").await;
            if status == 500 {
                let error = body["error"].as_str().unwrap();
                assert!(error.contains("taking a checkpoint"), "{body}");
                break;
            }
            assert!(started.elapsed() < PATIENCE, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(api.plugin("mischief").await["status"]["status"], "live");
}

/// A state that cannot be made again is a fault, not a retry for ever: with snapshots that do
/// not restore, a rebuild folds from position 1, where an event replayed at the head does
/// not fold in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_cannot_rebuild_its_state_faults_with_the_reason() {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let hostile = |kind: &str| json!([{"type": kind, "data": null}]);
    for kind in ["Ponged", "Garbled", "Poison", "Antidote"] {
        api.append("hostile-1", hostile(kind)).await;
    }
    assert_eq!(api.wait_live("mischief", 4).await["parked"], 1);
    let replay = "/plugins/mischief/parked/replay";
    let (status, report) = api.admin_post(replay, Value::Null).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report, json!({"replayed": 1, "still_parked": 0}));

    // Venom never folds: the state before it is rebuilt, from position 1.
    api.append("hostile-1", hostile("Venom")).await;
    let info = api
        .wait_plugin("mischief", |p| p["status"]["status"] == "faulted")
        .await;
    let status = &info["status"];
    assert_eq!(status["position"], 4, "{info}");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains("rebuilding its state at position 4")
            && reason.contains("applying events at positions 3..=3"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_traps_leaves_the_projection_live_and_the_next_query_works() {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let ponged = json!([{"type": "Ponged", "data": null}]);
    for _ in 0..3 {
        api.append("hostile-1", ponged.clone()).await;
    }
    api.wait_live("mischief", 3).await;
    for (query, says) in [
        ("panic", "panicked"),
        ("loop", "time limit"),
        ("allocate", "memory"),
        ("huge?mib=40", "memory limit"),
    ] {
        let (status, body) = api.query("mischief", query).await;
        assert_eq!(status, 500, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
        let (status, count) = api.query("mischief", "count").await;
        assert_eq!(
            (status, count["pongs"].clone()),
            (200, json!(3)),
            "after {query}"
        );
        assert_eq!(api.plugin("mischief").await["status"]["status"], "live");
    }
    // The fold never noticed.
    api.append("hostile-1", ponged).await;
    api.wait_live("mischief", 4).await;
    assert_eq!(api.query("mischief", "count").await.1["pongs"], 4);

    // A crowd of queries that loop takes turns, a few at a time: the ones that wait too
    // long are refused, and commands and other projections are served meanwhile.
    let crowd: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (
                api.client.clone(),
                api.server.url("/projections/mischief/query/loop"),
            );
            tokio::spawn(async move { json(client.get(url).send().await.unwrap()).await })
        })
        .collect();
    let (status, body) = api
        .post(
            "/streams/bank-account-z/events",
            json!({"events": [{"type": "Opened", "data": {"owner": "Z"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    api.wait_live("bank-analytics", 5).await;
    assert_eq!(api.analytics().await["state"]["open_accounts"], 1);
    let mut statuses = Vec::new();
    for query in crowd {
        statuses.push(query.await.unwrap().0);
    }
    assert!(
        statuses.iter().all(|s| *s == 500 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(api.query("mischief", "count").await.1["pongs"], 4);
}

/// An uploaded build that stops at an event while it catches up never takes over, and a
/// restart serves what served before it, not the refused build kept for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_build_that_faults_catching_up_does_not_serve_after_a_restart() {
    let dirs = without_bank_account(&[]);
    let lenient = foldhost_plugins::path(foldhost_plugins::BANK_ANALYTICS_LENIENT);
    std::fs::copy(lenient, dirs.plugins.join("bank-analytics.wasm")).unwrap();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let policy = "/plugins/bank-analytics/policy";
    let (status, _) = api.admin_put(policy, json!({"policy": "stop"})).await;
    assert_eq!(status, 200);
    history_with_poison(&api).await;
    assert_eq!(api.wait_live("bank-analytics", 5).await["version"], "1.0.1");

    let info = api
        .upload_refused("bank-analytics", foldhost_plugins::BANK_ANALYTICS)
        .await;
    assert_eq!(info["version"], "1.0.1", "{info}");

    drop(api);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let info = api.wait_live("bank-analytics", 5).await;
    assert_eq!(info["version"], "1.0.1", "{info}");
}

/// An uploaded build that cannot even make its blank state faults instead of retrying for
/// ever, so the build it was to replace is put back, and serves after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_build_whose_blank_state_traps_is_not_kept() {
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    api.append("hostile-1", json!([{"type": "Ponged", "data": null}]))
        .await;
    api.wait_live("mischief", 1).await;

    let info = api
        .upload_refused("mischief", foldhost_plugins::MISCHIEF_BROKEN_INIT)
        .await;
    assert_eq!(info["version"], "1.0.0", "{info}");
    let error = info["last_error"].as_str().unwrap();
    assert!(error.contains("making its state"), "{info}");

    drop(api);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let info = api.wait_live("mischief", 1).await;
    assert_eq!(info["version"], "1.0.0", "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_policy_faults_like_kurrentdb_until_an_operator_acts() {
    // mischief follows the same log: it shows when new events have reached the projections.
    let dirs = without_bank_account(&[foldhost_plugins::MISCHIEF]);
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let policy = "/plugins/bank-analytics/policy";
    let (status, body) = api.admin_put(policy, json!({"policy": "skip"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, info) = api.admin_put(policy, json!({"policy": "stop"})).await;
    assert_eq!(
        (status, info["policy"].clone()),
        (200, json!("stop")),
        "{info}"
    );

    history_with_poison(&api).await;
    let info = api
        .wait_plugin("bank-analytics", |p| p["status"]["status"] == "faulted")
        .await;
    assert_eq!(info["status"]["position"], 4, "{info}");
    let why = info["status"]["reason"].as_str().unwrap();
    assert!(why.contains("lots"), "{info}");
    assert_eq!(info["parked"], 0, "{info}");
    // Stopped before the event: its state is readable as of the event before.
    let faulted = api.analytics().await;
    assert_eq!(
        (
            faulted["position"].clone(),
            faulted["state"]["total_balance"].clone()
        ),
        (json!(3), json!(10)),
        "{faulted}"
    );
    // It stays there, whatever comes, until an operator acts. Once mischief has followed the
    // log past a new event, the event is there for bank-analytics too; its status is then
    // watched for a while (a faulted runner reports nothing when it stays put).
    api.append(
        "bank-account-x",
        json!([{"type": "Deposited", "data": {"amount": 1}}]),
    )
    .await;
    api.wait_live("mischief", 6).await;
    for _ in 0..15 {
        assert_eq!(api.plugin("bank-analytics").await["status"], info["status"]);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = api
        .admin_post("/plugins/bank-analytics/parked/replay", Value::Null)
        .await;
    assert_eq!(status, 409, "{body}");

    // A restart under the same policy stops at the same event again...
    let (status, body) = api
        .admin_post("/plugins/bank-analytics/restart", Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let again = api
        .wait_plugin("bank-analytics", |p| p["status"]["status"] == "faulted")
        .await;
    assert_eq!(again["status"]["position"], 4, "{again}");
    // ...and after switching to park, goes past it.
    let (status, _) = api.admin_put(policy, json!({"policy": "park"})).await;
    assert_eq!(status, 200);
    let (status, body) = api
        .admin_post("/plugins/bank-analytics/restart", Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let info = api.wait_live("bank-analytics", 6).await;
    assert_eq!(info["parked"], 1, "{info}");
    assert_eq!(api.analytics().await["state"]["total_balance"], 16);

    // A reset rebuilds from position 1 in the background and takes over at the head; the
    // same build parks the same event.
    let (status, body) = api
        .admin_post("/plugins/bank-analytics/reset", Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let info = api
        .wait_plugin("bank-analytics", |p| {
            p["pending"].is_null() && p["replayed"] == 6
        })
        .await;
    assert_eq!(info["parked"], 1, "{info}");
    assert_eq!(api.analytics().await["state"]["total_balance"], 16);
}
