//! The `foldhost` command line: the server, client subcommands for a running server, and
//! offline subcommands working directly on a data directory.

mod author;
mod backup;
mod client;
mod import_check;
mod lifecycle;
mod limits;
mod offline;
mod pretty;
mod records;
mod token;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::runtime::{FailurePolicy, parse_size};
use crate::server::{Server, ServerConfig};

/// Event sourcing whose aggregates and projections are sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "foldhost", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run the HTTP server on a data directory until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Append one event to a stream.
    Append(client::AppendArgs),
    /// Print events, one JSON object per line (more if its data holds line breaks): of one
    /// stream, or of the global log.
    Events(client::EventsArgs),
    /// Run a command on an aggregate and print the outcome.
    Command(client::CommandArgs),
    /// Print an aggregate's state, now or at a past version.
    State(client::StateArgs),
    /// Print a projection's state, or the answer to one of its queries.
    Projection(client::ProjectionArgs),
    /// List, load or unload the server's plugins.
    Plugins(client::PluginsArgs),
    /// List streams, delete them, and read or set their retention metadata.
    Streams(lifecycle::StreamsArgs),
    /// Remove the events no reader sees any more (deleted, expired) and compact the journal;
    /// needs the admin token.
    Scavenge(lifecycle::ScavengeArgs),
    /// Write a consistent backup of the server's redb journal (taken while it keeps serving)
    /// into a directory; needs the admin token. With --data, back up a data directory offline.
    Backup(backup::BackupArgs),
    /// Offline: put a backup's journal into an empty data directory.
    Restore(backup::RestoreArgs),
    /// Offline: run a plugin over a data directory's journal and print the state it folds.
    Replay(offline::ReplayArgs),
    /// Offline: write a data directory's global log as NDJSON.
    Export(offline::ExportArgs),
    /// Offline: append the events of an NDJSON export to a data directory's journal.
    Import(offline::ImportArgs),
    /// Internal, run by `serve`: compile the component on stdin, write the result to stdout.
    #[command(name = crate::runtime::COMPILE_COMMAND, hide = true)]
    CompileComponent {
        /// For an engine that meters fuel.
        #[arg(long)]
        fuel: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data directory: holds the journal file and the compiled-plugin cache.
    #[arg(long, env = "FOLDHOST_DATA", default_value = "./foldhost-data", value_parser = parse_data_dir)]
    data: PathBuf,
    /// PostgreSQL journal URL (`postgres://user@host:port/database`) shared by several hosts;
    /// without it the journal is the redb file under --data.
    #[arg(long, env = "FOLDHOST_JOURNAL", hide_env_values = true)]
    journal: Option<String>,
    /// Start even if the PostgreSQL server may lose acknowledged commits in a power cut
    /// (`fsync`, `synchronous_commit` or `full_page_writes` off); it is refused otherwise.
    /// For throwaway test clusters only.
    #[arg(long, env = "FOLDHOST_UNSAFE_ACCEPT_NON_DURABLE_POSTGRES")]
    unsafe_accept_non_durable_postgres: bool,
    /// Directory whose *.wasm plugins are loaded at start (one that fails is skipped); files
    /// added or changed there later are loaded while serving.
    #[arg(long, env = "FOLDHOST_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. The first line printed on stdout is
    /// `listening on http://ADDRESS`.
    #[arg(long, env = "FOLDHOST_LISTEN", default_value = "127.0.0.1:7878")]
    listen: String,
    /// Without an admin token the admin endpoints are disabled.
    #[command(flatten)]
    admin: token::AdminToken,
    /// What a projection does with an event it cannot fold (after retries): `park` it (skip
    /// it, listed under /plugins/NAME/parked) or `stop` there until an operator acts.
    /// Per plugin: `foldhost plugins policy NAME park|stop`.
    #[arg(long, env = "FOLDHOST_FAILURE_POLICY", default_value = "park")]
    failure_policy: FailurePolicy,
    /// Most memory the cached aggregate states may hold together, e.g. 512MiB. A live state is
    /// counted by what it may touch (its linear memories and tables); past fifteen sixteenths
    /// of this the least recently used idle ones are dropped, their snapshots kept in memory
    /// (dehydrated) within the last sixteenth, and a dropped state comes back from its snapshot
    /// plus the events appended since (or from the journal, once its snapshot is dropped too).
    #[arg(long, env = "FOLDHOST_AGGREGATE_CACHE", value_name = "SIZE", value_parser = parse_size, default_value = "512MiB")]
    aggregate_cache: usize,
    /// Most memory the redb journal keeps of its file's pages (read cache and the commit being
    /// written), e.g. 64MiB; the rest is read from the file through the OS page cache.
    /// Ignored with --journal postgres://….
    #[arg(long, env = "FOLDHOST_JOURNAL_CACHE", value_name = "SIZE", value_parser = parse_size, default_value = "4MiB")]
    journal_cache: usize,
    /// Live aggregate states unused for this long are dropped, freeing their memory, and
    /// rehydrate from their snapshot on their next command (Akka's passivation), e.g. 30s;
    /// 0 or off keeps them until the cache's bounds evict them.
    #[arg(long, env = "FOLDHOST_PASSIVATE_AFTER", value_name = "DURATION", value_parser = parse_passivation, default_value = "2m")]
    passivate_after: Passivation,
    #[command(flatten)]
    limits: limits::ClientLimitArgs,
    #[command(flatten)]
    plugin_limits: limits::PluginLimitArgs,
}

