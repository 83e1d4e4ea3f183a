//! Nothing a client sends can wedge a real `foldhost serve`: events an aggregate cannot fold
//! are refused at the door, a stream with one already stored answers a clear error while the
//! others serve, commands are idempotent by key, and plugin names cannot overlap.

mod serve;

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, Server, json};

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

fn reason(body: &Value) -> &str {
    body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_owning_aggregate_cannot_fold_are_refused_and_nothing_is_stored() {
    let dirs = Dirs::new();
    let api = Api::new(Server::start(&dirs, Some(TOKEN)));
    let (status, body) = api
        .command("bank-account", "y", "Open", json!({"owner": "Y"}))
        .await;
    assert_eq!(status, 200, "{body}");

    // The poison: a deposit whose amount is no number.
    let poison = json!({"type": "Deposited", "data": {"amount": "lots"}});
    let (status, body) = api.append("bank-account-y", json!([poison])).await;
    assert_eq!(status, 422, "{body}");
    assert!(reason(&body).contains("lots"), "{body}");
    assert_eq!(body["index"], 0, "{body}");
    // In a batch, the whole append is refused and the culprit named.
    let good = json!({"type": "Deposited", "data": {"amount": 5}});
    let unknown = json!({"type": "Teleported", "data": {}});
    let (status, body) = api.append("bank-account-y", json!([good, unknown])).await;
    assert_eq!((status, body["index"].clone()), (422, json!(1)), "{body}");
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
