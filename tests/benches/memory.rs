//! Resident memory of the release `foldhost serve`, read from /proc/PID/status, as a user
//! watching `top` would see it:
//! - idle, with bank-account and bank-analytics loaded and a few requests served (the
//!   baseline, measured in the same run), on a first start (which compiles the plugins) and
//!   after a restart (which loads them compiled);
//! - after 80,000 Deposit commands over 1,000 accounts (64 concurrent clients), bank-analytics
//!   live and caught up;
//! - the same load on a server whose `--aggregate-cache` keeps most states dehydrated, and
//!   its commands/s against the first's;
//! - the same host once idle past its `--passivate-after`, its 1,000 live states dropped;
//! - a second server with `--aggregate-cache 32MiB` and bank-account alone, after opening
//!   100,000 distinct accounts: its peak must stay under idle plus its configured budgets, the
//!   aggregate cache's and the journal's page cache (`--journal-cache`, which fills as the file
//!   grows: ~3 MiB of the 4 here).
//!
//! `cargo bench -p foldhost-tests --bench memory` (FOLDHOST_BENCH_SCALE scales the 100,000).
//! The goal column quotes thalo's figures at the same load (/work/shared/peers.md, issue #12).

use foldhost_tests::bench::scale;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The release `foldhost` binary (the package's copy of host/src/main.rs, see tests/serve).
const BIN: &str = env!("CARGO_BIN_EXE_foldhost-under-test");
const ACCOUNTS: usize = 1000;
const DEPOSITS: usize = 80_000;
const TOUCHED: usize = 100_000;
const CLIENTS: usize = 64;
/// The budgeted server's aggregate cache, MiB.
const CACHE_BUDGET_MIB: u32 = 32;
/// Its journal page cache, MiB, given explicitly (it is the default) as the bound counts it.
const JOURNAL_CACHE_MIB: u32 = 4;
/// The budget of the second loaded server (FOLDHOST_BENCH_LOAD_BUDGET overrides it): most of
/// its 1,000 states dehydrated, to keep under thalo's RSS.
const LOAD_BUDGET: &str = "32MiB";
/// Long enough that no account goes idle during the load (each is used every ~0.2 s).
const PASSIVATE_AFTER: &str = "10s";
/// thalo's RSS on this kind of machine, idle and after ~80k commands (peers.md).
const THALO_IDLE_MIB: f64 = 26.0;
const THALO_LOADED_MIB: f64 = 78.0;

/// Memory figures of one process, in MiB.
#[derive(Clone, Copy)]
struct Memory {
    rss: f64,
    peak: f64,
    /// Proportional set size: a page mapped N times (each instance's copy-on-write view of its
    /// plugin's memory image) counts 1/N each time, so shared pages count once.
    pss: f64,
    anon: f64,
    file: f64,
}

fn main() {
    let touched = scale(TOUCHED, 1000);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let banking = [
        foldhost_plugins::BANK_ACCOUNT,
        foldhost_plugins::BANK_ANALYTICS,
    ];
    let first = Server::start(dir.path(), "loaded", &banking, &[]);
    let idle = runtime.block_on(async {
        first.warm_up().await;
        first.memory()
    });
    drop(first);
    let loaded = Server::start(
        dir.path(),
        "loaded",
        &banking,
        &["--passivate-after", PASSIVATE_AFTER],
    );
    let (restarted, after_load, passivated) = runtime.block_on(async {
        loaded.warm_up().await;
        let restarted = loaded.memory();
        let after_load = loaded.load().await;
        let early = loaded.metric("foldhost_aggregates_passivated_total").await;
        loaded.wait_all_passivated().await;
        let passivated = loaded.metric("foldhost_aggregates_passivated_total").await - early;
        (restarted, after_load, (loaded.memory(), passivated))
    });
    let (passivated, passivated_states) = passivated;
    let (after_load, rate) = after_load;
    drop(loaded);

    let load_budget = std::env::var("FOLDHOST_BENCH_LOAD_BUDGET");
    let load_budget = load_budget.as_deref().unwrap_or(LOAD_BUDGET);
    let small = Server::start(
        dir.path(),
        "loaded-small",
        &banking,
        &[
            "--passivate-after",
            PASSIVATE_AFTER,
            "--aggregate-cache",
            load_budget,
        ],
    );
    let (small_load, small_rate) = runtime.block_on(async {
        small.warm_up().await;
        small.load().await
    });
    let small_live = runtime.block_on(small.metric("foldhost_aggregate_cache_streams"));
    drop(small);

    let budget_flags = [
        "--aggregate-cache".to_owned(),
        format!("{CACHE_BUDGET_MIB}MiB"),
        "--journal-cache".to_owned(),
        format!("{JOURNAL_CACHE_MIB}MiB"),
    ];
    let budgeted = Server::start(
        dir.path(),
        "budgeted",
        &[foldhost_plugins::BANK_ACCOUNT],
        &budget_flags.each_ref().map(String::as_str),
    );
    let (budget_idle, after_touch, cached_mib) = runtime.block_on(async {
        budgeted.warm_up().await;
        let idle = budgeted.memory();
        let ids: Vec<String> = (0..touched).map(|i| format!("t{i}")).collect();
        budgeted.run(ids, OPEN).await;
        let cached = budgeted.metric("foldhost_aggregate_cache_bytes").await / 1048576.0;
        (idle, budgeted.memory(), cached)
    });
    drop(budgeted);

    println!(
        "| release `foldhost serve`, MiB | RSS | peak (VmHWM) | PSS | anon / file | goal | RSS/goal | RSS/idle |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    row(
        "idle: bank-account + bank-analytics loaded, a few requests (baseline)",
        idle,
        Some(THALO_IDLE_MIB),
        idle.rss,
    );
    row(
        "idle after a restart (plugins from the compiled cache)",
        restarted,
        Some(THALO_IDLE_MIB),
        idle.rss,
    );
    row(
        &format!(
            "after {DEPOSITS} Deposits over {ACCOUNTS} accounts, {CLIENTS} clients, bank-analytics live"
        ),
        after_load,
        Some(THALO_LOADED_MIB),
        idle.rss,
    );
    row(
        &format!(
            "the same host idle past --passivate-after {PASSIVATE_AFTER} ({passivated_states} states passivated)"
        ),
        passivated,
        None,
        idle.rss,
    );
    row(
        &format!(
            "the 80,000 Deposits again, --aggregate-cache {load_budget} ({small_live} states live, the rest dehydrated)"
        ),
        small_load,
        Some(THALO_LOADED_MIB),
        idle.rss,
    );
    // Every memory budget the budgeted server was given.
    let bound = budget_idle.rss + f64::from(CACHE_BUDGET_MIB + JOURNAL_CACHE_MIB);
    row(
        &format!("idle: bank-account, {}", budget_flags.join(" ")),
        budget_idle,
        None,
        budget_idle.rss,
    );
    row(
        &format!(
            "after opening {touched} accounts, the same flags (the aggregate cache holds {cached_mib:.1} MiB)"
        ),
        after_touch,
        Some(bound),
        budget_idle.rss,
    );
    println!(
        "\n{DEPOSITS} Deposits at {rate:.0} commands/s; on --aggregate-cache {load_budget} at {small_rate:.0} \
         commands/s ({:.2}× the default's). Goals: thalo {THALO_IDLE_MIB} MiB idle and {THALO_LOADED_MIB} MiB after ~80k commands (peers.md); \
         touched: idle + the aggregate cache's and the journal cache's budgets. Peak after touching: {:.1} MiB, {} the bound of {:.1} MiB.",
        small_rate / rate,
        after_touch.peak,
        if after_touch.peak <= bound {
            "within"
        } else {
            "OVER"
        },
        bound
    );
}

fn row(label: &str, memory: Memory, goal: Option<f64>, idle: f64) {
    let (goal, ratio) = match goal {
        Some(goal) => (format!("{goal:.0}"), format!("{:.2}×", memory.rss / goal)),
        None => ("".into(), "".into()),
    };
    println!(
        "| {label} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {goal} | {ratio} | {:.2}× |",
        memory.rss,
        memory.peak,
        memory.pss,
        memory.anon,
        memory.file,
        memory.rss / idle
    );
}

const OPEN: &str = r#"{"type":"Open","data":{"owner":"bench"}}"#;
const DEPOSIT: &str = r#"{"type":"Deposit","data":{"amount":1}}"#;

/// A running `foldhost serve`, killed on drop.
struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    url: String,
    client: reqwest::Client,
}

