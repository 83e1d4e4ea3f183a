//! `import --plugins DIR`: the aggregates in DIR fold each imported event of their streams,
//! through the upcasters in DIR, before it is appended, as `POST /streams/{stream}/events`
//! does on a server.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use lru::LruCache;

use crate::journal::{Journal, NewEvent, RecordedEvent, in_category};
use crate::runtime::{
    AggregateInstance, Limits, Plugin, PluginEngine, PluginKind, Upcaster, UpcasterChain,
};

/// Stream states kept between events; one evicted is rebuilt from the journal.
const STATES: usize = 1024;

/// The aggregates of a plugins directory and the states of the streams they own.
pub struct ImportCheck {
    aggregates: Vec<Arc<Plugin>>,
    upcasters: Arc<UpcasterChain>,
    states: LruCache<String, AggregateInstance>,
}

impl ImportCheck {
    /// Loads every aggregate and upcaster `*.wasm` in `dir` (projections are not concerned).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let engine = PluginEngine::new(Limits::default(), None)?;
        let mut aggregates: Vec<Arc<Plugin>> = Vec::new();
        let mut upcasters = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "wasm") {
                continue;
            }
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let plugin = Plugin::load(&engine, &bytes, &path.display().to_string())?;
            match plugin.kind() {
                PluginKind::Aggregate => {}
                PluginKind::Upcaster => {
                    upcasters.push(Upcaster::new(plugin)?);
                    continue;
                }
                PluginKind::Projection => continue,
            }
            if let Some(other) = aggregates.iter().find(|other| {
                in_category(other.name(), plugin.name()) || in_category(plugin.name(), other.name())
            }) {
                bail!(
                    "{} and {} clash: the streams of one would belong to both",
                    plugin.name(),
                    other.name()
                );
            }
            aggregates.push(plugin);
        }
        Ok(Self {
            aggregates,
            upcasters: UpcasterChain::new(upcasters),
            states: LruCache::new(NonZeroUsize::new(STATES).expect("non-zero")),
        })
    }

    /// Whether `stream` belongs to one of the aggregates.
    pub fn owns(&self, stream: &str) -> bool {
        self.owner(stream).is_some()
    }

    /// Whether the state of `stream` is at hand (otherwise it is rebuilt from the journal,
    /// which must then hold every event of it imported so far).
    pub fn has_state(&self, stream: &str) -> bool {
        self.states.contains(stream)
    }

    fn owner(&self, stream: &str) -> Option<&Arc<Plugin>> {
        self.aggregates
            .iter()
            .find(|plugin| in_category(stream, plugin.name()))
    }

    /// Folds `event`, the next event of `stream` (an owned stream), onto the stream's state.
    pub fn check(
        &mut self,
        journal: &Journal,
        stream: &str,
        event: &NewEvent,
    ) -> anyhow::Result<()> {
        let Some(plugin) = self.owner(stream).cloned() else {
            return Ok(());
        };
        let instance = match self.states.get_mut(stream) {
            Some(instance) => instance,
            None => {
                let upcasters = self.upcasters.for_plugin(&plugin);
                let rebuilt = AggregateInstance::rehydrate_through(
                    plugin.clone(),
                    upcasters,
                    journal,
                    stream,
                    u64::MAX,
                )?;
                self.states.get_or_insert_mut(stream.to_owned(), || rebuilt)
            }
        };
        let next = RecordedEvent {
            position: journal.head_position() + 1,
            stream: stream.into(),
            version: instance.version + 1,
            id: event.id,
            event_type: event.event_type.as_str().into(),
            content_type: event.content_type,
            data: event.data.clone().into(),
            metadata: event.metadata.as_deref().map(Into::into),
            recorded_at: 0,
        };
        if let Err(error) = instance.apply(std::slice::from_ref(&next)) {
            self.states.pop(stream);
            bail!(
                "{} cannot fold this {} event of {stream}: {}",
                plugin.name(),
                event.event_type,
                error.plugin_reason()
            );
        }
        Ok(())
    }
}
