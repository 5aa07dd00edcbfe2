//! The runner's stand-in for a memory cgroup: `resources.limits.memory` enforced on the
//! container's main process.
//!
//! Every [`SAMPLE_EVERY`] the runner reads the process's resident set (`VmRSS` of
//! `/proc/<pid>/status`). A process found above its limit is killed with SIGKILL (its whole
//! process group) and reported as the kernel's OOM killer is: terminated, reason `OOMKilled`,
//! exit code 137. Unlike a cgroup, this counts neither page cache nor kernel memory nor the
//! children of the main process, and growth between two samples goes unseen until the next.

use std::time::Duration;

/// How often each process's memory is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The exit code of a process killed by SIGKILL (128 + 9), as the kubelet reports it.
pub const KILLED_EXIT_CODE: i32 = 137;

/// The kubelet's reason for a container the OOM killer ended.
pub const OOM_REASON: &str = "OOMKilled";

/// Resident bytes in the text of `/proc/<pid>/status` (the `VmRSS:` line, in kB).
#[must_use]
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB" | "KB") | None => 1024,
        Some("mB" | "MB") => 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

/// What to do with a process after a memory reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At or below its limit (or without one).
    Within,
    /// Above its limit: SIGKILL, reported `OOMKilled`.
    Kill,
}

/// The verdict on `rss_bytes` for a container limited to `limit_bytes`.
#[must_use]
pub fn verdict(rss_bytes: u64, limit_bytes: Option<u64>) -> Verdict {
    match limit_bytes {
        Some(limit) if rss_bytes > limit => Verdict::Kill,
        _ => Verdict::Within,
    }
}

/// Reads a process's resident bytes; `None` when it is gone (or not readable).
#[must_use]
pub fn read_rss(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(vm_rss_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tmigrate-worker\nVmPeak:\t  300000 kB\nVmRSS:\t   98304 kB\nThreads:\t5\n";

    #[test]
    fn the_resident_set_is_read_from_proc_status_in_bytes() {
        assert_eq!(vm_rss_bytes(STATUS), Some(98_304 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tzombie\n"), None);
    }

    #[test]
    fn a_process_above_its_limit_is_killed_and_one_at_or_below_is_not() {
        let limit = 96 * 1024 * 1024;
        assert_eq!(verdict(limit + 1, Some(limit)), Verdict::Kill);
        assert_eq!(verdict(limit, Some(limit)), Verdict::Within);
        assert_eq!(verdict(u64::MAX, None), Verdict::Within);
    }

    #[test]
    fn this_process_has_a_readable_resident_set() {
        let rss = read_rss(std::process::id()).unwrap();
        assert!(rss > 0);
    }
}
