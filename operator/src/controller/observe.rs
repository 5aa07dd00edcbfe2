//! What the controller observes of a job: its pods, its Redis queue and its workers' memory.
//!
//! - The queue ([`QueueBackend`]): length, each worker's processing list (in-flight ids: the
//!   testbed has no kubelet, so in-flight is always read from Redis, never from a pod), the
//!   workers that ever took work, and the outcome totals. Behind a trait so that controller
//!   tests run against a fake.
//! - Pods: mapped to the policy's [`Worker`]s by pure functions; an ended pod's terminated
//!   container state (exit code, `OOMKilled`) and the pod's `Evicted` reason become its
//!   [`ExitStatus`].
//! - Memory: each ready pod's `/metrics` is scraped at `http://<podIP>:<metricsPort>/metrics`
//!   every check interval; a pod that does not answer keeps its last reading, which ages into
//!   a stale one that the policy reports and never acts on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use migrate_contract::Keys;
use migrate_contract::metrics::{self as names, parse_text, retained_bytes};
use migrate_contract::queue::{QueueError, backlog, redact_url, requeue_worker};
use migrate_crds::SecretKeyRef;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use super::build::{REAPED, STOP_REASON};
use crate::policy::{Backlog, ExitStatus, MemoryReading, RestartReason, Worker, WorkerState};

/// Most Redis connections kept open at once (one per distinct Redis URL).
const MAX_CONNECTIONS: usize = 64;
/// How long connecting to Redis or one command may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an observation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The Secret holding the Redis URL does not exist.
    #[error("secret {namespace}/{name} does not exist")]
    SecretMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key, or the value is not UTF-8.
    #[error("secret {namespace}/{name} has no UTF-8 key {key:?}")]
    SecretKeyMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key looked for.
        key: String,
    },
    /// Reading the Secret failed.
    #[error("cannot read secret {namespace}/{name}")]
    SecretRead {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The `metrics.k8s.io` API could not be listed.
    #[error(
        "cannot list PodMetrics (metrics.k8s.io/v1beta1): is metrics-server installed (kubectl top pod)?"
    )]
    PodMetrics(#[source] kube::Error),
    /// The URL is not a Redis URL.
    #[error("the Redis URL in the secret does not parse")]
    RedisUrl(#[source] redis::RedisError),
    /// Connecting to Redis failed.
    #[error("cannot connect to Redis at {url}")]
    RedisConnect {
        /// The URL, password removed.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A queue command failed.
    #[error("queue {queue} could not be read or written")]
    Queue {
        /// The queue key.
        queue: String,
        /// The queue contract's error.
        #[source]
        source: QueueError,
    },
    /// A Redis command failed.
    #[error("redis command {command} on {key} failed")]
    Redis {
        /// The command.
        command: &'static str,
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A worker's `/metrics` could not be read.
    #[error("cannot scrape {url}")]
    Scrape {
        /// The URL.
        url: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
}

impl ObserveError {
    /// A short stable name, used as the Degraded condition's reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretMissing { .. } => "RedisSecretMissing",
            Self::SecretKeyMissing { .. } | Self::RedisUrl(_) => "RedisSecretInvalid",
            Self::SecretRead { .. } => "RedisSecretUnreadable",
            Self::RedisConnect { .. }
            | Self::Queue { .. }
            | Self::Redis { .. }
            | Self::Timeout(_) => "RedisUnreachable",
            Self::Scrape { .. } => "MetricsUnreachable",
            Self::PodMetrics(_) => "MetricsUnavailable",
        }
    }
}

/// The queue as one round of observation saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Queued ids and ids in every registered worker's processing list.
    pub backlog: Backlog,
    /// Ids in the processing list of each worker asked about.
    pub in_flight: BTreeMap<String, u64>,
    /// Members of `{q}:workers`: every worker that took work and was not requeued since.
    pub holders: Vec<String>,
    /// `{q}:stats`: outcome totals (`indexed`, `filtered`, `skipped`, `dead`, `retried`).
    pub stats: BTreeMap<String, i64>,
}

/// Reads and requeues a job's Redis queue.
pub trait QueueBackend: Send + Sync {
    /// The queue `queue` at `url`, with the in-flight ids of each of `workers`.
    fn view<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        workers: &'a [String],
    ) -> BoxFuture<'a, Result<QueueView, ObserveError>>;

    /// Puts `worker`'s processing list back on the queue (idempotent); returns the ids moved.
    fn requeue<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<u64, ObserveError>>;
}

