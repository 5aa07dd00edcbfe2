//! Restarts the supervisor and a worker agree on: the recycle target of each worker, and how a
//! supervised worker asks to be restarted at its soft memory line.
//!
//! # The ask
//!
//! A worker started with [`SUPERVISED`](crate::env::SUPERVISED) set does not drain itself at
//! the soft line: it sets [`RESTART_REQUESTED`](crate::metrics::RESTART_REQUESTED) to the
//! Unix time it crossed the line, stays ready and keeps working. Its supervisor reads the
//! gauge where it reads the memory figures (`/metrics`, every `memory.checkIntervalMs`),
//! starts a replacement first and grants the restart within `memory.maxConcurrentRestarts`
//! and `memory.minWorkerAge` by the graceful stop it uses for any drain (SIGTERM, or the pod's
//! deletion with its grace period). The hard line still stops the worker at once by itself,
//! and a worker nobody supervises (no such variable) drains itself at the soft line.
//!
//! # The recycle target
//!
//! `workers.recycleAfterTasks` is spread by `workers.recycleJitterPercent` either way so that
//! workers started together do not all recycle together. The spread is a function of the
//! worker's id ([`recycle_target`]), so the worker and its supervisor compute the same target
//! without telling each other.

/// The value of [`SUPERVISED`](crate::env::SUPERVISED) a supervisor sets.
pub const SUPERVISED_VALUE: &str = "1";

/// Whether a value of [`SUPERVISED`](crate::env::SUPERVISED) means supervised: `1` or `true`
/// (any case); anything else, and no value, means the worker drains itself.
#[must_use]
pub fn is_supervised(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        v == SUPERVISED_VALUE || v.eq_ignore_ascii_case("true")
    })
}

/// The task count after which the worker `worker` recycles: `after` spread by up to
/// `jitter_percent` (at most 100) either way, by a hash of the id, so the same id always gets
/// the same target and different ids spread over the range. Never below 1.
///
/// ```
/// use migrate_contract::restart::recycle_target;
///
/// assert_eq!(recycle_target("job-worker-a", 1_000, 0), 1_000);
/// let t = recycle_target("job-worker-a", 1_000, 10);
/// assert!((900..=1_100).contains(&t));
/// assert_eq!(t, recycle_target("job-worker-a", 1_000, 10));
/// ```
#[must_use]
pub fn recycle_target(worker: &str, after: u64, jitter_percent: u32) -> u64 {
    let jitter = u128::from(jitter_percent.min(100));
    let after_wide = u128::from(after);
    // The spread in tasks, and a point in [-spread, +spread] picked by the id's hash.
    let spread = after_wide * jitter / 100;
    if spread == 0 {
        return after.max(1);
    }
    let offset = u128::from(fnv1a(worker.as_bytes())) % (2 * spread + 1);
    let target = (after_wide + offset).saturating_sub(spread);
    u64::try_from(target).unwrap_or(u64::MAX).max(1)
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike the standard library's hasher),
/// and spreads short, similar names (`job-worker-abcde`) well enough for a jitter.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for inputs differing only in their last byte; fold the high
    // half in.
    hash ^ (hash >> 29)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Workers named as pods are named get targets spread over the whole jitter range, not one
    /// shared count: the point of the jitter.
    #[test]
    fn targets_of_different_workers_spread_over_the_range() {
        let targets: Vec<u64> = (0..200)
            .map(|i| recycle_target(&format!("articles-worker-{i:05x}"), 1_000, 10))
            .collect();
        assert!(
            targets.iter().all(|t| (900..=1_100).contains(t)),
            "{targets:?}"
        );
        let distinct: BTreeSet<u64> = targets.iter().copied().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct targets",
            distinct.len()
        );
        let low = targets.iter().filter(|t| **t < 1_000).count();
        let high = targets.iter().filter(|t| **t > 1_000).count();
        assert!(low > 60 && high > 60, "{low} below, {high} above the count");
        let (min, max) = (targets.iter().min(), targets.iter().max());
        assert!(
            min < Some(&920) && max > Some(&1_080),
            "targets span only {min:?}..{max:?}"
        );
    }

    #[test]
    fn a_target_is_the_same_for_the_same_worker_and_exact_without_jitter() {
        assert_eq!(
            recycle_target("w-1", 500, 20),
            recycle_target("w-1", 500, 20)
        );
        assert_eq!(recycle_target("w-1", 500, 0), 500);
        assert_eq!(
            recycle_target("w-1", 1, 50),
            1,
            "a spread below one task is none"
        );
        assert_eq!(recycle_target("w-1", 0, 0), 1, "never below one task");
        let t = recycle_target("w-1", u64::MAX, 100);
        assert!(t >= 1);
    }

    #[test]
    fn supervised_is_one_or_true() {
        assert!(is_supervised(Some("1")));
        assert!(is_supervised(Some(" TRUE ")));
        assert!(!is_supervised(Some("0")));
        assert!(!is_supervised(Some("")));
        assert!(!is_supervised(None));
    }
}
