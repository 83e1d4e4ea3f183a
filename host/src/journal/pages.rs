//! Catching up page by page: the next page is read on a second thread while the current one
//! is folded, so a replay costs about the larger of reading and folding instead of their sum.

use std::sync::mpsc;

use super::{Journal, JournalError, ReadLimit, RecordedEvent};

/// Consecutive pages of the journal, read in order: the global log, or one stream's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// The global log from position `from` on.
    All {
        /// The first position.
        from: u64,
    },
    /// `stream`'s events from version `from` on, as many as versions `from..=to` number (a
    /// page never asks for more, as an aggregate catching up to version `to` never did).
    Stream {
        /// The stream.
        stream: String,
        /// The first version.
        from: u64,
        /// The version the pages end at.
        to: u64,
    },
}

impl Pages {
    /// Reads the next page, within `limit` (empty at the end), and moves past it.
    pub fn read(
        &mut self,
        journal: &Journal,
        limit: ReadLimit,
    ) -> Result<Vec<RecordedEvent>, JournalError> {
        match self {
            Pages::All { from } => {
                let page = journal.read_all_within(*from, limit)?;
                self.pass(&page);
                Ok(page)
            }
            Pages::Stream { stream, from, to } => {
                if *from > *to {
                    return Ok(Vec::new());
                }
                let limit = ReadLimit {
                    events: (*to - *from + 1).min(limit.events as u64) as usize,
                    ..limit
                };
                let page = journal.read_stream_within(stream, *from, limit)?;
                self.pass(&page);
                Ok(page)
            }
        }
    }

    /// Moves past `page`, the next page.
    fn pass(&mut self, page: &[RecordedEvent]) {
        match (self, page.last()) {
            (Pages::All { from }, Some(last)) => *from = last.position + 1,
            (Pages::Stream { from, .. }, Some(last)) => *from = last.version + 1,
            (_, None) => {}
        }
    }

    /// Whether nothing is left to read: a stream read through version `to`.
    fn exhausted(&self) -> bool {
        matches!(self, Pages::Stream { from, to, .. } if from > to)
    }

    /// Folds every page, in order, with `fold`, reading the next page on a second thread while
    /// `fold` works on the current one: at most two pages are held at once.
    ///
    /// Stops at the first error, of a read or of `fold`, where reading and folding one page
    /// after the other would: the pages before it folded, none after, and a failed read
    /// returned as it was. When this returns, the reading thread has ended. A catch-up whose
    /// first page is not full (most aggregates) or is its last reads on the calling thread
    /// and starts none.
    pub fn fold_ahead<E: From<JournalError>>(
        mut self,
        journal: &Journal,
        limit: ReadLimit,
        fold: impl FnMut(&[RecordedEvent]) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = self.read(journal, limit)?;
        self.fold_from(first, journal, limit, fold)
    }

