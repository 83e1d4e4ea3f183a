//! Every artifact is a component with exactly the expected contract exports and
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

/// The contract interfaces `name` exports: its world's, plus the packed fold (0.1.2) for
/// Rust aggregates and projections built with the SDK; in name order.
fn expected_exports(name: &str) -> Vec<&'static str> {
    match name {
        "bank-analytics"
        | "bank-analytics-v2"
        | "bank-analytics-lenient"
        | "mischief"
        | "mischief-broken-init" => vec![
            "foldhost:plugin/packed-projection@0.1.2",
            "foldhost:plugin/projection@0.1.2",
        ],
        "bank-analytics-js" | "bank-analytics-python" => vec!["foldhost:plugin/projection@0.1.2"],
        "bank-upcast-v1" | "bank-upcast-v2" | "hostile-upcaster" => {
            vec!["foldhost:plugin/upcaster@0.1.2"]
        }
        "wrong-contract" => vec!["foldhost:plugin/aggregate@0.2.0"],
        "old-contract" => vec!["foldhost:plugin/aggregate@0.1.0"],
        // Written in WebAssembly text, Python or JavaScript: the base world only.
        _ if name.starts_with("hoarder") || name.ends_with("-js") || name.ends_with("-python") => {
            vec!["foldhost:plugin/aggregate@0.1.2"]
        }
        _ => vec![
            "foldhost:plugin/aggregate@0.1.2",
            "foldhost:plugin/packed-aggregate@0.1.2",
        ],
    }
}

#[test]
fn each_artifact_exports_one_world_and_imports_only_the_contract() {
    let all = EXAMPLES.iter().chain(TEST_ARTIFACTS).chain(UPCASTERS);
    for &name in all.chain(OTHER_LANGUAGES) {
        let (imports, exports) = interfaces(name);
        let expected = expected_exports(name);
        // componentize-py adds an `exports` instance of its own, and componentize-qjs keeps
        // its build-time initialiser `init`; the host calls neither: the contract is what counts.
        let mut contract: Vec<_> = exports
            .iter()
            .filter(|e| e.starts_with("foldhost:"))
            .collect();
        contract.sort();
        assert_eq!(contract, expected, "{name} exports");
        let version = &expected[0][expected[0].rfind('@').unwrap()..];
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
        imports.iter().any(|i| i == "foldhost:plugin/host@0.1.2"),
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
    // The next builds go beside them, in v2/, under the names of the plugins they replace.
    let next = foldhost_plugins::copy_next_versions(&dir).unwrap();
    assert_eq!(next.len(), 2);
    for (file, build) in next.iter().zip(["bank-analytics-v2", "bank-account-v2"]) {
        assert_eq!(*file, dir.join("v2").join(build.replace("-v2", ".wasm")));
        assert_eq!(
            std::fs::read(file).unwrap(),
            std::fs::read(path(build)).unwrap()
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