/// [`QueueBackend`] on real Redis servers, one cached connection per URL.
#[derive(Default)]
pub struct RedisQueues {
    connections: Mutex<HashMap<String, ConnectionManager>>,
}

impl std::fmt::Debug for RedisQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueues").finish_non_exhaustive()
    }
}

impl RedisQueues {
    async fn connection(&self, url: &str) -> Result<ConnectionManager, ObserveError> {
        let mut cache = self.connections.lock().await;
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(ObserveError::RedisUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 2))?
        .map_err(|source| ObserveError::RedisConnect {
            url: redact_url(url),
            source,
        })?;
        if cache.len() >= MAX_CONNECTIONS {
            cache.clear();
        }
        cache.insert(url.to_owned(), conn.clone());
        Ok(conn)
    }

    async fn view_inner(
        &self,
        url: &str,
        queue: &str,
        workers: &[String],
    ) -> Result<QueueView, ObserveError> {
        let mut conn = self.connection(url).await?;
        let totals = backlog(&mut conn, queue)
            .await
            .map_err(|source| ObserveError::Queue {
                queue: queue.to_owned(),
                source,
            })?;
        let keys = Keys::new(queue, "");
        let redis_err = |command: &'static str| {
            let key = queue.to_owned();
            move |source| ObserveError::Redis {
                command,
                key,
                source,
            }
        };
        let (holders, stats): (Vec<String>, BTreeMap<String, i64>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(&keys.workers)
            .cmd("HGETALL")
            .arg(&keys.stats)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("SMEMBERS/HGETALL"))?;
        let lengths: Vec<u64> = if workers.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for w in workers {
                pipe.cmd("LLEN").arg(Keys::processing_of(queue, w));
            }
            pipe.query_async(&mut conn)
                .await
                .map_err(redis_err("LLEN"))?
        };
        let in_flight = workers.iter().cloned().zip(lengths).collect();
        Ok(QueueView {
            backlog: totals,
            in_flight,
            holders,
            stats,
        })
    }
}

impl QueueBackend for RedisQueues {
    fn view<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        workers: &'a [String],
    ) -> BoxFuture<'a, Result<QueueView, ObserveError>> {
        Box::pin(async move {
            tokio::time::timeout(REDIS_TIMEOUT * 3, self.view_inner(url, queue, workers))
                .await
                .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 3))?
        })
    }

    fn requeue<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<u64, ObserveError>> {
        Box::pin(async move {
            let mut conn = self.connection(url).await?;
            tokio::time::timeout(REDIS_TIMEOUT * 2, requeue_worker(&mut conn, queue, worker))
                .await
                .map_err(|_| ObserveError::Timeout(REDIS_TIMEOUT * 2))?
                .map_err(|source| ObserveError::Queue {
                    queue: queue.to_owned(),
                    source,
                })
        })
    }
}

/// The Redis URL, and the resource version of the Secret it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSecret {
    /// The URL under the key the spec names.
    pub url: String,
    /// The Secret's resource version (a change of it rolls the workers).
    pub version: String,
}

