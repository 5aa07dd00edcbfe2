//! Memory readings: each ready pod's `/metrics`, scraped at
//! `http://<podIP>:<metricsPort>/metrics` every check interval, and (with `memory.source:
//! PodMetrics`) the `metrics.k8s.io` API. A pod that does not answer keeps its last reading,
//! which ages into a stale one that the policy reports and never acts on.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use migrate_contract::memory::FigureSource;
use migrate_contract::metrics::{self as names, parse_text, retained_bytes};

use super::ObserveError;
use crate::controller::build;
use crate::leak::RetainedSample;

/// The `metrics.k8s.io` resource metrics-server serves for pods (`kubectl top pod` reads it).
#[must_use]
pub fn pod_metrics_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "metrics.k8s.io".to_owned(),
        version: "v1beta1".to_owned(),
        api_version: "metrics.k8s.io/v1beta1".to_owned(),
        kind: "PodMetrics".to_owned(),
        plural: "pods".to_owned(),
    }
}

/// One pod's memory as the `metrics.k8s.io` API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMemory {
    /// The worker container's working set, in bytes.
    pub usage_bytes: u64,
    /// When the usage was measured (the end of its window).
    pub timestamp: Timestamp,
}

/// Lists the metrics of every job's pods in `namespace` from the `metrics.k8s.io` API (by the
/// presence of the job label: one list serves every job of the namespace), keyed by pod name. A pod whose entry lacks the container, a parsable memory usage or a timestamp is
/// left out: it has no reading, and ages into a stale one.
///
/// # Errors
/// [`ObserveError::PodMetrics`] when the API cannot be listed (not served: no
/// metrics-server; or forbidden).
pub async fn pod_metrics(
    client: &Client,
    namespace: &str,
    container: &str,
) -> Result<HashMap<String, PodMemory>, ObserveError> {
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &pod_metrics_resource());
    let list = api
        .list(&kube::api::ListParams::default().labels(build::JOB_LABEL))
        .await
        .map_err(ObserveError::PodMetrics)?;
    Ok(list
        .items
        .iter()
        .filter_map(|item| {
            let name = item.metadata.name.clone()?;
            parse_pod_memory(&item.data, container).map(|m| (name, m))
        })
        .collect())
}

/// Reads one `PodMetrics` object's body: `timestamp` and the named container's
/// `usage.memory` (a Kubernetes quantity such as `123456Ki`).
#[must_use]
pub fn parse_pod_memory(data: &serde_json::Value, container: &str) -> Option<PodMemory> {
    let timestamp = data.get("timestamp")?.as_str()?.parse::<Timestamp>().ok()?;
    let usage = data
        .get("containers")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(serde_json::Value::as_str) == Some(container))?
        .get("usage")?
        .get("memory")?
        .as_str()?;
    Some(PodMemory {
        usage_bytes: migrate_crds::memory::parse_quantity_bytes(usage)?,
        timestamp,
    })
}

/// One reading of a worker's `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scraped {
    /// The memory figure the worker compares with its thresholds, in bytes
    /// (`migrate_memory_usage_bytes`; the working set when the source is `PodMetrics`).
    pub usage_bytes: u64,
    /// Which figure `usage_bytes` is.
    pub source: FigureSource,
    /// The memory limit the worker reports, when it knows one.
    pub limit_bytes: Option<u64>,
    /// Tasks it finished.
    pub tasks_done: u64,
    /// Its own count of tasks in flight.
    pub in_flight: u64,
    /// It crossed its soft line and asks for a restart (`migrate_contract::restart`).
    pub restart_requested: bool,
    /// Retained bytes per pipeline stage (signed: see
    /// [`retained_bytes`](migrate_contract::metrics::retained_bytes)).
    pub retained: BTreeMap<String, i64>,
    /// When it was read (our monotonic clock).
    pub at: Instant,
}

impl Scraped {
    /// The per-stage retained bytes of this reading, as a sample to measure a leak's growth
    /// from.
    #[must_use]
    pub fn retained_sample(&self) -> RetainedSample {
        RetainedSample {
            tasks_done: self.tasks_done,
            // Signed, as the local supervisor keeps it: a stage below zero (memory it freed that
            // another stage allocated) is a real reading, and only the growth between two
            // samples is used.
            retained: self.retained.clone(),
        }
    }
}

fn gauge(values: &HashMap<String, f64>, key: &str) -> Option<u64> {
    values
        .get(key)
        .filter(|v| v.is_finite() && **v >= 0.0)
        .map(|v| *v as u64)
}

