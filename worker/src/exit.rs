//! Exit codes of the worker process: how it tells its supervisor why it ended.
//!
//! The codes ([`ExitReason`]) are part of the contract with the supervisor and live in
//! `migrate-contract`, with the supervisor's classifier of them.
//!
//! The same reason is written to the container's termination-message file, so Kubernetes
//! shows it in the container's last state: the path in `MIGRATE_TERMINATION_LOG` (the operator
//! sets it to the container's `terminationMessagePath`), else `/dev/termination-log` when that
//! file exists.

pub use migrate_contract::exit::ExitReason;

/// The environment variable naming the termination-message file.
pub const TERMINATION_LOG_ENV: &str = migrate_contract::env::TERMINATION_LOG;

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
}
