//! The counting allocator registered as this test binary's global allocator: each stage is
//! credited with what it allocated and debited when that is freed, wherever that happens.
//!
//! The counters are process-wide, so the tests take a lock and run one at a time; the test
//! harness's own allocations happen outside any stage and do not touch the stage counters.

// Allocating with explicit layouts (alignment 64 and 4096) needs `std::alloc::{alloc,
// dealloc, realloc}`, which are unsafe; each call states why it is sound.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::sync::{Barrier, Mutex, MutexGuard, PoisonError};

use migrate_worker::memory::{CountingAlloc, enter_stage, in_stage, retained_all, retained_bytes};
use migrate_worker::stage::Stage;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn snapshot() -> [i64; 5] {
    retained_all().map(|(_, bytes)| bytes)
}

/// `after - before` per stage, in pipeline order.
fn delta(before: [i64; 5], after: [i64; 5]) -> [i64; 5] {
    std::array::from_fn(|i| after[i] - before[i])
}

#[test]
fn a_vec_allocated_in_source_and_dropped_outside_any_stage_returns_source_to_its_value() {
    let _serial = serial();
    let before = snapshot();
    let doc = {
        let _g = enter_stage(Stage::Source);
        vec![7u8; 10_000]
    };
    assert_eq!(delta(before, snapshot()), [0, 10_000, 0, 0, 0]);
    drop(doc);
    assert_eq!(snapshot(), before);
}

#[test]
fn a_document_made_in_source_and_freed_in_sink_never_makes_sink_negative() {
    let _serial = serial();
    let before = snapshot();
    let doc = {
        let _g = enter_stage(Stage::Source);
        vec![1u64; 512]
    };
    {
        let _g = enter_stage(Stage::Sink);
        drop(doc);
    }
    assert_eq!(snapshot(), before);
}

#[test]
fn a_leak_in_enrich_shows_on_enrich_only() {
    let _serial = serial();
    let before = snapshot();
    {
        let _g = enter_stage(Stage::Enrich);
        let leaked: &'static mut [u8] = Vec::leak(vec![0u8; 123_456]);
        leaked[0] = 1;
    }
    assert_eq!(delta(before, snapshot()), [0, 0, 123_456, 0, 0]);
}

#[test]
fn realloc_growth_is_credited_to_the_stage_that_allocated() {
    let _serial = serial();
    let before = snapshot();
    let mut v: Vec<u8> = {
        let _g = enter_stage(Stage::Source);
        Vec::with_capacity(16)
    };
    {
        let _g = enter_stage(Stage::Keywords);
        v.extend(std::iter::repeat_n(3u8, 100_000));
    }
    let capacity = i64::try_from(v.capacity()).unwrap();
    assert!(capacity >= 100_000);
    assert_eq!(delta(before, snapshot()), [0, capacity, 0, 0, 0]);
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(
        delta(before, snapshot()),
        [0, i64::try_from(v.capacity()).unwrap(), 0, 0, 0]
    );
    assert_eq!(v, [3u8; 10]);
    drop(v);
    assert_eq!(snapshot(), before);
}

#[test]
fn large_alignments_are_honoured_and_the_memory_is_usable() {
    let _serial = serial();
    let before = snapshot();
    for align in [64usize, 4096] {
        let layout = Layout::from_size_align(10_000, align).unwrap();
        let _g = enter_stage(Stage::Keywords);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "align {align}");
        // SAFETY: `p` is valid for 10,000 bytes.
        let block = unsafe { std::slice::from_raw_parts_mut(p, layout.size()) };
        block.fill(0xAB);
        assert_eq!(retained_bytes(Stage::Keywords) - before[3], 10_000);

        // SAFETY: `p` was allocated with `layout`; 50,000 is non-zero and fits isize.
        let q = unsafe { std::alloc::realloc(p, layout, 50_000) };
        assert!(!q.is_null());
        assert_eq!(q as usize % align, 0, "realloc keeps align {align}");
        // SAFETY: `q` is valid for 50,000 bytes, the first 10,000 copied from `p`.
        let grown = unsafe { std::slice::from_raw_parts_mut(q, 50_000) };
        assert!(grown[..10_000].iter().all(|&b| b == 0xAB));
        grown[10_000..].fill(0xCD);
        assert_eq!(retained_bytes(Stage::Keywords) - before[3], 50_000);

        let grown_layout = Layout::from_size_align(50_000, align).unwrap();
        // SAFETY: `q` was allocated (by realloc) with `grown_layout`.
        unsafe { std::alloc::dealloc(q, grown_layout) };
        assert_eq!(snapshot(), before);

        // SAFETY: as above, a non-zero size.
        let z = unsafe { std::alloc::alloc_zeroed(layout) };
        assert_eq!(z as usize % align, 0);
        // SAFETY: `z` is valid for 10,000 zeroed bytes.
        assert!(
            unsafe { std::slice::from_raw_parts(z, 10_000) }
                .iter()
                .all(|&b| b == 0)
        );
        // SAFETY: `z` was allocated with `layout`.
        unsafe { std::alloc::dealloc(z, layout) };
        assert_eq!(snapshot(), before);
    }
}

#[test]
fn threads_in_different_stages_do_not_mix() {
    let _serial = serial();
    let before = snapshot();
    let barrier = Barrier::new(2);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let _g = enter_stage(Stage::Source);
            let v = vec![0u8; 30_000];
            barrier.wait();
            v
        });
        let b = s.spawn(|| {
            let _g = enter_stage(Stage::Keywords);
            let v = vec![0u8; 50_000];
            barrier.wait();
            v
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let d = delta(before, snapshot());
    assert_eq!((d[1], d[3]), (30_000, 50_000), "{d:?}");
    assert_eq!((d[0], d[2], d[4]), (0, 0, 0), "{d:?}");
    drop((a, b));
    assert_eq!(snapshot(), before);
}

#[test]
fn a_staged_future_credits_its_stage_across_awaits_and_nothing_else() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let before = snapshot();
    let (first, second, outside) = rt.block_on(async {
        let staged = tokio::spawn(in_stage(Stage::Enrich, async {
            let first = vec![0u8; 4_000];
            tokio::task::yield_now().await;
            let second = vec![0u8; 6_000];
            (first, second)
        }));
        // This task polls between the staged task's polls: its allocations are not enrich's.
        let outside = vec![0u8; 9_999];
        let (first, second) = staged.await.unwrap();
        (first, second, outside)
    });
    let d = delta(before, snapshot());
    assert_eq!(d[2], 10_000, "{d:?}");
    assert_eq!(d.iter().sum::<i64>(), 10_000, "{d:?}");
    drop((first, second, outside, rt));
    assert_eq!(snapshot(), before);
}
