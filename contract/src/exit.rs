//! How a worker process ends and what the supervisor makes of it.
//!
//! The worker exits with an [`ExitReason`]'s code (and writes its name to the termination
//! message); the supervisor sees an [`ExitStatus`] (code or signal, `OOMKilled`, evicted) and
//! counts it under a [`RestartReason`] by [`classify_exit`], the only table from one to the
//! other.
//!
//! | code | [`ExitReason`] | restart reason |
//! |---|---|---|
//! | 0 | `Drained` | the one the supervisor asked for, if any (none: finished normally) |
//! | 10 | `MemorySoft` | `memory-soft` |
//! | 11 | `MemoryHard` | `memory-hard` |
//! | 12 | `Recycled` | `recycled` |
//! | 78 | `Config` | `crashed` (and no new start until the spec changes) |
//! | 1 and any other | `Fatal` | `crashed` |
//!
//! ```
//! use migrate_contract::exit::{ExitReason, ExitStatus, RestartReason, classify_exit};
//!
//! let status = ExitStatus {
//!     code: Some(ExitReason::MemorySoft.code()),
//!     ..ExitStatus::default()
//! };
//! assert_eq!(classify_exit(&status, None), Some(RestartReason::MemorySoft));
//! ```

/// Why a worker was restarted. The same names are used in status, Events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RestartReason {
    /// Drained gracefully after crossing the soft memory limit.
    MemorySoft,
    /// Stopped at once after crossing the hard memory limit.
    MemoryHard,
    /// Drained after its configured number of tasks.
    Recycled,
    /// Killed by the kernel's OOM killer.
    OomKilled,
    /// Exited with an unexpected code or signal.
    Crashed,
    /// Evicted by its node or the API.
    Evicted,
    /// Stopped because fewer workers were needed.
    ScaledDown,
    /// Drained and replaced because the job's spec changed since it started.
    Updated,
}

impl RestartReason {
    /// Every reason, in a stable order.
    pub const ALL: [RestartReason; 8] = [
        RestartReason::MemorySoft,
        RestartReason::MemoryHard,
        RestartReason::Recycled,
        RestartReason::OomKilled,
        RestartReason::Crashed,
        RestartReason::Evicted,
        RestartReason::ScaledDown,
        RestartReason::Updated,
    ];

    /// The reason's name: `memory-soft`, `memory-hard`, `recycled`, `oom-killed`, `crashed`,
    /// `evicted`, `scaled-down` or `updated`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartReason::MemorySoft => "memory-soft",
            RestartReason::MemoryHard => "memory-hard",
            RestartReason::Recycled => "recycled",
            RestartReason::OomKilled => "oom-killed",
            RestartReason::Crashed => "crashed",
            RestartReason::Evicted => "evicted",
            RestartReason::ScaledDown => "scaled-down",
            RestartReason::Updated => "updated",
        }
    }

    /// Parses a reason name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Why the worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Drained on request (SIGTERM), or the queue was empty in drain mode.
    Drained,
    /// Drained itself after crossing its soft memory limit.
    MemorySoft,
    /// Stopped at once after crossing its hard memory limit.
    MemoryHard,
    /// Drained itself after its configured number of tasks.
    Recycled,
    /// The configuration is wrong; restarting will not help.
    Config,
    /// Anything else.
    Fatal,
}

impl ExitReason {
    /// Every reason, in a stable order.
    pub const ALL: [ExitReason; 6] = [
        ExitReason::Drained,
        ExitReason::MemorySoft,
        ExitReason::MemoryHard,
        ExitReason::Recycled,
        ExitReason::Config,
        ExitReason::Fatal,
    ];

    /// The process exit code.
    #[must_use]
    pub const fn code(self) -> i32 {
        match self {
            ExitReason::Drained => 0,
            ExitReason::Fatal => 1,
            ExitReason::MemorySoft => 10,
            ExitReason::MemoryHard => 11,
            ExitReason::Recycled => 12,
            ExitReason::Config => 78,
        }
    }

