//! Child process of the crash test: appends to a journal from many tasks until it is killed.
//!
//! Usage: `crash-appender <journal file>`. Every acknowledged append is printed (and flushed)
//! as one line, `<stream> <first_version> <first_position> <id>,<id>,...`, so the test knows
//! exactly which appends the journal promised to keep when the SIGKILL arrived.

use std::io::Write;
use std::time::{Duration, Instant};

use foldhost::journal::{
    ContentType, ExpectedVersion, Journal, JournalConfig, JournalError, NewEvent,
};
use uuid::Uuid;

const APPENDERS: usize = 32;
const STREAMS: u128 = 8;
/// A child the test forgot to kill stops by itself.
const GIVE_UP_AFTER: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: crash-appender <journal file>");
    let journal = Journal::open(&path, JournalConfig::default()).expect("open the journal");
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|task| tokio::spawn(append_until(journal.clone(), task, deadline)))
        .collect();
    for task in tasks {
        task.await.expect("appender task");
    }
}

async fn append_until(journal: Journal, task: usize, deadline: Instant) {
    for n in 0.. {
        if Instant::now() > deadline {
            return;
        }
        // A v4 UUID is a handy source of random bits.
        let dice = Uuid::new_v4().as_u128();
        let stream = format!("crash-{}", dice % STREAMS);
        let count = if (dice >> 8) & 1 == 0 {
            1
        } else {
            2 + (dice >> 16) % 4
        } as usize;
        let events: Vec<NewEvent> = (0..count)
            .map(|i| NewEvent {
                id: Uuid::new_v4(),
                event_type: "Appended".to_owned(),
                content_type: ContentType::Binary,
                data: format!("task {task} append {n} event {i}").into_bytes(),
                metadata: None,
            })
            .collect();
        let expected = if (dice >> 24) & 3 == 0 {
            match journal
                .stream_version(&stream)
                .expect("read the stream version")
            {
                Some(version) => ExpectedVersion::Exact(version),
                None => ExpectedVersion::NoStream,
            }
        } else {
            ExpectedVersion::Any
        };
        let ids: Vec<String> = events.iter().map(|event| event.id.to_string()).collect();
        match journal.append(&stream, expected, events).await {
            Ok(result) => {
                let line = format!(
                    "{stream} {} {} {}\n",
                    result.first_version,
                    result.first_position,
                    ids.join(",")
                );
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(line.as_bytes()).expect("write an ack");
                stdout.flush().expect("flush an ack");
            }
            // Another task appended since the version was read: expected, not acknowledged.
            Err(JournalError::Conflict { .. }) => {}
            Err(error) => panic!("append failed: {error}"),
        }
    }
}
