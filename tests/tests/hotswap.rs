//! Hot-swapping plugins on a real `foldhost serve` while it serves (issue 5): commands keep
//! succeeding and none is lost, the swapped-in projection equals an offline replay of the new
//! version, and after a restart it resumes from its checkpoint instead of replaying everything.

use crate::serve;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, json};

const TOKEN: &str = "hot-swap-admin-token";
/// Concurrent clients sending deposits.
const CLIENTS: usize = 16;
/// Accounts every client deposits to, besides its own.
const SHARED: [&str; 3] = ["shared-0", "shared-1", "shared-2"];
/// Deposits acknowledged between two steps of a swap, so that each step happens under load.
const DEPOSITS_PER_STEP: u64 = 200;
/// Failure guard: requests one client sends at most.
const MAX_REQUESTS: usize = 100_000;

/// With 16 clients depositing to their own and to shared accounts, swapping the projection
/// (`bank-analytics` → v2) and then the aggregate (`bank-account` → v2) via `PUT /plugins`
/// answers every request with 2xx; every acknowledged deposit is in the final balances and
/// in the projection; `GET /plugins` lists the new builds; and the projection state equals
/// `foldhost replay` of v2 over the same journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_swap_under_concurrent_commands_without_losing_one() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = Client::new();
    let accounts: Vec<String> = (0..CLIENTS)
        .map(|n| format!("own-{n}"))
        .chain(SHARED.map(String::from))
        .collect();
    for id in &accounts {
        command(&http, &server, id, "Open", json!({"owner": id})).await;
    }
    wait_live_at_head(&http, &server).await;
    let old = plugins(&http, &server).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(deposit_loop(
                n,
                server.url.clone(),
                stop.clone(),
                acks.clone(),
            ))
        })
        .collect();

    wait_for_acks(&acks, DEPOSITS_PER_STEP).await;
    let uploaded = put_plugin(&http, &server, "bank-analytics", "bank-analytics-v2").await;
    let analytics_hash = uploaded["pending"]["hash"].as_str().unwrap().to_owned();
    wait_for_cutover(&http, &server, "bank-analytics", &analytics_hash).await;
    wait_for_acks(&acks, DEPOSITS_PER_STEP).await;
    let uploaded = put_plugin(&http, &server, "bank-account", "bank-account-v2").await;
    assert_eq!(uploaded["version"], "1.1.0", "{uploaded}");
    let account_hash = uploaded["hash"].as_str().unwrap().to_owned();
    wait_for_acks(&acks, DEPOSITS_PER_STEP).await;
    stop.store(true, Ordering::Relaxed);

    let mut expected: BTreeMap<String, u64> = accounts.iter().map(|id| (id.clone(), 0)).collect();
    let mut failures = Vec::new();
    for client in clients {
        let load = client.await.unwrap();
        for (id, amount) in load.acked {
            *expected.get_mut(&id).unwrap() += amount;
        }
        failures.extend(load.failures);
    }
    assert!(failures.is_empty(), "non-2xx answers: {failures:#?}");

    for (id, deposited) in &expected {
        let (status, body) = get(&http, &server, &format!("/aggregates/bank-account/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"]["balance"], *deposited, "account {id}: {body}");
    }

    let now = plugins(&http, &server).await;
    for (name, hash, version) in [
        ("bank-analytics", &analytics_hash, "2.0.0"),
        ("bank-account", &account_hash, "1.1.0"),
    ] {
        let info = &now[name];
        assert_ne!(info["hash"], old[name]["hash"], "{info}");
        assert_eq!(
            (&info["hash"], &info["version"]),
            (&json!(hash), &json!(version))
        );
        assert!(
            info.get("pending").is_none() && info.get("last_error").is_none(),
            "{info}"
        );
    }

    let projection = wait_live_at_head(&http, &server).await;
    let total: u64 = expected.values().sum();
    assert_eq!(projection["state"]["total_balance"], total, "{projection}");
    assert!(server.terminate().success());
    let offline = replay_offline(&dirs, "bank-analytics-v2");
    assert_eq!(projection["state"], offline);
}

