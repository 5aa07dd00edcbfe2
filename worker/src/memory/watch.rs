//! The memory watch: samples the process's memory every `memory.checkIntervalMs` and says
//! whether it is below, above the soft or above the hard threshold.
//!
//! # What is compared with the thresholds
//!
//! The one figure of [`memory_figure`](migrate_contract::memory::memory_figure), which the
//! operator and the local supervisor read too: **the working set of the worker's own memory
//! cgroup** (`memory.current` minus the inactive page cache, what the kubelet evicts on) when
//! the worker is alone in its cgroup, as in a pod; **RSS** when it shares its cgroup (a local
//! worker in its supervisor's cgroup) or has none. Where the limit comes from
//! (`MIGRATE_MEMORY_LIMIT_BYTES`, the cgroup's `memory.max`, the spec) does not change the
//! figure.
//!
//! - Raw `memory.current` is not used: it includes page cache the kernel drops under pressure
//!   before any OOM kill, so a worker whose cgroup sits near its limit with reclaimable cache
//!   is not in danger, and draining it would be a false alarm.
//! - RSS alone would miss memory charged to the cgroup that is in no process's RSS (active
//!   page cache, socket buffers, kernel allocations, tmpfs), which still counts towards the
//!   cgroup limit the OOM killer enforces.

use std::time::Duration;

use migrate_contract::memory::{CgroupMemory, FigureSource, memory_figure, read_cgroup, read_rss};
use migrate_crds::MigrateJobSpec;
use migrate_crds::memory::parse_quantity_bytes;
use migrate_crds::validate::{ValidationError, container_memory_limit, resolve_memory_with_limit};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The environment variable that overrides the memory limit (bytes or a quantity like `512Mi`).
pub const LIMIT_ENV: &str = migrate_contract::env::MEMORY_LIMIT_BYTES;

/// Why the memory thresholds could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The override variable is not a size.
    #[error("{LIMIT_ENV}={value:?} is not a size in bytes (e.g. 1073741824 or 1Gi)")]
    LimitOverride {
        /// The variable's value.
        value: String,
    },
    /// The spec's thresholds do not resolve against the limit.
    #[error("memory thresholds do not resolve against the limit {limit:?}")]
    Thresholds {
        /// The limit they were resolved against.
        limit: Option<u64>,
        /// What is wrong with them.
        #[source]
        source: ValidationError,
    },
}

/// How close the usage is to the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Below the soft threshold.
    #[default]
    Ok,
    /// At or above the soft threshold: drain and exit (`ExitReason::MemorySoft`), or, when a
    /// supervisor grants restarts, ask it for one and keep working.
    Soft,
    /// At or above the hard threshold: stop at once (`ExitReason::MemoryHard`).
    Hard,
}

/// The level of a usage against the thresholds (an unknown threshold is never crossed).
#[must_use]
pub fn level(usage: u64, soft: Option<u64>, hard: Option<u64>) -> Level {
    if hard.is_some_and(|h| usage >= h) {
        Level::Hard
    } else if soft.is_some_and(|s| usage >= s) {
        Level::Soft
    } else {
        Level::Ok
    }
}

/// Where the memory limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// `MIGRATE_MEMORY_LIMIT_BYTES`.
    Override,
    /// The cgroup's `memory.max`.
    Cgroup,
    /// `workers.resources.limits.memory` of the spec.
    Spec,
    /// No limit known (thresholds must then be absolute).
    Unknown,
}

/// The limit and the thresholds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// The memory limit the percentages refer to.
    pub limit: Option<u64>,
    /// Where `limit` came from.
    pub source: LimitSource,
    /// The soft threshold.
    pub soft: Option<u64>,
    /// The hard threshold.
    pub hard: Option<u64>,
}

