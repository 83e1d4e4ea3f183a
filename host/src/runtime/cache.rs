//! The cache of live aggregate states: one slot per stream, bounded by how many slots it
//! keeps and by the bytes their instances hold. Past either bound the least recently used idle
//! slots are dropped; their streams rehydrate from a snapshot on their next command.
//!
//! An instance's bytes are its [footprint](AggregateInstance::footprint), counted whenever its
//! slot is unlocked, so the total follows instances as they grow. Slots in use are never
//! dropped: the bound can be passed by the instances in use at that moment.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::aggregate::AggregateInstance;
use super::commands::StreamSlot;

/// Busy slots passed over at the cold end before one pass of eviction gives up.
const MAX_BUSY_SKIPS: usize = 16;

pub(super) type Slot = Arc<StreamSlot>;

/// Live states by stream, least recently used first out.
pub(super) struct AggregateCache {
    slots: Mutex<LruCache<String, Slot>>,
    max_slots: usize,
    max_bytes: usize,
    /// Bytes held by every slot's instance, as last counted.
    bytes: Arc<AtomicUsize>,
}

impl AggregateCache {
    pub(super) fn new(max_slots: usize, max_bytes: usize) -> Self {
        Self {
            slots: Mutex::new(LruCache::unbounded()),
            max_slots: max_slots.max(1),
            max_bytes,
            bytes: Arc::default(),
        }
    }

    /// The slot of `stream`, created if missing, after dropping idle slots past the bounds.
    pub(super) fn slot(&self, stream: &str) -> Slot {
        let mut slots = self.slots.lock().expect("cache lock");
        let slot = match slots.get(stream) {
            Some(slot) => {
                metrics::counter!("foldhost_aggregate_cache_hits_total").increment(1);
                slot.clone()
            }
            None => {
                metrics::counter!("foldhost_aggregate_cache_misses_total").increment(1);
                let slot = Arc::new(StreamSlot::new(self.bytes.clone()));
                slots.put(stream.to_owned(), slot.clone());
                slot
            }
        };
        self.shrink(&mut slots);
        metrics::gauge!("foldhost_aggregate_cache_streams").set(slots.len() as f64);
        metrics::gauge!("foldhost_aggregate_cache_bytes").set(self.bytes() as f64);
        slot
    }

    /// Drops idle slots from the cold end while the cache is past a bound.
    fn shrink(&self, slots: &mut LruCache<String, Slot>) {
        let mut busy = 0;
        while (slots.len() > self.max_slots || self.bytes() > self.max_bytes)
            && busy < MAX_BUSY_SKIPS
        {
            let Some((stream, slot)) = slots.peek_lru() else {
                break;
            };
            // Only the cache holds an idle slot: no command, read or driver is using it.
            if Arc::strong_count(slot) == 1 {
                let (_, slot) = slots.pop_lru().expect("peeked");
                self.bytes
                    .fetch_sub(slot.footprint.swap(0, Ordering::Relaxed), Ordering::Relaxed);
                metrics::counter!("foldhost_aggregate_cache_evictions_total").increment(1);
            } else {
                let stream = stream.clone();
                slots.promote(&stream);
                busy += 1;
            }
        }
    }

    /// Bytes the cached instances hold, as last counted.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Slots cached.
    pub(super) fn len(&self) -> usize {
        self.slots.lock().expect("cache lock").len()
    }

    /// Calls `visit` with every cached slot (the cache is locked meanwhile).
    pub(super) fn for_each(&self, mut visit: impl FnMut(&Slot)) {
        for (_, slot) in self.slots.lock().expect("cache lock").iter() {
            visit(slot);
        }
    }
}

/// A slot's state, locked; unlocking it counts the instance's footprint in the cache.
pub(super) struct LiveGuard<'a> {
    slot: &'a StreamSlot,
    live: tokio::sync::MutexGuard<'a, Option<AggregateInstance>>,
}

impl<'a> LiveGuard<'a> {
    pub(super) fn new(
        slot: &'a StreamSlot,
        live: tokio::sync::MutexGuard<'a, Option<AggregateInstance>>,
    ) -> Self {
        Self { slot, live }
    }
}

impl Deref for LiveGuard<'_> {
    type Target = Option<AggregateInstance>;

    fn deref(&self) -> &Self::Target {
        &self.live
    }
}

impl DerefMut for LiveGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.live
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        let now = self.live.as_ref().map_or(0, AggregateInstance::footprint);
        let before = self.slot.footprint.swap(now, Ordering::Relaxed);
        self.slot.counted.fetch_add(now, Ordering::Relaxed);
        self.slot.counted.fetch_sub(before, Ordering::Relaxed);
    }
}
