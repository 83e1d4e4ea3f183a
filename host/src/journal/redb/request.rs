//! Requests to the writer thread: one write each, with the channel its outcome goes to; and
//! the answers of a committed batch.

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;
use tokio::task;

use super::batch::{Appended, Batch};
use super::{AppendResult, ExpectedVersion, ImportSequence, JournalError, NewEvent, Op};

/// A write, with the channel its outcome goes to.
pub(super) struct Request {
    op: Op,
    reply: Reply,
    /// The async task that made it, if one did.
    pub(super) task: Option<task::Id>,
    /// The multi-threaded runtime of the task awaiting it, if one does (see [`awaited`](Self::awaited)).
    pub(super) runtime: Option<Handle>,
    /// The import sequence it belongs to and its place there, if it is one's append.
    sequence: Option<(ImportSequence, u64)>,
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
        (Self::new(op, Reply::Append(tx)), rx)
    }

    /// A write answered with success or failure only.
    pub(super) fn done(op: Op) -> (Self, Outcome<()>) {
        let (tx, rx) = oneshot::channel();
        (Self::new(op, Reply::Done(tx)), rx)
    }

    fn new(op: Op, reply: Reply) -> Self {
        Self {
            op,
            reply,
            task: task::try_id(),
            runtime: None,
            sequence: None,
        }
    }

    /// Makes this request the append at `place` of `sequence`.
    pub(super) fn in_sequence(mut self, (sequence, place): (ImportSequence, u64)) -> Self {
        self.sequence = Some((sequence, place));
        self
    }

    /// Marks this request as awaited by its task: if that runs on a multi-threaded runtime,
    /// the answer is sent from there (see [`Answers`]).
    pub(super) fn awaited(mut self) -> Self {
        self.runtime = self
            .task
            .and_then(|_| Handle::try_current().ok())
            .filter(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        self
    }

    /// Applies this request to the batch's transaction; an append of an import sequence only
    /// if none queued before it failed, and its own failure stops the sequence.
    pub(super) fn apply<'r>(
        &'r self,
        batch: &mut Batch<'_, 'r>,
    ) -> Result<Option<Appended>, JournalError> {
        let Some((sequence, place)) = &self.sequence else {
            return self.apply_op(batch);
        };
        if sequence.failed_before(*place) {
            return Err(JournalError::SequenceStopped);
        }
        let outcome = self.apply_op(batch);
        if outcome.is_err() {
            sequence.fail(*place);
        }
        outcome
    }

    fn apply_op<'r>(&'r self, batch: &mut Batch<'_, 'r>) -> Result<Option<Appended>, JournalError> {
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

/// The outcomes of a committed batch, each for its request (`outcomes[i]` for
/// `requests[i]`). Whatever is not sent otherwise is sent when this is dropped, on the thread
/// that drops it.
#[derive(Default)]
pub(super) struct Answers {
    requests: Vec<Request>,
    outcomes: Vec<Result<Option<Appended>, JournalError>>,
}

impl Answers {
    pub(super) fn new(
        requests: Vec<Request>,
        outcomes: impl IntoIterator<Item = Result<Option<Appended>, JournalError>>,
    ) -> Self {
        let outcomes = outcomes.into_iter().take(requests.len()).collect();
        Self { requests, outcomes }
    }

    /// Sends every answer on this thread.
    pub(super) fn send(self) {
        drop(self);
    }

    /// Sends the answers to tasks on multi-threaded runtimes from a task spawned on their
    /// runtime (one per runtime), and the others on this thread.
    ///
    /// Waking a task from outside its runtime queues it there and may wake a worker thread,
    /// each time: this wakes each runtime once, whose worker then wakes the waiting tasks as
    /// its own (and drops the requests, off this thread). A runtime that shut down meanwhile
    /// drops the spawned task and with it these answers, which sends them.
    pub(super) fn send_from_runtimes(mut self) {
        while let Some(runtime) = self
            .requests
            .iter()
            .find_map(|request| request.runtime.clone())
        {
            let id = runtime.id();
            let theirs = |request: &Request| request.runtime.as_ref().is_some_and(|r| r.id() == id);
            // Usually every request is awaited on the one runtime: the batch goes as it is.
            let theirs = if self.requests.iter().all(theirs) {
                std::mem::take(&mut self)
            } else {
                self.split_off(theirs)
            };
            drop(runtime.spawn(async move { theirs.send() }));
        }
    }

    /// Takes out the answers whose requests `theirs` picks, keeping the others in order.
    fn split_off(&mut self, theirs: impl Fn(&Request) -> bool) -> Self {
        let (mut kept, mut taken) = (Self::default(), Self::default());
        let answers = self.requests.drain(..).zip(self.outcomes.drain(..));
        for (request, outcome) in answers {
            let to = if theirs(&request) {
                &mut taken
            } else {
                &mut kept
            };
            to.requests.push(request);
            to.outcomes.push(outcome);
        }
        *self = kept;
        taken
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        let answers = self.requests.drain(..).zip(self.outcomes.drain(..));
        for (request, outcome) in answers {
            request.answer(outcome);
        }
    }
}
