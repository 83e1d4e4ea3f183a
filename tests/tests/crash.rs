//! Acknowledged appends survive SIGKILL.
//!
//! A child process (`crash-appender`) appends from 32 tasks and prints every acknowledged
//! append; it is killed at a random moment (every other run at a random moment after its first
//! acknowledgement, so a slow start on a busy machine cannot leave the kills testing nothing),
//! again and again on the same journal file. Then the
//! journal must hold every acknowledged event exactly once, a gapless global log, gapless
//! streams that agree with their index, and only decodable records.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use foldhost::journal::{
    AppendResult, ContentType, ExpectedVersion, Journal, JournalConfig, NewEvent, RecordedEvent,
};
use uuid::Uuid;

const KILLS: usize = 24;
const PAGE: usize = 500;

/// One acknowledged append, as printed by the child.
struct Ack {
    stream: String,
    first_version: u64,
    first_position: u64,
    ids: Vec<Uuid>,
}

impl Ack {
    fn parse(line: &str) -> Ack {
        let fields: Vec<&str> = line.split(' ').collect();
        let [stream, version, position, ids] = fields[..] else {
            panic!("malformed ack line {line:?}");
        };
        Ack {
            stream: stream.to_owned(),
            first_version: version.parse().unwrap(),
            first_position: position.parse().unwrap(),
            ids: ids.split(',').map(|id| id.parse().unwrap()).collect(),
        }
    }

    fn result(&self) -> AppendResult {
        let last = self.ids.len() as u64 - 1;
        AppendResult {
            first_version: self.first_version,
            last_version: self.first_version + last,
            first_position: self.first_position,
            last_position: self.first_position + last,
        }
    }
}

/// A random kill delay of 20–300 ms (a v4 UUID is random enough).
fn random_delay() -> Duration {
    Duration::from_millis(20 + (Uuid::new_v4().as_u128() % 281) as u64)
}

/// When a run's SIGKILL comes.
#[derive(Clone, Copy)]
enum Kill {
    /// A random delay after the start: it may land while the journal opens or repairs.
    AfterStart,
    /// A random delay after the first acknowledgement: it lands while appends are under way.
    AfterFirstAck,
}

/// How long a child may take to acknowledge its first append (it gives up by itself at 20 s).
const FIRST_ACK_WITHIN: Duration = Duration::from_secs(20);

/// Runs the child until `delay` has passed (counted as `kill` says), SIGKILLs it and returns
/// its complete ack lines.
fn run_and_kill(path: &Path, kill: Kill, delay: Duration) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-appender"))
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crash-appender");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let (first_ack, acked) = mpsc::channel();
    let out = thread::spawn(move || {
        let mut text = String::new();
        while stdout.read_line(&mut text).unwrap() > 0 {
            let _ = first_ack.send(());
        }
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    if let Kill::AfterFirstAck = kill {
        acked
            .recv_timeout(FIRST_ACK_WITHIN)
            .expect("crash-appender acknowledged nothing");
    }
    thread::sleep(delay);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(
        status.signal(),
        Some(9),
        "crash-appender ended by itself ({status}) before the kill:\n{err}"
    );
    // A line cut short by the kill has no newline and was never acknowledged to anyone.
    let complete = out.rfind('\n').map_or("", |end| &out[..end]);
    complete.lines().map(Ack::parse).collect()
}

fn read_whole_log(journal: &Journal) -> Vec<RecordedEvent> {
    let mut log = Vec::new();
    loop {
        let page = journal
            .read_all(log.len() as u64 + 1, PAGE)
            .expect("read the global log");
        if page.is_empty() {
            return log;
        }
        log.extend(page);
    }
}

fn read_whole_stream(journal: &Journal, stream: &str) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let page = journal
            .read_stream(stream, events.len() as u64 + 1, PAGE)
            .expect("read a stream");
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let mut acks = Vec::new();
    for run in 0..KILLS {
        let kill = [Kill::AfterStart, Kill::AfterFirstAck][run % 2];
        acks.extend(run_and_kill(&path, kill, random_delay()));
    }

    let journal = Journal::open(&path, JournalConfig::default()).expect("reopen after the kills");
    let log = read_whole_log(&journal);
    for (event, position) in log.iter().zip(1..) {
        assert_eq!(event.position, position, "the global log has a gap");
    }
    assert_eq!(journal.head_position(), log.len() as u64);
    let mut ids = HashSet::new();
    assert!(
        log.iter().all(|event| ids.insert(event.id)),
        "an event id occurs twice"
    );

    // Every acknowledged event is where its acknowledgement said.
    for ack in &acks {
        for ((id, position), version) in ack
            .ids
            .iter()
            .zip(ack.first_position..)
            .zip(ack.first_version..)
        {
            let event = log
                .get(position as usize - 1)
                .unwrap_or_else(|| panic!("acknowledged event {id} at {position} is missing"));
            assert_eq!(
                (&event.id, &*event.stream, event.version),
                (id, ack.stream.as_str(), version),
                "position {position}"
            );
        }
    }

    // Streams are gapless, agree with the global log and account for all of it.
    let mut in_streams = 0;
    for stream in journal.streams_with_prefix("").unwrap() {
        let events = read_whole_stream(&journal, &stream);
        assert_eq!(
            journal.stream_version(&stream).unwrap(),
            Some(events.len() as u64)
        );
        for (event, version) in events.iter().zip(1..) {
            assert_eq!(event.version, version, "stream {stream} has a gap");
            assert_eq!(event, &log[event.position as usize - 1]);
        }
        in_streams += events.len();
    }
    assert_eq!(
        in_streams,
        log.len(),
        "every event belongs to exactly one stream"
    );

    // The event-id index survived too: every acknowledged append is recognised as a retry.
    let stats = journal.stats();
    let mut per_stream: HashMap<&str, usize> = HashMap::new();
    for ack in &acks {
        let events = ack
            .ids
            .iter()
            .map(|&id| NewEvent {
                id,
                event_type: "Retried".to_owned(),
                content_type: ContentType::Binary,
                data: Vec::new(),
                metadata: None,
            })
            .collect();
        let retried = journal.append_blocking(&ack.stream, ExpectedVersion::NoStream, events);
        assert_eq!(retried.unwrap(), ack.result());
        *per_stream.entry(&ack.stream).or_default() += ack.ids.len();
    }
    assert_eq!(journal.stats(), stats, "retries wrote nothing");
    eprintln!(
        "{} kills, {} acknowledged appends ({} events) in {} streams, {} events in the log",
        KILLS,
        acks.len(),
        per_stream.values().sum::<usize>(),
        per_stream.len(),
        log.len()
    );
}