impl MemoryLimits {
    /// Resolves the thresholds of `spec` against the first limit known among: the override, the
    /// cgroup's `memory.max`, the spec's container limit.
    ///
    /// # Errors
    /// [`MemoryError::Thresholds`] when the thresholds do not resolve against that limit (a
    /// percentage without a limit, soft not below hard, hard above the limit).
    pub fn resolve(
        spec: &MigrateJobSpec,
        override_limit: Option<u64>,
        cgroup_max: Option<u64>,
    ) -> Result<Self, MemoryError> {
        let (limit, source) = match (override_limit, cgroup_max, container_memory_limit(spec)) {
            (Some(l), _, _) => (Some(l), LimitSource::Override),
            (None, Some(l), _) => (Some(l), LimitSource::Cgroup),
            (None, None, Some(l)) => (Some(l), LimitSource::Spec),
            (None, None, None) => (None, LimitSource::Unknown),
        };
        let resolved = resolve_memory_with_limit(spec, limit)
            .map_err(|source| MemoryError::Thresholds { limit, source })?;
        Ok(Self {
            limit,
            source,
            soft: resolved.soft_bytes,
            hard: resolved.hard_bytes,
        })
    }

    /// [`MemoryLimits::resolve`] with the override read from [`LIMIT_ENV`] and the cgroup of
    /// this process.
    ///
    /// # Errors
    /// [`MemoryError::LimitOverride`] when the variable is set but not a size, and as
    /// [`MemoryLimits::resolve`].
    pub fn from_environment(spec: &MigrateJobSpec) -> Result<Self, MemoryError> {
        let override_limit = match std::env::var(LIMIT_ENV) {
            Ok(value) if !value.trim().is_empty() => Some(
                parse_quantity_bytes(value.trim()).ok_or(MemoryError::LimitOverride { value })?,
            ),
            _ => None,
        };
        Self::resolve(spec, override_limit, read_cgroup().and_then(|c| c.max))
    }
}

/// One memory reading and its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryState {
    /// Resident memory of this process in bytes (0 when unreadable).
    pub rss: u64,
    /// `memory.current` of this process's cgroup, when there is one.
    pub cgroup_current: Option<u64>,
    /// That cgroup's working set (`memory.current` minus the inactive page cache), when there
    /// is one: what the kubelet and the OOM killer see.
    pub cgroup_working_set: Option<u64>,
    /// The number compared with the thresholds (see the module documentation).
    pub usage: u64,
    /// Which figure `usage` is.
    pub source: FigureSource,
    /// The memory limit the thresholds refer to.
    pub limit: Option<u64>,
    /// The soft threshold.
    pub soft: Option<u64>,
    /// The hard threshold.
    pub hard: Option<u64>,
    /// Where `usage` stands.
    pub level: Level,
}

/// Builds the state of one reading.
#[must_use]
pub fn assess(rss: u64, cgroup: Option<&CgroupMemory>, limits: &MemoryLimits) -> MemoryState {
    let figure = memory_figure(rss, cgroup);
    let usage = figure.bytes;
    MemoryState {
        rss,
        cgroup_current: cgroup.map(|c| c.current),
        cgroup_working_set: cgroup.map(CgroupMemory::working_set),
        usage,
        source: figure.source,
        limit: limits.limit,
        soft: limits.soft,
        hard: limits.hard,
        level: level(usage, limits.soft, limits.hard),
    }
}

/// Samples memory every interval and publishes a [`MemoryState`] on a `watch` channel (one
/// value, the latest: a slow reader never queues readings).
///
/// ```no_run
/// # async fn example(spec: migrate_crds::MigrateJobSpec) -> Result<(), Box<dyn std::error::Error>> {
/// use migrate_worker::memory::{Level, MemoryWatch};
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let watch = MemoryWatch::from_spec(&spec)?;
/// let mut states = watch.subscribe();
/// tokio::spawn(watch.run(shutdown.clone()));
/// while states.changed().await.is_ok() {
///     if states.borrow().level == Level::Hard { break; }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryWatch {
    limits: MemoryLimits,
    interval: Duration,
    tx: watch::Sender<MemoryState>,
}

impl MemoryWatch {
    /// A watch with the given thresholds and sampling interval; it takes a first reading now.
    #[must_use]
    pub fn new(limits: MemoryLimits, interval: Duration) -> Self {
        let first = assess(read_rss().unwrap_or(0), read_cgroup().as_ref(), &limits);
        let (tx, _) = watch::channel(first);
        Self {
            limits,
            interval: interval.max(Duration::from_millis(10)),
            tx,
        }
    }

