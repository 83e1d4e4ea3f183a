//! One plugin, several languages (issue 11), on a real `foldhost serve`: the Python and
//! JavaScript twins of the Rust examples take over live streams and the global-log fold by hot swap, every
//! command keeps working across the swaps, and `foldhost plugins diff` finds no difference
//! over the history they wrote together. Python exceptions answer 400 or 422, never 500.

use crate::serve;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use serve::{BIN, Dirs, Server, json};

const TOKEN: &str = "languages-admin-token";
/// Compiling an 18 MB Python component takes seconds, more on a busy machine.
const COMPILE_PATIENCE: Duration = Duration::from_secs(300);

/// The builds of `bank-account` the test swaps through, in order: a language is one line.
const BANK_ACCOUNT_BUILDS: &[(&str, &str)] = &[
    ("rust", foldhost_plugins::BANK_ACCOUNT),
    ("python", foldhost_plugins::BANK_ACCOUNT_PYTHON),
    ("js", foldhost_plugins::BANK_ACCOUNT_JS),
    ("rust-again", foldhost_plugins::BANK_ACCOUNT),
];

/// Starting on the Rust build, each build in turn is uploaded and runs the same script:
/// open its own account, deposit, withdraw, get refused (overdraft, malformed amount,
/// closing with money), and move on the accounts every earlier build opened; one account
/// is emptied and closed by one language and stays closed under the next. Every answer
/// (status, reason, state) is checked against a model. Then the Python bank-analytics
/// replaces the Rust one, and the JavaScript one the Python one, each reaching the same
/// state over the shared history, and offline `plugins diff` of the Rust build against the
/// Python and the JavaScript builds of both plugins reports no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_python_and_js_builds_take_over_from_each_other_without_a_difference() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = Client::new();
    let mut model = Model::default();
    for (phase, &(language, artifact)) in BANK_ACCOUNT_BUILDS.iter().enumerate() {
        if phase > 0 {
            let info = upload(&http, &server, "bank-account", artifact).await;
            assert_eq!(info["hash"], hash_of(artifact), "{info}");
        }
        run_script(&http, &server, &mut model, language).await;
    }

    let rust = wait_live_at_head(&http, &server).await;
    let info = upload(
        &http,
        &server,
        "bank-analytics",
        foldhost_plugins::BANK_ANALYTICS_PYTHON,
    )
    .await;
    let hash = hash_of(foldhost_plugins::BANK_ANALYTICS_PYTHON);
    wait_for_cutover(&http, &server, "bank-analytics", &hash).await;
    let python = wait_live_at_head(&http, &server).await;
    assert!(
        info["pending"].is_object() || info["hash"] == hash,
        "{info}"
    );
    assert_eq!(
        python["state"], rust["state"],
        "the Python projection folds the log alike"
    );
    assert_eq!(python["state"]["accounts"], model.balances.len());
    let (status, top) = get(&http, &server, "/projections/bank-analytics/query/top?n=2").await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top,
        Value::Array(rust["state"]["top"].as_array().unwrap()[..2].to_vec())
    );
    let (status, refused) = get(
        &http,
        &server,
        "/projections/bank-analytics/query/account?id=nope",
    )
    .await;
    assert_eq!(
        (status, &refused["reason"]),
        (400, &json!("no account `nope`")),
        "{refused}"
    );

    // Then the JavaScript one takes over from the Python one.
    upload(
        &http,
        &server,
        "bank-analytics",
        foldhost_plugins::BANK_ANALYTICS_JS,
    )
    .await;
    let hash = hash_of(foldhost_plugins::BANK_ANALYTICS_JS);
    wait_for_cutover(&http, &server, "bank-analytics", &hash).await;
    let js = wait_live_at_head(&http, &server).await;
    assert_eq!(
        js["state"], rust["state"],
        "the JavaScript projection folds the log alike"
    );

    assert!(server.terminate().success());
    for (rust, other) in [
        (
            foldhost_plugins::BANK_ACCOUNT,
            foldhost_plugins::BANK_ACCOUNT_PYTHON,
        ),
        (
            foldhost_plugins::BANK_ANALYTICS,
            foldhost_plugins::BANK_ANALYTICS_PYTHON,
        ),
        (
            foldhost_plugins::BANK_ACCOUNT,
            foldhost_plugins::BANK_ACCOUNT_JS,
        ),
        (
            foldhost_plugins::BANK_ANALYTICS,
            foldhost_plugins::BANK_ANALYTICS_JS,
        ),
    ] {
        let report = diff(&dirs, rust, other);
        assert_eq!(report["differing"], 0, "{report}");
        let streams = if rust == foldhost_plugins::BANK_ACCOUNT {
            model.balances.len()
        } else {
            1
        };
        assert_eq!(report["compared"], streams, "{report}");
    }
}

