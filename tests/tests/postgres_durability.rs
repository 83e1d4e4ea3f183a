//! The PostgreSQL journal is only as durable as its server, so it checks the server's settings
//! at start: PostgreSQL's defaults are accepted; `foldhost serve` refuses the shared test cluster
//! (`fsync=off`, see scripts/postgres) unless told to accept the risk.

use crate::pgcluster;
use crate::serve;

use std::process::{Command, Stdio};
use std::time::Instant;

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};

#[test]
fn a_server_with_default_durability_settings_is_accepted() {
    let cluster = pgcluster::Cluster::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let journal = runtime
        .block_on(Journal::open_postgres(
            &cluster.url(),
            JournalConfig::default(),
        ))
        .expect("fsync, synchronous_commit and full_page_writes are on by default");
    let event = NewEvent::json("Happened", &serde_json::json!({}));
    let appended = runtime.block_on(journal.append("s", ExpectedVersion::NoStream, vec![event]));
    assert_eq!(appended.unwrap().last_position, 1);
}

#[test]
fn serve_refuses_a_server_without_fsync_and_names_the_way_out() {
    let url = std::env::var("FOLDHOST_TEST_POSTGRES").expect(
        "FOLDHOST_TEST_POSTGRES is not set: run scripts/test (or `. scripts/postgres` first)",
    );
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(serve::BIN)
        .arg("serve")
        .arg("--data")
        .arg(data.path())
        .args(["--journal", &url, "--listen", "127.0.0.1:0"])
        .env_remove("FOLDHOST_UNSAFE_ACCEPT_NON_DURABLE_POSTGRES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > serve::PATIENCE {
            child.kill().unwrap();
            panic!("foldhost serve started on a PostgreSQL server with fsync=off");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("fsync=off"), "{stderr}");
    assert!(
        stderr.contains("--unsafe-accept-non-durable-postgres"),
        "{stderr}"
    );
    // With the flag it serves: tests/multihost.rs starts its hosts on this cluster that way.
}
