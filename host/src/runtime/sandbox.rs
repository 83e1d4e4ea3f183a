//! Confinement of plugin instances: one `Store` per instance under one
//! memory budget for all its memories and tables, which also draws on the
//! host-wide budget of every instance's memory, every call under a deadline
//! (and fuel, if metered) with a cap on what it may hand the host, and a
//! per-plugin allowance of log lines. A trapped store is never reused.

use std::borrow::Cow;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, Trap};

use super::bindings::PluginData;
use super::engine::{MAX_WASM_STACK, PluginEngine};
use super::error::RuntimeError;
use super::limits::{Limits, show_size};

/// Most core instances one plugin instance may create.
pub const MAX_INSTANCES: usize = 64;
/// Most linear memories one plugin instance may have.
pub const MAX_MEMORIES: usize = 4;
/// Most tables one plugin instance may have.
pub const MAX_TABLES: usize = 64;
/// What one table element costs the host: a pointer, and a growable table's
/// storage may hold up to twice its length (amortised doubling).
pub const TABLE_ELEMENT_BYTES: usize = 2 * size_of::<usize>();
/// Longest log line passed on, in bytes; the rest is cut.
pub const MAX_LOG_LINE: usize = 4096;
/// Least time between two summaries of dropped log lines.
const DROP_SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A fresh store for one instance of `plugin`, confined by `limits`.
pub fn new_store(
    engine: &PluginEngine,
    plugin: &str,
    limits: &Limits,
    log: Arc<LogBudget>,
) -> PluginStore {
    let mut store = Store::new(
        engine.engine(),
        PluginData {
            plugin: plugin.to_owned(),
            limits: limits.clone(),
            budget: StoreBudget::new(limits.memory, engine.memory_budget().clone()),
            log,
        },
    );
    store.limiter(|data| &mut data.budget);
    store.epoch_deadline_trap();
    // Every string and list the host lifts out of the guest draws on this,
    // so a call never makes the host copy more (aliased spans included).
    store.set_hostcall_fuel(limits.answer);
    PluginStore(ManuallyDrop::new(store))
}

/// One plugin instance's store. Dropping it frees its memories and tables before their
/// bytes go back to the host's [`MemoryBudget`]: wasmtime drops a store's data (where its
/// [`StoreBudget`] lives) before its memories, which would let other instances take bytes
/// that are still mapped.
pub struct PluginStore(ManuallyDrop<Store<PluginData>>);

impl Deref for PluginStore {
    type Target = Store<PluginData>;

    fn deref(&self) -> &Store<PluginData> {
        &self.0
    }
}

impl DerefMut for PluginStore {
    fn deref_mut(&mut self) -> &mut Store<PluginData> {
        &mut self.0
    }
}

impl Drop for PluginStore {
    fn drop(&mut self) {
        // SAFETY: the store is taken once, here, and `self` is never used again.
        let store = unsafe { ManuallyDrop::take(&mut self.0) };
        // Frees the memories and tables, then drops the data: its budget gives them back.
        drop(store.into_data());
    }
}

/// Runs one call into the plugin with a fresh deadline (and fuel). A wasm
/// error becomes [`RuntimeError::Trap`], described as `context` ("handling
/// command X", ...).
pub fn guarded<R>(
    store: &mut Store<PluginData>,
    engine: &PluginEngine,
    context: impl FnOnce() -> String,
    call: impl FnOnce(&mut Store<PluginData>) -> wasmtime::Result<R>,
) -> Result<R, RuntimeError> {
    let limits = &store.data().limits;
    let (ticks, fuel) = (limits.deadline_ticks(), limits.fuel.unwrap_or(u64::MAX));
    store.set_epoch_deadline(ticks);
    if engine.meters_fuel() {
        store
            .set_fuel(fuel)
            .expect("the engine was configured to consume fuel");
    }
    let outcome = call(store);
    store.data().log.report_drops();
    outcome.map_err(|error| {
        let plugin = store.data().plugin.clone();
        if let Some(exhausted) = error.downcast_ref::<HostBudgetExhausted>() {
            metrics::counter!("foldhost_plugin_memory_refusals_total").increment(1);
            return RuntimeError::MemoryBudget {
                plugin,
                context: context(),
                message: exhausted.to_string(),
            };
        }
        let message = describe_trap(&error, &store.data().limits);
        metrics::counter!("foldhost_plugin_traps_total", "plugin" => plugin.clone()).increment(1);
        RuntimeError::Trap {
            plugin,
            context: context(),
            message,
        }
    })
}

