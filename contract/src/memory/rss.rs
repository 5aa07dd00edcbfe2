//! Resident set size from `/proc/<pid>/statm`.

use std::path::Path;
use std::sync::OnceLock;

/// Resident memory of this process in bytes (resident pages of `/proc/self/statm` times the
/// page size); `None` where `/proc` cannot be read.
#[must_use]
pub fn read_rss() -> Option<u64> {
    read_statm(Path::new("/proc/self/statm"))
}

/// Resident memory of another process in bytes, for a supervisor watching its children;
/// `None` when the process is gone or `/proc` cannot be read.
#[must_use]
pub fn read_rss_of(pid: u32) -> Option<u64> {
    read_statm(Path::new(&format!("/proc/{pid}/statm")))
}

fn read_statm(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_statm(&text, page_size())
}

/// Resident bytes from the text of a `statm` file: its second field is the resident page count.
fn parse_statm(text: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size)
}

/// The kernel's page size (asked once).
#[allow(unsafe_code)] // `sysconf` is a foreign function, hence unsafe to call; see below.
fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: `sysconf` takes an integer name, touches no memory of ours and has no
        // preconditions; it returns -1 for an unknown name, handled below.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_pages_are_multiplied_by_the_page_size() {
        assert_eq!(
            parse_statm("765 442 414 5 0 123 0\n", 4096),
            Some(442 * 4096)
        );
        assert_eq!(parse_statm("765\n", 4096), None);
        assert_eq!(parse_statm("765 x 1\n", 4096), None);
    }

    #[test]
    fn this_process_has_a_resident_set_that_grows_when_memory_is_touched() {
        let before = read_rss().unwrap();
        assert!(before > 0);
        let block = vec![1u8; 64 << 20];
        let after = read_rss().unwrap();
        assert!(
            after >= before + (32 << 20),
            "before {before}, after {after}"
        );
        assert_eq!(block.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
    }

    #[test]
    fn another_process_can_be_read_by_pid_and_a_missing_one_is_none() {
        assert_eq!(read_rss_of(std::process::id()).map(|r| r > 0), Some(true));
        assert_eq!(read_rss_of(u32::MAX), None);
    }

    #[test]
    fn the_page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
    }
}
