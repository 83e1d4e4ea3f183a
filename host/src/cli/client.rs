//! Client subcommands: talk to a running server over its HTTP API.

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use reqwest::{Client, Method, RequestBuilder, Url};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::token::{AdminToken, LeadingAdminToken};
use crate::runtime::{FailurePolicy, Limits, Plugin, PluginEngine};

/// Where the server is.
#[derive(Debug, Args)]
pub struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "FOLDHOST_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    url: Url,
}

/// The options of a subcommand that talks to a server: where it is, and the admin token for
/// its admin endpoints.
#[derive(Debug, Args)]
struct Connection {
    /// The admin token, for the admin endpoints (see README → HTTP API).
    #[command(flatten)]
    admin: AdminToken,
    #[command(flatten)]
    remote: Remote,
}

/// [`Connection`]'s options given before the `plugins` subcommand (`plugins --url U list`), as
/// they were once taken: hidden, they override the subcommand's own, and the offline
/// subcommands refuse them.
#[derive(Debug, Args)]
struct LeadingConnection {
    #[arg(long = "url", id = "leading_url", hide = true)]
    url: Option<Url>,
    #[command(flatten)]
    admin: LeadingAdminToken,
}

impl LeadingConnection {
    /// `connection` with the options given here in place of its own.
    fn over(self, connection: Connection) -> Connection {
        Connection {
            admin: self.admin.over(connection.admin),
            remote: Remote {
                url: self.url.unwrap_or(connection.remote.url),
            },
        }
    }