/// [`guarded`] for an export that answers `Result<R, String>`: the plugin's own error
/// becomes [`RuntimeError::PluginFailed`], described as `context` like a trap. After that
/// error the store is still usable; after any other it must be dropped.
pub fn guarded_answer<R>(
    store: &mut Store<PluginData>,
    engine: &PluginEngine,
    context: impl Fn() -> String,
    call: impl FnOnce(&mut Store<PluginData>) -> wasmtime::Result<Result<R, String>>,
) -> Result<R, RuntimeError> {
    let answer = guarded(store, engine, &context, call)?;
    answer.map_err(|message| RuntimeError::PluginFailed {
        plugin: store.data().plugin.clone(),
        context: context(),
        message,
    })
}

/// Whether `error` came of the guest: a trap, or one of its limits or the host's budget.
pub fn is_guest_failure(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<OverBudget>().is_some()
        || error.downcast_ref::<HostBudgetExhausted>().is_some()
}

/// A one-line reason; the wasm backtrace goes to the debug log.
fn describe_trap(error: &wasmtime::Error, limits: &Limits) -> String {
    tracing::debug!(target: "plugin", "trap: {error:?}");
    if let Some(over) = error.downcast_ref::<OverBudget>() {
        return over.to_string();
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "exceeded its time limit of {:?} per call",
            limits.call_timeout
        ),
        Some(Trap::OutOfFuel) => format!(
            "ran out of fuel: its budget is {} per call",
            limits.fuel.unwrap_or(u64::MAX)
        ),
        Some(Trap::StackOverflow) => {
            format!("overflowed its stack (limit {} KiB)", MAX_WASM_STACK >> 10)
        }
        // Rust guests keep their stack in linear memory: running off its end
        // is how unbounded recursion shows up.
        Some(Trap::MemoryOutOfBounds) => {
            "accessed memory out of bounds (typically its stack overflowed)".to_owned()
        }
        Some(Trap::UnreachableCodeReached) => {
            "panicked or aborted (unreachable instruction)".to_owned()
        }
        Some(trap) => trap.to_string(),
        // wasmtime's hostcall fuel ran out while lifting the answer.
        None if error
            .root_cause()
            .to_string()
            .contains("fuel allocated for hostcalls") =>
        {
            format!(
                "handed the host more than {} in one call (its answer limit)",
                show_size(limits.answer)
            )
        }
        None => error.root_cause().to_string(),
    }
}

/// The host-wide budget of plugin memory: the bytes every live store's memories and tables
/// hold together, as their [`StoreBudget`]s granted them. Each store is capped by its plugin's
/// `memory` limit; this caps how many of them may be grown at once, since commands to distinct
/// aggregates run in parallel. A store's bytes are given back when it is dropped.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none in use.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes all stores may hold together.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes the live stores hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, unless that would go past the limit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One store's allowance for everything its instances allocate: every linear
/// memory and every table, counted together, plus caps on how many of each.
/// What it grants is also taken from the host's [`MemoryBudget`], and given
/// back to it when the store is dropped.
#[derive(Debug)]
pub struct StoreBudget {
    limit: usize,
    /// Everything granted so far. Only ever grows: a growth wasmtime fails after it was
    /// granted is not given back (see `memory_grow_failed` below), so this
    /// never reads less than what the store's memories and tables hold.
    used: usize,
    host: Arc<MemoryBudget>,
}

