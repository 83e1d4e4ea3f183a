//! From a plugin's source to a component checked against the foldhost
//! contract: the engine behind `foldhost plugins build`, the host's check of
//! uploaded components, and the workspace's own example builds.
//!
//! ```no_run
//! let built = foldhost_plugin_build::build(std::path::Path::new("my-plugin"))?;
//! std::fs::write("my-plugin.wasm", &built.component)?;
//! # anyhow::Ok(())
//! ```
//!
//! The language is told by the project's manifest: `Cargo.toml` (Rust),
//! `pyproject.toml` (Python), `package.json` (JavaScript). Each language
//! module turns the project into a core module or a component; a core module
//! is componentized with `wit-component`; the result is checked against the
//! contract (one world, only the contract's imports) before it is returned.

#![warn(missing_docs)]

pub mod componentize;
pub mod contract;
pub mod js;
pub mod python;
pub mod rust;
pub mod scaffold;
pub mod tools;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

pub use contract::{ContractError, World};

/// A plugin's source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A Cargo crate.
    Rust,
    /// A componentize-py project.
    Python,
    /// A JavaScript or TypeScript package.
    Js,
}

impl Lang {
    /// Every language, in detection order.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// The manifest file that marks a project of this language.
    pub fn manifest(self) -> &'static str {
        match self {
            Lang::Rust => rust::MANIFEST,
            Lang::Python => python::MANIFEST,
            Lang::Js => js::MANIFEST,
        }
    }

    /// The language of the project in `dir`, from its manifest.
    pub fn detect(dir: &Path) -> anyhow::Result<Lang> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        Lang::ALL
            .into_iter()
            .find(|lang| dir.join(lang.manifest()).is_file())
            .with_context(|| {
                format!(
                    "{} holds no plugin project: expected a Cargo.toml (Rust), a pyproject.toml \
                     (Python) or a package.json (JavaScript); `foldhost plugins new` makes one",
                    dir.display()
                )
            })
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        })
    }
}

/// A built plugin.
#[derive(Debug)]
pub struct Built {
    /// The project's language.
    pub lang: Lang,
    /// The world the component implements.
    pub world: World,
    /// The component, checked against the contract.
    pub component: Vec<u8>,
}

/// Builds the project in `dir` with its language's toolchain.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let lang = Lang::detect(dir)?;
    let output = match lang {
        Lang::Rust => rust::build(dir)?,
        Lang::Python => python::build(dir)?,
        Lang::Js => js::build(dir)?,
    };
    let (component, world) = finish(&output)?;
    Ok(Built {
        lang,
        world,
        component,
    })
}

/// A toolchain's output as a component that passes the contract check, and its world.
pub fn finish(output: &[u8]) -> anyhow::Result<(Vec<u8>, World)> {
    let component = componentize::to_component(output)?.into_owned();
    let world =
        contract::check(&component).context("the built component does not fit the contract")?;
    Ok((component, world))
}

/// A fingerprint of everything building `dir` reads (its files, the contract,
/// the SDK and the pinned toolchain), for callers that cache builds. Rust
/// projects are left to cargo's own caching.
pub fn fingerprint(dir: &Path) -> anyhow::Result<String> {
    let lang = Lang::detect(dir)?;
    let mut hasher = Sha256::new();
    hasher.update(lang.to_string());
    hasher.update(contract::WIT);
    match lang {
        Lang::Rust => bail!(
            "{} is a Rust project: cargo caches its builds",
            dir.display()
        ),
        Lang::Python => python::toolchain_fingerprint(&mut hasher),
        Lang::Js => js::toolchain_fingerprint(&mut hasher),
    }
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    for file in files {
        hasher.update(
            file.strip_prefix(dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(std::fs::read(&file)?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Every file under `dir`, skipping caches and installed dependencies.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let skipped = path
            .file_name()
            .is_some_and(|n| n == "__pycache__" || n == "node_modules" || n == "target");
        if skipped {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