    /// Fails if any option was given to `plugins SUBCOMMAND`, which works offline.
    fn refuse_for(&self, subcommand: &str) -> anyhow::Result<()> {
        if self.url.is_some() || self.admin.is_given() {
            bail!(
                "--url, --admin-token and --admin-token-file are for the subcommands that talk \
                 to a server; `plugins {subcommand}` works offline"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream to append to.
    stream: String,
    /// The event's type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,
    /// The event's data, as JSON (stored exactly as written).
    #[arg(long, value_parser = parse_raw_json)]
    data: Box<RawValue>,
    /// A JSON object stored with the event (exactly as written).
    #[arg(long, value_parser = parse_raw_json)]
    metadata: Option<Box<RawValue>>,
    /// Only append if the stream is at this version: a number, `any` or `no_stream`.
    #[arg(long, default_value = "any")]
    expected_version: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this stream's events (default: the global log).
    stream: Option<String>,
    /// First stream version (with STREAM) or global position (without) to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Print at most this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Keep following new events as they are appended (Server-Sent Events) until interrupted.
    #[arg(long, conflicts_with = "limit")]
    follow: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct CommandArgs {
    /// The aggregate plugin.
    plugin: String,
    /// The aggregate's id (its stream is PLUGIN-ID).
    id: String,
    /// The command's type, e.g. Deposit.
    #[arg(value_name = "TYPE")]
    command_type: String,
    /// The command's data, as JSON (default: null), passed on exactly as written.
    #[arg(value_parser = parse_raw_json)]
    data: Option<Box<RawValue>>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The aggregate plugin.
    plugin: String,
    /// The aggregate's id.
    id: String,
    /// The state as it was right after this stream version.
    #[arg(long)]
    at_version: Option<u64>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct ProjectionArgs {
    /// The projection plugin.
    plugin: String,
    /// Run the plugin's query NAME instead of printing its state.
    #[arg(long, value_name = "NAME")]
    query: Option<String>,
    /// A query argument (repeatable); VALUE is taken as JSON if it parses, else as a string.
    #[arg(long = "arg", value_name = "KEY=VALUE", requires = "query", value_parser = parse_pair)]
    args: Vec<(String, String)>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    action: PluginsAction,
    #[command(flatten)]
    leading: LeadingConnection,
}

/// The `plugins` subcommands; those that talk to a server take its [`Connection`] options, the
/// offline ones (`new`, `build`, `diff`) do not.
#[derive(Debug, Subcommand)]
enum PluginsAction {
    /// List the loaded plugins.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Install a plugin component (or replace the loaded version); needs the admin token.
    Load {
        /// The .wasm component (or a core module from `cargo build --target
        /// wasm32-unknown-unknown`).
        file: PathBuf,
        /// The plugin's name; without it the file is loaded locally to ask it (for a Python or
        /// JavaScript plugin that means compiling it twice).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Offline: create a plugin project (Rust, Python or JavaScript) that `plugins build` turns
    /// into a component.
    New(super::author::NewArgs),
    /// Offline: build the plugin project in DIR with its language's toolchain (installed where
    /// missing), componentize it and check it against the contract.
    Build(super::author::BuildArgs),
    /// Offline safety check before deploying a new build: replay every stream of the plugin
    /// (the whole log, for a projection) through both builds and list the streams whose final
    /// state differs. Exits with 1 when any does.
    Diff(super::offline::DiffArgs),
    /// Unload a plugin; needs the admin token.
    Unload {
        /// The plugin's name.
        name: String,
        /// Also delete its snapshots and checkpoints (kept by default, so reloading the same
        /// build resumes from them).
        #[arg(long)]
        drop_data: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the events a projection parked (skipped because it could not fold them).
    Parked {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Fold a projection's parked events again, at the head; needs the admin token.
    ReplayParked {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Restart a projection from its checkpoint (e.g. one stopped by policy `stop`); needs
    /// the admin token.
    Restart {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Rebuild a projection from position 1 in the background; it takes over at the head.
    /// Needs the admin token.
    Reset {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Set what a projection does with an event it cannot fold; needs the admin token.
    Policy {
        /// The projection's name.
        name: String,
        /// `park` (skip it, listed by `plugins parked`) or `stop` (until `plugins restart`).
        policy: FailurePolicy,
        #[command(flatten)]
        connection: Connection,
    },
}

/// JSON checked but kept as written, so the server stores the very text.
fn parse_raw_json(text: &str) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text.to_owned()).map_err(|error| format!("not valid JSON: {error}"))
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

impl Remote {
    pub(super) fn request(
        &self,
        method: Method,
        segments: &[&str],
    ) -> anyhow::Result<RequestBuilder> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.url))?
            .pop_if_empty()
            .extend(segments);
        Ok(client(&url)?.request(method, url))
    }
}

/// The process's one HTTP client (its connections are reused across requests), for the one
/// server a process talks to at `url`. `https://` URLs are served by rustls on the ring
/// provider, installed here as the process's default (reqwest is built without one of its
/// own), and a server's certificate is checked by the platform's verifier: on Linux against the
/// system's CA store, or the bundle `SSL_CERT_FILE` names and the directory `SSL_CERT_DIR`
/// names. A plain `http://` server needs no CA store (a slim image may have none), so then
/// none is loaded and no certificate is trusted.
fn client(url: &reqwest::Url) -> anyhow::Result<&'static Client> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    // Fails only if a provider is installed already, which then serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = match url.scheme() {
        "https" => Client::builder(),
        _ => Client::builder().tls_certs_only(std::iter::empty()),
    };
    let client = builder.build().context("setting up the HTTP client")?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Sends `request` and returns its JSON answer, or fails with the server's error message.
pub(super) async fn send(request: RequestBuilder) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&send_for_text(request).await?)?)
}

/// Sends `request` and returns the text of its JSON answer as the server sent it (events'
/// data as stored); an answer with an error status is an error naming the server's message.
pub(super) async fn send_for_text(request: RequestBuilder) -> anyhow::Result<String> {
    let response = request.send().await.context("the server did not answer")?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("the server's answer broke off")?;
    if !status.is_success() {
        let Ok(body) = serde_json::from_str::<Value>(&text) else {
            bail!("the server answered {status} without JSON");
        };
        let message = body["error"].as_str().unwrap_or("no message");
        bail!("the server answered {status}: {message}");
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
        bail!("the server answered {status} without JSON");
    }
    Ok(text)
}

/// Stdout was closed (`foldhost events | head -1`): the command stops there, and succeeds.
#[derive(Debug)]
pub(super) struct StdoutClosed;

impl Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Prints `line` on stdout. Not println!, which panics once the reader of stdout has gone:
/// that is [`StdoutClosed`].
pub(super) fn print_line(line: impl Display) -> anyhow::Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        written => Ok(written.context("writing to stdout")?),
    }
}

pub(super) fn print_pretty(value: &Value) -> anyhow::Result<()> {
    print_line(serde_json::to_string_pretty(value).expect("a JSON value serialises"))
}

/// Prints the JSON answer to `request` indented, every value as the server sent it.
pub(super) async fn print_answer(request: RequestBuilder) -> anyhow::Result<()> {
    print_line(super::pretty::pretty(&send_for_text(request).await?))
}

pub async fn append(args: AppendArgs) -> anyhow::Result<()> {
    let expected = match args.expected_version.parse::<u64>() {
        Ok(version) => json!(version),
        Err(_) => json!(args.expected_version),
    };
    /// The body of an append, with `data` and `metadata` as written.
    #[derive(Serialize)]
    struct Append<'a> {
        expected_version: Value,
        events: [Event<'a>; 1],
    }
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        event_type: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a RawValue>,
    }
    let body = Append {
        expected_version: expected,
        events: [Event {
            event_type: &args.event_type,
            data: &args.data,
            metadata: args.metadata.as_deref(),
        }],
    };
    let request = args
        .remote
        .request(Method::POST, &["streams", &args.stream, "events"])?
        .json(&body);
    print_answer(request).await?;
    Ok(())
}

pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    if args.follow {
        return follow(&args).await;
    }
    const PAGE: u64 = 1_000;
    let mut next = args.from;
    let mut left = args.limit.unwrap_or(u64::MAX);
    while left > 0 {
        let limit = left.min(PAGE);
        let request = match &args.stream {
            Some(stream) => args
                .remote
                .request(Method::GET, &["streams", stream, "events"])?
                .query(&[("from_version", next), ("limit", limit)]),
            None => args
                .remote
                .request(Method::GET, &["events"])?
                .query(&[("from_position", next), ("limit", limit)]),
        };
        let page = send_for_text(request).await?;
        let events: Vec<&RawValue> =
            serde_json::from_str(&page).context("the server answered no list of events")?;
        for event in &events {
            print_line(event.get())?;
        }
        let Some(last) = events.last() else {
            break;
        };
        let last: Numbered =
            serde_json::from_str(last.get()).context("an event without its numbers")?;
        next = 1 + if args.stream.is_some() {
            last.version
        } else {
            last.position
        };
        left -= events.len() as u64;
    }
    Ok(())
}

/// Where an event read from the server is.
#[derive(serde::Deserialize)]
struct Numbered {
    stream: String,
    version: u64,
    position: u64,
}

/// Prints the live feed; with a stream, only that stream's events from version `--from` on.
async fn follow(args: &EventsArgs) -> anyhow::Result<()> {
    let from_position = if args.stream.is_some() { 1 } else { args.from };
    let request = args
        .remote
        .request(Method::GET, &["events", "live"])?
        .query(&[("from_position", from_position)]);
    let response = request.send().await.context("the server did not answer")?;
    if !response.status().is_success() {
        return send_failed(response).await;
    }
    let mut body = response.bytes_stream();
    let mut feed = SseParser::default();
    // What `--from` resumes after the last event printed: a version in a stream, else a
    // position.
    let mut resume = args.from;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| {
            format!("the live feed broke off: follow again with --from {resume}")
        })?;
        for message in feed.push(&chunk) {
            if message.event == "error" {
                bail!(
                    "the server ended the live feed: {}: follow again with --from {resume}",
                    message.data
                );
            }
            let event: Numbered = serde_json::from_str(&message.data)
                .with_context(|| format!("the live feed sent no event: {}", message.data))?;
            let wanted = match &args.stream {
                Some(stream) => event.stream == *stream && event.version >= args.from,
                None => true,
            };
            if wanted {
                // As sent: its data byte for byte.
                print_line(&message.data)?;
                resume = 1 + if args.stream.is_some() {
                    event.version
                } else {
                    event.position
                };
            }
        }
    }
    // Only a server shutting down ends the feed: following stops there, and says so.
    bail!("the server closed the live feed (shutting down?): follow again with --from {resume}")
}

async fn send_failed(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    bail!(
        "the server answered {status}: {}",
        body["error"].as_str().unwrap_or("no message")
    )
}

/// One Server-Sent Events message.
#[derive(Debug, Default, PartialEq)]
struct SseMessage {
    /// `message` unless the server named it.
    event: String,
    data: String,
}

/// Splits a Server-Sent Events byte stream into messages (lines of `field: value`, a blank
/// line ending each message; `:` lines are comments such as keep-alives).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    current: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes in; returns the messages they completed.
    fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.buffer.extend_from_slice(bytes);
        let mut complete = Vec::new();
        while let Some(end) = self.line_end() {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if std::mem::take(&mut self.has_data) {
                    let mut message = std::mem::take(&mut self.current);
                    if message.event.is_empty() {
                        message.event = "message".to_owned();
                    }
                    complete.push(message);
                } else {
                    self.current = SseMessage::default();
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.current.event = value.to_owned(),
                _ => {} // comments, id, retry
            }
        }
        complete
    }

    /// Where the buffer's first line ends (its last byte): lines end with CRLF, LF or CR. A
    /// CR last in the buffer waits for the next bytes, which may begin with its LF.
    fn line_end(&self) -> Option<usize> {
        let end = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r')?;
        match (self.buffer[end], self.buffer.get(end + 1)) {
            (b'\r', None) => None,
            (b'\r', Some(b'\n')) => Some(end + 1),
            _ => Some(end),
        }
    }
}

