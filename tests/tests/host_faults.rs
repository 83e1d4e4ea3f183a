//! A failure of the host while it loads a plugin is never blamed on the plugin, with real
//! faults: a cache disk that is full (a small tmpfs, filled), read-only (remounted so) or
//! failing (a FUSE file system whose every operation fails with EIO), and a compiler killed
//! with SIGKILL, as the out-of-memory killer ends a process. Mounting needs root.
//!
//! The compiled-code cache only saves the next start a compilation: a cache that cannot be
//! written or read never fails a load. A compiler that dies is the host's failure: 503 with
//! `Retry-After` (or 500 when it will not pass by itself), never the 400 of an invalid plugin,
//! and the version already loaded keeps serving.

use crate::faults::{SmallDisk, fill};
use crate::serve;

use std::path::{Path, PathBuf};
use std::time::Instant;

use foldhost::runtime::{LimitPolicy, Limits, Plugin, PluginEngine, RuntimeError};
use foldhost_tests::simulated_fs::{SimulatedFs, Tree};
use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server, json};

const TOKEN: &str = "host-faults-admin-token";

fn engine(cache: &Path) -> PluginEngine {
    PluginEngine::new(Limits::default(), Some(cache.to_owned())).unwrap()
}

fn artifact(name: &str) -> Vec<u8> {
    std::fs::read(foldhost_plugins::path(name)).unwrap()
}

/// The names of the files in `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

/// Loads bank-account with `engine` and runs an instance of it: the load must not fail.
fn load_and_run(engine: &PluginEngine, fault: &str) {
    let bytes = artifact(foldhost_plugins::BANK_ACCOUNT);
    let plugin = Plugin::load(engine, &bytes, "bank-account.wasm")
        .unwrap_or_else(|error| panic!("{fault} failed the load: {error}"));
    assert_eq!(plugin.name(), "bank-account");
    plugin.instantiate_aggregate().unwrap();
}

#[test]
fn a_full_or_read_only_cache_disk_does_not_fail_a_load() {
    let disk = SmallDisk::mount("4m");
    let cache = disk.path().join("cache");
    let engine = engine(&cache);
    let ballast = fill(disk.path());
    load_and_run(&engine, "a full cache disk");
    assert_eq!(
        files(&cache),
        [] as [PathBuf; 0],
        "a temporary file was left"
    );

    std::fs::remove_file(ballast).unwrap();
    disk.make_read_only();
    load_and_run(&engine, "a read-only cache disk");
    assert_eq!(files(&cache), [] as [PathBuf; 0]);
}

#[test]
fn a_cache_disk_that_fails_every_read_and_write_does_not_fail_a_load() {
    let mountpoint = tempfile::tempdir().unwrap();
    let fs = SimulatedFs::new(&Tree::default());
    let _mounted = fs
        .mount(mountpoint.path())
        .expect("mounting needs /dev/fuse and root");
    let cache = mountpoint.path().join("cache");
    let engine = engine(&cache);
    load_and_run(&engine, "a working cache disk");
    assert_eq!(
        files(&cache).len(),
        1,
        "the compiled component was not cached"
    );

    // The cached artifact can no longer be read, nor a new one written.
    fs.cut();
    load_and_run(&engine, "a failing cache disk");
}

