//! `foldhost plugins new`: a plugin project that builds outside this
//! repository with only the language's own toolchain and foldhost.
//!
//! Every template is built into the binary. A Rust project gets the Rust SDK
//! vendored into `foldhost-guest/` (its dependencies come from crates.io), so
//! it needs no checkout of foldhost; a Python project gets the SDK from
//! `foldhost plugins build` at build time, and so does a JavaScript one (its
//! types are vendored into `foldhost-guest/index.d.ts` for tsc and editors).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::{Lang, contract, python};

/// One file of a new project: its path inside the project and its text.
pub type File = (PathBuf, String);

/// The files of a new `lang` project for plugin `name`.
pub fn files(lang: Lang, name: &str) -> anyhow::Result<Vec<File>> {
    check_name(name)?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{module}}", &name.replace('-', "_"))
            .replace("{{contract}}", contract::VERSION)
            .replace("{{componentize_py}}", python::COMPONENTIZE_PY)
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
    };
    let module = name.replace('-', "_");
    let files = match lang {
        Lang::Rust => {
            let mut files = vec![
                (
                    "Cargo.toml".into(),
                    fill(include_str!("../templates/rust/Cargo.toml")),
                ),
                (
                    "src/lib.rs".into(),
                    fill(include_str!("../templates/rust/src/lib.rs")),
                ),
                (
                    ".cargo/config.toml".into(),
                    include_str!("../templates/rust/.cargo/config.toml").to_owned(),
                ),
                (".gitignore".into(), "/target\n*.wasm\n".to_owned()),
                (
                    "foldhost-guest/Cargo.toml".into(),
                    fill(include_str!("../templates/rust/sdk-Cargo.toml")),
                ),
                (
                    "foldhost-guest/wit/foldhost.wit".into(),
                    contract::WIT.to_owned(),
                ),
            ];
            for (path, text) in RUST_SDK {
                // The SDK finds the contract beside its own manifest.
                let text = text.replace(r#"path: "../../wit""#, r#"path: "wit""#);
                files.push((Path::new("foldhost-guest/src").join(path), text));
            }
            files
        }
        Lang::Python => vec![
            (
                "pyproject.toml".into(),
                fill(include_str!("../templates/python/pyproject.toml")),
            ),
            (
                format!("{module}.py").into(),
                fill(include_str!("../templates/python/app.py")),
            ),
            (".gitignore".into(), "__pycache__/\n*.wasm\n".to_owned()),
        ],
        Lang::Js => vec![
            (
                "package.json".into(),
                fill(include_str!("../templates/js/package.json")),
            ),
            (
                "tsconfig.json".into(),
                fill(include_str!("../templates/js/tsconfig.json")),
            ),
            (
                "src/index.ts".into(),
                fill(include_str!("../templates/js/src/index.ts")),
            ),
            // The SDK's types, for tsc and editors; the build brings the SDK itself.
            (
                "foldhost-guest/index.d.ts".into(),
                include_str!("../../guest-sdk/js/index.d.ts").to_owned(),
            ),
            (".gitignore".into(), "node_modules/\n*.wasm\n".to_owned()),
        ],
    };
    Ok(files)
}

/// Writes a new `lang` project for plugin `name` into `dir`, which must not
/// exist or be empty.
pub fn create(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<()> {
    let files = files(lang, name)?;
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Plugin names become stream categories, crate and module names.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        bail!(
            "plugin name {name:?}: use 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter"
        );
    }
    Ok(())
}

/// The Rust SDK's sources (`guest-sdk/rust/src`), built into this binary.
const RUST_SDK: &[(&str, &str)] = &[
    rust_sdk_file!("lib.rs"),
    rust_sdk_file!("aggregate.rs"),
    rust_sdk_file!("batch.rs"),
    rust_sdk_file!("bindings.rs"),
    rust_sdk_file!("heap.rs"),
    rust_sdk_file!("log.rs"),
    rust_sdk_file!("memcmp.rs"),
    rust_sdk_file!("projection.rs"),
    rust_sdk_file!("runtime.rs"),
    rust_sdk_file!("runtime/tests.rs"),
    rust_sdk_file!("state.rs"),
    rust_sdk_file!("text.rs"),
    rust_sdk_file!("upcaster.rs"),
    rust_sdk_file!("words.rs"),
    rust_sdk_file!("codec/mod.rs"),
    rust_sdk_file!("codec/de.rs"),
    rust_sdk_file!("codec/ser.rs"),
    rust_sdk_file!("codec/tests.rs"),
];

macro_rules! rust_sdk_file {
    ($path:literal) => {
        (
            $path,
            include_str!(concat!("../../guest-sdk/rust/src/", $path)),
        )
    };
}
use rust_sdk_file;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::RUST_SDK;

    /// Every source file of the Rust SDK is built in: a new plugin's copy must compile.
    #[test]
    fn the_built_in_rust_sdk_has_every_source_file() {
        fn walk(dir: &Path, root: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let relative = path.strip_prefix(root).unwrap();
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/rust/src");
        let mut found = Vec::new();
        walk(&root, &root, &mut found);
        found.sort();
        let mut built_in: Vec<String> = RUST_SDK.iter().map(|(path, _)| path.to_string()).collect();
        built_in.sort();
        assert_eq!(built_in, found);
    }
}
