//! Dehydrated aggregate states: the snapshots of live states the cache dropped, kept in memory
//! so that the stream's next command restores its state without reading and refolding its
//! events, at the cost of a few hundred bytes instead of a store (~58 KiB resident).
//!
//! The cache hands an instance it drops to the [`Dehydrator`], a thread of its own that takes
//! its snapshot (a metered guest call) and drops its store, off the async workers and outside
//! the cache's lock. States are kept by stream under their state key (plugin build and upcaster
//! chain, like journal snapshots), least recently stored first out past a byte bound; a state
//! of another key is never handed out. A state is only a starting point: the stream's events
//! appended since are folded on top (see `AggregateInstance::rehydrate_from`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::aggregate::AggregateInstance;
use super::upcast::UpcasterChain;

/// Instances waiting for the dehydrator, uncounted by the cache; past this, evicted instances
/// are dropped as they are. Small: a waiting instance still holds its memory.
const QUEUE: usize = 16;

/// Bytes counted per state besides its snapshot, stream name and key: the map's node and
/// slot, the state's fields and three allocations' headers and rounding, as malloc spends them.
const OVERHEAD: usize = 192;

/// One stream's state as its snapshot.
pub(super) struct Dehydrated {
    /// The key of the plugin build and upcaster chain that folded it.
    pub key: String,
    /// The stream version folded into it.
    pub version: u64,
    /// The version of the newest snapshot of it stored in the journal.
    pub snapshot_version: u64,
    pub bytes: Vec<u8>,
}

/// Dehydrated states by stream, bounded by bytes.
pub(super) struct DehydratedStates {
    states: Mutex<States>,
    max_bytes: usize,
    /// States handed out since start.
    taken: AtomicU64,
}

struct States {
    by_stream: LruCache<String, Dehydrated>,
    bytes: usize,
}

fn size(stream: &str, state: &Dehydrated) -> usize {
    OVERHEAD + stream.len() + state.key.len() + state.bytes.len()
}

impl DehydratedStates {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            states: Mutex::new(States {
                by_stream: LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
            taken: AtomicU64::new(0),
        }
    }

    /// Keeps `state` for `stream`, replacing any older one, then drops the least recently
    /// stored states past the bound.
    fn put(&self, stream: String, state: Dehydrated) {
        let mut states = self.states.lock().expect("dehydrated lock");
        let added = size(&stream, &state);
        if added > self.max_bytes {
            return;
        }
        if let Some(old) = states.by_stream.peek(&stream) {
            states.bytes -= size(&stream, old);
        }
        states.bytes += added;
        states.by_stream.put(stream, state);
        while states.bytes > self.max_bytes {
            let (stream, state) = states.by_stream.pop_lru().expect("bytes counted");
            states.bytes -= size(&stream, &state);
        }
        report(&states);
    }

    /// Takes the state of `stream` out if it was folded under `key`; one of another key is
    /// dropped.
    pub(super) fn take(&self, stream: &str, key: &str) -> Option<Dehydrated> {
        let mut states = self.states.lock().expect("dehydrated lock");
        let state = states.by_stream.pop(stream)?;
        states.bytes -= size(stream, &state);
        report(&states);
        let matches = state.key == key;
        self.taken.fetch_add(u64::from(matches), Ordering::Relaxed);
        matches.then_some(state)
    }

    /// States handed out by [`take`](Self::take) since start.
    pub(super) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Drops every state folded by the plugin build `plugin_hash` (after an unload or a swap).
    pub(super) fn forget_plugin(&self, plugin_hash: &str) {
        let mut states = self.states.lock().expect("dehydrated lock");
        let stale: Vec<String> = states
            .by_stream
            .iter()
            .filter(|(_, state)| UpcasterChain::plugin_of_state_key(&state.key) == plugin_hash)
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in stale {
            let state = states.by_stream.pop(&stream).expect("listed");
            states.bytes -= size(&stream, &state);
        }
        report(&states);
    }

    /// States kept.
    pub(super) fn len(&self) -> usize {
        self.states.lock().expect("dehydrated lock").by_stream.len()
    }
}