/// A load instantiates the plugin to check it: when the other instances hold the host's plugin
/// memory budget, that is the host's transient refusal (503), not an invalid plugin, and the
/// same load passes once they give memory back.
#[test]
fn a_load_that_meets_a_held_memory_budget_is_refused_for_now_not_as_invalid() {
    let policy = LimitPolicy {
        memory_budget: 64 << 20,
        ..LimitPolicy::default()
    };
    let engine = PluginEngine::with_policy(policy, None).unwrap();
    let bytes = artifact(foldhost_plugins::BANK_ACCOUNT);
    let loaded = Plugin::load(&engine, &bytes, "bank-account.wasm").unwrap();
    // Live instances, as many as the budget holds: one more of the same plugin cannot start.
    let mut held = Vec::new();
    loop {
        match loaded.instantiate_aggregate() {
            Ok(instance) => held.push(instance),
            Err(RuntimeError::MemoryBudget { .. }) => break,
            Err(other) => panic!("{other}"),
        }
        assert!(held.len() < 1000, "the budget holds no end of instances");
    }

    let error = Plugin::load(&engine, &bytes, "bank-account.wasm").unwrap_err();
    assert!(
        matches!(error, RuntimeError::MemoryBudget { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the host's plugin memory budget of 64.0 MiB is exhausted"),
        "{error}"
    );
    drop(held);
    Plugin::load(&engine, &bytes, "bank-account.wasm").unwrap();
}

/// A server whose data directory's `cache/` is a full disk loads its plugins directory, and
/// uploads, all the same; each failed write is logged with its path and cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_cache_disk_is_full_loads_and_serves_its_plugins() {
    let dirs = Dirs::new();
    let disk = SmallDisk::mount("4m");
    std::fs::create_dir_all(&dirs.data).unwrap();
    std::os::unix::fs::symlink(disk.path(), dirs.data.join("cache")).unwrap();
    fill(disk.path());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    command
        .args(["--admin-token", TOKEN])
        .env("RUST_LOG", "warn")
        .stderr(log.reopen().unwrap());
    let server = Server::launch(command);
    let client = Client::new();

    let listed = plugins(&client, &server).await;
    for name in foldhost_plugins::EXAMPLES {
        let info = &listed[*name];
        assert!(
            info["hash"].is_string() && info.get("last_error").is_none(),
            "{name}: {info}"
        );
    }
    let (status, body) = open_account(&client, &server, "ada").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload(&client, &server, foldhost_plugins::BANK_ACCOUNT_V2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "1.1.0", "{body}");
    let (status, body) = open_account(&client, &server, "bob").await;
    assert_eq!(status, 200, "{body}");

    let log = std::fs::read_to_string(log.path()).unwrap();
    let failed_writes = log
        .lines()
        .filter(|line| {
            line.contains("WARN")
                && line.contains("could not write the compiled plugin cache at")
                && line.contains("/cache/")
                && line.contains("No space left on device")
        })
        .count();
    assert_eq!(
        failed_writes,
        foldhost_plugins::EXAMPLES.len() + 1,
        "one warning per compiled plugin:\n{log}"
    );
}

/// An upload the data directory's `uploads/` cannot keep (a full disk) is refused with 503 and
/// a message that blames the host; the build serving stays, also across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_full_disk_cannot_keep_is_refused_and_the_old_build_stays() {
    let dirs = Dirs::new();
    let disk = SmallDisk::mount("4m");
    std::fs::create_dir_all(&dirs.data).unwrap();
    std::os::unix::fs::symlink(disk.path(), dirs.data.join("uploads")).unwrap();
    fill(disk.path());
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let before = plugins(&client, &server).await["bank-account"]["hash"].clone();

    let (status, body) = upload(&client, &server, foldhost_plugins::BANK_ACCOUNT_V2).await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("not a fault of the plugin")
            && message.contains("the upload kept for the next start")
            && message.contains("No space left on device"),
        "{message}"
    );
    let listed = plugins(&client, &server).await;
    assert_eq!(listed["bank-account"]["hash"], before, "{listed}");
    let (status, body) = open_account(&client, &server, "ada").await;
    assert_eq!(status, 200, "{body}");
    assert!(server.terminate().success());
    let server = Server::start(&dirs, Some(TOKEN));
    let listed = plugins(&client, &server).await;
    assert_eq!(listed["bank-account"]["hash"], before, "{listed}");
}

/// The compiler of an upload (a child process) is killed, as the out-of-memory killer would:
/// the upload answers 503 with `Retry-After` and a message that blames the host, not the
/// plugin; the version loaded before keeps serving; the same upload then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compiler_is_the_hosts_failure_and_the_loaded_version_keeps_serving() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let client = Client::new();
    let (status, body) = open_account(&client, &server, "ada").await;
    assert_eq!(status, 200, "{body}");
    let loaded = plugins(&client, &server).await["bank-account"]["hash"].clone();

    // The TypeScript bank-account takes seconds to compile: long enough to be found.
    let killed_upload = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/plugins/bank-account"));
        async move {
            let body = artifact(foldhost_plugins::BANK_ACCOUNT_JS);
            let response = client.put(url).bearer_auth(TOKEN).body(body);
            let response = response.send().await.unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            (json(response).await, retry_after)
        }
    });
    kill_compiler(&server).await;
    let ((status, body), retry_after) = killed_upload.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "a 503 says when to retry");
    let error = body["error"].as_str().unwrap();
    assert_eq!(
        error,
        "the host failed loading plugin bank-account (not a fault of the plugin): the \
         compiler failed (signal: 9 (SIGKILL))"
    );

    let info = plugins(&client, &server).await["bank-account"].clone();
    assert_eq!(info["hash"], loaded, "{info}");
    assert_eq!(info["last_error"], error, "{info}");
    let (status, body) = open_account(&client, &server, "bob").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = upload(&client, &server, foldhost_plugins::BANK_ACCOUNT_JS).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["hash"], loaded, "{body}");
    let (status, body) = open_account(&client, &server, "cyd").await;
    assert_eq!(status, 200, "{body}");
}

