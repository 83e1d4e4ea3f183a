//! Reading an export: one JSON object per event, each on a line of its own, except that an
//! event whose data or metadata holds line breaks between its tokens (stored as the client
//! sent them) spans as many lines.

use std::io::{self, BufRead};

/// Most bytes one event's text may take: past it, what was read is handed on as it is (and
/// fails to parse) rather than read on to the end of a file whose brackets never close.
const MAX_RECORD_BYTES: usize = 64 << 20;

/// An export's events, as text, one at a time.
pub(super) struct Records<R> {
    lines: R,
    /// Lines read so far.
    read: usize,
}

/// Where an event's text was found.
pub(super) struct Record {
    /// The line it starts on (from 1).
    pub line: usize,
    /// The bytes read for it, blank lines before it included.
    pub bytes: usize,
}

impl<R: BufRead> Records<R> {
    pub(super) fn new(lines: R) -> Self {
        Self { lines, read: 0 }
    }

    /// Reads the next event's text into `text` (cleared first); `None` at the end of input.
    /// Blank lines are skipped; a JSON object is read on while its brackets are open.
    pub(super) fn next(&mut self, text: &mut String) -> io::Result<Option<Record>> {
        text.clear();
        let (mut line, mut bytes, mut brackets) = (0, 0, Brackets::default());
        loop {
            let start = text.len();
            let read = self.lines.read_line(text)?;
            if read == 0 {
                return Ok((line != 0).then_some(Record { line, bytes }));
            }
            self.read += 1;
            bytes += read;
            if line == 0 {
                if text.trim().is_empty() {
                    text.clear();
                    continue;
                }
                line = self.read;
            }
            brackets.feed(&text.as_bytes()[start..]);
            if brackets.closed() || text.len() > MAX_RECORD_BYTES {
                return Ok(Some(Record { line, bytes }));
            }
        }
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
}