/// A growth the budget refused: the trap's message.
#[derive(Debug, thiserror::Error)]
#[error(
    "exceeded its memory limit of {} (memories and tables together): {what} asked for {} more with {} in use",
    show_size(*.limit), show_size(*.requested), show_size(*.used)
)]
pub struct OverBudget {
    what: &'static str,
    requested: usize,
    used: usize,
    limit: usize,
}

/// A growth within the store's own limit that the host's [`MemoryBudget`] could not grant:
/// the other instances hold it. Not the plugin's fault; the call may pass later.
#[derive(Debug, thiserror::Error)]
#[error(
    "the host's plugin memory budget of {} is exhausted ({what} asked for {} more, all \
     plugins' instances hold {}); try again later",
    show_size(*.limit), show_size(*.requested), show_size(*.used)
)]
pub struct HostBudgetExhausted {
    what: &'static str,
    requested: usize,
    used: usize,
    limit: usize,
}

impl StoreBudget {
    /// A store's budget of `limit` bytes, drawing on `host`.
    pub fn new(limit: usize, host: Arc<MemoryBudget>) -> Self {
        Self {
            limit,
            used: 0,
            host,
        }
    }

    /// Bytes of memories and tables granted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Grants `bytes` more to `what`, growing to `desired` of its declared `maximum`. A growth
    /// past the maximum is refused (wasmtime would fail it) without drawing on either budget,
    /// since a failed growth is never given back.
    fn claim(
        &mut self,
        what: &'static str,
        bytes: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = match self.used.checked_add(bytes) {
            Some(total) if total <= self.limit => total,
            _ => {
                return Err(OverBudget {
                    what,
                    requested: bytes,
                    used: self.used,
                    limit: self.limit,
                }
                .into());
            }
        };
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        if !self.host.take(bytes) {
            return Err(HostBudgetExhausted {
                what,
                requested: bytes,
                used: self.host.used(),
                limit: self.host.limit(),
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }
}

impl Drop for StoreBudget {
    fn drop(&mut self) {
        self.host.give_back(self.used);
    }
}

impl ResourceLimiter for StoreBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.claim(
            "a memory",
            desired.saturating_sub(current),
            desired,
            maximum,
        )
    }

    /// Gives nothing back. wasmtime 48 also reports as failed growths it never asked
    /// [`Self::memory_growing`] about (past what a memory of 1-byte pages can address; for
    /// tables, a 64-bit table's size overflowing), and since a growth that succeeds is not
    /// reported, nothing here can tell whether the last grant was for this growth or for one
    /// that succeeded and is still mapped. Refunding it let a component grow memory, then fail
    /// a growth, and hold the memory with both budgets unchanged. Growths past the declared
    /// maximum are refused before they are granted (see [`Self::claim`]); what is left failing
    /// after a grant is the system refusing to map memory, and the store, which is then
    /// over-counted, gives back all it was granted when it is dropped.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        let bytes = elements.saturating_mul(TABLE_ELEMENT_BYTES);
        self.claim("a table", bytes, desired, maximum)
    }

