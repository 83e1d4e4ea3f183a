//! Upcasters at work: a chain of upcaster plugins rewriting stored events on their way to a
//! plugin (or to a reader that asks). Stored bytes never change.
//!
//! Upcasters run in the order of their names; each sees what the previous ones made of an
//! event. An upcaster is only called for the events its `handles()` filter matches. It is
//! stateless, so its instances are pooled and shared by every caller; a trapped instance is
//! dropped, like any other plugin's.
//!
//! What a plugin folds depends on the upcasters that can touch its events, so its snapshots
//! and checkpoints are keyed by its content hash *and* the hash of that chain
//! ([`UpcasterChain::state_key`]): a changed chain never reuses a state folded through
//! another one.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::bindings::encode_batch;
use super::bindings::upcaster::UpcasterPlugin;
use super::bindings::upcaster::exports::foldhost::plugin::upcaster::Upcasted;
use super::error::RuntimeError;
use super::plugin::{Plugin, PluginKind};
use super::sandbox::{PluginStore, guarded_answer};
use crate::journal::{RecordedEvent, in_category};

/// Idle instances kept per upcaster.
const POOL: usize = 8;

/// One loaded upcaster and its idle instances.
pub struct Upcaster {
    plugin: Arc<Plugin>,
    idle: Mutex<Vec<(PluginStore, UpcasterPlugin)>>,
}