/// Runs the command line: parses the arguments, runs the subcommand and reports a failure
/// on stderr with a non-zero exit code.
pub fn main() -> ExitCode {
    crate::allocator::cap_arenas();
    let cli = Cli::parse();
    let default_log = match cli.action {
        Action::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.action)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the output has what it wanted (`foldhost events | head -1`).
        Err(error) if error.is::<client::StdoutClosed>() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.is::<crate::runtime::ComponentRefused>() {
                true => ExitCode::from(crate::runtime::ComponentRefused::EXIT_CODE),
                false => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Serve(args) => serve(args).await,
        Action::Append(args) => client::append(args).await,
        Action::Events(args) => client::events(args).await,
        Action::Command(args) => client::command(args).await,
        Action::State(args) => client::state(args).await,
        Action::Projection(args) => client::projection(args).await,
        Action::Plugins(args) => client::plugins(args).await,
        Action::Streams(args) => lifecycle::streams(args).await,
        Action::Scavenge(args) => lifecycle::scavenge(args).await,
        Action::Backup(args) => backup::backup(args).await,
        Action::Restore(args) => backup::restore(args).await,
        Action::Replay(args) => offline::replay(args).await,
        Action::Export(args) => offline::export(args).await,
        Action::Import(args) => offline::import(args).await,
        Action::CompileComponent { fuel } => crate::runtime::compile_child(fuel),
    }
}

/// `--data`: a directory. A URL there (a PostgreSQL journal's, most likely) is refused rather
/// than becoming a local directory named after it.
fn parse_data_dir(text: &str) -> Result<PathBuf, String> {
    if text.contains("://") {
        return Err(
            "--data (FOLDHOST_DATA) is a local data directory, not a URL; a PostgreSQL journal \
             is given to `foldhost serve --journal URL` (or FOLDHOST_JOURNAL), and export, \
             import, replay, backup --data and restore work on a data directory's redb journal \
             only"
                .into(),
        );
    }
    Ok(PathBuf::from(text))
}

/// `--passivate-after`: a timeout, or none.
#[derive(Debug, Clone, Copy)]
struct Passivation(Option<std::time::Duration>);

fn parse_passivation(text: &str) -> Result<Passivation, String> {
    match text {
        "0" | "off" => Ok(Passivation(None)),
        _ => crate::runtime::parse_duration(text).map(|timeout| Passivation(Some(timeout))),
    }
}

/// This process's binary, even if its file was replaced or deleted since it started.
fn this_binary() -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        Some("/proc/self/exe".into())
    } else {
        std::env::current_exe().ok()
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listen = resolve(&args.listen)?;
    let plugin_limits = args.plugin_limits.policy();
    limits::check_memory_budget(&plugin_limits, args.aggregate_cache)?;
    let admin_token = args.admin.resolve()?;
    if admin_token.is_none() {
        tracing::info!("no admin token: the admin endpoints (see README → HTTP API) are disabled");
    }
    let server = Server::start(ServerConfig {
        data_dir: args.data,
        journal_url: args.journal.filter(|url| !url.is_empty()),
        accept_non_durable_postgres: args.unsafe_accept_non_durable_postgres,
        plugins_dir: args.plugins,
        listen,
        admin_token,
        metrics: Some(crate::server::metrics::install()?),
        failure_policy: args.failure_policy,
        limits: args.limits.limits(),
        plugin_limits,
        aggregate_cache_bytes: args.aggregate_cache,
        journal_cache_bytes: args.journal_cache,
        passivate_after: args.passivate_after.0,
        // Plugins compile in a child: the serving process never holds the compiler's memory.
        compiler: this_binary(),
    })
    .await?;
    let stop = terminated()?;
    // Not println!: a closed stdout (`foldhost serve | head -1`, a supervisor that read the
    // address and went) must not panic a serving host.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{}", server.local_addr());
    let _ = writeln!(stdout, "web console: http://{}/", server.local_addr());
    tokio::select! {
        () = stop => {
            tracing::info!("shutting down: finishing in-flight requests");
            server.shutdown().await
        }
        fault = server.faulted() => {
            // Fail-stop, as PostgreSQL does on a failed fsync: a restart reopens the journal.
            tracing::error!(%fault, "the journal failed: reporting it on /health, then exiting");
            tokio::time::sleep(FAULT_LINGER).await;
            server.shutdown().await?;
            anyhow::bail!("the journal stopped writing after a storage fault: {fault}")
        }
    }
}

