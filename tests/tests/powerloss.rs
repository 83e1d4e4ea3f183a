//! Acknowledged writes survive power loss, and the test notices when they do not.
//!
//! The journal runs on a [`SimulatedDisk`] while appenders, commands through the real
//! `bank-account` plugin, its snapshots and the `bank-analytics` projection's checkpoints all
//! write at once. The power fails after a random number of disk operations. The next boot opens
//! the image the disk was left with (everything synced, plus a random part of the rest, torn at
//! a sector) and checks it against every acknowledgement so far: the journal opens, every
//! acknowledged event is there exactly once with its bytes, positions and versions are
//! gapless, snapshots and the checkpoint agree with the log, the projection resumes to the
//! state of a fresh replay, and the host serves again, until the next cut.
//!
//! The seed is printed; `FOLDHOST_POWERLOSS_SEED=N` replays its choices (thread timing varies).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bank_account::{Account, AccountEvent};
use bank_analytics::{Analytics, BankEvent};
use foldhost::journal::{
    AppendResult, ContentType, ExpectedVersion, Journal, JournalConfig, NewEvent, RecordedEvent,
};
use foldhost::runtime::{
    AggregateConfig, CheckpointPolicy, Limits, Plugin, PluginEngine, ProjectionStatus, Runtime,
    RuntimeConfig, RuntimeError,
};
use foldhost_guest::codec::decode_json;
use foldhost_guest::{Aggregate, EventMeta, Projection};
use foldhost_tests::simulated_disk::{Fsync, Loss, SimulatedDisk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Power cuts in the main test.
const CUTS: usize = 24;
/// The power fails during one of this many disk operations after the host is up...
const MAX_OPERATIONS_BEFORE_CUT: u64 = 3000;
/// ...or during one of this many syncs...
const MAX_SYNCS_BEFORE_CUT: u64 = 200;
/// ...or at a moment in this range, if that comes first.
const MOMENT_OF_CUT: std::ops::Range<Duration> =
    Duration::from_millis(20)..Duration::from_millis(1500);
const APPENDERS: u64 = 3;
const STREAMS_PER_APPENDER: u64 = 2;
const CUSTOMERS: u64 = 2;
const ACCOUNTS_PER_CUSTOMER: u64 = 3;
/// Failure guard for anything that waits.
const PATIENCE: Duration = Duration::from_secs(60);
const PAGE: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts() {
    let mut rig = Rig::new();
    let mut image = Vec::new();
    let mut summary = Summary::default();
    for cut in 1..=CUTS {
        let disk = SimulatedDisk::new(image, Fsync::Honest);
        let boot = rig.boot(&disk).await;
        assert!(
            boot.violations.is_empty(),
            "after power cut {} (seed {}):\n  {}",
            cut - 1,
            rig.seed,
            boot.violations.join("\n  ")
        );
        let loss = rig.loss();
        let cached = disk.cached_bytes();
        image = disk.image_after_cut(loss, &mut rig.rng);
        summary.add(&boot, cached);
        eprintln!(
            "cut {cut:>2}: {:>4} events acknowledged, {cached:>7} bytes unsynced at the cut, {loss:?}",
            boot.acknowledged
        );
        if rig.rng.random_ratio(1, 5) {
            let disk = SimulatedDisk::new(image, Fsync::Honest);
            let interrupted = rig.cut_during_recovery(&disk).await;
            let loss = rig.loss();
            image = disk.image_after_cut(loss, &mut rig.rng);
            summary.recoveries_cut += usize::from(interrupted);
            eprintln!(
                "        and again while the journal opened (interrupted: {interrupted}), {loss:?}"
            );
        }
    }
    let (_, last) = rig.recover(&SimulatedDisk::new(image, Fsync::Honest)).await;
    assert!(
        last.violations.is_empty(),
        "after the last power cut (seed {}):\n  {}",
        rig.seed,
        last.violations.join("\n  ")
    );
    summary.print(&rig.history.lock().unwrap(), last.head);
    assert!(
        summary.boots_with_snapshots >= CUTS / 4 && summary.boots_with_checkpoints >= CUTS / 4,
        "too few snapshots or checkpoints were checked: {summary:?}"
    );
    assert!(
        summary.cuts_with_unsynced_writes >= CUTS / 4,
        "the power rarely failed with writes in flight: {summary:?}"
    );
}

/// The teeth: on a disk that ignores fsync, the same test reports lost acknowledged events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_ignores_fsync_loses_acknowledged_events_and_the_test_says_so() {
    let mut rig = Rig::new();
    let mut image = Vec::new();
    for cut in 0..10 {
        let disk = SimulatedDisk::new(image, Fsync::Ignored);
        let boot = rig.boot(&disk).await;
        if !boot.violations.is_empty() {
            eprintln!(
                "after {cut} cut(s) of a disk that ignores fsync (seed {}):\n  {}",
                rig.seed,
                boot.violations.join("\n  ")
            );
            // Either the checker counts the missing events, or the file lost even the
            // header redb wrote at creation; both lose what was acknowledged.
            let acknowledged = rig.history.lock().unwrap().acknowledged.len();
            assert!(
                boot.violations.iter().any(|v| {
                    v.contains("acknowledged events are lost")
                        || (acknowledged > 0 && v.contains("the journal does not open"))
                }),
                "{:?}",
                boot.violations
            );
            return;
        }
        image = disk.image_after_cut(Loss::InOrder, &mut rig.rng);
    }
    panic!(
        "the disk ignored every fsync, yet no check failed (seed {})",
        rig.seed
    );
}

