//! The counting global allocator: bytes retained per pipeline stage.
//!
//! Every block carries a small header in front of it that records the stage that allocated
//! it, so that the block is debited from that same stage when it is freed, whoever frees it
//! and whenever. A document built in `source` and dropped after `sink` therefore returns
//! `source` to where it was and never drives `sink` negative.
//!
//! Layout of a block of `size` bytes and alignment `align`:
//!
//! ```text
//! base                          base + header            base + header + size
//! | owner: u8 | unused ...      | the caller's bytes ... |
//! header = max(8, align)  (a power of two, so base + header keeps the caller's alignment)
//! ```
//!
//! The outer block is requested from [`System`] with alignment `header`, so the pointer handed
//! out (`base + header`) is aligned to `header >= align`. The header is 8 bytes for the usual
//! alignments (8 or less), `align` bytes for larger ones. 8 rather than 16 on purpose: glibc
//! rounds `n + 8` up to 16 anyway, so for sizes that are multiples of 16 (powers of two,
//! `Vec` growth) an 8-byte header costs no memory at all and keeps a 1024-byte block in
//! glibc's per-thread cache (whose largest class holds 1032 bytes), where a 16-byte header
//! pushed it out and cost about 150 ns per allocation/free pair in the benchmark.
//!
//! The counters are sharded: each thread adds to its own cache line (threads are dealt one of
//! [`SHARDS`] lines in turn), so threads working in the same stage do not fight over one line;
//! a read sums the shards.

// A `GlobalAlloc` is unsafe by definition: the trait's methods are `unsafe fn`s that hand out
// and take back raw pointers. The workspace denies `unsafe_code`; this submodule, and only it,
// is allowed to use it, and every unsafe block below states why it is sound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crate::stage::Stage;

/// Counter slots: 0 is "no stage", 1..=5 are [`Stage::index`].
const SLOTS: usize = 6;

/// Number of counter shards (cache lines); threads beyond this share lines, still correctly.
const SHARDS: usize = 16;

/// "No shard dealt yet" in [`SHARD`].
const UNASSIGNED: u8 = u8::MAX;

/// The smallest header: room for the owner byte, and the alignment (8) that every layout of
/// alignment 8 or less needs.
const MIN_HEADER: usize = 8;

/// The counters of one shard: one line, written by the threads dealt this shard.
#[repr(align(64))]
struct Shard([AtomicI64; SLOTS]);

static RETAINED: [Shard; SHARDS] = [const { Shard([const { AtomicI64::new(0) }; SLOTS]) }; SHARDS];

/// The next shard to deal to a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` initialisers and no destructors: reading them never allocates and never fails,
    // which is what makes them usable from inside the allocator.
    static CURRENT: Cell<u8> = const { Cell::new(0) };
    static SHARD: Cell<u8> = const { Cell::new(UNASSIGNED) };
}

/// The stage slot of the calling thread (0 when no stage is set).
#[inline]
pub(crate) fn current_slot() -> u8 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

/// Sets the stage slot of the calling thread and returns the previous one.
#[inline]
pub(crate) fn replace_slot(slot: u8) -> u8 {
    CURRENT.try_with(|c| c.replace(slot)).unwrap_or(0)
}

/// The calling thread's shard, dealt on first use.
#[inline]
fn shard() -> &'static Shard {
    let index = SHARD
        .try_with(|cell| {
            let dealt = cell.get();
            if dealt == UNASSIGNED {
                let next = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                let next = u8::try_from(next).unwrap_or(0);
                cell.set(next);
                next
            } else {
                dealt
            }
        })
        .unwrap_or(0);
    &RETAINED[usize::from(index) % SHARDS]
}

#[inline]
fn credit(slot: u8, delta: i64) {
    // An out-of-range owner would mean a corrupted header; never panic inside the allocator.
    if let Some(counter) = shard().0.get(usize::from(slot)) {
        counter.fetch_add(delta, Ordering::Relaxed);
    }
}

