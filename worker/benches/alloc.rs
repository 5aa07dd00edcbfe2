//! Cost of the counting allocator over `System`: nanoseconds per allocation/free pair.
//!
//! Run with `cargo bench -p migrate-worker --bench alloc`. Prints one line per case; nothing
//! is asserted. The allocators are called directly (not registered), so both are measured in
//! the same process under the same conditions.

// Calling `GlobalAlloc` methods directly is unsafe; each call passes the layout it allocated.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use migrate_worker::memory::{CountingAlloc, enter_stage};
use migrate_worker::stage::Stage;

/// A case: its name, and the same measurement over `System` and over `CountingAlloc`.
type Case = (
    &'static str,
    fn(&System, Layout) -> f64,
    fn(&CountingAlloc, Layout) -> f64,
);

const PAIRS: usize = 2_000_000;
const BATCH: usize = 1_000;

/// One allocation then its free, repeated: the allocator's fast path.
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout) -> f64 {
    let start = Instant::now();
    for _ in 0..PAIRS {
        // SAFETY: non-zero layout; the pointer is written once and freed with the same layout.
        unsafe {
            let p = a.alloc(black_box(layout));
            if !p.is_null() {
                p.write(1);
                a.dealloc(black_box(p), layout);
            }
        }
    }
    start.elapsed().as_nanos() as f64 / PAIRS as f64
}

/// BATCH allocations, then BATCH frees: closer to a document being built and dropped.
fn batches<A: GlobalAlloc>(a: &A, layout: Layout) -> f64 {
    let mut held = Vec::with_capacity(BATCH);
    let rounds = PAIRS / BATCH;
    let start = Instant::now();
    for _ in 0..rounds {
        for _ in 0..BATCH {
            // SAFETY: non-zero layout.
            let p = unsafe { a.alloc(layout) };
            held.push(p);
        }
        for p in held.drain(..) {
            if !p.is_null() {
                // SAFETY: allocated above with `layout`.
                unsafe { a.dealloc(black_box(p), layout) };
            }
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * BATCH) as f64
}

/// Two threads doing pairs at once in the same stage: both hit the same counter.
fn contended<A: GlobalAlloc + Sync>(a: &A, layout: Layout) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let _g = enter_stage(Stage::Keywords);
                pairs(a, layout)
            });
        }
    });
    start.elapsed().as_nanos() as f64 / PAIRS as f64
}

fn main() {
    println!("allocator overhead, ns per alloc+free ({PAIRS} pairs per case; lower is better)");
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "case", "system", "counting", "overhead"
    );
    for size in [16usize, 64, 1024, 64 * 1024] {
        let layout = Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>());
        // Warm-up, so the first case does not pay for page faults.
        pairs(&System, layout);
        pairs(&CountingAlloc, layout);
        let cases: [Case; 3] = [
            ("pairs", pairs::<System>, pairs::<CountingAlloc>),
            (
                "batches of 1000",
                batches::<System>,
                batches::<CountingAlloc>,
            ),
            (
                "2 threads, same stage",
                contended::<System>,
                contended::<CountingAlloc>,
            ),
        ];
        for (name, system, counting) in cases {
            let s = system(&System, layout);
            let c = {
                let _g = enter_stage(Stage::Source);
                counting(&CountingAlloc, layout)
            };
            println!(
                "{:<34} {s:>9.1} {c:>9.1} {:>+9.1}",
                format!("{name}, {size} B"),
                c - s
            );
        }
    }
    for align in [64usize, 4096] {
        let layout = Layout::from_size_align(256, align).unwrap_or(Layout::new::<u64>());
        let s = pairs(&System, layout);
        let c = pairs(&CountingAlloc, layout);
        println!(
            "{:<34} {s:>9.1} {c:>9.1} {:>+9.1}",
            format!("pairs, 256 B align {align}"),
            c - s
        );
    }
}