/// A restart resumes the swapped-in projection from its checkpoint: with the v2 build
/// deployed into the plugin directory (a newer file than the upload, which it supersedes), the
/// restarted server replays only the tail past v2's checkpoint and reaches the same state it
/// had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_swapped_projection_from_its_checkpoint() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = Client::new();
    // More events than a projection folds between two checkpoints, so v2 stores one while
    // it catches up.
    for k in 0..10 {
        let mut events = vec![json!({"type": "Opened", "data": {"owner": format!("seed {k}")}})];
        events.extend((1..600).map(|i| json!({"type": "Deposited", "data": {"amount": i}})));
        let (status, body) = post(
            &http,
            &server,
            &format!("/streams/bank-account-seed-{k}/events"),
            json!({"expected_version": "no_stream", "events": events}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let uploaded = put_plugin(&http, &server, "bank-analytics", "bank-analytics-v2").await;
    let hash = uploaded["pending"]["hash"].as_str().unwrap().to_owned();
    wait_for_cutover(&http, &server, "bank-analytics", &hash).await;
    let before = wait_live_at_head(&http, &server).await;
    assert!(server.terminate().success());

    std::fs::copy(
        foldhost_plugins::path("bank-analytics-v2"),
        dirs.plugins.join("bank-analytics.wasm"),
    )
    .unwrap();
    let server = Server::start(&dirs, Some(TOKEN));
    let after = wait_live_at_head(&http, &server).await;
    assert_eq!(after, before);
    let info = &plugins(&http, &server).await["bank-analytics"];
    assert_eq!(info["hash"], hash.as_str(), "{info}");
    let head = before["position"].as_u64().unwrap();
    let replayed = info["replayed"].as_u64().unwrap();
    assert!(
        replayed < head,
        "replayed {replayed} of {head} events: {info}"
    );
}

/// An upload is kept in the data directory: it loads again after `kill -9`, over the plugins
/// directory's file it replaced (also once that file is copied again); an unload removes it
/// for good; another build of the plugins directory, deployed while the server is down or
/// while it runs, replaces it; and if a kept upload no longer loads, the directory's build
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_outlives_a_restart_until_unloaded_or_replaced() {
    let dirs = Dirs::new();
    let http = Client::new();
    let kept = dirs.data.join("uploads/bank-analytics.upload");
    let file = dirs.plugins.join("bank-analytics.wasm");
    let deploy = |artifact: &str| {
        let staged = dirs.plugins.join("staged.part");
        std::fs::copy(foldhost_plugins::path(artifact), &staged).unwrap();
        std::fs::rename(&staged, &file).unwrap();
    };

    let server = Server::start(&dirs, Some(TOKEN));
    let v1 = hash_of(&http, &server, "bank-analytics").await;
    let uploaded = put_plugin(&http, &server, "bank-analytics", "bank-analytics-v2").await;
    let v2 = uploaded["pending"]["hash"].as_str().unwrap().to_owned();
    put_plugin(&http, &server, "hostile", "hostile").await;
    wait_for_cutover(&http, &server, "bank-analytics", &v2).await;
    drop(server); // kill -9

    // The same v1 file copied again (new times, same build) does not replace the upload.
    deploy("bank-analytics");
    let server = Server::start(&dirs, Some(TOKEN));
    wait_for_cutover(&http, &server, "bank-analytics", &v2).await;
    assert!(plugins(&http, &server).await.contains_key("hostile"));
    delete_plugin(&http, &server, "hostile", 200).await;
    delete_plugin(&http, &server, "hostile", 404).await;
    // A kept upload that does not load can be unloaded too.
    std::fs::write(dirs.data.join("uploads/junk.upload"), b"not an upload").unwrap();
    assert!(server.terminate().success());

    let server = Server::start(&dirs, Some(TOKEN));
    let listed = plugins(&http, &server).await;
    assert!(
        !listed.contains_key("hostile"),
        "unloaded, yet back: {listed:?}"
    );
    assert_eq!(listed["bank-analytics"]["hash"], v2.as_str());
    delete_plugin(&http, &server, "junk", 200).await;
    assert!(!dirs.data.join("uploads/junk.upload").exists());
    assert!(server.terminate().success());

    // Another build deployed while the server is down replaces the upload.
    deploy("bank-analytics-lenient");
    let server = Server::start(&dirs, Some(TOKEN));
    let lenient = hash_of(&http, &server, "bank-analytics").await;
    assert!(lenient != v1 && lenient != v2, "{lenient}");
    assert!(!kept.exists(), "the replaced upload is still kept");

    // Uploaded again, then replaced by a file deployed while the server runs.
    put_plugin(&http, &server, "bank-analytics", "bank-analytics-v2").await;
    wait_for_cutover(&http, &server, "bank-analytics", &v2).await;
    assert!(kept.exists());
    deploy("bank-analytics");
    wait_for_cutover(&http, &server, "bank-analytics", &v1).await;
    assert!(server.terminate().success());
    assert!(!kept.exists(), "the replaced upload is still kept");
    let server = Server::start(&dirs, Some(TOKEN));
    wait_for_cutover(&http, &server, "bank-analytics", &v1).await;

    // A kept upload that no longer loads: the build it replaced serves.
    put_plugin(&http, &server, "bank-analytics", "bank-analytics-v2").await;
    assert!(server.terminate().success());
    let mut broken = std::fs::read(&kept).unwrap();
    let header = broken.iter().position(|&b| b == b'\n').unwrap();
    broken.truncate(header + 9);
    std::fs::write(&kept, broken).unwrap();
    let server = Server::start(&dirs, Some(TOKEN));
    assert_eq!(hash_of(&http, &server, "bank-analytics").await, v1);

    // Nor does one whose header cannot be read stand in the directory's way.
    assert!(server.terminate().success());
    std::fs::write(&kept, b"damaged").unwrap();
    let server = Server::start(&dirs, Some(TOKEN));
    assert_eq!(hash_of(&http, &server, "bank-analytics").await, v1);
}

async fn delete_plugin(http: &Client, server: &Server, name: &str, status: u16) {
    let response = http
        .delete(server.url(&format!("/plugins/{name}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), status, "DELETE /plugins/{name}");
}

/// The content hash of the build of `name` serving now.
async fn hash_of(http: &Client, server: &Server, name: &str) -> String {
    let listed = plugins(http, server).await;
    let info = listed.get(name);
    let hash = info.and_then(|info| info["hash"].as_str());
    hash.unwrap_or_else(|| panic!("no build of {name} serves: {listed:?}"))
        .to_owned()
}

/// What one client had acknowledged, by account, and every answer that was not 2xx.
struct Load {
    acked: BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Client `n`: deposits alternately to its own account and to a shared one, and now and
/// then reads the projection, until `stop`.
async fn deposit_loop(n: usize, url: String, stop: Arc<AtomicBool>, acks: Arc<AtomicU64>) -> Load {
    let http = Client::new();
    let mut load = Load {
        acked: BTreeMap::new(),
        failures: Vec::new(),
    };
    for i in 0..MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if i % 10 == 9 {
            let response = http
                .get(format!("{url}/projections/bank-analytics"))
                .send()
                .await;
            if let Err(failure) = expect_2xx(response).await {
                load.failures.push(format!("projection read: {failure}"));
            }
            continue;
        }
        let id = match i % 2 {
            0 => format!("own-{n}"),
            _ => SHARED[(n + i) % SHARED.len()].to_owned(),
        };
        let amount = ((n * 31 + i) % 100 + 1) as u64;
        let response = http
            .post(format!("{url}/aggregates/bank-account/{id}/commands"))
            .json(&json!({"type": "Deposit", "data": {"amount": amount}}))
            .send()
            .await;
        match expect_2xx(response).await {
            Ok(()) => {
                *load.acked.entry(id).or_default() += amount;
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => load.failures.push(format!("deposit to {id}: {failure}")),
        }
    }
    load
}

async fn expect_2xx(response: reqwest::Result<reqwest::Response>) -> Result<(), String> {
    let response = response.map_err(|error| error.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}

/// Waits until `more` deposits past the current count are acknowledged.
async fn wait_for_acks(acks: &AtomicU64, more: u64) {
    let target = acks.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + PATIENCE;
    while acks.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "clients stopped making progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `PUT /plugins/{name}` with the component `artifact`; returns the plugin's info.
async fn put_plugin(http: &Client, server: &Server, name: &str, artifact: &str) -> Value {
    let response = http
        .put(server.url(&format!("/plugins/{name}")))
        .bearer_auth(TOKEN)
        .body(std::fs::read(foldhost_plugins::path(artifact)).unwrap())
        .send()
        .await
        .unwrap();
    let (status, info) = json(response).await;
    assert_eq!(status, 200, "{info}");
    info
}

/// Polls `GET /plugins` until `hash` is the active build of `name` with nothing pending.
async fn wait_for_cutover(http: &Client, server: &Server, name: &str, hash: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = plugins(http, server).await[name].clone();
        assert!(info.get("last_error").is_none(), "the swap failed: {info}");
        if info["hash"] == hash && info.get("pending").is_none() {
            return;
        }
        assert!(Instant::now() < deadline, "no cutover: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `bank-analytics` is live at the journal's head; returns its `GET /projections`.
async fn wait_live_at_head(http: &Client, server: &Server) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, health) = get(http, server, "/health").await;
        let (status, projection) = get(http, server, "/projections/bank-analytics").await;
        assert_eq!(status, 200, "{projection}");
        if projection["status"]["status"] == "live"
            && projection["position"] == health["head_position"]
        {
            return projection;
        }
        assert!(
            Instant::now() < deadline,
            "not live at the head: {projection}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /plugins` by name (rows of files being compiled or refused have none).
async fn plugins(http: &Client, server: &Server) -> BTreeMap<String, Value> {
    let (status, list) = get(http, server, "/plugins").await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    list.iter()
        .filter_map(|info| Some((info["name"].as_str()?.to_owned(), info.clone())))
        .collect()
}

/// Runs a command on `bank-account` `id`, which must succeed.
async fn command(http: &Client, server: &Server, id: &str, command: &str, data: Value) {
    let path = format!("/aggregates/bank-account/{id}/commands");
    let (status, body) = post(http, server, &path, json!({"type": command, "data": data})).await;
    assert_eq!(status, 200, "{body}");
}

async fn get(http: &Client, server: &Server, path: &str) -> (u16, Value) {
    json(http.get(server.url(path)).send().await.unwrap()).await
}

async fn post(http: &Client, server: &Server, path: &str, body: Value) -> (u16, Value) {
    json(
        http.post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `foldhost replay` of the projection `artifact` over the (stopped) server's data directory.
fn replay_offline(dirs: &Dirs, artifact: &str) -> Value {
    let output = std::process::Command::new(serve::BIN)
        .arg("replay")
        .arg("--plugin")
        .arg(foldhost_plugins::path(artifact))
        .arg("--data")
        .arg(&dirs.data)
        .env_remove("FOLDHOST_DATA")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Times the server's log says a plugin file was loaded.
fn loads_logged(log: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.matches("plugin file loaded").count()
}

/// A plugin file is loaded again when it changes, not when it is only opened or read (the
/// watcher reports those too, the host's own read of it among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_is_loaded_once_per_change() {
    let root = tempfile::tempdir().unwrap();
    let (data, plugins) = (root.path().join("data"), root.path().join("plugins"));
    std::fs::create_dir_all(&plugins).unwrap();
    let file = plugins.join("bank-account.wasm");
    std::fs::copy(foldhost_plugins::path("bank-account"), &file).unwrap();
    let log = root.path().join("server.log");
    // Given as a relative path, as `scripts/serve` gives it: the watcher then names the files
    // by other paths than the listing did.
    let mut command = Server::command(&data, Some(Path::new("plugins")));
    command
        .current_dir(root.path())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let _server = Server::launch(command);
    tokio::time::sleep(5 * foldhost::runtime::plugin_dir::DEBOUNCE).await;
    assert_eq!(loads_logged(&log), 1, "the file was loaded again at start");

    // Rewritten in place: one load, however many times the watcher saw it opened.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while loads_logged(&log) < 2 {
        assert!(
            Instant::now() < deadline,
            "the rewritten file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Five debounce periods: a host that reloads on its own reads does so every period.
    tokio::time::sleep(5 * foldhost::runtime::plugin_dir::DEBOUNCE).await;
    assert_eq!(loads_logged(&log), 2, "the file was loaded again unchanged");
}