    /// Gives nothing back, as [`Self::memory_grow_failed`] does.
    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A plugin's allowance of log lines, shared by all its instances: a token
/// bucket refilled at its `log_lines_per_sec`, holding one second's worth.
/// Dropped lines are counted in `foldhost_plugin_log_lines_dropped_total` and
/// summarised in one warning at most every second: at the end of the call
/// that dropped them, or as a long flood goes on.
#[derive(Debug)]
pub struct LogBudget {
    plugin: String,
    rate: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    last_summary: Option<Instant>,
}

impl LogBudget {
    pub fn new(plugin: &str, lines_per_sec: u32) -> Self {
        Self {
            plugin: plugin.to_owned(),
            rate: lines_per_sec,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(lines_per_sec),
                refilled: Instant::now(),
                dropped: 0,
                last_summary: None,
            }),
        }
    }

    /// Whether one more line may be written now; a refused one is counted.
    pub fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().expect("log budget lock");
        let rate = f64::from(self.rate);
        let now = Instant::now();
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        bucket.dropped += 1;
        metrics::counter!("foldhost_plugin_log_lines_dropped_total", "plugin" => self.plugin.clone())
            .increment(1);
        // A long flood is summarised as it goes, once a second.
        if bucket
            .last_summary
            .is_some_and(|at| at.elapsed() >= DROP_SUMMARY_EVERY)
        {
            self.summarise(&mut bucket);
        }
        false
    }

    /// At the end of a call: summarises the lines dropped since the last
    /// summary, unless one was written less than a second ago.
    pub fn report_drops(&self) {
        let mut bucket = self.bucket.lock().expect("log budget lock");
        let due = bucket
            .last_summary
            .is_none_or(|at| at.elapsed() >= DROP_SUMMARY_EVERY);
        if due {
            self.summarise(&mut bucket);
        }
    }

    fn summarise(&self, bucket: &mut Bucket) {
        if bucket.dropped > 0 {
            tracing::warn!(
                target: "plugin",
                plugin = %self.plugin,
                dropped = bucket.dropped,
                "dropped {} log lines over its limit of {} lines per second",
                bucket.dropped,
                self.rate
            );
            bucket.dropped = 0;
            bucket.last_summary = Some(Instant::now());
        }
    }
}

