//! The worker's Prometheus metrics (names in `docs/architecture.md`, "Metric names") and their
//! OpenMetrics text encoding. The parser of that text, [`parse_text`], is the supervisors'
//! and lives in `migrate-contract`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use migrate_contract::metrics::parse_text;

use migrate_contract::keys::stat;

use crate::memory::{FigureSource, MemoryState, read_cgroup, read_figure, read_rss, retained_all};
use crate::stage::Stage;

/// The `Content-Type` of [`WorkerMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The task outcomes counted in `migrate_tasks_total{outcome}`; all are exposed from the start.
pub const OUTCOMES: [&str; 5] = [
    stat::INDEXED,
    stat::FILTERED,
    stat::SKIPPED,
    stat::RETRIED,
    stat::DEAD,
];

/// Upper bounds of `migrate_stage_seconds`: 0.5 ms to 10 s.
const STAGE_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of `migrate_bulk_docs`: documents per bulk request.
const BULK_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// What can send a bulk request: the `trigger` label of `migrate_bulk_requests_total`.
pub const BULK_TRIGGERS: [&str; 6] = ["full", "linger", "interval", "idle", "stop", "alone"];

type Label = [(&'static str, &'static str); 1];
type OutcomeLabel = [(&'static str, String); 1];

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

fn stage_label(stage: Stage) -> Label {
    [("stage", stage.as_str())]
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The worker's metrics and the registry that exposes them.
///
/// Shared by `Arc`; every method takes `&self` (the metrics are atomics). Gauges of unknown
/// values (no cgroup, no limit) read 0.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    tasks: Family<OutcomeLabel, Counter>,
    tasks_done: Gauge,
    stage_seconds: Family<Label, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    bulk_docs: Histogram,
    bulk_requests: Family<Label, Counter>,
    resident_memory: Gauge,
    cgroup_memory: Gauge,
    cgroup_working_set: Gauge,
    cgroup_limit: Gauge,
    soft_limit: Gauge,
    usage: Gauge,
    usage_source: Family<Label, Gauge>,
    restart_requested: Gauge,
    retained: Family<Label, Gauge>,
    queue_lag: Gauge<f64, AtomicU64>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Creates the metrics and registers them in a registry of their own; every label value
    /// (outcome, stage) is present from the start.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<OutcomeLabel, Counter>::default();
        let tasks_done = Gauge::default();
        let stage_seconds =
            Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(stage_histogram);
        let in_flight = Gauge::default();
        let bulk_docs = Histogram::new(BULK_BUCKETS);
        let bulk_requests = Family::<Label, Counter>::default();
        let resident_memory = Gauge::default();
        let cgroup_memory = Gauge::default();
        let cgroup_working_set = Gauge::default();
        let cgroup_limit = Gauge::default();
        let soft_limit = Gauge::default();
        let usage = Gauge::default();
        let usage_source = Family::<Label, Gauge>::default();
        let restart_requested = Gauge::default();
        let retained = Family::<Label, Gauge>::default();
        let queue_lag = Gauge::<f64, AtomicU64>::default();

        // Counters get their `_total` suffix from the encoder.
        registry.register("migrate_tasks", "Tasks finished, by outcome", tasks.clone());
        registry.register(
            "migrate_tasks_done",
            "Tasks finished by this process (any outcome); the supervisor recycles on it",
            tasks_done.clone(),
        );
        registry.register(
            "migrate_stage_seconds",
            "Time spent in each stage per task",
            stage_seconds.clone(),
        );
        registry.register(
            "migrate_in_flight",
            "Tasks taken and not yet acknowledged",
            in_flight.clone(),
        );
        registry.register(
            "migrate_bulk_docs",
            "Documents per bulk request",
            bulk_docs.clone(),
        );
        registry.register(
            "migrate_bulk_requests",
            "Bulk requests sent, by what sent them: full (batchDocs or batchBytes reached), linger (no document for batchLingerMs), interval (flushIntervalMs since the first document), idle (queue empty, no task in progress), stop (the worker stopping) or alone (a document larger than batchBytes). Many interval or linger sends mean the documents come too slowly to fill a batch",
            bulk_requests.clone(),
        );
        registry.register(
            "migrate_process_resident_memory_bytes",
            "Resident memory of the worker process",
            resident_memory.clone(),
        );
        registry.register(
            "migrate_cgroup_memory_bytes",
            "memory.current of the worker's cgroup (0 outside a memory cgroup)",
            cgroup_memory.clone(),
        );
        registry.register(
            "migrate_cgroup_memory_working_set_bytes",
            "memory.current minus the inactive page cache of the worker's cgroup: the working set the kubelet evicts on (0 outside a memory cgroup)",
            cgroup_working_set.clone(),
        );
        registry.register(
            "migrate_memory_usage_bytes",
            "The memory figure compared with the thresholds, by the worker and by its supervisor: the working set of the worker's own cgroup, or RSS where it has none of its own (see migrate_memory_usage_source)",
            usage.clone(),
        );
        registry.register(
            "migrate_memory_usage_source",
            "1 for the figure migrate_memory_usage_bytes is: cgroupWorkingSet or rss",
            usage_source.clone(),
        );
        registry.register(
            "migrate_cgroup_memory_limit_bytes",
            "The memory limit the thresholds refer to: override, cgroup memory.max or spec (0 when unknown)",
            cgroup_limit.clone(),
        );
        registry.register(
            "migrate_memory_soft_limit_bytes",
            "Usage above which the worker drains itself, or asks its supervisor for a restart when supervised (0 when unknown)",
            soft_limit.clone(),
        );
        registry.register(
            "migrate_restart_requested_timestamp_seconds",
            "Unix time at which this supervised worker crossed its soft memory line and began asking its supervisor for a restart (it keeps working until granted); 0 while it is not asking",
            restart_requested.clone(),
        );
        registry.register(
            "migrate_stage_retained_bytes",
            "Bytes allocated while a stage ran and not yet freed",
            retained.clone(),
        );
        registry.register(
            "migrate_queue_lag_seconds",
            "Age in seconds of the oldest task this worker holds (taken from the queue, not yet acknowledged, dead-lettered or put back), measured every second; 0 when it holds none. Ids carry no enqueue time, so waiting in the queue before being taken is not included",
            queue_lag.clone(),
        );

        for outcome in OUTCOMES {
            let _ = tasks.get_or_create(&[("outcome", outcome.to_owned())]);
        }
        for trigger in BULK_TRIGGERS {
            let _ = bulk_requests.get_or_create(&[("trigger", trigger)]);
        }
        for source in FigureSource::ALL {
            let _ = usage_source.get_or_create(&[("source", source.as_str())]);
        }
        for stage in Stage::ALL {
            let _ = stage_seconds.get_or_create(&stage_label(stage));
            let _ = retained.get_or_create(&stage_label(stage));
        }

        Self {
            registry,
            tasks,
            tasks_done,
            stage_seconds,
            in_flight,
            bulk_docs,
            bulk_requests,
            resident_memory,
            cgroup_memory,
            cgroup_working_set,
            cgroup_limit,
            soft_limit,
            usage,
            usage_source,
            restart_requested,
            retained,
            queue_lag,
        }
    }

    /// Counts one finished task with its outcome (one of [`OUTCOMES`]; keep the set small, it
    /// is a label) and adds it to `migrate_tasks_done`.
    pub fn task(&self, outcome: &str) {
        self.tasks
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
        self.tasks_done.inc();
    }

    /// Tasks this process ended with `outcome` (a `{q}:stats` field such as `dead`) so far.
    #[must_use]
    pub fn tasks_with(&self, outcome: &str) -> u64 {
        self.tasks
            .get_or_create(&[("outcome", outcome.to_owned())])
            .get()
    }

    /// Tasks finished by this process so far.
    #[must_use]
    pub fn tasks_done(&self) -> i64 {
        self.tasks_done.get()
    }

    /// Records the time one task spent in a stage.
    pub fn observe_stage(&self, stage: Stage, elapsed: Duration) {
        self.stage_seconds
            .get_or_create(&stage_label(stage))
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the number of tasks taken and not yet acknowledged.
    pub fn set_in_flight(&self, tasks: i64) {
        self.in_flight.set(tasks);
    }

    /// Records the size of one bulk request in documents.
    pub fn observe_bulk(&self, docs: usize) {
        self.bulk_docs.observe(docs as f64);
    }

    /// Counts one bulk request by what sent it (one of [`BULK_TRIGGERS`]).
    pub fn bulk_sent(&self, trigger: &'static str) {
        self.bulk_requests
            .get_or_create(&[("trigger", trigger)])
            .inc();
    }

    /// Sets the memory gauges from a reading of the memory watch.
    pub fn set_memory(&self, state: &MemoryState) {
        self.resident_memory.set(saturating_i64(state.rss));
        self.cgroup_memory
            .set(saturating_i64(state.cgroup_current.unwrap_or(0)));
        self.cgroup_working_set
            .set(saturating_i64(state.cgroup_working_set.unwrap_or(0)));
        self.cgroup_limit
            .set(saturating_i64(state.limit.unwrap_or(0)));
        self.soft_limit.set(saturating_i64(state.soft.unwrap_or(0)));
        self.set_usage(state.usage, state.source);
    }

    fn set_usage(&self, bytes: u64, source: FigureSource) {
        self.usage.set(saturating_i64(bytes));
        for s in FigureSource::ALL {
            self.usage_source
                .get_or_create(&[("source", s.as_str())])
                .set(i64::from(s == source));
        }
    }

    /// Says that this worker asks for a restart since `unix_seconds` (see
    /// `migrate_contract::restart`).
    pub fn request_restart(&self, unix_seconds: u64) {
        self.restart_requested
            .set(saturating_i64(unix_seconds.max(1)));
    }

    /// Reads RSS, the cgroup's usage and the memory figure now and sets their gauges (the
    /// limits stay as the last [`WorkerMetrics::set_memory`] left them). Reads a few small
    /// `/proc`/`/sys` files.
    pub fn refresh_memory(&self) {
        if let Some(figure) = read_figure() {
            self.set_usage(figure.bytes, figure.source);
        }
        if let Some(rss) = read_rss() {
            self.resident_memory.set(saturating_i64(rss));
        }
        if let Some(cgroup) = read_cgroup() {
            self.cgroup_memory.set(saturating_i64(cgroup.current));
            self.cgroup_working_set
                .set(saturating_i64(cgroup.working_set()));
        }
    }

    /// Copies the counting allocator's per-stage retained bytes into their gauges.
    pub fn refresh_retained(&self) {
        for (stage, bytes) in retained_all() {
            self.retained.get_or_create(&stage_label(stage)).set(bytes);
        }
    }

    /// Sets `migrate_queue_lag_seconds`: the age of the oldest task this worker holds (taken
    /// from the queue and not yet finished), 0 when it holds none.
    pub fn set_queue_lag(&self, seconds: f64) {
        self.queue_lag.set(seconds);
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), `# EOF` included.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if let Err(error) = encode(&mut text, &self.registry) {
            // Writing into a String cannot fail; an encoder bug would at worst truncate.
            tracing::warn!(%error, "Encoding the metrics failed.");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Level;

    /// Every worker metric named in the architecture page, as exposed.
    const DOCUMENTED: [&str; 15] = [
        "migrate_tasks_total",
        "migrate_stage_seconds",
        "migrate_in_flight",
        "migrate_bulk_docs",
        "migrate_bulk_requests_total",
        "migrate_process_resident_memory_bytes",
        "migrate_cgroup_memory_bytes",
        "migrate_cgroup_memory_working_set_bytes",
        "migrate_cgroup_memory_limit_bytes",
        "migrate_stage_retained_bytes",
        "migrate_queue_lag_seconds",
        "migrate_memory_soft_limit_bytes",
        "migrate_memory_usage_bytes",
        "migrate_memory_usage_source",
        "migrate_restart_requested_timestamp_seconds",
    ];

    fn sample_names(text: &str) -> Vec<String> {
        parse_text(text)
            .keys()
            .map(|k| k.split('{').next().unwrap_or(k).to_owned())
            .collect()
    }

    #[test]
    fn every_documented_worker_metric_is_exposed_under_its_exact_name() {
        let doc = include_str!("../../docs/architecture.md");
        let section = doc.split("## Metric names").nth(1).unwrap();
        let (_heading, body) = section.split_once('\n').unwrap();
        let worker_part = body.split("Operator:").next().unwrap();
        let documented: Vec<&str> = worker_part
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|name| name.split('{').next().unwrap())
            .filter(|name| name.starts_with("migrate_"))
            .collect();
        assert_eq!(
            documented, DOCUMENTED,
            "the architecture page changed: update this test and the metrics"
        );

        let text = WorkerMetrics::new().encode();
        let samples = sample_names(&text);
        for name in DOCUMENTED.iter().chain(&["migrate_tasks_done"]) {
            let exposed = samples.iter().any(|s| {
                s == name
                    || s.strip_prefix(name)
                        .is_some_and(|r| ["_bucket", "_sum", "_count"].contains(&r))
            });
            assert!(exposed, "{name} is not exposed:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    /// One value of a fresh scrape of `m`.
    fn get_fresh(m: &WorkerMetrics, key: &str) -> f64 {
        let v = parse_text(&m.encode());
        *v.get(key)
            .unwrap_or_else(|| panic!("{key} missing from {v:?}"))
    }

    #[test]
    fn recorded_values_come_back_through_the_parser() {
        let m = WorkerMetrics::new();
        m.task("indexed");
        m.task("indexed");
        m.task("dead");
        m.observe_stage(Stage::Source, Duration::from_millis(3));
        m.observe_stage(Stage::Source, Duration::from_secs(20));
        m.set_in_flight(7);
        m.observe_bulk(250);
        m.set_queue_lag(1.5);
        m.set_memory(&MemoryState {
            rss: 1 << 20,
            cgroup_current: Some(3 << 20),
            cgroup_working_set: Some(2 << 20),
            usage: 2 << 20,
            source: FigureSource::CgroupWorkingSet,
            limit: Some(8 << 20),
            soft: Some(6 << 20),
            hard: Some(7 << 20),
            level: Level::Ok,
        });
        let v = parse_text(&m.encode());
        let get = |k: &str| *v.get(k).unwrap_or_else(|| panic!("{k} missing from {v:?}"));
        assert_eq!(get(r#"migrate_tasks_total{outcome="indexed"}"#), 2.0);
        assert_eq!(get(r#"migrate_tasks_total{outcome="dead"}"#), 1.0);
        assert_eq!(get(r#"migrate_tasks_total{outcome="skipped"}"#), 0.0);
        assert_eq!(get("migrate_tasks_done"), 3.0);
        m.bulk_sent("linger");
        assert_eq!(
            get_fresh(&m, r#"migrate_bulk_requests_total{trigger="linger"}"#),
            1.0
        );
        assert_eq!(
            get_fresh(&m, r#"migrate_bulk_requests_total{trigger="full"}"#),
            0.0,
            "every trigger is exported from the start"
        );
        assert_eq!(m.tasks_done(), 3);
        assert_eq!(get(r#"migrate_stage_seconds_count{stage="source"}"#), 2.0);
        assert_eq!(
            get(r#"migrate_stage_seconds_bucket{le="0.005",stage="source"}"#),
            1.0
        );
        assert_eq!(
            get(r#"migrate_stage_seconds_bucket{le="10.0",stage="source"}"#),
            1.0
        );
        assert_eq!(
            get(r#"migrate_stage_seconds_bucket{le="+Inf",stage="source"}"#),
            2.0
        );
        assert_eq!(get(r#"migrate_stage_seconds_count{stage="sink"}"#), 0.0);
        assert_eq!(get("migrate_in_flight"), 7.0);
        assert_eq!(get("migrate_bulk_docs_sum"), 250.0);
        assert_eq!(get("migrate_queue_lag_seconds"), 1.5);
        assert_eq!(
            get("migrate_process_resident_memory_bytes"),
            f64::from(1 << 20)
        );
        assert_eq!(get("migrate_cgroup_memory_bytes"), f64::from(3 << 20));
        assert_eq!(
            get("migrate_cgroup_memory_working_set_bytes"),
            f64::from(2 << 20)
        );
        assert_eq!(get("migrate_cgroup_memory_limit_bytes"), f64::from(8 << 20));
        assert_eq!(get("migrate_memory_soft_limit_bytes"), f64::from(6 << 20));
        assert_eq!(get("migrate_memory_usage_bytes"), f64::from(2 << 20));
        assert_eq!(
            get(r#"migrate_memory_usage_source{source="cgroupWorkingSet"}"#),
            1.0
        );
        assert_eq!(get(r#"migrate_memory_usage_source{source="rss"}"#), 0.0);
        assert!(v.contains_key(r#"migrate_stage_retained_bytes{stage="keywords"}"#));
    }

    #[test]
    fn refreshing_memory_reads_this_process() {
        let m = WorkerMetrics::new();
        m.refresh_memory();
        m.refresh_retained();
        let v = parse_text(&m.encode());
        assert!(v["migrate_process_resident_memory_bytes"] > 0.0);
    }
}
