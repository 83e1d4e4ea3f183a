//! Start-up over a large journal: how long the release `foldhost serve`, started on a data
//! directory holding 1M bank-account events, takes to answer its first command.
//!
//! Fills a journal with 1M events over 1,000 accounts through the journal API, then serves it
//! with three plugins: `bank-account` (Rust aggregate), `bank-analytics` in Python (a projection
//! over every event, and an 18 MB component: the compiled-plugin cache matters) and
//! `shopping-cart` (Rust aggregate). The first start compiles the plugins and replays the
//! projection from 0; it stops with SIGTERM (the projection checkpoints). Then the host starts
//! again several times: each start is timed from spawn until a `Deposit` into an account with
//! 1,000 events answers 200, and until every plugin is `live` at the head. The baseline, measured
//! in the same run, is the same binary and plugins warm-starting over a data directory with only
//! a few events: the ratio is what 1M events cost at start-up.
//!
//! `cargo bench -p foldhost-tests --bench startup` (FOLDHOST_BENCH_SCALE=0.1 for a quick pass).
//! Prints a markdown table.

use foldhost_tests::bench::{self, deposit, scale};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use foldhost::journal::{Journal, JournalConfig};
use foldhost::server::{COMPILE_CACHE, JOURNAL_FILE};
use serde_json::{Value, json};

/// The release `foldhost` binary (the package's copy of host/src/main.rs, see tests/serve).
const BIN: &str = env!("CARGO_BIN_EXE_foldhost-under-test");
/// Accounts the events are spread over.
const ACCOUNTS: usize = 1000;
/// Warm starts measured, over the large journal and over the baseline's.
const STARTS: usize = 5;
/// The start-up goal of issue #12.
const GOAL: Duration = Duration::from_secs(1);
/// Failure guard for every wait (not a measurement bound): the first start replays 1M events
/// through Python.
const PATIENCE: Duration = Duration::from_secs(900);
/// The plugins served, as (file in the plugins directory, component).
const PLUGINS: [(&str, &str); 3] = [
    ("bank-account.wasm", foldhost_plugins::BANK_ACCOUNT),
    (
        "bank-analytics.wasm",
        foldhost_plugins::BANK_ANALYTICS_PYTHON,
    ),
    ("shopping-cart.wasm", foldhost_plugins::SHOPPING_CART),
];

