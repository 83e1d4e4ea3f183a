//! The cache of compiled components never loads a damaged or foreign artifact: wasmtime maps
//! cached code as executable after checking little more than its header, so the cache checks
//! a checksum first, and recompiles (and rewrites) whatever fails it.

use std::path::{Path, PathBuf};

use foldhost::runtime::{Limits, Plugin, PluginEngine};

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
