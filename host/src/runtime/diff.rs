//! Offline comparison of two versions of a plugin over the same journal: the
//! safety check before deploying a new version.

use std::sync::Arc;

use serde::Serialize;

use super::aggregate::AggregateInstance;
use super::error::RuntimeError;
use super::plugin::{Plugin, PluginKind};
use super::projection::ProjectionInstance;
use super::upcast::UpcasterChain;
use crate::journal::Journal;

/// One stream whose final state differs between the versions (or that one of them, or
/// both, could not fold).
#[derive(Debug, Clone, Serialize)]
pub struct StateDiff {
    /// The stream, or `$all` for a projection.
    pub stream: String,
    /// The old version's state, or its error.
    pub old: Result<serde_json::Value, String>,
    /// The new version's state, or its error.
    pub new: Result<serde_json::Value, String>,
}

/// What [`diff_versions`] found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The plugin compared.
    pub plugin: String,
    /// Streams replayed through both versions.
    pub compared: usize,
    /// How many ended in a different state, or that either version could not fold (both
    /// failing alike is no sign the new one is safe).
    pub differing: usize,
    /// Up to the requested number of differences.
    pub samples: Vec<StateDiff>,
}

/// Replays every stream of aggregate `old` (or, for projections, the whole
/// global log) through both versions, each fed through the `upcasters` relevant to it, and
/// compares the final states. `progress(done, total)` is called after each stream.
pub fn diff_versions(
    journal: &Journal,
    upcasters: &UpcasterChain,
    old: &Arc<Plugin>,
    new: &Arc<Plugin>,
    max_samples: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<DiffReport, RuntimeError> {
    if old.kind() != new.kind() || old.name() != new.name() {
        return Err(RuntimeError::InvalidPlugin {
            origin: new.name().to_owned(),
            message: format!(
                "cannot compare {} {:?} with {} {:?}: not two versions of one plugin",
                old.name(),
                old.kind(),
                new.name(),
                new.kind()
            ),
        });
    }
    let streams = match old.kind() {
        PluginKind::Aggregate => journal.streams_with_prefix(&format!("{}-", old.name()))?,
        PluginKind::Projection => vec!["$all".to_owned()],
        PluginKind::Upcaster => {
            return Err(RuntimeError::WrongKind {
                plugin: old.name().to_owned(),
                expected: "aggregate or projection",
            });
        }
    };
    let mut report = DiffReport {
        plugin: old.name().to_owned(),
        compared: 0,
        differing: 0,
        samples: Vec::new(),
    };
    let (old_chain, new_chain) = (upcasters.for_plugin(old), upcasters.for_plugin(new));
    for stream in &streams {
        let old_state = final_state(journal, old, &old_chain, stream);
        let new_state = final_state(journal, new, &new_chain, stream);
        report.compared += 1;
        if old_state.is_err() || old_state != new_state {
            report.differing += 1;
            if report.samples.len() < max_samples {
                report.samples.push(StateDiff {
                    stream: stream.clone(),
                    old: old_state,
                    new: new_state,
                });
            }
        }
        progress(report.compared, streams.len());
    }
    Ok(report)
}

fn final_state(
    journal: &Journal,
    plugin: &Arc<Plugin>,
    upcasters: &Arc<UpcasterChain>,
    stream: &str,
) -> Result<serde_json::Value, String> {
    let replay = || -> Result<serde_json::Value, RuntimeError> {
        match plugin.kind() {
            PluginKind::Aggregate => {
                let mut instance =
                    AggregateInstance::through(plugin.clone(), upcasters.clone(), stream, None)?;
                instance.catch_up(journal, u64::MAX)?;
                instance.state()
            }
            PluginKind::Projection => {
                let mut instance =
                    ProjectionInstance::through(plugin.clone(), upcasters.clone(), None)?;
                instance.catch_up(journal)?;
                instance.state()
            }
            PluginKind::Upcaster => Err(RuntimeError::WrongKind {
                plugin: plugin.name().to_owned(),
                expected: "aggregate or projection",
            }),
        }
    };
    replay().map_err(|e| e.to_string())
}
