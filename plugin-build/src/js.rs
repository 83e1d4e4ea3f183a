//! JavaScript and TypeScript plugins (`package.json`).

use std::path::Path;

use anyhow::bail;
use sha2::Sha256;

/// The manifest that marks a JavaScript plugin project.
pub const MANIFEST: &str = "package.json";

/// Builds the project in `project` and returns its component.
pub fn build(project: &Path) -> anyhow::Result<Vec<u8>> {
    bail!(
        "{} is a JavaScript project; this foldhost cannot build JavaScript plugins yet",
        project.display()
    )
}

/// What a build reads besides the project (the toolchain's pinned versions).
pub fn toolchain_fingerprint(hasher: &mut Sha256) {
    let _ = hasher;
}