pub async fn command(args: CommandArgs) -> anyhow::Result<()> {
    /// The body of a command, with `data` as written.
    #[derive(Serialize)]
    struct CommandBody<'a> {
        #[serde(rename = "type")]
        command_type: &'a str,
        data: Option<&'a RawValue>,
    }
    let body = CommandBody {
        command_type: &args.command_type,
        data: args.data.as_deref(),
    };
    let request = args
        .remote
        .request(
            Method::POST,
            &["aggregates", &args.plugin, &args.id, "commands"],
        )?
        .json(&body);
    print_answer(request).await?;
    Ok(())
}

pub async fn state(args: StateArgs) -> anyhow::Result<()> {
    let mut request = args
        .remote
        .request(Method::GET, &["aggregates", &args.plugin, &args.id])?;
    if let Some(version) = args.at_version {
        request = request.query(&[("at_version", version)]);
    }
    print_answer(request).await?;
    Ok(())
}

pub async fn projection(args: ProjectionArgs) -> anyhow::Result<()> {
    let request = match &args.query {
        Some(name) => args
            .remote
            .request(Method::GET, &["projections", &args.plugin, "query", name])?
            .query(&args.args),
        None => args
            .remote
            .request(Method::GET, &["projections", &args.plugin])?,
    };
    print_answer(request).await?;
    Ok(())
}

pub async fn plugins(args: PluginsArgs) -> anyhow::Result<()> {
    let PluginsArgs { action, leading } = args;
    let request = match action {
        PluginsAction::Diff(diff) => {
            leading.refuse_for("diff")?;
            return super::offline::diff(diff).await;
        }
        PluginsAction::New(new) => {
            leading.refuse_for("new")?;
            return super::author::new(new);
        }
        PluginsAction::Build(build) => {
            leading.refuse_for("build")?;
            return super::author::build(build).await;
        }
        PluginsAction::List { connection } => {
            let connection = leading.over(connection);
            connection.remote.request(Method::GET, &["plugins"])?
        }
        PluginsAction::Load {
            file,
            name,
            connection,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(name) => name,
                None => described_name(&bytes, &file.display().to_string())?,
            };
            leading
                .over(connection)
                .admin(Method::PUT, &name, &[])?
                .body(bytes)
        }
        PluginsAction::Unload {
            name,
            drop_data,
            connection,
        } => leading
            .over(connection)
            .admin(Method::DELETE, &name, &[])?
            .query(&[("drop_data", drop_data)]),
        PluginsAction::Parked { name, connection } => {
            return print_parked(&leading.over(connection).remote, &name).await;
        }
        PluginsAction::ReplayParked { name, connection } => {
            leading
                .over(connection)
                .admin(Method::POST, &name, &["parked", "replay"])?
        }
        PluginsAction::Restart { name, connection } => {
            leading
                .over(connection)
                .admin(Method::POST, &name, &["restart"])?
        }
        PluginsAction::Reset { name, connection } => {
            leading
                .over(connection)
                .admin(Method::POST, &name, &["reset"])?
        }
        PluginsAction::Policy {
            name,
            policy,
            connection,
        } => leading
            .over(connection)
            .admin(Method::PUT, &name, &["policy"])?
            .json(&json!({ "policy": policy })),
    };
    print_answer(request).await?;
    Ok(())
}

/// Parked events read in one request: the most the server lists on one page.
const PARKED_PAGE: u64 = 1000;

/// Prints every event projection `name` parked, as one indented JSON list, read and printed a
/// page at a time (a projection may have parked hundreds of thousands).
async fn print_parked(remote: &Remote, name: &str) -> anyhow::Result<()> {
    let mut list = PrettyList::default();
    let mut after = 0;
    loop {
        let request = remote
            .request(Method::GET, &["plugins", name, "parked"])?
            .query(&[("after", after), ("limit", PARKED_PAGE)]);
        let page: Vec<Value> = serde_json::from_value(send(request).await?)
            .context("the server answered no list of parked events")?;
        let Some(last) = page.last() else {
            break;
        };
        after = last["position"]
            .as_u64()
            .context("a parked event without its position")?;
        for event in &page {
            print_line(list.push(event))?;
        }
    }
    print_line(list.end())
}

/// A JSON list printed indented as `serde_json::to_string_pretty` prints it, one element at a
/// time: each element is held back until it is known whether a comma follows it.
#[derive(Default)]
struct PrettyList {
    held: Option<String>,
}