/// The sum of one counter slot over the shards.
fn total(slot: usize) -> i64 {
    RETAINED
        .iter()
        .filter_map(|shard| shard.0.get(slot))
        .map(|counter| counter.load(Ordering::Relaxed))
        .sum()
}

#[inline]
fn signed(bytes: usize) -> i64 {
    // Sizes never exceed isize::MAX, so this never saturates in practice.
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[inline]
const fn header_size(align: usize) -> usize {
    if align > MIN_HEADER {
        align
    } else {
        MIN_HEADER
    }
}

/// The layout requested from [`System`] for a caller's layout, and the header size; `None` when
/// the caller's size plus the header overflows what a layout can describe.
#[inline]
fn outer_layout(layout: Layout) -> Option<(Layout, usize)> {
    let header = header_size(layout.align());
    let size = layout.size().checked_add(header)?;
    let outer = Layout::from_size_align(size, header).ok()?;
    Some((outer, header))
}

/// A [`GlobalAlloc`] over [`System`] that counts, per pipeline stage, the bytes allocated while
/// the stage ran and not yet freed.
///
/// Register it in a binary (never in a library):
///
/// ```
/// #[global_allocator]
/// static ALLOC: migrate_worker::memory::CountingAlloc = migrate_worker::memory::CountingAlloc;
/// # fn main() {}
/// ```
///
/// The current stage is a thread-local set by [`enter_stage`](super::enter_stage) or for the
/// duration of each poll by [`in_stage`](super::in_stage). Read the counters with
/// [`retained_bytes`] and [`retained_all`]. Cost: two thread-local reads and one relaxed atomic
/// add per call on top of `System`, and an 8-byte header per block (see the module
/// documentation and the benchmark `alloc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

impl CountingAlloc {
    /// The allocator (a unit value; this exists for `static` initialisers that prefer a call).
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

// SAFETY (trait level): every block handed out is `header` bytes into a block obtained from
// `System` with `outer_layout(layout)`, where `header` depends only on `layout.align()`. The
// methods that take a block back receive the same layout (the `GlobalAlloc` contract), so they
// recompute the same `header` and outer layout, and give `System` back exactly what it handed
// out. The caller's pointer is aligned to `header >= layout.align()` because `base` is.
unsafe impl GlobalAlloc for CountingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = outer_layout(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (at least `header >= 8` bytes).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let owner = current_slot();
        // SAFETY: `base` is valid for writes of `outer.size() >= header >= 1` bytes, and the
        // caller's bytes start at `base + header`, so the owner byte does not overlap them.
        unsafe { base.write(owner) };
        credit(owner, signed(layout.size()));
        // SAFETY: `header <= outer.size()`, so the result is inside the block (or one past its
        // end when the caller asked for zero bytes), in the same allocation.
        unsafe { base.add(header) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some((outer, header)) = outer_layout(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: as in `alloc`: `outer` has a non-zero size.
        let base = unsafe { System.alloc_zeroed(outer) };
        if base.is_null() {
            return base;
        }
        let owner = current_slot();
        // SAFETY: as in `alloc`: the owner byte is inside the header.
        unsafe { base.write(owner) };
        credit(owner, signed(layout.size()));
        // SAFETY: as in `alloc`.
        unsafe { base.add(header) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let header = header_size(layout.align());
        // SAFETY: the caller gives back a pointer this allocator returned for `layout`, which is
        // `header` bytes after the base `System` returned, in the same allocation.
        let base = unsafe { ptr.sub(header) };
        // SAFETY: the owner byte was written at `base` when the block was allocated and the
        // caller's bytes never cover it.
        let owner = unsafe { base.read() };
        credit(owner, -signed(layout.size()));
        // SAFETY: this layout was valid when the block was allocated (`outer_layout` succeeded
        // for the same size and alignment), so size + header neither overflows nor exceeds
        // isize::MAX, and `header` is a power of two.
        let outer = unsafe { Layout::from_size_align_unchecked(layout.size() + header, header) };
        // SAFETY: `base` was allocated by `System` with exactly `outer`.
        unsafe { System.dealloc(base, outer) };
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let header = header_size(layout.align());
        let Some(new_outer_size) = new_size.checked_add(header) else {
            return ptr::null_mut();
        };
        // `System.realloc` requires the new size, rounded up to the alignment, to fit isize.
        if Layout::from_size_align(new_outer_size, header).is_err() {
            return ptr::null_mut();
        }
        // SAFETY: as in `dealloc`: `ptr` is `header` bytes into a block from `System`.
        let base = unsafe { ptr.sub(header) };
        // SAFETY: as in `dealloc`: the owner byte is at `base`.
        let owner = unsafe { base.read() };
        // SAFETY: as in `dealloc`: the old outer layout was valid at allocation time.
        let outer = unsafe { Layout::from_size_align_unchecked(layout.size() + header, header) };
        // SAFETY: `base` was allocated by `System` with `outer`; `new_outer_size` is non-zero and
        // valid with alignment `header` (checked above). `System.realloc` keeps the alignment of
        // `outer` and copies the first min(old, new) bytes, the header with its owner included.
        let new_base = unsafe { System.realloc(base, outer, new_outer_size) };
        if new_base.is_null() {
            // The old block is untouched and still owned by the caller: nothing to count.
            return new_base;
        }
        // The block keeps its owner: growth is credited to the stage that allocated it.
        credit(owner, signed(new_size) - signed(layout.size()));
        // SAFETY: `header < new_outer_size`, inside the new block.
        unsafe { new_base.add(header) }
    }
}

/// Bytes allocated while `stage` ran and not yet freed, since the process started.
///
/// Always 0 unless [`CountingAlloc`] is the process's global allocator.
#[must_use]
pub fn retained_bytes(stage: Stage) -> i64 {
    total(stage.index())
}

/// Bytes allocated outside any stage and not yet freed.
#[must_use]
pub fn retained_unstaged() -> i64 {
    total(0)
}

/// [`retained_bytes`] of every stage, in pipeline order.
#[must_use]
pub fn retained_all() -> [(Stage, i64); 5] {
    Stage::ALL.map(|stage| (stage, retained_bytes(stage)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_the_callers_alignment() {
        for (align, header) in [(1, 8), (8, 8), (16, 16), (32, 32), (64, 64), (4096, 4096)] {
            assert_eq!(header_size(align), header, "align {align}");
            let layout = Layout::from_size_align(100, align).unwrap();
            let (outer, h) = outer_layout(layout).unwrap();
            assert_eq!(h, header);
            assert_eq!(outer.align(), header);
            assert_eq!(outer.size(), 100 + header);
            assert_eq!(header % align, 0);
        }
    }

    #[test]
    fn sizes_that_overflow_with_the_header_are_refused() {
        let layout = Layout::from_size_align(isize::MAX as usize - 8, 8).unwrap();
        assert!(outer_layout(layout).is_none());
    }

    #[test]
    fn threads_are_dealt_shards_in_turn() {
        assert_eq!(std::mem::size_of::<Shard>(), 64, "one cache line per shard");
        let dealt_before = NEXT_SHARD.load(Ordering::Relaxed);
        let same = std::thread::spawn(|| std::ptr::eq(shard(), shard()))
            .join()
            .unwrap();
        assert!(same, "a thread keeps its shard");
        assert!(
            NEXT_SHARD.load(Ordering::Relaxed) > dealt_before,
            "the new thread was dealt one"
        );
    }

    #[test]
    fn the_stage_slot_is_per_thread_and_replace_returns_the_previous_value() {
        assert_eq!(replace_slot(3), 0);
        let other = std::thread::spawn(current_slot).join().unwrap();
        assert_eq!(other, 0);
        assert_eq!(replace_slot(0), 3);
        assert_eq!(current_slot(), 0);
    }
}