/// What the journal must hold, from every acknowledgement so far.
#[derive(Default)]
struct History {
    /// Every acknowledged event, by id.
    acknowledged: HashMap<Uuid, RecordedEvent>,
    /// Events of appends whose outcome is unknown (the power failed first): (stream, event).
    unacknowledged: HashMap<Uuid, (String, NewEvent)>,
    /// Plain appends acknowledged during the last boot: (stream, result, ids).
    last_appends: Vec<(String, AppendResult, Vec<Uuid>)>,
}

impl History {
    fn acknowledge(&mut self, stream: &str, result: AppendResult, events: Vec<NewEvent>) {
        let ids = events.iter().map(|event| event.id).collect();
        for ((event, version), position) in events
            .into_iter()
            .zip(result.first_version..)
            .zip(result.first_position..)
        {
            let recorded = RecordedEvent {
                position,
                stream: stream.into(),
                version,
                id: event.id,
                event_type: event.event_type.into(),
                content_type: event.content_type,
                data: event.data.into(),
                metadata: event.metadata.map(Into::into),
                recorded_at: 0, // not known to the client; not compared
            };
            self.acknowledged.insert(recorded.id, recorded);
        }
        self.last_appends.push((stream.to_owned(), result, ids));
    }
}

/// What one boot saw.
#[derive(Default)]
struct Boot {
    violations: Vec<String>,
    head: u64,
    /// Events acknowledged while serving.
    acknowledged: usize,
    snapshots: usize,
    /// The position of the projection's checkpoint found at boot.
    checkpoint: Option<u64>,
}

#[derive(Debug, Default)]
struct Summary {
    boots_with_snapshots: usize,
    boots_with_checkpoints: usize,
    cuts_with_unsynced_writes: usize,
    recoveries_cut: usize,
    snapshots: usize,
}

impl Summary {
    fn add(&mut self, boot: &Boot, cached: usize) {
        self.boots_with_snapshots += usize::from(boot.snapshots > 0);
        self.boots_with_checkpoints += usize::from(boot.checkpoint.is_some());
        self.cuts_with_unsynced_writes += usize::from(cached > 0);
        self.snapshots += boot.snapshots;
    }