/// How long a host whose journal failed keeps answering (`/health` 503, writes 503) before it
/// exits, so probes and load balancers see why.
const FAULT_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

fn resolve(listen: &str) -> anyhow::Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .with_context(|| format!("invalid --listen address {listen:?}"))?
        .next()
        .with_context(|| format!("--listen {listen:?} resolves to no address"))
}

/// Handles SIGTERM and Ctrl-C (SIGINT) from now on: the future resolves on either. Taken
/// before the host says it is listening, so a supervisor that stops it as soon as it reads
/// the address gets a graceful shutdown, not the signal's default death.
fn terminated() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("handling Ctrl-C")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// The long help of `foldhost plugins SUBCOMMAND`.
    fn plugins_help(subcommand: &str) -> String {
        let mut cli = super::Cli::command();
        cli.build();
        let plugins = cli.find_subcommand("plugins").expect("plugins");
        let mut subcommand = plugins
            .find_subcommand(subcommand)
            .expect(subcommand)
            .clone();
        subcommand.render_long_help().to_string()
    }

    #[test]
    fn only_plugins_subcommands_that_talk_to_a_server_take_its_options() {
        let server_options = ["--url", "--admin-token", "--admin-token-file"];
        for offline in [&["new", "x"][..], &["build"], &["diff", "a.wasm", "b.wasm"]] {
            let help = plugins_help(offline[0]);
            for option in server_options {
                assert!(
                    !help.contains(option),
                    "plugins {offline:?} offers {option}:\n{help}"
                );
            }
            let args = ["foldhost", "plugins"].iter().chain(offline);
            super::Cli::try_parse_from(args.clone()).unwrap();
            let refused = super::Cli::try_parse_from(args.chain(&["--url", "http://h"]));
            assert_eq!(
                refused.unwrap_err().kind(),
                clap::error::ErrorKind::UnknownArgument,
                "plugins {offline:?} takes --url"
            );
        }
        for online in [
            "list",
            "load",
            "unload",
            "parked",
            "replay-parked",
            "restart",
            "reset",
            "policy",
        ] {
            let help = plugins_help(online);
            for option in server_options {
                assert!(
                    help.contains(option),
                    "plugins {online} lacks {option}:\n{help}"
                );
            }
        }
    }

    #[test]
    fn serve_limit_flags_make_the_policy() {
        let cli = super::Cli::try_parse_from([
            "foldhost",
            "serve",
            "--call-timeout",
            "250ms",
            "--plugin-fuel",
            "1000",
            "--plugin-limit",
            "bank-analytics:memory=256MiB,fuel=off",
        ])
        .unwrap();
        let super::Action::Serve(args) = cli.action else {
            panic!("not serve");
        };
        let policy = args.plugin_limits.policy();
        assert_eq!(
            policy.defaults.call_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(policy.defaults.fuel, Some(1000));
        assert_eq!(policy.defaults.memory, 64 << 20);
        let analytics = policy.of("bank-analytics");
        assert_eq!((analytics.memory, analytics.fuel), (256 << 20, None));
        assert_eq!(
            analytics.call_timeout,
            std::time::Duration::from_millis(250)
        );
        let refused = super::Cli::try_parse_from([
            "foldhost",
            "serve",
            "--plugin-limit",
            "bank-analytics:memory=lots",
        ])
        .unwrap_err();
        assert!(refused.to_string().contains("not a size"), "{refused}");
    }

    #[test]
    fn the_plugin_memory_budget_must_hold_the_cache_and_any_one_instance() {
        let policy = |args: &[&str]| {
            let cli = super::Cli::try_parse_from(["foldhost", "serve"].iter().chain(args)).unwrap();
            let super::Action::Serve(args) = cli.action else {
                panic!("not serve");
            };
            (args.plugin_limits.policy(), args.aggregate_cache)
        };
        let (defaults, cache) = policy(&[]);
        assert_eq!(defaults.memory_budget, 1 << 30);
        super::limits::check_memory_budget(&defaults, cache).unwrap();
        let (small, cache) = policy(&["--plugins-memory-budget", "512MiB"]);
        let refused = super::limits::check_memory_budget(&small, cache).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("--aggregate-cache (512.0 MiB) must be smaller than --plugins-memory-budget (512.0 MiB)"),
            "{refused}"
        );
        let (large, cache) = policy(&["--plugin-limit", "big:memory=2GiB"]);
        let refused = super::limits::check_memory_budget(&large, cache).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--plugin-limit big:memory=2.0 GiB is more than --plugins-memory-budget (1.0 GiB): no \
             instance could grow to it"
        );
    }
}
