//! Event data byte for byte: what a client sends is what every reader gets back, and an
//! export imported into a fresh data directory is the same log, times included.

use crate::serve;

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use serve::{BIN, Dirs, PATIENCE, Server};

/// Key order, spacing, a number no float holds, a trailing zero, an exponent and an escape:
/// everything a parse and re-serialisation would change.
const DATA: &str =
    r#"{"z": 1, "a": [1.50, 2e3],  "big": 123456789012345678901234567890, "s": "caf\u00e9"}"#;
const METADATA: &str = r#"{"trace":"t-1",  "a":null, "n": 18446744073709551616}"#;

/// `foldhost ARGS` against `url`; returns stdout, panics unless it succeeds.
fn foldhost(url: &str, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env("FOLDHOST_URL", url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "foldhost {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn event_data_and_metadata_are_kept_byte_for_byte() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = reqwest::Client::new();
    let body = format!(r#"{{"events":[{{"type":"Noted","data":{DATA},"metadata":{METADATA}}}]}}"#);
    let response = client
        .post(server.url("/streams/notes/events"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    foldhost(
        &server.url,
        &[
            "append",
            "notes",
            "--type",
            "Noted",
            "--data",
            DATA,
            "--metadata",
            METADATA,
        ],
    );
    let exact = format!(r#""data":{DATA},"metadata":{METADATA}"#);
    for path in ["/streams/notes/events", "/events"] {
        let read = client
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(read.matches(&exact).count(), 2, "{path}: {read}");
    }
    let mut live = client
        .get(server.url("/events/live?from_position=1"))
        .send()
        .await
        .unwrap();
    let mut feed = String::new();
    let deadline = Instant::now() + PATIENCE;
    while feed.matches(&exact).count() < 2 {
        let chunk = tokio::time::timeout_at(deadline.into(), live.chunk())
            .await
            .unwrap_or_else(|_| panic!("the live feed sent only {feed}"));
        feed.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    // Metadata must still be an object or null, and is checked without being rewritten.
    let refused = client
        .post(server.url("/streams/notes/events"))
        .body(r#"{"events":[{"type":"Noted","data":1,"metadata":[1]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    drop(live);
    assert!(server.terminate().success());
    let export = foldhost(
        "http://127.0.0.1:9",
        &["export", "--data", &dirs.data.display().to_string()],
    );
    assert_eq!(export.matches(&exact).count(), 2, "{export}");
}

const DAY: u64 = 86_400_000;
/// 2024-03-01T00:00:00Z in milliseconds.
const MARCH_1: u64 = 1_709_251_200_000;

#[test]
fn an_export_imported_elsewhere_is_the_same_log_and_folds_to_the_same_day_buckets() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    for (owner, amounts) in [("ann", [10, 20, 30]), ("bob", [1, 2, 3])] {
        foldhost(
            &server.url,
            &[
                "command",
                "bank-account",
                owner,
                "Open",
                &format!(r#"{{"owner":"{owner}"}}"#),
            ],
        );
        for amount in amounts {
            foldhost(
                &server.url,
                &[
                    "command",
                    "bank-account",
                    owner,
                    "Deposit",
                    &format!(r#"{{"amount":{amount}}}"#),
                ],
            );
        }
    }
    assert!(server.terminate().success());
    let data = dirs.data.display().to_string();
    let export = foldhost("http://127.0.0.1:9", &["export", "--data", &data]);
    // A history spread over days: event n was recorded on day n / 3 after March 1st.
    let history: String = export
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let (event, _) = line.rsplit_once(r#""recorded_at":"#).unwrap();
            let at = MARCH_1 + (n as u64 / 3) * DAY + n as u64 * 1_000;
            format!("{event}\"recorded_at\":{at}}}\n")
        })
        .collect();
    assert_eq!(history.lines().count(), 8);
    let root = tempfile::tempdir().unwrap();
    let history_file = root.path().join("history.ndjson");
    std::fs::write(&history_file, &history).unwrap();

    let restored = |from: &std::path::Path, name: &str| {
        let dir = root.path().join(name).display().to_string();
        let file = from.display().to_string();
        foldhost("http://127.0.0.1:9", &["import", &file, "--data", &dir]);
        dir
    };
    let first = restored(&history_file, "first");
    let first_export = foldhost("http://127.0.0.1:9", &["export", "--data", &first]);
    assert_eq!(
        first_export, history,
        "every field of every event survives an import"
    );
    let first_file = root.path().join("first.ndjson");
    std::fs::write(&first_file, &first_export).unwrap();
    let second = restored(&first_file, "second");
    assert_eq!(
        foldhost("http://127.0.0.1:9", &["export", "--data", &second]),
        history
    );

    let analytics = |dir: &str| -> Value {
        let plugin = foldhost_plugins::path("bank-analytics")
            .display()
            .to_string();
        let out = foldhost(
            "http://127.0.0.1:9",
            &["replay", "--plugin", &plugin, "--data", dir],
        );
        serde_json::from_str(&out).unwrap()
    };
    let (before, after) = (analytics(&first), analytics(&second));
    assert_eq!(before, after);
    let days: Vec<(&str, u64, u64)> = after["deposits_per_day"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(day, d)| {
            (
                day.as_str(),
                d["count"].as_u64().unwrap(),
                d["amount"].as_u64().unwrap(),
            )
        })
        .collect();
    // Positions 1..8: ann Opened, 10, 20, 30, bob Opened, 1, 2, 3 (n = position - 1).
    assert_eq!(
        days,
        [
            ("2024-03-01", 2, 30),
            ("2024-03-02", 2, 31),
            ("2024-03-03", 2, 5)
        ]
    );
}