/// Reads the Redis URL from the Secret key the spec names.
///
/// # Errors
/// [`ObserveError::SecretMissing`], [`ObserveError::SecretKeyMissing`] or
/// [`ObserveError::SecretRead`].
pub async fn redis_url(
    client: &Client,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<RedisSecret, ObserveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(|source| ObserveError::SecretRead {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
            source,
        })?;
    let Some(found) = found else {
        return Err(ObserveError::SecretMissing {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
        });
    };
    let url = found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ObserveError::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: secret.name.clone(),
            key: secret.key.clone(),
        })?;
    Ok(RedisSecret {
        url,
        version: found.metadata.resource_version.unwrap_or_default(),
    })
}

/// The resource version of each named Secret (empty for one that does not exist), read as
/// metadata only: the operator never holds the MySQL or search credentials. Names already in
/// `known` (read earlier this round) are not asked for again.
///
/// # Errors
/// [`ObserveError::SecretRead`] when one cannot be read (the caller then knows no versions,
/// and rolls nothing for them).
pub async fn secret_versions(
    client: &Client,
    namespace: &str,
    names: &std::collections::BTreeSet<String>,
    known: super::build::SecretVersions,
) -> Result<super::build::SecretVersions, ObserveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut versions = known;
    for name in names {
        if versions.contains_key(name) {
            continue;
        }
        let version = match api.get_metadata(name).await {
            Ok(meta) => meta.metadata.resource_version.unwrap_or_default(),
            Err(kube::Error::Api(status)) if status.code == 404 => String::new(),
            Err(source) => {
                return Err(ObserveError::SecretRead {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                    source,
                });
            }
        };
        versions.insert(name.clone(), version);
    }
    Ok(versions)
}

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

/// Lists the job's pods' metrics from the `metrics.k8s.io` API (by the job's label), keyed by
/// pod name. A pod whose entry lacks the container, a parsable memory usage or a timestamp is
/// left out: it has no reading, and ages into a stale one.
///
/// # Errors
/// [`ObserveError::PodMetrics`] when the API cannot be listed (not served: no
/// metrics-server; or forbidden).
pub async fn pod_metrics(
    client: &Client,
    namespace: &str,
    job: &str,
    container: &str,
) -> Result<HashMap<String, PodMemory>, ObserveError> {
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &pod_metrics_resource());
    let selector = format!("{}={job}", super::build::JOB_LABEL);
    let list = api
        .list(&kube::api::ListParams::default().labels(&selector))
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
    /// The larger of RSS and cgroup usage, in bytes.
    pub usage_bytes: u64,
    /// The memory limit the worker reports, when it knows one.
    pub limit_bytes: Option<u64>,
    /// Tasks it finished.
    pub tasks_done: u64,
    /// Its own count of tasks in flight.
    pub in_flight: u64,
    /// Retained bytes per pipeline stage (signed: see
    /// [`retained_bytes`](migrate_contract::metrics::retained_bytes)).
    pub retained: BTreeMap<String, i64>,
    /// When it was read (our monotonic clock).
    pub at: Instant,
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
    let rss = gauge(&values, names::RESIDENT_MEMORY_BYTES).unwrap_or(0);
    let limit = gauge(&values, names::CGROUP_LIMIT_BYTES).filter(|l| *l > 0);
    // The cgroup's working set, as the worker compares it (and as the kubelet and the OOM
    // killer see it: reclaimable page cache is left out); `memory.current` from a worker that
    // does not export the working set. A container's own cgroup is never charged more than
    // its limit (the kernel reclaims or OOM-kills first): a larger `memory.current` is a
    // cgroup shared with other processes (a worker outside a pod cgroup of its own), not this
    // worker's memory, and neither figure of it is used.
    let current = gauge(&values, names::CGROUP_MEMORY_BYTES);
    let shared = current.is_some_and(|c| limit.is_some_and(|l| c > l));
    let cgroup = gauge(&values, names::CGROUP_WORKING_SET_BYTES)
        .or(current)
        .filter(|c| !shared && limit.is_none_or(|l| *c <= l))
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
        usage_bytes: rss.max(cgroup),
        limit_bytes: limit,
        tasks_done,
        in_flight: gauge(&values, names::IN_FLIGHT).unwrap_or(0),
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

