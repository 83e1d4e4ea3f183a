//! Every artifact is a component with exactly the expected contract export and
//! no imports beyond the contract (in particular, no WASI).

use foldhost_plugins::{EXAMPLES, OTHER_LANGUAGES, TEST_ARTIFACTS, UPCASTERS, path};
use wit_component::DecodedWasm;

/// The component's imported and exported interface names.
fn interfaces(name: &str) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let DecodedWasm::Component(resolve, world) = wit_component::decode(&bytes).unwrap() else {
        panic!("{name} is not a component");
    };
    let world = &resolve.worlds[world];
    let names = |items: Vec<_>| {
        items
            .into_iter()
            .map(|key| resolve.name_world_key(key))
            .collect()
    };
    (
        names(world.imports.keys().collect()),
        names(world.exports.keys().collect()),
    )
}

fn expected_export(name: &str) -> &'static str {
    match name {
        "bank-analytics"
        | "bank-analytics-v2"
        | "bank-analytics-lenient"
        | "bank-analytics-js"
        | "bank-analytics-python"
        | "mischief" => "foldhost:plugin/projection@0.1.1",
        "bank-upcast-v1" | "bank-upcast-v2" | "hostile-upcaster" => {
            "foldhost:plugin/upcaster@0.1.1"
        }
        "wrong-contract" => "foldhost:plugin/aggregate@0.2.0",
        "old-contract" => "foldhost:plugin/aggregate@0.1.0",
        _ => "foldhost:plugin/aggregate@0.1.1",
    }
}

#[test]
fn each_artifact_exports_one_world_and_imports_only_the_contract() {
    let all = EXAMPLES.iter().chain(TEST_ARTIFACTS).chain(UPCASTERS);
    for &name in all.chain(OTHER_LANGUAGES) {
        let (imports, exports) = interfaces(name);
        let export = expected_export(name);
        // componentize-py adds an `exports` instance of its own, and componentize-qjs keeps
        // its build-time initialiser `init`; the host calls neither: the contract is what counts.
        let contract: Vec<_> = exports
            .iter()
            .filter(|e| e.starts_with("foldhost:"))
            .collect();
        assert_eq!(contract, [export], "{name} exports");
        let version = &export[export.rfind('@').unwrap()..];
        for import in &imports {
            assert!(
                import.starts_with("foldhost:plugin/") && import.ends_with(version),
                "{name} imports {import}"
            );
        }
    }
}

#[test]
fn plugins_that_log_import_the_host() {
    let (imports, _) = interfaces("bank-account");
    assert!(
        imports.iter().any(|i| i == "foldhost:plugin/host@0.1.1"),
        "{imports:?}"
    );
}

#[test]
fn the_v2_artifacts_differ_from_v1() {
    for name in ["bank-analytics", "bank-account"] {
        let v1 = std::fs::read(path(name)).unwrap();
        let v2 = std::fs::read(path(&format!("{name}-v2"))).unwrap();
        assert_ne!(v1, v2, "{name}");
    }
}

#[test]
fn examples_copy_into_a_directory() {
    let dir = std::env::temp_dir().join(format!("foldhost-plugins-{}", std::process::id()));
    let files = foldhost_plugins::copy_examples(&dir).unwrap();
    assert_eq!(files.len(), EXAMPLES.len());
    assert!(files.iter().all(|f| f.metadata().unwrap().len() > 0));
    std::fs::remove_dir_all(dir).unwrap();
}
