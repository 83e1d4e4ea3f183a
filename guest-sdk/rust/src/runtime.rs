//! The glue between the generated WIT traits and [`Aggregate`] / [`Projection`] /
//! [`Upcaster`].
//!
//! The export macros define a zero-sized type owning the plugin's state cell
//! and implement a slot trait for it; the blanket impls here turn every slot
//! into the world's `Guest`. A batch is decoded completely before it is
//! applied, so a failed `apply` leaves the state as it was.

use crate::aggregate::Aggregate;
use crate::batch::{self, LastSpan, RawEvent};
use crate::bindings::aggregate::exports::foldhost::plugin::aggregate as wit_aggregate;
use crate::bindings::aggregate::exports::foldhost::plugin::packed_aggregate as wit_packed_aggregate;
use crate::bindings::projection::exports::foldhost::plugin::packed_projection as wit_packed_projection;
use crate::bindings::projection::exports::foldhost::plugin::projection as wit_projection;
use crate::bindings::types::{
    Batch, CommandError, ContentType, Description, NewEvent, PackedBatch, PluginKind, Subscription,
};
use crate::bindings::upcaster::exports::foldhost::plugin::upcaster as wit_upcaster;
use crate::codec;
use crate::projection::Projection;
use crate::upcaster::Upcaster;

/// The state cell behind an exported aggregate.
pub trait AggregateSlot: 'static {
    /// The plugin's aggregate type.
    type Aggregate: Aggregate;
    /// Runs `f` on the state, creating the default state on first use.
    fn with<R>(f: impl FnOnce(&mut Self::Aggregate) -> R) -> R;
}

/// The state cell behind an exported projection.
pub trait ProjectionSlot: 'static {
    /// The plugin's projection type.
    type Projection: Projection;
    /// Runs `f` on the state, creating the default state on first use.
    fn with<R>(f: impl FnOnce(&mut Self::Projection) -> R) -> R;
}

/// The type behind an exported upcaster (it has no state).
pub trait UpcasterSlot: 'static {
    /// The plugin's upcaster type.
    type Upcaster: Upcaster;
}

/// Called on every entry: inside wasm, routes panic messages to the host log
/// before the trap, since wasm32-unknown-unknown has no stderr.
fn enter() {
    #[cfg(target_arch = "wasm32")]
    {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::write(crate::log::Level::Error, &format!("plugin {info}"));
            }));
        });
    }
}

fn describe(name: &str, kind: PluginKind, version: &str, state_schema: u32) -> Description {
    Description {
        name: name.to_owned(),
        kind,
        plugin_version: version.to_owned(),
        state_schema,
    }
}

fn restore<T: Default>(
    snapshot: Option<Vec<u8>>,
    restore: fn(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    snapshot.map_or_else(|| Ok(T::default()), |bytes| restore(&bytes))
}

impl<S: AggregateSlot> wit_aggregate::Guest for S {
    fn describe() -> Description {
        enter();
        type A<S> = <S as AggregateSlot>::Aggregate;
        describe(
            A::<S>::NAME,
            PluginKind::Aggregate,
            A::<S>::VERSION,
            A::<S>::STATE_SCHEMA,
        )
    }

    fn init(snapshot: Option<Vec<u8>>) -> Result<(), String> {
        enter();
        let state = restore(snapshot, S::Aggregate::restore)?;
        S::with(|current| *current = state);
        Ok(())
    }

    fn apply(events: Batch) -> Result<(), String> {
        enter();
        fold_aggregate::<S>(batch::events(&events))
    }

    fn handle(command_type: String, data: Vec<u8>) -> Result<Vec<NewEvent>, CommandError> {
        enter();
        let command = codec::decode_json(&command_type, &data)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        let events = S::with(|state| state.handle(command))
            .map_err(|rejection| CommandError::Rejected(rejection.reason().to_owned()))?;
        Ok(events
            .iter()
            .map(|event| {
                let (event_type, data) = codec::encode_json(event)
                    .unwrap_or_else(|e| panic!("event cannot be encoded: {e}"));
                NewEvent {
                    event_type,
                    content_type: ContentType::Json,
                    data,
                }
            })
            .collect())
    }

    fn snapshot() -> Vec<u8> {
        enter();
        S::with(|state| state.snapshot())
    }

    fn state() -> String {
        enter();
        S::with(|state| state.state_json())
    }
}

/// Decodes every event, then folds them all: a bad one leaves the state as it was.
fn fold_aggregate<'a, S: AggregateSlot>(
    events: impl ExactSizeIterator<Item = RawEvent<'a>>,
) -> Result<(), String> {
    let mut decoded = Vec::with_capacity(events.len());
    let mut event_type = LastSpan::new();
    for raw in events {
        let event_type = event_type.get(raw.type_span(), || raw.event_type())?;
        decoded.push(raw.decode(event_type)?);
    }
    S::with(|state| decoded.into_iter().for_each(|event| state.apply(event)));
    Ok(())
}

