//! Storage faults, really provoked: a `foldhost serve` whose data directory is on a small
//! tmpfs that fills up while clients append.

use crate::serve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::json;
use serve::{PATIENCE, Server};
use uuid::Uuid;

/// A tmpfs of `size` mounted on a temporary directory (needs root), unmounted when dropped.
pub(crate) struct SmallDisk {
    root: tempfile::TempDir,
}

impl SmallDisk {
    pub(crate) fn mount(size: &str) -> SmallDisk {
        let root = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(root.path())
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs failed: this test must run as root"
        );
        SmallDisk { root }
    }

    pub(crate) fn path(&self) -> &Path {
        self.root.path()
    }

    /// Makes it read-only: every write fails with EROFS, even root's.
    pub(crate) fn make_read_only(&self) {
        let remounted = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.root.path())
            .status()
            .unwrap();
        assert!(remounted.success(), "remounting the tmpfs read-only failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.root.path())
            .status();
    }
}

/// Fills the filesystem of `path` with a file until it is full; returns the file.
pub(crate) fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    ballast
}

#[derive(Default)]
struct Outcomes {
    /// Acknowledged appends: event id → stream.
    acknowledged: HashMap<Uuid, String>,
    /// Appends answered with an error: whether they landed is for the journal to say.
    failed: HashMap<Uuid, String>,
    /// Every status an append was answered with.
    statuses: Vec<u16>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_host_and_loses_no_acknowledged_event() {
    let disk = SmallDisk::mount("32m");
    let data = disk.path().join("data");
    let server = Server::start_with(&data, None, None);
    let client = Client::new();
    let (status, _) = serve::json(client.get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    // Leave the journal about 2 MB to grow into, then let clients fill it.
    let ballast = fill(disk.path());
    let len = std::fs::metadata(&ballast).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len(len.saturating_sub(2 << 20))
        .unwrap();

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let url = server.url.clone();
    let appenders: Vec<_> = (0..6)
        .map(|w| {
            let (client, outcomes, url) = (client.clone(), outcomes.clone(), url.clone());
            tokio::spawn(async move {
                let stream = format!("filler-{w}");
                let pad = "p".repeat(8_000);
                for _ in 0..5_000 {
                    let id = Uuid::new_v4();
                    let body =
                        json!({"events": [{"id": id, "type": "Filled", "data": {"pad": pad}}]});
                    let sent = client
                        .post(format!("{url}/streams/{stream}/events"))
                        .json(&body)
                        .send()
                        .await;
                    let mut outcomes = outcomes.lock().unwrap();
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            outcomes.statuses.push(200);
                            outcomes.acknowledged.insert(id, stream.clone());
                        }
                        Ok(response) => {
                            outcomes.statuses.push(response.status().as_u16());
                            outcomes.failed.insert(id, stream.clone());
                            return;
                        }
                        // The host has exited: whether this one landed is unknown too.
                        Err(_) => {
                            outcomes.failed.insert(id, stream.clone());
                            return;
                        }
                    }
                }
            })
        })
        .collect();

    // /health turns 503 and says why, while the host lingers before it exits.
    let deadline = Instant::now() + PATIENCE;
    let health = loop {
        assert!(
            Instant::now() < deadline,
            "/health never reported the fault"
        );
        let response = client.get(server.url("/health")).send().await;
        if let Ok(response) = response
            && response.status() == 503
        {
            break serve::json(response).await.1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["status"], "failed");
    let error = health["error"].as_str().unwrap();
    assert!(error.contains("storage fault"), "{error}");

    // Then it exits non-zero, for a supervisor to restart it.
    let mut server = server;
    let exit = server.wait_for_exit();
    assert!(!exit.success(), "the host exited with {exit}");
    for appender in appenders {
        appender.await.unwrap();
    }
    let outcomes = Arc::try_unwrap(outcomes)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    assert!(
        outcomes.acknowledged.len() > 10,
        "the disk filled before any append"
    );
    assert!(!outcomes.failed.is_empty(), "the disk never filled");
    for status in &outcomes.statuses {
        assert!(
            [200, 500, 503].contains(status),
            "an append was answered {status}"
        );
    }

    // Space freed, host restarted: every acknowledged event is there, exactly once.
    std::fs::remove_file(&ballast).unwrap();
    let server = Server::start_with(&data, None, None);
    let log = serve::all_events(&client, &server).await;
    let mut seen = HashMap::new();
    for (position, event) in log.iter().enumerate() {
        assert_eq!(
            event["position"],
            position as u64 + 1,
            "positions have a gap"
        );
        let id: Uuid = event["id"].as_str().unwrap().parse().unwrap();
        assert!(
            seen.insert(id, event["stream"].clone()).is_none(),
            "{id} twice"
        );
    }
    for (id, stream) in &outcomes.acknowledged {
        assert_eq!(seen.get(id), Some(&json!(stream)), "acknowledged {id} lost");
    }
    // Appends that were answered with an error are retried with the same ids: each lands
    // exactly once, whether or not the failed attempt had.
    for (id, stream) in &outcomes.failed {
        let body =
            json!({"events": [{"id": id, "type": "Filled", "data": {"pad": "p".repeat(8_000)}}]});
        let response = client
            .post(server.url(&format!("/streams/{stream}/events")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let log = serve::all_events(&client, &server).await;
    assert_eq!(
        log.len(),
        outcomes.acknowledged.len() + outcomes.failed.len()
    );
    let (status, _) = serve::json(client.get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    drop(server);
}