/// Whether the pod's Ready condition is True.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP, when it has one.
#[must_use]
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The reason the operator stopped this pod for, if it did.
#[must_use]
pub fn stop_reason(pod: &Pod) -> Option<RestartReason> {
    annotation(pod, STOP_REASON).and_then(RestartReason::from_name)
}

/// Whether this pod's end was already counted (its reap was recorded on it).
#[must_use]
pub fn already_reaped(pod: &Pod) -> bool {
    annotation(pod, REAPED).is_some()
}

/// The scheduler's message when `pod` cannot be placed on any node (its `PodScheduled`
/// condition is False with reason `Unschedulable`), e.g. `0/1 nodes are available: 1
/// Insufficient memory.`
#[must_use]
pub fn unschedulable(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

/// How an ended pod ended, or `None` while it runs (phase other than Succeeded/Failed).
#[must_use]
pub fn exit_status(pod: &Pod) -> Option<ExitStatus> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Succeeded" && phase != "Failed" {
        return None;
    }
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.name == super::build::CONTAINER)
                .or_else(|| cs.first())
        })
        .and_then(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
    let evicted = status.reason.as_deref() == Some("Evicted");
    Some(match terminated {
        Some(t) => ExitStatus {
            code: Some(t.exit_code),
            signal: t.signal,
            oom_killed: t.reason.as_deref() == Some("OOMKilled"),
            evicted,
        },
        None => ExitStatus {
            // A pod that succeeded without a container status still ended normally.
            code: (phase == "Succeeded").then_some(0),
            signal: None,
            oom_killed: false,
            evicted,
        },
    })
}

