//! SIGTERM during concurrent appends: the server finishes what it acknowledged, exits
//! cleanly, and after a restart every acknowledged append is there.

use crate::serve;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use reqwest::Client;
use serde_json::json;
use serve::{Dirs, PATIENCE, Server, all_events};
use uuid::Uuid;

const WRITERS: usize = 16;
/// Acknowledged appends to wait for before sending SIGTERM.
const BEFORE_SIGNAL: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_acknowledged_append() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let url = server.url("");
    let client = Client::new();
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url) = (client.clone(), url.clone());
            let (acknowledged, count) = (acknowledged.clone(), count.clone());
            tokio::spawn(async move {
                // Two events per append, all or none.
                for n in 0.. {
                    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
                    let body = json!({"events": [
                        {"id": a, "type": "Ticked", "data": {"n": n}},
                        {"id": b, "type": "Tocked", "data": {"n": n}},
                    ]});
                    let sent = client
                        .post(format!("{url}/streams/writer-{w}/events"))
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            acknowledged.lock().unwrap().extend([a, b]);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        // Refused or cut off while stopping: not acknowledged, so no promise.
                        Ok(response) => assert_eq!(response.status(), 503, "unexpected answer"),
                        Err(_) => return n,
                    }
                }
                unreachable!()
            })
        })
        .collect();

    let started = Instant::now();
    while count.load(Ordering::SeqCst) < BEFORE_SIGNAL {
        assert!(
            started.elapsed() < PATIENCE,
            "appends are not getting through"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "foldhost exited with {status:?}");
    for writer in writers {
        writer.await.unwrap();
    }

    let server = Server::start(&dirs, None);
    let stored: HashSet<Uuid> = all_events(&client, &server)
        .await
        .iter()
        .map(|event| event["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() >= 2 * BEFORE_SIGNAL);
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

/// A request held until the plugins directory has loaded is answered 503 as soon as the server
/// starts stopping, instead of holding the shutdown up until its grace period cuts it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_plugins_load_answers_the_requests_waiting_for_them() {
    use std::io::{Read, Write};

    let root = tempfile::tempdir().unwrap();
    let (data, plugins) = (root.path().join("data"), root.path().join("plugins"));
    std::fs::create_dir_all(&plugins).unwrap();
    // The Python aggregate takes seconds to compile: projections' routes wait for it.
    for name in ["bank-analytics", "bank-account-python"] {
        let to = plugins.join(format!("{name}.wasm"));
        std::fs::copy(foldhost_plugins::path(name), to).unwrap();
    }
    let server = Server::launch_listening(Server::command(&data, Some(&plugins)));
    let address = server.url.strip_prefix("http://").unwrap().to_owned();
    let held = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let ask = |stream: &mut std::net::TcpStream, path: &str, close: bool| {
            let connection = if close { "close" } else { "keep-alive" };
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: {connection}\r\n\r\n"
            )
            .unwrap();
        };
        // One answered request first: the connection is then being served.
        ask(&mut stream, "/health", false);
        let mut health = String::new();
        while !health.ends_with('}') {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).unwrap();
            assert!(read > 0, "the connection closed after {health:?}");
            health.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
        ask(&mut stream, "/projections/bank-analytics", true);
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        (health, rest)
    });
    // Lets the held request reach the server before it is told to stop.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = server.terminate();
    let (health, answer) = held.join().unwrap();
    assert!(
        health.contains("\"loading_plugins\":true"),
        "the test needs the directory still loading: {health}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("stopping"),
        "{answer}"
    );
    assert!(status.success(), "{status}");
}