/// Reads a worker's metrics text.
#[must_use]
pub fn parse_scrape(text: &str, at: Instant) -> Scraped {
    let values = parse_text(text);
    let limit = gauge(&values, names::CGROUP_LIMIT_BYTES).filter(|l| *l > 0);
    // The figure the worker itself compares (one function computes it on both sides: see
    // `migrate_contract::memory::memory_figure`). A worker that does not export it (an older
    // version) is read on its RSS.
    let source = FigureSource::ALL
        .into_iter()
        .find(|s| {
            gauge(
                &values,
                &format!(
                    "{}{{source=\"{}\"}}",
                    names::MEMORY_USAGE_SOURCE,
                    s.as_str()
                ),
            ) == Some(1)
        })
        .unwrap_or(FigureSource::Rss);
    let usage_bytes = gauge(&values, names::MEMORY_USAGE_BYTES)
        .or_else(|| gauge(&values, names::RESIDENT_MEMORY_BYTES))
        .unwrap_or(0);
    let tasks_done = gauge(&values, names::TASKS_DONE).unwrap_or_else(|| {
        values
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(names::TASKS_TOTAL)
                    .is_some_and(|labels| labels.starts_with('{'))
                    && !k.contains("\"retried\"")
            })
            .map(|(_, v)| {
                if v.is_finite() && *v > 0.0 {
                    *v as u64
                } else {
                    0
                }
            })
            .sum()
    });
    Scraped {
        usage_bytes,
        source,
        limit_bytes: limit,
        tasks_done,
        in_flight: gauge(&values, names::IN_FLIGHT).unwrap_or(0),
        restart_requested: names::restart_requested(&values),
        retained: retained_bytes(&values),
        at,
    }
}

/// Scrapes `http://<ip>:<port>/metrics`.
///
/// # Errors
/// [`ObserveError::Scrape`] when the worker does not answer with a success.
pub async fn scrape(http: &reqwest::Client, ip: &str, port: u16) -> Result<Scraped, ObserveError> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("http://{host}:{port}/metrics");
    let fail = |source| ObserveError::Scrape {
        url: url.clone(),
        source,
    };
    let text = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?
        .text()
        .await
        .map_err(fail)?;
    Ok(parse_scrape(&text, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A PodMetrics body as metrics-server writes it: the named container's working set and the
    /// window's end; anything missing or unparsable is no reading.
    #[test]
    fn pod_metrics_bodies_give_the_worker_container_usage_and_time() {
        let body = json!({
            "timestamp": "2026-11-27T04:00:00Z",
            "window": "15s",
            "containers": [
                {"name": "sidecar", "usage": {"cpu": "1m", "memory": "1Mi"}},
                {"name": "worker", "usage": {"cpu": "250m", "memory": "204800Ki"}}
            ]
        });
        let m = parse_pod_memory(&body, "worker").unwrap();
        assert_eq!(m.usage_bytes, 204_800 * 1024);
        assert_eq!(m.timestamp.to_string(), "2026-11-27T04:00:00Z");
        assert_eq!(parse_pod_memory(&body, "other"), None);
        let mut no_time = body.clone();
        no_time["timestamp"] = json!("yesterday");
        assert_eq!(parse_pod_memory(&no_time, "worker"), None);
        let mut bad_memory = body;
        bad_memory["containers"][1]["usage"]["memory"] = json!("lots");
        assert_eq!(parse_pod_memory(&bad_memory, "worker"), None);
    }

    #[test]
    fn a_scrape_reads_the_workers_memory_figure_tasks_and_retained_bytes() {
        let text = "# TYPE x gauge\n\
            migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 900\n\
            migrate_cgroup_memory_working_set_bytes 250\n\
            migrate_memory_usage_bytes 250\n\
            migrate_memory_usage_source{source=\"cgroupWorkingSet\"} 1\n\
            migrate_memory_usage_source{source=\"rss\"} 0\n\
            migrate_cgroup_memory_limit_bytes 1000\n\
            migrate_tasks_done 42\n\
            migrate_in_flight 3\n\
            migrate_stage_retained_bytes{stage=\"enrich\"} 77\n";
        let s = parse_scrape(text, Instant::now());
        assert_eq!(s.usage_bytes, 250);
        assert_eq!(s.source, FigureSource::CgroupWorkingSet);
        assert_eq!(s.limit_bytes, Some(1000));
        assert_eq!(s.tasks_done, 42);
        assert_eq!(s.in_flight, 3);
        assert_eq!(s.retained.get("enrich"), Some(&77));
    }

    /// The operator compares the figure the worker compares, never a larger one of its own
    /// making: a worker on RSS (sharing its cgroup) is read on RSS, even with a cgroup working
    /// set above it.
    #[test]
    fn the_operator_takes_the_workers_figure_and_source_as_they_are() {
        let text = "migrate_process_resident_memory_bytes 400\n\
            migrate_cgroup_memory_bytes 900\n\
            migrate_cgroup_memory_working_set_bytes 800\n\
            migrate_memory_usage_bytes 400\n\
            migrate_memory_usage_source{source=\"cgroupWorkingSet\"} 0\n\
            migrate_memory_usage_source{source=\"rss\"} 1\n\
            migrate_cgroup_memory_limit_bytes 1000\n";
        let s = parse_scrape(text, Instant::now());
        assert_eq!((s.usage_bytes, s.source), (400, FigureSource::Rss));
    }

    #[test]
    fn a_worker_without_the_figure_is_read_on_its_rss() {
        let text = "migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 4000000000\n\
            migrate_cgroup_memory_working_set_bytes 500\n\
            migrate_cgroup_memory_limit_bytes 1000\n";
        let s = parse_scrape(text, Instant::now());
        assert_eq!((s.usage_bytes, s.source), (100, FigureSource::Rss));
    }
}