/// The policy's view of one pod; `template_hash` is the job's current
/// [`build::template_hash`](super::build::template_hash) (empty: unknown, nothing is outdated).
#[must_use]
pub fn to_worker(
    pod: &Pod,
    template_hash: &str,
    in_flight: u64,
    reading: Option<&Scraped>,
    wall_now: Timestamp,
    now: Instant,
) -> Worker {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let asked = stop_reason(pod);
    let state = if let Some(status) = exit_status(pod) {
        WorkerState::Exited { status, asked }
    } else if pod.metadata.deletion_timestamp.is_some() {
        WorkerState::Draining(asked.unwrap_or(RestartReason::Evicted))
    } else if is_ready(pod) {
        WorkerState::Running
    } else {
        WorkerState::Starting
    };
    let age = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(wall_now.duration_since(t.0)).ok())
        .unwrap_or_default();
    Worker {
        name,
        state,
        age,
        ready: is_ready(pod),
        in_flight,
        tasks_done: reading.map_or(0, |r| r.tasks_done),
        memory: reading.map(|r| MemoryReading {
            usage_bytes: r.usage_bytes,
            limit_bytes: r.limit_bytes,
            age: now.saturating_duration_since(r.at),
        }),
        outdated: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::build::TEMPLATE_HASH))
            .is_some_and(|h| !template_hash.is_empty() && h != template_hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

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

    /// The scheduler's message is taken from PodScheduled=False/Unschedulable only: a pod merely
    /// not yet scheduled, or scheduled, is no problem.
    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_message() {
        let with = |status: &str, reason: &str| {
            pod(json!({
                "metadata": {"name": "w-1"},
                "status": {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": status, "reason": reason,
                    "message": "0/1 nodes are available: 1 Insufficient memory."
                }]}
            }))
        };
        assert_eq!(
            unschedulable(&with("False", "Unschedulable")).as_deref(),
            Some("0/1 nodes are available: 1 Insufficient memory.")
        );
        assert_eq!(unschedulable(&with("False", "SchedulingGated")), None);
        assert_eq!(unschedulable(&with("True", "")), None);
        assert_eq!(
            unschedulable(&pod(json!({"metadata": {"name": "w-2"}}))),
            None
        );
    }

    #[test]
    fn an_oom_killed_container_is_read_from_its_terminated_state() {
        let p = pod(json!({
            "metadata": {"name": "w-1"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        }));
        let status = exit_status(&p).unwrap();
        assert!(status.oom_killed);
        assert_eq!(status.code, Some(137));
        assert_eq!(
            crate::policy::classify_exit(&status, None),
            Some(RestartReason::OomKilled)
        );
    }

    #[test]
    fn an_evicted_pod_without_a_container_state_is_evicted() {
        let p = pod(
            json!({"metadata": {"name": "w"}, "status": {"phase": "Failed", "reason": "Evicted"}}),
        );
        let status = exit_status(&p).unwrap();
        assert!(status.evicted);
        assert_eq!(
            crate::policy::classify_exit(&status, None),
            Some(RestartReason::Evicted)
        );
    }

    #[test]
    fn a_running_pod_has_no_exit_status_and_a_deleted_one_drains_for_its_recorded_reason() {
        let running = pod(json!({"metadata": {"name": "w"}, "status": {"phase": "Running"}}));
        assert_eq!(exit_status(&running), None);
        let deleting = pod(json!({"metadata": {
            "name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {STOP_REASON: "scaled-down"}
        }}));
        let w = to_worker(&deleting, "", 2, None, Timestamp::now(), Instant::now());
        assert_eq!(w.state, WorkerState::Draining(RestartReason::ScaledDown));
        assert_eq!(w.in_flight, 2);
    }

    #[test]
    fn a_scrape_reads_the_larger_memory_figure_tasks_and_retained_bytes() {
        let text = "# TYPE x gauge\n\
            migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 250\n\
            migrate_cgroup_memory_limit_bytes 1000\n\
            migrate_tasks_done 42\n\
            migrate_in_flight 3\n\
            migrate_stage_retained_bytes{stage=\"enrich\"} 77\n";
        let s = parse_scrape(text, Instant::now());
        assert_eq!(s.usage_bytes, 250);
        assert_eq!(s.limit_bytes, Some(1000));
        assert_eq!(s.tasks_done, 42);
        assert_eq!(s.in_flight, 3);
        assert_eq!(s.retained.get("enrich"), Some(&77));
    }

    /// The working set, when the worker exports it, is the cgroup figure compared: page cache
    /// the kernel would reclaim does not make a worker restart.
    #[test]
    fn the_cgroup_working_set_is_compared_rather_than_memory_current() {
        let text = "migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 900\n\
            migrate_cgroup_memory_working_set_bytes 300\n\
            migrate_cgroup_memory_limit_bytes 1000\n";
        assert_eq!(parse_scrape(text, Instant::now()).usage_bytes, 300);
        let rss_larger = "migrate_process_resident_memory_bytes 400\n\
            migrate_cgroup_memory_bytes 900\n\
            migrate_cgroup_memory_working_set_bytes 300\n";
        assert_eq!(parse_scrape(rss_larger, Instant::now()).usage_bytes, 400);
    }

    #[test]
    fn a_cgroup_charge_above_the_workers_limit_is_a_shared_cgroup_and_ignored() {
        let text = "migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 4000000000\n\
            migrate_cgroup_memory_limit_bytes 1000\n";
        assert_eq!(parse_scrape(text, Instant::now()).usage_bytes, 100);
        // Its working set may be below the limit (mostly page cache): still not this worker's.
        let with_working_set = "migrate_process_resident_memory_bytes 100\n\
            migrate_cgroup_memory_bytes 4000000000\n\
            migrate_cgroup_memory_working_set_bytes 500\n\
            migrate_cgroup_memory_limit_bytes 1000\n";
        assert_eq!(
            parse_scrape(with_working_set, Instant::now()).usage_bytes,
            100
        );
    }
}
