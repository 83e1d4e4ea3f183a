//! Online backup and restore: `foldhost backup` against a server under concurrent appends,
//! `foldhost restore` into a fresh data directory, and a host started there serving exactly the
//! original log up to the backup's position, with its snapshots, checkpoints and stream
//! lifecycles.

use crate::serve;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};
use reqwest::Client;
use serde_json::{Value, json};
use serve::{BIN, Dirs, PATIENCE, Server, all_events, json};

const TOKEN: &str = "backup-admin-token";

async fn post(client: &Client, server: &Server, path: &str, body: Value) -> Value {
    let response = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(status, 200, "POST {path}: {body}");
    body
}

async fn get(client: &Client, server: &Server, path: &str) -> (u16, Value) {
    json(client.get(server.url(path)).send().await.unwrap()).await
}

/// `foldhost ARGS`, which must succeed; returns its stdout as JSON.
async fn foldhost(url: &str, args: &[&str]) -> Value {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env("FOLDHOST_URL", url)
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "foldhost {args:?} failed: {stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Appends single events to `load-{n}` until stopped; counts the acknowledged ones.
async fn append_until_stopped(n: usize, url: String, stop: Arc<AtomicBool>, acks: Arc<AtomicU64>) {
    let client = Client::new();
    let path = format!("{url}/streams/load-{n}/events");
    while !stop.load(Ordering::Relaxed) {
        let body = json!({"events": [{"type": "Loaded", "data": {"by": n}}]});
        let response = client.post(&path).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        acks.fetch_add(1, Ordering::Relaxed);
    }
}

async fn wait_for(what: &str, mut probe: impl AsyncFnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Uploads the build of bank-account that says version 1.1.0 over the plugins directory's.
async fn upload_v2(client: &Client, server: &Server) -> reqwest::Response {
    client
        .put(server.url("/plugins/bank-account"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(foldhost_plugins::path("bank-account-v2")).unwrap())
        .send()
        .await
        .unwrap()
}

/// Checks that `server` serves the uploaded build of bank-account (1.1.0).
async fn upload_serves(client: &Client, server: &Server) {
    let (_, plugins) = get(client, server, "/plugins").await;
    let account = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bank-account");
    assert_eq!(
        account.unwrap()["version"],
        "1.1.0",
        "the upload serves: {plugins}"
    );
}

fn plugin_hash(plugins: &Value, name: &str) -> String {
    let plugins = plugins.as_array().unwrap();
    let plugin = plugins.iter().find(|p| p["name"] == name).unwrap();
    plugin["hash"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_the_log_up_to_its_position() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();

    // A build of bank-account uploaded over the plugins directory's, which only the backup's
    // copy of the uploads brings back.
    let response = upload_v2(&client, &server).await;
    let (status, uploaded) = json(response).await;
    assert_eq!((status, &uploaded["version"]), (200, &json!("1.1.0")));
    // Uploads are the admin's: a plugin's code is not for every client to read.
    for path in ["/admin/uploads", "/admin/uploads/bank-account"] {
        assert_eq!(get(&client, &server, path).await.0, 401, "{path}");
    }
    let request = client.get(server.url("/admin/uploads/nothing"));
    let (status, body) = json(request.bearer_auth(TOKEN).send().await.unwrap()).await;
    assert_eq!(status, 404, "{body}");

    // An account with enough events for a snapshot, a projection past its first checkpoint,
    // a stream with retention rules and a soft-deleted one.
    let account = "/aggregates/bank-account/big/commands";
    post(
        &client,
        &server,
        account,
        json!({"type": "Open", "data": {"owner": "Big"}}),
    )
    .await;
    let deposits: Vec<Value> = (0..100)
        .map(|_| json!({"type": "Deposited", "data": {"amount": 1}}))
        .collect();
    for _ in 0..6 {
        let body = json!({"events": deposits});
        post(&client, &server, "/streams/bank-account-big/events", body).await;
    }
    let deposit = json!({"type": "Deposit", "data": {"amount": 1}});
    let big = post(&client, &server, account, deposit).await;
    assert_eq!(big["version"], 602);
    let fillers: Vec<Value> = (0..100)
        .map(|n| json!({"type": "Filled", "data": {"n": n}}))
        .collect();
    for n in 0..40 {
        let body = json!({"events": fillers});
        post(
            &client,
            &server,
            &format!("/streams/filler-{n}/events"),
            body,
        )
        .await;
    }
    for n in 0..3 {
        let body = json!({"events": [{"type": "Audited", "data": {"n": n}}]});
        post(&client, &server, "/streams/audit-1/events", body.clone()).await;
        post(&client, &server, "/streams/tmp-1/events", body).await;
    }
    let rules = json!({"max_count": 2});
    let response = client
        .put(server.url("/streams/audit-1/metadata"))
        .json(&rules)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .delete(server.url("/streams/tmp-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, health) = get(&client, &server, "/health").await;
    let head = health["head_position"].clone();
    wait_for("bank-analytics at the head", async || {
        let (_, projection) = get(&client, &server, "/projections/bank-analytics").await;
        (projection["status"]["status"] == "live" && projection["position"] == head)
            .then_some(projection)
    })
    .await;

    // Back up while four clients keep appending.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|n| {
            let (url, stop, acks) = (server.url.clone(), stop.clone(), acks.clone());
            tokio::spawn(append_until_stopped(n, url, stop, acks))
        })
        .collect();
    wait_for("appends under way", async || {
        (acks.load(Ordering::Relaxed) > 50).then_some(Value::Null)
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let backup_dir = root.path().join("backup");
    let backup_path = backup_dir.display().to_string();
    let report = foldhost(
        &server.url,
        &["backup", "--to", &backup_path, "--admin-token", TOKEN],
    )
    .await;
    let during = acks.load(Ordering::Relaxed);
    wait_for("appends after the backup", async || {
        (acks.load(Ordering::Relaxed) > during + 50).then_some(Value::Null)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("backup.json")).unwrap()).unwrap();
    assert_eq!(manifest, report);
    assert_eq!(report["uploads"], json!(["bank-account"]));
    assert_eq!(
        std::fs::read(backup_dir.join("uploads/bank-account.upload")).unwrap(),
        std::fs::read(dirs.data.join("uploads/bank-account.upload")).unwrap()
    );
    let position = report["position"].as_u64().unwrap();
    let (_, health) = get(&client, &server, "/health").await;
    let final_head = health["head_position"].as_u64().unwrap();
    assert!(
        position > head.as_u64().unwrap() && position < final_head,
        "the backup ends at {position}, between the setup ({head}) and the end ({final_head})"
    );
    let original: Vec<Value> = all_events(&client, &server)
        .await
        .into_iter()
        .filter(|event| event["position"].as_u64().unwrap() <= position)
        .collect();
    let (_, plugins) = get(&client, &server, "/plugins").await;
    let (_, big_state) = get(&client, &server, "/aggregates/bank-account/big").await;

    // Restore into a fresh data directory: the snapshot and the checkpoint came along.
    let restored = root.path().join("restored");
    let restored_path = restored.display().to_string();
    let from = ["restore", "--from", &backup_path, "--data", &restored_path];
    assert_eq!(foldhost(&server.url, &from).await, report);
    let restored_journal = restored.join("journal.redb");
    check_plugin_data(&restored_journal, &plugins).await;

    let copy = Server::start_with(&restored, Some(&dirs.plugins), None);
    upload_serves(&client, &copy).await;
    let (_, health) = get(&client, &copy, "/health").await;
    assert_eq!(
        health["head_position"], position,
        "no event after the backup's position"
    );
    let events = all_events(&client, &copy).await;
    assert_eq!(events.len(), original.len());
    assert!(
        events == original,
        "the restored log differs from the original's"
    );
    let (_, metadata) = get(&client, &copy, "/streams/audit-1/metadata").await;
    assert_eq!(metadata, rules);
    let (status, _) = get(&client, &copy, "/streams/tmp-1/events").await;
    assert_eq!(status, 404, "still soft-deleted");
    let (_, restored_big) = get(&client, &copy, "/aggregates/bank-account/big").await;
    assert_eq!(restored_big, big_state);
    let next = post(
        &client,
        &copy,
        "/streams/audit-1/events",
        json!({"events": [{"type": "Audited", "data": {}}]}),
    )
    .await;
    assert_eq!(next["first_position"], position + 1);

    // Restoring over a journal is refused.
    let output = Command::new(BIN)
        .args(["restore", "--from", &backup_path, "--data", &restored_path])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already holds a journal"));

    // An offline backup of the stopped copy brings the upload along too.
    assert!(copy.terminate().success());
    let offline = root.path().join("offline").display().to_string();
    let from = ["backup", "--to", &offline, "--data", &restored_path];
    let report = foldhost(&server.url, &from).await;
    assert_eq!(report["uploads"], json!(["bank-account"]));
    let again = root.path().join("again").display().to_string();
    let from = ["restore", "--from", &offline, "--data", &again];
    assert_eq!(foldhost(&server.url, &from).await, report);
    assert_eq!(
        std::fs::read(root.path().join("again/uploads/bank-account.upload")).unwrap(),
        std::fs::read(dirs.data.join("uploads/bank-account.upload")).unwrap()
    );

    // A backup without its manifest is incomplete: not restored, and not backed up over.
    std::fs::remove_file(root.path().join("offline/backup.json")).unwrap();
    let elsewhere = root.path().join("elsewhere").display().to_string();
    let output = Command::new(BIN)
        .args(["restore", "--from", &offline, "--data", &elsewhere])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a complete backup"), "{stderr}");
    let output = Command::new(BIN)
        .args(["backup", "--to", &offline, "--data", &again])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("an incomplete backup"), "{stderr}");
}

/// The restored journal holds the snapshot of `bank-account-big` and the checkpoint of
/// `bank-analytics` the original had stored before the backup.
async fn check_plugin_data(path: &Path, plugins: &Value) {
    let path = path.to_owned();
    let (account, analytics) = (
        plugin_hash(plugins, "bank-account"),
        plugin_hash(plugins, "bank-analytics"),
    );
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open(&path, JournalConfig::default()).unwrap();
        let snapshot = journal
            .latest_snapshot(&account, "bank-account-big", u64::MAX)
            .unwrap();
        assert!(snapshot.is_some_and(|(version, _)| version >= 500));
        let checkpoint = journal.checkpoint(&analytics).unwrap();
        assert!(checkpoint.is_some_and(|(position, _)| position >= 4000));
    })
    .await
    .unwrap();
}

/// The names in `dir`.
fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Downloads backups back to back until the server goes away; counts those that arrived whole.
async fn back_up_until_killed(url: String, done: Arc<AtomicU64>) {
    let client = Client::new();
    loop {
        let request = client.get(format!("{url}/admin/backup")).bearer_auth(TOKEN);
        let Ok(response) = request.send().await else {
            return;
        };
        // One backup at a time: the other downloader takes turns.
        if response.status() == 503 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        assert_eq!(response.status(), 200);
        if response.bytes().await.is_err() {
            return;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_while_backing_up_leaves_nothing_in_its_data_directory() {
    let dirs = Dirs::new();
    let mut server = Server::start_with(&dirs.data, None, Some(TOKEN));
    let client = Client::new();
    // Enough events that a backup takes a while to copy, so most kills land inside one.
    let fillers: Vec<Value> = (0..200)
        .map(|n| json!({"type": "Filled", "data": {"n": n, "pad": "x".repeat(200)}}))
        .collect();
    for n in 0..100 {
        let body = json!({"events": fillers});
        post(&client, &server, &format!("/streams/fill-{n}/events"), body).await;
    }
    let before = entries(&dirs.data);

    for round in 0..4u64 {
        let done = Arc::new(AtomicU64::new(0));
        let downloads: Vec<_> = (0..2)
            .map(|_| tokio::spawn(back_up_until_killed(server.url.clone(), done.clone())))
            .collect();
        wait_for("a first backup", async || {
            (done.load(Ordering::Relaxed) > 0).then_some(Value::Null)
        })
        .await;
        // Two downloads back to back keep a copy running nearly all the time.
        tokio::time::sleep(Duration::from_millis(7 + 13 * round)).await;
        drop(server); // SIGKILL
        for download in downloads {
            download.await.unwrap();
        }
        assert_eq!(
            entries(&dirs.data),
            before,
            "round {round}: the killed host left files behind"
        );
        server = Server::start_with(&dirs.data, None, Some(TOKEN));
    }
}

/// `foldhost ARGS`, which must fail; returns its stderr.
async fn foldhost_fails(args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success(), "foldhost {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Remounts the tmpfs at `path` with `size` (bytes, or with a k, m or g suffix).
fn resize(path: &Path, size: &str) {
    let remounted = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(remounted.success(), "remounting {} failed", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_ran_out_of_space_finishes_when_run_again() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let response = upload_v2(&client, &server).await;
    assert_eq!(response.status(), 200);
    // A journal of some MiB, the upload's 200 KB.
    let pad = "r".repeat(2_000);
    let fillers: Vec<Value> = (0..200)
        .map(|n| json!({"type": "Filled", "data": {"n": n, "pad": pad}}))
        .collect();
    for n in 0..12 {
        let body = json!({"events": fillers});
        post(&client, &server, &format!("/streams/fill-{n}/events"), body).await;
    }
    let original = all_events(&client, &server).await;
    let url = server.url.clone();
    assert!(server.terminate().success());
    let root = tempfile::tempdir().unwrap();
    let backup = root.path().join("backup").display().to_string();
    let data = dirs.data.display().to_string();
    let report = foldhost(&url, &["backup", "--to", &backup, "--data", &data]).await;
    assert_eq!(report["uploads"], json!(["bank-account"]));
    assert!(report["bytes"].as_u64().unwrap() > 3 << 20, "{report}");

    // Room for the upload, not for the journal.
    let disk = crate::faults::SmallDisk::mount("2m");
    let restored = disk.path().join("data");
    let restored_path = restored.display().to_string();
    let restore = ["restore", "--from", &backup, "--data", &restored_path];
    let stderr = foldhost_fails(&restore).await;
    assert!(
        stderr.contains("run the same `foldhost restore` again to finish it"),
        "{stderr}"
    );
    let upload = "uploads/bank-account.upload";
    assert_eq!(
        std::fs::read(restored.join(upload)).unwrap(),
        std::fs::read(dirs.data.join(upload)).unwrap()
    );
    assert!(!restored.join("journal.redb").exists());

    // An upload the backup does not hold, or holds with other bytes, is still refused.
    let other = root.path().join("other");
    std::fs::create_dir_all(other.join("uploads")).unwrap();
    let mut changed = std::fs::read(restored.join(upload)).unwrap();
    *changed.last_mut().unwrap() ^= 1;
    std::fs::write(other.join(upload), changed).unwrap();
    let other_path = other.display().to_string();
    let stderr = foldhost_fails(&["restore", "--from", &backup, "--data", &other_path]).await;
    assert!(
        stderr.contains("already holds an upload of bank-account that is not this backup's"),
        "{stderr}"
    );

    // With room, the same restore finishes.
    resize(disk.path(), "256m");
    assert_eq!(foldhost(&url, &restore).await, report);
    let copy = Server::start_with(&restored, Some(&dirs.plugins), None);
    upload_serves(&client, &copy).await;
    let events = all_events(&client, &copy).await;
    assert_eq!(events.len(), original.len());
    assert!(
        events == original,
        "the restored log differs from the original's"
    );
}

/// Writes a journal of about `mib` MiB of events into `data`, with no server running.
async fn fill_journal(data: &Path, mib: usize) {
    std::fs::create_dir_all(data).unwrap();
    let path = data.join("journal.redb");
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open(path, JournalConfig::default()).unwrap();
        let pad = "j".repeat(10_000);
        for n in 0..mib {
            let events = (0..100)
                .map(|i| NewEvent::json("Filled", &json!({"i": i, "pad": pad})))
                .collect();
            let stream = format!("fill-{n}");
            journal
                .append_blocking(&stream, ExpectedVersion::Any, events)
                .unwrap();
        }
    })
    .await
    .unwrap();
}

/// `GET /admin/backup`, as the admin.
async fn request_backup(client: &Client, server: &Server) -> reqwest::Response {
    let request = client.get(server.url("/admin/backup")).bearer_auth(TOKEN);
    request.send().await.unwrap()
}

/// Downloads a backup whole; its bytes.
async fn download_backup(client: &Client, server: &Server) -> usize {
    let response = request_backup(client, server).await;
    assert_eq!(response.status(), 200);
    let length = response.content_length().unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, length);
    body.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_taken_one_at_a_time() {
    let dirs = Dirs::new();
    // Far more than the sockets buffer, so a download the client does not read stays open.
    fill_journal(&dirs.data, 24).await;
    let server = Server::start_with(&dirs.data, None, Some(TOKEN));
    let client = Client::new();

    let first = request_backup(&client, &server).await;
    assert_eq!(first.status(), 200);
    let refused = request_backup(&client, &server).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let (_, body) = json(refused).await;
    assert!(
        body["error"].as_str().unwrap().contains("one at a time"),
        "{body}"
    );

    // Once the client has the whole of one, the next starts at once.
    let length = first.bytes().await.unwrap().len();
    assert!(length > 20 << 20);
    assert_eq!(download_backup(&client, &server).await, length);
    assert_eq!(download_backup(&client, &server).await, length);

    // A client that gives up on its download lets the next backup through.
    let abandoned = request_backup(&client, &server).await;
    assert_eq!(abandoned.status(), 200);
    drop(abandoned);
    wait_for("a backup after the abandoned one", async || {
        let response = request_backup(&client, &server).await;
        match response.status().as_u16() {
            503 => None,
            200 => Some(Value::from(response.bytes().await.unwrap().len())),
            status => panic!("the backup answered {status}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_refused_without_room_for_its_copy() {
    let disk = crate::faults::SmallDisk::mount("64m");
    let data = disk.path().join("data");
    fill_journal(&data, 12).await;
    // The journal takes two thirds of the filesystem.
    let journal = std::fs::metadata(data.join("journal.redb")).unwrap().len();
    resize(disk.path(), &(journal * 3 / 2).to_string());
    let server = Server::start_with(&data, None, Some(TOKEN));
    let client = Client::new();

    let (status, body) = json(request_backup(&client, &server).await).await;
    assert_eq!(status, 507, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("too little free space for a backup"),
        "{body}"
    );
    assert!(body["needed_bytes"].as_u64().unwrap() > journal, "{body}");
    let (status, _) = get(&client, &server, "/health").await;
    assert_eq!(status, 200);

    // With room, the same backup is taken.
    resize(disk.path(), "256m");
    assert!(download_backup(&client, &server).await > 10 << 20);
}