    /// The reason for an exit code (`None` for codes the worker never uses on purpose).
    #[must_use]
    pub const fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(ExitReason::Drained),
            1 => Some(ExitReason::Fatal),
            10 => Some(ExitReason::MemorySoft),
            11 => Some(ExitReason::MemoryHard),
            12 => Some(ExitReason::Recycled),
            78 => Some(ExitReason::Config),
            _ => None,
        }
    }

    /// The name written to the termination message (`memory-soft`, `recycled`, ...): the
    /// [`RestartReason`] name the supervisor records for it where there is one.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ExitReason::Drained => "drained",
            ExitReason::MemorySoft => "memory-soft",
            ExitReason::MemoryHard => "memory-hard",
            ExitReason::Recycled => "recycled",
            ExitReason::Config => "config-error",
            ExitReason::Fatal => "crashed",
        }
    }
}

/// How a worker ended, as its backend saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (Kubernetes reason `OOMKilled`).
    pub oom_killed: bool,
    /// It was evicted.
    pub evicted: bool,
}

/// The restart reason for an exited worker: what the kernel or the worker said first, then what
/// the supervisor asked for. `None` means it finished normally (not a restart).
#[must_use]
pub fn classify_exit(status: &ExitStatus, asked: Option<RestartReason>) -> Option<RestartReason> {
    if status.oom_killed {
        return Some(RestartReason::OomKilled);
    }
    if status.evicted {
        return Some(RestartReason::Evicted);
    }
    match status.code.map(ExitReason::from_code) {
        Some(Some(ExitReason::MemorySoft)) => Some(RestartReason::MemorySoft),
        Some(Some(ExitReason::MemoryHard)) => Some(RestartReason::MemoryHard),
        Some(Some(ExitReason::Recycled)) => Some(RestartReason::Recycled),
        Some(Some(ExitReason::Drained)) => asked,
        // A signal we sent (hard kill) carries the reason we sent it for.
        None if asked.is_some() => asked,
        // `Config` and `Fatal`, a code the worker never uses on purpose, or a signal nobody
        // asked for. (`Config` also stops new starts: the policy reads the code for that.)
        _ => Some(RestartReason::Crashed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut codes: Vec<i32> = ExitReason::ALL.iter().map(|r| r.code()).collect();
        for r in ExitReason::ALL {
            assert_eq!(ExitReason::from_code(r.code()), Some(r));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ExitReason::ALL.len());
    }

    #[test]
    fn restart_reason_names_round_trip() {
        for r in RestartReason::ALL {
            assert_eq!(RestartReason::from_name(r.as_str()), Some(r));
        }
        assert_eq!(RestartReason::from_name("drained"), None);
    }

    /// The kernel's word comes first, then the worker's code, then what the supervisor asked.
    #[test]
    fn an_exit_is_classified_by_oom_eviction_code_then_request() {
        let code = |c| ExitStatus {
            code: Some(c),
            ..ExitStatus::default()
        };
        let asked = Some(RestartReason::ScaledDown);
        let oom = ExitStatus {
            code: Some(137),
            oom_killed: true,
            ..ExitStatus::default()
        };
        assert_eq!(classify_exit(&oom, asked), Some(RestartReason::OomKilled));
        let evicted = ExitStatus {
            evicted: true,
            ..ExitStatus::default()
        };
        assert_eq!(classify_exit(&evicted, asked), Some(RestartReason::Evicted));
        assert_eq!(classify_exit(&code(0), asked), asked);
        assert_eq!(classify_exit(&code(0), None), None);
        assert_eq!(
            classify_exit(&code(10), asked),
            Some(RestartReason::MemorySoft)
        );
        assert_eq!(
            classify_exit(&code(11), None),
            Some(RestartReason::MemoryHard)
        );
        assert_eq!(
            classify_exit(&code(12), None),
            Some(RestartReason::Recycled)
        );
        for c in [1, 2, 78, 137] {
            assert_eq!(
                classify_exit(&code(c), asked),
                Some(RestartReason::Crashed),
                "{c}"
            );
        }
        let killed = ExitStatus {
            signal: Some(9),
            ..ExitStatus::default()
        };
        assert_eq!(
            classify_exit(&killed, Some(RestartReason::MemoryHard)),
            Some(RestartReason::MemoryHard)
        );
        assert_eq!(classify_exit(&killed, None), Some(RestartReason::Crashed));
    }
}
