//! A real `foldhost serve` process for end-to-end tests.
//!
//! The binary is `foldhost-under-test`, a target of this package built from the very
//! `host/src/main.rs` of the `foldhost` binary: cargo builds a package's binaries before its
//! integration tests and hands them over in `CARGO_BIN_EXE_*`, which it does not do for
//! another package's binaries. So `cargo nextest run --workspace` from a clean clone needs no
//! extra build step and never runs a stale binary.
//!
//! Declared `pub mod serve;` in `tests/main.rs`, the one test crate, whose modules reach it as
//! `crate::serve`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The foldhost binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_foldhost-under-test");
/// Failure guard for anything that waits on the server.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// Failure guard for a plugins directory to load at start.
pub const LOADING_PATIENCE: Duration = Duration::from_secs(300);

/// A temporary data directory and plugin directory holding the example plugins.
pub struct Dirs {
    _root: tempfile::TempDir,
    pub data: PathBuf,
    pub plugins: PathBuf,
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let plugins = root.path().join("plugins");
        foldhost_plugins::copy_examples(&plugins).unwrap();
        Dirs {
            _root: root,
            data,
            plugins,
        }
    }
}

/// A running `foldhost serve`; killed when dropped unless stopped first.
pub struct Server {
    child: Child,
    /// Kept open so a late write to stdout cannot fail.
    _stdout: BufReader<ChildStdout>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Server {
    /// Starts a server on an ephemeral port with the example plugins and `admin_token`.
    pub fn start(dirs: &Dirs, admin_token: Option<&str>) -> Server {
        Self::start_with(&dirs.data, Some(&dirs.plugins), admin_token)
    }

    pub fn start_with(data: &Path, plugins: Option<&Path>, admin_token: Option<&str>) -> Server {
        let mut command = Self::command(data, plugins);
        if let Some(token) = admin_token {
            command.args(["--admin-token", token]);
        }
        Self::launch(command)
    }

    /// `foldhost serve` on `data` (and `plugins`) on an ephemeral port, for a test to add
    /// its own flags to before [`launch`](Self::launch).
    pub fn command(data: &Path, plugins: Option<&Path>) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("FOLDHOST_PLUGINS")
            .env_remove("FOLDHOST_ADMIN_TOKEN")
            .env_remove("FOLDHOST_ADMIN_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(plugins) = plugins {
            command.arg("--plugins").arg(plugins);
        }
        command
    }

    /// Starts a server whose journal is the PostgreSQL database at `journal` (shared with
    /// other servers), with its own data directory and the plugins in `plugins`.
    pub fn start_on_journal(data: &Path, plugins: &Path, journal: &str) -> Server {
        Self::start_on_journal_with(data, plugins, journal, None)
    }

    /// [`start_on_journal`](Self::start_on_journal) with an admin token.
    pub fn start_on_journal_with(
        data: &Path,
        plugins: &Path,
        journal: &str,
        admin_token: Option<&str>,
    ) -> Server {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--plugins")
            .arg(plugins)
            .args(["--journal", journal])
            // The shared test cluster of scripts/postgres runs with fsync=off.
            .arg("--unsafe-accept-non-durable-postgres")
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("FOLDHOST_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(token) = admin_token {
            command.args(["--admin-token", token]);
        }
        Self::launch(command)
    }

    /// Starts `command` (a `foldhost serve`) and waits until its plugins directory has loaded
    /// (it listens before that).
    pub fn launch(command: Command) -> Server {
        let server = Self::launch_listening(command);
        server.wait_plugins_loaded();
        server
    }

    /// Starts `command` (a `foldhost serve`) and waits only for the address it listens on.
    pub fn launch_listening(mut command: Command) -> Server {
        command.env_remove("FOLDHOST_JOURNAL");
        let mut child = command.spawn().expect("starting foldhost");
        let stdout = child.stdout.take().unwrap();
        // Read the first line on a thread so a server that never prints fails the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), stdout));
        });
        let (line, stdout) = match rx.recv_timeout(PATIENCE) {
            Ok((Ok(line), stdout)) => (line, stdout),
            other => {
                let _ = child.kill();
                panic!(
                    "foldhost printed no address: {:?}",
                    other.map(|(line, _)| line)
                );
            }
        };
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Server {
            child,
            _stdout: stdout,
            url,
        }
    }

    /// Polls `GET /health` until it no longer says `loading_plugins` (a failure guard: an
    /// 18 MB Python component takes a minute to compile in a debug build on a busy machine).
    pub fn wait_plugins_loaded(&self) {
        let deadline = Instant::now() + LOADING_PATIENCE;
        loop {
            let health = self.get_blocking("/health");
            if !health.contains("\"loading_plugins\"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the plugins directory did not load: {health}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The raw HTTP response to `GET path`, without an async runtime.
    fn get_blocking(&self, path: &str) -> String {
        let address = self.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(address).expect("connecting to foldhost");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's resident memory and thread count, from /proc.
    pub fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }

    /// The text of its `GET /metrics` (Prometheus).
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        let response = client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "kill failed");
        self.wait()
    }

    /// Waits for a server that stops by itself to exit.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "foldhost did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a process holds, read from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// The largest resident set size so far, in KiB.
    pub peak_rss_kib: u64,
    pub threads: u64,
}

impl Usage {
    pub fn of(pid: i32) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
            line.trim().trim_end_matches(" kB").parse().unwrap()
        };
        Usage {
            rss_kib: field("VmRSS:"),
            peak_rss_kib: field("VmHWM:"),
            threads: field("Threads:"),
        }
    }
}

/// A status and JSON body.
pub async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("status {status}: body is not JSON ({error}): {text:?}"));
    (status, body)
}

/// Every event of the global log, paging through `GET /events` (from the position after the
/// last one read: the log may skip positions).
pub async fn all_events(client: &reqwest::Client, server: &Server) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    loop {
        let from = events
            .last()
            .map_or(1, |e| e["position"].as_u64().unwrap() + 1);
        let response = client
            .get(server.url(&format!("/events?from_position={from}&limit=1000")))
            .send()
            .await
            .unwrap();
        let (status, page) = json(response).await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// Reads Server-Sent Events `data` payloads as JSON from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message's `data` as JSON (`None` when the feed ends); keep-alives skipped.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let message: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let message = String::from_utf8(message).unwrap();
                let data: Vec<&str> = message
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(|data| data.strip_prefix(' ').unwrap_or(data))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(serde_json::from_str(&data.join("\n")).unwrap());
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("the live feed stalled")
                .unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

/// The value of metric `name` (a series without labels) in the Prometheus text `metrics`.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.split(' ').next() == Some(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}
