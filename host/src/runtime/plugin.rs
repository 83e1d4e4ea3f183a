//! Loading a plugin: componentize a core module, check it against the
//! contract and what it declares against its limits (before compiling
//! anything), compile, trial-instantiate.

use std::sync::Arc;

use foldhost_plugin_build::{World, componentize, contract};
use serde::Serialize;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker};

use super::bindings::aggregate::{AggregatePlugin, AggregatePluginIndices};
use super::bindings::projection::{ProjectionPlugin, ProjectionPluginIndices};
use super::bindings::upcaster::{UpcasterPlugin, UpcasterPluginPre};
use super::bindings::{AggregateExports, Exports, PluginData, ProjectionExports, packed, types};
use super::data_gate::DataGate;
use super::engine::{CompileError, PluginEngine};
use super::error::RuntimeError;
use super::footprint::Footprint;
use super::limits::Limits;
use super::sandbox::{LogBudget, PluginStore, guarded, is_guest_failure, new_store};
use crate::journal::{EventRef, RecordedEvent};

/// The contract version this host implements; guests built against any 0.1.y load.
pub const CONTRACT_VERSION: &str = contract::VERSION;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Decides commands and folds its streams (world `aggregate-plugin`).
    Aggregate,
    /// Folds the global log (world `projection-plugin`).
    Projection,
    /// Rewrites stored events on their way to the other two (contract 0.1.1).
    Upcaster,
}

/// What a plugin says about itself (its `describe` export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Description {
    /// Its name, which routes commands, queries and its streams.
    pub name: String,
    /// The world it implements.
    pub kind: PluginKind,
    /// Its own release, free-form (e.g. "1.2.0").
    pub plugin_version: String,
    /// Bumped whenever its snapshot encoding changes.
    pub state_schema: u32,
}

/// The events a projection wants; empty lists mean "everything".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subscription {
    /// Event types wanted.
    pub event_types: Vec<String>,
    /// Stream categories wanted.
    pub categories: Vec<String>,
}

impl Subscription {
    /// Whether events of `stream` may belong to this subscription, whatever their type.
    pub fn wants_stream(&self, stream: &str) -> bool {
        self.categories.is_empty()
            || self
                .categories
                .iter()
                .any(|c| crate::journal::in_category(stream, c))
    }

    /// Whether an event of `event_type` in `stream` belongs to this subscription.
    pub fn wants(&self, stream: &str, event_type: &str) -> bool {
        self.wants_type(event_type) && self.wants_stream(stream)
    }

    /// Whether events of `event_type` may belong to this subscription, whatever their stream.
    fn wants_type(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }

    /// [`wants`](Self::wants) as a filter of events in log order. It remembers the stream of
    /// the event before, so a run of one stream's events sharing one copy of its name (as a
    /// page read from the journal does) is checked against the categories once.
    ///
    /// The filter is small enough to inline into the loop using it: what a new stream needs
    /// is out of line.
    pub fn wants_each<'e>(&self) -> impl FnMut(&&'e RecordedEvent) -> bool {
        let mut last: Option<(&'e str, bool)> = None;
        move |event| {
            let stream: &'e str = &event.stream;
            let in_category = match last {
                Some((name, wanted)) if std::ptr::eq(name, stream) => wanted,
                _ => last.insert((stream, self.wants_new_stream(stream))).1,
            };
            in_category && self.wants_type(&event.event_type)
        }
    }

    /// [`wants_each`](Self::wants_each) for borrowed events (a journal scan's), which remembers
    /// the last stream by its name.
    pub fn wants_each_ref(&self) -> impl FnMut(&EventRef<'_>) -> bool {
        let (mut stream, mut in_category) = (String::new(), false);
        move |event| {
            if stream != event.stream {
                stream.clear();
                stream.push_str(event.stream);
                in_category = self.wants_new_stream(event.stream);
            }
            in_category && self.wants_type(event.event_type)
        }
    }

    /// [`wants_stream`](Self::wants_stream) for a filter's next run of one stream.
    #[inline(never)]
    fn wants_new_stream(&self, stream: &str) -> bool {
        self.wants_stream(stream)
    }
}

/// A validated plugin, ready to instantiate.
pub struct Plugin {
    /// What it says about itself.
    pub description: Description,
    /// Hex SHA-256 of the component bytes: the key of its snapshots and checkpoints.
    pub hash: String,
    /// Projections: the events they want; upcasters: the stored events they handle.
    pub subscription: Subscription,
    engine: PluginEngine,
    /// What confines each of its calls and instances.
    limits: Limits,
    /// Its log lines per second, shared by all its instances.
    log: Arc<LogBudget>,
    /// What this load's snapshot writes pass through (closed when its data is dropped).
    pub(crate) data: DataGate,
    pre: Pre,
}

