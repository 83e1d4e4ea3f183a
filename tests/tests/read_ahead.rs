//! Catch-ups read the next page of the journal while the current one folds (offline catch-ups
//! through `Pages::fold_ahead`, the projection worker through its own read ahead). They must
//! fold exactly what reading and folding page by page folds, in order, and a read that fails
//! mid-way must stop them where a page-by-page catch-up stops: after the pages before it, with
//! the error it had. (redb refuses every read after a failed one until the file is reopened,
//! so a catch-up resumes on a reopened journal.)

use std::sync::Arc;
use std::time::Duration;

use foldhost::journal::{
    ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent, RecordedEvent,
};
use foldhost::runtime::{
    AggregateInstance, Plugin, PluginEngine, ProjectionInstance, ProjectionRunner,
    ProjectionStatus, REPLAY_LIMIT, RunnerOptions, RuntimeError, UpcasterChain,
};
use foldhost_tests::gated_disk::{Gate, GatedDisk};
use serde_json::{Value, json};

/// Deposits on one long stream, and on the other accounts.
const LONG: u64 = 3_000;
const ACCOUNTS: usize = 20;
const SPREAD: usize = 3_000;

struct Fixture {
    journal: Journal,
    disk: GatedDisk,
    gate: Arc<Gate>,
    /// The whole log and the long stream, read before any read fails.
    log: Vec<RecordedEvent>,
    long: Vec<RecordedEvent>,
    account: Arc<Plugin>,
    analytics: Arc<Plugin>,
}

/// A journal on a disk whose reads the test can fail, with a page cache far smaller than the
/// log so catch-ups read from the disk: one account with `LONG` deposits, then `ACCOUNTS`
/// accounts sharing `SPREAD` deposits. Both logs span several pages.
fn fixture() -> Fixture {
    let disk = GatedDisk::new();
    let gate = disk.gate();
    let journal = open(&disk);
    let opened = |owner: &str| NewEvent::json("Opened", &json!({ "owner": owner }));
    let deposit = |i: u64| NewEvent::json("Deposited", &json!({ "amount": i % 90 + 1 }));
    let mut long = vec![opened("long")];
    long.extend((1..=LONG).map(deposit));
    for chunk in long.chunks(500) {
        let stream = "bank-account-long";
        let append = journal.append_blocking(stream, ExpectedVersion::Any, chunk.to_vec());
        append.unwrap();
    }
    for a in 0..ACCOUNTS {
        let stream = format!("bank-account-{a}");
        let append =
            journal.append_blocking(&stream, ExpectedVersion::NoStream, vec![opened(&stream)]);
        append.unwrap();
    }
    for (i, chunk) in (0..SPREAD as u64)
        .collect::<Vec<_>>()
        .chunks(50)
        .enumerate()
    {
        let stream = format!("bank-account-{}", i % ACCOUNTS);
        let deposits = chunk.iter().map(|i| deposit(*i)).collect();
        journal
            .append_blocking(&stream, ExpectedVersion::Any, deposits)
            .unwrap();
    }
    let engine = PluginEngine::new(Default::default(), None).unwrap();
    let load = |name: &str| {
        let bytes = std::fs::read(foldhost_plugins::path(name)).unwrap();
        Plugin::load(&engine, &bytes, name).unwrap()
    };
    Fixture {
        account: load("bank-account"),
        analytics: load("bank-analytics"),
        log: journal.read_all(1, usize::MAX).unwrap(),
        long: journal
            .read_stream("bank-account-long", 1, usize::MAX)
            .unwrap(),
        journal,
        disk,
        gate,
    }
}

fn open(disk: &GatedDisk) -> Journal {
    let config = JournalConfig {
        cache_bytes: 64 << 10,
        ..JournalConfig::default()
    };
    Journal::open_on(disk.clone(), config).unwrap()
}

impl Fixture {
    fn head(&self) -> u64 {
        self.journal.head_position()
    }

    /// The projection folded one page after the other up to position `to` (where a page ends).
    fn projection_by_pages(&self, to: u64) -> ProjectionInstance {
        let mut instance = ProjectionInstance::new(self.analytics.clone(), None).unwrap();
        by_pages(&self.log, to, |page| instance.apply(page).unwrap());
        assert_eq!(instance.position, to);
        instance
    }

    /// The long account folded one page after the other up to version `to` (where a page ends).
    fn account_by_pages(&self, to: u64) -> AggregateInstance {
        let stream = "bank-account-long";
        let mut instance = AggregateInstance::new(self.account.clone(), stream, None).unwrap();
        by_pages(&self.long, to, |page| instance.apply(page).unwrap());
        assert_eq!(instance.version, to);
        instance
    }

    /// Heals the disk and opens the journal again (redb refuses reads after a failed one).
    fn reopen(&mut self) {
        self.gate.heal_reads();
        self.journal = open(&self.disk);
    }

    /// Disk reads a whole catch-up of the projection takes.
    fn reads_of_a_projection_catch_up(&self) -> usize {
        let before = self.gate.reads();
        let mut instance = ProjectionInstance::new(self.analytics.clone(), None).unwrap();
        instance.catch_up(&self.journal).unwrap();
        self.gate.reads() - before
    }
}

