//! The plugin's heap (feature `lean-heap`, on by default): [talc] serving from the memory the
//! plugin already has before growing it, and extending its heap a host page at a time.
//!
//! Every page a live instance writes stays resident for as long as the instance lives, and a
//! host keeps one instance per live state. Rust's default allocator on
//! `wasm32-unknown-unknown` (dlmalloc) ignores the initial memory after `__heap_base` (the
//! rest of the image's last page and the pages up to the end of the initial memory) and
//! starts with a `memory.grow` of 64 KiB, writing its first chunk at the start and its
//! segment's footer at the end: two fresh pages for a state of a few hundred bytes.
//!
//! This heap starts at `__heap_base`, in the image's last page (already private to the
//! instance, since `.data` and `.bss` end in it), and grows its end a 4 KiB page at a time, so
//! it writes no page it does not allocate from; it calls `memory.grow` only once the initial
//! memory is used up, then goes on a page at a time in the grown memory. A bank-account
//! instance holds one heap page instead of two (docs/performance.md → Memory).
//!
//! Turn the feature off (`default-features = false`) for std's dlmalloc.

use core::alloc::Layout;
use core::arch::wasm32;
use core::ptr::NonNull;

use talc::base::Talc;
use talc::base::binning::Binning;
use talc::cell::TalcSyncCell;
use talc::source::Source;
use talc::wasm::WasmBinning;

#[global_allocator]
static HEAP: TalcSyncCell<PageAtATime, WasmBinning> = TalcSyncCell::new_wasm(PageAtATime::new());

/// The granule of the heap's growth: the host's page, the unit in which memory is resident.
const PAGE: usize = 4096;
/// WebAssembly's page, the unit of `memory.grow`.
const WASM_PAGE: usize = 65536;

unsafe extern "C" {
    /// Defined by wasm-ld: the first byte after the data, `.bss` and (with `--stack-first`,
    /// below them) the stack; the rest of memory is the program's to use.
    static __heap_base: u8;
}

/// A talc [`Source`] growing one heap, from `__heap_base` up, by the host pages an
/// allocation needs, and the memory itself by the WebAssembly pages that needs.
///
/// Assumes nothing else in the module calls `memory.grow`: with this the global allocator,
/// nothing in std or the SDK does.
#[derive(Debug)]
pub(crate) struct PageAtATime {
    /// The heap's end, once claimed.
    end: Option<NonNull<u8>>,
}

impl PageAtATime {
    const fn new() -> Self {
        Self { end: None }
    }
}

// SAFETY: `acquire` allocates nothing; it hands talc only memory above the heap's end, below
// the memory's end after growing it, which nothing else in the module uses.
unsafe impl Source for PageAtATime {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        let start = match talc.source.end {
            Some(end) => end.as_ptr() as usize,
            None => &raw const __heap_base as usize,
        };
        // Enough for the allocation, its alignment, its tags and, on the first claim, talc's
        // metadata; more than talc needs, which at most rounds up to one page more.
        let first = if talc.source.end.is_none() {
            talc::min_first_heap_size::<B>()
        } else {
            0
        };
        let need = layout
            .size()
            .checked_add(layout.align() + 2 * talc::base::CHUNK_UNIT + first)
            .ok_or(())?;
        let new_end = start
            .checked_add(need)
            .and_then(|end| end.checked_next_multiple_of(PAGE))
            .ok_or(())?;
        let memory_end = wasm32::memory_size::<0>() * WASM_PAGE;
        if new_end > memory_end {
            let pages = (new_end - memory_end).div_ceil(WASM_PAGE);
            if wasm32::memory_grow::<0>(pages) == usize::MAX {
                return Err(());
            }
        }
        let new_end = new_end as *mut u8;
        // SAFETY: `start..new_end` lies within the memory (grown above if it did not) and
        // above everything the linker placed; only this heap uses it.
        talc.source.end = Some(unsafe {
            match talc.source.end {
                Some(end) => talc.extend(end, new_end),
                None => talc
                    .claim(start as *mut u8, new_end as usize - start)
                    .ok_or(())?,
            }
        });
        Ok(())
    }
}
