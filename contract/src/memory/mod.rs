//! Memory readers shared by the worker (its own figures) and the local supervisor (its
//! children's): the same files, read the same way, so both compare the same numbers.
//!
//! - [`read_rss`] / [`read_rss_of`]: resident memory from `/proc/<pid>/statm`.
//! - [`read_cgroup`] / [`read_cgroup_of`]: `memory.current`, `memory.max` and the inactive page
//!   cache of the process's cgroup (v2; the v1 memory controller where only that is mounted),
//!   with [`CgroupMemory::working_set`] as the kubelet computes it.
//! - [`read_figure`] / [`read_figure_of`] / [`memory_figure`]: the one figure compared with a
//!   worker's thresholds, by the worker and by its supervisor alike: the working set of the
//!   process's own cgroup, or RSS where it has none of its own.

mod cgroup;
mod figure;
mod rss;

pub use cgroup::{CgroupMemory, read_cgroup, read_cgroup_of};
pub use figure::{FigureSource, MemoryFigure, memory_figure, read_figure, read_figure_of};
pub use rss::{read_rss, read_rss_of};