/// Hands `events` (a log or a stream, from its first event) to `fold` in pages as a catch-up
/// up to the event numbered `to` reads them.
fn by_pages(events: &[RecordedEvent], to: u64, fold: impl FnMut(&[RecordedEvent])) {
    events[..to as usize]
        .chunks(REPLAY_LIMIT.events)
        .for_each(fold);
}

/// Whether a catch-up that stopped at `position` (or version) stopped where a page ends.
fn ends_a_page(position: u64) -> bool {
    position.is_multiple_of(REPLAY_LIMIT.events as u64)
}

fn is_read_failure(error: &RuntimeError) -> bool {
    matches!(error, RuntimeError::Journal(JournalError::Storage(_)))
}

#[test]
fn catch_ups_reading_ahead_fold_what_page_by_page_catch_ups_fold() {
    let f = fixture();
    let head = f.head();
    let mut ahead = ProjectionInstance::new(f.analytics.clone(), None).unwrap();
    assert_eq!(ahead.catch_up(&f.journal).unwrap(), head);
    assert_eq!(ahead.position, head);
    let mut by_pages = f.projection_by_pages(head);
    assert_eq!(ahead.state().unwrap(), by_pages.state().unwrap());

    // One stream, to its head and to a version inside a page.
    for to in [LONG + 1, 2_500] {
        let stream = "bank-account-long";
        let mut ahead = AggregateInstance::new(f.account.clone(), stream, None).unwrap();
        ahead.catch_up(&f.journal, to).unwrap();
        assert_eq!(ahead.version, to);
        let mut by_pages = f.account_by_pages(to);
        assert_eq!(ahead.state().unwrap(), by_pages.state().unwrap());
    }
}

#[test]
fn a_read_failing_mid_catch_up_stops_it_after_the_pages_before_it() {
    let mut f = fixture();
    let head = f.head();
    let reads = f.reads_of_a_projection_catch_up();

    f.gate.fail_reads_after(reads / 2);
    let mut ahead = ProjectionInstance::new(f.analytics.clone(), None).unwrap();
    let error = ahead.catch_up(&f.journal).unwrap_err();
    assert!(is_read_failure(&error), "{error}");
    let stopped = ahead.position;
    assert!(
        0 < stopped && stopped < head,
        "stopped at {stopped} of {head}"
    );
    let mut by_pages = f.projection_by_pages(stopped);
    assert_eq!(ahead.state().unwrap(), by_pages.state().unwrap());
    // It goes on from there once the disk reads again.
    f.reopen();
    ahead.catch_up(&f.journal).unwrap();
    assert_eq!(ahead.position, head);
    let mut whole = f.projection_by_pages(head);
    assert_eq!(ahead.state().unwrap(), whole.state().unwrap());

    // The same for one stream.
    let stream = "bank-account-long";
    let before = f.gate.reads();
    AggregateInstance::new(f.account.clone(), stream, None)
        .unwrap()
        .catch_up(&f.journal, u64::MAX)
        .unwrap();
    f.gate.fail_reads_after((f.gate.reads() - before) / 2);
    let mut ahead = AggregateInstance::new(f.account.clone(), stream, None).unwrap();
    let error = ahead.catch_up(&f.journal, u64::MAX).unwrap_err();
    assert!(is_read_failure(&error), "{error}");
    let stopped = ahead.version;
    assert!(0 < stopped && stopped <= LONG, "stopped at {stopped}");
    assert!(ends_a_page(stopped), "stopped at {stopped}");
    let mut by_pages = f.account_by_pages(stopped);
    assert_eq!(ahead.state().unwrap(), by_pages.state().unwrap());
    f.reopen();
    ahead.catch_up(&f.journal, u64::MAX).unwrap();
    assert_eq!(ahead.version, LONG + 1);
    let mut whole = f.account_by_pages(LONG + 1);
    assert_eq!(ahead.state().unwrap(), whole.state().unwrap());
}

/// The worker's read ahead: a read that fails while it catches up is retried where the fold
/// stands (status `retrying`), never taken for the end of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_reads_fail_mid_catch_up_waits_where_its_fold_stands() {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let head = f.head();
    let reads = f.reads_of_a_projection_catch_up();

    f.gate.fail_reads_after(reads / 2);
    let options = RunnerOptions {
        checkpoints: Default::default(),
        policy: Arc::new(tokio::sync::watch::Sender::new(Default::default())),
        // Writes nothing to the journal (a write that cannot read would fault it).
        fresh: true,
        queries: Arc::new(tokio::sync::Semaphore::new(4)),
        upcasters: UpcasterChain::none(),
    };
    let runner = ProjectionRunner::start(f.analytics.clone(), f.journal.clone(), options);
    let mut status = runner.watch_status();
    let stalled = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| {
            matches!(
                s,
                ProjectionStatus::Retrying { .. } | ProjectionStatus::Live { .. }
            )
        }),
    )
    .await
    .expect("the projection stalled or finished")
    .unwrap()
    .clone();
    let ProjectionStatus::Retrying { position, .. } = stalled else {
        panic!("reached {stalled:?} though reads fail from half way");
    };
    assert!(0 < position && position < head, "stopped at {position}");
    assert!(ends_a_page(position), "stopped at {position}");
    let (folded, state): (u64, Value) = runner.state().await.unwrap().unwrap();
    assert_eq!(folded, position);
    let mut by_pages = f.projection_by_pages(position);
    assert_eq!(state, by_pages.state().unwrap());
}
