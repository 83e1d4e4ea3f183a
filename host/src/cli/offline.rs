//! Offline subcommands: work directly on a data directory's journal, without a server
//! (and not while one runs on it: the journal file is opened exclusively).

use std::collections::VecDeque;
use std::fmt::Display;
use std::fs::File;
use std::future::Future;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::client::print_line;
use super::import_check::ImportCheck;
use super::records::{Record, Records, Unreadable};
use crate::durable;
use crate::journal::{
    ExpectedVersion, ImportSequence, Journal, JournalConfig, JournalError, NewEvent,
};
use crate::runtime::{
    AggregateInstance, Limits, Plugin, PluginEngine, PluginKind, ProjectionInstance, REPLAY_LIMIT,
    Upcaster, UpcasterChain, diff_versions, stream_name,
};
use crate::server::json::EventJson;
use crate::server::{COMPILE_CACHE, JOURNAL_FILE};

/// The data directory an offline subcommand works on.
#[derive(Debug, Args)]
pub struct DataDir {
    /// Data directory of the journal (must not be in use by a running server).
    #[arg(long, env = "FOLDHOST_DATA", default_value = "./foldhost-data", value_parser = super::parse_data_dir)]
    data: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The plugin component to run.
    #[arg(long, value_name = "FILE")]
    plugin: PathBuf,
    /// For an aggregate plugin: the id of the aggregate to fold (its stream is PLUGIN-ID).
    /// A projection folds the whole global log.
    #[arg(long, value_name = "ID")]
    stream: Option<String>,
    #[command(flatten)]
    upcasters: UpcasterFiles,
    #[command(flatten)]
    data: DataDir,
}

/// Upcasters to feed the events through, as the server does with the ones it has loaded.
#[derive(Debug, Args)]
pub struct UpcasterFiles {
    /// An upcaster component (repeatable); they run in the order of their names.
    #[arg(long = "upcaster", value_name = "FILE")]
    files: Vec<PathBuf>,
}

