//! The operator's Prometheus metrics and its HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! Metric names are those of `docs/architecture.md` ("Metric names"): `migrate_reconcile_total
//! {result}`, `migrate_reconcile_seconds`, `migrate_workers{state}`, `migrate_restarts_total
//! {reason}`, `migrate_requeued_total`, `migrate_backlog` and `migrate_leak_retained_bytes
//! {stage}`. Labels stay low-cardinality: a result, a worker state, a restart reason or a stage
//! name (at most 16 distinct), never a job, pod or task id. The gauges are sums over every job
//! the operator reconciles, except the leak gauge, which holds the latest named leak per stage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::policy::RestartReason;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Worker states counted in `migrate_workers{state}`.
pub const WORKER_STATES: [&str; 4] = ["starting", "running", "draining", "exited"];

/// Results counted in `migrate_reconcile_total{result}`.
pub const RESULTS: [&str; 3] = ["ok", "invalid", "error"];

/// Upper bounds of `migrate_reconcile_seconds`: 5 ms to 30 s.
const RECONCILE_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Label = [(&'static str, &'static str); 1];

/// A label whose value comes from a worker (a stage name), not from a fixed list.
type OwnedLabel = [(&'static str, String); 1];

/// Longest stage name kept as a label value; longer names are cut, so a misbehaving worker
/// cannot grow label values without bound.
const MAX_STAGE_LABEL: usize = 32;

/// Most distinct stage names kept as label values (the worker has five stages).
const MAX_STAGES: usize = 16;

/// Why the metrics server stopped.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("metrics server on {addr} failed")]
    Serve {
        /// The address served.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What one job contributes to the summed gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobGauges {
    /// Workers per state, in the order of [`WORKER_STATES`].
    pub workers: [u64; 4],
    /// Queued plus in-flight ids.
    pub backlog: u64,
}

/// The operator's metrics and the registry that exposes them. Shared by `Arc`; every method
/// takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<Label, Counter>,
    reconcile_seconds: Histogram,
    workers: Family<Label, Gauge>,
    restarts_total: Family<Label, Counter>,
    requeued_total: Counter,
    backlog: Gauge,
    leak_retained: Family<OwnedLabel, Gauge>,
    leak_stages: Mutex<std::collections::BTreeSet<String>>,
    /// Per job (`namespace/name`), what it contributes to the gauges; bounded by the number of
    /// jobs that exist (entries are removed when a job is deleted).
    jobs: Mutex<HashMap<String, JobGauges>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics with every label value present from the start.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<Label, Counter>::default();
        let reconcile_seconds = Histogram::new(RECONCILE_BUCKETS);
        let workers = Family::<Label, Gauge>::default();
        let restarts_total = Family::<Label, Counter>::default();
        let requeued_total = Counter::default();
        let backlog = Gauge::default();
        let leak_retained = Family::<OwnedLabel, Gauge>::default();
        registry.register(
            "migrate_reconcile",
            "Reconciliations of MigrateJobs, by result",
            reconcile_total.clone(),
        );
        registry.register(
            "migrate_reconcile_seconds",
            "Time one reconciliation of a MigrateJob took",
            reconcile_seconds.clone(),
        );
        registry.register(
            "migrate_workers",
            "Worker pods of every job, by state",
            workers.clone(),
        );
        registry.register(
            "migrate_restarts",
            "Worker restarts, by reason",
            restarts_total.clone(),
        );
        registry.register(
            "migrate_requeued",
            "Ids put back on their queue because the worker holding them ended",
            requeued_total.clone(),
        );
        registry.register(
            "migrate_backlog",
            "Queued plus in-flight ids of every job",
            backlog.clone(),
        );
        registry.register(
            "migrate_leak_retained_bytes",
            "Growth of a stage's retained bytes over a worker's life, from the latest restart for memory that named the stage as leaking",
            leak_retained.clone(),
        );
        for result in RESULTS {
            let _ = reconcile_total.get_or_create(&[("result", result)]);
        }
        for state in WORKER_STATES {
            let _ = workers.get_or_create(&[("state", state)]);
        }
        for reason in RestartReason::ALL {
            let _ = restarts_total.get_or_create(&[("reason", reason.as_str())]);
        }
        Self {
            registry,
            reconcile_total,
            reconcile_seconds,
            workers,
            restarts_total,
            requeued_total,
            backlog,
            leak_retained,
            leak_stages: Mutex::new(std::collections::BTreeSet::new()),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one reconciliation with its result (one of [`RESULTS`]) and duration.
    pub fn reconciled(&self, result: &'static str, took: Duration) {
        self.reconcile_total
            .get_or_create(&[("result", result)])
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Counts one worker restart.
    pub fn restarted(&self, reason: RestartReason) {
        self.restarts_total
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts ids put back on a queue.
    pub fn requeued(&self, ids: u64) {
        self.requeued_total.inc_by(ids);
    }

    /// Records that a restart for memory named `stage` as leaking `bytes` (its retained bytes'
    /// growth over the worker's life): sets `migrate_leak_retained_bytes{stage}`.
    pub fn leak(&self, stage: &str, bytes: u64) {
        let mut name: String = stage.chars().take(MAX_STAGE_LABEL).collect();
        if let Ok(mut stages) = self.leak_stages.lock() {
            if !stages.contains(&name) && stages.len() >= MAX_STAGES {
                name = "other".to_owned();
            }
            stages.insert(name.clone());
        }
        self.leak_retained
            .get_or_create(&[("stage", name)])
            .set(saturating_i64(bytes));
    }

    /// Records what one job contributes to `migrate_workers` and `migrate_backlog`; `None`
    /// forgets the job (it was deleted).
    pub fn set_job(&self, job: &str, gauges: Option<JobGauges>) {
        let Ok(mut jobs) = self.jobs.lock() else {
            return;
        };
        match gauges {
            Some(g) => {
                jobs.insert(job.to_owned(), g);
            }
            None => {
                jobs.remove(job);
            }
        }
        let mut workers = [0u64; 4];
        let mut backlog = 0u64;
        for g in jobs.values() {
            for (sum, n) in workers.iter_mut().zip(g.workers) {
                *sum = sum.saturating_add(n);
            }
            backlog = backlog.saturating_add(g.backlog);
        }
        for (state, n) in WORKER_STATES.into_iter().zip(workers) {
            self.workers
                .get_or_create(&[("state", state)])
                .set(saturating_i64(n));
        }
        self.backlog.set(saturating_i64(backlog));
    }

    /// The metrics in the OpenMetrics text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What `/readyz` answers: ready once the operator has talked to the API server (set by the
/// leader election loop or, without it, by the controller at start).
#[derive(Debug, Default, Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the operator ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Health,
}

/// The router serving `/metrics`, `/healthz` (the process answers) and `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(serve_ready))
        .with_state(Shared { metrics, health })
}

async fn serve_metrics(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.encode(),
    )
}

async fn serve_ready(State(shared): State<Shared>) -> impl IntoResponse {
    if shared.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds `addr` and returns the bound address and the serving future.
///
/// # Errors
/// [`MetricsError::Bind`] when the address cannot be bound; the future ends with
/// [`MetricsError::Serve`] if serving fails.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
) -> Result<(SocketAddr, impl Future<Output = Result<(), MetricsError>>), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = router(metrics, health);
    let serve = async move {
        axum::serve(listener, app)
            .await
            .map_err(|source| MetricsError::Serve {
                addr: bound,
                source,
            })
    };
    Ok((bound, serve))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operator metric named in the architecture page is exposed from the start.
    #[test]
    fn every_documented_metric_is_exposed_with_its_labels() {
        let m = Metrics::new();
        m.reconciled("ok", Duration::from_millis(20));
        m.restarted(RestartReason::OomKilled);
        m.requeued(3);
        let text = m.encode();
        for needle in [
            "migrate_reconcile_total{result=\"ok\"} 1",
            "migrate_reconcile_seconds_count 1",
            "migrate_workers{state=\"running\"} 0",
            "migrate_restarts_total{reason=\"oom-killed\"} 1",
            "migrate_restarts_total{reason=\"scaled-down\"} 0",
            "migrate_requeued_total 3",
            "migrate_backlog 0",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    /// The endpoints answer over HTTP: metrics in the OpenMetrics format, liveness at once,
    /// readiness only once marked ready.
    #[tokio::test]
    async fn the_http_endpoints_serve_metrics_health_and_readiness() {
        let health = Health::default();
        let (addr, serve) = bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            health.clone(),
        )
        .await
        .unwrap();
        let server = tokio::spawn(serve);
        let get = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            let status = r.status().as_u16();
            let content_type = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, content_type, r.text().await.unwrap())
        };
        let (status, content_type, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(body.contains("migrate_reconcile_total"), "{body}");
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503);
        health.set_ready(true);
        assert_eq!(get("/readyz").await.0, 200);
        server.abort();
    }

    /// A named leak sets its stage's gauge; stage names from workers cannot grow the label set
    /// without bound.
    #[test]
    fn a_named_leak_sets_its_stage_gauge_and_stage_labels_stay_bounded() {
        let m = Metrics::new();
        m.leak("enrich", 38 << 20);
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "migrate_leak_retained_bytes{{stage=\"enrich\"}} {}",
                38u64 << 20
            )),
            "{text}"
        );
        for i in 0..40 {
            m.leak(&format!("stage{i}"), 1);
        }
        let labels = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("migrate_leak_retained_bytes{"))
            .count();
        assert_eq!(labels, MAX_STAGES + 1, "16 names plus \"other\"");
    }

    /// Gauges are sums over jobs, and a deleted job stops counting.
    #[test]
    fn gauges_sum_over_jobs_and_forget_deleted_ones() {
        let m = Metrics::new();
        m.set_job(
            "a/x",
            Some(JobGauges {
                workers: [1, 2, 0, 0],
                backlog: 10,
            }),
        );
        m.set_job(
            "b/y",
            Some(JobGauges {
                workers: [0, 3, 1, 0],
                backlog: 5,
            }),
        );
        let text = m.encode();
        assert!(
            text.contains("migrate_workers{state=\"running\"} 5"),
            "{text}"
        );
        assert!(text.contains("migrate_backlog 15"), "{text}");
        m.set_job("a/x", None);
        let text = m.encode();
        assert!(
            text.contains("migrate_workers{state=\"running\"} 3"),
            "{text}"
        );
        assert!(text.contains("migrate_backlog 5"), "{text}");
    }
}