/// `message` as one line of at most [`MAX_LOG_LINE`] bytes: control
/// characters escaped, the excess cut and counted.
pub fn one_line(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX_LOG_LINE && !message.contains(char::is_control) {
        return Cow::Borrowed(message);
    }
    let mut line = String::with_capacity(MAX_LOG_LINE + 32);
    let mut kept = 0;
    for c in message.chars() {
        let escaped = c.escape_default();
        let width = if c.is_control() {
            escaped.len()
        } else {
            c.len_utf8()
        };
        if line.len() + width > MAX_LOG_LINE {
            break;
        }
        if c.is_control() {
            line.extend(escaped);
        } else {
            line.push(c);
        }
        kept += c.len_utf8();
    }
    if kept < message.len() {
        line.push_str(&format!("… ({} more bytes)", message.len() - kept));
    }
    Cow::Owned(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_traps_and_limits_are_the_guests_failures() {
        let mut budget = StoreBudget::new(1 << 20, host(1 << 30));
        let over = budget.memory_growing(0, 2 << 20, None).unwrap_err();
        assert!(is_guest_failure(&over));
        let mut budget = StoreBudget::new(1 << 20, host(1 << 10));
        let exhausted = budget.memory_growing(0, 1 << 20, None).unwrap_err();
        assert!(is_guest_failure(&exhausted));
        assert!(is_guest_failure(&wasmtime::Error::new(
            Trap::UnreachableCodeReached
        )));
        let mapped = wasmtime::Error::msg("mmap failed: Cannot allocate memory");
        assert!(!is_guest_failure(&mapped));
    }

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut budget = StoreBudget::new(1 << 20, host(1 << 30));
        assert!(budget.memory_growing(0, 512 << 10, None).unwrap());
        // A second memory draws on the same budget.
        assert!(budget.memory_growing(0, 256 << 10, None).unwrap());
        // Tables count at their host cost per element.
        let elements = (256 << 10) / TABLE_ELEMENT_BYTES;
        assert!(budget.table_growing(0, elements, None).unwrap());
        let over = budget
            .table_growing(elements, elements + 1, None)
            .unwrap_err();
        assert!(
            over.to_string().contains("memory limit of 1.0 MiB"),
            "{over}"
        );
        // A table.grow of 2^31 elements is refused before anything is allocated.
        let huge = budget.table_growing(1, 1 << 31, None).unwrap_err();
        assert!(
            huge.to_string().contains("a table asked for 32.0 GiB"),
            "{huge}"
        );
    }

    #[test]
    fn a_growth_past_the_declared_maximum_is_refused_without_drawing_on_the_budget() {
        let host = host(1 << 20);
        let mut budget = StoreBudget::new(1 << 20, host.clone());
        assert!(!budget.memory_growing(0, 1 << 20, Some(512 << 10)).unwrap());
        assert!(!budget.table_growing(0, 2, Some(1)).unwrap());
        assert_eq!((budget.used(), host.used()), (0, 0));
        assert!(budget.memory_growing(0, 1 << 20, Some(1 << 20)).unwrap());
        // Over the budget is still the trap it was, whatever the maximum.
        let over = budget
            .memory_growing(1 << 20, 2 << 20, Some(1 << 20))
            .unwrap_err();
        assert!(over.downcast_ref::<OverBudget>().is_some(), "{over}");
    }

    #[test]
    fn a_failed_growth_gives_nothing_back() {
        let host = host(4 << 20);
        let mut budget = StoreBudget::new(2 << 20, host.clone());
        // A memory grows by 1 MiB and wasmtime maps it: success is not reported. Then a 64-bit
        // table's size overflows, which wasmtime reports as failed without asking first.
        assert!(budget.memory_growing(0, 1 << 20, None).unwrap());
        budget
            .table_grow_failed(wasmtime::format_err!("overflow calculating new table size"))
            .unwrap();
        assert_eq!((budget.used(), host.used()), (1 << 20, 1 << 20));
        // Nor a failure after a grant of its own kind, which may be as stale.
        budget
            .memory_grow_failed(wasmtime::format_err!(
                "memory growth exceeds memory type's limits"
            ))
            .unwrap();
        assert_eq!((budget.used(), host.used()), (1 << 20, 1 << 20));
        // So a second MiB still fits, a third does not, and all of it goes back on drop.
        assert!(budget.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(budget.memory_growing(2 << 20, 3 << 20, None).is_err());
        drop(budget);
        assert_eq!(host.used(), 0);
    }

    fn host(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(limit))
    }

    #[test]
    fn stores_draw_on_the_host_budget_and_give_it_back_when_dropped() {
        let host = host(3 << 20);
        let mut first = StoreBudget::new(2 << 20, host.clone());
        let mut second = StoreBudget::new(2 << 20, host.clone());
        assert!(first.memory_growing(0, 2 << 20, None).unwrap());
        // Within its own limit, but the host has 1 MiB left.
        let refused = second.memory_growing(0, 2 << 20, None).unwrap_err();
        assert!(
            refused.downcast_ref::<HostBudgetExhausted>().is_some(),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .starts_with("the host's plugin memory budget of 3.0 MiB is exhausted"),
            "{refused}"
        );
        assert_eq!((second.used(), host.used()), (0, 2 << 20));
        let elements = (1 << 20) / TABLE_ELEMENT_BYTES;
        assert!(second.table_growing(0, elements, None).unwrap());
        assert_eq!(host.used(), 3 << 20);
        drop(first);
        assert_eq!(host.used(), 1 << 20);
        assert!(second.memory_growing(0, 1 << 20, None).unwrap());
        drop(second);
        assert_eq!(host.used(), 0);
    }

    #[test]
    fn the_log_budget_admits_a_second_s_worth_then_drops() {
        let budget = LogBudget::new("p", 10);
        let admitted = (0..1000).filter(|_| budget.admit()).count();
        // Ten, plus whatever trickled in while looping.
        assert!((10..=12).contains(&admitted), "{admitted}");
        assert!(!LogBudget::new("p", 0).admit());
    }

    #[test]
    fn log_lines_stay_one_bounded_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("two\nlines"), "two\\nlines");
        let long = "é".repeat(MAX_LOG_LINE);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_LOG_LINE + 32, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("… ({} more bytes)", MAX_LOG_LINE)),
            "{cut}"
        );
    }
}
