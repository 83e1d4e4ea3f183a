//! A private PostgreSQL 15 cluster for fault tests that stop, restart or break the server.
//!
//! The shared cluster of `scripts/postgres` serves many tests at once, so a test that restarts
//! PostgreSQL gets one of its own: `initdb` into a temporary directory, a free loopback port,
//! and `pg_ctl` to start, restart and stop it. Durability settings are PostgreSQL's defaults
//! (`fsync=on`, `synchronous_commit=on`). `scripts/postgres` installs the binaries.
//!
//! Declared in `tests/main.rs` beside `serve`; test modules reach it as `crate::pgcluster`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian's PostgreSQL 15 keeps `initdb` and `pg_ctl`.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster, stopped (immediately) and deleted when dropped.
pub struct Cluster {
    root: tempfile::TempDir,
    port: u16,
    /// Server settings beyond the port and socket (`-c name=value ...`).
    settings: String,
}

impl Cluster {
    /// Creates and starts a cluster on a free loopback port.
    pub fn start() -> Cluster {
        Self::create().started()
    }

    /// [`start`](Self::start) with TLS on (`ssl=on`): a certificate for `127.0.0.1` signed by
    /// a CA made for the test ([`ca`](Self::ca)); plain connections are still accepted.
    pub fn start_with_tls() -> Cluster {
        let mut cluster = Self::create();
        let tls = cluster.root.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        crate::certificates::make(&tls, "127.0.0.1", "IP:127.0.0.1");
        // PostgreSQL wants its key private to the user it runs as.
        if as_root() {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&tls));
        }
        run(Command::new("chmod").arg("600").arg(tls.join("server.key")));
        cluster.settings = format!(
            "-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
            tls.display()
        );
        cluster.started()
    }

    /// The CA that signed the server's certificate (with [`start_with_tls`](Self::start_with_tls)).
    pub fn ca(&self) -> PathBuf {
        self.root.path().join("tls/ca.crt")
    }

    /// A CA that did not sign it.
    pub fn other_ca(&self) -> PathBuf {
        self.root.path().join("tls/other-ca.crt")
    }

    fn create() -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("foldhost-pgcluster")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            root,
            port,
            settings: String::new(),
        };
        if as_root() {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            run(Command::new("chown")
                .arg("postgres:")
                .arg(cluster.root.path()));
            run(Command::new("chmod").arg("755").arg(cluster.root.path()));
        }
        run(cluster.pg("initdb").arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]));
        cluster
    }

    fn started(self) -> Cluster {
        self.pg_ctl("start");
        self
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast shutdown (`-m fast`: clients are disconnected) and a start on the same port.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    /// Stops the server; clients are disconnected (`-m fast`).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts a stopped server again.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    /// The cluster's data directory (owned by the postgres user when the test runs as root).
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.root.path().join("log")
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {}",
            self.port,
            self.root.path().display(),
            self.settings
        );
        let mut command = self.pg("pg_ctl");
        command
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-m", "fast", "-o", &options, action]);
        if !command.status().unwrap().success() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!("pg_ctl {action} failed:\n{log}");
        }
    }

    /// A PostgreSQL binary, run as the postgres user when the test runs as root.
    fn pg(&self, program: &str) -> Command {
        let program = Path::new(BIN).join(program);
        let mut command = if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.stdout(Stdio::null());
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

fn as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
