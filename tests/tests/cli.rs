//! The `foldhost` command line: client subcommands against a running server, and the
//! offline subcommands on its data directory.

use crate::serve;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use serve::{BIN, Dirs, PATIENCE, Server};

const TOKEN: &str = "cli-admin-token";

/// `foldhost ARGS` with a clean environment apart from `FOLDHOST_URL`.
fn foldhost(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env_remove("FOLDHOST_ADMIN_TOKEN_FILE")
        .env("FOLDHOST_URL", url)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a subcommand that must succeed; returns its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let output = foldhost(url, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "foldhost {args:?} failed: {stderr}"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a subcommand that must fail; returns its stderr.
fn fails(url: &str, args: &[&str]) -> String {
    let output = foldhost(url, args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "foldhost {args:?} should fail"
    );
    String::from_utf8(output.stderr).unwrap()
}

/// Imports `file` into the data directory `data`, which must fail saying each of `said`.
fn import_refused(url: &str, file: &std::path::Path, data: &str, said: &[&str]) {
    let refused = fails(
        url,
        &["import", &file.display().to_string(), "--data", data],
    );
    for part in said {
        assert!(refused.contains(part), "{part:?} not in {refused}");
    }
}

/// `foldhost events --follow ARGS` running, and the lines it prints.
fn follow(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut follower = Command::new(BIN)
        .args(["events", "--follow"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    (follower, lines)
}

fn parse(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(parse).collect()
}

fn wasm(name: &str) -> String {
    foldhost_plugins::path(name).display().to_string()
}

#[test]
fn client_subcommands_drive_a_running_server() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let url = &server.url.clone();

    let appended = ok(
        url,
        &[
            "append",
            "notes-1",
            "--type",
            "Noted",
            "--data",
            r#"{"text":"hi"}"#,
            "--metadata",
            r#"{"by":"cli"}"#,
            "--expected-version",
            "no_stream",
        ],
    );
    assert_eq!(parse(&appended)["last_version"], 1);
    let conflict = fails(
        url,
        &[
            "append",
            "notes-1",
            "--type",
            "Noted",
            "--data",
            "1",
            "--expected-version",
            "no_stream",
        ],
    );
    assert!(conflict.contains("409"), "{conflict}");
    let usage = foldhost(
        url,
        &["append", "notes-1", "--type", "T", "--data", "{oops"],
    );
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("not valid JSON"));
    ok(
        url,
        &[
            "append",
            "notes-1",
            "--type",
            "Noted",
            "--data",
            "2",
            "--expected-version",
            "1",
        ],
    );

    let opened = parse(&ok(
        url,
        &[
            "command",
            "bank-account",
            "alice",
            "Open",
            r#"{"owner":"Alice"}"#,
        ],
    ));
    assert_eq!(
        (opened["version"].clone(), opened["state"]["status"].clone()),
        (json!(1), json!("open"))
    );
    ok(
        url,
        &[
            "command",
            "bank-account",
            "alice",
            "Deposit",
            r#"{"amount":40}"#,
        ],
    );
    let refused = fails(
        url,
        &[
            "command",
            "bank-account",
            "alice",
            "Withdraw",
            r#"{"amount":50}"#,
        ],
    );
    assert!(
        refused.contains("422") && refused.contains("insufficient funds"),
        "{refused}"
    );
    assert!(fails(url, &["command", "nope", "x", "Open"]).contains("404"));

    let state = parse(&ok(url, &["state", "bank-account", "alice"]));
    assert_eq!(
        (state["version"].clone(), state["state"]["balance"].clone()),
        (json!(2), json!(40))
    );
    let past = parse(&ok(
        url,
        &["state", "bank-account", "alice", "--at-version", "1"],
    ));
    assert_eq!(past["state"]["balance"], 0);

    let notes = lines(&ok(url, &["events", "notes-1"]));
    assert_eq!(notes.len(), 2);
    assert_eq!(
        (notes[0]["data"].clone(), notes[0]["metadata"].clone()),
        (json!({"text": "hi"}), json!({"by": "cli"}))
    );
    assert_eq!(
        lines(&ok(url, &["events", "notes-1", "--from", "2"])).len(),
        1
    );
    let log = lines(&ok(url, &["events"]));
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    let page = lines(&ok(url, &["events", "--from", "2", "--limit", "2"]));
    assert_eq!(
        page.iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(fails(url, &["events", "nobody"]).contains("404"));

    let started = Instant::now();
    while parse(&ok(url, &["projection", "bank-analytics"]))["position"] != 4 {
        assert!(
            started.elapsed() < PATIENCE,
            "the projection did not catch up"
        );
    }
    let account = parse(&ok(
        url,
        &[
            "projection",
            "bank-analytics",
            "--query",
            "account",
            "--arg",
            "id=bank-account-alice",
        ],
    ));
    assert_eq!(account["balance"], 40);
    let top = parse(&ok(
        url,
        &[
            "projection",
            "bank-analytics",
            "--query",
            "top",
            "--arg",
            "n=1",
        ],
    ));
    assert_eq!(top.as_array().unwrap().len(), 1);

    let names = |list: &str| -> Vec<String> {
        parse(list)
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&ok(url, &["plugins", "list"])),
        ["bank-account", "bank-analytics", "shopping-cart"]
    );
    let hostile = wasm(foldhost_plugins::HOSTILE);
    assert!(fails(url, &["plugins", "load", &hostile]).contains("401"));
    assert!(
        fails(
            url,
            &[
                "plugins",
                "load",
                "/no/such/file.wasm",
                "--admin-token",
                TOKEN
            ]
        )
        .contains("reading")
    );
    let loaded = parse(&ok(
        url,
        &["plugins", "load", &hostile, "--admin-token", TOKEN],
    ));
    assert_eq!(loaded["name"], "hostile");
    let unloaded = parse(&ok(
        url,
        &[
            "plugins",
            "--admin-token",
            TOKEN,
            "unload",
            "hostile",
            "--drop-data",
        ],
    ));
    assert_eq!(
        unloaded,
        json!({"unloaded": "hostile", "dropped_data": true})
    );
    assert_eq!(names(&ok(url, &["plugins", "list"])).len(), 3);

    // --follow: history first, then what is appended while it runs.
    let (follower, mut followed) = follow(&["--from", "3", "--url", url]);
    let mut next_position = || {
        parse(&followed.next().unwrap().unwrap())["position"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((next_position(), next_position()), (3, 4));
    ok(url, &["append", "late", "--type", "Late", "--data", "null"]);
    assert_eq!(next_position(), 5);

    // Data prints as it is stored, byte for byte: numbers of any size, key order and spacing,
    // from a page, the live feed and a pretty-printed answer alike.
    let exact = r#"{"b":1,  "a":123456789012345678901234567890}"#;
    let appended = ok(url, &["append", "exact-1", "--type", "T", "--data", exact]);
    assert!(appended.contains("\"last_position\": 6"), "{appended}");
    let printed = ok(url, &["events", "exact-1"]);
    assert!(printed.contains(exact), "{printed}");
    let followed_line = followed.next().unwrap().unwrap();
    assert!(followed_line.contains(exact), "{followed_line}");
    // A server shutting down ends the feed: following fails, saying where to go on from.
    assert!(server.terminate().success());
    let followed = follower.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{said}");
    assert!(said.contains("follow again with --from 7"), "{said}");

    // Unreachable server: a clear failure.
    assert!(fails(url, &["plugins", "list"]).contains("did not answer"));
}

#[test]
fn the_admin_token_can_come_from_a_file_kept_out_of_argv() {
    let dirs = Dirs::new();
    let token_file = dirs.data.with_file_name("admin-token");
    std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();
    let mut serve = Server::command(&dirs.data, Some(&dirs.plugins));
    serve.args(["--admin-token-file", token_path]);
    let server = Server::launch(serve);
    let url = server.url.as_str();

    let hostile = wasm(foldhost_plugins::HOSTILE);
    assert!(
        fails(
            url,
            &["plugins", "load", &hostile, "--admin-token", "wrong"]
        )
        .contains("401")
    );
    let loaded = parse(&ok(
        url,
        &[
            "plugins",
            "load",
            &hostile,
            "--admin-token-file",
            token_path,
        ],
    ));
    assert_eq!(loaded["name"], "hostile");
    // The client reads the file named by the environment just the same.
    let unloaded = Command::new(BIN)
        .args(["plugins", "unload", "hostile", "--url", url])
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env("FOLDHOST_ADMIN_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(unloaded.status.success(), "{unloaded:?}");
    // So do the other admin subcommands: scavenge by flag, backup by the environment.
    assert!(fails(url, &["scavenge", "--admin-token", "wrong"]).contains("401"));
    ok(url, &["scavenge", "--admin-token-file", token_path]);
    let backup = Command::new(BIN)
        .args(["backup", "--url", url, "--to"])
        .arg(dirs.data.with_file_name("backup"))
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env("FOLDHOST_ADMIN_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(backup.status.success(), "{backup:?}");
    drop(server);

    // An empty token file is an error, not a server without a token.
    std::fs::write(&token_file, "\n").unwrap();
    let refused = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_path,
        ])
        .arg("--data")
        .arg(&dirs.data)
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is empty"));
}

#[test]
fn offline_subcommands_replay_export_and_import_a_data_directory() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let url = server.url.clone();
    for owner in ["ann", "bob"] {
        ok(
            &url,
            &[
                "command",
                "bank-account",
                owner,
                "Open",
                &format!(r#"{{"owner":"{owner}"}}"#),
            ],
        );
    }
    for (owner, amount) in [("ann", 10), ("bob", 20), ("ann", 5)] {
        ok(
            &url,
            &[
                "command",
                "bank-account",
                owner,
                "Deposit",
                &format!(r#"{{"amount":{amount}}}"#),
            ],
        );
    }
    ok(
        &url,
        &[
            "append",
            "misc",
            "--type",
            "Note",
            "--data",
            r#"{"z":1,"a":[1,2]}"#,
            "--metadata",
            r#"{"k":"v"}"#,
        ],
    );
    let data = dirs.data.display().to_string();
    // The journal is exclusive to the server while it runs.
    let busy = fails(
        &url,
        &[
            "replay",
            "--plugin",
            &wasm("bank-analytics"),
            "--data",
            &data,
        ],
    );
    assert!(busy.contains("server running"), "{busy}");
    assert!(server.terminate().success());

    let analytics = parse(&ok(
        &url,
        &[
            "replay",
            "--plugin",
            &wasm("bank-analytics"),
            "--data",
            &data,
        ],
    ));
    assert_eq!(
        (
            analytics["open_accounts"].clone(),
            analytics["total_balance"].clone()
        ),
        (json!(2), json!(35))
    );
    let ann = parse(&ok(
        &url,
        &[
            "replay",
            "--plugin",
            &wasm("bank-account"),
            "--stream",
            "ann",
            "--data",
            &data,
        ],
    ));
    assert_eq!(ann["balance"], 15);
    assert!(
        fails(
            &url,
            &["replay", "--plugin", &wasm("bank-account"), "--data", &data]
        )
        .contains("--stream")
    );
    assert!(
        fails(
            &url,
            &[
                "replay",
                "--plugin",
                &wasm("bank-account"),
                "--stream",
                "zed",
                "--data",
                &data
            ]
        )
        .contains("no events")
    );
    // `plugins diff`: the same build agrees with itself; v2 of the projection does not.
    let same = parse(&ok(
        &url,
        &[
            "plugins",
            "diff",
            &wasm("bank-account"),
            &wasm("bank-account"),
            "--data",
            &data,
        ],
    ));
    assert_eq!(
        (same["compared"].clone(), same["differing"].clone()),
        (json!(2), json!(0))
    );
    let changed = fails(
        &url,
        &[
            "plugins",
            "diff",
            &wasm("bank-analytics"),
            &wasm("bank-analytics-v2"),
            "--data",
            &data,
        ],
    );
    assert!(
        changed.contains("1 of 1 streams of bank-analytics end in a different state"),
        "{changed}"
    );
    let elsewhere = dirs.data.join("nothing-here").display().to_string();
    assert!(
        fails(
            &url,
            &[
                "replay",
                "--plugin",
                &wasm("bank-analytics"),
                "--data",
                &elsewhere
            ]
        )
        .contains("no journal")
    );

    let export = dirs.data.join("export.ndjson");
    ok(
        &url,
        &["export", &export.display().to_string(), "--data", &data],
    );
    let exported = std::fs::read_to_string(&export).unwrap();
    assert_eq!(
        exported,
        ok(&url, &["export", "--data", &data]),
        "export to a file and to stdout differ"
    );
    assert_eq!(exported.lines().count(), 6);

    let copy = dirs.data.join("copy");
    let copy_arg = copy.display().to_string();
    ok(
        &url,
        &["import", &export.display().to_string(), "--data", &copy_arg],
    );
    let reexported = ok(&url, &["export", "--data", &copy_arg]);
    assert_eq!(
        reexported, exported,
        "the copy is the same log, byte for byte"
    );
    // Event ids make a second import a no-op.
    ok(
        &url,
        &["import", &export.display().to_string(), "--data", &copy_arg],
    );
    assert_eq!(ok(&url, &["export", "--data", &copy_arg]), exported);

    let broken = dirs.data.join("broken.ndjson");
    std::fs::write(&broken, "{\"not\": \"an event\"}\n").unwrap();
    let refused = fails(
        &url,
        &["import", &broken.display().to_string(), "--data", &copy_arg],
    );
    assert!(refused.contains("line 1"), "{refused}");
    // An event whose id the copy holds in another stream is another event: refused, not
    // skipped as if it were imported already.
    let mut moved: Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    moved["stream"] = json!("elsewhere");
    let clash = dirs.data.join("clash.ndjson");
    std::fs::write(&clash, format!("{moved}\n")).unwrap();
    let refused = fails(
        &url,
        &["import", &clash.display().to_string(), "--data", &copy_arg],
    );
    assert!(
        refused.contains("line 1") && refused.contains("already used"),
        "{refused}"
    );
    assert_eq!(ok(&url, &["export", "--data", &copy_arg]), exported);

    // The imported copy serves like the original.
    let server = Server::start_with(&copy, Some(&dirs.plugins), None);
    let state = parse(&ok(&server.url, &["state", "bank-account", "bob"]));
    assert_eq!(state["state"]["balance"], 20);
}

/// A stream's events of one millisecond are imported as appends that each keep to the
/// journal's append limit (64 MiB), though the lines together hold more.
#[test]
fn an_import_splits_what_one_append_could_not_hold() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("large.ndjson");
    let mut lines = std::io::BufWriter::new(std::fs::File::create(&export).unwrap());
    // Each event within the 1 MiB limit of one event; 70 of them past 64 MiB.
    let text = "x".repeat(999_000);
    let events = 70;
    for version in 1..=events {
        let event = json!({
            "position": version, "stream": "notes-1", "version": version,
            "id": uuid::Uuid::new_v4(), "type": "Noted", "content_type": "json",
            "data": text, "metadata": null, "recorded_at": 1_700_000_000_000u64,
        });
        writeln!(lines, "{event}").unwrap();
    }
    lines.flush().unwrap();
    drop(lines);
    let data = dir.path().join("data").display().to_string();
    let url = "http://127.0.0.1:9";
    ok(
        url,
        &["import", &export.display().to_string(), "--data", &data],
    );
    let exported = ok(url, &["export", "--data", &data]);
    assert_eq!(exported.lines().count(), events, "every event imported");
}

/// Data is stored as the client sent it, line breaks between its tokens included, so such
/// an event spans several lines of an export: it imports whole and exports again byte for byte.
#[test]
fn an_event_whose_data_holds_line_breaks_goes_through_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("pretty.ndjson");
    let line = |version: u64, data: &str| {
        format!(
            "{{\"position\":{version},\"stream\":\"notes-1\",\"version\":{version},\"id\":\"{}\",\
             \"type\":\"Noted\",\"content_type\":\"json\",\"data\":{data},\"metadata\":null,\
             \"recorded_at\":1700000000000}}\n",
            uuid::Uuid::new_v4()
        )
    };
    let written = [
        line(1, "{\"a\": 1}"),
        line(
            2,
            "{\n  \"text\": \"} { ] [\",\r\n  \"list\": [\n    1,\n    2\n  ]\n}",
        ),
        line(3, "[\r1\r]"),
    ]
    .concat();
    std::fs::write(&export, &written).unwrap();
    let data = dir.path().join("data").display().to_string();
    let url = "http://127.0.0.1:9";
    ok(
        url,
        &["import", &export.display().to_string(), "--data", &data],
    );
    assert_eq!(ok(url, &["export", "--data", &data]), written);
}

#[test]
fn help_is_there_and_usage_errors_exit_with_2() {
    let url = "http://127.0.0.1:9";
    let help = ok(url, &["--help"]);
    for subcommand in [
        "serve",
        "append",
        "events",
        "command",
        "state",
        "projection",
        "plugins",
        "replay",
        "export",
        "import",
    ] {
        assert!(
            help.contains(subcommand),
            "{subcommand} missing from\n{help}"
        );
        ok(url, &[subcommand, "--help"]);
    }
    assert!(ok(url, &["serve", "--help"]).contains("FOLDHOST_LISTEN"));
    assert_eq!(foldhost(url, &["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        foldhost(url, &["state", "only-plugin"]).status.code(),
        Some(2)
    );
    assert_eq!(
        foldhost(url, &["serve", "--listen", "not an address"])
            .status
            .code(),
        Some(1)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let not_a_dir = file.path().display().to_string();
    let refused = foldhost(
        url,
        &["serve", "--data", &not_a_dir, "--listen", "127.0.0.1:0"],
    );
    assert_eq!(refused.status.code(), Some(1));
}

#[test]
fn streams_are_deleted_truncated_and_scavenged_from_the_command_line() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let url = &server.url.clone();
    for n in 0..3 {
        let data = format!(r#"{{"n":{n}}}"#);
        ok(
            url,
            &["append", "notes-1", "--type", "Noted", "--data", &data],
        );
        ok(
            url,
            &["append", "gone-1", "--type", "Noted", "--data", &data],
        );
    }
    let set = ok(url, &["streams", "metadata", "notes-1", "--max-count", "2"]);
    assert_eq!(parse(&set), json!({"max_count": 2}));
    let shown = ok(url, &["streams", "metadata", "notes-1"]);
    assert_eq!(parse(&shown), json!({"max_count": 2}));
    let notes = lines(&ok(url, &["events", "notes-1"]));
    assert_eq!(
        notes
            .iter()
            .map(|e| e["version"].clone())
            .collect::<Vec<_>>(),
        [2, 3]
    );

    let refused = fails(url, &["streams", "delete", "gone-1", "--hard"]);
    assert!(refused.contains("401"), "{refused}");
    let deleted = ok(
        url,
        &[
            "streams",
            "delete",
            "gone-1",
            "--hard",
            "--admin-token",
            TOKEN,
        ],
    );
    assert_eq!(parse(&deleted), json!({"stream": "gone-1", "hard": true}));
    let gone = fails(url, &["events", "gone-1"]);
    assert!(gone.contains("410"), "{gone}");

    let denied = fails(url, &["scavenge"]);
    assert!(denied.contains("401"), "{denied}");
    let report = parse(&ok(url, &["scavenge", "--admin-token", TOKEN]));
    assert_eq!(report["events"], 4, "{report}");
    let left = lines(&ok(url, &["events"]));
    let positions: Vec<u64> = left
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [3, 5]);
    let cleared = ok(url, &["streams", "metadata", "notes-1", "--clear"]);
    assert_eq!(parse(&cleared), json!({}));
}

#[test]
fn projections_recover_and_imports_are_checked_from_the_command_line() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let url = &server.url.clone();
    let admin = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--admin-token", TOKEN]);
        parse(&ok(url, &all))
    };
    let info = admin(&["plugins", "policy", "bank-analytics", "stop"]);
    assert_eq!(info["policy"], "stop", "{info}");
    let usage = foldhost(url, &["plugins", "policy", "bank-analytics", "skip"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("park or stop"));
    assert_eq!(
        parse(&ok(url, &["plugins", "parked", "bank-analytics"])),
        json!([])
    );
    assert_eq!(
        admin(&["plugins", "replay-parked", "bank-analytics"]),
        json!({"replayed": 0, "still_parked": 0})
    );
    assert_eq!(
        admin(&["plugins", "restart", "bank-analytics"])["name"],
        "bank-analytics"
    );
    assert_eq!(
        admin(&["plugins", "reset", "bank-analytics"])["name"],
        "bank-analytics"
    );
    assert!(
        fails(
            url,
            &["plugins", "restart", "bank-account", "--admin-token", TOKEN]
        )
        .contains("not a projection")
    );
    drop(server);

    // An import checked against the aggregates stops at the first event they cannot fold.
    let event = |version: u64, kind: &str, data: Value| {
        json!({"position": version, "stream": "bank-account-p", "version": version,
               "id": uuid::Uuid::new_v4(), "type": kind, "content_type": "json", "data": data,
               "metadata": null, "recorded_at": 0})
        .to_string()
    };
    let file = dirs.data.join("poisoned.ndjson");
    let ndjson = [
        event(1, "Opened", json!({"owner": "P"})),
        event(2, "Deposited", json!({"amount": "lots"})),
        event(3, "Deposited", json!({"amount": 5})),
    ]
    .join("\n");
    std::fs::write(&file, ndjson).unwrap();
    let (file, plugins) = (
        file.display().to_string(),
        dirs.plugins.display().to_string(),
    );
    let data = dirs.data.join("checked").display().to_string();
    let refused = fails(
        url,
        &["import", &file, "--data", &data, "--plugins", &plugins],
    );
    assert!(
        refused.contains("line 2") && refused.contains("lots") && refused.contains("the 1 events"),
        "{refused}"
    );
    assert_eq!(lines(&ok(url, &["export", "--data", &data])).len(), 1);
    // Unchecked, everything goes in (the line already imported is skipped by its id).
    ok(url, &["import", &file, "--data", &data]);
    assert_eq!(lines(&ok(url, &["export", "--data", &data])).len(), 3);
}

#[test]
fn serve_keeps_serving_when_its_stdout_is_closed() {
    let dirs = Dirs::new();
    // A free port, so the address need not be read from the closed stdout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(&dirs.data)
        .env_remove("FOLDHOST_PLUGINS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Closed before the host prints its address: as `foldhost serve | head -0` would.
    drop(child.stdout.take());
    let health = || -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let request = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.starts_with("HTTP/1.1 200")
    };
    let started = Instant::now();
    let mut healthy = 0;
    while healthy < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve exited ({status}) once its stdout was closed");
        }
        assert!(started.elapsed() < PATIENCE, "serve never answered");
        if health() {
            healthy += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A stopped data directory whose journal holds `events` events of stream `notes`.
fn journal_with_events(dirs: &Dirs, events: usize) {
    let server = Server::start(dirs, None);
    for n in 0..events {
        ok(
            &server.url,
            &[
                "append",
                "notes",
                "--type",
                "Noted",
                "--data",
                &n.to_string(),
            ],
        );
    }
    assert!(server.terminate().success());
}

#[test]
fn export_refuses_to_write_over_a_journal() {
    let dirs = Dirs::new();
    journal_with_events(&dirs, 3);
    let url = "http://127.0.0.1:9";
    let data = dirs.data.display().to_string();
    let journal = dirs.data.join("journal.redb");
    let before = std::fs::read(&journal).unwrap();
    // The journal being exported, named directly and through another path.
    let through_dot = dirs.data.join(".").join("journal.redb");
    for output in [&journal, &through_dot] {
        let refused = fails(
            url,
            &["export", &output.display().to_string(), "--data", &data],
        );
        assert!(refused.contains("journal"), "{refused}");
        assert_eq!(std::fs::read(&journal).unwrap(), before, "{refused}");
    }
    // Another data directory's journal is no place for an export either.
    let other = dirs.data.join("other.redb");
    std::fs::write(&other, &before).unwrap();
    let refused = fails(
        url,
        &["export", &other.display().to_string(), "--data", &data],
    );
    assert!(refused.contains("journal"), "{refused}");
    assert_eq!(std::fs::read(&other).unwrap(), before);
    assert_eq!(lines(&ok(url, &["export", "--data", &data])).len(), 3);
    let names: Vec<_> = std::fs::read_dir(&dirs.data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn a_url_given_as_the_data_directory_is_refused() {
    let dirs = Dirs::new();
    let cwd = dirs.data.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let empty = cwd.join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let url = "postgres://foldhost@localhost:5432/events";
    let run = |args: &[&str], env_data: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(&cwd)
            .env_remove("FOLDHOST_DATA")
            .env_remove("FOLDHOST_JOURNAL")
            .env_remove("FOLDHOST_ADMIN_TOKEN")
            .env_remove("FOLDHOST_ADMIN_TOKEN_FILE")
            .env("FOLDHOST_URL", "http://127.0.0.1:9")
            .stdin(Stdio::null());
        if let Some(data) = env_data {
            command.env("FOLDHOST_DATA", data);
        }
        command.output().unwrap()
    };
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["import", &empty, "--data", url], None),
        (&["import", &empty], Some(url)),
        (&["export", "--data", url], None),
        (&["restore", "--from", ".", "--data", url], None),
        (&["backup", "--to", "backup", "--data", url], None),
        // An address that does not resolve: had the URL passed, serve would stop at it.
        (
            &["serve", "--listen", "no-such-address", "--data", url],
            None,
        ),
    ];
    for (args, env_data) in cases {
        let output = run(args, env_data);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a URL") && stderr.contains("--journal"),
            "{args:?}: {stderr}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["empty.ndjson"], "a URL became a directory");
}

#[test]
fn client_subcommands_stop_quietly_when_their_stdout_is_closed() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let closed = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("FOLDHOST_DATA")
            .env("FOLDHOST_URL", &server.url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // As `foldhost events | head -0` would: closed before the server answers.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status, stderr)
    };
    for n in 0..3 {
        let (status, stderr) = closed(&[
            "append",
            "notes",
            "--type",
            "Noted",
            "--data",
            &n.to_string(),
        ]);
        assert!(status.success(), "append: {status}: {stderr}");
        assert!(stderr.is_empty(), "append: {stderr}");
    }
    for args in [&["events"][..], &["events", "notes"]] {
        let (status, stderr) = closed(args);
        assert!(status.success(), "{args:?}: {status}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // The appends happened all the same.
    assert_eq!(lines(&ok(&server.url, &["events", "notes"])).len(), 3);
}

/// `import --plugins DIR` folds old shapes through DIR's upcasters, as the server's checked
/// appends do, instead of refusing history the server accepts.
#[test]
fn a_checked_import_folds_old_shapes_through_the_upcasters() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["bank-account", "bank-upcast-v1", "bank-upcast-v2"] {
        let to = plugins.join(format!("{name}.wasm"));
        std::fs::copy(foldhost_plugins::path(name), to).unwrap();
    }
    let event = |version: u64, kind: &str, data: Value| {
        json!({"position": version, "stream": "bank-account-old", "version": version,
               "id": uuid::Uuid::new_v4(), "type": kind, "content_type": "json", "data": data,
               "metadata": null, "recorded_at": 0})
        .to_string()
    };
    let file = root.path().join("old.ndjson");
    let ndjson = [
        event(1, "AccountOpened", json!({"holder": "Bo"})),
        event(2, "Credited", json!({"amount": 7})),
    ]
    .join("\n");
    std::fs::write(&file, ndjson).unwrap();
    let (file, plugins) = (file.display().to_string(), plugins.display().to_string());
    let data = root.path().join("data").display().to_string();
    let url = "http://127.0.0.1:9";
    ok(
        url,
        &["import", &file, "--data", &data, "--plugins", &plugins],
    );
    assert_eq!(lines(&ok(url, &["export", "--data", &data])).len(), 2);
}

/// An import whose line the journal's writer refuses (here: an event of a stream the data
/// directory hard-deleted, which no check before the writer looks at) stops there: the error
/// names the line and how many events before it are imported, and the journal holds exactly
/// those, none of the many lines queued behind it.
#[test]
fn an_import_refused_by_the_journal_names_the_line_and_stores_none_after_it() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let url = &server.url.clone();
    for stream in ["kept", "gone"] {
        ok(url, &["append", stream, "--type", "Noted", "--data", "1"]);
    }
    let delete = [
        "streams",
        "delete",
        "gone",
        "--hard",
        "--admin-token",
        TOKEN,
    ];
    ok(url, &delete);
    assert!(server.terminate().success());

    // One event per line, each its own append; line 5 is the deleted stream's.
    let streams: Vec<String> = (1..=300)
        .map(|line| match line {
            5 => "gone".to_owned(),
            _ => format!("imported-{line}"),
        })
        .collect();
    let ndjson: Vec<Value> = (streams.iter().enumerate())
        .map(|(n, stream)| {
            json!({"position": n + 1, "stream": stream, "version": 1,
                   "id": uuid::Uuid::new_v4(), "type": "Noted", "content_type": "json",
                   "data": n, "metadata": null, "recorded_at": n})
        })
        .collect();
    let file = dirs.data.join("import.ndjson");
    let text: Vec<String> = ndjson.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let data = dirs.data.display().to_string();
    import_refused(
        url,
        &file,
        &data,
        &[
            "import.ndjson line 5: ",
            "\"gone\" was deleted for good",
            "the 4 events before it are imported",
        ],
    );
    let stored: Vec<Value> = lines(&ok(url, &["export", "--data", &data]));
    assert_eq!(stored.len(), 5, "the kept event, then lines 1 to 4");
    let stored: Vec<&Value> = stored[1..].iter().map(|event| &event["id"]).collect();
    let expected: Vec<&Value> = ndjson[..4].iter().map(|event| &event["id"]).collect();
    assert_eq!(stored, expected);
}

/// The offline commands that only read leave a journal of an older storage format byte for
/// byte as it was, so the older build still opens it: each refuses it, naming its format and
/// what migrates it. Once `serve` has migrated it, they read it.
#[test]
fn read_only_commands_leave_an_older_storage_format_as_it_is() {
    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.data).unwrap();
    let journal = dirs.data.join("journal.redb");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures");
    std::fs::copy(fixtures.join("journal-format-6.redb"), &journal).unwrap();
    let before = std::fs::read(&journal).unwrap();
    let url = "http://127.0.0.1:9";
    let data = dirs.data.display().to_string();
    let backup = dirs.data.join("backup").display().to_string();
    let analytics = wasm("bank-analytics");
    for args in [
        &["export", "--data", &data][..],
        &["replay", "--plugin", &analytics, "--data", &data],
        &["plugins", "diff", &analytics, &analytics, "--data", &data],
        &["backup", "--to", &backup, "--data", &data],
    ] {
        let refused = fails(url, args);
        assert!(
            refused.contains("storage format 6, older than this build's 7")
                && refused.contains("`foldhost serve` migrates it")
                && !refused.contains("server running"),
            "{args:?}: {refused}"
        );
        assert!(
            std::fs::read(&journal).unwrap() == before,
            "{args:?} changed the journal"
        );
    }
    let server = Server::start_with(&dirs.data, None, None);
    assert!(server.terminate().success());
    assert!(!lines(&ok(url, &["export", "--data", &data])).is_empty());
}

/// A line the import cannot read as text (here: a Latin-1 byte) stops it like any other
/// refused line: the error names the line and how many events before it are imported, and
/// those, read into the append being built, are imported.
#[test]
fn an_import_stops_at_a_line_that_is_not_utf8_having_imported_the_lines_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let event = |version: u64, data: &str| {
        let event = json!({
            "position": version, "stream": "notes-1", "version": version,
            "id": uuid::Uuid::new_v4(), "type": "Noted", "content_type": "json",
            "data": {"text": data}, "metadata": null, "recorded_at": 1_700_000_000_000u64,
        });
        format!("{event}\n").into_bytes()
    };
    let mut ndjson: Vec<u8> = (1..=3).flat_map(|version| event(version, "ok")).collect();
    // "café" in Latin-1.
    let mut latin1 = event(4, "caf@");
    let at = latin1.iter().position(|&byte| byte == b'@').unwrap();
    latin1[at] = 0xE9;
    ndjson.extend(latin1);
    ndjson.extend(event(5, "ok"));
    let file = dir.path().join("latin1.ndjson");
    std::fs::write(&file, ndjson).unwrap();
    let data = dir.path().join("data").display().to_string();
    let url = "http://127.0.0.1:9";
    import_refused(
        url,
        &file,
        &data,
        &[
            "latin1.ndjson line 4: ",
            "UTF-8",
            "the 3 events before it are imported",
        ],
    );
    assert_eq!(lines(&ok(url, &["export", "--data", &data])).len(), 3);
}

/// `import` opens its input and plugins before the data directory: a wrong name creates no
/// directory and leaves a journal of an older storage format unmigrated.
#[test]
fn an_import_of_a_missing_file_leaves_the_data_directory_alone() {
    let root = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9";
    let missing = root.path().join("typo.ndjson").display().to_string();
    let new = root.path().join("new");
    let refused = fails(
        url,
        &["import", &missing, "--data", &new.display().to_string()],
    );
    assert!(refused.contains("typo.ndjson"), "{refused}");
    assert!(!new.exists(), "the data directory was created");
    let empty = root.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let no_plugins = root.path().join("no-plugins").display().to_string();
    let args = [
        "import",
        &empty.display().to_string(),
        "--plugins",
        &no_plugins,
        "--data",
        &new.display().to_string(),
    ];
    assert!(fails(url, &args).contains("no-plugins"));
    assert!(!new.exists(), "the data directory was created");

    let old = root.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let journal = old.join("journal.redb");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures");
    std::fs::copy(fixtures.join("journal-format-6.redb"), &journal).unwrap();
    let before = std::fs::read(&journal).unwrap();
    fails(
        url,
        &["import", &missing, "--data", &old.display().to_string()],
    );
    assert!(
        std::fs::read(&journal).unwrap() == before,
        "the journal was migrated"
    );
}

/// A token file named on the command line wins over `FOLDHOST_ADMIN_TOKEN`, and a token over
/// `FOLDHOST_ADMIN_TOKEN_FILE`; both options on the command line are a usage error.
#[test]
fn an_admin_token_option_wins_over_the_environment() {
    let dirs = Dirs::new();
    let server = Server::start_with(&dirs.data, None, Some(TOKEN));
    let (right, wrong) = (
        dirs.data.with_file_name("right"),
        dirs.data.with_file_name("wrong"),
    );
    std::fs::write(&right, TOKEN).unwrap();
    std::fs::write(&wrong, "wrong").unwrap();
    let scavenge = |args: &[&str], env: (&str, &str)| {
        Command::new(BIN)
            .args(["scavenge", "--url", &server.url])
            .args(args)
            .env_remove("FOLDHOST_ADMIN_TOKEN")
            .env_remove("FOLDHOST_ADMIN_TOKEN_FILE")
            .env(env.0, env.1)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let right_file = right.to_str().unwrap();
    let by_file = scavenge(
        &["--admin-token-file", right_file],
        ("FOLDHOST_ADMIN_TOKEN", "wrong"),
    );
    assert!(by_file.status.success(), "{by_file:?}");
    let by_token = scavenge(
        &["--admin-token", TOKEN],
        ("FOLDHOST_ADMIN_TOKEN_FILE", wrong.to_str().unwrap()),
    );
    assert!(by_token.status.success(), "{by_token:?}");
    let both = scavenge(
        &["--admin-token", TOKEN, "--admin-token-file", right_file],
        ("FOLDHOST_URL", &server.url),
    );
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    // Both in the environment: which one was meant is not for the host to guess.
    let both_set = Command::new(BIN)
        .args(["scavenge", "--url", &server.url])
        .env("FOLDHOST_ADMIN_TOKEN", TOKEN)
        .env("FOLDHOST_ADMIN_TOKEN_FILE", wrong.to_str().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(both_set.status.code(), Some(2), "{both_set:?}");
    let said = String::from_utf8_lossy(&both_set.stderr);
    assert!(said.contains("are both set"), "{said}");
}

/// A live feed cut off (the server killed) fails `--follow`, saying where to go on from.
#[test]
fn a_follow_cut_off_says_where_to_go_on_from() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let url = &server.url;
    for n in 0..2 {
        ok(
            url,
            &["append", &format!("s-{n}"), "--type", "T", "--data", "null"],
        );
    }
    let (follower, mut followed) = follow(&["--url", url]);
    for position in [1, 2] {
        let event = parse(&followed.next().unwrap().unwrap());
        assert_eq!(event["position"], position);
    }
    drop(server); // SIGKILL
    let followed = follower.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{said}");
    assert!(said.contains("follow again with --from 3"), "{said}");
}