/// A plugin file dropped into the plugins directory whose compiler is killed (as the
/// out-of-memory killer would) is loaded again after a wait, without the file changing: before,
/// it stayed unloaded until the file changed or the host restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_whose_compiler_was_killed_is_loaded_again_after_a_wait() {
    let dirs = Dirs::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut command = Server::command(&dirs.data, Some(&dirs.plugins));
    command
        .env("RUST_LOG", "error")
        .stderr(log.reopen().unwrap());
    let server = Server::launch(command);
    let client = Client::new();
    let rust = plugins(&client, &server).await["bank-account"]["hash"].clone();

    // The TypeScript bank-account takes seconds to compile: long enough to be found.
    let staged = dirs.data.join("bank-account-ts.wasm");
    std::fs::write(&staged, artifact(foldhost_plugins::BANK_ACCOUNT_JS)).unwrap();
    std::fs::rename(&staged, dirs.plugins.join("bank-account-ts.wasm")).unwrap();
    kill_compiler(&server).await;

    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = plugins(&client, &server).await["bank-account"].clone();
        if info["hash"] != rust {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file was not loaded again: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = open_account(&client, &server, "ada").await;
    assert_eq!(status, 200, "{body}");
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        log.contains("bank-account-ts.wasm")
            && log.contains("SIGKILL")
            && log.contains("loaded again after a wait"),
        "the first load failed for the killed compiler:\n{log}"
    );
}

/// Kills the server's `compile-component` child with SIGKILL, as the out-of-memory killer
/// would, once it runs.
async fn kill_compiler(server: &Server) {
    let compiler = tokio::task::spawn_blocking({
        let server = server.pid();
        move || find_compiler(server)
    })
    .await
    .unwrap();
    // SAFETY: kill(2) on a child of the server, found running a moment ago.
    assert_eq!(unsafe { libc::kill(compiler, libc::SIGKILL) }, 0);
}

/// The pid of the server's `compile-component` child, once it runs.
fn find_compiler(server: i32) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let children = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok());
        for pid in children {
            let (Ok(stat), Ok(cmdline)) = (
                std::fs::read_to_string(format!("/proc/{pid}/stat")),
                std::fs::read(format!("/proc/{pid}/cmdline")),
            ) else {
                continue;
            };
            // The parent pid is the second field after the command name in parentheses.
            let parent = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok());
            let compiling = cmdline
                .split(|&byte| byte == 0)
                .any(|arg| arg == b"compile-component");
            if parent == Some(server) && compiling {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no compiler was started");
        std::thread::yield_now();
    }
}

async fn plugins(client: &Client, server: &Server) -> Value {
    let response = client.get(server.url("/plugins")).send().await.unwrap();
    let (status, list) = json(response).await;
    assert_eq!(status, 200, "{list}");
    let loaded = list.as_array().unwrap().iter().filter_map(|info| {
        let name = info["name"].as_str()?;
        Some((name.to_owned(), info.clone()))
    });
    Value::Object(loaded.collect())
}

async fn upload(client: &Client, server: &Server, artifact_name: &str) -> (u16, Value) {
    let response = client
        .put(server.url("/plugins/bank-account"))
        .bearer_auth(TOKEN)
        .body(artifact(artifact_name))
        .send()
        .await
        .unwrap();
    json(response).await
}

async fn open_account(client: &Client, server: &Server, id: &str) -> (u16, Value) {
    let url = server.url(&format!("/aggregates/bank-account/{id}/commands"));
    let command = json!({"type": "Open", "data": {"owner": id}});
    json(client.post(url).json(&command).send().await.unwrap()).await
}
