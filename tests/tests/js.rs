//! JavaScript plugins on the real runtime: the TypeScript `bank-account` and
//! the JavaScript `bank-analytics` against their Rust originals, and the SDK's
//! contract (exceptions, determinism, u64, snapshots) through `hostile-js`.
//! Every plugin is a real component built from `plugins/js` by the build.

use std::sync::Arc;
use std::time::Duration;

use foldhost::journal::{Journal, JournalConfig};
use foldhost::runtime::{
    AggregateConfig, AggregateInstance, Plugin, ProjectionInstance, ProjectionRunner,
    ProjectionStatus, Runtime, RuntimeConfig, RuntimeError,
};
use foldhost_plugins::{
    BANK_ACCOUNT, BANK_ACCOUNT_JS, BANK_ANALYTICS, BANK_ANALYTICS_JS, HOSTILE_JS,
};
use serde_json::{Value, json};

struct Host {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    runtime: Arc<Runtime>,
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        aggregates: AggregateConfig {
            snapshot_every: 10,
            ..AggregateConfig::default()
        },
        ..RuntimeConfig::default()
    }
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let journal = Journal::open(&path, JournalConfig::default()).unwrap();
        Self {
            _dir: dir,
            path,
            runtime: Runtime::new(journal, config()).unwrap(),
        }
    }

    /// Shuts the runtime down and opens a fresh one on the same journal: no cached state.
    async fn restart(self) -> Self {
        self.runtime.shutdown().await;
        drop(self.runtime);
        for _ in 0..600 {
            if let Ok(journal) = Journal::open(&self.path, JournalConfig::default()) {
                return Self {
                    runtime: Runtime::new(journal, config()).unwrap(),
                    ..self
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the journal was not released after shutdown");
    }

    async fn load(&self, artifact: &str) {
        let bytes = std::fs::read(foldhost_plugins::path(artifact)).unwrap();
        self.runtime
            .load(bytes, &format!("{artifact}.wasm"))
            .await
            .unwrap();
    }

    /// A command's outcome: the appended events' types and data, and the state.
    async fn command(
        &self,
        plugin: &str,
        id: &str,
        command: &str,
        data: Value,
    ) -> Result<(Vec<(String, String)>, Value), RuntimeError> {
        self.command_raw(plugin, id, command, &data.to_string())
            .await
    }

    /// [`command`](Self::command) with the data as JSON text.
    async fn command_raw(
        &self,
        plugin: &str,
        id: &str,
        command: &str,
        data: &str,
    ) -> Result<(Vec<(String, String)>, Value), RuntimeError> {
        let outcome = self
            .runtime
            .execute(plugin, id, command, data.as_bytes().to_vec())
            .await?;
        let events = outcome
            .events
            .into_iter()
            .map(|e| {
                (
                    e.event_type.into(),
                    String::from_utf8(e.data.into()).unwrap(),
                )
            })
            .collect();
        Ok((events, outcome.state.expect("the state after the command")))
    }

    async fn state(&self, plugin: &str, id: &str, at: Option<u64>) -> (u64, Value) {
        self.runtime.aggregate_state(plugin, id, at).await.unwrap()
    }
}

/// The kind of a failed command, and the reason where business rules gave one.
fn failure(error: &RuntimeError) -> String {
    match error {
        RuntimeError::Rejected { reason, .. } => format!("rejected: {reason}"),
        RuntimeError::InvalidCommand { .. } => "invalid".to_owned(),
        other => format!("unexpected: {other}"),
    }
}

const U64_MAX: u64 = u64::MAX;

/// Commands covering every rule of bank-account, u64 edges, malformed data and
/// Unicode, with their data as JSON text.
fn bank_script() -> Vec<(&'static str, &'static str, String)> {
    let script = vec![
        ("alice", "Deposit", json!({"amount": 5})),
        ("alice", "Open", json!({"owner": "  "})),
        ("alice", "Open", json!({"owner": "Alice"})),
        ("alice", "Open", json!({"owner": "Alice"})),
        ("alice", "Deposit", json!({"amount": 100})),
        ("alice", "Deposit", json!({"amount": 0})),
        ("alice", "Deposit", json!({"amount": -1})),
        ("alice", "Deposit", json!({"amount": "100"})),
        ("alice", "Deposit", json!({})),
        ("alice", "Withdraw", json!({"amount": 250})),
        ("alice", "Withdraw", json!({"amount": 30})),
        ("alice", "Close", Value::Null),
        ("alice", "Fly", json!({})),
        ("alice", "Withdraw", json!({"amount": 70})),
        ("alice", "Close", Value::Null),
        ("alice", "Deposit", json!({"amount": 1})),
        ("alice", "Open", json!({"owner": "Alice again"})),
        // Beyond 2^53, where a JavaScript number would round.
        ("whale", "Open", json!({"owner": "Zoë 🐋 \"W\"\n"})),
        ("whale", "Deposit", json!({"amount": U64_MAX - 1})),
        ("whale", "Deposit", json!({"amount": 2})),
        ("whale", "Deposit", json!({"amount": 1})),
        (
            "whale",
            "Withdraw",
            json!({"amount": 9_007_199_254_740_993_u64}),
        ),
        ("whale", "Withdraw", json!({"amount": U64_MAX})),
        ("whale", "Deposit", json!({"amount": 1.5})),
    ];
    let mut script: Vec<_> = script
        .into_iter()
        .map(|(id, command, data)| (id, command, data.to_string()))
        .collect();
    // 2^64, -(2^64 - 1) and a text that is not JSON, which serde_json::Value cannot carry.
    script.push((
        "whale",
        "Deposit",
        r#"{"amount":18446744073709551616}"#.into(),
    ));
    script.push((
        "whale",
        "Deposit",
        r#"{"amount":-18446744073709551615}"#.into(),
    ));
    script.push(("whale", "Deposit", r#"{"amount":"#.into()));
    script
}

/// Runs `bank_script` against `artifact` and records every outcome.
async fn run_bank_script(artifact: &str) -> (Vec<String>, Vec<(u64, Value)>) {
    let host = Host::new();
    host.load(artifact).await;
    let mut outcomes = Vec::new();
    for (id, command, data) in bank_script() {
        let outcome = match host.command_raw("bank-account", id, command, &data).await {
            Ok((events, state)) => format!("ok {events:?} {state}"),
            Err(error) => failure(&error),
        };
        outcomes.push(format!("{id} {command}: {outcome}"));
    }
    let mut states = Vec::new();
    for id in ["alice", "whale"] {
        states.push(host.state("bank-account", id, None).await);
        states.push(host.state("bank-account", id, Some(2)).await);
    }
    (outcomes, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_bank_account_decides_exactly_like_the_rust_one() {
    let (rust, rust_states) = run_bank_script(BANK_ACCOUNT).await;
    let (js, js_states) = run_bank_script(BANK_ACCOUNT_JS).await;
    for (rust, js) in rust.iter().zip(&js) {
        assert_eq!(rust, js, "same command, different outcome");
    }
    assert_eq!(rust_states, js_states);
    // The script reached the interesting places, in both.
    assert!(
        js.iter()
            .any(|o| o.contains("deposit would overflow the balance"))
    );
    let whale = &js_states[2].1;
    assert_eq!(
        whale["balance"],
        json!(U64_MAX - 9_007_199_254_740_993),
        "{whale}"
    );
}

async fn wait_until_live_at(runner: &ProjectionRunner, position: u64) {
    let mut status = runner.watch_status();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| match s {
            ProjectionStatus::Live { position: p } => *p >= position,
            ProjectionStatus::Faulted { reason, .. } => panic!("projection faulted: {reason}"),
            _ => false,
        }),
    )
    .await
    .expect("projection reached the position in time")
    .unwrap();
}

/// Polls `probe` until it yields a value (a failure guard, not a timing assertion).
async fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 60 s");
}

/// The projection's state and its answers to a set of queries.
async fn answers(runner: &ProjectionRunner) -> Vec<Value> {
    let (_, state) = runner.state().await.unwrap().unwrap();
    let mut answers = vec![state];
    for (query, args) in [
        ("top", json!({"n": 3})),
        ("top", json!({})),
        ("account", json!({"id": "bank-account-a7"})),
        ("account", json!({"id": "bank-account-whale"})),
    ] {
        answers.push(runner.query(query, &args).await.unwrap().unwrap().unwrap());
    }
    for (query, args) in [
        ("account", json!({"id": "bank-account-nobody"})),
        ("nope", json!({})),
    ] {
        let refused = runner.query(query, &args).await.unwrap().unwrap();
        assert!(refused.is_err(), "{query} {args}: {refused:?}");
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_bank_analytics_takes_over_from_the_rust_one_and_answers_alike() {
    let host = Host::new();
    host.load(BANK_ACCOUNT).await;
    host.load(BANK_ANALYTICS).await;
    for i in 0..12u64 {
        let id = format!("a{i}");
        host.command(
            "bank-account",
            &id,
            "Open",
            json!({"owner": format!("Owner {i}")}),
        )
        .await
        .unwrap();
        host.command(
            "bank-account",
            &id,
            "Deposit",
            json!({"amount": 10 * (i % 5 + 1)}),
        )
        .await
        .unwrap();
    }
    host.command("bank-account", "a3", "Withdraw", json!({"amount": 40}))
        .await
        .unwrap();
    host.command("bank-account", "a3", "Close", Value::Null)
        .await
        .unwrap();
    host.command("bank-account", "whale", "Open", json!({"owner": "Whale"}))
        .await
        .unwrap();
    host.command(
        "bank-account",
        "whale",
        "Deposit",
        json!({"amount": U64_MAX - 7}),
    )
    .await
    .unwrap();

    let rust = host.runtime.projection("bank-analytics").unwrap();
    let rust_hash = rust.plugin().hash.clone();
    wait_until_live_at(&rust, host.runtime.journal().head_position()).await;
    let rust_answers = answers(&rust).await;

    host.load(BANK_ANALYTICS_JS).await;
    wait_for(|| {
        let info = host.runtime.info("bank-analytics").unwrap();
        (info.hash != rust_hash && info.pending.is_none()).then_some(())
    })
    .await;
    let js = host.runtime.projection("bank-analytics").unwrap();
    wait_until_live_at(&js, host.runtime.journal().head_position()).await;
    assert_eq!(answers(&js).await, rust_answers);
    // Saturated at u64::MAX, as the Rust build does.
    assert_eq!(rust_answers[0]["total_balance"], json!(U64_MAX));

    // Live: a new event reaches the JavaScript fold, which still matches a
    // fresh replay of the Rust build.
    host.command("bank-account", "a0", "Deposit", json!({"amount": 5}))
        .await
        .unwrap();
    wait_until_live_at(&js, host.runtime.journal().head_position()).await;
    let (_, live) = js.state().await.unwrap().unwrap();
    let engine = host.runtime.engine().clone();
    let journal = host.runtime.journal().clone();
    let replayed = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(foldhost_plugins::path(BANK_ANALYTICS)).unwrap();
        let plugin = Plugin::load(&engine, &bytes, "bank-analytics.wasm").unwrap();
        let mut instance = ProjectionInstance::new(plugin, None).unwrap();
        instance.catch_up(&journal).unwrap();
        instance.state().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(live, replayed);
}

/// Asserts `outcome` is an `invalid` command error mentioning `needle`.
fn assert_invalid<T: std::fmt::Debug>(outcome: Result<T, RuntimeError>, needle: &str) {
    match outcome {
        Err(RuntimeError::InvalidCommand { reason, .. }) => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected an invalid command mentioning {needle:?}, got {other:?}"),
    }
}

fn assert_trap<T: std::fmt::Debug>(outcome: Result<T, RuntimeError>, needle: &str) {
    match outcome {
        Err(RuntimeError::Trap { message, .. }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected a trap mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_exceptions_answer_rejected_or_invalid_and_never_trap() {
    let host = Host::new();
    host.load(HOSTILE_JS).await;
    let run = |command: &'static str, data: Value| host.command("hostile-js", "h", command, data);
    run("Ping", Value::Null).await.unwrap();

    match run("Reject", json!({"reason": "not today"})).await {
        Err(RuntimeError::Rejected { reason, .. }) => assert_eq!(reason, "not today"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_invalid(
        run("Throw", Value::Null).await,
        "TypeError: thrown on purpose",
    );
    assert_invalid(
        run("ThrowString", Value::Null).await,
        "a string, on purpose",
    );
    for (command, call) in [
        ("Clock", "Date.now()"),
        ("NewDate", "new Date()"),
        ("Random", "Math.random()"),
    ] {
        let outcome = run(command, Value::Null).await;
        assert_invalid(
            outcome,
            &format!("NondeterminismError: {call} is not available"),
        );
    }
    assert_invalid(run("Mutate", Value::Null).await, "the state is read-only");
    assert_invalid(run("Unfoldable", Value::Null).await, "no apply handler");
    assert_invalid(
        run("Nonexistent", Value::Null).await,
        "unknown command `Nonexistent`",
    );
    // None of those changed the state or appended anything.
    let (version, state) = host.state("hostile-js", "h", None).await;
    assert_eq!((version, &state), (1, &json!({"pongs": 1, "records": []})));

    // What the host must stop is contained, and the stream still serves.
    assert_trap(run("Loop", Value::Null).await, "time limit");
    assert_trap(run("Allocate", Value::Null).await, "memory limit");
    assert!(run("Recurse", Value::Null).await.is_err());
    let (_, state) = run("Ping", Value::Null).await.unwrap();
    assert_eq!(state["pongs"], json!(2));

    // An apply handler that throws: the command's event is stored, so the command
    // succeeds without a state; every rebuild of that stream then names the event and
    // the reason; other streams are untouched.
    let poisoned = host
        .runtime
        .execute("hostile-js", "p", "Poison", b"null".to_vec())
        .await
        .unwrap();
    let unknown = poisoned.state.unwrap_err();
    assert!(unknown.contains("applied a Poisoned event"), "{unknown}");
    match host.command("hostile-js", "p", "Ping", Value::Null).await {
        Err(RuntimeError::Unfoldable {
            position, reason, ..
        }) => {
            assert_eq!(position, poisoned.events[0].position);
            assert!(reason.contains("applied a Poisoned event"), "{reason}")
        }
        other => panic!("expected the poisoned event to be named, got {other:?}"),
    }
    let (_, state) = run("Ping", Value::Null).await.unwrap();
    assert_eq!(state["pongs"], json!(3));
}

/// Values a JavaScript state must carry through events and snapshots unchanged.
fn awkward_values() -> Vec<Value> {
    vec![
        json!(U64_MAX),
        json!(i64::MIN),
        json!(9_007_199_254_740_993_u64),
        json!(0.1),
        json!("\u{0}n5"),
        json!("\u{0}\u{0}x"),
        json!("Zoë 🚀 \u{2028}"),
        json!({"nested": [1, {"deep": U64_MAX}], "empty": {}}),
        Value::Null,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_state_restored_from_its_snapshot_folds_on_exactly() {
    let host = Host::new();
    host.load(BANK_ACCOUNT_JS).await;
    host.load(HOSTILE_JS).await;
    host.command("bank-account", "s", "Open", json!({"owner": "S"}))
        .await
        .unwrap();
    for amount in 1..=24 {
        host.command("bank-account", "s", "Deposit", json!({"amount": amount}))
            .await
            .unwrap();
    }
    for value in awkward_values().into_iter().cycle().take(24) {
        host.command("hostile-js", "r", "Record", json!({ "value": value }))
            .await
            .unwrap();
    }
    let journal = host.runtime.journal().clone();
    for (plugin, stream) in [
        ("bank-account", "bank-account-s"),
        ("hostile-js", "hostile-js-r"),
    ] {
        let plugin = host.runtime.aggregate(plugin).unwrap();
        let snapshot = wait_for(|| {
            journal
                .latest_snapshot(&plugin.hash, stream, u64::MAX)
                .unwrap()
        })
        .await;
        let journal = journal.clone();
        let (from_snapshot, full_replay) = tokio::task::spawn_blocking(move || {
            let mut restored =
                AggregateInstance::rehydrate(plugin.clone(), &journal, stream, u64::MAX).unwrap();
            assert_eq!(
                restored.snapshot_version, snapshot.0,
                "rehydration used the snapshot"
            );
            let mut replayed = AggregateInstance::new(plugin, stream, None).unwrap();
            replayed.catch_up(&journal, u64::MAX).unwrap();
            (restored.state().unwrap(), replayed.state().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(from_snapshot, full_replay, "{stream}");
    }
    drop(journal);
    let (_, records) = host.state("hostile-js", "r", None).await;
    assert_eq!(
        records["records"].as_array().unwrap()[..9],
        awkward_values()[..]
    );

    // After a restart the state comes from the snapshot, and BigInt arithmetic
    // goes on from it: the snapshot kept the balance a BigInt.
    let host = host.restart().await;
    host.load(BANK_ACCOUNT_JS).await;
    let (_, state) = host
        .command(
            "bank-account",
            "s",
            "Deposit",
            json!({"amount": U64_MAX - 300}),
        )
        .await
        .unwrap();
    assert_eq!(state["balance"], json!(U64_MAX), "{state}");
}
