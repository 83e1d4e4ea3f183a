//! One round of a stream's command pipeline.
//!
//! The commands queued on a stream are decided one after another, each on the state the
//! previous one produced, and the events of all of them are appended as one append (one group
//! commit, one fsync). Each command keeps its own outcome: a rejected one appends nothing and
//! leaves the others be, an idempotency key already stored answers with its stored outcome, and
//! a key seen earlier in the round gets that command's outcome.
//!
//! Events are folded ahead of their commit with provisional positions and times. Once the
//! append is durable, the state is put back to the snapshot taken before the round and the
//! stored events are folded for real, command by command, so that every outcome's state and the
//! cached state are exactly the fold of the log. If the append conflicts with another writer
//! (a direct append, another host), the whole round is decided again on the new state; if it
//! fails, every command decided on the uncommitted state fails and the state rolls back.

use std::sync::Arc;

use super::aggregate::AggregateInstance;
use super::commands::{AggregateConfig, Command, CommandOutcome, latest, unread_outcome};
use super::dehydrated::Dehydrated;
use super::error::RuntimeError;
use super::idempotency::{check_same, check_same_as, committed, mark};
use super::plugin::Plugin;
use super::upcast::UpcasterChain;
use crate::journal::{
    AppendResult, ExpectedVersion, Journal, JournalError, NewEvent, RecordedEvent,
};

/// What a round did.
pub(super) struct Ran {
    /// The instance, if it still holds the stream's committed state.
    pub instance: Option<AggregateInstance>,
    /// The outcomes of the first commands, in order; the others were not decided this round
    /// (the round was full, or the store failed under an earlier one) and queue again.
    pub outcomes: Vec<Result<CommandOutcome, RuntimeError>>,
    /// Times the round was decided again after a conflicting write.
    pub redecided: u32,
}

/// The state a round starts from: the cached one, if any, of `plugin` through `upcasters`.
pub(super) struct State {
    pub cached: Option<AggregateInstance>,
    /// The stream's dehydrated state, when none is cached.
    pub dehydrated: Option<Dehydrated>,
    pub plugin: Arc<Plugin>,
    pub upcasters: Arc<UpcasterChain>,
}

/// Runs `commands` (queued on `stream` in this order) as one round on the cached state.
pub(super) fn run(
    State {
        cached,
        dehydrated,
        plugin,
        upcasters,
    }: State,
    journal: &Journal,
    stream: &str,
    commands: &[Command],
    config: &AggregateConfig,
) -> Ran {
    let failed = |error: RuntimeError, redecided| Ran {
        instance: None,
        outcomes: vec![Err(error); commands.len()],
        redecided,
    };
    // Another writer (a direct append, another host) may have moved the stream on, or a
    // delete or retention rule hidden some of it: decide against what readers see now.
    let latest = latest(
        cached,
        dehydrated,
        plugin.clone(),
        upcasters.clone(),
        journal,
        stream,
    );
    let mut instance = match latest {
        Ok(instance) => instance,
        Err(error) => return failed(error, 0),
    };
    // Rounds whose keyed ids clashed with stored ones so far (see `IdempotencyMismatch`).
    let mut mismatched = 0;
    for redecided in 0..=config.max_conflict_retries {
        let round = decide(&mut instance, journal, commands, mismatched > 0);
        let sent = round.events();
        let appended = match sent.is_empty() {
            true => Ok(None),
            false => journal
                .append_blocking(stream, round.expected(), sent.clone())
                .map(Some),
        };
        let gone = || RuntimeError::KeyOutcomeGone {
            stream: stream.to_owned(),
        };
        let stored = match appended {
            Ok(None) => Some(Vec::new()),
            // Every event's id was stored already, before the round began, by commands of its
            // keys that readers cannot see (deleted, or outside the stream's retention rules).
            Ok(Some(appended)) if appended.first_position <= round.head => {
                return round.gone(instance, gone(), redecided);
            }
            Ok(Some(appended)) if round.follows(&appended, journal, stream) => {
                let count = sent.len();
                match journal.read_stream(stream, appended.first_version, count) {
                    // The journal took the append for a retry of events with the same ids
                    // stored by another host's command of one of the round's keys: if that was
                    // another command (its key's metadata differs), decided again, the key
                    // refuses it.
                    Ok(stored) if stored.len() == count && !same_metadata(&stored, &sent) => None,
                    Ok(stored) if stored.len() == count => Some(stored),
                    Ok(_) => {
                        let why = missing_after_append(journal, stream, &appended);
                        return round.unread(stream, appended, sent, why, redecided);
                    }
                    Err(error) => {
                        let why = format!("reading them back failed ({error})");
                        return round.unread(stream, appended, sent, why, redecided);
                    }
                }
            }
            // Every event's id was stored already: another host stored the round's keyed
            // commands after this one checked their keys, past events this state never folded.
            // Decided again, the keys answer from the log.
            Ok(Some(_)) => None,
            // Someone else appended (or deleted the stream), or another host stored a command
            // of one of the keys first.
            Err(JournalError::Conflict { .. }) => None,
            // Some of the round's ids are stored: another host stored a command of one of its
            // keys first (decided again, the key answers from the log), or a command of one of
            // its keys is stored but hidden. Decided again one writing command a round, one
            // that still clashes the second time alone is the hidden one.
            Err(JournalError::IdempotencyMismatch { .. }) if round.has_keys(commands) => {
                mismatched += 1;
                if mismatched > 2 {
                    return round.gone(instance, gone(), redecided);
                }
                None
            }
            Err(error) => return round.failed(instance, error.into(), redecided),
        };
        let Some(stored) = stored else {
            // Catch up and decide again.
            instance = match round.rollback(instance, (&plugin, &upcasters), journal, stream) {
                Ok(instance) => instance,
                Err(error) => return failed(error, redecided),
            };
            continue;
        };
        return round.refold(
            instance,
            (&plugin, &upcasters),
            journal,
            stream,
            stored,
            redecided,
        );
    }
    failed(
        RuntimeError::TooManyConflicts(stream.to_owned()),
        config.max_conflict_retries,
    )
}

