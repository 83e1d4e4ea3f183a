//! An import's appends, applied in the order they were queued and stopped at the first that
//! fails (see [`Journal::import_in`](super::Journal::import_in)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The appends of one import, in the order they are queued into it. Once one fails, every
/// append queued into it after that one fails too, with
/// [`JournalError::SequenceStopped`](super::JournalError::SequenceStopped), without being
/// applied: however many are queued at once, the journal keeps none queued after the first
/// failure. Clones share the sequence.
#[derive(Debug, Clone)]
pub struct ImportSequence(Arc<Places>);

#[derive(Debug)]
struct Places {
    /// The place of the next append queued.
    next: AtomicU64,
    /// The place of the first append that failed (`u64::MAX`: none did).
    first_failed: AtomicU64,
}

impl Default for ImportSequence {
    fn default() -> Self {
        Self(Arc::new(Places {
            next: AtomicU64::new(0),
            first_failed: AtomicU64::new(u64::MAX),
        }))
    }
}

// Relaxed is enough: an append takes its place as it is queued, and the writer applies appends
// in the order queued, one commit after another (its claim and its queue order them).
impl ImportSequence {
    /// A sequence nothing was queued into yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The place of an append about to be queued.
    pub(super) fn take_place(&self) -> u64 {
        self.0.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that the append at `place` failed.
    pub(super) fn fail(&self, place: u64) {
        self.0.first_failed.fetch_min(place, Ordering::Relaxed);
    }

    /// Whether an append queued before the one at `place` failed.
    pub(super) fn failed_before(&self, place: u64) -> bool {
        self.0.first_failed.load(Ordering::Relaxed) < place
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::journal::{ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent};

    /// Appends queued into a sequence behind one the writer refuses are not applied, even
    /// when they were queued before it failed; those before it are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_after_a_failed_one_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let journal =
            Journal::open(dir.path().join("journal.redb"), JournalConfig::default()).unwrap();
        let event = || vec![NewEvent::json("Happened", &serde_json::json!({}))];
        journal
            .append("gone", ExpectedVersion::Any, event())
            .await
            .unwrap();
        journal
            .delete_stream("gone", ExpectedVersion::Any, true)
            .await
            .unwrap();
        let sequence = ImportSequence::new();
        let streams = ["before", "gone", "after", "later"];
        let mut queued: Vec<_> = streams
            .iter()
            .map(|stream| {
                let mut append = Box::pin(journal.import_in(
                    &sequence,
                    stream,
                    ExpectedVersion::Any,
                    event(),
                    1,
                ));
                // Queued now, in this order (polled once).
                let polled = append
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()));
                (polled, append)
            })
            .collect();
        let mut outcomes = Vec::new();
        for (polled, append) in &mut queued {
            outcomes.push(match polled {
                Poll::Ready(outcome) => outcome.clone(),
                Poll::Pending => append.await,
            });
        }
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], Err(JournalError::StreamDeleted(_))),
            "{outcomes:?}"
        );
        for stopped in &outcomes[2..] {
            assert!(
                matches!(stopped, Err(JournalError::SequenceStopped)),
                "{outcomes:?}"
            );
        }
        // Queued after the failure was known: refused all the same.
        let late = journal.import_in(&sequence, "late", ExpectedVersion::Any, event(), 1);
        assert!(matches!(late.await, Err(JournalError::SequenceStopped)));
        let all = journal.read_all(1, 100).unwrap();
        let streams: Vec<&str> = all.iter().map(|event| &*event.stream).collect();
        assert_eq!(streams, ["before"]);
    }
}
