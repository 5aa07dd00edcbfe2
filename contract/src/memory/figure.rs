//! The one memory figure both sides compare with a worker's thresholds: the worker (its own
//! soft and hard lines) and its supervisor (the operator through `/metrics`, the local
//! supervisor by pid).
//!
//! - **The cgroup's working set** (usage minus the inactive page cache) when the process has a
//!   memory cgroup of its own: the kubelet evicts on that figure, and it is the part of the
//!   charge the kernel cannot reclaim before it OOM-kills (page cache it can drop is left out,
//!   kernel memory and socket buffers that are in no RSS are counted).
//! - **RSS** when the process shares its cgroup with other processes (a local worker in its
//!   supervisor's cgroup) or has none: a shared cgroup's charge is not this process's.
//!
//! "Of its own" means the cgroup's `cgroup.procs` lists this process alone, as a container's
//! cgroup does (v1 and v2 alike).

use super::cgroup::{CgroupMemory, read_cgroup, read_cgroup_of};
use super::rss::{read_rss, read_rss_of};

/// Which figure a [`MemoryFigure`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum FigureSource {
    /// The working set of the process's own memory cgroup.
    CgroupWorkingSet,
    /// The process's resident set size.
    #[default]
    Rss,
}

impl FigureSource {
    /// The name used in status (`memorySource`), logs and the `source` label of
    /// `migrate_memory_usage_source`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupWorkingSet => "cgroupWorkingSet",
            Self::Rss => "rss",
        }
    }

    /// The source named `name` (as [`FigureSource::as_str`] writes it).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "cgroupWorkingSet" => Some(Self::CgroupWorkingSet),
            "rss" => Some(Self::Rss),
            _ => None,
        }
    }

    /// Every source, for metrics that list each label value from the start.
    pub const ALL: [Self; 2] = [Self::CgroupWorkingSet, Self::Rss];
}

impl std::fmt::Display for FigureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A process's memory as compared with its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFigure {
    /// The figure, in bytes.
    pub bytes: u64,
    /// Which figure it is.
    pub source: FigureSource,
}

/// The figure of a process with resident memory `rss` and memory cgroup `cgroup`: the
/// cgroup's working set when the cgroup is the process's own, else RSS.
#[must_use]
pub fn memory_figure(rss: u64, cgroup: Option<&CgroupMemory>) -> MemoryFigure {
    match cgroup {
        Some(c) if c.own => MemoryFigure {
            bytes: c.working_set(),
            source: FigureSource::CgroupWorkingSet,
        },
        _ => MemoryFigure {
            bytes: rss,
            source: FigureSource::Rss,
        },
    }
}

/// The figure of this process; `None` where `/proc` cannot be read.
#[must_use]
pub fn read_figure() -> Option<MemoryFigure> {
    let rss = read_rss()?;
    Some(memory_figure(rss, read_cgroup().as_ref()))
}

/// The figure of process `pid`, read from outside it (a supervisor reading its child) by the
/// same rule; `None` when the process is gone.
#[must_use]
pub fn read_figure_of(pid: u32) -> Option<MemoryFigure> {
    let rss = read_rss_of(pid)?;
    Some(memory_figure(rss, read_cgroup_of(pid).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(current: u64, inactive_file: u64, own: bool) -> CgroupMemory {
        CgroupMemory {
            current,
            max: Some(1 << 30),
            inactive_file,
            own,
        }
    }

    /// In a cgroup of its own the working set is the figure, even when RSS is larger (RSS
    /// counts shared file pages the cgroup may not be charged for) or smaller (page cache and
    /// kernel memory charged to the cgroup).
    #[test]
    fn an_own_cgroup_gives_its_working_set() {
        let own = cgroup(900, 300, true);
        assert_eq!(
            memory_figure(500, Some(&own)),
            MemoryFigure {
                bytes: 600,
                source: FigureSource::CgroupWorkingSet
            }
        );
        assert_eq!(memory_figure(700, Some(&own)).bytes, 600);
    }

    #[test]
    fn a_shared_cgroup_or_none_gives_rss() {
        let shared = cgroup(4_000_000, 0, false);
        let rss = MemoryFigure {
            bytes: 500,
            source: FigureSource::Rss,
        };
        assert_eq!(memory_figure(500, Some(&shared)), rss);
        assert_eq!(memory_figure(500, None), rss);
    }

    #[test]
    fn source_names_round_trip() {
        for source in FigureSource::ALL {
            assert_eq!(FigureSource::from_name(source.as_str()), Some(source));
        }
        assert_eq!(FigureSource::from_name("RSS"), None);
    }

    #[test]
    fn this_process_and_its_reading_from_outside_agree_on_the_source() {
        let inside = read_figure().unwrap();
        let outside = read_figure_of(std::process::id()).unwrap();
        assert_eq!(inside.source, outside.source);
        assert!(inside.bytes > 0);
        assert_eq!(read_figure_of(u32::MAX), None);
    }
}
