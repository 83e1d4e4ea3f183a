//! JavaScript and TypeScript plugins (`package.json`): the SDK built into this
//! binary (`guest-sdk/js`) bundles the project with esbuild, stripping
//! TypeScript types, and componentize-qjs embeds the bundle in QuickJS with
//! every WASI import stubbed out, so the component imports only the contract.
//! The world follows from the entry module's export, `aggregate` or
//! `projection`; the entry is `package.json`'s `main`, else `src/index.ts` or
//! `src/index.js`.
//!
//! The tools (esbuild, componentize-qjs, TypeScript) are pinned by the SDK's
//! `package-lock.json` and installed with `npm ci` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::{contract, tools};

/// The manifest that marks a JavaScript plugin project.
pub const MANIFEST: &str = "package.json";

/// The SDK (`guest-sdk/js`): its build script, sources, types and pinned toolchain.
pub const SDK: &[(&str, &str)] = &[
    sdk_file!("package.json"),
    sdk_file!("package-lock.json"),
    sdk_file!("build.mjs"),
    sdk_file!("index.d.ts"),
    sdk_file!("src/aggregate.js"),
    sdk_file!("src/batch.js"),
    sdk_file!("src/determinism.js"),
    sdk_file!("src/errors.js"),
    sdk_file!("src/fold.js"),
    sdk_file!("src/index.js"),
    sdk_file!("src/json.js"),
    sdk_file!("src/log.js"),
    sdk_file!("src/projection.js"),
    sdk_file!("src/readonly.js"),
    sdk_file!("src/utf8.js"),
];

macro_rules! sdk_file {
    ($path:literal) => {
        ($path, include_str!(concat!("../../guest-sdk/js/", $path)))
    };
}
use sdk_file;

/// The files that pin the toolchain; `npm ci` installs what they name.
const LOCK: [&str; 2] = ["package.json", "package-lock.json"];

/// Builds the project in `project` and returns its component.
pub fn build(project: &Path) -> anyhow::Result<Vec<u8>> {
    let toolchain = ensure_toolchain()?;
    let work = tempfile::tempdir().context("creating a build directory")?;
    let (wit, sdk) = (work.path().join("wit"), work.path().join("sdk"));
    std::fs::create_dir_all(&wit)?;
    std::fs::write(wit.join("foldhost.wit"), contract::WIT)?;
    write_sdk(&sdk)?;
    let output = work.path().join("plugin.wasm");
    tools::run(
        Command::new(node())
            .arg(sdk.join("build.mjs"))
            .arg(project)
            .arg("-o")
            .arg(&output)
            .arg("--wit")
            .arg(&wit)
            .arg("--toolchain")
            .arg(&toolchain),
        "building the JavaScript plugin (esbuild, componentize-qjs)",
    )?;
    std::fs::read(&output).with_context(|| format!("reading {}", output.display()))
}

/// Writes the SDK's files into `dir`.
pub fn write_sdk(dir: &Path) -> anyhow::Result<()> {
    for (path, text) in SDK {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What a build reads besides the project: the SDK and its pinned toolchain.
pub fn toolchain_fingerprint(hasher: &mut Sha256) {
    for (name, text) in SDK {
        hasher.update(name);
        hasher.update(text);
    }
}

/// Node.js: `$FOLDHOST_NODE`, else `node`.
fn node() -> String {
    std::env::var("FOLDHOST_NODE").unwrap_or_else(|_| "node".to_owned())
}

/// The folder whose `node_modules` holds the pinned toolchain, installed
/// there with `npm ci` on first use (one folder per lock file).
pub fn ensure_toolchain() -> anyhow::Result<PathBuf> {
    let mut hasher = Sha256::new();
    for (name, text) in SDK.iter().filter(|(name, _)| LOCK.contains(name)) {
        hasher.update(name);
        hasher.update(text);
    }
    let tools = tools::tools_dir();
    let dir = tools.join(format!("js-{}", &hex::encode(hasher.finalize())[..16]));
    if dir.join("node_modules/.package-lock.json").is_file() {
        return Ok(dir);
    }
    if !tools::available(&node()) || !tools::available("npm") {
        bail!(
            "building JavaScript plugins needs Node.js 20 or newer with npm (e.g. `apt-get install \
             nodejs npm`), to install the pinned esbuild and componentize-qjs"
        );
    }
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    // Install beside the final folder, then rename: concurrent builds never
    // see a half-installed toolchain.
    let staging = tempfile::Builder::new().prefix(".js-").tempdir_in(&tools)?;
    for (name, text) in SDK.iter().filter(|(name, _)| LOCK.contains(name)) {
        std::fs::write(staging.path().join(name), text)?;
    }
    eprintln!(
        "installing the JavaScript plugin toolchain into {} (npm ci)",
        dir.display()
    );
    tools::run(
        Command::new("npm").current_dir(staging.path()).args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]),
        "npm ci (esbuild, componentize-qjs)",
    )?;
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok(dir)
        }
        Err(_) if dir.join("node_modules/.package-lock.json").is_file() => Ok(dir),
        Err(error) => {
            Err(error).with_context(|| format!("moving the toolchain to {}", dir.display()))
        }
    }
}
