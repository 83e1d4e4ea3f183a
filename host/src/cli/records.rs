//! Reading an export: one JSON object per event, each on a line of its own, except that an
//! event whose data or metadata holds line breaks between its tokens (stored as the client
//! sent them) spans as many lines.

use std::io::{self, BufRead, ErrorKind, Read};

/// Most bytes one event's text may take: no more is read for it (a line or an object whose
/// brackets never close is not read on to the end of the file), and it is refused.
const MAX_RECORD_BYTES: usize = 64 << 20;

/// An export's events, as text, one at a time.
pub(super) struct Records<R> {
    lines: R,
    /// Lines read so far.
    read: usize,
    /// Most bytes one event's text may take.
    max: usize,
}

/// Where an event's text was found.
#[derive(Debug)]
pub(super) struct Record {
    /// The line it starts on (from 1).
    pub line: usize,
    /// The bytes read for it, blank lines before it included.
    pub bytes: usize,
}

/// An event's text that could not be read: too large, not UTF-8, or the reading failed.
#[derive(Debug)]
pub(super) struct Unreadable {
    /// The line it starts on (from 1), or the line being read when none had started.
    pub line: usize,
    pub error: io::Error,
}

impl<R: BufRead> Records<R> {
    pub(super) fn new(lines: R) -> Self {
        Self {
            lines,
            read: 0,
            max: MAX_RECORD_BYTES,
        }
    }

    /// Reads the next event's text into `text` (cleared first); `None` at the end of input.
    /// Blank lines are skipped; a JSON object is read on while its brackets are open. A text
    /// longer than the limit (read no further) or not UTF-8 is refused, naming its line.
    pub(super) fn next(&mut self, text: &mut String) -> Result<Option<Record>, Unreadable> {
        let mut buffer = std::mem::take(text).into_bytes();
        buffer.clear();
        let (mut line, mut bytes, mut brackets) = (0, 0, Brackets::default());
        loop {
            let start = buffer.len();
            // A byte past the limit tells a text that runs past it from one that reaches it.
            let limit = (self.max + 1 - start) as u64;
            let read = match self
                .lines
                .by_ref()
                .take(limit)
                .read_until(b'\n', &mut buffer)
            {
                Ok(read) => read,
                Err(error) => {
                    let line = if line == 0 { self.read + 1 } else { line };
                    return Err(Unreadable { line, error });
                }
            };
            if read == 0 {
                break;
            }
            self.read += 1;
            bytes += read;
            if buffer.len() > self.max {
                let line = if line == 0 { self.read } else { line };
                let reason = format!(
                    "more than {} MiB of text for one event (does a bracket or string never \
                     close?)",
                    self.max >> 20
                );
                return Err(Unreadable::invalid(line, reason));
            }
            if line == 0 {
                if buffer.trim_ascii().is_empty() {
                    buffer.clear();
                    continue;
                }
                line = self.read;
            }
            brackets.feed(&buffer[start..]);
            if brackets.closed() {
                break;
            }
        }
        if line == 0 {
            return Ok(None);
        }
        *text = String::from_utf8(buffer).map_err(|error| {
            Unreadable::invalid(line, format!("not UTF-8 text: {}", error.utf8_error()))
        })?;
        Ok(Some(Record { line, bytes }))
    }
}

impl Unreadable {
    fn invalid(line: usize, reason: String) -> Self {
        let error = io::Error::new(ErrorKind::InvalidData, reason);
        Self { line, error }
    }
}

/// How deep a JSON text's brackets are open so far, strings' contents aside.
#[derive(Default)]
struct Brackets {
    open: usize,
    in_string: bool,
    escaped: bool,
}

impl Brackets {
    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.open += 1,
                b'}' | b']' => self.open = self.open.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// Whether every bracket opened so far is closed (and no string is).
    fn closed(&self) -> bool {
        self.open == 0 && !self.in_string
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &str) -> Vec<(usize, String)> {
        let mut records = Records::new(input.as_bytes());
        let mut text = String::new();
        let mut found = Vec::new();
        while let Some(record) = records.next(&mut text).unwrap() {
            found.push((record.line, text.clone()));
        }
        found
    }

    #[test]
    fn an_event_spans_the_lines_its_brackets_are_open_on() {
        let input = "{\"a\":1}\n\n{\"data\":{\n\"b\": [1,\r\n2]},\"s\":\"}{\\\"\"}\n{\"c\":3}\n";
        assert_eq!(
            read_all(input),
            [
                (1, "{\"a\":1}\n".to_owned()),
                (
                    3,
                    "{\"data\":{\n\"b\": [1,\r\n2]},\"s\":\"}{\\\"\"}\n".to_owned()
                ),
                (6, "{\"c\":3}\n".to_owned()),
            ]
        );
    }

    #[test]
    fn an_unclosed_event_ends_with_the_input_and_garbage_with_its_line() {
        assert_eq!(
            read_all("oops\n{\"a\":\n1\n"),
            [(1, "oops\n".to_owned()), (2, "{\"a\":\n1\n".to_owned())]
        );
    }

    #[test]
    fn a_text_past_the_limit_is_refused_having_read_little_more_than_the_limit() {
        // A gigabyte on one line: the limit is read of it (and what the buffer holds), no more.
        let total = 1 << 30;
        let mut records = Records {
            lines: io::BufReader::new(io::repeat(b'x').take(total)),
            read: 0,
            max: 1 << 20,
        };
        let error = records.next(&mut String::new()).unwrap_err();
        assert_eq!(error.line, 1);
        assert!(
            error.error.to_string().contains("more than 1 MiB"),
            "{error:?}"
        );
        let consumed = total - records.lines.get_ref().limit();
        assert!(consumed <= (1 << 20) + 1 + 8192, "read {consumed} bytes");
        // An object whose brackets never close, over many lines: refused at its first line.
        let input = "{}\n\n{\n".repeat(20);
        let mut records = Records {
            lines: input.as_bytes(),
            read: 0,
            max: 16,
        };
        let mut text = String::new();
        assert_eq!(records.next(&mut text).unwrap().unwrap().line, 1);
        assert_eq!(records.next(&mut text).unwrap_err().line, 3);
    }

    #[test]
    fn a_text_that_is_not_utf8_is_refused_at_its_line() {
        let mut records = Records::new(&b"{\"a\":1}\n\n{\"b\":\n\"caf\xe9\"}\n"[..]);
        let mut text = String::new();
        assert_eq!(records.next(&mut text).unwrap().unwrap().line, 1);
        let error = records.next(&mut text).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.error.to_string().contains("not UTF-8"), "{error:?}");
    }
}