    fn print(&self, history: &History, head: u64) {
        eprintln!(
            "{CUTS} power cuts ({} more during recovery): {} acknowledged events, all present; \
             {} events in the log ({} of unknown outcome); {} snapshot checks; a checkpoint \
             checked after {} cuts",
            self.recoveries_cut,
            history.acknowledged.len(),
            head,
            head as usize - history.acknowledged.len(),
            self.snapshots,
            self.boots_with_checkpoints
        );
    }
}

/// Everything that outlives a boot: the history, the plugins, the compile cache, the RNG.
struct Rig {
    seed: u64,
    rng: StdRng,
    history: Arc<Mutex<History>>,
    account: Vec<u8>,
    analytics: Vec<u8>,
    account_hash: String,
    analytics_hash: String,
    cache: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let seed = std::env::var("FOLDHOST_POWERLOSS_SEED")
            .map(|seed| seed.parse().expect("FOLDHOST_POWERLOSS_SEED is a number"))
            .unwrap_or_else(|_| rand::rng().random());
        eprintln!("power-loss seed {seed} (FOLDHOST_POWERLOSS_SEED={seed} replays it)");
        let cache = tempfile::tempdir().unwrap();
        let engine = PluginEngine::new(Limits::default(), Some(cache.path().to_owned())).unwrap();
        let account = std::fs::read(foldhost_plugins::path("bank-account")).unwrap();
        let analytics = std::fs::read(foldhost_plugins::path("bank-analytics")).unwrap();
        let hash = |bytes: &[u8], name| Plugin::load(&engine, bytes, name).unwrap().hash.clone();
        Rig {
            seed,
            rng: StdRng::seed_from_u64(seed),
            history: Arc::default(),
            account_hash: hash(&account, "bank-account"),
            analytics_hash: hash(&analytics, "bank-analytics"),
            account,
            analytics,
            cache,
        }
    }

    /// How the next power cut treats the disk's cache.
    fn loss(&mut self) -> Loss {
        match self.rng.random_range(0..5) {
            0 => Loss::Nothing,
            1 | 2 => Loss::InOrder,
            _ => Loss::Reordered,
        }
    }

    /// Opens the journal on `disk` with the power failing within its first few writes, while
    /// redb repairs the file; whether it opened or not, the next boot must recover from what
    /// that left. Returns whether the power failed before the journal was open.
    async fn cut_during_recovery(&mut self, disk: &SimulatedDisk) -> bool {
        disk.cut_after(self.rng.random_range(1..=20));
        let opening = disk.clone();
        let opened = blocking(move || Journal::open_on(opening, JournalConfig::default()).is_ok());
        !opened.await.expect("opening the journal panicked")
    }

    /// Boots on `disk`: opens the journal and checks it, then serves the workload until the
    /// disk's power fails. Returns early with the violations found, if any.
    async fn boot(&mut self, disk: &SimulatedDisk) -> Boot {
        let (journal, mut boot) = self.recover(disk).await;
        let Some(journal) = journal else {
            return boot;
        };
        let runtime = self.start_runtime(journal.clone()).await;
        boot.violations = resumed_as_replayed(&runtime, &journal, boot.checkpoint).await;
        if !boot.violations.is_empty() {
            return boot;
        }

        let acknowledged = self.history.lock().unwrap().acknowledged.len();
        // The power fails at a random disk operation, or at a random moment if that comes first
        // (a journal that stopped writing must not stall the test).
        if self.rng.random_bool(0.5) {
            disk.cut_after(self.rng.random_range(1..=MAX_OPERATIONS_BEFORE_CUT));
        } else {
            disk.cut_during_sync(self.rng.random_range(1..=MAX_SYNCS_BEFORE_CUT));
        }
        let timer = {
            let (disk, delay) = (disk.clone(), self.rng.random_range(MOMENT_OF_CUT));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                disk.cut();
            })
        };
        let mut workers = tokio::task::JoinSet::new();
        for appender in 0..APPENDERS {
            let (journal, history) = (journal.clone(), self.history.clone());
            workers.spawn(append_until_failure(
                journal,
                history,
                appender,
                self.rng.random(),
            ));
        }
        for customer in 0..CUSTOMERS {
            let (runtime, history) = (runtime.clone(), self.history.clone());
            workers.spawn(command_until_failure(
                runtime,
                history,
                customer,
                self.rng.random(),
            ));
        }
        let stopped = tokio::time::timeout(PATIENCE, workers.join_all())
            .await
            .expect("the workload neither failed nor finished");
        assert!(
            disk.is_cut(),
            "the workload stopped before the power cut: {stopped:?}"
        );
        timer.abort();
        boot.acknowledged = self.history.lock().unwrap().acknowledged.len() - acknowledged;
        runtime.shutdown().await;
        drop(runtime);
        blocking(move || drop(journal)).await.unwrap();
        boot
    }

    /// Opens the journal on `disk` (redb repairs it) and checks it against the history.
    async fn recover(&self, disk: &SimulatedDisk) -> (Option<Journal>, Boot) {
        let opened = {
            let disk = disk.clone();
            blocking(move || Journal::open_on(disk, JournalConfig::default())).await
        };
        let journal = match opened {
            Ok(Ok(journal)) => journal,
            Ok(Err(error)) => {
                return (
                    None,
                    violation(format!("the journal does not open: {error}")),
                );
            }
            Err(panic) => {
                return (
                    None,
                    violation(format!("opening the journal panicked: {panic}")),
                );
            }
        };
        let checked = {
            let (journal, history) = (journal.clone(), self.history.clone());
            let hashes = (self.account_hash.clone(), self.analytics_hash.clone());
            blocking(move || check(&journal, &mut history.lock().unwrap(), &hashes)).await
        };
        match checked {
            Ok(boot) if boot.violations.is_empty() => (Some(journal), boot),
            Ok(boot) => (None, boot),
            Err(panic) => (
                None,
                violation(format!("checking the journal panicked: {panic}")),
            ),
        }
    }

    async fn start_runtime(&self, journal: Journal) -> Arc<Runtime> {
        let config = RuntimeConfig {
            aggregates: AggregateConfig {
                snapshot_every: 3,
                ..AggregateConfig::default()
            },
            checkpoints: CheckpointPolicy {
                every_events: 8,
                every: Duration::from_millis(20),
            },
            cache_dir: Some(self.cache.path().to_owned()),
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(journal, config).unwrap();
        runtime
            .load(self.account.clone(), "bank-account")
            .await
            .unwrap();
        runtime
            .load(self.analytics.clone(), "bank-analytics")
            .await
            .unwrap();
        runtime
    }
}

