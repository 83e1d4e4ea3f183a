//! The plugin sandbox under attack by real components: `hostile` and
//! `mischief` (Rust) and `hoarder` (WebAssembly text). Each attack
//! ends in a one-line error for the attacking plugin alone, the host's memory
//! stays bounded, and every other plugin keeps serving.

use crate::serve;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhost::journal::{Journal, JournalConfig};
use foldhost::runtime::{LimitPolicy, Limits, PluginLimits, Runtime, RuntimeConfig, RuntimeError};
use foldhost_plugins as artifacts;
use reqwest::Client;
use serde_json::{Value, json};
use serve::{BIN, Dirs, PATIENCE, Server, json, metric};

const MIB: usize = 1 << 20;

/// A runtime on a fresh journal with `overrides` of the default limits.
struct Host {
    _dir: tempfile::TempDir,
    runtime: Arc<Runtime>,
}

impl Host {
    fn new(overrides: &[&str]) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let journal =
            Journal::open(dir.path().join("journal.redb"), JournalConfig::default()).unwrap();
        let overrides: Vec<PluginLimits> = overrides.iter().map(|o| o.parse().unwrap()).collect();
        let config = RuntimeConfig {
            limits: LimitPolicy::new(Limits::default(), &overrides),
            ..RuntimeConfig::default()
        };
        Host {
            runtime: Runtime::new(journal, config).unwrap(),
            _dir: dir,
        }
    }

    async fn load(&self, artifact: &str) -> Result<(), RuntimeError> {
        let bytes = std::fs::read(artifacts::path(artifact)).unwrap();
        self.load_bytes(bytes, artifact).await
    }

    async fn load_bytes(&self, bytes: Vec<u8>, origin: &str) -> Result<(), RuntimeError> {
        self.runtime.load(bytes, origin).await.map(drop)
    }

    /// Runs `command` (`"Type"` or `{"Type": data}`); returns the state after it, or why
    /// that could not be computed (the events are stored either way).
    async fn command(
        &self,
        plugin: &str,
        id: &str,
        command: Value,
    ) -> Result<Result<Value, String>, RuntimeError> {
        let (kind, data) = match command {
            Value::String(kind) => (kind, Value::Null),
            Value::Object(map) => {
                let (kind, data) = map.into_iter().next().unwrap();
                (kind, data)
            }
            other => panic!("not a command: {other}"),
        };
        let data = serde_json::to_vec(&data).unwrap();
        let outcome = self.runtime.execute(plugin, id, &kind, data).await?;
        Ok(outcome.state)
    }

    /// Projection `plugin`'s answer to query `name`, once its fold has started.
    async fn query(
        &self,
        plugin: &str,
        name: &str,
        args: Value,
    ) -> Result<Result<Value, String>, RuntimeError> {
        let projection = self.runtime.projection(plugin)?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(answer) = projection.query(name, &args).await? {
                return Ok(answer);
            }
            assert!(Instant::now() < deadline, "{plugin} never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The other plugins still serve: a deposit lands, the projection answers.
    async fn others_still_serve(&self, deposits: &mut u64) {
        self.command("bank-account", "eve", json!({"Deposit": {"amount": 1}}))
            .await
            .unwrap()
            .unwrap();
        *deposits += 1;
        let (_, state) = self
            .runtime
            .aggregate_state("bank-account", "eve", None)
            .await
            .unwrap();
        assert_eq!(state["balance"], json!(*deposits));
    }
}

/// Asserts `outcome` is a trap or failure of `plugin` alone whose one-line
/// message contains `expect`.
fn assert_contained<T: std::fmt::Debug>(
    outcome: Result<T, RuntimeError>,
    plugin: &str,
    expect: &str,
) {
    let error = match outcome {
        Err(error @ (RuntimeError::Trap { .. } | RuntimeError::PluginFailed { .. })) => error,
        other => {
            // An oversized answer that got through would fill the terminal.
            let got: String = format!("{other:?}").chars().take(300).collect();
            panic!("expected {plugin} to fail with {expect:?}, got {got}")
        }
    };
    let (RuntimeError::Trap { plugin: who, .. } | RuntimeError::PluginFailed { plugin: who, .. }) =
        &error
    else {
        unreachable!()
    };
    assert_eq!(who, plugin, "{error}");
    let message = error.to_string();
    assert!(message.contains(expect), "{message}");
    assert!(!message.contains('\n'), "not one line: {message}");
}

fn refusal(outcome: Result<(), RuntimeError>) -> String {
    match outcome {
        Err(error @ RuntimeError::InvalidPlugin { .. }) => error.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_declaring_more_than_the_sandbox_holds_are_refused_at_load() {
    let host = Host::new(&["hoarder:memory=64KiB"]);
    let many = refusal(host.load(artifacts::HOARDER_MEMORIES).await);
    assert!(
        many.contains("declares 5 linear memories; a plugin may have at most 4"),
        "{many}"
    );
    let table = refusal(host.load(artifacts::HOARDER_TABLE).await);
    assert!(
        table.contains(
            "declares 152.7 MiB of initial memories and tables; its memory limit is 64.0 MiB"
        ),
        "{table}"
    );
    // 65 instances of an empty module: a real component, refused before it is
    // compiled, let alone instantiated.
    let instances = format!(
        "(component (core module $m) {})",
        "(core instance (instantiate $m)) ".repeat(65)
    );
    let crowd = refusal(
        host.load_bytes(wat::parse_str(instances).unwrap(), "crowd")
            .await,
    );
    assert!(
        crowd.contains("declares 65 core instances; a plugin may have at most 64"),
        "{crowd}"
    );
    // Its own limit applies once a plugin has named itself: hoarder's two
    // memories of one page are more than 64 KiB.
    let own = refusal(host.load(artifacts::HOARDER).await);
    assert!(
        own.contains(
            "declares 128.0 KiB of initial memories and tables; its memory limit is 64.0 KiB"
        ),
        "{own}"
    );
    assert!(host.runtime.list().is_empty());

    // Within its limits the same plugin loads and serves.
    let host = Host::new(&[]);
    host.load(artifacts::HOARDER).await.unwrap();
    host.command("hoarder", "h", json!("Ping"))
        .await
        .unwrap()
        .unwrap();
}

/// A 64-bit table's `table.grow` can overflow, which wasmtime reports to the store's budget
/// as a failed growth it never asked about; refunding the last grant then would let
/// `hoarder-table64`'s start hold 128 MiB against a 64 MiB limit with both budgets unchanged.
/// The engine has no memory64, so the component never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_with_a_64_bit_table_is_refused_at_load() {
    let host = Host::new(&[]);
    let wide = refusal(host.load(artifacts::HOARDER_TABLE64).await);
    assert!(
        wide.contains("not a valid WebAssembly component")
            && wide.contains("memory64 must be enabled for 64-bit tables"),
        "{wide}"
    );
    assert!(!wide.contains('\n'), "not one line: {wide}");
    assert!(host.runtime.list().is_empty());
    assert_eq!(host.runtime.engine().memory_budget().used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_events_are_bounded_per_plugin() {
    let host = Host::new(&["hostile:answer=1MiB,events=100", "mischief:answer=1MiB"]);
    for plugin in [
        artifacts::HOSTILE,
        artifacts::MISCHIEF,
        artifacts::BANK_ACCOUNT,
    ] {
        host.load(plugin).await.unwrap();
    }
    let mut deposits = 0;
    host.command("bank-account", "eve", json!({"Open": {"owner": "Eve"}}))
        .await
        .unwrap()
        .unwrap();
    host.command("hostile", "h", json!("Ping"))
        .await
        .unwrap()
        .unwrap();
    let journal = host.runtime.journal().clone();
    let version = || journal.stream_version("hostile-h").unwrap();
    assert_eq!(version(), Some(1));

    // Too many events: nothing is appended.
    let flood = host
        .command(
            "hostile",
            "h",
            json!({"Flood": {"events": 101, "bytes": 1}}),
        )
        .await;
    assert_contained(
        flood,
        "hostile",
        "emitted 101 events; its limit is 100 per command",
    );
    assert_eq!(version(), Some(1));
    host.others_still_serve(&mut deposits).await;

    // Too many bytes: the host stops copying at the answer limit.
    let heavy = host
        .command(
            "hostile",
            "h",
            json!({"Flood": {"events": 4, "bytes": 300_000}}),
        )
        .await;
    assert_contained(
        heavy,
        "hostile",
        "handling command Flood on hostile-h: handed the host more than 1.0 MiB in one call",
    );
    assert_eq!(version(), Some(1));
    host.others_still_serve(&mut deposits).await;

    // Up to the limits, a command's events land.
    host.command(
        "hostile",
        "h",
        json!({"Flood": {"events": 100, "bytes": 1000}}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(version(), Some(101));

    // A state too large to render: the event is stored, the state is not shown.
    let bloated = host
        .command("hostile", "b", json!({"Bloat": {"bytes": 2 * MIB}}))
        .await
        .unwrap();
    assert!(
        bloated
            .as_ref()
            .is_err_and(|e| e.contains("handed the host more than 1.0 MiB")),
        "{bloated:?}"
    );
    let state = host.runtime.aggregate_state("hostile", "b", None).await;
    assert_contained(
        state,
        "hostile",
        "rendering the state of hostile-b: handed the host more than 1.0 MiB",
    );
    host.command("hostile", "h", json!("Ping"))
        .await
        .unwrap()
        .unwrap();
    host.others_still_serve(&mut deposits).await;

    // A query answer too large.
    let answered = host.query("mischief", "huge", json!({"mib": 2}));
    assert_contained(
        answered.await,
        "mischief",
        "answering query huge: handed the host more than 1.0 MiB",
    );
    let small = host.query("mischief", "count", Value::Null).await;
    assert!(
        matches!(&small, Ok(Ok(count)) if count["pongs"].is_u64()),
        "{small:?}"
    );
    host.others_still_serve(&mut deposits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_trapped_rendering_its_state_is_not_reused() {
    let host = Host::new(&[]);
    host.load(artifacts::HOSTILE).await.unwrap();
    host.load(artifacts::BANK_ACCOUNT).await.unwrap();
    host.command("bank-account", "eve", json!({"Open": {"owner": "Eve"}}))
        .await
        .unwrap()
        .unwrap();
    // Rendering a state of 17 MB (built twice in the plugin) runs out of its 64 MiB: the event
    // is stored, the state is not shown.
    let bloated = host
        .command("hostile", "b", json!({"Bloat": {"bytes": 17_000_000}}))
        .await
        .unwrap();
    assert!(
        bloated
            .as_ref()
            .is_err_and(|e| e.contains("exceeded its memory limit")),
        "{bloated:?}"
    );
    // The trapped store is dropped: the next command meets the plugin, not an instance that
    // can no longer be entered ("wasm trap: cannot enter component instance").
    let ping = host.command("hostile", "b", json!("Ping")).await.unwrap();
    assert!(
        ping.as_ref()
            .is_err_and(|e| e.contains("exceeded its memory limit")),
        "{ping:?}"
    );
    let state = host.runtime.aggregate_state("hostile", "b", None).await;
    assert_contained(
        state,
        "hostile",
        "rendering the state of hostile-b: exceeded its memory limit",
    );
    let mut deposits = 0;
    host.others_still_serve(&mut deposits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuel_budget_stops_a_runaway_call_before_its_deadline() {
    let host = Host::new(&["hostile:fuel=20000000"]);
    host.load(artifacts::HOSTILE).await.unwrap();
    host.load(artifacts::BANK_ACCOUNT).await.unwrap();
    host.command("bank-account", "eve", json!({"Open": {"owner": "Eve"}}))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        let outcome = host.command("hostile", "h", json!("Loop")).await;
        assert_contained(
            outcome,
            "hostile",
            "handling command Loop on hostile-h: ran out of fuel: its budget is 20000000 per call",
        );
        host.command("hostile", "h", json!("Ping"))
            .await
            .unwrap()
            .unwrap();
    }
    // Plugins without a budget are metered but never run out.
    let mut deposits = 0;
    host.others_still_serve(&mut deposits).await;
}

/// `value` for a failure message, cut to a readable length.
fn short(value: &Value) -> String {
    value.to_string().chars().take(300).collect()
}

/// `VmHWM` (peak resident set) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_contains_every_attack_with_its_configured_limits() {
    let dirs = Dirs::new();
    for plugin in [artifacts::HOSTILE, artifacts::MISCHIEF, artifacts::HOARDER] {
        std::fs::copy(
            artifacts::path(plugin),
            dirs.plugins.join(format!("{plugin}.wasm")),
        )
        .unwrap();
    }
    let stderr = dirs.data.with_extension("stderr");
    let memory_limit = 60 * MIB;
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--data")
        .arg(&dirs.data)
        .arg("--plugins")
        .arg(&dirs.plugins)
        .args(["--listen", "127.0.0.1:0", "--call-timeout", "500ms"])
        .env("FOLDHOST_PLUGIN_MEMORY", "60MiB")
        .env(
            "FOLDHOST_PLUGIN_LIMITS",
            "hostile:answer=1MiB,events=50,logs=10;mischief:answer=1MiB",
        )
        .env("RUST_LOG", "info")
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env_remove("FOLDHOST_CALL_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    // A safety net for a shared machine: should a guard regress, the 16 GiB
    // table fails to allocate (and this test fails) instead of summoning the
    // OOM killer.
    cap_data_at_4_gib(&mut command);
    let server = Server::launch(command);
    let client = Client::new();
    let command = |plugin: &'static str, id: &'static str, body: Value| {
        let (client, url) = (
            client.clone(),
            server.url(&format!("/aggregates/{plugin}/{id}/commands")),
        );
        async move { json(client.post(url).json(&body).send().await.unwrap()).await }
    };
    let get = |path: String| {
        let (client, url) = (client.clone(), server.url(&path));
        async move { json(client.get(url).send().await.unwrap()).await }
    };
    let mut deposits = 0u64;
    let others_still_serve = |deposits: u64| async move {
        let (status, body) = command(
            "bank-account",
            "eve",
            json!({"type": "Deposit", "data": {"amount": 1}}),
        )
        .await;
        assert_eq!(
            (status, &body["state"]["balance"]),
            (200, &json!(deposits)),
            "{body}"
        );
        let (status, body) = get("/projections/bank-analytics".into()).await;
        assert_eq!(status, 200, "{body}");
        let (status, pongs) = get("/projections/mischief/query/count".into()).await;
        assert_eq!(status, 200, "{pongs}");
    };

    // Warm up every plugin, then take the baseline.
    let (status, body) = command(
        "bank-account",
        "eve",
        json!({"type": "Open", "data": {"owner": "Eve"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for plugin in ["hostile", "hoarder"] {
        let (status, body) = command(plugin, "h", json!({"type": "Ping"})).await;
        assert_eq!(status, 200, "{body}");
    }
    deposits += 1;
    others_still_serve(deposits).await;
    let baseline = peak_rss(server.pid() as u32);

    for (plugin, body, expect) in [
        (
            "hoarder",
            json!({"type": "GrowTable"}),
            "exceeded its memory limit of 60.0 MiB (memories and tables together): a table asked for 32.0 GiB more",
        ),
        (
            "hoarder",
            json!({"type": "GrowMemories"}),
            "exceeded its memory limit of 60.0 MiB (memories and tables together): a memory asked for 56.0 MiB more",
        ),
        (
            "hostile",
            json!({"type": "Allocate"}),
            "exceeded its memory limit of 60.0 MiB",
        ),
        (
            "hostile",
            json!({"type": "Loop"}),
            "exceeded its time limit of 500ms per call",
        ),
        (
            "hostile",
            json!({"type": "Flood", "data": {"events": 51, "bytes": 1}}),
            "emitted 51 events; its limit is 50 per command",
        ),
        (
            "hostile",
            json!({"type": "Flood", "data": {"events": 4, "bytes": 300_000}}),
            "handed the host more than 1.0 MiB in one call",
        ),
    ] {
        let (status, answer) = command(plugin, "h", body.clone()).await;
        assert_eq!(status, 500, "{body}: {}", short(&answer));
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("plugin {plugin} ")), "{error}");
        assert!(error.contains(expect), "{body}: {error}");
        let (status, answer) = command(plugin, "h", json!({"type": "Ping"})).await;
        assert_eq!(status, 200, "{plugin} recovers: {}", short(&answer));
        deposits += 1;
        others_still_serve(deposits).await;
    }
    let (status, answer) = get("/projections/mischief/query/huge?mib=2".into()).await;
    assert_eq!(status, 500, "{}", short(&answer));
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("handed the host more than 1.0 MiB")),
        "{}",
        short(&answer)
    );
    deposits += 1;
    others_still_serve(deposits).await;

    // A log flood: ten lines a second pass, the rest are counted and summarised.
    let marker = "x".repeat(37);
    let (status, answer) = command(
        "hostile",
        "h",
        json!({"type": "Chatter", "data": {"lines": 5000, "bytes": 37}}),
    )
    .await;
    assert_eq!(status, 200, "{}", short(&answer));

    let grown = peak_rss(server.pid() as u32).saturating_sub(baseline);
    assert!(
        grown < memory_limit + 24 * MIB,
        "peak RSS grew by {} MiB under attack",
        grown >> 20
    );

    let metrics = server.metrics(&client).await;
    let dropped: u64 = metrics
        .lines()
        .find(|line| {
            line.starts_with("foldhost_plugin_log_lines_dropped_total")
                && line.contains("plugin=\"hostile\"")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines metric in:\n{metrics}"));
    server.terminate();
    let mut log = String::new();
    std::fs::File::open(&stderr)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let written = log.lines().filter(|line| line.contains(&marker)).count() as u64;
    assert!(
        (10..=15).contains(&written),
        "{written} lines of the flood were written"
    );
    assert_eq!(written + dropped, 5000);
    let summaries: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("log lines over its limit of 10 lines per second"))
        .collect();
    assert!(
        !summaries.is_empty() && summaries.len() <= 2,
        "{summaries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_budget_bounds_plugin_memory_across_concurrent_instances() {
    // Each GrowMemories touches 56 MiB of its instance's 60 MiB, then traps on its limit;
    // commands to distinct ids run at once, so without a host-wide budget 48 of them held
    // 48 x 56 MiB between them. The budget lets about four grow at a time.
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 2;
    let budget = 240 * MIB;
    let dirs = Dirs::new();
    std::fs::copy(
        artifacts::path(artifacts::HOARDER),
        dirs.plugins.join("hoarder.wasm"),
    )
    .unwrap();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    // A deadline no call meets on a busy machine: memory, not time, is under test.
    command.args([
        "--call-timeout",
        "10s",
        "--plugin-memory",
        "60MiB",
        "--plugins-memory-budget",
        "240MiB",
        "--aggregate-cache",
        "32MiB",
    ]);
    // A safety net for a shared machine, as above: should the budget regress, the host fails
    // to allocate instead of summoning the OOM killer.
    cap_data_at_4_gib(&mut command);
    let server = Server::launch(command);
    let client = Client::new();
    let post = |plugin: &str, id: String, body: Value| {
        let (client, url) = (
            client.clone(),
            server.url(&format!("/aggregates/{plugin}/{id}/commands")),
        );
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            let (status, answer) = json(response).await;
            (status, retry_after, answer)
        }
    };
    let (status, _, body) = post(
        "bank-account",
        "eve".into(),
        json!({"type": "Open", "data": {"owner": "Eve"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post("hoarder", "h".into(), json!({"type": "Ping"})).await;
    assert_eq!(status, 200, "{body}");
    let baseline = peak_rss(server.pid() as u32);

    let mut storm = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let grows: Vec<_> = (0..ROUNDS)
            .map(|round| {
                let id = format!("grow-{client}-{round}");
                post("hoarder", id, json!({"type": "GrowMemories"}))
            })
            .collect();
        storm.spawn(async move {
            let mut answers = Vec::new();
            for grow in grows {
                answers.push(grow.await);
            }
            answers
        });
    }
    let answers: Vec<_> = storm.join_all().await.into_iter().flatten().collect();
    let mut refused = 0;
    for (status, retry_after, answer) in &answers {
        let error = answer["error"].as_str().unwrap_or_default();
        match status {
            // Its own limit: the second memory's 56 MiB.
            500 => assert!(
                error.contains("exceeded its memory limit of 60.0 MiB"),
                "{}",
                short(answer)
            ),
            // The host's: the others held the budget. A transient refusal of this command.
            503 => {
                refused += 1;
                assert!(
                    error.starts_with("plugin hoarder could not get memory")
                        && error
                            .contains("the host's plugin memory budget of 240.0 MiB is exhausted"),
                    "{}",
                    short(answer)
                );
                assert!(retry_after, "a 503 says when to retry");
            }
            other => panic!("GrowMemories answered {other}: {}", short(answer)),
        }
    }
    let grown = peak_rss(server.pid() as u32).saturating_sub(baseline);
    assert!(
        grown < budget + 48 * MIB,
        "peak RSS grew by {} MiB on a budget of {} MiB ({refused} of {} refused)",
        grown >> 20,
        budget >> 20,
        answers.len()
    );
    assert!(refused > 0, "no command met the host's budget");

    // Every store gave its memory back: the others serve, and hoarder grows again.
    let metrics = server.metrics(&client).await;
    assert_eq!(
        metric(&metrics, "foldhost_plugin_memory_budget_bytes"),
        budget as f64
    );
    assert!(metric(&metrics, "foldhost_plugin_memory_refusals_total") >= f64::from(refused));
    let held = metric(&metrics, "foldhost_plugin_memory_bytes");
    assert!(held < (16 * MIB) as f64, "{held} bytes still held");
    let (status, _, body) = post(
        "bank-account",
        "eve".into(),
        json!({"type": "Deposit", "data": {"amount": 1}}),
    )
    .await;
    assert_eq!(
        (status, &body["state"]["balance"]),
        (200, &json!(1)),
        "{body}"
    );
    let (status, _, body) = post("hoarder", "h".into(), json!({"type": "Ping"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post("hoarder", "alone".into(), json!({"type": "GrowMemories"})).await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("a memory asked for 56.0 MiB more with 56.1 MiB in use"),
        "{error}"
    );
}

/// Caps the data segment of the process `command` starts at 4 GiB.
fn cap_data_at_4_gib(command: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            match libc::setrlimit(libc::RLIMIT_DATA, &cap) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}