/// Python handlers that raise, read the clock or randomness, or exit answer 400 with the
/// reason (a `Rejected` 422); an endless loop is cut at the time limit (500) and contained:
/// the same aggregate answers `Ping` after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exceptions_answer_400_or_422_never_500() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = Client::new();
    upload(
        &http,
        &server,
        "python-hostile",
        foldhost_plugins::HOSTILE_PYTHON,
    )
    .await;
    let mut pings = 0;
    for (command, data, status, reason) in [
        (
            "Divide",
            json!({"by": 0}),
            400,
            "Divide failed: ZeroDivisionError",
        ),
        (
            "Clock",
            json!(null),
            400,
            "time.time() is not available in a foldhost plugin: folds must be deterministic",
        ),
        (
            "Random",
            json!(null),
            400,
            "random.random() is not available in a foldhost plugin",
        ),
        ("Exit", json!(null), 400, "Exit failed: SystemExit: bye"),
        (
            "Divide",
            json!({"by": "zero"}),
            400,
            "Divide.by: expected an integer, got \"zero\"",
        ),
        ("Fly", json!(null), 400, "unknown command type `Fly`"),
        ("Refuse", json!(null), 422, "refused on purpose"),
        ("Loop", json!(null), 500, "exceeded its time limit"),
    ] {
        let path = "/aggregates/python-hostile/one/commands";
        let (got, body) = post(&http, &server, path, json!({"type": command, "data": data})).await;
        assert_eq!(got, status, "{command}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{command}: {body}"
        );
        let (got, body) = post(&http, &server, path, json!({"type": "Ping"})).await;
        pings += 1;
        assert_eq!(got, 200, "Ping after {command}: {body}");
        assert_eq!(
            body["state"],
            json!({"pings": pings}),
            "Ping after {command}"
        );
    }
}

/// The plugins directory loads in the background at start: while the Python bank-analytics
/// compiles, the server already answers `/health` (`loading_plugins`) and lists the file as
/// queued or compiling with its size; a command sent meanwhile waits for the aggregate's load
/// instead of answering "unknown plugin", but not for the projection's (aggregates load
/// first), and the Python projection then folds what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_while_its_plugins_directory_compiles() {
    let root = tempfile::tempdir().unwrap();
    let (data, plugins) = (root.path().join("data"), root.path().join("plugins"));
    std::fs::create_dir_all(&plugins).unwrap();
    let python = "bank-analytics-python.wasm";
    for (file, artifact) in [
        ("bank-account.wasm", foldhost_plugins::BANK_ACCOUNT),
        (python, foldhost_plugins::BANK_ANALYTICS_PYTHON),
    ] {
        std::fs::copy(foldhost_plugins::path(artifact), plugins.join(file)).unwrap();
    }
    let server = Server::launch_listening(Server::command(&data, Some(&plugins)));
    let http = Client::new();
    // Asked as soon as the server listens: compiling 18 MB takes seconds even in release.
    let (status, health) = get(&http, &server, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["loading_plugins"], true, "{health}");
    let (_, list) = get(&http, &server, "/plugins").await;
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["origin"] == python)
        .unwrap_or_else(|| panic!("{python} is not listed: {list}"));
    assert!(
        matches!(
            row["status"]["status"].as_str(),
            Some("queued" | "compiling")
        ),
        "{row}"
    );
    let size = std::fs::metadata(plugins.join(python)).unwrap().len();
    assert_eq!(row["status"]["bytes"], size, "{row}");

    let (status, body) = post(
        &http,
        &server,
        "/aggregates/bank-account/early/commands",
        json!({"type": "Open", "data": {"owner": "early"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Answered while the projection still compiles: its 18 MB take seconds, a command
    // milliseconds.
    let (_, list) = get(&http, &server, "/plugins").await;
    let projection = list
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["origin"] == python);
    assert!(
        projection.is_some(),
        "{python} is no longer compiling: {list}"
    );
    let analytics = wait_live_at_head(&http, &server).await;
    let (_, health) = get(&http, &server, "/health").await;
    assert!(health.get("loading_plugins").is_none(), "{health}");
    assert_eq!(analytics["state"]["accounts"], 1, "{analytics}");
    let (_, list) = get(&http, &server, "/plugins").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|row| row.get("origin").is_none()),
        "nothing left queued or compiling: {list}"
    );
}

