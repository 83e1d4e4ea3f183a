//! Direct appends to a stream an aggregate owns: the aggregate folds the new events first, on
//! a scratch copy of the stream's state, so that an event it cannot fold never gets stored.

use std::sync::Arc;

use super::aggregate::{AggregateInstance, REPLAY_LIMIT, batches};
use super::blocking;
use super::commands::{Aggregates, latest, take_dehydrated, take_state};
use super::error::RuntimeError;
use super::plugin::Plugin;
use super::upcast::UpcasterChain;
use crate::journal::{
    AppendResult, ExpectedVersion, Journal, JournalError, NewEvent, RecordedEvent,
};

impl Aggregates {
    /// Appends `events` to `stream` of aggregate `plugin` once `expected` holds and the plugin
    /// has folded them onto the stream's current state; [`RuntimeError::Refused`] (nothing
    /// stored) if it cannot.
    ///
    /// The append queues with the stream's commands and is pinned to the exact version it was
    /// validated against, so nothing slips in between; after a conflicting write (another
    /// host) it is validated again. A retry of stored events (same ids) is answered by the
    /// journal's idempotence without a fold.
    pub async fn append_validated(
        &self,
        plugin: &Arc<Plugin>,
        upcasters: &Arc<UpcasterChain>,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, RuntimeError> {
        let slot = self.slot(stream);
        let mut live = slot.lock().await;
        let cached = take_state(&mut live, plugin, upcasters);
        let dehydrated =
            take_dehydrated(&self.dehydrated, cached.as_ref(), stream, plugin, upcasters);
        let (journal, plugin, stream) = (self.journal.clone(), plugin.clone(), stream.to_owned());
        let upcasters = upcasters.clone();
        let retries = self.config.max_conflict_retries;
        let (instance, outcome) = blocking(move || {
            if let Some(first) = events.first()
                && journal.event_by_id(first.id)?.is_some()
            {
                let retried = journal.append_blocking(&stream, expected, events);
                return Ok((cached, retried.map_err(RuntimeError::from)));
            }
            let latest = latest(cached, dehydrated, plugin, upcasters, &journal, &stream);
            let mut instance = match latest {
                Ok(instance) => instance,
                Err(error) => return Ok((None, Err(error))),
            };
            let outcome = validate_and_append(&mut instance, &journal, expected, events, retries);
            let intact = match &outcome {
                Ok((_, folded)) => *folded,
                Err(error) => matches!(
                    error,
                    RuntimeError::Refused { .. }
                        | RuntimeError::TooManyConflicts(_)
                        | RuntimeError::Journal(_)
                ),
            };
            // Nor is the store of a stream that still does not exist kept.
            let keep = intact && instance.version > 0;
            Ok((
                keep.then_some(instance),
                outcome.map(|(appended, _)| appended),
            ))
        })
        .await?;
        *live = instance;
        outcome
    }
}

/// Validates and appends, again after each conflict. Returns where the events landed and
/// whether `instance` folded them too (it is to be dropped otherwise).
fn validate_and_append(
    instance: &mut AggregateInstance,
    journal: &Journal,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    retries: u32,
) -> Result<(AppendResult, bool), RuntimeError> {
    let stream = instance.stream().to_owned();
    for _ in 0..=retries {
        let current = (instance.version > 0).then_some(instance.version);
        expected.check(&stream, current)?;
        validate(instance, journal, &events)?;
        let pinned = match current {
            None => ExpectedVersion::NoStream,
            Some(version) => ExpectedVersion::Exact(version),
        };
        match journal.append_blocking(&stream, pinned, events.clone()) {
            Ok(appended) => {
                let folded = instance.catch_up(journal, appended.last_version);
                if let Err(error) = &folded {
                    tracing::warn!(%error, %stream, "appended, but the cached state did not fold it");
                }
                return Ok((appended, folded.is_ok()));
            }
            Err(JournalError::Conflict { .. }) => instance.refresh(journal)?,
            Err(error) => return Err(error.into()),
        }
    }
    Err(RuntimeError::TooManyConflicts(stream))
}

/// Folds `events` onto a scratch copy of `instance`'s state, as the next events of its stream,
/// through its upcasters. Only the plugin's (or an upcaster's) verdict on an event refuses it;
/// the host failing to run the fold (out of time, out of memory budget) is not one.
fn validate(
    instance: &mut AggregateInstance,
    journal: &Journal,
    events: &[NewEvent],
) -> Result<(), RuntimeError> {
    let provisional = instance.provisional(journal.head_position(), events);
    let mut scratch = instance.scratch(journal)?;
    if batches(&provisional, REPLAY_LIMIT).all(|batch| scratch.apply(batch).is_ok()) {
        return Ok(());
    }
    // Which one? Fold them singly (a batch may also have failed only as a whole).
    let mut scratch = instance.scratch(journal)?;
    for (index, event) in provisional.iter().enumerate() {
        if let Err(error) = scratch.apply(std::slice::from_ref(event)) {
            return Err(refusal(instance.plugin().name(), index, event, error));
        }
    }
    Ok(())
}

/// `error` of `plugin` (or of one of its upcasters) folding `event`, the `index`th of an append:
/// [`RuntimeError::Refused`] when a plugin refused or trapped on it, `error` itself when the
/// host could not finish the call (a timeout, the host's memory budget).
fn refusal(plugin: &str, index: usize, event: &RecordedEvent, error: RuntimeError) -> RuntimeError {
    let culprit = match &error {
        _ if error.is_timeout() => return error,
        RuntimeError::Trap { plugin, .. } | RuntimeError::PluginFailed { plugin, .. } => plugin,
        _ => return error,
    };
    // An upcaster's failure names it.
    let reason = match culprit == plugin {
        true => error.plugin_reason(),
        false => error.to_string(),
    };
    RuntimeError::Refused {
        plugin: plugin.to_owned(),
        stream: event.stream.to_string(),
        index,
        event_type: event.event_type.to_string(),
        reason: unplaced(&reason, event.position, index),
    }
}

/// `reason` with its mentions of the provisional `position` the fold was shown (the SDKs' "event
/// at position N", an upcaster's "events at positions N..=N") naming the event by its `index` in
/// the append instead: it was never stored, and another write may take that position first.
fn unplaced(reason: &str, position: u64, index: usize) -> String {
    let instead = format!("event at index {index} of the append");
    [
        format!("events at positions {position}..={position}"),
        format!("event at position {position}"),
    ]
    .iter()
    .fold(reason.to_owned(), |text, mention| {
        replace_number_mention(&text, mention, &instead)
    })
}

/// `text` with each `mention` (which ends in a number) replaced, unless more digits follow it
/// (a mention of position 2 is not one of position 21).
fn replace_number_mention(text: &str, mention: &str, replacement: &str) -> String {
    let mut replaced = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(mention) {
        let after = &rest[at + mention.len()..];
        replaced.push_str(&rest[..at]);
        match after.starts_with(|c: char| c.is_ascii_digit()) {
            true => replaced.push_str(mention),
            false => replaced.push_str(replacement),
        }
        rest = after;
    }
    replaced.push_str(rest);
    replaced
}

#[cfg(test)]
mod tests {
    use super::unplaced;

    #[test]
    fn a_refusal_names_the_event_by_its_index_not_its_provisional_position() {
        for (reason, unplaced_reason) in [
            (
                "cannot apply event at position 15 of type `Bogus`: unknown variant",
                "cannot apply event at index 1 of the append of type `Bogus`: unknown variant",
            ),
            (
                "plugin up trapped upcasting events at positions 15..=15: panicked",
                "plugin up trapped upcasting event at index 1 of the append: panicked",
            ),
            // Other positions are not the event's.
            (
                "event at position 150 and event at position 1",
                "event at position 150 and event at position 1",
            ),
        ] {
            assert_eq!(unplaced(reason, 15, 1), unplaced_reason);
        }
    }
}