    /// [`fold_ahead`](Self::fold_ahead) with the first page already read by a read that
    /// fetched something else with it (as [`Journal::stream_window_and_page`] does): `first`
    /// must be the page this would read first, from its start, within its end and `limit`.
    pub fn fold_ahead_from<E: From<JournalError>>(
        mut self,
        first: Vec<RecordedEvent>,
        journal: &Journal,
        limit: ReadLimit,
        fold: impl FnMut(&[RecordedEvent]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.pass(&first);
        self.fold_from(first, journal, limit, fold)
    }

    /// Folds `page`, the page just passed, and every one after it.
    fn fold_from<E: From<JournalError>>(
        mut self,
        mut page: Vec<RecordedEvent>,
        journal: &Journal,
        limit: ReadLimit,
        mut fold: impl FnMut(&[RecordedEvent]) -> Result<(), E>,
    ) -> Result<(), E> {
        if page.len() >= limit.events && !self.exhausted() {
            return ahead(|| self.read(journal, limit), page, fold);
        }
        while !page.is_empty() {
            fold(&page)?;
            page = self.read(journal, limit)?;
        }
        Ok(())
    }
}

/// Folds `first`, then each page `read` returns until an empty one or an error, with `read`
/// running on a second thread one page ahead of `fold`.
fn ahead<E: From<JournalError>>(
    mut read: impl FnMut() -> Result<Vec<RecordedEvent>, JournalError> + Send,
    first: Vec<RecordedEvent>,
    mut fold: impl FnMut(&[RecordedEvent]) -> Result<(), E>,
) -> Result<(), E> {
    let read = move || read().map(|page| (!page.is_empty()).then_some(page));
    read_ahead(read, first, |page| fold(&page))
}

/// Folds `first`, then each page `read` returns until `None` or an error, with `read` running
/// on a second thread one page ahead of `fold`: the hand-over of [`Pages::fold_ahead`], for
/// pages of any form (a projection's packed batches, see `runtime::projection`).
pub(crate) fn read_ahead<P: Send, E: From<JournalError>>(
    mut read: impl FnMut() -> Result<Option<P>, JournalError> + Send,
    first: P,
    mut fold: impl FnMut(P) -> Result<(), E>,
) -> Result<(), E> {
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        // A rendezvous: the reader hands a page over only when `fold` asks for the next, so it
        // holds one page while `fold` holds another.
        let (pages, next) = mpsc::sync_channel(0);
        scope.spawn(move || {
            let _span = span.enter();
            loop {
                let page = read();
                let end = !matches!(page, Ok(Some(_)));
                // Nobody asks any more once `fold` failed: stop.
                if pages.send(page).is_err() || end {
                    return;
                }
            }
        });
        fold(first)?;
        for page in next {
            let Some(page) = page? else {
                break;
            };
            fold(page)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn page(first: u64, len: u64) -> Vec<RecordedEvent> {
        (first..first + len)
            .map(|position| RecordedEvent {
                position,
                stream: "s-1".into(),
                version: position,
                id: uuid::Uuid::nil(),
                event_type: "E".into(),
                content_type: Default::default(),
                data: Default::default(),
                metadata: None,
                recorded_at: 0,
            })
            .collect()
    }

    /// Pages of 4 events up to position 4 × `pages`, then an injected error if `fail`.
    fn source(
        pages: u64,
        fail: bool,
        read: &AtomicUsize,
    ) -> impl FnMut() -> Result<Vec<RecordedEvent>, JournalError> + Send + '_ {
        let mut next = 5;
        move || {
            read.fetch_add(1, Ordering::SeqCst);
            if next > 4 * pages {
                return match fail {
                    true => Err(JournalError::Unavailable("injected".into())),
                    false => Ok(Vec::new()),
                };
            }
            next += 4;
            Ok(page(next - 4, 4))
        }
    }

    #[test]
    fn pages_are_folded_in_order_and_a_read_error_comes_after_the_pages_before_it() {
        for fail in [false, true] {
            let read = AtomicUsize::new(0);
            let mut folded = Vec::new();
            let outcome = ahead(source(5, fail, &read), page(1, 4), |page| {
                folded.extend(page.iter().map(|event| event.position));
                Ok::<_, JournalError>(())
            });
            assert_eq!(folded, (1..=20).collect::<Vec<_>>());
            assert_eq!(outcome.is_err(), fail, "{outcome:?}");
        }
    }

    #[test]
    fn the_reader_stays_one_page_ahead_and_stops_when_the_fold_fails() {
        let read = AtomicUsize::new(0);
        let mut folds = 0;
        let outcome = ahead(source(100, false, &read), page(1, 4), |_| {
            folds += 1;
            // Time for a reader that may run further ahead to do so.
            std::thread::sleep(Duration::from_millis(5));
            // The first page came from the caller: `read` made the ones folded since, plus the
            // one being read or handed over.
            assert!(
                read.load(Ordering::SeqCst) <= folds,
                "more than one page ahead"
            );
            match folds {
                10 => Err(JournalError::Unavailable("the fold failed".into())),
                _ => Ok(()),
            }
        });
        assert!(outcome.is_err());
        // The reader ended with the call (the scope joined it) and read nothing more.
        assert!(read.load(Ordering::SeqCst) <= 10);
    }
}
