//! The plugin runtime end to end, with the real example and hostile plugins
//! built from `plugins/`.

use std::sync::Arc;
use std::time::Duration;

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use foldhost::runtime::{
    AggregateConfig, AggregateInstance, CheckpointPolicy, HISTORY_SLOTS, LimitPolicy, Limits,
    Plugin, ProjectionStatus, Runtime, RuntimeConfig, RuntimeError,
};
use serde_json::{Value, json};

struct Host {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    config: RuntimeConfig,
    runtime: Arc<Runtime>,
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        aggregates: AggregateConfig {
            snapshot_every: 10,
            ..AggregateConfig::default()
        },
        checkpoints: CheckpointPolicy {
            every_events: 50,
            every: Duration::from_millis(200),
        },
        ..RuntimeConfig::default()
    }
}

impl Host {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: RuntimeConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let journal = Journal::open(&path, JournalConfig::default()).unwrap();
        Self {
            _dir: dir,
            path,
            runtime: Runtime::new(journal, config.clone()).unwrap(),
            config,
        }
    }

    /// Shuts the runtime and journal down, then opens both again on the same file.
    async fn restart(self) -> Self {
        self.runtime.shutdown().await;
        drop(self.runtime);
        // The journal closes when its last handle goes; a snapshot write still
        // in flight may hold one for a moment.
        for _ in 0..100 {
            match Journal::open(&self.path, JournalConfig::default()) {
                Ok(journal) => {
                    return Self {
                        runtime: Runtime::new(journal, self.config.clone()).unwrap(),
                        ..self
                    };
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("the journal was not released after shutdown");
    }

    async fn load(&self, name: &str) {
        let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
        self.runtime.load(bytes, name).await.unwrap();
    }

    async fn command(
        &self,
        plugin: &str,
        id: &str,
        command: &str,
        data: Value,
    ) -> Result<Value, RuntimeError> {
        let outcome = self
            .runtime
            .execute(plugin, id, command, serde_json::to_vec(&data).unwrap())
            .await?;
        Ok(outcome.state.expect("the state after the command"))
    }
}

fn balance(state: &Value) -> i64 {
    state["balance"]
        .as_i64()
        .unwrap_or_else(|| panic!("no balance in {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_decide_events_and_rejections_explain_why() {
    let host = Host::new();
    host.load("bank-account").await;
    let opened = host
        .command("bank-account", "alice", "Open", json!({"owner": "Alice"}))
        .await
        .unwrap();
    assert_eq!(balance(&opened), 0);
    let state = host
        .command("bank-account", "alice", "Deposit", json!({"amount": 100}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 100);
    let state = host
        .command("bank-account", "alice", "Withdraw", json!({"amount": 30}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 70);

    let overdraft = host
        .command("bank-account", "alice", "Withdraw", json!({"amount": 71}))
        .await;
    assert!(
        matches!(overdraft, Err(RuntimeError::Rejected { .. })),
        "{overdraft:?}"
    );
    let twice = host
        .command("bank-account", "alice", "Open", json!({"owner": "Alice"}))
        .await;
    assert!(
        matches!(twice, Err(RuntimeError::Rejected { .. })),
        "{twice:?}"
    );
    let nonsense = host
        .command(
            "bank-account",
            "alice",
            "Deposit",
            json!({"amount": "lots"}),
        )
        .await;
    assert!(
        matches!(nonsense, Err(RuntimeError::InvalidCommand { .. })),
        "{nonsense:?}"
    );
    let unknown = host.command("no-such-plugin", "x", "Open", json!({})).await;
    assert!(
        matches!(unknown, Err(RuntimeError::UnknownPlugin(_))),
        "{unknown:?}"
    );

    // Rejections appended nothing: three events in the stream.
    let journal = host.runtime.journal();
    assert_eq!(
        journal.stream_version("bank-account-alice").unwrap(),
        Some(3)
    );
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "alice", None)
        .await
        .unwrap();
    assert_eq!((version, balance(&state)), (3, 70));
    // Time travel: after the deposit only.
    let (version, past) = host
        .runtime
        .aggregate_state("bank-account", "alice", Some(2))
        .await
        .unwrap();
    assert_eq!((version, balance(&past)), (2, 100));

    host.command("bank-account", "alice", "Withdraw", json!({"amount": 70}))
        .await
        .unwrap();
    host.command("bank-account", "alice", "Close", Value::Null)
        .await
        .unwrap();
    let after_close = host
        .command("bank-account", "alice", "Deposit", json!({"amount": 1}))
        .await;
    assert!(
        matches!(after_close, Err(RuntimeError::Rejected { .. })),
        "{after_close:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let host = Host::new();
    host.load("bank-account").await;
    host.load("shopping-cart").await;
    host.command("bank-account", "bob", "Open", json!({"owner": "Bob"}))
        .await
        .unwrap();
    for amount in 1..=25 {
        host.command("bank-account", "bob", "Deposit", json!({"amount": amount}))
            .await
            .unwrap();
    }
    host.command(
        "shopping-cart",
        "c1",
        "AddItem",
        json!({"sku": "apple", "qty": 3, "price_cents": 50}),
    )
    .await
    .unwrap();
    let before = host
        .runtime
        .aggregate_state("bank-account", "bob", None)
        .await
        .unwrap();
    let cart_before = host
        .runtime
        .aggregate_state("shopping-cart", "c1", None)
        .await
        .unwrap();

    let host = host.restart().await;
    host.load("bank-account").await;
    host.load("shopping-cart").await;
    let after = host
        .runtime
        .aggregate_state("bank-account", "bob", None)
        .await
        .unwrap();
    let cart_after = host
        .runtime
        .aggregate_state("shopping-cart", "c1", None)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(balance(&after.1), (1..=25).sum::<i64>());
    assert_eq!(cart_before, cart_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_tail_equals_a_full_replay() {
    let host = Host::new();
    host.load("bank-account").await;
    host.command("bank-account", "carol", "Open", json!({"owner": "Carol"}))
        .await
        .unwrap();
    for amount in 1..=34 {
        host.command(
            "bank-account",
            "carol",
            "Deposit",
            json!({"amount": amount}),
        )
        .await
        .unwrap();
    }
    let plugin = host.runtime.aggregate("bank-account").unwrap();
    let journal = host.runtime.journal().clone();
    let stream = "bank-account-carol";
    // Snapshots are written asynchronously with the next commit; wait for one.
    let snapshot = wait_for(|| {
        journal
            .latest_snapshot(&plugin.hash, stream, u64::MAX)
            .unwrap()
    })
    .await;
    assert!(
        snapshot.0 >= 10 && snapshot.0 < 35,
        "snapshot at {}",
        snapshot.0
    );

    let from_snapshot = tokio::task::spawn_blocking({
        let (plugin, journal) = (plugin.clone(), journal.clone());
        move || {
            let mut instance =
                AggregateInstance::rehydrate(plugin, &journal, stream, u64::MAX).unwrap();
            assert_eq!(
                instance.snapshot_version, snapshot.0,
                "rehydration used the snapshot"
            );
            (instance.version, instance.state().unwrap())
        }
    })
    .await
    .unwrap();
    let full_replay = tokio::task::spawn_blocking(move || {
        let mut instance = AggregateInstance::new(plugin, stream, None).unwrap();
        instance.catch_up(&journal, u64::MAX).unwrap();
        (instance.version, instance.state().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(from_snapshot, full_replay);
    assert_eq!(balance(&full_replay.1), (1..=34).sum::<i64>());
}

/// A rebuild reads the stream's window apart from its pages: a truncation toggled while a
/// state of several pages is rebuilt never yields a state folded from two views (the first
/// page of the whole stream, later pages of the truncated one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_rebuilt_while_its_stream_is_truncated_folds_one_view() {
    use foldhost::journal::StreamMetadata;
    let host = Host::new();
    host.load("bank-account").await;
    let journal = host.runtime.journal().clone();
    let stream = "bank-account-toggled";
    let opened = NewEvent::json("Opened", &json!({"owner": "T"}));
    journal
        .append(stream, ExpectedVersion::NoStream, vec![opened])
        .await
        .unwrap();
    // Versions 2..=3001: a deposit of 1 each, three pages of a rebuild.
    for _ in 0..3 {
        let deposits = (0..1000)
            .map(|_| NewEvent::json("Deposited", &json!({"amount": 1})))
            .collect();
        journal
            .append(stream, ExpectedVersion::Any, deposits)
            .await
            .unwrap();
    }
    let plugin = host.runtime.aggregate("bank-account").unwrap();
    let rebuilding = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || {
            let mut balances = Vec::new();
            for _ in 0..40 {
                match AggregateInstance::rehydrate(plugin.clone(), &journal, stream, u64::MAX) {
                    Ok(mut instance) => balances.push(balance(&instance.state().unwrap())),
                    Err(RuntimeError::WindowMoved { .. }) => {}
                    Err(other) => panic!("{other}"),
                }
            }
            balances
        }
    });
    let mut round = 0;
    while !rebuilding.is_finished() {
        let truncate_before = (round % 2 == 0).then_some(2900);
        let metadata = StreamMetadata {
            truncate_before,
            ..StreamMetadata::default()
        };
        journal.set_stream_metadata(stream, metadata).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        round += 1;
    }
    let balances = rebuilding.await.unwrap();
    // The whole stream, or versions 2900..=3001 of it.
    assert!(
        balances.iter().all(|b| [3000, 102].contains(b)),
        "{balances:?}"
    );
    assert!(
        !balances.is_empty(),
        "no rebuild got one view in {round} toggles"
    );
}

/// Events a scavenge removed stay gone when the rule that hid them is relaxed: the window
/// then starts before the stream's first stored event, and a rebuild folds what is stored
/// rather than taking the gap for a window that moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_scavenged_then_given_a_looser_rule_rebuilds_from_what_is_stored() {
    use foldhost::journal::StreamMetadata;
    let host = Host::new();
    host.load("bank-account").await;
    let journal = host.runtime.journal().clone();
    let stream = "bank-account-kept";
    let mut events = vec![NewEvent::json("Opened", &json!({"owner": "K"}))];
    events.extend((0..99).map(|_| NewEvent::json("Deposited", &json!({"amount": 1}))));
    journal
        .append(stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let keep = |count| StreamMetadata {
        max_count: Some(count),
        ..StreamMetadata::default()
    };
    journal.set_stream_metadata(stream, keep(10)).await.unwrap();
    journal.scavenge().await.unwrap();
    journal.set_stream_metadata(stream, keep(50)).await.unwrap();
    assert_eq!(journal.stream_window(stream).unwrap().first, 51);
    let plugin = host.runtime.aggregate("bank-account").unwrap();
    let state = tokio::task::spawn_blocking(move || {
        let mut instance =
            AggregateInstance::rehydrate(plugin, &journal, stream, u64::MAX).unwrap();
        (instance.version, instance.state().unwrap())
    })
    .await
    .unwrap();
    assert_eq!((state.0, balance(&state.1)), (100, 10));
    let outcome = host
        .command("bank-account", "kept", "Deposit", json!({"amount": 5}))
        .await;
    // Its opening is no longer stored: the account refuses, as a rule, not as a fault.
    assert!(
        matches!(outcome, Err(RuntimeError::Rejected { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_one_stream_are_serialised() {
    let host = Arc::new(Host::new());
    host.load("bank-account").await;
    host.command("bank-account", "hot", "Open", json!({"owner": "Hot"}))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    host.command("bank-account", "hot", "Deposit", json!({"amount": 1}))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!((version, balance(&state)), (81, 80));
}

/// Commands to one stream stay queued in order while the aggregate is swapped back and
/// forth under them: none runs out of conflict retries (the old and the new version do not
/// race each other's appends), and the balance counts every acknowledged deposit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_one_stream_stay_serialised_across_aggregate_swaps() {
    let host = Arc::new(Host::new());
    host.load("bank-account").await;
    host.command("bank-account", "hot", "Open", json!({"owner": "Hot"}))
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (host, stop) = (host.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    host.command("bank-account", "hot", "Deposit", json!({"amount": 1}))
                        .await
                        .unwrap();
                    acknowledged += 1;
                }
                acknowledged
            })
        })
        .collect();
    for build in ["bank-account-v2", "bank-account"].repeat(10) {
        tokio::time::sleep(Duration::from_millis(25)).await;
        host.load(build).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = 0;
    for task in tasks {
        acknowledged += task.await.unwrap();
    }
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!(
        (version, balance(&state)),
        (acknowledged + 1, acknowledged as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_append_is_seen_by_the_next_command() {
    let host = Host::new();
    host.load("bank-account").await;
    host.command("bank-account", "dave", "Open", json!({"owner": "Dave"}))
        .await
        .unwrap();
    host.runtime
        .journal()
        .append(
            "bank-account-dave",
            ExpectedVersion::Exact(1),
            vec![NewEvent::json("Deposited", &json!({"amount": 40}))],
        )
        .await
        .unwrap();
    let state = host
        .command("bank-account", "dave", "Withdraw", json!({"amount": 40}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_everything_else_keeps_serving() {
    let host = Host::new();
    host.load("hostile").await;
    host.load("bank-account").await;
    host.command("bank-account", "eve", "Open", json!({"owner": "Eve"}))
        .await
        .unwrap();
    host.command("hostile", "h", "Ping", Value::Null)
        .await
        .unwrap();

    for (command, expect) in [
        ("Loop", "time limit"),
        ("Allocate", "memory"),
        ("Panic", "panicked"),
        ("Recurse", "stack"),
    ] {
        let outcome = host.command("hostile", "h", command, Value::Null).await;
        match outcome {
            Err(RuntimeError::Trap {
                plugin,
                message,
                context,
            }) => {
                assert_eq!(plugin, "hostile");
                assert!(context.contains(command), "{context}");
                assert!(message.contains(expect), "{command}: {message}");
            }
            other => panic!("{command} was not contained: {other:?}"),
        }
        // The same stream rebuilds on a fresh store; other plugins never noticed.
        host.command("hostile", "h", "Ping", Value::Null)
            .await
            .unwrap();
        host.command("bank-account", "eve", "Deposit", json!({"amount": 1}))
            .await
            .unwrap();
    }
    let (_, state) = host
        .runtime
        .aggregate_state("bank-account", "eve", None)
        .await
        .unwrap();
    assert_eq!(balance(&state), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_traps_on_replay_is_reported_with_its_position() {
    let host = Host::new();
    host.load("hostile").await;
    let journal = host.runtime.journal();
    journal
        .append(
            "hostile-p",
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Poison", &Value::Null)],
        )
        .await
        .unwrap();
    let position = journal.head_position();
    let outcome = host.command("hostile", "p", "Ping", Value::Null).await;
    match outcome {
        Err(RuntimeError::Unfoldable {
            position: at,
            reason,
            ..
        }) => {
            assert_eq!(at, position);
            assert!(reason.contains("panicked"), "{reason}");
        }
        other => panic!("expected the event to be named, got {other:?}"),
    }
    // Other streams of the same plugin still work.
    host.command("hostile", "q", "Ping", Value::Null)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_or_broken_plugins_are_refused_with_a_clear_error() {
    let host = Host::new();
    let bytes = std::fs::read(foldhost_plugins::path("wrong-contract")).unwrap();
    let refused = host
        .runtime
        .load(bytes, "wrong-contract.wasm")
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("wrong-contract.wasm")
            && message.contains("built against contract foldhost:plugin@0.2.0"),
        "{message}"
    );

    let garbage = host
        .runtime
        .load(b"\0asm garbage".to_vec(), "garbage.wasm")
        .await
        .unwrap_err();
    assert!(
        matches!(garbage, RuntimeError::InvalidPlugin { .. }),
        "{garbage:?}"
    );
    assert!(garbage.to_string().contains("garbage.wasm"));

    // A core module is not a component.
    let core = host
        .runtime
        .load(b"\0asm\x01\0\0\0".to_vec(), "core.wasm")
        .await
        .unwrap_err();
    assert!(
        matches!(core, RuntimeError::InvalidPlugin { .. }),
        "{core:?}"
    );
    assert!(host.runtime.list().is_empty());
}

/// The plain output of `cargo build --target wasm32-unknown-unknown` loads: the host
/// componentizes it, into the very component `plugins/artifacts` builds (same hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_is_componentized_on_load() {
    let host = Host::new();
    let core = std::fs::read(foldhost_plugins::bank_account_core_module()).unwrap();
    let info = host.runtime.load(core, "bank_account.wasm").await.unwrap();
    let component = std::fs::read(foldhost_plugins::path("bank-account")).unwrap();
    let loaded = Plugin::load(host.runtime.engine(), &component, "component").unwrap();
    assert_eq!(info.hash, loaded.hash);
    host.command("bank-account", "core", "Open", json!({"owner": "core"}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_follows_live_and_resumes_from_its_checkpoint() {
    let host = Host::new();
    host.load("bank-account").await;
    for i in 0..20 {
        let id = format!("acc{i}");
        host.command("bank-account", &id, "Open", json!({"owner": id}))
            .await
            .unwrap();
        host.command(
            "bank-account",
            &id,
            "Deposit",
            json!({"amount": 10 * (i + 1)}),
        )
        .await
        .unwrap();
    }
    host.load("bank-analytics").await;
    let analytics = host.runtime.projection("bank-analytics").unwrap();
    let head = host.runtime.journal().head_position();
    wait_until_live_at(&analytics, head).await;
    let (_, state) = analytics.state().await.unwrap().unwrap();
    assert_eq!(state["open_accounts"], json!(20), "{state}");
    assert_eq!(
        state["total_balance"],
        json!((1..=20).map(|i| 10 * i).sum::<i64>()),
        "{state}"
    );
    let top = analytics
        .query("top", &json!({"n": 3}))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(top.as_array().map(Vec::len), Some(3), "{top}");

    // Live: a new deposit shows up without any polling on our side.
    host.command("bank-account", "acc0", "Deposit", json!({"amount": 5}))
        .await
        .unwrap();
    wait_until_live_at(&analytics, head + 1).await;
    let (_, state) = analytics.state().await.unwrap().unwrap();
    assert_eq!(state["total_balance"], json!(2105), "{state}");
    let replayed_first = analytics.replayed();
    assert_eq!(replayed_first, head + 1);
    // Let the quiet-period checkpoint land, then restart.
    let hash = analytics.plugin().hash.clone();
    wait_for(|| {
        host.runtime
            .journal()
            .checkpoint(&hash)
            .unwrap()
            .filter(|(p, _)| *p == head + 1)
    })
    .await;
    drop(analytics);

    let host = host.restart().await;
    host.load("bank-account").await;
    host.command("bank-account", "acc1", "Deposit", json!({"amount": 1}))
        .await
        .unwrap();
    host.load("bank-analytics").await;
    let analytics = host.runtime.projection("bank-analytics").unwrap();
    wait_until_live_at(&analytics, head + 2).await;
    assert_eq!(
        analytics.replayed(),
        1,
        "resumed from the checkpoint, not from position 1"
    );
    let (_, state) = analytics.state().await.unwrap().unwrap();
    assert_eq!(state["total_balance"], json!(2106), "{state}");
}

async fn wait_until_live_at(runner: &foldhost::runtime::ProjectionRunner, position: u64) {
    let mut status = runner.watch_status();
    tokio::time::timeout(
        Duration::from_secs(30),
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
    for _ in 0..600 {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 30 s");
}

#[test]
fn plugin_describes_itself() {
    let engine = foldhost::runtime::PluginEngine::new(Default::default(), None).unwrap();
    let bytes = std::fs::read(foldhost_plugins::path("bank-analytics")).unwrap();
    let plugin = Plugin::load(&engine, &bytes, "bank-analytics.wasm").unwrap();
    assert_eq!(plugin.name(), "bank-analytics");
    assert_eq!(
        plugin.subscription.categories,
        vec!["bank-account".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_reports_streams_whose_state_changes_between_versions() {
    let host = Host::new();
    host.load("bank-account").await;
    for id in ["a", "b", "c"] {
        host.command("bank-account", id, "Open", json!({"owner": id}))
            .await
            .unwrap();
        host.command("bank-account", id, "Deposit", json!({"amount": 7}))
            .await
            .unwrap();
    }
    let engine = host.runtime.engine().clone();
    let plugin = |name: &str| {
        let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
        Plugin::load(&engine, &bytes, name).unwrap()
    };
    let (account, v1, v2) = (
        plugin("bank-account"),
        plugin("bank-analytics"),
        plugin("bank-analytics-v2"),
    );
    let journal = host.runtime.journal().clone();
    tokio::task::spawn_blocking(move || {
        let mut calls = 0;
        let same = foldhost::runtime::diff_versions(
            &journal,
            &foldhost::runtime::UpcasterChain::default(),
            &account,
            &account,
            5,
            |_, _| calls += 1,
        )
        .unwrap();
        assert_eq!((same.compared, same.differing, calls), (3, 0, 3));

        let changed = foldhost::runtime::diff_versions(
            &journal,
            &foldhost::runtime::UpcasterChain::default(),
            &v1,
            &v2,
            5,
            |_, _| {},
        )
        .unwrap();
        assert_eq!((changed.compared, changed.differing), (1, 1));
        let sample = &changed.samples[0];
        assert_eq!(sample.stream, "$all");
        let (old, new) = (sample.old.as_ref().unwrap(), sample.new.as_ref().unwrap());
        assert_eq!(old["total_balance"], new["total_balance"]);
        assert_ne!(old, new);

        let mixed = foldhost::runtime::diff_versions(
            &journal,
            &foldhost::runtime::UpcasterChain::default(),
            &account,
            &v2,
            5,
            |_, _| {},
        );
        assert!(
            matches!(mixed, Err(RuntimeError::InvalidPlugin { .. })),
            "{mixed:?}"
        );
    })
    .await
    .unwrap();
}

/// A stream that neither version can fold is reported, not counted as ending alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_reports_a_stream_that_neither_version_can_fold() {
    let host = Host::new();
    host.load("hostile").await;
    host.command("hostile", "fine", "Ping", Value::Null)
        .await
        .unwrap();
    let poison = vec![NewEvent::json("Poison", &Value::Null)];
    host.runtime
        .append("hostile-bad", ExpectedVersion::Any, poison, false)
        .await
        .unwrap();
    let bytes = std::fs::read(foldhost_plugins::path("hostile")).unwrap();
    let hostile = Arc::new(Plugin::load(host.runtime.engine(), &bytes, "hostile").unwrap());
    let journal = host.runtime.journal().clone();
    let report = tokio::task::spawn_blocking(move || {
        let chain = foldhost::runtime::UpcasterChain::default();
        foldhost::runtime::diff_versions(&journal, &chain, &hostile, &hostile, 5, |_, _| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!((report.compared, report.differing), (2, 1));
    let sample = &report.samples[0];
    assert_eq!(sample.stream, "hostile-bad");
    assert!(sample.old.is_err() && sample.new.is_err(), "{sample:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_projection_version_takes_over_at_the_head_and_a_broken_one_does_not() {
    let host = Host::new();
    host.load("bank-account").await;
    host.load("bank-analytics").await;
    for i in 0..30 {
        let id = format!("s{i}");
        host.command("bank-account", &id, "Open", json!({"owner": id}))
            .await
            .unwrap();
        host.command("bank-account", &id, "Deposit", json!({"amount": i + 1}))
            .await
            .unwrap();
    }
    let old = host.runtime.projection("bank-analytics").unwrap();
    let old_hash = old.plugin().hash.clone();
    wait_until_live_at(&old, host.runtime.journal().head_position()).await;

    // A broken build under the same name is refused; the old version answers.
    let refused = host
        .runtime
        .load(b"\0asm\x0d\0\x01\0".to_vec(), "bank-analytics.wasm")
        .await;
    assert!(refused.is_err());
    let info = host.runtime.info("bank-analytics").unwrap();
    assert_eq!(info.hash, old_hash);
    assert!(info.last_error.is_some(), "{info:?}");

    let v2 = std::fs::read(foldhost_plugins::path("bank-analytics-v2")).unwrap();
    host.runtime
        .load(v2, "bank-analytics-v2.wasm")
        .await
        .unwrap();
    let swapped = wait_for(|| {
        let info = host.runtime.info("bank-analytics").unwrap();
        (info.hash != old_hash && info.pending.is_none()).then_some(info)
    })
    .await;
    assert_eq!(swapped.version, "2.0.0");
    let new = host.runtime.projection("bank-analytics").unwrap();
    let (position, state) = new.state().await.unwrap().unwrap();
    assert_eq!(position, host.runtime.journal().head_position());

    // The swapped-in state equals a fresh offline replay of the new version.
    let (plugin, journal) = (new.plugin().clone(), host.runtime.journal().clone());
    let offline = tokio::task::spawn_blocking(move || {
        let mut instance = foldhost::runtime::ProjectionInstance::new(plugin, None).unwrap();
        instance.catch_up(&journal).unwrap();
        instance.state().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(state, offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_builds_still_catching_up_give_their_memory_back() {
    let host = Host::new();
    let budget = host.runtime.engine().memory_budget().clone();
    // Each Poison costs a fresh run (a reset ignores the parked list) a rebuild of its state
    // before it parks it, and three pages of them keep a rebuild pending, catching up, long
    // enough to be replaced while folding.
    let mut events = vec![NewEvent::json("Ponged", &Value::Null)];
    events.extend((0..3000).map(|_| NewEvent::json("Poison", &Value::Null)));
    host.runtime
        .journal()
        .append("hostile-m", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    host.load("mischief").await;
    let active = host.runtime.projection("mischief").unwrap();
    wait_until_live_at(&active, host.runtime.journal().head_position()).await;
    drop(active);

    // Each reset supersedes the rebuild before it, once that one holds a store of its own.
    for _ in 0..3 {
        host.runtime.reset("mischief").unwrap();
        wait_for(|| {
            let info = host.runtime.info("mischief").unwrap();
            let pending = info.pending?;
            matches!(
                pending.status,
                ProjectionStatus::CatchingUp { .. } | ProjectionStatus::Retrying { .. }
            )
            .then_some(())
        })
        .await;
    }
    // Unloaded while the last rebuild catches up: every run's store goes, and its memory with
    // it (nothing else here holds a plugin store).
    host.runtime.unload("mischief", false).await.unwrap();
    wait_for(|| (budget.used() == 0).then_some(())).await;
}

/// Past states (`?at_version=`) are rebuilt in fresh stores a few at a time: a crowd of
/// historical reads of a long stream queues for its turn instead of taking the host's plugin
/// memory budget from every other plugin and stream, and each read still gets its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_reads_are_rebuilt_a_few_at_a_time() {
    let host = Host::new();
    host.load("bank-account").await;
    let budget = host.runtime.engine().memory_budget().clone();
    // Appended directly, so no snapshots: every read folds the stream from its first event.
    let mut events = vec![NewEvent::json("Opened", &json!({"owner": "ada"}))];
    events.extend((1..3000u64).map(|i| NewEvent::json("Deposited", &json!({"amount": i}))));
    host.runtime
        .journal()
        .append("bank-account-long", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    // One instance's bytes, that of the current state the cache keeps live from here on.
    let before = budget.used();
    host.runtime
        .aggregate_state("bank-account", "long", None)
        .await
        .unwrap();
    let one = budget.used() - before;
    assert!(one > 0, "the live state holds no memory");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, budget) = (stop.clone(), budget.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(budget.used());
                std::thread::sleep(Duration::from_micros(100));
            }
            most
        })
    };
    let reads: Vec<_> = (0..12 * HISTORY_SLOTS as u64)
        .map(|i| {
            let runtime = host.runtime.clone();
            let at = 3000 - i * 50;
            tokio::spawn(async move {
                let answer = runtime
                    .aggregate_state("bank-account", "long", Some(at))
                    .await;
                (at, answer)
            })
        })
        .collect();
    for read in reads {
        let (at, answer) = read.await.unwrap();
        let (version, state) = answer.unwrap_or_else(|error| panic!("at {at}: {error}"));
        assert_eq!(version, at);
        assert_eq!(
            balance(&state),
            (1..at as i64).sum::<i64>(),
            "at {at}: {state}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    // The live state and at most a slot's worth of rebuilds (each folds no more than it).
    let bound = before + one * (1 + HISTORY_SLOTS);
    assert!(
        most <= bound,
        "plugin stores held {most} bytes at once; {HISTORY_SLOTS} rebuilds and the live state \
         hold {bound} ({one} each)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_queries_on_one_projection_leaves_the_others_answering() {
    // mischief's `loop` query spins until its call times out, keeping mischief's turn.
    let overrides = ["mischief:timeout=5s".parse().unwrap()];
    let host = Host::with(RuntimeConfig {
        limits: LimitPolicy::new(Limits::default(), &overrides),
        ..config()
    });
    host.load("mischief").await;
    host.load("bank-analytics").await;
    let mischief = host.runtime.projection("mischief").unwrap();
    let analytics = host.runtime.projection("bank-analytics").unwrap();
    wait_until_live_at(&mischief, 0).await;
    wait_until_live_at(&analytics, 0).await;

    // One spinning query, and more waiting for their turn on mischief than the host has
    // query slots.
    let backlog: Vec<_> = (0..9)
        .map(|_| {
            let mischief = mischief.clone();
            tokio::spawn(async move { mischief.query("loop", &Value::Null).await })
        })
        .collect();
    // Lets the backlog line up before bank-analytics is asked: without the pause a host that
    // queues them together could pass; one that does not passes either way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = analytics.state().await;
    // No query on mischief has ended yet (the spinning one runs 5 s, the others give up
    // waiting after 10 s): the answer waited for none of them.
    let waiting = backlog.iter().filter(|query| !query.is_finished()).count();
    assert!(matches!(answer, Ok(Some(_))), "{answer:?}");
    assert_eq!(
        waiting,
        backlog.len(),
        "bank-analytics waited for mischief's queries"
    );
    for query in backlog {
        query.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_file_in_the_watched_directory_is_loaded() {
    let host = Host::new();
    let dir = tempfile::tempdir().unwrap();
    let _watcher = foldhost::runtime::plugin_dir::watch(host.runtime.clone(), dir.path()).unwrap();
    // Write under a temporary name, then rename into place, as deploy tools do.
    let staging = dir.path().join("bank-account.wasm.part");
    std::fs::copy(foldhost_plugins::path("bank-account"), &staging).unwrap();
    std::fs::rename(&staging, dir.path().join("bank-account.wasm")).unwrap();
    wait_for(|| host.runtime.aggregate("bank-account").ok()).await;
    host.command("bank-account", "w", "Open", json!({"owner": "W"}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_checkpoints_projections_so_a_restart_replays_nothing() {
    // No checkpoint would be due by count or time: only shutdown stores one.
    let host = Host::with(RuntimeConfig {
        checkpoints: CheckpointPolicy {
            every_events: 1_000_000,
            every: Duration::from_secs(3600),
        },
        ..RuntimeConfig::default()
    });
    host.load("bank-account").await;
    host.load("bank-analytics").await;
    for i in 0..40 {
        let id = format!("z{i}");
        host.command("bank-account", &id, "Open", json!({"owner": id}))
            .await
            .unwrap();
    }
    let head = host.runtime.journal().head_position();
    wait_until_live_at(&host.runtime.projection("bank-analytics").unwrap(), head).await;

    let host = host.restart().await;
    host.load("bank-analytics").await;
    let analytics = host.runtime.projection("bank-analytics").unwrap();
    wait_until_live_at(&analytics, head).await;
    assert_eq!(analytics.replayed(), 0, "resumed at the head");
    let (_, state) = analytics.state().await.unwrap().unwrap();
    assert_eq!(state["open_accounts"], json!(40), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_states_are_passivated_and_answer_from_their_whole_history() {
    let host = Host::with(RuntimeConfig {
        aggregates: AggregateConfig {
            snapshot_every: 10,
            passivate_after: Some(Duration::from_secs(2)),
            ..AggregateConfig::default()
        },
        ..config()
    });
    host.load("bank-account").await;
    // Both streams in turns, so neither idles long enough to be passivated before the check
    // below, however slow the machine: past two snapshots each, with a tail after the last.
    for id in ["alice", "bob"] {
        host.command("bank-account", id, "Open", json!({"owner": id}))
            .await
            .unwrap();
    }
    for _ in 0..25 {
        for id in ["alice", "bob"] {
            host.command("bank-account", id, "Deposit", json!({"amount": 2}))
                .await
                .unwrap();
        }
    }
    assert_eq!(host.runtime.command_stats().cached_streams, 2);
    assert!(host.runtime.command_stats().cached_bytes > 0);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = host.runtime.command_stats();
        if stats.cached_streams == 0 && stats.cached_bytes == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle states were never passivated: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = host
        .command("bank-account", "alice", "Deposit", json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 51);
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "bob", None)
        .await
        .unwrap();
    assert_eq!((version, balance(&state)), (26, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregate_cache_keeps_to_its_byte_budget_and_evicted_states_come_back() {
    const BUDGET: usize = 4 << 20;
    const ACCOUNTS: u64 = 150;
    let host = Host::with(RuntimeConfig {
        aggregates: AggregateConfig {
            cache_bytes: BUDGET,
            snapshot_every: 10,
            ..AggregateConfig::default()
        },
        ..config()
    });
    host.load("bank-account").await;
    let plugin = host.runtime.aggregate("bank-account").unwrap();
    let one = AggregateInstance::new(plugin, "bank-account-probe", None)
        .unwrap()
        .footprint();
    for i in 0..ACCOUNTS {
        let id = format!("acct-{i}");
        host.command("bank-account", &id, "Open", json!({"owner": id}))
            .await
            .unwrap();
        host.command("bank-account", &id, "Deposit", json!({"amount": i + 1}))
            .await
            .unwrap();
        let cached = host.runtime.command_stats().cached_bytes as usize;
        // Only the state just used may stand beyond the budget.
        assert!(
            cached <= BUDGET + one,
            "{cached} bytes cached against a budget of {BUDGET} (one state is {one})"
        );
    }
    let stats = host.runtime.command_stats();
    assert!(
        stats.cached_streams < ACCOUNTS,
        "{} of {ACCOUNTS} states are still cached: nothing was evicted",
        stats.cached_streams
    );
    assert!(stats.cached_bytes > 0, "no bytes counted at all");
    // Every account, evicted or not, answers from its whole history.
    for i in 0..ACCOUNTS {
        let state = host
            .command(
                "bank-account",
                &format!("acct-{i}"),
                "Deposit",
                json!({"amount": 1}),
            )
            .await
            .unwrap();
        assert_eq!(balance(&state), i as i64 + 2);
    }
}

/// A host whose cache keeps one live state and whose journal has no snapshots below 1,000
/// events: an evicted state comes back only from its dehydrated snapshot or a full replay.
fn one_live_state() -> Host {
    Host::with(RuntimeConfig {
        aggregates: AggregateConfig {
            cache_capacity: 1,
            snapshot_every: 1000,
            passivate_after: None,
            ..AggregateConfig::default()
        },
        ..config()
    })
}

/// Opens `id` and deposits 2 twenty times (version 21, balance 40).
async fn open_with_deposits(host: &Host, id: &str) {
    host.command("bank-account", id, "Open", json!({"owner": id}))
        .await
        .unwrap();
    for _ in 0..20 {
        host.command("bank-account", id, "Deposit", json!({"amount": 2}))
            .await
            .unwrap();
    }
}

/// Waits until `count` states are dehydrated. A state still held by its round's driver when
/// the cache passed its bound is evicted by the cache's next use, so each try reads the state of
/// `plugin`'s `id`, the most recently used stream (which keeps its own place).
async fn wait_dehydrated(host: &Host, count: u64, plugin: &str, id: &str) {
    for _ in 0..600 {
        if host.runtime.command_stats().dehydrated_streams == count {
            return;
        }
        host.runtime
            .aggregate_state(plugin, id, None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} dehydrated states not reached within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_state_comes_back_from_its_dehydrated_snapshot_plus_the_events_since() {
    let host = one_live_state();
    host.load("bank-account").await;
    open_with_deposits(&host, "alice").await;
    // Bob's slot evicts alice's state: it is dehydrated.
    host.command("bank-account", "bob", "Open", json!({"owner": "bob"}))
        .await
        .unwrap();
    wait_dehydrated(&host, 1, "bank-account", "bob").await;
    host.runtime
        .journal()
        .append(
            "bank-account-alice",
            ExpectedVersion::Exact(21),
            vec![NewEvent::json("Deposited", &json!({"amount": 5}))],
        )
        .await
        .unwrap();

    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "alice", None)
        .await
        .unwrap();
    assert_eq!((version, balance(&state)), (22, 45));
    assert_eq!(
        host.runtime.command_stats().rehydrated,
        1,
        "not from memory"
    );

    // And through a command, with bob's state dehydrated by alice's read.
    wait_dehydrated(&host, 1, "bank-account", "alice").await;
    let state = host
        .command("bank-account", "bob", "Deposit", json!({"amount": 7}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 7);
    assert_eq!(
        host.runtime.command_stats().rehydrated,
        2,
        "not from memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_drops_the_dehydrated_states_of_the_build_it_replaces() {
    let host = one_live_state();
    host.load("bank-account").await;
    open_with_deposits(&host, "alice").await;
    host.command("bank-account", "bob", "Open", json!({"owner": "bob"}))
        .await
        .unwrap();
    wait_dehydrated(&host, 1, "bank-account", "bob").await;

    host.load("bank-account-v2").await;
    assert_eq!(host.runtime.command_stats().dehydrated_streams, 0);
    let state = host
        .command("bank-account", "alice", "Deposit", json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(balance(&state), 41);
    assert_eq!(
        host.runtime.command_stats().rehydrated,
        0,
        "the old build's state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_whose_snapshot_traps_on_eviction_is_dropped_and_rebuilt_from_the_journal() {
    let host = one_live_state();
    host.load("hostile").await;
    host.command("hostile", "h", "Ping", Value::Null)
        .await
        .unwrap();
    host.command("hostile", "h", "Jam", Value::Null)
        .await
        .unwrap();
    // g evicts h, whose snapshot traps; k evicts g, dehydrated after h in turn.
    for id in ["g", "k"] {
        host.command("hostile", id, "Ping", Value::Null)
            .await
            .unwrap();
    }
    wait_dehydrated(&host, 1, "hostile", "k").await;

    let state = host
        .command("hostile", "h", "Ping", Value::Null)
        .await
        .unwrap();
    assert_eq!(state["pongs"], json!(2), "{state}");
    assert_eq!(host.runtime.command_stats().rehydrated, 0);
    let state = host
        .command("hostile", "g", "Ping", Value::Null)
        .await
        .unwrap();
    assert_eq!(state["pongs"], json!(2), "{state}");
}

/// A state whose snapshots do not restore (hostile's `Garbled` field is left out of them: an
/// encoding that does not round-trip) is folded from its events instead, from a stored
/// snapshot, a dehydrated one, and for the copy an append is checked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_whose_snapshots_do_not_restore_is_folded_from_its_events() {
    let host = Host::with(RuntimeConfig {
        aggregates: AggregateConfig {
            cache_capacity: 1,
            snapshot_every: 2,
            passivate_after: None,
            ..AggregateConfig::default()
        },
        ..config()
    });
    host.load("hostile").await;
    for command in ["Ping", "Garble", "Ping", "Ping"] {
        host.command("hostile", "h", command, Value::Null)
            .await
            .unwrap();
    }
    let pong = || vec![NewEvent::json("Ponged", &Value::Null)];
    let appended = host
        .runtime
        .append("hostile-h", ExpectedVersion::Exact(4), pong(), true)
        .await
        .unwrap();
    assert_eq!(appended.last_version, 5);

    // g evicts h and k evicts g, both dehydrated.
    for id in ["g", "k"] {
        host.command("hostile", id, "Ping", Value::Null)
            .await
            .unwrap();
    }
    wait_dehydrated(&host, 2, "hostile", "k").await;
    let state = host
        .command("hostile", "h", "Ping", Value::Null)
        .await
        .unwrap();
    assert_eq!(state["pongs"], json!(5), "{state}");

    let host = host.restart().await;
    host.load("hostile").await;
    let (version, state) = (host.runtime.aggregate_state("hostile", "h", None).await).unwrap();
    assert_eq!((version, &state["pongs"]), (6, &json!(5)), "{state}");
    host.runtime
        .append("hostile-h", ExpectedVersion::Exact(6), pong(), true)
        .await
        .unwrap();
}

/// Plugins built with the Rust SDK export the packed folds of contract 0.1.2 and are fed
/// packed batches; plugins without them (a 0.1.0 build, the JavaScript SDK's) get span
/// batches; both fold the same events to the same state.
#[test]
fn packed_folds_are_used_when_exported_and_span_batches_otherwise() {
    let engine = foldhost::runtime::PluginEngine::new(Default::default(), None).unwrap();
    let load = |name: &str| {
        let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
        Arc::new(Plugin::load(&engine, &bytes, name).unwrap())
    };
    let rust = load(foldhost_plugins::BANK_ACCOUNT);
    let js = load(foldhost_plugins::BANK_ACCOUNT_JS);
    assert!(rust.packed());
    assert!(load(foldhost_plugins::BANK_ANALYTICS).packed());
    assert!(!js.packed());
    assert!(!load(foldhost_plugins::OLD_CONTRACT).packed());

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), JournalConfig::default()).unwrap();
    let mut events = vec![NewEvent::json("Opened", &json!({"owner": "ada"}))];
    events.extend((1..3000u64).map(|i| NewEvent::json("Deposited", &json!({"amount": i}))));
    journal
        .append_blocking("bank-account-1", ExpectedVersion::NoStream, events)
        .unwrap();
    let stored = journal.read_stream("bank-account-1", 1, 10_000).unwrap();
    let fold = |plugin: &Arc<Plugin>| {
        let mut instance = AggregateInstance::new(plugin.clone(), "bank-account-1", None).unwrap();
        for batch in stored.chunks(1024) {
            instance.apply(batch).unwrap();
        }
        instance.state().unwrap()
    };
    let state = fold(&rust);
    assert_eq!(balance(&state), (1..3000).sum::<i64>(), "{state}");
    assert_eq!(state, fold(&js));
}

/// A projection is fed only the events of a page it subscribes to, straight into its
/// batch; when its fold fails, the message names the first and last of those, and the
/// projection stays where it was.
#[test]
fn a_projection_is_fed_the_wanted_events_and_a_failure_names_their_positions() {
    let engine = foldhost::runtime::PluginEngine::new(Default::default(), None).unwrap();
    let bytes = std::fs::read(foldhost_plugins::path(foldhost_plugins::BANK_ANALYTICS)).unwrap();
    let plugin = Plugin::load(&engine, &bytes, "bank-analytics").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), JournalConfig::default()).unwrap();
    let append = |stream: &str, event_type: &str, data: Value| {
        let event = NewEvent::json(event_type, &data);
        journal
            .append_blocking(stream, ExpectedVersion::Any, vec![event])
            .unwrap();
    };
    append("other-1", "Opened", json!({"owner": "not an account"}));
    append("bank-account-a", "Opened", json!({"owner": "ada"}));
    append("bank-account-a", "Deposited", json!({"amount": "ten"}));
    append("other-2", "Deposited", json!({"amount": 5}));
    append("bank-account-a", "Deposited", json!({"amount": 10}));
    append("other-3", "Opened", json!({"owner": "not an account"}));
    let page = journal.read_all(1, 10).unwrap();

    let mut instance = foldhost::runtime::ProjectionInstance::new(plugin, None).unwrap();
    match instance.apply(&page[..4]) {
        Err(RuntimeError::PluginFailed { context, .. }) => {
            assert_eq!(context, "applying events at positions 2..=3")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(instance.position, 0);
    instance.apply(&page[..1]).unwrap();
    assert_eq!(
        instance.position, 1,
        "a page of unwanted events is passed over"
    );
    instance.apply(&page[1..2]).unwrap();
    instance.apply(&page[4..]).unwrap();
    assert_eq!(instance.position, 6);
    let state = instance.state().unwrap();
    assert_eq!(state["open_accounts"], json!(1), "{state}");
    assert_eq!(state["total_balance"], json!(10), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upcaster_store_whose_plugin_refused_an_event_goes_back_to_the_pool() {
    let host = Host::new();
    host.load(foldhost_plugins::HOSTILE_UPCASTER).await;
    let journal = host.runtime.journal();
    // A `Poison` event whose data is not JSON: the upcaster cannot decode it and refuses it
    // (an error it returns, its store intact); one that decodes makes it panic (a trap, its
    // store broken).
    let mut undecodable = NewEvent::json("Poison", &Value::Null);
    undecodable.data = b"{not json".to_vec();
    let events = vec![undecodable, NewEvent::json("Poison", &Value::Null)];
    journal
        .append("bank-account-p", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let stored = journal.read_stream("bank-account-p", 1, 2).unwrap();
    let (refused, trapping) = (vec![stored[0].clone()], vec![stored[1].clone()]);
    let memory = host.runtime.engine().memory_budget().clone();
    let idle = memory.used();

    // The refusal leaves its store's memory counted: the store is idle in the pool, not
    // dropped.
    let upcast = |events: Vec<_>| host.runtime.upcasters().upcast(events);
    match upcast(refused) {
        Err(RuntimeError::PluginFailed { message, .. }) => {
            assert!(message.contains("cannot apply event"), "{message}")
        }
        other => panic!("expected the upcaster to refuse the event, got {other:?}"),
    }
    let pooled = memory.used();
    assert!(
        pooled > idle,
        "the refusing store was dropped: {pooled} bytes in use"
    );
    // A trap drops the store it broke (the one from the pool): its memory goes back.
    match upcast(trapping) {
        Err(RuntimeError::Trap { message, .. }) => assert!(message.contains("panicked")),
        other => panic!("expected the upcaster to trap, got {other:?}"),
    }
    assert_eq!(memory.used(), idle, "the trapped store was kept");
}

/// An unload that drops a projection's data while a restart of it saves its checkpoint writes
/// none of it back: whichever goes first, the build's next load starts from position 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_racing_an_unload_that_drops_the_data_leaves_none_of_it() {
    let host = Host::new();
    host.load("bank-account").await;
    for round in 0..6 {
        host.command(
            "bank-account",
            &format!("r{round}"),
            "Open",
            json!({"owner": "ada"}),
        )
        .await
        .unwrap();
        host.load("bank-analytics").await;
        let analytics = host.runtime.projection("bank-analytics").unwrap();
        wait_until_live_at(&analytics, host.runtime.journal().head_position()).await;
        let hash = analytics.plugin().hash.clone();
        drop(analytics);

        let (unloaded, restarted) = if round % 2 == 0 {
            tokio::join!(
                host.runtime.unload("bank-analytics", true),
                host.runtime.restart("bank-analytics"),
            )
        } else {
            let (restarted, unloaded) = tokio::join!(
                host.runtime.restart("bank-analytics"),
                host.runtime.unload("bank-analytics", true),
            );
            (unloaded, restarted)
        };
        unloaded.unwrap();
        if let Err(error) = restarted {
            assert!(matches!(error, RuntimeError::UnknownPlugin(_)), "{error}");
        }
        let checkpoint = host.runtime.journal().checkpoint(&hash).unwrap();
        assert!(
            checkpoint.is_none(),
            "round {round}: a checkpoint came back"
        );
    }
}

/// An unload that drops an aggregate's data while its commands are deciding leaves no
/// snapshot of that build behind: a command finishing after the data went writes none back,
/// also one still running on the build's load before an unload that kept the data and a
/// reload of the same build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_that_drops_the_data_while_commands_run_leaves_no_snapshot() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    const STREAMS: usize = 32;
    let mut host = Host::with(RuntimeConfig {
        aggregates: AggregateConfig {
            snapshot_every: 1,
            ..AggregateConfig::default()
        },
        ..config()
    });
    for round in 0..4 {
        let host_ = Arc::new(host);
        host_.load("bank-account").await;
        let hash = host_
            .runtime
            .aggregate("bank-account")
            .unwrap()
            .hash
            .clone();
        let (decided, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let ids: Vec<String> = (0..STREAMS).map(|i| format!("r{round}-{i}")).collect();
        let tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (host, decided, stop) = (host_.clone(), decided.clone(), stop.clone());
                let id = id.clone();
                tokio::spawn(async move {
                    let mut command = ("Open", json!({"owner": "ada"}));
                    while !stop.load(Relaxed) {
                        // Refused while the plugin is not loaded.
                        if host
                            .command("bank-account", &id, command.0, command.1.clone())
                            .await
                            .is_ok()
                        {
                            decided.fetch_add(1, Relaxed);
                            command = ("Deposit", json!({"amount": 1}));
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let decided_past = |count: usize| {
            let decided = decided.clone();
            wait_for(move || (decided.load(Relaxed) >= count).then_some(()))
        };
        decided_past(4 * STREAMS).await;
        if round % 2 == 1 {
            // The same build unloaded and loaded again: commands running meanwhile finish
            // on the load before, whose states the reload keeps using.
            host_.runtime.unload("bank-account", false).await.unwrap();
            host_.load("bank-account").await;
            decided_past(decided.load(Relaxed) + 4 * STREAMS).await;
        }
        host_.runtime.unload("bank-account", true).await.unwrap();
        stop.store(true, Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        // A restart waits for every write still holding the journal.
        host = Arc::into_inner(host_).unwrap().restart().await;
        for id in &ids {
            let stream = format!("bank-account-{id}");
            let snapshot = host
                .runtime
                .journal()
                .latest_snapshot(&hash, &stream, u64::MAX)
                .unwrap();
            assert!(
                snapshot.is_none(),
                "round {round}: {stream} has a snapshot at version {} after its data was dropped",
                snapshot.unwrap().0
            );
        }
    }
}

/// A restart whose caller goes away after its first step (a client hanging up) still ends
/// with a run folding for the projection, not with the old one stopped and nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_abandoned_half_way_still_leaves_the_projection_folding() {
    let host = Host::new();
    host.load("bank-account").await;
    host.load("bank-analytics").await;
    host.command("bank-account", "a1", "Open", json!({"owner": "ada"}))
        .await
        .unwrap();
    let before = host.runtime.projection("bank-analytics").unwrap();
    wait_until_live_at(&before, host.runtime.journal().head_position()).await;
    drop(before);
    {
        // Polled once, far enough to stop the running fold, then dropped.
        let mut restart = std::pin::pin!(host.runtime.restart("bank-analytics"));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(restart.as_mut().poll(&mut context).is_pending());
    }
    host.command("bank-account", "a2", "Open", json!({"owner": "bob"}))
        .await
        .unwrap();
    let head = host.runtime.journal().head_position();
    let after = wait_for(|| {
        let runner = host.runtime.projection("bank-analytics").ok()?;
        let live =
            matches!(runner.status(), ProjectionStatus::Live { position } if position >= head);
        live.then_some(runner)
    })
    .await;
    let (_, state) = after.state().await.unwrap().unwrap();
    assert_eq!(state["open_accounts"], json!(2), "{state}");
}
