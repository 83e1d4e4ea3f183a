//! Rust plugins: `cargo build --release --target wasm32-unknown-unknown`,
//! then the core module is componentized by the caller.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::tools;

/// The manifest that marks a Rust plugin project.
pub const MANIFEST: &str = "Cargo.toml";
/// The target plugins are built for: std without WASI, so no imports but the contract's.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Builds the crate in `project` and returns its core module.
pub fn build(project: &Path) -> anyhow::Result<Vec<u8>> {
    ensure_target()?;
    let project = &std::path::absolute(project)
        .with_context(|| format!("resolving {}", project.display()))?;
    let manifest = project.join(MANIFEST);
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Run in the project, so its .cargo/config.toml (the plugin's stack size) applies.
    cargo
        .current_dir(project)
        .args(["build", "--release", "--target", TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = cargo
        .output()
        .context("running cargo (is the Rust toolchain installed? https://rustup.rs)")?;
    if !output.status.success() {
        bail!(
            "cargo build failed ({}); see its output above",
            output.status
        );
    }
    let module = cdylib(&output.stdout, &manifest)?;
    std::fs::read(&module).with_context(|| format!("reading {}", module.display()))
}

/// Installs the wasm target through rustup when it is missing, or says how.
pub fn ensure_target() -> anyhow::Result<()> {
    if target_installed() {
        return Ok(());
    }
    if tools::available("rustup") {
        eprintln!("installing the Rust target {TARGET} (rustup target add {TARGET})");
        tools::run(
            Command::new("rustup").args(["target", "add", TARGET]),
            "rustup target add",
        )?;
        return Ok(());
    }
    bail!(
        "the Rust target {TARGET} is missing and rustup is not on PATH: install it with \
         `rustup target add {TARGET}` (or your distribution's rust-std for {TARGET})"
    )
}

fn target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .is_ok_and(|output| {
            output.status.success()
                && Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir()
        })
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    crate_types: Vec<String>,
}

/// The `.wasm` of the cdylib built for `manifest`, from cargo's JSON messages.
fn cdylib(messages: &[u8], manifest: &Path) -> anyhow::Result<PathBuf> {
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_owned());
    let found = String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<Message>(line).ok())
        .filter(|m| m.reason == "compiler-artifact")
        .filter(|m| m.manifest_path.as_deref() == Some(manifest.as_path()))
        .filter(|m| {
            m.target
                .as_ref()
                .is_some_and(|t| t.crate_types.iter().any(|c| c == "cdylib"))
        })
        .flat_map(|m| m.filenames)
        .find(|file| file.extension().is_some_and(|ext| ext == "wasm"));
    found.with_context(|| {
        format!(
            "cargo built no cdylib for {}: add `[lib] crate-type = [\"cdylib\"]` to it",
            manifest.display()
        )
    })
}
