//! Running the language toolchains, and where foldhost installs the tools it
//! fetches for them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Where tools foldhost installs live (one folder per tool and version):
/// `$FOLDHOST_TOOLS`, else `$XDG_CACHE_HOME/foldhost/tools`, else
/// `~/.cache/foldhost/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FOLDHOST_TOOLS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("foldhost").join("tools")
}

/// Runs `command` to completion, its output going to this process's stderr;
/// fails naming `what` when it cannot start or exits unsuccessfully.
pub fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}); see its output above");
    }
    Ok(())
}

/// Whether `program` runs at all (`program --version` succeeds).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}
