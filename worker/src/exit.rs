//! Exit codes of the worker process: how it tells its supervisor why it ended.
//!
//! The same reason is written to the container's termination-message file, so Kubernetes
//! shows it in the container's last state: the path in `MIGRATE_TERMINATION_LOG` (the operator
//! sets it to the container's `terminationMessagePath`), else `/dev/termination-log` when that
//! file exists.

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

    /// The restart reason the supervisor records (`memory-soft`, `recycled`, ...).
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

/// The environment variable naming the termination-message file.
pub const TERMINATION_LOG_ENV: &str = "MIGRATE_TERMINATION_LOG";

/// Where Kubernetes reads a container's termination message by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// The termination-message file: `MIGRATE_TERMINATION_LOG` when set (`given`), else
/// `/dev/termination-log` when it exists; `None` outside a container.
#[must_use]
pub fn termination_log_path(given: Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    match given.filter(|p| !p.is_empty()) {
        Some(path) => Some(path.into()),
        None => {
            let default = std::path::Path::new(DEFAULT_TERMINATION_LOG);
            default.exists().then(|| default.to_path_buf())
        }
    }
}

/// Writes the reason where Kubernetes reads it (see [`termination_log_path`]); errors are
/// ignored because the exit code carries the same information.
pub fn write_termination_log(reason: ExitReason, detail: &str) {
    if let Some(path) = termination_log_path(std::env::var_os(TERMINATION_LOG_ENV)) {
        let _ = std::fs::write(path, format!("{}: {detail}", reason.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_log_path_comes_from_the_environment_first() {
        assert_eq!(
            termination_log_path(Some("/state/pod/worker.termination-log".into())),
            Some(std::path::PathBuf::from(
                "/state/pod/worker.termination-log"
            ))
        );
        let fallback = termination_log_path(Some("".into()));
        assert_eq!(
            fallback.is_some(),
            std::path::Path::new(DEFAULT_TERMINATION_LOG).exists()
        );
    }

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let all = [
            ExitReason::Drained,
            ExitReason::MemorySoft,
            ExitReason::MemoryHard,
            ExitReason::Recycled,
            ExitReason::Config,
            ExitReason::Fatal,
        ];
        let mut codes: Vec<i32> = all.iter().map(|r| r.code()).collect();
        for r in all {
            assert_eq!(ExitReason::from_code(r.code()), Some(r));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