impl Server {
    /// Starts `foldhost serve` on `root/name` with these plugins and extra flags.
    fn start(root: &Path, name: &str, plugins: &[&str], flags: &[&str]) -> Server {
        let dir = root.join(name);
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for plugin in plugins {
            std::fs::copy(
                foldhost_plugins::path(plugin),
                plugin_dir.join(format!("{plugin}.wasm")),
            )
            .unwrap();
        }
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--plugins")
            .arg(&plugin_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            // bank-account logs every command, past the plugin log limit: the limiter's
            // warnings would fill the table's output.
            .env("RUST_LOG", "warn,plugin=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start foldhost serve");
        // Kept open: the server prints a second line, and a closed pipe would make it exit.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            _stdout: stdout,
            url,
            client: reqwest::Client::new(),
        }
    }

    /// Waits for the plugins to load, serves a few requests, and lets the host settle.
    async fn warm_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let health = self.get("/health").await;
            if !health.contains("loading_plugins") {
                break;
            }
            assert!(Instant::now() < deadline, "plugins still loading: {health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let id = format!("warm-{}", self.child.id());
        self.run(vec![id.clone()], OPEN).await;
        self.run(vec![id.clone()], DEPOSIT).await;
        self.get(&format!("/aggregates/bank-account/{id}")).await;
        self.get("/plugins").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// Sends `command` to each of `ids` in turn, from [`CLIENTS`] concurrent clients; every
    /// one must succeed.
    async fn run(&self, ids: Vec<String>, command: &'static str) {
        let ids = Arc::new(ids);
        let next = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS.min(ids.len()) {
            let (ids, next, client) = (ids.clone(), next.clone(), self.client.clone());
            let url = self.url.clone();
            clients.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { break };
                    let response = client
                        .post(format!("{url}/aggregates/bank-account/{id}/commands"))
                        .header("content-type", "application/json")
                        .body(command)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    assert_eq!(status, 200, "{}", response.text().await.unwrap());
                }
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
    }

    /// Opens [`ACCOUNTS`] accounts, sends them [`DEPOSITS`] Deposits in turn, waits for
    /// bank-analytics to catch up, and returns the memory then and the Deposits' commands/s.
    async fn load(&self) -> (Memory, f64) {
        let ids: Vec<String> = (0..ACCOUNTS).map(|i| format!("a{i}")).collect();
        self.run(ids.clone(), OPEN).await;
        let deposits = (0..DEPOSITS).map(|i| ids[i % ACCOUNTS].clone()).collect();
        let started = Instant::now();
        self.run(deposits, DEPOSIT).await;
        let rate = DEPOSITS as f64 / started.elapsed().as_secs_f64();
        self.wait_projection_caught_up().await;
        (self.memory(), rate)
    }

    /// Polls until bank-analytics has folded every event in the journal.
    async fn wait_projection_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let health: serde_json::Value =
                serde_json::from_str(&self.get("/health").await).unwrap();
            let projection: serde_json::Value =
                serde_json::from_str(&self.get("/projections/bank-analytics").await).unwrap();
            if projection["position"] == health["head_position"] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bank-analytics is not catching up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until no aggregate state is cached any more, then lets the host settle.
    async fn wait_all_passivated(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.metric("foldhost_aggregate_cache_streams").await > 0.0 {
            assert!(Instant::now() < deadline, "states are not passivated");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// One gauge from `GET /metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let metrics = self.get("/metrics").await;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    async fn get(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}");
        response.text().await.unwrap()
    }

    /// The process's memory now, from /proc/PID/status and smaps_rollup.
    fn memory(&self) -> Memory {
        let proc = |file: &str| {
            std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap()
        };
        let status = proc("status") + &proc("smaps_rollup");
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
                / 1024.0
        };
        Memory {
            rss: field("VmRSS"),
            peak: field("VmHWM"),
            pss: field("Pss"),
            anon: field("RssAnon"),
            file: field("RssFile") + field("RssShmem"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
