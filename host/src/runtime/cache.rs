//! The cache of live aggregate states: one slot per stream, bounded by how many slots it
//! keeps and by the bytes their instances hold. Past either bound the least recently used idle
//! slots are dropped: their instances go to the [`Dehydrator`], which keeps their snapshots,
//! and their streams rehydrate from those on their next command. Slots idle for longer than a
//! timeout are dropped the same way ([passivated](AggregateCache::passivate), as Akka Cluster
//! Sharding passivates idle entities).
//!
//! An instance's bytes are its [footprint](AggregateInstance::footprint), counted whenever its
//! slot is unlocked, so the total follows instances as they grow. Slots in use are never
//! dropped: the bound can be passed by the instances in use at that moment.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::aggregate::AggregateInstance;
use super::commands::StreamSlot;
use super::dehydrated::Dehydrator;

/// Busy slots passed over at the cold end before one pass of eviction gives up.
const MAX_BUSY_SKIPS: usize = 16;

pub(super) type Slot = Arc<StreamSlot>;

/// A cached slot and when it was last handed out.
struct Entry {
    slot: Slot,
    used: Instant,
}

/// Live states by stream, least recently used first out.
pub(super) struct AggregateCache {
    slots: Mutex<LruCache<String, Entry>>,
    max_slots: usize,
    max_bytes: usize,
    /// Bytes held by every slot's instance, as last counted.
    bytes: Arc<AtomicUsize>,
    /// Takes the instances of dropped slots.
    dehydrator: Dehydrator,
}

impl AggregateCache {
    pub(super) fn new(max_slots: usize, max_bytes: usize, dehydrator: Dehydrator) -> Self {
        Self {
            slots: Mutex::new(LruCache::unbounded()),
            max_slots: max_slots.max(1),
            max_bytes,
            bytes: Arc::default(),
            dehydrator,
        }
    }

    /// The slot of `stream`, created if missing, after dropping idle slots past the bounds.
    pub(super) fn slot(&self, stream: &str) -> Slot {
        let mut slots = self.slots.lock().expect("cache lock");
        let used = Instant::now();
        let slot = match slots.get_mut(stream) {
            Some(entry) => {
                metrics::counter!("foldhost_aggregate_cache_hits_total").increment(1);
                entry.used = used;
                entry.slot.clone()
            }
            None => {
                metrics::counter!("foldhost_aggregate_cache_misses_total").increment(1);
                let slot = Arc::new(StreamSlot::new(self.bytes.clone()));
                let entry = Entry {
                    slot: slot.clone(),
                    used,
                };
                slots.put(stream.to_owned(), entry);
                slot
            }
        };
        self.shrink(&mut slots);
        self.report(&slots);
        slot
    }

    /// Drops idle slots from the cold end while the cache is past a bound.
    fn shrink(&self, slots: &mut LruCache<String, Entry>) {
        let mut busy = 0;
        while (slots.len() > self.max_slots || self.bytes() > self.max_bytes)
            && busy < MAX_BUSY_SKIPS
        {
            let Some((stream, entry)) = slots.peek_lru() else {
                break;
            };
            if is_idle(&entry.slot) {
                self.pop_lru(slots);
                metrics::counter!("foldhost_aggregate_cache_evictions_total").increment(1);
            } else {
                let stream = stream.clone();
                slots.promote(&stream);
                busy += 1;
            }
        }
    }

    /// Drops the slots not handed out for `timeout` and not in use, and returns how many.
    /// A slot found in use counts as used now.
    pub(super) fn passivate(&self, timeout: Duration) -> usize {
        let mut slots = self.slots.lock().expect("cache lock");
        let now = Instant::now();
        let mut passivated = 0;
        // Each turn drops the coldest slot or makes it the most recently used, so it ends.
        while let Some((stream, entry)) = slots.peek_lru()
            && now.duration_since(entry.used) >= timeout
        {
            if is_idle(&entry.slot) {
                self.pop_lru(&mut slots);
                passivated += 1;
            } else {
                let stream = stream.clone();
                slots.get_mut(&stream).expect("peeked").used = now;
            }
        }
        metrics::counter!("foldhost_aggregates_passivated_total").increment(passivated as u64);
        self.report(&slots);
        passivated
    }

    /// Drops the least recently used slot (idle), uncounting its bytes and handing its
    /// instance to the dehydrator.
    fn pop_lru(&self, slots: &mut LruCache<String, Entry>) {
        let (_, entry) = slots.pop_lru().expect("a slot to drop");
        let footprint = entry.slot.footprint.swap(0, Ordering::Relaxed);
        self.bytes.fetch_sub(footprint, Ordering::Relaxed);
        if let Some(instance) = Arc::into_inner(entry.slot).and_then(StreamSlot::into_state) {
            self.dehydrator.dehydrate(instance);
        }
    }

    fn report(&self, slots: &LruCache<String, Entry>) {
        metrics::gauge!("foldhost_aggregate_cache_streams").set(slots.len() as f64);
        metrics::gauge!("foldhost_aggregate_cache_bytes").set(self.bytes() as f64);
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
        for (_, entry) in self.slots.lock().expect("cache lock").iter() {
            visit(&entry.slot);
        }
    }
}

/// Only the cache holds an idle slot: no command, read or driver is using it.
fn is_idle(slot: &Slot) -> bool {
    Arc::strong_count(slot) == 1
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