impl UpcasterFiles {
    fn load(&self, engine: &PluginEngine) -> anyhow::Result<Arc<UpcasterChain>> {
        let upcasters = self
            .files
            .iter()
            .map(|path| {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let plugin = Plugin::load(engine, &bytes, &path.display().to_string())?;
                Ok(Upcaster::new(plugin)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(UpcasterChain::new(upcasters))
    }
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The build in service.
    old: PathBuf,
    /// The candidate build of the same plugin.
    new: PathBuf,
    /// How many differing streams to show.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    #[command(flatten)]
    upcasters: UpcasterFiles,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write the NDJSON (default: stdout).
    file: Option<PathBuf>,
    #[command(flatten)]
    data: DataDir,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An NDJSON export (`foldhost export`): one event per line (more if its data holds line
    /// breaks), in global-log order.
    file: PathBuf,
    /// Check the events of each aggregate's streams with the aggregates (`*.wasm`) in this
    /// directory, as the server does: the import stops at the first event an aggregate cannot
    /// fold (the events before it are imported). Without it nothing is checked.
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    #[command(flatten)]
    data: DataDir,
}

impl DataDir {
    /// An engine sharing the server's cache of compiled plugins in this data directory,
    /// so a plugin the server already compiled loads in milliseconds.
    fn engine(&self) -> anyhow::Result<PluginEngine> {
        PluginEngine::new(Limits::default(), Some(self.data.join(COMPILE_CACHE)))
    }

    /// Opens the journal of an existing data directory to read it (see [`open_to_read`]).
    fn open_existing(&self) -> anyhow::Result<Journal> {
        open_to_read(&self.data.join(JOURNAL_FILE))
    }
}

/// Opens (or creates) the journal file at `path` to write to it, migrating an older format.
fn open(path: &Path) -> anyhow::Result<Journal> {
    opened(path, Journal::open(path, JournalConfig::default()))
}

/// Opens the existing journal file at `path` for a command that only reads it: a file of an
/// older storage format is refused and left as it is, not migrated (which would keep the older
/// build from opening it again).
pub(super) fn open_to_read(path: &Path) -> anyhow::Result<Journal> {
    if !path.exists() {
        bail!("no journal at {}", path.display());
    }
    opened(
        path,
        Journal::open_without_migrating(path, JournalConfig::default()),
    )
}

fn opened(path: &Path, opened: Result<Journal, JournalError>) -> anyhow::Result<Journal> {
    opened.map_err(|error| {
        let hint = match error {
            JournalError::Unsupported(_) | JournalError::UnsupportedFormat { .. } => "",
            _ => " (is a server running on it?)",
        };
        anyhow::Error::new(error).context(format!("opening the journal {}{hint}", path.display()))
    })
}

fn progress(len: u64, unit: &str) -> ProgressBar {
    let template =
        format!("{{bar:40}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, {{eta}} left)");
    ProgressBar::new(len)
        .with_style(ProgressStyle::with_template(&template).expect("a valid progress template"))
}

/// `replay`: folds the journal with a plugin from scratch and prints the state it reaches.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let journal = args.data.open_existing()?;
        let bytes = std::fs::read(&args.plugin)
            .with_context(|| format!("reading {}", args.plugin.display()))?;
        let engine = args.data.engine()?;
        let plugin = Plugin::load(&engine, &bytes, &args.plugin.display().to_string())?;
        let upcasters = args.upcasters.load(&engine)?.for_plugin(&plugin);
        let state = match (plugin.kind(), args.stream) {
            (PluginKind::Upcaster, _) => {
                bail!(
                    "{} is an upcaster: it folds nothing; pass it with --upcaster",
                    plugin.name()
                )
            }
            (PluginKind::Projection, None) => replay_projection(plugin, upcasters, &journal)?,
            (PluginKind::Projection, Some(_)) => {
                bail!(
                    "{} is a projection: it folds the global log, drop --stream",
                    plugin.name()
                )
            }
            (PluginKind::Aggregate, Some(id)) => {
                replay_aggregate(plugin, upcasters, &journal, &id)?
            }
            (PluginKind::Aggregate, None) => {
                bail!(
                    "{} is an aggregate: name the aggregate with --stream ID",
                    plugin.name()
                )
            }
        };
        print_line(serde_json::to_string_pretty(&state)?)?;
        Ok(())
    })
    .await?
}

fn replay_projection(
    plugin: Arc<Plugin>,
    upcasters: Arc<UpcasterChain>,
    journal: &Journal,
) -> anyhow::Result<serde_json::Value> {
    let bar = progress(journal.head_position(), "events");
    let mut projection = ProjectionInstance::through(plugin, upcasters, None)?;
    projection.catch_up_reporting(journal, |position| bar.set_position(position))?;
    bar.finish_and_clear();
    Ok(projection.state()?)
}

fn replay_aggregate(
    plugin: Arc<Plugin>,
    upcasters: Arc<UpcasterChain>,
    journal: &Journal,
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    let stream = stream_name(plugin.name(), id);
    let Some(head) = journal.stream_version(&stream)? else {
        bail!("stream {stream:?} has no events");
    };
    let bar = progress(head, "events");
    let mut aggregate = AggregateInstance::through(plugin, upcasters, &stream, None)?;
    while aggregate.version < head {
        let before = aggregate.version;
        aggregate.catch_up(journal, before + REPLAY_LIMIT.events as u64)?;
        if aggregate.version == before {
            break;
        }
        bar.set_position(aggregate.version);
    }
    bar.finish_and_clear();
    Ok(aggregate.state()?)
}

/// `plugins diff`: replays history through two builds of a plugin and prints a report of
/// the streams whose final state differs; fails when any does.
pub async fn diff(args: DiffArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let journal = args.data.open_existing()?;
        let engine = args.data.engine()?;
        let load = |path: &Path| -> anyhow::Result<Arc<Plugin>> {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Plugin::load(&engine, &bytes, &path.display().to_string())?)
        };
        let (old, new) = (load(&args.old)?, load(&args.new)?);
        let upcasters = args.upcasters.load(&engine)?;
        let bar = progress(0, "streams");
        let report = diff_versions(
            &journal,
            &upcasters,
            &old,
            &new,
            args.samples,
            |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        print_line(serde_json::to_string_pretty(&report)?)?;
        if report.differing > 0 {
            bail!(
                "{} of {} streams of {} end in a different state, or do not fold",
                report.differing,
                report.compared,
                report.plugin
            );
        }
        eprintln!(
            "all {} streams of {} end in the same state",
            report.compared, report.plugin
        );
        Ok(())
    })
    .await?
}

