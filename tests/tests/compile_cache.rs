//! The cache of compiled components never loads a damaged or foreign artifact: wasmtime maps
//! cached code as executable after checking little more than its header, so the cache checks
//! a checksum first, and recompiles (and rewrites) whatever fails it. `serve` compiles in a
//! child process, so that a first start holds no more memory than a restart.

use crate::serve;

use std::path::{Path, PathBuf};

use foldhost::runtime::{Limits, Plugin, PluginEngine};
use serve::{BIN, Server};

fn engine(cache: &Path) -> PluginEngine {
    PluginEngine::new(Limits::default(), Some(cache.to_owned())).unwrap()
}

/// The one artifact in `cache`.
fn artifact(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn a_damaged_or_foreign_artifact_is_recompiled_not_loaded() {
    let account = std::fs::read(foldhost_plugins::path("bank-account")).unwrap();
    let analytics = std::fs::read(foldhost_plugins::path("bank-analytics")).unwrap();
    let (cache, other_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let engine = engine(cache.path());
    Plugin::load(&engine, &account, "bank-account").unwrap();
    let path = artifact(cache.path());
    let good = std::fs::read(&path).unwrap();
    Plugin::load(
        &self::engine(other_cache.path()),
        &analytics,
        "bank-analytics",
    )
    .unwrap();
    let foreign = std::fs::read(artifact(other_cache.path())).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let damages = [
        ("a flipped byte in the compiled code", flipped),
        (
            "a torn write (the first half)",
            good[..good.len() / 2].to_vec(),
        ),
        ("an empty file", Vec::new()),
        ("the artifact of another plugin", foreign),
    ];
    for (damage, bytes) in damages {
        std::fs::write(&path, &bytes).unwrap();
        let plugin = Plugin::load(&engine, &account, "bank-account")
            .unwrap_or_else(|error| panic!("{damage}: {error:#}"));
        assert_eq!(plugin.name(), "bank-account", "{damage} was loaded");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "{damage}: the component was not recompiled and cached again"
        );
        assert_eq!(artifact(cache.path()), path, "no temporary file is left");
    }
}

/// A component that imports anything beyond the contract (here WASI's wall clock) is refused
/// from its import names alone, before anything compiles it: nothing lands in the cache. (A
/// Python component takes a minute to compile on a busy machine; a refusal takes microseconds.)
#[test]
fn a_forbidden_import_is_refused_before_anything_compiles() {
    let cache = tempfile::tempdir().unwrap();
    let error = Plugin::load(
        &engine(cache.path()),
        &clock_importing_component(),
        "clock.wasm",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("imports wasi:clocks/wall-clock@0.2.0, which foldhost does not provide"),
        "{error}"
    );
    let cached = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(
        cached, 0,
        "the component was compiled before it was refused"
    );
}

/// `(component (import "wasi:clocks/wall-clock@0.2.0" (instance)))`: valid, so wasmtime would
/// compile it.
fn clock_importing_component() -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
    };
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imports = ComponentImportSection::new();
    imports.import(
        "wasi:clocks/wall-clock@0.2.0",
        ComponentTypeRef::Instance(0),
    );
    let mut component = Component::new();
    component.section(&types).section(&imports);
    component.finish()
}

#[test]
fn a_child_compiles_what_this_process_loads_and_reports_what_it_refuses() {
    let account = std::fs::read(foldhost_plugins::path("bank-account")).unwrap();
    // Metered engines compile differently: the child must be told, or the code will not load.
    for fuel in [None, Some(1_000_000_000)] {
        let cache = tempfile::tempdir().unwrap();
        let limits = Limits {
            fuel,
            ..Limits::default()
        };
        let engine = PluginEngine::new(limits, Some(cache.path().to_owned()))
            .unwrap()
            .compile_in_child(BIN.into());
        let plugin = Plugin::load(&engine, &account, "bank-account.wasm").unwrap();
        assert_eq!(plugin.description.name, "bank-account");
        assert!(artifact(cache.path()).exists());

        let error = engine.compile(b"\0asm not a component").unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("unknown binary version")
                && message.contains("compiler exit status: 65"),
            "{message}"
        );
    }
}

/// The server's resident memory once its plugins (bank-account, bank-analytics) are loaded.
fn idle_rss_mib(data: &Path, plugins: &Path) -> f64 {
    let server = Server::start_with(data, Some(plugins), None);
    server.wait_plugins_loaded();
    let rss = server.usage().rss_kib as f64 / 1024.0;
    server.terminate();
    rss
}

#[test]
fn a_first_start_that_compiles_holds_no_more_memory_than_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let (data, plugins) = (root.path().join("data"), root.path().join("plugins"));
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["bank-account", "bank-analytics"] {
        std::fs::copy(
            foldhost_plugins::path(name),
            plugins.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let first = idle_rss_mib(&data, &plugins);
    assert_eq!(std::fs::read_dir(data.join("cache")).unwrap().count(), 2);
    let restart = idle_rss_mib(&data, &plugins);
    // Compiling in the server itself leaves ~10 MiB more resident (release build; more in
    // debug): the compiler's code pages and its freed working memory.
    assert!(
        first <= restart + 3.0,
        "a first start holds {first:.1} MiB, a restart {restart:.1} MiB"
    );
}