impl Upcaster {
    /// Wraps an upcaster plugin.
    pub fn new(plugin: Arc<Plugin>) -> Result<Arc<Self>, RuntimeError> {
        if plugin.kind() != PluginKind::Upcaster {
            return Err(RuntimeError::WrongKind {
                plugin: plugin.name().to_owned(),
                expected: "upcaster",
            });
        }
        Ok(Arc::new(Self {
            plugin,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// The upcaster plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Runs the upcaster over the events it handles, in place.
    fn upcast(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, RuntimeError> {
        let handles = &self.plugin.subscription;
        let handled: Vec<usize> = (0..events.len())
            .filter(|&i| handles.wants(&events[i].stream, &events[i].event_type))
            .collect();
        let (Some(&first), Some(&last)) = (handled.first(), handled.last()) else {
            return Ok(events);
        };
        let batch = encode_batch(handled.iter().map(|&i| &events[i]));
        let (from, to) = (events[first].position, events[last].position);
        let context = || format!("upcasting events at positions {from}..={to}");
        let (mut store, bindings) = match self.idle.lock().expect("upcaster pool").pop() {
            Some(instance) => instance,
            None => self.plugin.instantiate_upcaster()?,
        };
        let guest = bindings.foldhost_plugin_upcaster();
        let answer = guarded_answer(&mut store, self.plugin.engine(), context, |s| {
            guest.call_upcast(s, &batch)
        });
        // A trapped store is dropped here, never pooled; one whose plugin refused is kept.
        if matches!(answer, Ok(_) | Err(RuntimeError::PluginFailed { .. })) {
            let mut idle = self.idle.lock().expect("upcaster pool");
            if idle.len() < POOL {
                idle.push((store, bindings));
            }
        }
        let answers = answer?;
        if answers.len() != handled.len() {
            return Err(RuntimeError::PluginFailed {
                plugin: self.plugin.name().to_owned(),
                context: context(),
                message: format!(
                    "answered {} times for {} events",
                    answers.len(),
                    handled.len()
                ),
            });
        }
        let mut answers = handled.into_iter().zip(answers).peekable();
        let mut upcast = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            match answers.next_if(|(handled, _)| *handled == index) {
                Some((_, Upcasted::Replace(replacements))) => {
                    upcast.extend(replacements.into_iter().map(|new| RecordedEvent {
                        event_type: new.event_type.into(),
                        content_type: new.content_type.into(),
                        data: new.data.into(),
                        ..event.clone()
                    }))
                }
                Some((_, Upcasted::Keep)) | None => upcast.push(event),
            }
        }
        Ok(upcast)
    }
}

/// Upcasters in the order they run, with the hash that keys states folded through them.
#[derive(Default)]
pub struct UpcasterChain {
    upcasters: Vec<Arc<Upcaster>>,
    /// Hex SHA-256 over the upcasters' names and content hashes; `None` when empty.
    hash: Option<String>,
}

impl UpcasterChain {
    /// No upcasters: events reach plugins as stored.
    pub fn none() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The chain of `upcasters`, ordered by name.
    pub fn new(mut upcasters: Vec<Arc<Upcaster>>) -> Arc<Self> {
        upcasters.sort_by(|a, b| a.plugin.name().cmp(b.plugin.name()));
        let hash = (!upcasters.is_empty()).then(|| {
            let mut digest = Sha256::new();
            for upcaster in &upcasters {
                digest.update(upcaster.plugin.name().as_bytes());
                digest.update([0]);
                digest.update(upcaster.plugin.hash.as_bytes());
                digest.update([0]);
            }
            hex::encode(digest.finalize())
        });
        Arc::new(Self { upcasters, hash })
    }

    /// The upcasters that can touch events `plugin` folds: those whose categories overlap the
    /// plugin's (an aggregate's category is its name). Event types are not compared: an
    /// upcaster may turn a type the plugin ignores into one it folds.
    pub fn for_plugin(&self, plugin: &Plugin) -> Arc<Self> {
        let aggregate = [plugin.name().to_owned()];
        let categories: &[String] = match plugin.kind() {
            PluginKind::Aggregate => &aggregate,
            PluginKind::Projection => &plugin.subscription.categories,
            PluginKind::Upcaster => return Self::none(),
        };
        Self::new(
            self.upcasters
                .iter()
                .filter(|upcaster| overlap(&upcaster.plugin.subscription.categories, categories))
                .cloned()
                .collect(),
        )
    }

    /// The key of a state folded by the plugin with content hash `plugin_hash` through this
    /// chain: the plugin hash alone when the chain is empty (so states folded before any
    /// upcaster existed stay valid), else `{plugin_hash}+{chain hash}`.
    pub fn state_key(&self, plugin_hash: &str) -> String {
        match &self.hash {
            None => plugin_hash.to_owned(),
            Some(chain) => format!("{plugin_hash}+{chain}"),
        }
    }

    /// The plugin hash a [`state_key`](Self::state_key) was made from.
    pub fn plugin_of_state_key(key: &str) -> &str {
        key.split_once('+')
            .map_or(key, |(plugin_hash, _)| plugin_hash)
    }

    /// Whether the chain has no upcasters.
    pub fn is_empty(&self) -> bool {
        self.upcasters.is_empty()
    }

    /// The upcasters, in the order they run.
    pub fn upcasters(&self) -> &[Arc<Upcaster>] {
        &self.upcasters
    }

    /// Runs every upcaster over `events`, in order.
    pub fn upcast(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, RuntimeError> {
        self.upcasters
            .iter()
            .try_fold(events, |events, upcaster| upcaster.upcast(events))
    }

    /// [`upcast`](Self::upcast) of borrowed `events`: copied only when there are upcasters.
    pub fn upcast_slice<'a>(
        &self,
        events: &'a [RecordedEvent],
    ) -> Result<Cow<'a, [RecordedEvent]>, RuntimeError> {
        match self.upcasters.is_empty() {
            true => Ok(Cow::Borrowed(events)),
            false => self.upcast(events.to_vec()).map(Cow::Owned),
        }
    }
}

/// Whether two category lists can share a stream (an empty list means every category; a
/// stream `a-b-1` is in both `a` and `a-b`).
fn overlap(a: &[String], b: &[String]) -> bool {
    let related = |x: &str, y: &str| x == y || in_category(x, y) || in_category(y, x);
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| related(x, y)))
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn categories_overlap_when_a_stream_can_be_in_both() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(overlap(&list(&[]), &list(&["bank-account"])));
        assert!(overlap(&list(&["bank-account"]), &list(&[])));
        assert!(overlap(&list(&["bank"]), &list(&["bank-account"])));
        assert!(overlap(&list(&["bank-account"]), &list(&["bank"])));
        assert!(overlap(
            &list(&["cart", "bank-account"]),
            &list(&["bank-account"])
        ));
        assert!(!overlap(
            &list(&["bank-account"]),
            &list(&["bank-accounts"])
        ));
        assert!(!overlap(
            &list(&["shopping-cart"]),
            &list(&["bank-account"])
        ));
    }
}