fn report(states: &States) {
    metrics::gauge!("foldhost_aggregate_dehydrated_streams").set(states.by_stream.len() as f64);
    metrics::gauge!("foldhost_aggregate_dehydrated_bytes").set(states.bytes as f64);
}

/// Dehydrates dropped instances on a thread of its own.
pub(super) struct Dehydrator {
    queue: SyncSender<AggregateInstance>,
}

impl Dehydrator {
    /// Starts the thread, which stops once the dehydrator is dropped.
    pub(super) fn start(states: Arc<DehydratedStates>) -> Self {
        let (queue, instances) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("foldhost-dehydrator".into())
            .spawn(move || dehydrate_all(&instances, &states))
            .expect("spawning the dehydrator");
        Self { queue }
    }

    /// Hands `instance` over to be dehydrated; with the queue full, drops it here.
    pub(super) fn dehydrate(&self, instance: AggregateInstance) {
        if let Err(TrySendError::Full(instance) | TrySendError::Disconnected(instance)) =
            self.queue.try_send(instance)
        {
            metrics::counter!("foldhost_aggregate_dehydrations_skipped_total").increment(1);
            drop(instance);
        }
    }
}

/// Snapshots each instance received into `states` and drops its store. A state folded from
/// part of its stream (see `AggregateInstance::may_snapshot`), empty or whose snapshot fails is
/// just dropped: its stream rebuilds from the journal.
fn dehydrate_all(instances: &Receiver<AggregateInstance>, states: &DehydratedStates) {
    while let Ok(mut instance) = instances.recv() {
        if !instance.may_snapshot() || instance.version == 0 {
            continue;
        }
        match instance.snapshot() {
            Ok(bytes) => {
                let state = Dehydrated {
                    key: instance.state_key(),
                    version: instance.version,
                    snapshot_version: instance.snapshot_version,
                    bytes,
                };
                states.put(instance.stream().to_owned(), state);
            }
            Err(error) => {
                tracing::debug!(%error, stream = instance.stream(), "not dehydrated");
                metrics::counter!("foldhost_aggregate_dehydrations_failed_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(key: &str, version: u64, bytes: usize) -> Dehydrated {
        Dehydrated {
            key: key.into(),
            version,
            snapshot_version: 0,
            bytes: vec![0; bytes],
        }
    }

    #[test]
    fn states_are_handed_out_once_and_only_under_their_key() {
        let states = DehydratedStates::new(1 << 20);
        states.put("s".into(), state("k1", 3, 10));
        assert!(states.take("s", "k2").is_none(), "another key");
        assert!(states.take("s", "k1").is_none(), "dropped by the mismatch");
        states.put("s".into(), state("k1", 3, 10));
        states.put("s".into(), state("k1", 5, 10));
        assert_eq!(states.take("s", "k1").map(|s| s.version), Some(5));
        assert!(states.take("s", "k1").is_none(), "taken");
        assert_eq!(states.states.lock().unwrap().bytes, 0);
    }

    #[test]
    fn the_least_recently_stored_go_past_the_bound() {
        let one = size("s0", &state("k", 1, 100));
        let states = DehydratedStates::new(3 * one);
        for i in 0..5 {
            states.put(format!("s{i}"), state("k", 1, 100));
        }
        assert_eq!(states.len(), 3);
        assert!(states.take("s1", "k").is_none());
        assert!(states.take("s4", "k").is_some());
        states.put("huge".into(), state("k", 1, 4 * one));
        assert!(states.take("huge", "k").is_none(), "larger than the bound");
    }

    #[test]
    fn forgetting_a_plugin_drops_its_states_with_any_upcasters() {
        let states = DehydratedStates::new(1 << 20);
        states.put("a".into(), state("old", 1, 1));
        states.put("b".into(), state("old+chain", 1, 1));
        states.put("c".into(), state("new", 1, 1));
        states.forget_plugin("old");
        assert_eq!(states.len(), 1);
        assert!(states.take("c", "new").is_some());
        assert_eq!(states.states.lock().unwrap().bytes, 0);
    }
}
