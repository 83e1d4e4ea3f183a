//! The command pipeline of a hot stream, with the real bank-account plugin: the commands queued
//! on one aggregate are decided one after another, each on the state the previous one produced,
//! and appended in one commit, each keeping its own outcome.
//!
//! The rounds are lined up exactly: a disk whose syncs the test holds keeps the journal's
//! writer inside the commit of a first command while the others queue behind it
//! (`foldhost_tests::gated_disk`). The PostgreSQL test needs `FOLDHOST_TEST_POSTGRES`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foldhost::journal::{
    ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent, StreamMetadata,
};
use foldhost::runtime::{
    AggregateConfig, Command, CommandOutcome, Runtime, RuntimeConfig, RuntimeError,
};
use foldhost_tests::gated_disk::{Gate, GatedDisk};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(60);

type Outcome = Result<CommandOutcome, RuntimeError>;

/// A command as the tests write it: type, data, idempotency key.
type Sent = (&'static str, Value, Option<&'static str>);

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn runtime_on(journal: Journal, aggregates: AggregateConfig) -> Arc<Runtime> {
    let config = RuntimeConfig {
        aggregates,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(journal, config).unwrap();
    let bytes = std::fs::read(foldhost_plugins::path("bank-account")).unwrap();
    runtime.load(bytes, "bank-account").await.unwrap();
    runtime
}

fn send(runtime: &Arc<Runtime>, id: &str, sent: Sent) -> JoinHandle<Outcome> {
    send_to(runtime, "bank-account", id, sent)
}

fn send_to(
    runtime: &Arc<Runtime>,
    plugin: &'static str,
    id: &str,
    (kind, data, key): Sent,
) -> JoinHandle<Outcome> {
    let (runtime, id) = (runtime.clone(), id.to_owned());
    let command = Command {
        command_type: kind.to_owned(),
        data: serde_json::to_vec(&data).unwrap(),
        idempotency_key: key.map(str::to_owned),
    };
    tokio::spawn(async move { runtime.execute_command(plugin, &id, command).await })
}

fn deposit(amount: u64) -> Sent {
    ("Deposit", json!({"amount": amount}), None)
}

fn withdraw(amount: u64) -> Sent {
    ("Withdraw", json!({"amount": amount}), None)
}

fn balance(outcome: &CommandOutcome) -> u64 {
    let state = outcome.state.as_ref().expect("the state after the command");
    state["balance"].as_u64().unwrap()
}

fn stored_types(journal: &Journal, stream: &str) -> Vec<String> {
    let events = journal.read_stream(stream, 1, 1000).unwrap();
    events.into_iter().map(|e| e.event_type.into()).collect()
}

/// The balance of `stream` after each version (index 0: before the first), folded from the
/// journal by the test itself.
fn balances(journal: &Journal, stream: &str) -> Vec<u64> {
    let mut balances = vec![0];
    loop {
        let page = journal
            .read_stream(stream, balances.len() as u64, 1000)
            .unwrap();
        if page.is_empty() {
            return balances;
        }
        for event in page {
            let data: Value = serde_json::from_slice(&event.data).unwrap();
            let amount = data["amount"].as_u64().unwrap_or(0);
            let balance = *balances.last().unwrap();
            balances.push(match &*event.event_type {
                "Deposited" => balance + amount,
                "Withdrawn" => balance - amount,
                _ => balance,
            });
        }
    }
}

/// A host on a disk whose syncs the test holds.
struct Gated {
    runtime: Arc<Runtime>,
    journal: Journal,
    gate: Arc<Gate>,
}

impl Gated {
    async fn new() -> Self {
        Self::with(JournalConfig::default()).await
    }

    async fn with(config: JournalConfig) -> Self {
        let disk = GatedDisk::new();
        let gate = disk.gate();
        let journal = Journal::open_on(disk, config).unwrap();
        let runtime = runtime_on(journal.clone(), AggregateConfig::default()).await;
        let host = Self {
            runtime,
            journal,
            gate,
        };
        let opened = send(
            &host.runtime,
            "hot",
            ("Open", json!({"owner": "Hot"}), None),
        );
        opened.await.unwrap().unwrap();
        host
    }

    /// Holds the journal inside the commit of a first deposit of 1 on account `hot`, queues
    /// `commands` behind it in this order, then lets them run: they form one round.
    /// `before_release` runs while everything is lined up.
    async fn round(
        &self,
        commands: Vec<Sent>,
        before_release: impl Future<Output = ()>,
    ) -> Vec<Outcome> {
        self.round_behind(deposit(1), commands, before_release)
            .await
    }

    /// [`round`](Self::round) behind a `first` command of the test's choosing.
    async fn round_behind(
        &self,
        first: Sent,
        commands: Vec<Sent>,
        before_release: impl Future<Output = ()>,
    ) -> Vec<Outcome> {
        let stats = self.runtime.command_stats();
        self.gate.hold();
        let first = send(&self.runtime, "hot", first);
        wait_until("the first command's commit waits for its sync", || {
            self.gate.waiting() == 1
        })
        .await;
        let mut queued = Vec::new();
        for command in commands {
            queued.push(send(&self.runtime, "hot", command));
            let expected = stats.queued + 1 + queued.len() as u64;
            wait_until("the command is queued", || {
                self.runtime.command_stats().queued == expected
            })
            .await;
        }
        before_release.await;
        self.gate.release();
        first.await.unwrap().unwrap();
        let mut outcomes = Vec::new();
        for command in queued {
            outcomes.push(command.await.unwrap());
        }
        let rounds = self.runtime.command_stats().rounds - stats.rounds;
        assert_eq!(
            rounds, 2,
            "the first command's round, then one for the queued commands"
        );
        outcomes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_mid_pipeline_appends_nothing_and_the_others_see_each_others_events() {
    let host = Gated::new().await;
    let commits = host.journal.stats().commits;
    let outcomes = host
        .round(
            vec![deposit(100), withdraw(150), withdraw(80), deposit(0)],
            async {},
        )
        .await;

    // The first deposit left 1; the round decided on 1, then on 101.
    let deposited = outcomes[0].as_ref().unwrap();
    assert_eq!((deposited.version, balance(deposited)), (3, 101));
    match &outcomes[1] {
        Err(RuntimeError::Rejected { reason, .. }) => {
            assert!(reason.contains("balance 101, requested 150"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Decided on the deposit before it, although that was not stored yet.
    let withdrawn = outcomes[2].as_ref().unwrap();
    assert_eq!((withdrawn.version, balance(withdrawn)), (4, 21));
    assert_eq!(withdrawn.events.len(), 1);
    assert_eq!(withdrawn.events[0].event_type, "Withdrawn");
    assert!(
        matches!(&outcomes[3], Err(RuntimeError::Rejected { reason, .. }) if reason.contains("positive"))
    );

    assert_eq!(
        stored_types(&host.journal, "bank-account-hot"),
        ["Opened", "Deposited", "Deposited", "Withdrawn"]
    );
    assert_eq!(
        host.journal.stats().commits - commits,
        2,
        "one commit for the first deposit, one for the whole round"
    );
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!((version, state["balance"].as_u64()), (4, Some(21)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_inside_a_pipeline_gets_the_original_outcome_and_appends_once() {
    let host = Gated::new().await;
    let keyed = |amount: u64, key| ("Deposit", json!({"amount": amount}), Some(key));
    let outcomes = host
        .round(
            vec![keyed(10, "k1"), keyed(10, "k1"), keyed(5, "k2"), deposit(7)],
            async {},
        )
        .await;
    let outcomes: Vec<&CommandOutcome> = outcomes.iter().map(|o| o.as_ref().unwrap()).collect();
    let ids = |outcome: &CommandOutcome| outcome.events.iter().map(|e| e.id).collect::<Vec<_>>();

    assert_eq!((outcomes[0].version, balance(outcomes[0])), (3, 11));
    assert_eq!(outcomes[1].version, outcomes[0].version);
    assert_eq!(ids(outcomes[1]), ids(outcomes[0]));
    assert_eq!(balance(outcomes[1]), 11);
    assert_eq!((outcomes[2].version, balance(outcomes[2])), (4, 16));
    assert_eq!((outcomes[3].version, balance(outcomes[3])), (5, 23));
    assert_eq!(
        stored_types(&host.journal, "bank-account-hot"),
        ["Opened", "Deposited", "Deposited", "Deposited", "Deposited"]
    );

    // A later retry is answered from the journal, with the state the command left.
    let retried = send(&host.runtime, "hot", keyed(10, "k1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.version, balance(&retried)), (3, 11));
    assert_eq!(ids(&retried), ids(outcomes[0]));
    assert_eq!(
        host.journal.stream_version("bank-account-hot").unwrap(),
        Some(5)
    );
}

/// A key is for one command: sent again with another (here another amount), in the same round
/// or later, it is refused, never answered with the first command's outcome; the first event
/// records the key and the command's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sent_again_with_another_command_is_refused_in_the_round_and_later() {
    let host = Gated::new().await;
    let keyed = |amount: u64, key| ("Deposit", json!({"amount": amount}), Some(key));
    let outcomes = host
        .round(
            vec![
                keyed(10, "k1"),
                keyed(20, "k1"),
                keyed(10, "k1"),
                deposit(7),
            ],
            async {},
        )
        .await;
    let first = outcomes[0].as_ref().unwrap();
    assert_eq!((first.version, balance(first)), (3, 11));
    let reused = |outcome: &Outcome| matches!(outcome, Err(RuntimeError::KeyReused { key, .. }) if key == "k1");
    assert!(reused(&outcomes[1]), "{:?}", outcomes[1]);
    assert_eq!(outcomes[2].as_ref().unwrap().version, 3);
    assert_eq!(balance(outcomes[3].as_ref().unwrap()), 18);
    let metadata: Value =
        serde_json::from_str(first.events[0].metadata.as_deref().unwrap()).unwrap();
    assert_eq!(metadata["idempotency_key"], "k1", "{metadata}");

    let later = send(&host.runtime, "hot", keyed(30, "k1")).await.unwrap();
    assert!(reused(&later), "{later:?}");
    let same = ("Withdraw", json!({"amount": 10}), Some("k1"));
    let later = send(&host.runtime, "hot", same).await.unwrap();
    assert!(reused(&later), "{later:?}");
    let retried = send(&host.runtime, "hot", keyed(10, "k1")).await.unwrap();
    assert_eq!(retried.unwrap().version, 3);
    // In one round, a wrong use of the key before a right one: only the wrong one is refused.
    let outcomes = host
        .round(vec![keyed(30, "k1"), keyed(10, "k1")], async {})
        .await;
    assert!(reused(&outcomes[0]), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].as_ref().unwrap().version, 3);
    // Keys JSON escapes in the metadata are checked alike.
    let quoted = "k\"2\\";
    send(&host.runtime, "hot", keyed(2, quoted))
        .await
        .unwrap()
        .unwrap();
    let later = send(&host.runtime, "hot", keyed(3, quoted)).await.unwrap();
    assert!(
        matches!(&later, Err(RuntimeError::KeyReused { key, .. }) if key == quoted),
        "{later:?}"
    );
    assert_eq!(
        balances(&host.journal, "bank-account-hot"),
        [0, 0, 1, 11, 18, 19, 21]
    );
}

/// The events another host stores for `command` on account `hot` (opened first), as it
/// appends them: made on a scratch journal, with the ids derived from the key and the key's
/// metadata.
async fn stored_by_another_host(command: Sent) -> Vec<NewEvent> {
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch = Journal::open(scratch_dir.path().join("j.redb"), JournalConfig::default());
    let scratch = runtime_on(scratch.unwrap(), AggregateConfig::default()).await;
    send(&scratch, "hot", ("Open", json!({"owner": "Hot"}), None))
        .await
        .unwrap()
        .unwrap();
    let stored = send(&scratch, "hot", command).await.unwrap().unwrap();
    stored
        .events
        .iter()
        .map(|event| {
            let data: Value = serde_json::from_slice(&event.data).unwrap();
            let mut new = NewEvent::json(&*event.event_type, &data);
            new.id = event.id;
            new.metadata = event.metadata.as_deref().map(str::to_owned);
            new
        })
        .collect()
}

/// Another host stores a keyed command between this host's check of the key and its append:
/// the journal answers the append with where the other host stored the same events, past an
/// event this host never folded. The round is decided again instead of folding those events
/// onto the old state, so the outcome and the cached state hold the skipped event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_by_another_host_during_the_round_is_answered_from_the_log() {
    let keyed = ("Deposit", json!({"amount": 5}), Some("k"));
    let theirs = stored_by_another_host(keyed.clone()).await;

    let host = Gated::new().await;
    let stream = "bank-account-hot";
    host.gate.hold();
    let journal = host.journal.clone();
    let interloper = tokio::spawn(async move {
        let deposit = NewEvent::json("Deposited", &json!({"amount": 1000}));
        journal
            .append(stream, ExpectedVersion::Any, vec![deposit])
            .await
    });
    wait_until("the interloper's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    let journal = host.journal.clone();
    let other_host =
        tokio::spawn(async move { journal.append(stream, ExpectedVersion::Any, theirs).await });
    wait_until("the other host's append is queued", || {
        host.journal.queued_writes() == 1
    })
    .await;
    // This host finds the key unused and decides on version 1, then queues its append.
    let ours = send(&host.runtime, "hot", keyed);
    wait_until("this host's append is queued", || {
        host.journal.queued_writes() == 2
    })
    .await;
    host.gate.release();
    interloper.await.unwrap().unwrap();
    assert_eq!(other_host.await.unwrap().unwrap().first_version, 3);

    let ours = ours.await.unwrap().unwrap();
    let log = balances(&host.journal, stream);
    assert_eq!(log, [0, 0, 1000, 1005]);
    assert_eq!((ours.version, balance(&ours)), (3, 1005));
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!((version, state["balance"].as_u64()), (3, Some(1005)));
}

/// Another host stores a command of key `k` between this host's check of the key and its
/// append, and this host's command of the same key is another one. The journal answers this
/// host's append (the same derived ids) as a retry of the other host's, right after the state
/// it decided on: the events read back carry the other command's hash, so the round is decided
/// again and the key refuses the command instead of answering it with the other's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_host_stored_for_another_command_is_refused() {
    let theirs = stored_by_another_host(("Deposit", json!({"amount": 6}), Some("k"))).await;

    let host = Gated::new().await;
    let stream = "bank-account-hot";
    host.gate.hold();
    let journal = host.journal.clone();
    let other_host =
        tokio::spawn(async move { journal.append(stream, ExpectedVersion::Any, theirs).await });
    wait_until("the other host's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    let ours = send(
        &host.runtime,
        "hot",
        ("Deposit", json!({"amount": 5}), Some("k")),
    );
    wait_until("this host's append is queued", || {
        host.journal.queued_writes() == 1
    })
    .await;
    host.gate.release();
    assert_eq!(other_host.await.unwrap().unwrap().first_version, 2);
    let ours = ours.await.unwrap();
    assert!(
        matches!(ours, Err(RuntimeError::KeyReused { .. })),
        "{ours:?}"
    );
    assert_eq!(balances(&host.journal, stream), [0, 0, 6]);
}

/// A retry whose first command's events a soft delete (or the stream's retention rules) hides
/// is refused: it is not run again under its key, nor answered with events never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_events_are_hidden_is_refused_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("j.redb"), JournalConfig::default()).unwrap();
    let runtime = runtime_on(journal.clone(), AggregateConfig::default()).await;
    let stream = "bank-account-kept";
    let keyed = ("Deposit", json!({"amount": 5}), Some("k"));
    send(&runtime, "kept", ("Open", json!({"owner": "Kept"}), None))
        .await
        .unwrap()
        .unwrap();
    let first = send(&runtime, "kept", keyed.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 2);
    for amount in [1, 2] {
        send(&runtime, "kept", deposit(amount))
            .await
            .unwrap()
            .unwrap();
    }
    // A soft delete hides the first four versions; the account is opened again at version 5.
    journal
        .delete_stream(stream, ExpectedVersion::Any, false)
        .await
        .unwrap();
    send(&runtime, "kept", ("Open", json!({"owner": "Again"}), None))
        .await
        .unwrap()
        .unwrap();

    let retried = send(&runtime, "kept", keyed).await.unwrap();
    match retried {
        Err(RuntimeError::KeyOutcomeGone { .. }) => {}
        other => panic!("expected the key's outcome to be gone, got {other:?}"),
    }
    assert_eq!(
        journal.stream_version(stream).unwrap(),
        Some(5),
        "nothing appended"
    );
    // The stream still serves commands.
    let next = send(&runtime, "kept", deposit(4)).await.unwrap().unwrap();
    assert_eq!((next.version, balance(&next)), (6, 4));
}

/// The same retry queued with another client's command: it alone is refused, and the other
/// command succeeds (the round's append first clashes with the hidden ids, then the retry is
/// decided alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_retry_in_a_round_fails_alone() {
    let host = Gated::new().await;
    let stream = "bank-account-hot";
    let keyed = ("Deposit", json!({"amount": 5}), Some("k"));
    let first = send(&host.runtime, "hot", keyed.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 2);
    host.journal
        .delete_stream(stream, ExpectedVersion::Any, false)
        .await
        .unwrap();

    host.gate.hold();
    let reopened = send(
        &host.runtime,
        "hot",
        ("Open", json!({"owner": "Hot"}), None),
    );
    wait_until("the reopening's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    let retried = send(&host.runtime, "hot", keyed);
    wait_until("the retry is queued", || {
        host.runtime.command_stats().queued == 2
    })
    .await;
    let other = send(&host.runtime, "hot", deposit(7));
    wait_until("the other deposit is queued", || {
        host.runtime.command_stats().queued == 3
    })
    .await;
    host.gate.release();
    assert_eq!(reopened.await.unwrap().unwrap().version, 3);
    match retried.await.unwrap() {
        Err(RuntimeError::KeyOutcomeGone { .. }) => {}
        other => panic!("expected the key's outcome to be gone, got {other:?}"),
    }
    let other = other.await.unwrap().unwrap();
    assert_eq!((other.version, balance(&other)), (4, 7));
    assert_eq!(
        stored_types(&host.journal, stream),
        ["Opened", "Deposited"],
        "the visible stream: reopened, then the other deposit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_every_command_in_it() {
    let host = Gated::new().await;
    let (gate, runtime) = (host.gate.clone(), host.runtime.clone());
    let decided = runtime.command_stats().commands;
    let outcomes = host
        .round(vec![deposit(100), deposit(50), withdraw(120)], async move {
            // Let the first deposit's commit through, keep holding the round's, then make
            // its sync fail like a broken disk.
            gate.pass_one();
            wait_until(
                "the first deposit is done and the round's commit waits",
                || runtime.command_stats().commands == decided + 1 && gate.waiting() == 1,
            )
            .await;
            gate.fail_next_sync();
        })
        .await;
    for outcome in &outcomes {
        match outcome {
            Err(RuntimeError::Journal(JournalError::Storage(_))) => {}
            other => panic!("every command of the failed commit fails, got {other:?}"),
        }
    }
    // The journal stopped writing (fail-stop); the state is the log's again, not the one the
    // round folded ahead of its commit.
    assert_eq!(
        stored_types(&host.journal, "bank-account-hot"),
        ["Opened", "Deposited"]
    );
    let (version, state) = host
        .runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!((version, state["balance"].as_u64()), (2, Some(1)));
}

/// A command whose events are stored but cannot be read back (here a retention rule hides
/// the stream's versions below 1000, so they are hidden at once) still answers with its
/// events, placed where they were stored, and says its state is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_events_cannot_be_read_back_answers_with_the_events_it_sent() {
    let host = Gated::new().await;
    let hidden = StreamMetadata {
        truncate_before: Some(1000),
        ..StreamMetadata::default()
    };
    (host.journal)
        .set_stream_metadata("bank-account-hot", hidden)
        .await
        .unwrap();
    let head = host.journal.head_position();
    // The account's opening is hidden too: the aggregate decides on an empty state.
    let reopen = ("Open", json!({"owner": "Again"}), None);
    let outcome = send(&host.runtime, "hot", reopen).await.unwrap();

    let outcome = outcome.expect("the events are stored");
    assert_eq!(outcome.version, 2);
    let [event] = &outcome.events[..] else {
        panic!("one event: {:?}", outcome.events);
    };
    assert_eq!((event.version, event.position), (2, head + 1));
    assert_eq!(&*event.event_type, "Opened");
    let error = outcome.state.as_ref().unwrap_err();
    assert!(
        error.contains("the events are stored, but the stream's retention rules hide them")
            && error.contains("first visible version is 1000")
            && !error.contains("corrupt"),
        "{error}"
    );
    // It is stored, as answered (where readers no longer see it).
    assert_eq!(host.journal.head_position(), head + 1);
}

/// A round of several commands whose events are stored but cannot be read back (the retention
/// rule hides them at once): each command still answers with its own events, placed where they
/// were stored; a refused one with its refusal, a repeated key with its first's outcome; no
/// state is made up. With the rule lifted, the log holds exactly what was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_events_cannot_be_read_back_answers_each_command_with_its_own_events() {
    let host = Gated::new().await;
    let stream = "bank-account-hot";
    let hidden = StreamMetadata {
        truncate_before: Some(1000),
        ..StreamMetadata::default()
    };
    (host.journal)
        .set_stream_metadata(stream, hidden)
        .await
        .unwrap();
    let head = host.journal.head_position();
    let open = |owner| ("Open", json!({ "owner": owner }), None);
    let keyed = || ("Deposit", json!({"amount": 10}), Some("k1"));
    // The opening is hidden: each round decides on an empty account, so each opens it first.
    let commits = host.journal.stats().commits;
    let outcomes = host
        .round_behind(
            open("Again"),
            vec![
                open("Third"),
                deposit(100),
                withdraw(150),
                keyed(),
                deposit(0),
                keyed(),
                withdraw(30),
                open("Fourth"),
            ],
            async {},
        )
        .await;
    assert_eq!(
        host.journal.stats().commits - commits,
        2,
        "one commit per round"
    );

    // The first command's event is at head + 1 (version 2); the round's follow, one per
    // command that decided one, in the order the commands were queued.
    let placed = [
        (0, 3, "Opened"),
        (1, 4, "Deposited"),
        (3, 5, "Deposited"),
        (6, 6, "Withdrawn"),
    ];
    for (index, version, event_type) in placed {
        let outcome = outcomes[index].as_ref().unwrap();
        let [event] = &outcome.events[..] else {
            panic!("command {index}: one event, got {:?}", outcome.events);
        };
        assert_eq!(
            (
                outcome.version,
                event.version,
                event.position,
                &*event.event_type
            ),
            (version, version, head + version - 1, event_type),
            "command {index}"
        );
        let unknown = outcome.state.as_ref().unwrap_err();
        assert!(
            unknown.contains("the events are stored, but the stream's retention rules hide them")
                && !unknown.contains("corrupt"),
            "command {index}: {unknown}"
        );
    }
    let amount = |index: usize| {
        let event = &outcomes[index].as_ref().unwrap().events[0];
        serde_json::from_slice::<Value>(&event.data).unwrap()["amount"].clone()
    };
    assert_eq!(
        (amount(1), amount(3), amount(6)),
        (json!(100), json!(10), json!(30))
    );
    // Refused on the state the round folded ahead of its commit, though none of it was read.
    let refused = |index: usize| match &outcomes[index] {
        Err(RuntimeError::Rejected { reason, .. }) => reason.clone(),
        other => panic!("command {index}: expected a rejection, got {other:?}"),
    };
    assert!(
        refused(2).contains("balance 100, requested 150"),
        "{}",
        refused(2)
    );
    assert!(refused(4).contains("positive"), "{}", refused(4));
    assert!(refused(7).contains("already open"), "{}", refused(7));
    let repeated = outcomes[5].as_ref().unwrap();
    let first_of_key = outcomes[3].as_ref().unwrap();
    assert_eq!(repeated.version, first_of_key.version);
    assert_eq!(repeated.events[0].id, first_of_key.events[0].id);
    assert_eq!(repeated.events[0].position, first_of_key.events[0].position);

    // Stored as answered, once each.
    (host.journal)
        .set_stream_metadata(stream, StreamMetadata::default())
        .await
        .unwrap();
    let stored = host.journal.read_stream(stream, 3, 100).unwrap();
    assert_eq!(stored.len(), 4, "{stored:?}");
    for (event, (index, ..)) in stored.iter().zip(placed) {
        let answered = &outcomes[index].as_ref().unwrap().events[0];
        assert_eq!(
            (
                event.position,
                event.version,
                event.id,
                &event.event_type,
                &event.data
            ),
            (
                answered.position,
                answered.version,
                answered.id,
                &answered.event_type,
                &answered.data
            ),
            "command {index}"
        );
    }
}

/// A keyed command already stored answers with the state after it, rendered by the round's
/// store; when that rendering traps, the store is not used for the round's next commands
/// (a trapped component instance cannot be entered again): they get a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_trapped_answering_a_stored_command_is_not_reused_in_its_round() {
    let host = Gated::new().await;
    let bytes = std::fs::read(foldhost_plugins::path(foldhost_plugins::HOSTILE)).unwrap();
    host.runtime.load(bytes, "hostile").await.unwrap();
    // A state of 17 MB, built twice to render it: more than the plugin's 64 MiB.
    let bloat = || ("Bloat", json!({"bytes": 17_000_000}), Some("bloat-1"));
    let stats = host.runtime.command_stats();
    host.gate.hold();
    let first = send_to(&host.runtime, "hostile", "b", bloat());
    wait_until("the Bloat's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    // Its retry and a Ping queue behind it: one round on the stored Bloat's state.
    let mut queued = Vec::new();
    for sent in [bloat(), ("Ping", Value::Null, None)] {
        queued.push(send_to(&host.runtime, "hostile", "b", sent));
        let expected = stats.queued + 1 + queued.len() as u64;
        wait_until("the command is queued", || {
            host.runtime.command_stats().queued == expected
        })
        .await;
    }
    host.gate.release();
    let too_big = |outcome: &CommandOutcome| {
        outcome
            .state
            .as_ref()
            .is_err_and(|error| error.contains("exceeded its memory limit"))
    };
    let bloated = first.await.unwrap().unwrap();
    assert!(too_big(&bloated), "{:?}", bloated.state);
    let retried = queued.remove(0).await.unwrap().unwrap();
    assert_eq!(retried.version, bloated.version);
    assert!(too_big(&retried), "{:?}", retried.state);
    // The Ping meets the plugin, not "cannot enter component instance".
    let pinged = queued.remove(0).await.unwrap().unwrap();
    assert_eq!(pinged.version, bloated.version + 1);
    assert!(too_big(&pinged), "{:?}", pinged.state);
}

/// Commands waiting on a stream count against the journal's write-queue bound: past it a
/// command is refused at once (the server answers 503) and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_command_queue_refuses_a_command_at_once() {
    let config = JournalConfig {
        max_queued_writes: 2,
        ..JournalConfig::default()
    };
    let host = Gated::with(config).await;
    host.gate.hold();
    let first = send(&host.runtime, "hot", deposit(1));
    wait_until("the first deposit's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    let second = send(&host.runtime, "hot", deposit(2));
    wait_until("the second deposit is queued", || {
        host.runtime.command_stats().queued == 2
    })
    .await;
    let refused = tokio::time::timeout(PATIENCE, send(&host.runtime, "hot", deposit(4)))
        .await
        .expect("refused at once, not queued")
        .unwrap();
    assert!(
        matches!(
            refused,
            Err(RuntimeError::Journal(JournalError::Overloaded))
        ),
        "{refused:?}"
    );
    host.gate.release();
    first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!((second.version, balance(&second)), (3, 3));
    assert_eq!(
        stored_types(&host.journal, "bank-account-hot"),
        ["Opened", "Deposited", "Deposited"]
    );
}

/// A round never holds more bytes than one append may: the commands past the bound wait for the
/// next round instead of failing the round's append together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_stops_before_its_events_outgrow_one_append() {
    // A deposit's event counts 21 bytes: two fit in an append, three do not.
    let config = JournalConfig {
        max_append_bytes: 50,
        ..JournalConfig::default()
    };
    let host = Gated::with(config).await;
    let rounds = host.runtime.command_stats().rounds;
    host.gate.hold();
    let first = send(&host.runtime, "hot", deposit(1));
    wait_until("the first deposit's commit waits for its sync", || {
        host.gate.waiting() == 1
    })
    .await;
    let mut queued = Vec::new();
    for amount in [2, 4, 8] {
        queued.push(send(&host.runtime, "hot", deposit(amount)));
        let expected = 1 + queued.len() as u64;
        wait_until("the deposit is queued", || {
            host.runtime.command_stats().queued == expected
        })
        .await;
    }
    host.gate.release();
    first.await.unwrap().unwrap();
    let mut outcomes = Vec::new();
    for command in queued {
        let outcome = command.await.unwrap().expect("each deposit fits an append");
        outcomes.push((outcome.version, balance(&outcome)));
    }
    assert_eq!(outcomes, [(3, 3), (4, 7), (5, 15)]);
    assert_eq!(host.runtime.command_stats().rounds - rounds, 3);
}

/// Commands on one hot account race direct appends to its stream, with no second try: rounds
/// that lose the race fail as a whole. Every command that succeeded must report the balance the
/// log holds at its version, which it cannot if a failed round left its uncommitted events in
/// the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_round_rolls_the_state_back_to_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("journal.redb"), JournalConfig::default()).unwrap();
    let config = AggregateConfig {
        max_conflict_retries: 0,
        ..AggregateConfig::default()
    };
    let runtime = runtime_on(journal.clone(), config).await;
    let stream = "bank-account-hot";
    send(&runtime, "hot", ("Open", json!({"owner": "Hot"}), None))
        .await
        .unwrap()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let interloper = {
        let (journal, stop) = (journal.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let event = NewEvent::json("Deposited", &json!({"amount": 1000}));
                journal
                    .append(stream, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<JoinHandle<Vec<CommandOutcome>>> = (0..8)
        .map(|client| {
            let (runtime, stop, failed) = (runtime.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut succeeded = Vec::new();
                let mut amount = client + 1;
                while !stop.load(Ordering::Relaxed) {
                    match send(&runtime, "hot", deposit(amount)).await.unwrap() {
                        Ok(outcome) => succeeded.push(outcome),
                        Err(RuntimeError::TooManyConflicts(_)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("unexpected failure: {other}"),
                    }
                    amount = amount % 97 + 1;
                }
                succeeded
            })
        })
        .collect();
    wait_until(
        "rounds of several commands lost races and others succeeded",
        || {
            let stats = runtime.command_stats();
            failed.load(Ordering::Relaxed) >= 40
                && stats.commands >= 2 * stats.rounds
                && stats.commands >= 300
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    interloper.await.unwrap();
    let mut succeeded = Vec::new();
    for client in clients {
        succeeded.extend(client.await.unwrap());
    }

    let log = balances(&journal, stream);
    for outcome in &succeeded {
        assert_eq!(
            balance(outcome),
            log[outcome.version as usize],
            "a command's state must be the log's at its version {}",
            outcome.version
        );
        let stored = journal.read_stream(stream, outcome.version, 1).unwrap();
        assert_eq!(stored[0].id, outcome.events[0].id);
    }
    // Nothing of a failed round was stored.
    assert_eq!(journal_commands(&journal, stream), succeeded.len() as u64);
    let head = journal.stream_version(stream).unwrap().unwrap();
    let (version, state) = runtime
        .aggregate_state("bank-account", "hot", None)
        .await
        .unwrap();
    assert_eq!((version, log.len() as u64), (head, head + 1));
    assert_eq!(state["balance"].as_u64(), Some(log[head as usize]));
}

/// Deposits stored by commands (the interloper deposits 1000).
fn journal_commands(journal: &Journal, stream: &str) -> u64 {
    let mut count = 0;
    let mut from = 1;
    loop {
        let page = journal.read_stream(stream, from, 1000).unwrap();
        let Some(last) = page.last() else {
            return count;
        };
        from = last.version + 1;
        count += page
            .iter()
            .filter(|e| e.event_type == "Deposited" && !e.data.starts_with(br#"{"amount":1000}"#))
            .count() as u64;
    }
}

/// Creates an empty database in the test cluster and returns its URL.
async fn fresh_database() -> String {
    let admin = std::env::var("FOLDHOST_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "FOLDHOST_TEST_POSTGRES is not set: run scripts/test (or `. scripts/postgres` first)"
        )
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to FOLDHOST_TEST_POSTGRES");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let base = admin.split('?').next().unwrap();
    match base.rfind('/').filter(|&i| i > "postgres://".len()) {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => format!("{base}/{name}"),
    }
}

/// Two hosts on one PostgreSQL journal drive commands into the same account: each host's
/// rounds keep losing races to the other's commits and are decided again on the new state.
/// Every command succeeds with the balance the log holds at its version, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_from_another_host_re_decides_the_whole_pipeline() {
    let url = fresh_database().await;
    let config = JournalConfig {
        accept_non_durable_postgres: true,
        ..JournalConfig::default()
    };
    let aggregates = AggregateConfig {
        max_conflict_retries: 1000,
        ..AggregateConfig::default()
    };
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let journal = Journal::open_postgres(&url, config.clone()).await.unwrap();
        hosts.push(runtime_on(journal, aggregates.clone()).await);
    }
    let journal = hosts[0].journal().clone();
    let stream = "bank-account-shared";
    send(
        &hosts[0],
        "shared",
        ("Open", json!({"owner": "Shared"}), None),
    )
    .await
    .unwrap()
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for host in &hosts {
        for client in 0..8u64 {
            let (host, stop) = (host.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut amount = client + 1;
                while !stop.load(Ordering::Relaxed) {
                    let outcome = send(&host, "shared", deposit(amount)).await.unwrap();
                    outcomes.push((amount, outcome.expect("every command succeeds")));
                    amount = amount % 89 + 1;
                }
                outcomes
            }));
        }
    }
    wait_until(
        "both hosts pipelined and re-decided rounds after the other's commits",
        || {
            hosts.iter().all(|host| {
                let stats = host.command_stats();
                stats.redecided >= 3 && stats.commands >= stats.rounds + 20
            })
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut deposited = 0;
    let mut count = 0;
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.unwrap());
    }
    let log = balances(&journal, stream);
    for (amount, outcome) in outcomes {
        {
            assert_eq!(
                balance(&outcome),
                log[outcome.version as usize],
                "the state after version {}",
                outcome.version
            );
            deposited += amount;
            count += 1;
        }
    }
    let head = journal.stream_version(stream).unwrap().unwrap();
    assert_eq!(head, 1 + count, "every command's event, once");
    assert_eq!(log[head as usize], deposited);
    for host in &hosts {
        let (version, state) = host
            .aggregate_state("bank-account", "shared", None)
            .await
            .unwrap();
        assert_eq!(
            (version, state["balance"].as_u64()),
            (head, Some(deposited))
        );
    }
}