impl<S: AggregateSlot> wit_packed_aggregate::Guest for S {
    fn apply(events: PackedBatch) -> Result<(), String> {
        enter();
        fold_aggregate::<S>(batch::packed_events(&events)?)
    }
}

/// Decodes the subscribed events, then folds them all: a bad one leaves the
/// state as it was.
fn fold_projection<'a, S: ProjectionSlot>(
    events: impl ExactSizeIterator<Item = RawEvent<'a>>,
) -> Result<(), String> {
    let subscription = S::Projection::subscription();
    let mut decoded = Vec::with_capacity(events.len());
    // Each name with whether the subscription wants it, once per run of events sharing it.
    let (mut stream, mut event_type) = (LastSpan::new(), LastSpan::new());
    for raw in events {
        let (stream, in_category) = stream.get(raw.stream_span(), || {
            let stream = raw.stream()?;
            Ok((stream, subscription.matches_category(stream)))
        })?;
        let (event_type, of_type) = event_type.get(raw.type_span(), || {
            let event_type = raw.event_type()?;
            Ok((event_type, subscription.matches_type(event_type)))
        })?;
        if in_category && of_type {
            decoded.push((raw.decode(event_type)?, raw.meta_in(stream)));
        }
    }
    S::with(|state| {
        for (event, meta) in decoded {
            state.apply(event, &meta);
        }
    });
    Ok(())
}

impl<S: ProjectionSlot> wit_packed_projection::Guest for S {
    fn apply(events: PackedBatch) -> Result<(), String> {
        enter();
        fold_projection::<S>(batch::packed_events(&events)?)
    }
}

impl<S: ProjectionSlot> wit_projection::Guest for S {
    fn describe() -> Description {
        enter();
        type P<S> = <S as ProjectionSlot>::Projection;
        describe(
            P::<S>::NAME,
            PluginKind::Projection,
            P::<S>::VERSION,
            P::<S>::STATE_SCHEMA,
        )
    }

    fn subscription() -> Subscription {
        enter();
        let subscription = S::Projection::subscription();
        Subscription {
            event_types: subscription.event_types,
            categories: subscription.categories,
        }
    }

    fn init(snapshot: Option<Vec<u8>>) -> Result<(), String> {
        enter();
        let state = restore(snapshot, S::Projection::restore)?;
        S::with(|current| *current = state);
        Ok(())
    }

    fn apply(events: Batch) -> Result<(), String> {
        enter();
        fold_projection::<S>(batch::events(&events))
    }

    fn snapshot() -> Vec<u8> {
        enter();
        S::with(|state| state.snapshot())
    }

    fn state() -> String {
        enter();
        S::with(|state| state.state_json())
    }

    fn query(name: String, args: String) -> Result<String, String> {
        enter();
        let args = if args.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&args).map_err(|e| format!("query arguments are not JSON: {e}"))?
        };
        let answer = S::with(|state| state.query(&name, args))?;
        Ok(answer.to_string())
    }
}

impl<S: UpcasterSlot> wit_upcaster::Guest for S {
    fn describe() -> wit_upcaster::UpcasterDescription {
        enter();
        wit_upcaster::UpcasterDescription {
            name: S::Upcaster::NAME.to_owned(),
            plugin_version: S::Upcaster::VERSION.to_owned(),
        }
    }

    fn handles() -> Subscription {
        enter();
        let handles = S::Upcaster::handles();
        Subscription {
            event_types: handles.event_types,
            categories: handles.categories,
        }
    }

    fn upcast(events: Batch) -> Result<Vec<wit_upcaster::Upcasted>, String> {
        enter();
        batch::events(&events)
            .map(|raw| {
                let meta = raw.meta()?;
                let old = raw.decode(raw.event_type()?)?;
                let new = S::Upcaster::upcast(old, &meta)
                    .iter()
                    .map(|event| {
                        let (event_type, data) = codec::encode_json(event).map_err(|e| {
                            format!("cannot encode what event {} became: {e}", meta.position)
                        })?;
                        Ok(NewEvent {
                            event_type,
                            content_type: ContentType::Json,
                            data,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(wit_upcaster::Upcasted::Replace(new))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
