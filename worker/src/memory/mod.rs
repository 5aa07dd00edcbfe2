//! Memory: what the worker uses, what it may use, and which stage holds it.
//!
//! - [`read_rss`] / [`read_rss_of`]: resident memory from `/proc/<pid>/statm`.
//! - [`read_cgroup`] / [`read_cgroup_of`]: `memory.current` and `memory.max` of the process's
//!   cgroup (v2; the v1 memory controller where only that is mounted).
//! - [`memory_figure`] / [`read_figure`]: the one figure compared with the thresholds, here
//!   and by the supervisors: the working set of the worker's own cgroup, or RSS where it has
//!   none of its own ([`FigureSource`] says which).
//!
//!   These readers belong to `migrate-contract` (the local supervisor reads its workers with
//!   them, the operator reads the figure the worker exports) and are re-exported.
//! - [`CountingAlloc`]: a global allocator that counts, per pipeline stage, the bytes allocated
//!   while the stage ran and not yet freed ([`retained_bytes`], [`retained_all`]). A stage is
//!   entered with [`enter_stage`] (synchronous code) or [`in_stage`] (a future). The binary
//!   registers the allocator; a library never does.
//! - [`MemoryWatch`]: samples the above every `memory.checkIntervalMs` and publishes a
//!   [`MemoryState`] with a [`Level`] against the soft and hard thresholds.
//!
//! ```
//! use migrate_worker::memory::{CountingAlloc, in_stage, retained_bytes};
//! use migrate_worker::stage::Stage;
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//!
//! fn main() {
//!     let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//!     let before = retained_bytes(Stage::Source);
//!     let doc = rt.block_on(in_stage(Stage::Source, async { vec![0u8; 1024] }));
//!     assert_eq!(retained_bytes(Stage::Source) - before, 1024);
//!     drop(doc); // wherever this happens, `source` gets its bytes back
//!     assert_eq!(retained_bytes(Stage::Source), before);
//! }
//! ```

mod alloc;
mod scope;
mod watch;

pub use alloc::{CountingAlloc, retained_all, retained_bytes, retained_unstaged};
pub use migrate_contract::memory::{
    CgroupMemory, FigureSource, MemoryFigure, memory_figure, read_cgroup, read_cgroup_of,
    read_figure, read_figure_of, read_rss, read_rss_of,
};
pub use scope::{StageGuard, Staged, current_stage, enter_stage, in_stage};
pub use watch::{
    LIMIT_ENV, Level, LimitSource, MemoryError, MemoryLimits, MemoryState, MemoryWatch, assess,
    level,
};