/// Whether `stored` carry the metadata of the events `sent` (a keyed command's first event
/// records its key and command).
fn same_metadata(stored: &[RecordedEvent], sent: &[NewEvent]) -> bool {
    stored
        .iter()
        .zip(sent)
        .all(|(stored, sent)| stored.metadata.as_deref() == sent.metadata.as_deref())
}

/// Why events just appended at `appended` read back fewer: the stream's retention rules
/// (`truncate_before` past them, a `max_count` below the round's events) hide them from readers
/// at once, or they are missing, which is corruption.
fn missing_after_append(journal: &Journal, stream: &str, appended: &AppendResult) -> String {
    match journal.stream_window(stream) {
        Ok(window) if window.first > appended.first_version => format!(
            "the stream's retention rules hide them from readers at once (its first visible \
             version is {})",
            window.first
        ),
        _ => {
            let missing = JournalError::Corrupt {
                position: appended.first_position,
                reason: "appended events are missing when read back".to_owned(),
            };
            format!("reading them back failed ({missing})")
        }
    }
}

/// The plugin build and upcaster chain a round's state is folded with.
type Build<'a> = (&'a Arc<Plugin>, &'a Arc<UpcasterChain>);

/// How one command of a round was decided.
enum Decision {
    /// Refused (rejected, invalid) or failed; it appends nothing.
    Failed(RuntimeError),
    /// Its idempotency key's command was stored before: that command's outcome.
    Stored(Result<CommandOutcome, RuntimeError>),
    /// The same key as the command at this index of the round: the same outcome.
    SameAs(usize),
    /// Events to append, possibly none.
    Events(Vec<NewEvent>),
}

impl Decision {
    /// Whether its command's key answers a later command of the round: it stored events, or
    /// will. As across rounds, a command refused or deciding nothing is not remembered.
    fn remembered(&self) -> bool {
        match self {
            Decision::Failed(_) => false,
            Decision::Events(events) => !events.is_empty(),
            Decision::Stored(_) | Decision::SameAs(_) => true,
        }
    }
}

/// A round's decisions, before they are stored.
struct Round {
    decisions: Vec<Decision>,
    /// The stream version the round was decided on.
    base: u64,
    /// The journal's head position when the round began.
    head: u64,
    /// The state at `base`, taken before the first fold ahead of the commit.
    committed: Option<Vec<u8>>,
    /// Whether a plugin call failed so that the store must not be used again.
    broken: bool,
}