fn violation(message: String) -> Boot {
    Boot {
        violations: vec![message],
        ..Boot::default()
    }
}

/// Runs `work` on the blocking pool; a panic comes back as its message.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    })
    .await
    .unwrap()
}

/// Checks the journal after a boot against the history; the history's last appends are
/// retried (they must be recognised by their ids) and then forgotten.
fn check(
    journal: &Journal,
    history: &mut History,
    (account, analytics): &(String, String),
) -> Boot {
    let mut violations = Vec::new();
    let log = read_all(journal);
    let head = log.len() as u64;

    if let Some((event, expected)) = log.iter().zip(1..).find(|(e, p)| e.position != *p) {
        violations.push(format!(
            "the global log skips from position {} to {}",
            expected - 1,
            event.position
        ));
    }
    if journal.head_position() != head {
        violations.push(format!(
            "the head is {} but the log has {head} events",
            journal.head_position()
        ));
    }
    let mut ids = HashSet::new();
    for event in log.iter().filter(|event| !ids.insert(event.id)) {
        violations.push(format!("event {} occurs twice", event.id));
    }

    // Every acknowledged event is where its acknowledgement said, with its bytes.
    let mut lost = Vec::new();
    for (id, expected) in &history.acknowledged {
        match log.get(expected.position as usize - 1) {
            Some(event) if event.id == *id => {
                let stored = RecordedEvent {
                    recorded_at: 0,
                    ..event.clone()
                };
                let expected = RecordedEvent {
                    recorded_at: 0,
                    ..expected.clone()
                };
                if stored != expected {
                    violations.push(format!(
                        "acknowledged event {id} changed:\n    {expected:?}\n    {stored:?}"
                    ));
                }
            }
            _ => lost.push(expected.position),
        }
    }
    if !lost.is_empty() {
        lost.sort_unstable();
        violations.push(format!(
            "{} of {} acknowledged events are lost (positions {:?}{}), the log ends at {head}",
            lost.len(),
            history.acknowledged.len(),
            &lost[..lost.len().min(8)],
            if lost.len() > 8 { ", ..." } else { "" }
        ));
    }

    // Every other event is one whose append's outcome was unknown.
    for event in log
        .iter()
        .filter(|e| !history.acknowledged.contains_key(&e.id))
    {
        let known = match history.unacknowledged.get(&event.id) {
            Some((stream, sent)) => {
                event.stream == stream
                    && event.event_type == sent.event_type
                    && event.data == sent.data
                    && event.metadata.as_deref() == sent.metadata.as_deref()
            }
            // A command's events: their ids are the host's, known only on acknowledgement.
            None => {
                event.stream.starts_with("bank-account-")
                    && decode_json::<AccountEvent>(&event.event_type, &event.data).is_ok()
            }
        };
        if !known {
            violations.push(format!(
                "event {} at {} was never appended",
                event.id, event.position
            ));
        }
    }

    // Streams are gapless, agree with the log and account for all of it.
    let mut in_streams = 0;
    let mut snapshots = 0;
    for stream in journal.streams_with_prefix("").unwrap() {
        let events = read_stream(journal, &stream);
        in_streams += events.len();
        let version = journal.stream_version(&stream).unwrap();
        if version != Some(events.len() as u64) {
            violations.push(format!(
                "stream {stream} has {} events, its version is {version:?}",
                events.len()
            ));
        }
        for (event, version) in events.iter().zip(1..) {
            if event.version != version || log.get(event.position as usize - 1) != Some(event) {
                violations.push(format!(
                    "stream {stream} disagrees with the log at version {version}"
                ));
                break;
            }
        }
        if stream.starts_with("bank-account-") {
            snapshots += check_snapshots(journal, account, &stream, &events, &mut violations);
        }
    }
    if in_streams != log.len() {
        violations.push(format!(
            "the streams hold {in_streams} events, the log {}",
            log.len()
        ));
    }

    // The projection's checkpoint is never ahead of the log, and is the fold up to its position.
    let checkpoint = journal.checkpoint(analytics).unwrap();
    if let Some((position, state)) = &checkpoint {
        match log.get(..*position as usize) {
            None => violations.push(format!(
                "the checkpoint at {position} is ahead of the log ({head})"
            )),
            Some(folded) if analytics_after(folded).snapshot() != *state => violations.push(
                format!("the checkpoint at {position} is not the fold of the log up to there"),
            ),
            Some(_) => {}
        }
    }

    // The event-id index survived: the last boot's appends are recognised as retries.
    if violations.is_empty() {
        let stats = journal.stats();
        for (stream, result, ids) in std::mem::take(&mut history.last_appends) {
            let events = ids
                .iter()
                .map(|&id| NewEvent {
                    id,
                    event_type: "Retried".to_owned(),
                    content_type: ContentType::Binary,
                    data: Vec::new(),
                    metadata: None,
                })
                .collect();
            match journal.append_blocking(&stream, ExpectedVersion::Any, events) {
                Ok(retried) if retried == result => {}
                other => violations.push(format!(
                    "a retry of {result:?} on {stream} was answered {other:?}"
                )),
            }
        }
        if journal.stats() != stats {
            violations.push("retries of acknowledged appends wrote events".to_owned());
        }
    }
    Boot {
        violations,
        head,
        snapshots,
        checkpoint: checkpoint.map(|(position, _)| position),
        ..Boot::default()
    }
}