/// `export`: the global log as NDJSON, one [`EventJson`] per line (or more, where data is
/// stored with line breaks between its tokens; see `records`). A file is replaced
/// atomically once complete and synced, so a crash never leaves half an export under its name.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        if let Some(path) = &args.file {
            refuse_journal_as_output(path, &args.data.data.join(JOURNAL_FILE))?;
        }
        let journal = args.data.open_existing()?;
        match &args.file {
            Some(path) => durable::replace_with(path, |file| write_log(&journal, file))
                .with_context(|| format!("writing {}", path.display())),
            None => write_log(&journal, &mut std::io::stdout().lock()),
        }
    })
    .await?
}

/// The first bytes of a redb file (redb's `MAGICNUMBER`).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Refuses to export onto `journal` (the one exported, however the path names it) or onto any
/// other redb journal: the export replaces its output, so the journal would be lost.
fn refuse_journal_as_output(output: &Path, journal: &Path) -> anyhow::Result<()> {
    let same = match (output.canonicalize(), journal.canonicalize()) {
        (Ok(output), Ok(journal)) => output == journal,
        _ => false,
    };
    if same {
        bail!(
            "refusing to export into {}: it is the journal being exported (name another file, \
             or leave it out to write to stdout)",
            output.display()
        );
    }
    let mut head = [0; REDB_MAGIC.len()];
    let is_redb = File::open(output)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
        .is_ok_and(|()| head == REDB_MAGIC);
    if is_redb {
        bail!(
            "refusing to export into {}: it is a redb journal, which the export would replace",
            output.display()
        );
    }
    Ok(())
}