enum Pre {
    Aggregate(Linked<AggregatePluginIndices, packed::aggregate::GuestIndices>),
    Projection(Linked<ProjectionPluginIndices, packed::projection::GuestIndices>),
    Upcaster(UpcasterPluginPre<PluginData>),
}

/// A component linked for instantiation, with where its world's exports are
/// and, when it has one, its packed fold.
struct Linked<W, P> {
    pre: InstancePre<PluginData>,
    world: W,
    packed: Option<P>,
}

impl<W: ExportIndices, P: ExportIndices> Linked<W, P> {
    /// Instantiates the component in `store` and loads its exports.
    fn instantiate(
        &self,
        store: &mut Store<PluginData>,
    ) -> wasmtime::Result<Exports<W::Exports, P::Exports>> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(Exports {
            world: self.world.load(store, &instance)?,
            packed: (self.packed.as_ref())
                .map(|packed| packed.load(store, &instance))
                .transpose()?,
        })
    }
}

/// Where a set of exports sits in a component, as bindgen's `*Indices` types
/// know it.
trait ExportIndices {
    type Exports;
    fn load(
        &self,
        store: &mut Store<PluginData>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Exports>;
}

macro_rules! export_indices {
    ($($indices:ty => $exports:ty),* $(,)?) => {$(
        impl ExportIndices for $indices {
            type Exports = $exports;
            fn load(
                &self,
                store: &mut Store<PluginData>,
                instance: &Instance,
            ) -> wasmtime::Result<$exports> {
                <$indices>::load(self, store, instance)
            }
        }
    )*};
}
export_indices!(
    AggregatePluginIndices => AggregatePlugin,
    ProjectionPluginIndices => ProjectionPlugin,
    packed::aggregate::GuestIndices => packed::aggregate::Guest,
    packed::projection::GuestIndices => packed::projection::Guest,
);

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("description", &self.description)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Validates and compiles a component, or a core module from `cargo build
    /// --target wasm32-unknown-unknown` (componentized first; the content hash
    /// is the component's). `origin` (a file name, an upload) names the plugin
    /// in errors until its own name is known.
    ///
    /// Until then it runs under the most generous limits any plugin has; once
    /// it has named itself, it must fit its own, and is instantiated once more
    /// under them.
    pub fn load(
        engine: &PluginEngine,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Arc<Plugin>, RuntimeError> {
        let invalid = |message: String| RuntimeError::InvalidPlugin {
            origin: origin.to_owned(),
            message,
        };
        // A trial instance that finds the host's plugin memory budget held by the others is
        // refused for now (and may load on a retry), not as invalid.
        let failed = |error: RuntimeError| match error {
            RuntimeError::MemoryBudget { .. } => error,
            other => invalid(other.to_string()),
        };
        let bytes = componentize::to_component(bytes).map_err(|e| invalid(format!("{e:#}")))?;
        // Refused before compiling (a Python component takes seconds to compile):
        // first what it declares beyond the sandbox, then what it imports and exports.
        let footprint = Footprint::of(&bytes).map_err(invalid)?;
        let ceiling = engine.limits().ceiling();
        footprint.check(&ceiling).map_err(invalid)?;
        let kind = match contract::check(&bytes).map_err(|e| invalid(e.to_string()))? {
            World::Aggregate => PluginKind::Aggregate,
            World::Projection => PluginKind::Projection,
            World::Upcaster => PluginKind::Upcaster,
        };
        let (component, hash) = engine.compile(&bytes).map_err(|error| match error {
            CompileError::Refused(message) => {
                invalid(format!("not a valid WebAssembly component: {message}"))
            }
            CompileError::Host(fault) => RuntimeError::HostFault {
                origin: origin.to_owned(),
                fault,
            },
        })?;
        let pre = match kind {
            PluginKind::Aggregate => Pre::Aggregate(
                link(
                    engine,
                    &component,
                    "aggregate",
                    |linker| AggregatePlugin::add_to_linker::<_, HasSelf<_>>(linker, |d| d),
                    |pre| {
                        Ok(Linked {
                            world: AggregatePluginIndices::new(&pre)?,
                            packed: packed::aggregate::GuestIndices::new(&pre).ok(),
                            pre,
                        })
                    },
                )
                .map_err(invalid)?,
            ),
            PluginKind::Projection => Pre::Projection(
                link(
                    engine,
                    &component,
                    "projection",
                    |linker| ProjectionPlugin::add_to_linker::<_, HasSelf<_>>(linker, |d| d),
                    |pre| {
                        Ok(Linked {
                            world: ProjectionPluginIndices::new(&pre)?,
                            packed: packed::projection::GuestIndices::new(&pre).ok(),
                            pre,
                        })
                    },
                )
                .map_err(invalid)?,
            ),
            PluginKind::Upcaster => Pre::Upcaster(
                link(
                    engine,
                    &component,
                    "upcaster",
                    |linker| UpcasterPlugin::add_to_linker::<_, HasSelf<_>>(linker, |d| d),
                    UpcasterPluginPre::new,
                )
                .map_err(invalid)?,
            ),
        };
        let mut plugin = Plugin {
            description: Description {
                name: origin.to_owned(),
                kind,
                plugin_version: String::new(),
                state_schema: 0,
            },
            hash,
            subscription: Subscription::default(),
            engine: engine.clone(),
            log: Arc::new(LogBudget::new(origin, ceiling.log_lines_per_sec)),
            data: DataGate::default(),
            limits: ceiling,
            pre,
        };
        // Trial-instantiate: a changed signature at the same contract version
        // passes pre-instantiation and only fails here.
        let (description, subscription) = plugin.introspect().map_err(failed)?;
        if description.kind != kind {
            return Err(invalid(format!(
                "describe() says {:?} but the component implements the {kind:?} world",
                description.kind
            )));
        }
        validate_name(&description.name).map_err(invalid)?;
        let limits = engine.limits().of(&description.name).clone();
        footprint.check(&limits).map_err(invalid)?;
        plugin.log = Arc::new(LogBudget::new(&description.name, limits.log_lines_per_sec));
        plugin.limits = limits;
        plugin.description = description;
        plugin.subscription = subscription;
        match plugin.kind() {
            PluginKind::Aggregate => plugin.instantiate_aggregate().map(drop),
            PluginKind::Projection => plugin.instantiate_projection().map(drop),
            PluginKind::Upcaster => plugin.instantiate_upcaster().map(drop),
        }
        .map_err(failed)?;
        Ok(Arc::new(plugin))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.description.name
    }

    /// The world it implements.
    pub fn kind(&self) -> PluginKind {
        self.description.kind
    }

    /// The engine it was compiled with.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The limits its calls and instances run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn new_store(&self) -> PluginStore {
        new_store(&self.engine, self.name(), &self.limits, self.log.clone())
    }

    /// A new, isolated aggregate instance (fresh store).
    pub fn instantiate_aggregate(&self) -> Result<(PluginStore, AggregateExports), RuntimeError> {
        let Pre::Aggregate(linked) = &self.pre else {
            return Err(self.wrong_kind("aggregate"));
        };
        self.instantiate_in_new_store(|s| linked.instantiate(s))
    }

    /// A new, isolated projection instance (fresh store).
    pub fn instantiate_projection(&self) -> Result<(PluginStore, ProjectionExports), RuntimeError> {
        let Pre::Projection(linked) = &self.pre else {
            return Err(self.wrong_kind("projection"));
        };
        self.instantiate_in_new_store(|s| linked.instantiate(s))
    }

    fn wrong_kind(&self, expected: &'static str) -> RuntimeError {
        RuntimeError::WrongKind {
            plugin: self.name().to_owned(),
            expected,
        }
    }

    /// Whether its instances fold packed batches (contract 0.1.2).
    pub fn packed(&self) -> bool {
        match &self.pre {
            Pre::Aggregate(linked) => linked.packed.is_some(),
            Pre::Projection(linked) => linked.packed.is_some(),
            Pre::Upcaster(_) => false,
        }
    }

    /// A new, isolated upcaster instance (fresh store).
    pub fn instantiate_upcaster(&self) -> Result<(PluginStore, UpcasterPlugin), RuntimeError> {
        let Pre::Upcaster(pre) = &self.pre else {
            return Err(self.wrong_kind("upcaster"));
        };
        self.instantiate_in_new_store(|s| pre.instantiate(s))
    }

    /// A fresh store under the plugin's limits, with what `instantiate` made in it. A failure
    /// that is neither a trap nor one of the limits (the host could not map the instance's
    /// memory, say) is the host's, and may pass: [`RuntimeError::MemoryBudget`].
    fn instantiate_in_new_store<T>(
        &self,
        instantiate: impl FnOnce(&mut Store<PluginData>) -> wasmtime::Result<T>,
    ) -> Result<(PluginStore, T), RuntimeError> {
        let mut store = self.new_store();
        let mut host_failed = false;
        let made = guarded(
            &mut store,
            &self.engine,
            || "instantiating".into(),
            |store| instantiate(store).inspect_err(|error| host_failed = !is_guest_failure(error)),
        );
        match made {
            Ok(bindings) => Ok((store, bindings)),
            Err(RuntimeError::Trap {
                plugin,
                context,
                message,
            }) if host_failed => Err(RuntimeError::MemoryBudget {
                plugin,
                context,
                message,
            }),
            Err(error) => Err(error),
        }
    }

    fn introspect(&self) -> Result<(Description, Subscription), RuntimeError> {
        let context = || "describing itself".to_owned();
        match &self.pre {
            Pre::Aggregate(_) => {
                let (mut store, bindings) = self.instantiate_aggregate()?;
                let guest = bindings.world.foldhost_plugin_aggregate();
                let description = guarded(&mut store, &self.engine, context, |s| {
                    guest.call_describe(s)
                })?;
                Ok((description.into(), Subscription::default()))
            }
            Pre::Projection(_) => {
                let (mut store, bindings) = self.instantiate_projection()?;
                let guest = bindings.world.foldhost_plugin_projection();
                let description = guarded(&mut store, &self.engine, context, |s| {
                    guest.call_describe(s)
                })?;
                let subscription = guarded(&mut store, &self.engine, context, |s| {
                    guest.call_subscription(s)
                })?;
                Ok((
                    description.into(),
                    Subscription {
                        event_types: subscription.event_types,
                        categories: subscription.categories,
                    },
                ))
            }
            Pre::Upcaster(_) => {
                let (mut store, bindings) = self.instantiate_upcaster()?;
                let guest = bindings.foldhost_plugin_upcaster();
                let described = guarded(&mut store, &self.engine, context, |s| {
                    guest.call_describe(s)
                })?;
                let handles =
                    guarded(&mut store, &self.engine, context, |s| guest.call_handles(s))?;
                let description = Description {
                    name: described.name,
                    kind: PluginKind::Upcaster,
                    plugin_version: described.plugin_version,
                    state_schema: 0,
                };
                Ok((
                    description,
                    Subscription {
                        event_types: handles.event_types,
                        categories: handles.categories,
                    },
                ))
            }
        }
    }
}

impl From<types::Description> for Description {
    fn from(d: types::Description) -> Self {
        Self {
            name: d.name,
            kind: match d.kind {
                types::PluginKind::Aggregate => PluginKind::Aggregate,
                types::PluginKind::Projection => PluginKind::Projection,
            },
            plugin_version: d.plugin_version,
            state_schema: d.state_schema,
        }
    }
}

/// Links `component` against the host imports (`add_imports`) and checks its
/// exports against the `world`'s bindings (`check_exports`).
fn link<P>(
    engine: &PluginEngine,
    component: &Component,
    world: &str,
    add_imports: impl FnOnce(&mut Linker<PluginData>) -> wasmtime::Result<()>,
    check_exports: impl FnOnce(InstancePre<PluginData>) -> wasmtime::Result<P>,
) -> Result<P, String> {
    let mut linker = Linker::new(engine.engine());
    add_imports(&mut linker).map_err(|e| format!("{e:#}"))?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("imports something foldhost does not provide: {e:#}"))?;
    check_exports(pre).map_err(|e| format!("does not match the {world} contract: {e:#}"))
}