/// Checks every kept snapshot of `stream` against a fold of its events; returns how many.
fn check_snapshots(
    journal: &Journal,
    plugin: &str,
    stream: &str,
    events: &[RecordedEvent],
    violations: &mut Vec<String>,
) -> usize {
    let mut checked = 0;
    let mut at_most = u64::MAX;
    while let Some((version, state)) = journal.latest_snapshot(plugin, stream, at_most).unwrap() {
        checked += 1;
        match events.get(..version as usize) {
            None => violations.push(format!(
                "the snapshot of {stream} at version {version} is ahead of the stream ({})",
                events.len()
            )),
            Some(folded) if account_after(folded).snapshot() != state => violations.push(format!(
                "the snapshot of {stream} at version {version} is not the fold up to there"
            )),
            Some(_) => {}
        }
        match version.checked_sub(1) {
            Some(below) => at_most = below,
            None => break,
        }
    }
    checked
}

/// After a boot: the projection resumes from its checkpoint and reaches the state of a fresh
/// replay; every account's state (snapshot plus tail) is the fold of its stream.
async fn resumed_as_replayed(
    runtime: &Arc<Runtime>,
    journal: &Journal,
    checkpoint: Option<u64>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let log = read_all(journal);
    let projection = runtime.projection("bank-analytics").unwrap();
    let started = Instant::now();
    let position = loop {
        match projection.status() {
            ProjectionStatus::Live { position } if position == log.len() as u64 => break position,
            ProjectionStatus::Faulted { reason, .. } => {
                return vec![format!("bank-analytics faulted: {reason}")];
            }
            _ if started.elapsed() > PATIENCE => panic!("bank-analytics never caught up"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let resumed_from = checkpoint.unwrap_or(0);
    if projection.replayed() != position - resumed_from {
        violations.push(format!(
            "bank-analytics read {} events to reach {position}, not resuming from its checkpoint at {resumed_from}",
            projection.replayed()
        ));
    }
    let (_, state) = projection.state().await.unwrap().unwrap();
    let replayed: serde_json::Value =
        serde_json::from_str(&analytics_after(&log).state_json()).unwrap();
    if state != replayed {
        violations.push(format!(
            "bank-analytics resumed at {position} to\n    {state}\n  a fresh replay gives\n    {replayed}"
        ));
    }
    for stream in journal.streams_with_prefix("bank-account-").unwrap() {
        let id = stream.strip_prefix("bank-account-").unwrap();
        let events = read_stream(journal, &stream);
        let expected: serde_json::Value =
            serde_json::from_str(&account_after(&events).state_json()).unwrap();
        match runtime.aggregate_state("bank-account", id, None).await {
            Ok((version, state)) if (version, &state) == (events.len() as u64, &expected) => {}
            other => violations.push(format!(
                "{stream} rehydrates to {other:?}, its {} events fold to {expected}",
                events.len()
            )),
        }
    }
    violations
}

/// Appends batches of 1–4 events to its own streams until an append fails (the power cut).
async fn append_until_failure(
    journal: Journal,
    history: Arc<Mutex<History>>,
    appender: u64,
    seed: u64,
) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut versions = HashMap::new();
    loop {
        let stream = format!(
            "ledger-{appender}-{}",
            rng.random_range(0..STREAMS_PER_APPENDER)
        );
        let version = match versions.get(&stream) {
            Some(&version) => version,
            None => match journal.stream_version(&stream) {
                Ok(version) => version.unwrap_or(0),
                Err(error) => return format!("appender {appender}: {error}"),
            },
        };
        let expected = match version {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        };
        let events: Vec<NewEvent> = (0..rng.random_range(1..=4))
            .map(|_| random_event(&mut rng))
            .collect();
        match journal.append(&stream, expected, events.clone()).await {
            Ok(result) => {
                versions.insert(stream.clone(), result.last_version);
                history.lock().unwrap().acknowledge(&stream, result, events);
            }
            Err(error) => {
                let mut history = history.lock().unwrap();
                for event in events {
                    history
                        .unacknowledged
                        .insert(event.id, (stream.clone(), event));
                }
                return format!("appender {appender}: {error}");
            }
        }
    }
}

/// An event of 20 bytes to 20 KB (a few span several pages).
fn random_event(rng: &mut StdRng) -> NewEvent {
    let size = if rng.random_ratio(1, 20) {
        rng.random_range(4_000..20_000)
    } else {
        rng.random_range(20..400)
    };
    let fill = char::from(b'a' + rng.random_range(0..26));
    let data = serde_json::json!({ "note": fill.to_string().repeat(size) });
    NewEvent {
        id: Uuid::from_u128(rng.random()),
        event_type: "Noted".to_owned(),
        content_type: ContentType::Json,
        data: serde_json::to_vec(&data).unwrap(),
        metadata: rng
            .random_bool(0.5)
            .then(|| format!("{{\"by\":{}}}", rng.random::<u32>())),
    }
}

/// Deposits to and withdraws from its accounts (opening them first) until a command fails
/// for another reason than the plugin's refusal (the power cut).
async fn command_until_failure(
    runtime: Arc<Runtime>,
    history: Arc<Mutex<History>>,
    customer: u64,
    seed: u64,
) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let id = format!("{customer}-{}", rng.random_range(0..ACCOUNTS_PER_CUSTOMER));
        let (command, data) = if rng.random_ratio(7, 10) {
            (
                "Deposit",
                serde_json::json!({ "amount": rng.random_range(1..500) }),
            )
        } else {
            (
                "Withdraw",
                serde_json::json!({ "amount": rng.random_range(1..300) }),
            )
        };
        let mut outcome = execute(&runtime, &id, command, data).await;
        if let Err(RuntimeError::Rejected { reason, .. }) = &outcome
            && reason.contains("not open")
        {
            let owner = serde_json::json!({ "owner": format!("customer {customer}") });
            outcome = execute(&runtime, &id, "Open", owner).await;
        }
        match outcome {
            Ok(events) => {
                let mut history = history.lock().unwrap();
                for event in events {
                    history.acknowledged.insert(event.id, event);
                }
            }
            Err(RuntimeError::Rejected { .. }) => tokio::task::yield_now().await,
            Err(error) => return format!("customer {customer}: {error}"),
        }
    }
}

