//! Requests to the writer thread: one write each, with the channel its outcome goes to.

use tokio::sync::oneshot;
use tokio::task;

use super::batch::{Appended, Batch};
use super::{AppendResult, ExpectedVersion, JournalError, NewEvent, Op};

/// A write, with the channel its outcome goes to.
pub(super) struct Request {
    op: Op,
    reply: Reply,
    /// The async task that made it, if one did.
    pub(super) task: Option<task::Id>,
}

enum Reply {
    Append(oneshot::Sender<Result<AppendResult, JournalError>>),
    Done(oneshot::Sender<Result<(), JournalError>>),
}

/// The receiving end of a request's outcome.
pub(super) type Outcome<T> = oneshot::Receiver<Result<T, JournalError>>;

impl Request {
    pub(super) fn append(
        stream: String,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> (Self, Outcome<AppendResult>) {
        let (tx, rx) = oneshot::channel();
        let op = Op::Append {
            stream,
            expected,
            events,
            recorded_at: None,
        };
        (
            Self {
                op,
                reply: Reply::Append(tx),
                task: task::try_id(),
            },
            rx,
        )
    }

    /// A write answered with success or failure only.
    pub(super) fn done(op: Op) -> (Self, Outcome<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                op,
                reply: Reply::Done(tx),
                task: task::try_id(),
            },
            rx,
        )
    }

    /// Applies this request to the batch's transaction.
    pub(super) fn apply<'r>(
        &'r self,
        batch: &mut Batch<'_, 'r>,
    ) -> Result<Option<Appended>, JournalError> {
        match &self.op {
            Op::Append {
                stream,
                expected,
                events,
                recorded_at,
            } => batch
                .append(stream, *expected, events, *recorded_at)
                .map(Some),
            Op::PutSnapshot {
                plugin,
                stream,
                version,
                state,
            } => batch
                .put_snapshot(plugin, stream, *version, state)
                .map(|()| None),
            Op::PutCheckpoint {
                plugin,
                position,
                state,
                park,
                unpark,
            } => batch
                .put_checkpoint(plugin, *position, state)
                .and_then(|()| batch.park(plugin, park))
                .and_then(|()| batch.unpark(plugin, unpark))
                .map(|()| None),
            Op::DeletePluginData { plugin } => batch.delete_plugin_data(plugin).map(|()| None),
            Op::DeleteStream {
                stream,
                expected,
                hard,
            } => batch.delete_stream(stream, *expected, *hard).map(|()| None),
            Op::SetStreamMetadata { stream, metadata } => {
                batch.set_stream_metadata(stream, metadata).map(|()| None)
            }
            Op::Park { plugin, events } => batch.park(plugin, events).map(|()| None),
            Op::Unpark { plugin, positions } => batch.unpark(plugin, positions).map(|()| None),
        }
    }

    /// Answers the requester; one who stopped waiting is no error.
    pub(super) fn answer(self, outcome: Result<Option<Appended>, JournalError>) {
        match self.reply {
            Reply::Append(tx) => {
                let result = outcome.map(|appended| {
                    appended
                        .expect("an append reports where its events are")
                        .result()
                });
                let _ = tx.send(result);
            }
            Reply::Done(tx) => {
                let _ = tx.send(outcome.map(|_| ()));
            }
        }
    }

    /// How many events this request appends.
    pub(super) fn event_count(&self) -> u64 {
        match &self.op {
            Op::Append { events, .. } => events.len() as u64,
            _ => 0,
        }
    }
}