/// How long one start took to serve.
struct Start {
    /// From spawn until the first command answered 200.
    first_command: Duration,
    /// From spawn until every plugin was `live` at the head.
    all_live: Duration,
    /// Events the projections read from the journal after this start.
    replayed: u64,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (file, name) in PLUGINS {
        std::fs::copy(foldhost_plugins::path(name), plugins.join(file)).unwrap();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let large = dir.path().join("large");
    let started = Instant::now();
    let head = fill(&large, scale(1_000_000, ACCOUNTS * 2));
    let fill_time = started.elapsed();
    let cold = runtime.block_on(start(&large, &plugins, 0));
    let warm: Vec<Start> = (1..=STARTS)
        .map(|run| runtime.block_on(start(&large, &plugins, run)))
        .collect();

    // The baseline: the accounts the starts deposit into, and nothing else; its first start
    // (not measured) writes the projection's checkpoint.
    let small = dir.path().join("small");
    let small_head = fill_accounts(&small, STARTS + 1, 1);
    copy_cache(&large, &small);
    runtime.block_on(start(&small, &plugins, 0));
    let baseline: Vec<Start> = (1..=STARTS)
        .map(|run| runtime.block_on(start(&small, &plugins, run)))
        .collect();
    let baseline_median = median(&baseline, |s| s.first_command);

    println!(
        "| start of the release binary, 3 plugins (Rust, Python, Rust) | first command: median | worst | all plugins live: median | worst | events replayed (most) | first command vs baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row = |what: String, starts: &[Start]| {
        let first = median(starts, |s| s.first_command);
        println!(
            "| {what} | {} | {} | {} | {} | {} | {:.2}× |",
            ms(first),
            ms(worst(starts, |s| s.first_command)),
            ms(median(starts, |s| s.all_live)),
            ms(worst(starts, |s| s.all_live)),
            starts.iter().map(|s| s.replayed).max().unwrap_or(0),
            first.as_secs_f64() / baseline_median.as_secs_f64()
        );
    };
    row(
        format!("{small_head} events, warm: cached plugins (baseline, {STARTS} starts)"),
        &baseline,
    );
    row(
        format!("{head} events, cold: compile plugins, replay from 0 (1 start)"),
        std::slice::from_ref(&cold),
    );
    row(
        format!("{head} events, warm: cached plugins and checkpoints ({STARTS} starts)"),
        &warm,
    );
    let verdict = if worst(&warm, |s| s.first_command) < GOAL {
        "met"
    } else {
        "missed"
    };
    println!(
        "\nGoal: first command < {} ms after a warm start over {head} events: {verdict} (worst {}). \
         Filling the journal took {:.1} s.",
        GOAL.as_millis(),
        ms(worst(&warm, |s| s.first_command)),
        fill_time.as_secs_f64()
    );
}

/// Writes `events` events into a new data directory at `data`: [`ACCOUNTS`] bank accounts,
/// each opened then credited, one append per account. Returns the head position.
fn fill(data: &Path, events: usize) -> u64 {
    fill_accounts(data, ACCOUNTS, events / ACCOUNTS)
}

fn fill_accounts(data: &Path, accounts: usize, events_per_account: usize) -> u64 {
    std::fs::create_dir_all(data).unwrap();
    let journal = Journal::open(data.join(JOURNAL_FILE), JournalConfig::default()).unwrap();
    bench::fill_accounts(&journal, accounts, events_per_account, deposit)
}

/// Copies the compiled plugins cached in data directory `from` into `to`'s cache: they are
/// keyed by content and engine, so `to` starts warm without compiling them again.
fn copy_cache(from: &Path, to: &Path) {
    let (from, to) = (from.join(COMPILE_CACHE), to.join(COMPILE_CACHE));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Starts `foldhost serve` on `data`, times its first command (a deposit into account `run`)
/// and its plugins going live, then stops it with SIGTERM and waits for it to exit.
async fn start(data: &Path, plugins: &Path, run: usize) -> Start {
    let started = Instant::now();
    let (mut server, url) = serve(data, plugins);
    let client = reqwest::Client::new();
    let command = format!("{url}/aggregates/bank-account/{run}/commands");
    let deposit = json!({"type": "Deposit", "data": {"amount": 1}});
    // The server holds requests until its plugins directory has loaded, so the first try is
    // the measurement (an orchestrator's readiness probe would poll /health instead).
    let response = client.post(&command).json(&deposit).send().await.unwrap();
    let first_command = started.elapsed();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let position = answer["events"][0]["position"].as_u64().unwrap();
    let replayed = loop {
        let listed: Vec<Value> = client
            .get(format!("{url}/plugins"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(replayed) = all_live(&listed, PLUGINS.len(), position) {
            break replayed;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "plugins not live in time: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let all_live = started.elapsed();
    stop(&mut server);
    Start {
        first_command,
        all_live,
        replayed,
    }
}

/// With `GET /plugins` listing `count` plugins all live, the projections having folded
/// `position` (the first command's deposit), the events they replayed since the start.
fn all_live(listed: &[Value], count: usize, position: u64) -> Option<u64> {
    let live = listed
        .iter()
        .filter(|p| p["status"]["status"] == "live")
        .filter(|p| {
            p["status"]["position"]
                .as_u64()
                .is_none_or(|at| at >= position)
        })
        .count();
    if live != count {
        return None;
    }
    Some(listed.iter().filter_map(|p| p["replayed"].as_u64()).sum())
}

/// Starts `foldhost serve` on an ephemeral port and returns it with its base URL.
fn serve(data: &Path, plugins: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--plugins")
        .arg(plugins)
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start foldhost serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("foldhost printed nothing").unwrap();
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // Keep reading: the server prints more, and a closed pipe would fail its writes.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

/// Stops the server as an orchestrator would (SIGTERM) and waits until it has exited cleanly.
fn stop(server: &mut Child) {
    let pid = libc::pid_t::try_from(server.id()).unwrap();
    // SAFETY: signals our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.wait().unwrap();
    assert!(status.success(), "foldhost serve exited with {status}");
}

fn median(starts: &[Start], time: impl Fn(&Start) -> Duration) -> Duration {
    let mut times: Vec<Duration> = starts.iter().map(time).collect();
    times.sort();
    times[times.len() / 2]
}

fn worst(starts: &[Start], time: impl Fn(&Start) -> Duration) -> Duration {
    starts.iter().map(time).max().unwrap()
}

fn ms(time: Duration) -> String {
    format!("{:.0} ms", time.as_secs_f64() * 1000.0)
}