/// Decides `commands` in order on `instance`, folding each one's events ahead of the commit
/// so that the next one is decided on the state they produce. Stops early, leaving the rest for
/// the next round, before the round's events outgrow one append (in events or bytes), when the
/// store fails, or (`solo`) after the first command that decided events.
fn decide(
    instance: &mut AggregateInstance,
    journal: &Journal,
    commands: &[Command],
    solo: bool,
) -> Round {
    let stream = instance.stream().to_owned();
    let mut round = Round {
        decisions: Vec::with_capacity(commands.len()),
        base: instance.version,
        head: journal.head_position(),
        committed: None,
        broken: false,
    };
    let limits = journal.config();
    let (mut events_so_far, mut bytes_so_far) = (0, 0);
    for (index, command) in commands.iter().enumerate() {
        let key = command.idempotency_key.as_deref();
        if let Some(key) = key {
            // Only a command that stored (or will store) events is remembered by its key.
            let earlier = (0..index).find(|&i| {
                commands[i].idempotency_key.as_deref() == Some(key)
                    && round.decisions[i].remembered()
            });
            if let Some(earlier) = earlier {
                round.decisions.push(
                    match check_same_as(&commands[earlier], command, &stream, key) {
                        Ok(()) => Decision::SameAs(earlier),
                        Err(error) => Decision::Failed(error),
                    },
                );
                continue;
            }
            match committed(journal, &stream, key) {
                Ok(None) => {}
                Ok(Some(stored)) => {
                    if let Err(error) = check_same(&stored[0], command, key) {
                        round.decisions.push(Decision::Failed(error));
                        continue;
                    }
                    let outcome =
                        stored_outcome(instance, round.committed.is_none(), journal, stored);
                    round.decisions.push(Decision::Stored(outcome));
                    // A store that trapped rendering that state cannot decide the round's next
                    // commands: they wait for the next round, on a new store.
                    if !instance.is_usable() {
                        round.broken = true;
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    round.decisions.push(Decision::Failed(error.into()));
                    continue;
                }
            }
        }
        let mut events = match instance.handle(&command.command_type, &command.data) {
            Ok(events) => events,
            Err(error) => {
                let refused = matches!(
                    error,
                    RuntimeError::Rejected { .. } | RuntimeError::InvalidCommand { .. }
                );
                round.decisions.push(Decision::Failed(error));
                if refused {
                    continue;
                }
                round.broken = true;
                break;
            }
        };
        if events.is_empty() {
            round.decisions.push(Decision::Events(events));
            continue;
        }
        if let Some(key) = key {
            mark(&mut events, &stream, key, command);
        }
        if let Err(error) = journal.check_append(&stream, &events) {
            round.decisions.push(Decision::Failed(error.into()));
            continue;
        }
        let bytes: usize = events.iter().map(NewEvent::size).sum();
        if events_so_far > 0
            && (events_so_far + events.len() > limits.max_append_events
                || bytes_so_far + bytes > limits.max_append_bytes)
        {
            break;
        }
        events_so_far += events.len();
        bytes_so_far += bytes;
        let last = solo || index + 1 == commands.len();
        if !last && !round.fold_ahead(instance, journal, &events) {
            // This command's events are still stored (the store is rebuilt to fold them); the
            // commands after it wait for the next round.
            round.decisions.push(Decision::Events(events));
            round.broken = true;
            break;
        }
        round.decisions.push(Decision::Events(events));
        if solo {
            break;
        }
    }
    round
}

/// The outcome of each of a stored round's `decisions`, in order: a refused or earlier stored
/// command's as it stands, a repeat's as its first's, and each other's as `appended` makes it
/// of the events it decided.
fn settle(
    decisions: Vec<Decision>,
    mut appended: impl FnMut(Vec<NewEvent>) -> CommandOutcome,
) -> Vec<Result<CommandOutcome, RuntimeError>> {
    let mut outcomes: Vec<Result<CommandOutcome, RuntimeError>> = Vec::new();
    for decision in decisions {
        let outcome = match decision {
            Decision::Failed(error) => Err(error),
            Decision::Stored(outcome) => outcome,
            Decision::SameAs(earlier) => outcomes[earlier].clone(),
            Decision::Events(decided) => Ok(appended(decided)),
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// The outcome of a command whose events were `stored` by an earlier round: the state right
/// after them, from `instance` when it holds exactly that (`as_committed`: nothing folded
/// ahead of a commit yet), otherwise rebuilt.
fn stored_outcome(
    instance: &mut AggregateInstance,
    as_committed: bool,
    journal: &Journal,
    stored: Vec<RecordedEvent>,
) -> Result<CommandOutcome, RuntimeError> {
    let version = stored.last().expect("a stored command has events").version;
    let state = match as_committed && instance.version == version {
        true => instance.state(),
        false => {
            let (plugin, upcasters) = (instance.plugin().clone(), instance.upcasters().clone());
            AggregateInstance::rehydrate_through(
                plugin,
                upcasters,
                journal,
                instance.stream(),
                version,
            )
            .and_then(|mut rebuilt| rebuilt.state())
        }
    };
    Ok(CommandOutcome {
        version,
        events: stored,
        state: state.map_err(|error| error.to_string()),
    })
}

impl Round {
    /// Folds `events` into `instance` ahead of their commit, after saving the committed state
    /// the first time. False if the store failed.
    fn fold_ahead(
        &mut self,
        instance: &mut AggregateInstance,
        journal: &Journal,
        events: &[NewEvent],
    ) -> bool {
        if self.committed.is_none() {
            match instance.snapshot() {
                Ok(bytes) => self.committed = Some(bytes),
                Err(_) => return false,
            }
        }
        let provisional = instance.provisional(journal.head_position(), events);
        instance.apply(&provisional).is_ok()
    }

    /// Every event the round decided, in order: its one append.
    fn events(&self) -> Vec<NewEvent> {
        self.decisions
            .iter()
            .filter_map(|decision| match decision {
                Decision::Events(events) => Some(events.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Whether `appended` directly follows the state the round was decided on. An append the
    /// round made does; one the journal answered with events another host stored meanwhile
    /// (the same keys, so the same ids) may lie past events this state never folded.
    fn follows(&self, appended: &AppendResult, journal: &Journal, stream: &str) -> bool {
        match self.base {
            // No visible event before them (a new stream, or one recreated after a delete).
            // Without the window, reading them back tells what became of them.
            0 if appended.first_version == 1 => true,
            0 => match journal.stream_window(stream) {
                Ok(window) => window.first >= appended.first_version,
                Err(_) => true,
            },
            base => appended.first_version == base + 1,
        }
    }

    /// The append holds only if the stream is still where the round found it.
    fn expected(&self) -> ExpectedVersion {
        match self.base {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        }
    }

    fn has_keys(&self, commands: &[Command]) -> bool {
        commands[..self.decisions.len()]
            .iter()
            .any(|command| command.idempotency_key.is_some())
    }

    /// The index of the first command that decided events: the ones after it were decided on
    /// state that is not committed yet.
    fn first_writer(&self) -> usize {
        self.decisions
            .iter()
            .position(|d| matches!(d, Decision::Events(events) if !events.is_empty()))
            .unwrap_or(self.decisions.len())
    }

    /// `instance` back at the committed state and caught up with the stream, or rebuilt.
    fn rollback(
        &self,
        instance: AggregateInstance,
        (plugin, upcasters): Build,
        journal: &Journal,
        stream: &str,
    ) -> Result<AggregateInstance, RuntimeError> {
        let restored = self.restore(instance);
        latest(
            restored,
            None,
            plugin.clone(),
            upcasters.clone(),
            journal,
            stream,
        )
    }

    /// `instance` put back to the state at `base`, unless its store failed.
    fn restore(&self, mut instance: AggregateInstance) -> Option<AggregateInstance> {
        if self.broken {
            return None;
        }
        match &self.committed {
            None => Some(instance),
            Some(bytes) => instance.restore(self.base, bytes).ok().map(|()| instance),
        }
    }

    /// The append failed: each command decided on uncommitted state fails with `error`; the
    /// state rolls back to the committed one.
    fn failed(self, instance: AggregateInstance, error: RuntimeError, redecided: u32) -> Ran {
        let mut instance = self.restore(instance);
        let first_writer = self.first_writer();
        let mut outcomes: Vec<Result<CommandOutcome, RuntimeError>> = Vec::new();
        for (index, decision) in self.decisions.into_iter().enumerate() {
            let outcome = match decision {
                Decision::Stored(outcome) => outcome,
                Decision::SameAs(earlier) => outcomes[earlier].clone(),
                _ if index >= first_writer => Err(error.clone()),
                Decision::Failed(refused) => Err(refused),
                Decision::Events(_) => match &mut instance {
                    Some(instance) => Ok(CommandOutcome {
                        version: self.base,
                        events: Vec::new(),
                        state: instance.state().map_err(|error| error.to_string()),
                    }),
                    None => Err(error.clone()),
                },
            };
            outcomes.push(outcome);
        }
        Ran {
            instance: instance.filter(|instance| instance.version > 0),
            outcomes,
            redecided,
        }
    }

    /// The round's first writing command is refused with `error` (its key's stored events are
    /// hidden); those before it keep their outcomes, and those after it, decided on its events,
    /// are left for the next round.
    fn gone(mut self, instance: AggregateInstance, error: RuntimeError, redecided: u32) -> Ran {
        self.decisions.truncate(self.first_writer() + 1);
        self.failed(instance, error, redecided)
    }

    /// The round's events are `stored`: folds them into the committed state, command by
    /// command, for each outcome's state.
    fn refold(
        self,
        instance: AggregateInstance,
        (plugin, upcasters): Build,
        journal: &Journal,
        stream: &str,
        stored: Vec<RecordedEvent>,
        redecided: u32,
    ) -> Ran {
        let mut folded = match self.restore(instance) {
            Some(instance) => Ok(instance),
            None => AggregateInstance::rehydrate_through(
                plugin.clone(),
                upcasters.clone(),
                journal,
                stream,
                self.base,
            ),
        };
        let mut version = self.base;
        let mut stored = stored.into_iter();
        let outcomes = settle(self.decisions, |decided| {
            let events: Vec<RecordedEvent> = stored.by_ref().take(decided.len()).collect();
            if let Some(last) = events.last() {
                version = last.version;
                if let Ok(instance) = &mut folded
                    && let Err(error) = instance.apply(&events)
                {
                    folded = Err(error);
                }
            }
            let rendered = match &mut folded {
                Ok(instance) => instance.state(),
                Err(error) => Err(error.clone()),
            };
            // A store that trapped rendering cannot fold the round's next commands.
            if let (Ok(instance), Err(error)) = (&folded, &rendered)
                && !instance.is_usable()
            {
                folded = Err(error.clone());
            }
            CommandOutcome {
                version,
                events,
                state: rendered.map_err(|error| {
                    tracing::error!(%error, "the events are stored, but the new state is unknown");
                    format!(
                        "the events are stored, but the new state could not be computed: {error}"
                    )
                }),
            }
        });
        // A store that failed is never reused; nor is one of a stream that still does not
        // exist, so commands to made-up ids leave nothing behind.
        let instance = folded.ok().filter(|instance| instance.version > 0);
        Ran {
            instance,
            outcomes,
            redecided,
        }
    }

    /// The round's events were appended but could not be read back: outcomes from the events
    /// as they were sent; the state is unknown, so the instance is dropped.
    fn unread(
        self,
        stream: &str,
        appended: AppendResult,
        sent: Vec<NewEvent>,
        why: String,
        redecided: u32,
    ) -> Ran {
        let mut sent = sent.into_iter();
        let (mut version, mut position) = (appended.first_version, appended.first_position);
        let outcomes = settle(self.decisions, |decided| {
            if decided.is_empty() {
                return CommandOutcome {
                    version: version - 1,
                    events: Vec::new(),
                    state: Err(format!(
                        "the state is unknown: the events are stored, but {why}"
                    )),
                };
            }
            let count = decided.len() as u64;
            let events: Vec<NewEvent> = sent.by_ref().take(decided.len()).collect();
            let placed = AppendResult {
                first_version: version,
                last_version: version + count - 1,
                first_position: position,
                last_position: position + count - 1,
            };
            (version, position) = (version + count, position + count);
            unread_outcome(stream, placed, events, &why)
        });
        Ran {
            instance: None,
            outcomes,
            redecided,
        }
    }
}