/// The expected balance and status of every account the script touched.
#[derive(Default)]
struct Model {
    balances: BTreeMap<String, (u64, &'static str)>,
}

/// One build's turn: its own account, the earlier ones, and the refusals.
async fn run_script(http: &Client, server: &Server, model: &mut Model, language: &str) {
    let own = format!("acct-{language}");
    expect(
        http,
        server,
        model,
        &own,
        "Open",
        json!({"owner": language}),
        Ok(()),
    )
    .await;
    expect(
        http,
        server,
        model,
        &own,
        "Deposit",
        json!({"amount": 100}),
        Ok(()),
    )
    .await;
    expect(
        http,
        server,
        model,
        &own,
        "Withdraw",
        json!({"amount": 30}),
        Ok(()),
    )
    .await;
    let overdraft = Err((422, "insufficient funds: balance 70, requested 1000"));
    expect(
        http,
        server,
        model,
        &own,
        "Withdraw",
        json!({"amount": 1000}),
        overdraft,
    )
    .await;
    let malformed = Err((400, "could not decode the command"));
    expect(
        http,
        server,
        model,
        &own,
        "Deposit",
        json!({"amount": "x"}),
        malformed,
    )
    .await;
    let open = Err((422, "account is already open"));
    expect(
        http,
        server,
        model,
        &own,
        "Open",
        json!({"owner": "again"}),
        open,
    )
    .await;
    let not_empty = Err((422, "balance must be zero to close, is 70"));
    expect(http, server, model, &own, "Close", json!(null), not_empty).await;
    let others: Vec<String> = model
        .balances
        .keys()
        .filter(|id| **id != own)
        .cloned()
        .collect();
    for id in others {
        let outcome = match model.balances[&id].1 {
            "closed" => Err((422, "account is closed")),
            _ => Ok(()),
        };
        expect(
            http,
            server,
            model,
            &id,
            "Deposit",
            json!({"amount": 10}),
            outcome,
        )
        .await;
    }
    // The first build's account is emptied and closed by the second.
    if model.balances.len() == 2 {
        let first = model
            .balances
            .keys()
            .find(|id| **id != own)
            .unwrap()
            .clone();
        let balance = model.balances[&first].0;
        expect(
            http,
            server,
            model,
            &first,
            "Withdraw",
            json!({"amount": balance}),
            Ok(()),
        )
        .await;
        expect(http, server, model, &first, "Close", json!(null), Ok(())).await;
    }
}

/// Sends a command and checks the answer against the model, updating it on success.
async fn expect(
    http: &Client,
    server: &Server,
    model: &mut Model,
    id: &str,
    command: &str,
    data: Value,
    outcome: Result<(), (u16, &str)>,
) {
    let path = format!("/aggregates/bank-account/{id}/commands");
    let (status, body) = post(http, server, &path, json!({"type": command, "data": data})).await;
    match outcome {
        Err((expected, reason)) => {
            assert_eq!(status, expected, "{command} on {id}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(reason),
                "{command} on {id}: {body}"
            );
        }
        Ok(()) => {
            assert_eq!(status, 200, "{command} on {id}: {body}");
            let entry = model.balances.entry(id.to_owned()).or_insert((0, "new"));
            match command {
                "Open" => entry.1 = "open",
                "Deposit" => entry.0 += data["amount"].as_u64().unwrap(),
                "Withdraw" => entry.0 -= data["amount"].as_u64().unwrap(),
                "Close" => entry.1 = "closed",
                _ => unreachable!(),
            }
            let owner = id.strip_prefix("acct-").unwrap();
            let state = json!({"owner": owner, "balance": entry.0, "status": entry.1});
            assert_eq!(body["state"], state, "{command} on {id}");
            let (_, read) = get(http, server, &format!("/aggregates/bank-account/{id}")).await;
            assert_eq!(read["state"], state, "reading {id} after {command}");
        }
    }
}

/// `PUT /plugins/{name}`; while it compiles, `GET /plugins` lists it as `compiling`.
async fn upload(http: &Client, server: &Server, name: &str, artifact: &str) -> Value {
    let request = http
        .put(server.url(&format!("/plugins/{name}")))
        .bearer_auth(TOKEN)
        .body(std::fs::read(foldhost_plugins::path(artifact)).unwrap())
        .send();
    let upload = tokio::spawn(request);
    let mut seen_compiling = false;
    let deadline = Instant::now() + COMPILE_PATIENCE;
    while !upload.is_finished() {
        let (_, list) = get(http, server, "/plugins").await;
        seen_compiling |= list
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["origin"] == name && row["status"]["status"] == "compiling");
        assert!(Instant::now() < deadline, "{name}: no answer to the upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, info) = json(upload.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{info}");
    // A Python component compiles for seconds (a Rust one may be done before the first poll).
    if artifact.ends_with("-python") {
        assert!(seen_compiling, "{artifact} was never listed as compiling");
    }
    info
}

fn hash_of(artifact: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(foldhost_plugins::path(artifact)).unwrap(),
    ))
}

async fn wait_for_cutover(http: &Client, server: &Server, name: &str, hash: &str) {
    let deadline = Instant::now() + COMPILE_PATIENCE;
    loop {
        let (_, list) = get(http, server, "/plugins").await;
        let info = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone();
        assert!(info.get("last_error").is_none(), "the swap failed: {info}");
        if info["hash"] == hash && info.get("pending").is_none() {
            return;
        }
        assert!(Instant::now() < deadline, "no cutover: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `bank-analytics` is live at the journal's head; returns its state.
async fn wait_live_at_head(http: &Client, server: &Server) -> Value {
    let deadline = Instant::now() + COMPILE_PATIENCE;
    loop {
        let (_, health) = get(http, server, "/health").await;
        let (_, projection) = get(http, server, "/projections/bank-analytics").await;
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

/// `foldhost plugins diff` of two artifacts over the stopped server's data directory.
fn diff(dirs: &Dirs, old: &str, new: &str) -> Value {
    let output = Command::new(BIN)
        .args(["plugins", "diff"])
        .arg(foldhost_plugins::path(old))
        .arg(foldhost_plugins::path(new))
        .arg("--data")
        .arg(&dirs.data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "diff {old} {new}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
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