impl PrettyList {
    /// Takes `element`; returns the lines that can be printed now.
    fn push(&mut self, element: &Value) -> String {
        let pretty = serde_json::to_string_pretty(element).expect("a JSON value serialises");
        let indented: Vec<String> = pretty.lines().map(|line| format!("  {line}")).collect();
        match self.held.replace(indented.join("\n")) {
            Some(previous) => format!("{previous},"),
            None => "[".to_owned(),
        }
    }

    /// The lines that end the list.
    fn end(self) -> String {
        match self.held {
            Some(last) => format!("{last}\n]"),
            None => "[]".to_owned(),
        }
    }
}

impl Connection {
    /// A request to `/plugins/{name}/{rest…}`, signed with the admin token.
    fn admin(&self, method: Method, name: &str, rest: &[&str]) -> anyhow::Result<RequestBuilder> {
        let path: Vec<&str> = ["plugins", name]
            .into_iter()
            .chain(rest.iter().copied())
            .collect();
        self.admin.sign(self.remote.request(method, &path)?)
    }
}

/// The name a component gives itself, found by loading it locally (which also validates it
/// before it is uploaded).
fn described_name(bytes: &[u8], origin: &str) -> anyhow::Result<String> {
    let engine = PluginEngine::new(Limits::default(), None)?;
    Ok(Plugin::load(&engine, bytes, origin)?.name().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_printed_an_element_at_a_time_reads_as_printed_whole() {
        for n in [0, 1, 3] {
            let elements: Vec<Value> = (0..n)
                .map(|i| json!({"position": i, "event": {"data": [1, {"a": null}]}}))
                .collect();
            let mut list = PrettyList::default();
            let mut printed: Vec<String> = elements.iter().map(|e| list.push(e)).collect();
            printed.push(list.end());
            let whole = serde_json::to_string_pretty(&Value::Array(elements)).unwrap();
            assert_eq!(printed.join("\n"), whole);
        }
    }

    use clap::Parser;

    use super::*;

    /// The connection `foldhost plugins ARGS` uses, and whether it may use the leading options.
    fn plugins_connection(args: &[&str]) -> (Option<Connection>, anyhow::Result<()>) {
        let cli = crate::cli::Cli::try_parse_from(["foldhost", "plugins"].iter().chain(args));
        let crate::cli::Action::Plugins(PluginsArgs { action, leading }) = cli.unwrap().action
        else {
            panic!("not plugins");
        };
        match action {
            PluginsAction::Load { connection, .. } => (Some(leading.over(connection)), Ok(())),
            _ => (None, leading.refuse_for("new")),
        }
    }

    #[test]
    fn server_options_before_the_plugins_subcommand_still_count() {
        for args in [
            &[
                "--url",
                "http://h:1",
                "--admin-token",
                "t",
                "load",
                "f.wasm",
            ][..],
            &[
                "load",
                "f.wasm",
                "--url",
                "http://h:1",
                "--admin-token",
                "t",
            ],
            &[
                "--url",
                "http://h:1",
                "load",
                "f.wasm",
                "--admin-token",
                "t",
            ],
        ] {
            let (connection, _) = plugins_connection(args);
            let connection = connection.unwrap();
            assert_eq!(connection.remote.url.as_str(), "http://h:1/", "{args:?}");
            assert_eq!(connection.admin.resolve().unwrap().as_deref(), Some("t"));
        }
        let (_, refused) = plugins_connection(&["--url", "http://h:1", "new", "x"]);
        let refused = refused.unwrap_err().to_string();
        assert!(refused.contains("works offline"), "{refused}");
        let (_, given) = plugins_connection(&["new", "x"]);
        given.unwrap();
    }

    #[test]
    fn sse_messages_split_across_chunks_and_skip_comments() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nid: 1\nda").is_empty());
        let messages = parser.push(b"ta: {\"a\":1}\r\n\r\nevent: error\ndata: x\ndata: y\n\n");
        assert_eq!(
            messages,
            vec![
                SseMessage {
                    event: "message".into(),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    event: "error".into(),
                    data: "x\ny".into()
                },
            ]
        );
        // A lone CR ends a line too (a CR between a payload's tokens arrives so), also when
        // a chunk ends on it and the next begins with its LF.
        assert!(parser.push(b"data: {\"a\":\rdata: 2}\r").is_empty());
        assert_eq!(
            parser.push(b"\n\r\n"),
            vec![SseMessage {
                event: "message".into(),
                data: "{\"a\":\n2}".into()
            }]
        );
    }
}
