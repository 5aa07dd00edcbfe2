//! The one retry schedule of the worker: capped exponential backoff with full jitter, and the
//! one sleep that a shutdown cuts short.
//!
//! Full jitter (each wait drawn uniformly from zero to the ceiling) spreads workers that failed
//! together over the whole window, so they do not retry together; a wait shorter than the base
//! is then possible, and harmless: the ceiling still doubles with every failure.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Capped exponential backoff with full jitter: the wait before retry `n` (0-based) is drawn
/// uniformly from `0..=min(cap, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Backoff {
    /// Reconnecting to Redis and other loops of the worker: 100 ms doubling up to 5 s.
    pub const REDIS: Self = Self::new(Duration::from_millis(100), Duration::from_secs(5));

    /// A backoff starting at `base` and never waiting longer than `cap`.
    #[must_use]
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The longest wait before retry `retry` (0-based): `min(cap, base * 2^retry)`.
    #[must_use]
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `retry` (0-based), drawn from `0..=ceiling(retry)`.
    #[must_use]
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }
}

/// A [`Backoff`] with its count of failures since the last success, for loops that retry
/// until they succeed.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Default for Retries {
    /// [`Backoff::REDIS`].
    fn default() -> Self {
        Self::new(Backoff::REDIS)
    }
}

impl Retries {
    /// No failure yet, waiting by `backoff`.
    #[must_use]
    pub const fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.failures, &mut rand::rng());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Failures since the last reset.
    #[must_use]
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the first, shortest wait (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sleeps for `delay` unless `cancel` fires first; returns true when cancelled.
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ceilings double from the base and stop at the cap; waits are drawn from the whole
    /// window below the ceiling (full jitter), not all the same.
    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        let mut rng = rand::rng();
        let draws: Vec<Duration> = (0..400).map(|_| b.delay(2, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(
            draws.iter().any(|d| *d < Duration::from_millis(200)),
            "full jitter reaches below half the ceiling"
        );
        assert!(
            draws.iter().any(|d| *d != draws[0]),
            "delays are not jittered"
        );
    }

    /// A retry loop's waits grow to the cap, are counted, and start over after a success.
    #[test]
    fn retries_grow_to_their_cap_and_reset() {
        let mut r = Retries::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        ));
        assert!(r.next_delay() <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(r.next_delay() <= Duration::from_secs(5));
        }
        assert_eq!(r.failures(), 21);
        r.reset();
        assert_eq!(r.failures(), 0);
        assert!(r.next_delay() <= Duration::from_millis(100));
    }

    /// A sleep ends early, reporting it, when its token is cancelled.
    #[tokio::test]
    async fn a_cancelled_sleep_returns_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = std::time::Instant::now();
        assert!(sleep_or_cancel(Duration::from_secs(60), &cancel).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!sleep_or_cancel(Duration::ZERO, &CancellationToken::new()).await);
    }
}
