//! A newcomer's first plugin (issue 11), with the real binary in an empty folder:
//! `foldhost plugins new demo --lang L`, `foldhost plugins build`, load it into a running
//! host, send a command. Nothing of this repository is used but the `foldhost` binary. The
//! folder holds a Cargo workspace of its own, as a clone of this repository does.

use crate::serve;

use std::path::Path;
use std::process::Command;

use reqwest::Client;
use serde_json::json;
use serve::{BIN, Server, json};

const TOKEN: &str = "newcomer-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_plugin_builds_loads_and_runs() {
    first_plugin("rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_plugin_builds_loads_and_runs() {
    first_plugin("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_js_plugin_builds_loads_and_runs() {
    first_plugin("js").await;
}

async fn first_plugin(lang: &str) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("Cargo.toml"),
        "[workspace]\nmembers = []\n",
    )
    .unwrap();
    foldhost(root.path(), &["plugins", "new", "demo", "--lang", lang]);
    let project = root.path().join("demo");
    foldhost(&project, &["plugins", "build"]);
    let component = project.join("demo.wasm");
    assert!(component.is_file(), "plugins build wrote no demo.wasm");

    let data = root.path().join("data");
    let server = Server::start_with(&data, None, Some(TOKEN));
    let load = foldhost(
        &project,
        &[
            "plugins",
            "load",
            "demo.wasm",
            "--name",
            "demo",
            "--url",
            &server.url,
        ],
    );
    assert!(load.contains("\"name\": \"demo\""), "{load}");
    let http = Client::new();
    let command = |data| {
        http.post(server.url("/aggregates/demo/first/commands"))
            .json(&data)
            .send()
    };
    let (status, body) = json(
        command(json!({"type": "Add", "data": {"by": 2}}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!({"value": 2})),
        "{body}"
    );
    let (status, body) = json(
        command(json!({"type": "Add", "data": {"by": 0}}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (422, &json!("nothing to add")),
        "{body}"
    );
}

/// Runs the binary in `dir` as a newcomer would (token from the environment); returns its
/// stdout, failing the test with its stderr when it fails.
fn foldhost(dir: &Path, args: &[&str]) -> String {
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/newcomer");
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("FOLDHOST_ADMIN_TOKEN", TOKEN)
        // Shared between runs only to spare recompiling serde and wit-bindgen each time.
        .env("CARGO_TARGET_DIR", workspace_target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "foldhost {args:?} failed:\n{stderr}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