fn write_log(journal: &Journal, out: &mut impl Write) -> anyhow::Result<()> {
    let mut out = BufWriter::new(out);
    let bar = progress(journal.head_position(), "events");
    let mut next = 1;
    loop {
        let events = journal.read_all_within(next, REPLAY_LIMIT)?;
        let Some(last) = events.last() else {
            break;
        };
        next = last.position + 1;
        for event in events {
            serde_json::to_writer(&mut out, &EventJson::from(event))?;
            out.write_all(b"\n")?;
        }
        bar.set_position(next - 1);
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

/// Most events in one append of an import.
const IMPORT_BATCH: usize = 1_000;
/// Appends an import keeps queued at once, so the journal can group them into few commits.
const IMPORT_WINDOW: usize = 256;

type PendingAppend = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

/// `import`: appends an export's events in order, consecutive events of one stream and one
/// time together (`ExpectedVersion::Any`), keeping their ids, types, data bytes, metadata
/// and `recorded_at`. Events whose ids
/// are stored already in their stream are skipped, so importing a file again (or after an
/// import stopped half way) writes only what is missing; an id stored in another stream stops
/// the import with an error.
///
/// The import stops at the first line it cannot store, whether refused before it is queued
/// (unreadable, too large, an id in use, an event the aggregates cannot fold) or by the
/// journal's writer: the error names that line and says how many events, of the lines before
/// it, are stored. Nothing of the lines after it is: the appends are queued as one
/// [`ImportSequence`], which the journal stops at its first failure.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    // The input and the plugins first: a wrong name creates no data directory and migrates
    // no journal.
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let bar = progress(file.metadata()?.len(), "bytes");
    let mut records = Records::new(BufReader::new(file));
    let mut check = args.plugins.as_deref().map(ImportCheck::load).transpose()?;
    durable::create_dir_all(&args.data.data)
        .with_context(|| format!("creating {}", args.data.data.display()))?;
    let journal = open(&args.data.data.join(JOURNAL_FILE))?;
    let mut importer = Importer {
        journal: journal.clone(),
        sequence: ImportSequence::new(),
        batch: None,
        in_flight: VecDeque::new(),
        stored: 0,
    };
    let failed = |failed: Failed| failed.report(&args.file);
    let mut line = String::new();
    loop {
        let Record {
            line: number,
            bytes,
        } = match records.next(&mut line) {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(Unreadable { line, error }) => {
                return Err(importer.refuse(&args.file, line, error).await);
            }
        };
        bar.inc(bytes as u64);
        let parsed = serde_json::from_str::<EventJson>(&line)
            .map_err(|error| error.to_string())
            .and_then(|event| {
                let new = event.to_new_event()?;
                journal
                    .check_append(&event.stream, std::slice::from_ref(&new))
                    .map_err(|error| error.to_string())?;
                Ok((event.stream, event.recorded_at, new))
            });
        let (stream, recorded_at, event) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Err(importer.refuse(&args.file, number, error).await),
        };
        // Already imported (a repeated or resumed import): skipped by its id. An id stored in
        // another stream belongs to another event: refused, not silently left out.
        let stored = match journal.event_by_id(event.id) {
            Ok(stored) => stored,
            Err(error) => return Err(importer.refuse(&args.file, number, error).await),
        };
        if let Some(stored) = stored {
            if *stored.stream == *stream {
                continue;
            }
            let reason = format!(
                "event id {} is already used by the event at position {} in stream {:?}",
                event.id, stored.position, &*stored.stream
            );
            return Err(importer.refuse(&args.file, number, reason).await);
        }
        if let Some(check) = check.as_mut().filter(|check| check.owns(&stream)) {
            if !check.has_state(&stream) {
                // Its state is rebuilt from the journal: store what came before first.
                importer.settle().await.map_err(failed)?;
            }
            if let Err(error) = check.check(&journal, &stream, &event) {
                let reason = format!("{error:#}");
                return Err(importer.refuse(&args.file, number, reason).await);
            }
        }
        importer
            .add(stream, recorded_at, event, number)
            .await
            .map_err(failed)?;
    }
    let events = importer.finish().await.map_err(failed)?;
    bar.finish_and_clear();
    eprintln!("imported {events} events into {}", args.data.data.display());
    Ok(())
}

struct Importer {
    journal: Journal,
    /// Every append of the import, so that none after a failed one is stored.
    sequence: ImportSequence,
    batch: Option<Batch>,
    /// Queued appends, oldest first, not known to be stored yet.
    in_flight: VecDeque<Queued>,
    /// Events stored so far.
    stored: u64,
}

/// Consecutive events of one stream recorded at one time (as one append wrote them), and the
/// lines they were read from.
struct Batch {
    stream: String,
    recorded_at: u64,
    events: Vec<NewEvent>,
    lines: Vec<usize>,
    /// The events' sizes summed, as the journal's `max_append_bytes` counts them.
    bytes: usize,
}

/// A queued append, with the id and line of each of its events.
struct Queued {
    events: Vec<(Uuid, usize)>,
    append: PendingAppend,
}

/// The first append of an import that was not stored.
struct Failed {
    /// The line of the event the error is about (the append's first, unless it names another).
    line: usize,
    /// The line of the append's first event: nothing from there on is stored.
    first_line: usize,
    error: JournalError,
    /// Events stored before it.
    stored: u64,
}

impl Failed {
    fn new(events: &[(Uuid, usize)], error: JournalError, stored: u64) -> Self {
        let first_line = events.first().map_or(0, |&(_, line)| line);
        // Of an id used twice in the append, its second use.
        let line = match &error {
            JournalError::DuplicateEventId { id, .. } => events
                .iter()
                .rfind(|(event, _)| event == id)
                .map_or(first_line, |&(_, line)| line),
            _ => first_line,
        };
        Self {
            line,
            first_line,
            error,
            stored,
        }
    }