async fn execute(
    runtime: &Runtime,
    id: &str,
    command: &str,
    data: serde_json::Value,
) -> Result<Vec<RecordedEvent>, RuntimeError> {
    let data = serde_json::to_vec(&data).unwrap();
    let outcome = runtime.execute("bank-account", id, command, data).await?;
    Ok(outcome.events)
}

fn read_all(journal: &Journal) -> Vec<RecordedEvent> {
    let mut log: Vec<RecordedEvent> = Vec::new();
    loop {
        let page = journal.read_all(log.len() as u64 + 1, PAGE).unwrap();
        if page.is_empty() {
            return log;
        }
        log.extend(page);
    }
}

fn read_stream(journal: &Journal, stream: &str) -> Vec<RecordedEvent> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    loop {
        let page = journal
            .read_stream(stream, events.len() as u64 + 1, PAGE)
            .unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// An account folded natively by the plugin's own code, from no snapshot.
fn account_after(events: &[RecordedEvent]) -> Account {
    let mut account = Account::default();
    for event in events {
        account.apply(decode_json(&event.event_type, &event.data).unwrap());
    }
    account
}

/// bank-analytics folded natively by the plugin's own code, from position 1.
fn analytics_after(log: &[RecordedEvent]) -> Analytics {
    let mut state = Analytics::default();
    let subscription = Analytics::subscription();
    for event in log {
        if subscription.matches(&event.stream, &event.event_type) {
            let decoded: BankEvent = decode_json(&event.event_type, &event.data).unwrap();
            let meta = EventMeta {
                stream: &event.stream,
                version: event.version,
                position: event.position,
                recorded_at: event.recorded_at,
            };
            state.apply(decoded, &meta);
        }
    }
    state
}