/// Plugin names become stream categories and URL segments: keep them tame.
pub(super) fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} must be 1-64 characters of a-z, 0-9, '-' or '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{ByteString, ContentType};

    fn event(position: u64, stream: ByteString, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            position,
            stream,
            version: position,
            id: uuid::Uuid::nil(),
            event_type: event_type.into(),
            content_type: ContentType::Json,
            data: Default::default(),
            metadata: None,
            recorded_at: 0,
        }
    }

    #[test]
    fn a_run_of_one_stream_is_judged_once_and_every_event_by_its_own_name_and_type() {
        let subscription = Subscription {
            event_types: vec!["Deposited".into()],
            categories: vec!["bank-account".into()],
        };
        // As a journal page holds a run's names: one copy, shared. The fourth stream starts
        // where the run's name starts, but is a different name, in no category.
        let run = ByteString::from("bank-account-1");
        let events = [
            event(1, run.clone(), "Deposited"),
            event(2, run.clone(), "Opened"),
            event(3, run.clone(), "Deposited"),
            event(4, run.slice_ref(&run[..12]), "Deposited"),
            event(5, "bank-accounts-2".into(), "Deposited"),
            event(6, "bank-account-3".into(), "Deposited"),
        ];
        let wanted: Vec<u64> = events
            .iter()
            .filter(subscription.wants_each())
            .map(|event| event.position)
            .collect();
        assert_eq!(wanted, [1, 3, 6]);
        for event in &events {
            assert_eq!(
                subscription.wants(&event.stream, &event.event_type),
                wanted.contains(&event.position)
            );
        }
    }
}
