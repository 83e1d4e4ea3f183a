//! Python plugins: componentize-py (pinned, installed on first use) bundles
//! CPython, the SDK built into this binary and the project's module into a
//! component whose WASI imports are stubbed out (`--stub-wasi`), so it
//! imports only the contract.
//!
//! A project is a folder with a `pyproject.toml` naming its world and module:
//!
//! ```toml
//! [tool.foldhost]
//! world = "aggregate"      # or "projection"
//! module = "bank_account"  # the module that calls foldhost_guest.export(...)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::contract::{self, World};
use crate::tools;

/// The manifest that marks a Python plugin project.
pub const MANIFEST: &str = "pyproject.toml";
/// The componentize-py release plugins are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The SDK package `foldhost_guest` (`guest-sdk/python`), built into this binary.
pub const SDK: &[(&str, &str)] = &[
    sdk_file!("__init__.py"),
    sdk_file!("codec.py"),
    sdk_file!("determinism.py"),
    sdk_file!("log.py"),
    sdk_file!("plugin.py"),
    sdk_file!("runtime.py"),
    sdk_file!("_wit.py"),
];

macro_rules! sdk_file {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../guest-sdk/python/foldhost_guest/", $name)),
        )
    };
}
use sdk_file;

/// The app module componentize-py wraps: imports the author's module (which
/// calls `export`) and names the SDK's export classes.
const ENTRY: &str = "foldhost_plugin_main";

#[derive(Deserialize)]
struct PyProject {
    tool: Option<ToolTable>,
}

#[derive(Deserialize)]
struct ToolTable {
    foldhost: Option<Settings>,
}

/// A project's `[tool.foldhost]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `aggregate` or `projection`.
    pub world: String,
    /// The module calling `export`; default `app`.
    #[serde(default = "default_module")]
    pub module: String,
}

fn default_module() -> String {
    "app".to_owned()
}

impl Settings {
    /// Reads `project/pyproject.toml`.
    pub fn read(project: &Path) -> anyhow::Result<Self> {
        let path = project.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed: PyProject =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        parsed.tool.and_then(|t| t.foldhost).with_context(|| {
            format!(
                "{} has no [tool.foldhost] table: add one with world = \"aggregate\" (or \
                 \"projection\") and module = \"<your module>\"",
                path.display()
            )
        })
    }

    /// The world named by `world`.
    pub fn world(&self) -> anyhow::Result<World> {
        match self.world.as_str() {
            "aggregate" => Ok(World::Aggregate),
            "projection" => Ok(World::Projection),
            other => {
                bail!("[tool.foldhost] world = {other:?}: expected \"aggregate\" or \"projection\"")
            }
        }
    }
}

/// Builds the project in `project` and returns its component.
pub fn build(project: &Path) -> anyhow::Result<Vec<u8>> {
    let settings = Settings::read(project)?;
    let world = settings.world()?;
    let tool = ensure_componentize_py()?;
    let work = tempfile::tempdir().context("creating a build directory")?;
    let wit = work.path().join("wit");
    let sdk = work.path().join("sdk");
    std::fs::create_dir_all(&wit)?;
    std::fs::create_dir_all(sdk.join("foldhost_guest"))?;
    std::fs::write(wit.join("foldhost.wit"), contract::WIT)?;
    for (name, text) in SDK {
        std::fs::write(sdk.join("foldhost_guest").join(name), text)?;
    }
    let class = match world {
        World::Aggregate => "Aggregate",
        World::Projection => "Projection",
        World::Upcaster => anyhow::bail!("the Python SDK does not write upcasters yet"),
    };
    std::fs::write(
        sdk.join(format!("{ENTRY}.py")),
        format!(
            "import {}\nfrom foldhost_guest._wit import {class}\n",
            settings.module
        ),
    )?;
    let output = work.path().join("plugin.wasm");
    let project = project
        .canonicalize()
        .with_context(|| format!("opening {}", project.display()))?;
    let mut command = python_command(&tool);
    command
        .current_dir(work.path())
        .arg("-d")
        .arg(&wit)
        .args(["-w", world.wit_name(), "componentize", "--stub-wasi", "-p"])
        .arg(&sdk)
        .arg("-p")
        .arg(&project)
        .arg("-o")
        .arg(&output)
        .arg(ENTRY);
    tools::run(&mut command, &format!("componentize-py {COMPONENTIZE_PY}"))?;
    std::fs::read(&output).with_context(|| format!("reading {}", output.display()))
}

/// What a build reads besides the project: the componentize-py release and the SDK.
pub fn toolchain_fingerprint(hasher: &mut Sha256) {
    hasher.update(COMPONENTIZE_PY);
    for (name, text) in SDK {
        hasher.update(name);
        hasher.update(text);
    }
}

/// The Python interpreter: `$FOLDHOST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("FOLDHOST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// `python3 -c <start componentize-py>` with the installed tool on its path.
fn python_command(tool: &Path) -> Command {
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg("import sys, componentize_py; sys.argv[0] = 'componentize-py'; componentize_py.script()")
        .env("PYTHONPATH", tool)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// The folder holding componentize-py, installed there with pip on first use.
pub fn ensure_componentize_py() -> anyhow::Result<PathBuf> {
    let tools = tools::tools_dir();
    let dir = tools.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    if dir.join("componentize_py").is_dir() {
        return Ok(dir);
    }
    let python = python();
    let pip_works = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip_works {
        bail!(
            "building Python plugins needs componentize-py {COMPONENTIZE_PY}, installed with pip, \
             but `{python} -m pip` does not run: install Python 3 with pip (e.g. `apt-get install \
             python3-pip`), or set FOLDHOST_PYTHON to an interpreter that has it"
        );
    }
    std::fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    // Install beside the final folder, then rename: concurrent builds never
    // see a half-installed tool.
    let staging = tempfile::Builder::new()
        .prefix(".componentize-py-")
        .tempdir_in(&tools)?;
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY} into {} (pip)",
        dir.display()
    );
    tools::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                "--root-user-action=ignore",
                "--no-warn-script-location",
                "--target",
            ])
            .arg(staging.path())
            .arg(format!("componentize-py=={COMPONENTIZE_PY}")),
        &format!("pip install componentize-py=={COMPONENTIZE_PY}"),
    )?;
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok(dir)
        }
        Err(_) if dir.join("componentize_py").is_dir() => Ok(dir),
        Err(error) => {
            Err(error).with_context(|| format!("moving componentize-py to {}", dir.display()))
        }
    }
}