    /// A watch for a pipeline: thresholds from [`MemoryLimits::from_environment`], interval
    /// from `memory.checkIntervalMs`.
    ///
    /// # Errors
    /// As [`MemoryLimits::from_environment`].
    pub fn from_spec(spec: &MigrateJobSpec) -> Result<Self, MemoryError> {
        let limits = MemoryLimits::from_environment(spec)?;
        Ok(Self::new(
            limits,
            Duration::from_millis(u64::from(spec.memory.check_interval_ms)),
        ))
    }

    /// The resolved limit and thresholds.
    #[must_use]
    pub fn limits(&self) -> MemoryLimits {
        self.limits
    }

    /// A receiver of the readings; it holds the latest one from the start.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<MemoryState> {
        self.tx.subscribe()
    }

    /// Takes a reading now, publishes it and returns it.
    pub fn sample(&self) -> MemoryState {
        let state = assess(
            read_rss().unwrap_or(0),
            read_cgroup().as_ref(),
            &self.limits,
        );
        let previous = self.tx.send_replace(state);
        if previous.level != state.level {
            let (rss, usage, source) = (state.rss, state.usage, state.source.as_str());
            let (soft, hard) = (state.soft, state.hard);
            match state.level {
                Level::Ok => {
                    tracing::info!(
                        rss,
                        usage,
                        source,
                        ?soft,
                        "Memory back below the soft threshold."
                    )
                }
                Level::Soft => {
                    tracing::warn!(
                        rss,
                        usage,
                        source,
                        ?soft,
                        "Memory above the soft threshold."
                    )
                }
                Level::Hard => {
                    tracing::error!(
                        rss,
                        usage,
                        source,
                        ?hard,
                        "Memory above the hard threshold."
                    )
                }
            }
        }
        state
    }

    /// Samples every interval until `shutdown` is cancelled. Receivers see the channel close
    /// when this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    self.sample();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(soft: &str, hard: &str, container_limit: Option<&str>) -> MigrateJobSpec {
        let mut spec = migrate_crds::pipeline::example_spec();
        spec.memory.soft = soft.to_owned();
        spec.memory.hard = hard.to_owned();
        spec.memory.check_interval_ms = 250;
        let mut value = serde_json::to_value(&spec).unwrap();
        value["workers"]["resources"] = match container_limit {
            Some(limit) => serde_json::json!({ "limits": { "memory": limit } }),
            None => serde_json::Value::Null,
        };
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn level_is_ok_below_soft_soft_from_soft_and_hard_from_hard() {
        let cases = [
            (0, Some(80), Some(92), Level::Ok),
            (79, Some(80), Some(92), Level::Ok),
            (80, Some(80), Some(92), Level::Soft),
            (91, Some(80), Some(92), Level::Soft),
            (92, Some(80), Some(92), Level::Hard),
            (1000, Some(80), Some(92), Level::Hard),
            (1000, None, None, Level::Ok),
            (1000, Some(80), None, Level::Soft),
            (1000, None, Some(92), Level::Hard),
            (50, None, Some(92), Level::Ok),
        ];
        for (usage, soft, hard, expected) in cases {
            assert_eq!(
                level(usage, soft, hard),
                expected,
                "usage {usage}, soft {soft:?}, hard {hard:?}"
            );
        }
    }

    #[test]
    fn the_override_wins_over_the_cgroup_and_the_cgroup_over_the_spec() {
        let s = spec("80%", "90%", Some("1000"));
        let l = MemoryLimits::resolve(&s, Some(2000), Some(3000)).unwrap();
        assert_eq!(
            (l.limit, l.source, l.soft, l.hard),
            (Some(2000), LimitSource::Override, Some(1600), Some(1800))
        );
        let l = MemoryLimits::resolve(&s, None, Some(3000)).unwrap();
        assert_eq!(
            (l.limit, l.source, l.soft),
            (Some(3000), LimitSource::Cgroup, Some(2400))
        );
        let l = MemoryLimits::resolve(&s, None, None).unwrap();
        assert_eq!(
            (l.limit, l.source, l.hard),
            (Some(1000), LimitSource::Spec, Some(900))
        );
    }

    #[test]
    fn percentages_without_any_limit_are_an_error_and_bytes_are_not() {
        let err = MemoryLimits::resolve(&spec("80%", "90%", None), None, None).unwrap_err();
        assert!(
            matches!(err, MemoryError::Thresholds { limit: None, .. }),
            "{err}"
        );
        let l = MemoryLimits::resolve(&spec("100Mi", "200Mi", None), None, None).unwrap();
        assert_eq!(
            (l.source, l.soft, l.hard),
            (LimitSource::Unknown, Some(100 << 20), Some(200 << 20))
        );
    }

    /// In a pod the operator sets `MIGRATE_MEMORY_LIMIT_BYTES`: the limit's source must not
    /// turn the worker's figure into RSS while the operator reads the working set.
    #[test]
    fn the_own_cgroups_working_set_is_compared_wherever_the_limit_comes_from() {
        let own = CgroupMemory {
            current: 900,
            max: Some(1000),
            inactive_file: 300,
            own: true,
        };
        for source in [
            LimitSource::Override,
            LimitSource::Cgroup,
            LimitSource::Spec,
            LimitSource::Unknown,
        ] {
            let limits = MemoryLimits {
                limit: Some(1000),
                source,
                soft: Some(550),
                hard: Some(900),
            };
            let state = assess(500, Some(&own), &limits);
            assert_eq!(
                (state.usage, state.source, state.level),
                (600, FigureSource::CgroupWorkingSet, Level::Soft),
                "limit from {source:?}"
            );
        }
        let shared = CgroupMemory { own: false, ..own };
        let limits = MemoryLimits {
            limit: Some(1000),
            source: LimitSource::Override,
            soft: Some(550),
            hard: Some(900),
        };
        let state = assess(500, Some(&shared), &limits);
        assert_eq!((state.usage, state.source), (500, FigureSource::Rss));
    }

    #[test]
    fn a_reading_reports_its_usage_thresholds_and_level() {
        let limits = MemoryLimits {
            limit: Some(1000),
            source: LimitSource::Cgroup,
            soft: Some(800),
            hard: Some(920),
        };
        let cgroup = CgroupMemory {
            current: 990,
            max: Some(1000),
            inactive_file: 100,
            own: true,
        };
        let state = assess(100, Some(&cgroup), &limits);
        assert_eq!(
            state,
            MemoryState {
                rss: 100,
                cgroup_current: Some(990),
                cgroup_working_set: Some(890),
                usage: 890,
                source: FigureSource::CgroupWorkingSet,
                limit: Some(1000),
                soft: Some(800),
                hard: Some(920),
                level: Level::Soft,
            }
        );
    }

    #[tokio::test]
    async fn the_watch_publishes_readings_until_shutdown() {
        let limits = MemoryLimits {
            limit: None,
            source: LimitSource::Unknown,
            soft: Some(1),
            hard: Some(u64::MAX),
        };
        let watch = MemoryWatch::new(limits, Duration::from_millis(20));
        let mut rx = watch.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch.run(shutdown.clone()));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().level, Level::Soft);
        rx.changed().await.unwrap();
        assert!(rx.borrow().rss > 0);
        shutdown.cancel();
        task.await.unwrap();
        assert!(
            rx.changed().await.is_err(),
            "the channel closes when the watch stops"
        );
    }

    #[test]
    fn interval_comes_from_the_spec() {
        // Thresholds of a few MiB (the smallest a spec may give) resolve against any limit the
        // host may have.
        let w = MemoryWatch::from_spec(&spec("1Mi", "2Mi", None)).unwrap();
        assert_eq!(w.interval, Duration::from_millis(250));
        assert_eq!(
            (w.limits().soft, w.limits().hard),
            (Some(1 << 20), Some(2 << 20))
        );
    }
}
