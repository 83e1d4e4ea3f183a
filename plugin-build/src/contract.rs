//! The contract every plugin implements (`wit/foldhost.wit`), and the check a
//! component must pass before anything compiles it: it implements one world,
//! at a compatible version, and imports nothing but the contract's own
//! interfaces.
//!
//! The check reads only the component's top-level import and export names, so
//! it takes microseconds even for an 18 MB Python component.

use std::fmt;

use wasmparser::{Chunk, Encoding, Parser, Payload};

/// The contract's WIT, as built into this binary.
pub const WIT: &str = include_str!("../../wit/foldhost.wit");
/// The contract's package.
pub const PACKAGE: &str = "foldhost:plugin";
/// The contract version this build implements; guests built against any 0.1.y load (a
/// minor release only adds interfaces).
pub const VERSION: &str = "0.1.2";
/// Interfaces a plugin may import.
const IMPORTABLE: &[&str] = &["host", "types"];

/// Which world of the contract a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// World `aggregate-plugin`.
    Aggregate,
    /// World `projection-plugin`.
    Projection,
    /// World `upcaster-plugin`.
    Upcaster,
}

impl World {
    /// The world's name in the WIT (`aggregate-plugin`).
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Aggregate => "aggregate-plugin",
            World::Projection => "projection-plugin",
            World::Upcaster => "upcaster-plugin",
        }
    }

    /// The interface the world exports (`aggregate`).
    pub fn interface(self) -> &'static str {
        match self {
            World::Aggregate => "aggregate",
            World::Projection => "projection",
            World::Upcaster => "upcaster",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// Why a component does not fit the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ContractError(String);

impl ContractError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Checks `component` against the contract; returns the world it implements.
pub fn check(component: &[u8]) -> Result<World, ContractError> {
    let (imports, exports) = top_level_names(component)?;
    for import in &imports {
        match split_name(import) {
            // The contract's own interface at another version: built against another contract.
            Some((interface, version)) if IMPORTABLE.contains(&interface) => {
                versioned(import, version)?;
            }
            _ => {
                return Err(ContractError::new(format!(
                    "imports {import}, which foldhost does not provide: a plugin may import \
                     only {PACKAGE}/host@{VERSION} (no WASI: build Rust for \
                     wasm32-unknown-unknown, Python with componentize-py --stub-wasi; \
                     `foldhost plugins build` does both)"
                )));
            }
        }
    }
    for export in &exports {
        let Some((interface, version)) = split_name(export) else {
            continue;
        };
        let world = match interface {
            "aggregate" => World::Aggregate,
            "projection" => World::Projection,
            "upcaster" => World::Upcaster,
            _ => continue,
        };
        return versioned(export, version).map(|()| world);
    }
    Err(ContractError::new(format!(
        "exports none of {PACKAGE}/aggregate, /projection or /upcaster (it exports: {})",
        if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        }
    )))
}

/// Refuses `name` (an import or export of the contract's package) at a `version` this host
/// does not implement.
fn versioned(name: &str, version: &str) -> Result<(), ContractError> {
    match compatible(version) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ContractError::new(format!(
            "built against contract {PACKAGE}@{version}, but this host implements \
             {PACKAGE}@{VERSION} (compatible: ^0.1); rebuild the plugin with a matching SDK"
        ))),
        Err(e) => Err(ContractError::new(format!(
            "{name} has a malformed version: {e}"
        ))),
    }
}

/// `foldhost:plugin/host@0.1.0` → `("host", "0.1.0")`; `None` outside the package.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@')
}

fn compatible(version: &str) -> Result<bool, semver::Error> {
    let version = semver::Version::parse(version)?;
    let host = semver::Version::parse(VERSION).expect("a valid version");
    let wanted = semver::VersionReq::parse(&format!("^{}.{}", host.major, host.minor))
        .expect("a valid requirement");
    Ok(wanted.matches(&version))
}

/// The names a component imports and exports at its top level (nested
/// modules and components are skipped, not parsed).
fn top_level_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), ContractError> {
    let malformed = |e: wasmparser::BinaryReaderError| {
        ContractError::new(format!("not a valid WebAssembly component: {e}"))
    };
    let mut parser = Parser::new(0);
    let mut offset = 0;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    loop {
        let payload = match parser.parse(&bytes[offset..], true).map_err(malformed)? {
            Chunk::Parsed { consumed, payload } => {
                offset += consumed;
                payload
            }
            Chunk::NeedMoreData(_) => unreachable!("the whole input is given (eof = true)"),
        };
        match payload {
            Payload::Version { encoding, .. } if encoding != Encoding::Component => {
                return Err(ContractError::new(
                    "is a core WebAssembly module, not a component",
                ));
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    imports.push(import.map_err(malformed)?.name.0.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    exports.push(export.map_err(malformed)?.name.0.to_owned());
                }
            }
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => {
                if unchecked_range.end > bytes.len() {
                    return Err(ContractError::new(
                        "not a valid WebAssembly component: a nested section runs past the end",
                    ));
                }
                offset = unchecked_range.end;
            }
            Payload::End(_) => return Ok((imports, exports)),
            _ => {}
        }
    }
}
