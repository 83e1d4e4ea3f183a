//! Commands over HTTP measured from outside, as users would: `wrk` (64 connections) against
//! the release `foldhost serve` with the real bank-account plugin, every command fsync-durable
//! before its answer.
//!
//! `cargo bench -p foldhost-tests --bench wrk` (scripts/bench installs Debian's `wrk` first;
//! FOLDHOST_BENCH_SECONDS per scenario, default 10). The baseline, measured in the same run, is
//! the same load spread over 1,000 accounts: the hot-account row prints its ratio to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The release `foldhost` binary (the package's copy of host/src/main.rs, see tests/serve).
const BIN: &str = env!("CARGO_BIN_EXE_foldhost-under-test");
const ACCOUNTS: usize = 1000;
const CONNECTIONS: usize = 64;

/// Picks an account per request (all of them, or the hot one) and prints one parseable line.
const SCRIPT: &str = r#"
wrk.method = "POST"
wrk.body = '{"type":"Deposit","data":{"amount":1}}'
wrk.headers["Content-Type"] = "application/json"
local accounts = tonumber(os.getenv("WRK_ACCOUNTS"))
request = function()
  local id = "hot"
  if accounts > 0 then id = "a" .. math.random(0, accounts - 1) end
  return wrk.format(nil, "/aggregates/bank-account/" .. id .. "/commands")
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.3f %.3f %d %d\n", summary.requests, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.timeout + summary.errors.connect
      + summary.errors.read + summary.errors.write))
end
"#;

struct Result {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    let seconds: f64 = std::env::var("FOLDHOST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: run scripts/bench, or apt-get install wrk");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        foldhost_plugins::path(foldhost_plugins::BANK_ACCOUNT),
        plugins.join("bank-account.wasm"),
    )
    .unwrap();
    let script = dir.path().join("deposit.lua");
    std::fs::write(&script, SCRIPT).unwrap();
    let (mut server, url) = serve(&dir.path().join("data"), &plugins);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(open_accounts(&url));

    println!(
        "| workload ({CONNECTIONS} wrk connections, release binary) | commands/s | p50 ms | p99 ms | ratio |"
    );
    println!("|---|---:|---:|---:|---:|");
    let spread = run_wrk(&url, &script, ACCOUNTS, seconds);
    println!(
        "| Deposit, spread over {ACCOUNTS} accounts (baseline) | {:.0} | {:.2} | {:.2} | 1.00× |",
        spread.per_second, spread.p50_ms, spread.p99_ms
    );
    let hot = run_wrk(&url, &script, 0, seconds);
    println!(
        "| Deposit, one hot account | {:.0} | {:.2} | {:.2} | {:.2}× |",
        hot.per_second,
        hot.p50_ms,
        hot.p99_ms,
        hot.per_second / spread.per_second
    );
    let _ = server.kill();
    let _ = server.wait();
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
        // bank-account logs every command, past the plugin log limit: the limiter's
        // warnings would fill the table's output.
        .env("RUST_LOG", "warn,plugin=error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start foldhost serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// Opens the accounts the scenarios deposit into.
async fn open_accounts(url: &str) {
    let client = reqwest::Client::new();
    let ids = (0..ACCOUNTS)
        .map(|i| format!("a{i}"))
        .chain(["hot".to_owned()]);
    let open = serde_json::json!({"type": "Open", "data": {"owner": "bench"}});
    let mut tasks = Vec::new();
    for id in ids {
        let (client, open) = (client.clone(), open.clone());
        let url = format!("{url}/aggregates/bank-account/{id}/commands");
        tasks.push(tokio::spawn(async move {
            let response = client.post(&url).json(&open).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }));
        if tasks.len() == CONNECTIONS {
            for task in tasks.drain(..) {
                task.await.unwrap();
            }
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// One wrk run of `seconds`: deposits into `accounts` random accounts, or the hot one if 0.
fn run_wrk(url: &str, script: &Path, accounts: usize, seconds: f64) -> Result {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{CONNECTIONS}")])
        .arg(format!("-d{}s", seconds.ceil() as u64))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .env("WRK_ACCOUNTS", accounts.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run wrk");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("wrk printed no result:\n{stdout}"))
        .split(' ')
        .map(|field| field.parse().unwrap())
        .collect();
    let [requests, micros, p50_ms, p99_ms, bad_status, errors] = fields[..] else {
        panic!("unexpected wrk result {fields:?}");
    };
    assert_eq!(
        (bad_status, errors),
        (0.0, 0.0),
        "every command must succeed:\n{stdout}"
    );
    Result {
        per_second: requests / Duration::from_micros(micros as u64).as_secs_f64(),
        p50_ms,
        p99_ms,
    }
}