    fn report(self, file: &Path) -> anyhow::Error {
        let Self {
            line,
            first_line,
            error,
            stored,
        } = self;
        let before = if first_line == line {
            "it".to_owned()
        } else {
            format!("line {first_line} (lines {first_line} to {line} were one append)")
        };
        anyhow::anyhow!(
            "{} line {line}: {error}; the {stored} events before {before} are imported \
             (importing again skips them)",
            file.display()
        )
    }
}

impl Importer {
    async fn add(
        &mut self,
        stream: String,
        recorded_at: u64,
        event: NewEvent,
        line: usize,
    ) -> Result<(), Failed> {
        // Each line passed the journal's checks alone; a batch stays within its append limit.
        let max_bytes = self.journal.config().max_append_bytes;
        let bytes = event.size();
        match &mut self.batch {
            Some(batch)
                if batch.stream == stream
                    && batch.recorded_at == recorded_at
                    && batch.events.len() < IMPORT_BATCH
                    && batch.bytes + bytes <= max_bytes =>
            {
                batch.events.push(event);
                batch.lines.push(line);
                batch.bytes += bytes;
            }
            _ => {
                self.flush().await?;
                self.batch = Some(Batch {
                    stream,
                    recorded_at,
                    events: vec![event],
                    lines: vec![line],
                    bytes,
                });
            }
        }
        Ok(())
    }

    /// Queues the current batch. The journal takes an append into its queue on the
    /// future's first poll, so polling each once as it is made keeps the import's order.
    async fn flush(&mut self) -> Result<(), Failed> {
        let Some(Batch {
            stream,
            recorded_at,
            events: batch,
            lines,
            ..
        }) = self.batch.take()
        else {
            return Ok(());
        };
        let events: Vec<(Uuid, usize)> = batch.iter().map(|event| event.id).zip(lines).collect();
        let (journal, sequence) = (self.journal.clone(), self.sequence.clone());
        let mut append: PendingAppend = Box::pin(async move {
            journal
                .import_in(&sequence, &stream, ExpectedVersion::Any, batch, recorded_at)
                .await
        });
        match std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await {
            Poll::Ready(Ok(())) => self.stored += events.len() as u64,
            Poll::Ready(Err(error)) => {
                // An append queued before it may have failed too: that one comes first.
                self.settle_queued().await?;
                return Err(Failed::new(&events, error, self.stored));
            }
            Poll::Pending => self.in_flight.push_back(Queued { events, append }),
        }
        while self.in_flight.len() >= IMPORT_WINDOW {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), Failed> {
        if let Some(Queued { events, append }) = self.in_flight.pop_front() {
            match append.await {
                Ok(()) => self.stored += events.len() as u64,
                Err(error) => return Err(Failed::new(&events, error, self.stored)),
            }
        }
        Ok(())
    }

    /// Waits until every queued append is stored.
    async fn settle_queued(&mut self) -> Result<(), Failed> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Queues the current batch and waits until every append is stored.
    async fn settle(&mut self) -> Result<(), Failed> {
        self.flush().await?;
        self.settle_queued().await
    }

    /// Queues the last batch, waits for every append, and returns how many events it stored.
    async fn finish(mut self) -> Result<u64, Failed> {
        self.settle().await?;
        Ok(self.stored)
    }

    /// Stops the import at `line` of `file`, refused for `reason` before it was queued, once
    /// the appends before it are stored: the error says how many events are, or reports the
    /// earlier failure of one of them instead.
    async fn refuse(self, file: &Path, line: usize, reason: impl Display) -> anyhow::Error {
        match self.finish().await {
            Ok(stored) => anyhow::anyhow!(
                "{} line {line}: {reason}; the {stored} events before it are imported \
                 (importing again skips them)",
                file.display()
            ),
            Err(failed) => failed.report(file),
        }
    }
}
