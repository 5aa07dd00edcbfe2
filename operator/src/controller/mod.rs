//! The Kubernetes controller: reconciles MigrateJobs into worker pods.
//!
//! Worker pods are managed directly, not through a Deployment, because the operator must choose
//! which pod stops (an idle or draining one, never a busy one while an idle one exists), start a
//! replacement before it stops one, and account for every pod's in-flight ids. The decisions are
//! taken by the pure [`crate::policy::decide`], shared with the local backend; this module only
//! observes and carries them out.
//!
//! # One reconciliation
//! 1. **Deletion**: a job being deleted has its pods deleted, then (once they are gone) every
//!    processing list requeued, its ConfigMap and PodDisruptionBudget deleted, and the
//!    `migrate-operator.io/cleanup` finalizer removed. 404 counts as success everywhere.
//! 2. **Validate** ([`validate`]): a spec the schema could not reject gets a Degraded condition
//!    and a Warning Event, then waits for an edit (`Action::await_change()`, no hot loop).
//! 3. **Children** ([`build`], [`apply`]): the pipeline ConfigMap (`pipeline.yaml`, the spec as
//!    the worker reads it) and a PodDisruptionBudget (`maxUnavailable: 1`), server-side applied
//!    once per generation.
//! 4. **Observe** ([`observe`]): the job's pods, the Redis Secret, the queue (length plus each
//!    processing list) and each ready pod's `/metrics`.
//! 5. **Decide**: `policy::decide(settings, observations, state)`.
//! 6. **Act**: ended pods are reaped (processing list requeued, exit counted once, pod
//!    deleted); new pods start *before* any is drained; drained and killed pods are annotated
//!    with their reason, then deleted with (drain) or without (kill) their grace period.
//!    Busy pods are annotated `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`, idle
//!    ones `"true"`, and `controller.kubernetes.io/pod-deletion-cost` is their in-flight count.
//! 7. **Status** ([`status`]): server-side applied with the field manager [`MANAGER`] when it
//!    changed; an Event ([`events`]) for every scale, restart, requeue and new problem.
//!
//! # Scaling
//! Desired workers = `spec.replicas` when it is set (by `kubectl scale`, an HPA or KEDA through
//! the scale subresource), else `clamp(ceil(backlog / workers.targetBacklogPerWorker),
//! workers.minReplicas, workers.maxReplicas)`, where backlog = queue length + ids in flight.
//! Scale-up is immediate. A backlog-driven scale-down waits for
//! `workers.scaleDownStabilizationSeconds` of lower demand and stops idle workers first; a scale
//! -down asked through `spec.replicas` is immediate (the caller already decided). Remove
//! `spec.replicas` to hand control back to the backlog.
//!
//! # Counting exactly once
//! A pod's end is counted under its restart reason once: the operator records its decision on
//! the pod (`migrate-operator.io/stop-reason`, or `migrate-operator.io/reaped` for a pod that
//! ended on its own) *before* deleting it, and never counts a pod carrying either annotation
//! again. Requeueing is idempotent (one script moves the list and deletes it), so the ids of a
//! pod that vanished without being seen are requeued from `{q}:workers` on a later round.
//!
//! # Two replicas
//! With leader election ([`crate::leader`]), only the holder of the Lease reconciles; losing
//! the Lease drops the controller (cancelling reconciliations in flight) until it is won again.

pub mod apply;
pub mod build;
pub mod events;
pub mod observe;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use migrate_contract::error_chain;
use migrate_crds::{LastRestart, MemorySource, MigrateJob, Phase};
use tokio::sync::watch;
use tracing::{Instrument as _, debug, error, info, info_span, instrument, warn};

use crate::leader::{LeaderElector, LeaseConfig};
use crate::leak::{LeakThreshold, RetainedSample};
use crate::metrics::{self, Health, JobGauges, Metrics};
use crate::policy::{
    self, Action as PolicyAction, Observations, PolicyState, Report, RestartReason, WorkerState,
};
use apply::ApplyError;
use observe::{ObserveError, QueueBackend, QueueView, RedisQueues, Scraped};
use status::{Counters, Problem, View};

/// The field manager of every write (server-side apply and creates).
pub const MANAGER: &str = "migrate-operator";
/// The finalizer that requeues in-flight work and deletes the pods before a job goes.
pub const FINALIZER: &str = "migrate-operator.io/cleanup";

/// How long an OOM kill keeps the job Degraded.
const OOM_DEGRADED_FOR: Duration = Duration::from_secs(600);
/// Shortest time between two reconciliations of a running job.
const MIN_REQUEUE: Duration = Duration::from_millis(500);
/// How long a scrape of one worker may take at most.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Workers scraped at once.
const SCRAPE_CONCURRENCY: usize = 16;
/// How often a deleted job checks whether its pods are gone.
const REQUEUE_WAIT: Duration = Duration::from_secs(2);

/// Flags of `migrate-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Address of the operator's /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "MIGRATE_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Reconcile only the MigrateJobs of this namespace [default: every namespace].
    #[arg(long, env = "MIGRATE_OPERATOR_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Run without leader election. Only for a single replica: two replicas without it would
    /// both act on every job.
    #[arg(long)]
    pub no_leader_election: bool,
    /// Name of the Lease the replicas elect a leader with.
    #[arg(
        long,
        env = "MIGRATE_OPERATOR_LEASE",
        default_value = "migrate-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease [default: the operator's own namespace, from POD_NAMESPACE].
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the election [default: POD_NAME, else host name and pid].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid after its last renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds a leader goes on leading without a successful renewal before it steps down;
    /// less than --lease-duration-seconds.
    #[arg(long, default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// Seconds between two attempts to acquire or renew the Lease.
    #[arg(long, default_value_t = 2)]
    pub retry_period_seconds: u64,
}

/// How the controller runs, independent of flags (tests build it directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Reconcile only this namespace.
    pub namespace: Option<String>,
    /// Leader election; `None` reconciles at once.
    pub lease: Option<LeaseConfig>,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// The name Events are reported under (`reportingInstance`).
    pub instance: String,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No Kubernetes configuration was found (in-cluster or KUBECONFIG).
    #[error("cannot find a Kubernetes configuration (in-cluster or KUBECONFIG)")]
    Config(#[source] kube::config::InferConfigError),
    /// No Kubernetes client could be configured.
    #[error("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
    /// The metrics server failed.
    #[error("metrics endpoint failed")]
    Metrics(#[source] metrics::MetricsError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signal(#[source] std::io::Error),
}

/// Why one reconciliation failed. [`Error::metric_label`] names the kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing to the API server failed.
    #[error("cannot write the objects of MigrateJob {job}")]
    Apply {
        /// `namespace/name`.
        job: String,
        /// What failed.
        #[source]
        source: ApplyError,
    },
    /// Writing the status failed.
    #[error("cannot write the status of MigrateJob {job}")]
    Status {
        /// `namespace/name`.
        job: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Redis could not be reached during cleanup (in-flight ids would be lost).
    #[error("cannot requeue the in-flight ids of MigrateJob {job}")]
    Requeue {
        /// `namespace/name`.
        job: String,
        /// What failed.
        #[source]
        source: ObserveError,
    },
}

impl Error {
    /// A short stable name of the kind of error (Event reason, log field).
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Requeue { .. } => "requeue",
        }
    }
}

/// What the controller remembers of one job between reconciliations.
#[derive(Debug, Default)]
struct JobMemory {
    uid: Option<String>,
    generation: Option<i64>,
    policy: PolicyState,
    counters: Counters,
    children_generation: Option<i64>,
    known_pods: BTreeSet<String>,
    readings: HashMap<String, Scraped>,
    /// Each live pod's first per-stage retained reading: the baseline its growth is measured
    /// from when it is restarted for memory. One entry per live pod.
    first_retained: HashMap<String, RetainedSample>,
    last_oom: Option<(Instant, String)>,
    /// Problems (Degraded reasons) and one-off notes already published as Events.
    reported: BTreeSet<String>,
}

impl JobMemory {
    fn seeded(job: &MigrateJob) -> Self {
        let status = job.status.as_ref();
        let current = status.is_some_and(|s| s.observed_generation == job.metadata.generation);
        let degraded_reason = status
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == status::DEGRADED && c.status == "True")
            })
            .map(|c| c.reason.as_str());
        Self {
            uid: job.metadata.uid.clone(),
            generation: job.metadata.generation,
            policy: PolicyState {
                complete: current && status.and_then(|s| s.phase) == Some(Phase::Complete),
                config_error: current && degraded_reason == Some("WorkerConfigError"),
                ..PolicyState::default()
            },
            counters: Counters::from_status(status),
            ..Self::default()
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    queues: Arc<dyn QueueBackend>,
    http: reqwest::Client,
    origin: Instant,
    jobs: Mutex<HashMap<String, JobMemory>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context on `client`, reading queues through `queues`, reporting Events as `instance`.
    #[must_use]
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        queues: Arc<dyn QueueBackend>,
        instance: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            queues,
            http: reqwest::Client::builder()
                .user_agent(crate::USER_AGENT)
                .timeout(MAX_SCRAPE_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            origin: Instant::now(),
            jobs: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The metrics this context records.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn take_memory(&self, key: &str, job: &MigrateJob) -> JobMemory {
        let found = self.jobs.lock().ok().and_then(|mut jobs| jobs.remove(key));
        match found {
            Some(mut mem) if mem.uid == job.metadata.uid => {
                if mem.generation != job.metadata.generation {
                    // An edited spec gets a fresh start: a config error or a finished drain
                    // may be what the edit fixes, and its problems are reported anew.
                    mem.generation = job.metadata.generation;
                    mem.policy.config_error = false;
                    mem.policy.complete = false;
                    mem.reported.clear();
                }
                mem
            }
            _ => JobMemory::seeded(job),
        }
    }

    fn put_memory(&self, key: String, mem: JobMemory) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(key, mem);
        }
    }

    fn failed(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_owned()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1)
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

fn now_time() -> Time {
    // Whole seconds: what the API server stores, so a status read back compares equal.
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn job_key(job: &MigrateJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// Reconciles one MigrateJob (see the module documentation for the steps).
///
/// # Errors
/// [`Error`] when the API server or (during cleanup) Redis fails; the error policy retries.
#[instrument(skip(guard, ctx), fields(namespace = guard.namespace().unwrap_or_default(), job = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<MigrateJob>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let job = match &guard.0 {
        Ok(job) => job,
        Err(invalid) => {
            warn!(error = %invalid.error, "MigrateJob does not deserialize; waiting for an edit.");
            let regarding = ObjectReference {
                api_version: Some(MigrateJob::api_version(&()).into_owned()),
                kind: Some(MigrateJob::kind(&()).into_owned()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            events::publish(
                &ctx.recorder,
                &regarding,
                events::problem(
                    "Malformed",
                    &format!(
                        "the object does not match the MigrateJob schema: {}",
                        invalid.error
                    ),
                ),
            )
            .await;
            ctx.metrics.reconciled("invalid", started.elapsed());
            return Ok(Action::await_change());
        }
    };
    let key = job_key(job);
    let mut mem = ctx.take_memory(&key, job);
    let outcome = if job.metadata.deletion_timestamp.is_some() {
        cleanup(job, &ctx, &mut mem)
            .await
            .map(|(action, done)| (action, "ok", done))
    } else {
        reconcile_job(job, &ctx, &mut mem)
            .await
            .map(|(action, label)| (action, label, false))
    };
    match outcome {
        Ok((action, label, deleted)) => {
            if deleted {
                ctx.metrics.set_job(&key, None);
            } else {
                ctx.put_memory(key.clone(), mem);
            }
            ctx.succeeded(&key);
            ctx.metrics.reconciled(label, started.elapsed());
            Ok(action)
        }
        Err(e) => {
            ctx.put_memory(key, mem);
            ctx.metrics.reconciled("error", started.elapsed());
            Err(e)
        }
    }
}

/// Retries a failed reconciliation with an exponential backoff (1 s doubling to 60 s).
pub fn error_policy(
    guard: Arc<DeserializeGuard<MigrateJob>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = format!(
        "{}/{}",
        guard.namespace().unwrap_or_default(),
        guard.name_any()
    );
    let failures = ctx.failed(&key);
    let delay =
        Duration::from_secs(1u64 << failures.min(6).saturating_sub(1)).min(Duration::from_secs(60));
    warn!(job = %key, kind = error.metric_label(), failures, retry_in = ?delay, error = %error_chain(error), "Reconciliation failed.");
    Action::requeue(delay)
}

fn has_finalizer(job: &MigrateJob) -> bool {
    job.finalizers().iter().any(|f| f == FINALIZER)
}

/// Deletes the pods, requeues their ids, deletes the children and lets the job go. Returns the
/// next action and whether the job is finished with.
async fn cleanup(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
) -> Result<(Action, bool), Error> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let key = job_key(job);
    if !has_finalizer(job) {
        return Ok((Action::await_change(), true));
    }
    let apply_err = |source| Error::Apply {
        job: key.clone(),
        source,
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Vec<Pod> = apply::list_pods(&pods_api, &namespace, &name)
        .await
        .map_err(apply_err)?
        .into_iter()
        .filter(|p| build::owned_by(p, job))
        .collect();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_none() {
            let grace = observe::exit_status(pod).map(|_| 0);
            apply::delete_pod(&pods_api, &namespace, &pod_name, grace)
                .await
                .map_err(apply_err)?;
        }
        names.insert(pod_name);
    }
    if !pods.is_empty() {
        let remaining = apply::list_pods(&pods_api, &namespace, &name)
            .await
            .map_err(apply_err)?
            .into_iter()
            .filter(|p| build::owned_by(p, job))
            .count();
        if remaining > 0 {
            debug!(
                remaining,
                "Waiting for the job's pods to finish before requeueing their ids."
            );
            return Ok((Action::requeue(REQUEUE_WAIT), false));
        }
    }

    let regarding = job.object_ref(&());
    match observe::redis_url(&ctx.client, &namespace, &job.spec.queue.url_secret_ref).await {
        Ok(observe::RedisSecret { url, .. }) => {
            let queue = job.spec.queue.key.as_str();
            // Pods that vanished before this round are found in `{q}:workers`.
            match ctx.queues.view(&url, queue, &[]).await {
                Ok(view) => {
                    let prefix = build::pod_prefix(&name);
                    names.extend(view.holders.into_iter().filter(|h| h.starts_with(&prefix)));
                }
                Err(source) => return Err(Error::Requeue { job: key, source }),
            }
            for worker in &names {
                let ids = ctx
                    .queues
                    .requeue(&url, queue, worker)
                    .await
                    .map_err(|source| Error::Requeue {
                        job: key.clone(),
                        source,
                    })?;
                if ids > 0 {
                    record_requeue(ctx, mem, &regarding, worker, ids).await;
                }
            }
        }
        Err(
            e @ (ObserveError::SecretMissing { .. }
            | ObserveError::SecretKeyMissing { .. }
            | ObserveError::RedisUrl(_)),
        ) => {
            // Without a Redis URL nothing can be requeued, now or later: say so and let go.
            warn!(error = %error_chain(&e), "Cannot requeue in-flight ids on deletion.");
            events::publish(
                &ctx.recorder,
                &regarding,
                events::problem(e.reason(), &format!("in-flight ids were not requeued: {e}")),
            )
            .await;
        }
        Err(source) => return Err(Error::Requeue { job: key, source }),
    }

    apply::delete_children(&ctx.client, &namespace, &name)
        .await
        .map_err(apply_err)?;
    let jobs: Api<MigrateJob> = Api::namespaced(ctx.client.clone(), &namespace);
    apply::remove_finalizer(&jobs, job)
        .await
        .map_err(apply_err)?;
    info!(requeued = mem.counters.requeued, "MigrateJob cleaned up.");
    Ok((Action::await_change(), true))
}

async fn record_requeue(
    ctx: &Context,
    mem: &mut JobMemory,
    regarding: &ObjectReference,
    worker: &str,
    ids: u64,
) {
    info!(worker, ids, "Requeued a worker's in-flight ids.");
    mem.counters.requeued = mem
        .counters
        .requeued
        .saturating_add(i64::try_from(ids).unwrap_or(i64::MAX));
    ctx.metrics.requeued(ids);
    events::publish(&ctx.recorder, regarding, events::requeued(worker, ids)).await;
}

fn count_restart(
    ctx: &Context,
    mem: &mut JobMemory,
    worker: &str,
    reason: RestartReason,
    memory_bytes: Option<u64>,
) {
    mem.counters.count(reason);
    mem.counters.last_restart = Some(LastRestart {
        worker: worker.to_owned(),
        reason: reason.as_str().to_owned(),
        memory_bytes: memory_bytes.and_then(|b| i64::try_from(b).ok()),
        time: now_time(),
    });
    ctx.metrics.restarted(reason);
}

fn scale_reason(settings: &policy::Settings, backlog: Option<policy::Backlog>) -> String {
    match (settings.replicas_override, backlog) {
        (Some(n), _) => format!("spec.replicas is {n}"),
        (None, Some(b)) => format!(
            "backlog {} at {} per worker, between {} and {}",
            b.total(),
            settings.target_backlog_per_worker,
            settings.min_replicas,
            settings.max_replicas
        ),
        (None, None) => "replacing stopped workers".to_owned(),
    }
}

/// Scrapes every ready pod with an IP; unreachable pods keep their previous reading. With
/// `memory.source: PodMetrics` the memory usage and its age then come from the
/// `metrics.k8s.io` API instead; returns why that API could not be read, if it could not.
async fn scrape_pods(
    ctx: &Context,
    job: &MigrateJob,
    pods: &[Pod],
    timeout: Duration,
    mem: &mut JobMemory,
) -> Option<String> {
    let port = job.spec.workers.metrics_port;
    let targets: Vec<(String, String)> = pods
        .iter()
        .filter(|p| observe::exit_status(p).is_none() && observe::is_ready(p))
        .filter_map(|p| observe::pod_ip(p).map(|ip| (p.name_any(), ip.to_owned())))
        .collect();
    let http = &ctx.http;
    let results: Vec<(String, Result<Scraped, ObserveError>)> = futures::stream::iter(targets)
        .map(|(name, ip)| async move {
            let result = match tokio::time::timeout(timeout, observe::scrape(http, &ip, port)).await
            {
                Ok(r) => r,
                Err(_) => {
                    return (name, Err(ObserveError::Timeout(timeout)));
                }
            };
            (name, result)
        })
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await;
    for (name, result) in results {
        match result {
            Ok(reading) => {
                mem.readings.insert(name, reading);
            }
            Err(e) => {
                debug!(pod = %name, error = %error_chain(&e), "Worker metrics unreachable; its reading ages.")
            }
        }
    }
    let pod_metrics_error = if job.spec.memory.source == MemorySource::PodMetrics {
        read_pod_metrics(ctx, job, pods, mem).await
    } else {
        None
    };
    let present: BTreeSet<String> = pods.iter().map(ResourceExt::name_any).collect();
    mem.readings.retain(|name, _| present.contains(name));
    mem.first_retained.retain(|name, _| present.contains(name));
    for (name, reading) in &mem.readings {
        if reading.retained.is_empty() {
            // A PodMetrics-only reading: no per-stage figures to measure growth from yet.
            continue;
        }
        mem.first_retained
            .entry(name.clone())
            .or_insert_with(|| retained_sample(reading));
    }
    pod_metrics_error
}

/// Sets each live pod's memory usage and its age from the `metrics.k8s.io` API, keeping what
/// its `/metrics` gave (task counts, retained bytes). Returns why the API could not be read.
async fn read_pod_metrics(
    ctx: &Context,
    job: &MigrateJob,
    pods: &[Pod],
    mem: &mut JobMemory,
) -> Option<String> {
    let live: BTreeSet<String> = pods
        .iter()
        .filter(|p| observe::exit_status(p).is_none())
        .map(ResourceExt::name_any)
        .collect();
    let found = match observe::pod_metrics(
        &ctx.client,
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        build::CONTAINER,
    )
    .await
    {
        Ok(found) => found,
        Err(e) => {
            debug!(error = %error_chain(&e), "PodMetrics unavailable; memory readings age.");
            return Some(error_chain(&e));
        }
    };
    let (wall, now) = (Timestamp::now(), Instant::now());
    for (name, memory) in found.into_iter().filter(|(n, _)| live.contains(n)) {
        let age = Duration::try_from(wall.duration_since(memory.timestamp)).unwrap_or_default();
        let at = now.checked_sub(age).unwrap_or(now);
        let reading = mem.readings.entry(name).or_insert_with(|| Scraped {
            usage_bytes: 0,
            limit_bytes: None,
            tasks_done: 0,
            in_flight: 0,
            retained: BTreeMap::new(),
            at,
        });
        reading.usage_bytes = memory.usage_bytes;
        reading.at = at;
    }
    None
}

fn retained_sample(reading: &Scraped) -> RetainedSample {
    RetainedSample {
        tasks_done: reading.tasks_done,
        retained: reading
            .retained
            .iter()
            // A stage below zero counts from zero here, as this path always has (the local
            // supervisor keeps the sign); only the growth between two samples is used.
            .map(|(stage, &b)| (stage.clone(), b.max(0)))
            .collect(),
    }
}

/// For a restart for memory: names the stage whose retained bytes grew over the worker's life
/// (from its first reading to its latest), remembers it for the status, and sets the metric.
/// Returns the sentence for the Event.
fn name_leak(
    ctx: &Context,
    mem: &mut JobMemory,
    worker: &str,
    reason: RestartReason,
) -> Option<String> {
    if !matches!(
        reason,
        RestartReason::MemorySoft | RestartReason::MemoryHard | RestartReason::OomKilled
    ) {
        return None;
    }
    let first = mem.first_retained.get(worker)?;
    let latest = retained_sample(mem.readings.get(worker)?);
    let report = crate::leak::attribute(first, &latest, &LeakThreshold::default())?;
    info!(pod = %worker, stage = %report.stage, retained_bytes = report.retained_bytes, over_tasks = report.over_tasks, "Leak attributed to a stage.");
    ctx.metrics.leak(&report.stage, report.retained_bytes);
    mem.counters.leak = Some(migrate_crds::LeakReport {
        stage: report.stage.clone(),
        retained_bytes: i64::try_from(report.retained_bytes).unwrap_or(i64::MAX),
        over_tasks: i64::try_from(report.over_tasks).unwrap_or(i64::MAX),
        message: report.message.clone(),
    });
    Some(report.message)
}

/// Reconciles a job that is not being deleted. Returns the next action and the result label.
async fn reconcile_job(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
) -> Result<(Action, &'static str), Error> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let key = job_key(job);
    let apply_err = |source| Error::Apply {
        job: key.clone(),
        source,
    };
    let jobs: Api<MigrateJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let regarding = job.object_ref(&());
    let now = now_time();

    if !has_finalizer(job) {
        apply::add_finalizer(&jobs, job).await.map_err(apply_err)?;
    }

    let settings = match validate::check(job) {
        Ok(settings) => settings,
        Err(invalid) => {
            let message = invalid.message();
            warn!(problems = invalid.problems.len(), %message, "MigrateJob is invalid; waiting for an edit.");
            if mem
                .reported
                .insert(validate::REASON_INVALID_SPEC.to_owned())
            {
                events::publish(
                    &ctx.recorder,
                    &regarding,
                    events::problem(validate::REASON_INVALID_SPEC, &message),
                )
                .await;
            }
            let new = status::invalid_status(job, &message, &now);
            if status::differs(job.status.as_ref(), &new) {
                status::write(&jobs, &name, &new)
                    .await
                    .map_err(|source| Error::Status {
                        job: key.clone(),
                        source,
                    })?;
            }
            return Ok((Action::await_change(), "invalid"));
        }
    };

    if mem.children_generation != job.metadata.generation {
        apply::apply_children(&ctx.client, job)
            .await
            .map_err(apply_err)?;
        mem.children_generation = job.metadata.generation;
    }

    // Observe.
    let mut pods: Vec<Pod> = apply::list_pods(&pods_api, &namespace, &name)
        .await
        .map_err(apply_err)?
        .into_iter()
        .filter(|p| build::owned_by(p, job))
        .collect();
    let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    let mut problems: Vec<Problem> = Vec::new();
    let mut url = None;
    let mut view: Option<QueueView> = None;
    // Secret versions read this round, for the template hash.
    let mut known_versions = build::SecretVersions::new();
    match observe::redis_url(&ctx.client, &namespace, &job.spec.queue.url_secret_ref).await {
        Ok(observe::RedisSecret { url: u, version }) => {
            known_versions.insert(job.spec.queue.url_secret_ref.name.clone(), version);
            match ctx.queues.view(&u, &job.spec.queue.key, &names).await {
                Ok(v) => view = Some(v),
                Err(e) => problems.push(redis_problem(job, &e)),
            }
            url = Some(u);
        }
        Err(e) => problems.push(redis_problem(job, &e)),
    }
    let check_interval = Duration::from_millis(u64::from(job.spec.memory.check_interval_ms));
    let pod_metrics_error =
        scrape_pods(ctx, job, &pods, check_interval.min(MAX_SCRAPE_TIMEOUT), mem).await;

    // Pods deleted by someone else (eviction API, node drain, kubectl): counted once as evicted.
    for pod in &mut pods {
        if pod.metadata.deletion_timestamp.is_some()
            && observe::stop_reason(pod).is_none()
            && !observe::already_reaped(pod)
            && observe::exit_status(pod).is_none()
        {
            let pod_name = pod.name_any();
            let reason = RestartReason::Evicted;
            let annotations =
                BTreeMap::from([(build::STOP_REASON.to_owned(), reason.as_str().to_owned())]);
            apply::annotate(&pods_api, &namespace, &pod_name, &annotations)
                .await
                .map_err(apply_err)?;
            pod.annotations_mut().extend(annotations);
            count_restart(ctx, mem, &pod_name, reason, None);
            events::publish(
                &ctx.recorder,
                &regarding,
                events::ended(&pod_name, Some(reason), None),
            )
            .await;
        }
    }
    // Pods that vanished since the last round without this operator deleting them.
    let present: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let vanished: Vec<String> = mem
        .known_pods
        .iter()
        .filter(|p| !present.contains(p.as_str()))
        .cloned()
        .collect();
    for pod_name in vanished {
        count_restart(ctx, mem, &pod_name, RestartReason::Evicted, None);
        events::publish(
            &ctx.recorder,
            &regarding,
            events::ended(&pod_name, Some(RestartReason::Evicted), None),
        )
        .await;
    }
    // Ids held by workers whose pods are gone.
    if let (Some(u), Some(v)) = (&url, &view) {
        let prefix = build::pod_prefix(&name);
        for holder in v
            .holders
            .iter()
            .filter(|h| h.starts_with(&prefix) && !present.contains(h.as_str()))
        {
            match ctx.queues.requeue(u, &job.spec.queue.key, holder).await {
                Ok(0) => {}
                Ok(ids) => record_requeue(ctx, mem, &regarding, holder, ids).await,
                Err(e) => {
                    warn!(worker = %holder, error = %error_chain(&e), "Could not requeue a vanished worker's ids; retrying next round.")
                }
            }
        }
    }

    // Decide.
    let wall = Timestamp::now();
    let instant = Instant::now();
    let in_flight_of = |n: &str| {
        view.as_ref()
            .and_then(|v| v.in_flight.get(n).copied())
            .unwrap_or(0)
    };
    // The Secrets' versions are part of the template: a changed Secret rolls the workers.
    // Unknown versions (a read failed) roll nothing: the hash is then empty.
    let secrets = observe::secret_versions(
        &ctx.client,
        &namespace,
        &build::referenced_secrets(&job.spec),
        known_versions,
    )
    .await;
    if let Err(e) = &secrets {
        warn!(error = %error_chain(e), "Cannot read the workers' Secrets' versions; no worker is rolled for them this round.");
    }
    let template_hash = match &secrets {
        Ok(versions) => build::template_hash(job, versions).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let secrets = secrets.unwrap_or_default();
    let workers: Vec<policy::Worker> = pods
        .iter()
        .map(|p| {
            let n = p.name_any();
            observe::to_worker(
                p,
                &template_hash,
                in_flight_of(&n),
                mem.readings.get(&n),
                wall,
                instant,
            )
        })
        .collect();
    let backlog = view.as_ref().map(|v| v.backlog);
    let observations = Observations {
        workers: workers.clone(),
        backlog,
        now: instant.duration_since(ctx.origin),
    };
    let decision = policy::decide(&settings, &observations, &mem.policy);
    mem.policy = decision.state.clone();
    debug!(desired = decision.desired, actions = ?decision.actions, "Decided.");

    // Act: reap, start, stop, complete.
    let by_name: HashMap<&str, &Pod> = pods
        .iter()
        .map(|p| (p.metadata.name.as_deref().unwrap_or_default(), p))
        .collect();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut created: Vec<String> = Vec::new();
    let mut throttled: Vec<String> = Vec::new();
    let mut stale: Vec<String> = Vec::new();
    let mut oom_usage: HashMap<String, Option<u64>> = HashMap::new();
    for action in &decision.actions {
        match action {
            PolicyAction::Report(Report::OomKilled {
                worker,
                last_usage_bytes,
            }) => {
                oom_usage.insert(worker.clone(), *last_usage_bytes);
            }
            PolicyAction::Report(Report::RestartsThrottled { waiting }) => {
                throttled.clone_from(waiting)
            }
            PolicyAction::Report(
                Report::StaleReading { worker, .. } | Report::MissingReading { worker },
            ) => {
                stale.push(worker.clone());
            }
            _ => {}
        }
    }
    for action in &decision.actions {
        let PolicyAction::Reap { worker, reason } = action else {
            continue;
        };
        let Some(pod) = by_name.get(worker.as_str()) else {
            continue;
        };
        if let Some(u) = &url {
            match ctx.queues.requeue(u, &job.spec.queue.key, worker).await {
                Ok(0) => {}
                Ok(ids) => record_requeue(ctx, mem, &regarding, worker, ids).await,
                Err(e) => {
                    warn!(worker = %worker, error = %error_chain(&e), "Could not requeue an ended worker's ids; retrying once Redis answers.")
                }
            }
        }
        if !observe::already_reaped(pod) {
            // A pod the operator stopped was counted when it was asked to stop.
            let counted = if observe::stop_reason(pod).is_some() {
                None
            } else {
                *reason
            };
            let label = reason.map_or("finished", RestartReason::as_str);
            let annotations = BTreeMap::from([(build::REAPED.to_owned(), label.to_owned())]);
            apply::annotate(&pods_api, &namespace, worker, &annotations)
                .await
                .map_err(apply_err)?;
            let code = observe::exit_status(pod).and_then(|s| s.code);
            let mut leak = None;
            if let Some(r) = counted {
                let usage = oom_usage.get(worker.as_str()).copied().flatten();
                count_restart(ctx, mem, worker, r, usage);
                leak = name_leak(ctx, mem, worker, r);
                if r == RestartReason::OomKilled {
                    mem.last_oom = Some((Instant::now(), oom_message(job, worker, usage)));
                }
            }
            if observe::stop_reason(pod).is_none() {
                events::publish(
                    &ctx.recorder,
                    &regarding,
                    events::ended(worker, counted, code).with_leak(leak.as_deref()),
                )
                .await;
            }
            info!(pod = %worker, reason = label, exit_code = ?code, "Worker pod ended; reaped.");
        }
        apply::delete_pod(&pods_api, &namespace, worker, Some(0))
            .await
            .map_err(apply_err)?;
        deleted.insert(worker.clone());
    }
    for action in &decision.actions {
        let PolicyAction::Start { count } = action else {
            continue;
        };
        for _ in 0..*count {
            created.push(
                apply::create_pod(&pods_api, job, &secrets)
                    .await
                    .map_err(apply_err)?,
            );
        }
        info!(count, desired = decision.desired, "Started worker pods.");
        events::publish(
            &ctx.recorder,
            &regarding,
            events::scaled_up(*count, decision.desired, &scale_reason(&settings, backlog)),
        )
        .await;
    }
    for action in &decision.actions {
        let (worker, reason, memory_bytes, at_once) = match action {
            PolicyAction::Drain {
                worker,
                reason,
                memory_bytes,
            } => (worker, *reason, *memory_bytes, false),
            PolicyAction::Kill {
                worker,
                reason,
                memory_bytes,
            } => (worker, *reason, *memory_bytes, true),
            _ => continue,
        };
        let annotations =
            BTreeMap::from([(build::STOP_REASON.to_owned(), reason.as_str().to_owned())]);
        apply::annotate(&pods_api, &namespace, worker, &annotations)
            .await
            .map_err(apply_err)?;
        apply::delete_pod(&pods_api, &namespace, worker, at_once.then_some(0))
            .await
            .map_err(apply_err)?;
        count_restart(ctx, mem, worker, reason, memory_bytes);
        let leak = name_leak(ctx, mem, worker, reason);
        info!(pod = %worker, reason = reason.as_str(), memory_bytes, at_once, "Stopping a worker pod.");
        events::publish(
            &ctx.recorder,
            &regarding,
            events::stopping(worker, reason, memory_bytes, at_once).with_leak(leak.as_deref()),
        )
        .await;
        deleted.insert(worker.clone());
    }
    if decision.actions.contains(&PolicyAction::Complete) {
        for pod in &pods {
            let pod_name = pod.name_any();
            if !deleted.contains(&pod_name) && pod.metadata.deletion_timestamp.is_none() {
                // Recorded as finished (no restart) first, so that its deletion is not taken
                // for an eviction by a later round.
                let finished = BTreeMap::from([(build::REAPED.to_owned(), "finished".to_owned())]);
                apply::annotate(&pods_api, &namespace, &pod_name, &finished)
                    .await
                    .map_err(apply_err)?;
                apply::delete_pod(&pods_api, &namespace, &pod_name, None)
                    .await
                    .map_err(apply_err)?;
                deleted.insert(pod_name);
            }
        }
        if mem.reported.insert("Completed".to_owned()) {
            info!("Drain finished; the job is complete.");
            events::publish(&ctx.recorder, &regarding, events::completed()).await;
        }
    }

    // Problems.
    if mem.policy.config_error {
        problems.push(Problem::new(
            "WorkerConfigError",
            format!(
                "a worker exited with the configuration error code 78: read its log (`kubectl logs -n {namespace} -l {}`) and fix the spec; no worker starts until the spec changes",
                build::selector(&name)
            ),
        ));
    }
    if let Some((at, message)) = &mem.last_oom
        && at.elapsed() < OOM_DEGRADED_FOR
    {
        problems.push(Problem::new("OomKilled", message.clone()));
    }
    if let Some(message) = pods.iter().find_map(observe::unschedulable) {
        problems.push(Problem::new(
            "Unschedulable",
            format!(
                "a worker pod fits no node: {message} It stays Pending for a cluster autoscaler to add a node (it sees the pod's requests); else lower workers.resources.requests or widen workers.nodeSelector, tolerations or affinity"
            ),
        ));
    }
    for action in &decision.actions {
        if let PolicyAction::Report(Report::AllOverSoftLimit { workers }) = action {
            problems.push(Problem::new(
                "AllOverSoftLimit",
                format!(
                    "all {workers} workers are above memory.soft at once: the limit is probably too low for the workload rather than a leak; raise workers.resources.limits.memory (restarts go on at memory.maxConcurrentRestarts at a time)"
                ),
            ));
        }
    }
    let stale: Vec<String> = stale.into_iter().filter(|w| !deleted.contains(w)).collect();
    if !stale.is_empty() || pod_metrics_error.is_some() {
        let from = match job.spec.memory.source {
            MemorySource::Worker => format!(
                "check that the pods are ready and answer /metrics on port {}",
                job.spec.workers.metrics_port
            ),
            MemorySource::PodMetrics => format!(
                "memory.source is PodMetrics: check that metrics-server runs (kubectl top pod -n {}) and refreshes more often than memory.staleAfterSeconds{}",
                job.namespace().unwrap_or_default(),
                pod_metrics_error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        };
        let who = if stale.is_empty() {
            "the workers".to_owned()
        } else {
            stale.join(", ")
        };
        problems.push(Problem::new(
            "MetricsUnavailable",
            format!(
                "no fresh memory reading from {who} for memory.staleAfterSeconds: {from}; memory supervision waits for them"
            ),
        ));
    }
    let current: BTreeSet<String> = problems.iter().map(|p| p.reason.clone()).collect();
    for p in &problems {
        if mem.reported.insert(p.reason.clone()) {
            warn!(reason = %p.reason, message = %p.message, "MigrateJob degraded.");
            events::publish(
                &ctx.recorder,
                &regarding,
                events::problem(&p.reason, &p.message),
            )
            .await;
        }
    }
    mem.reported
        .retain(|r| current.contains(r) || r == "Completed" || r == validate::REASON_INVALID_SPEC);

    // Busyness annotations for the cluster autoscaler and scale-down order.
    for pod in &pods {
        let pod_name = pod.name_any();
        if deleted.contains(&pod_name)
            || pod.metadata.deletion_timestamp.is_some()
            || observe::exit_status(pod).is_some()
        {
            continue;
        }
        let wanted = build::busyness_annotations(in_flight_of(&pod_name));
        let have = pod.annotations();
        if wanted.iter().any(|(k, v)| have.get(k) != Some(v)) {
            apply::annotate(&pods_api, &namespace, &pod_name, &wanted)
                .await
                .map_err(apply_err)?;
        }
    }

    // Status.
    let survivors: Vec<&policy::Worker> = workers
        .iter()
        .filter(|w| !deleted.contains(&w.name) && !matches!(w.state, WorkerState::Exited { .. }))
        .collect();
    let draining = survivors
        .iter()
        .filter(|w| matches!(w.state, WorkerState::Draining(_)))
        .count();
    let not_ready: Vec<String> = survivors
        .iter()
        .filter(|w| !w.ready && !matches!(w.state, WorkerState::Draining(_)))
        .map(|w| w.name.clone())
        .chain(created.iter().cloned())
        .collect();
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let status_view = View {
        live: to_i32(survivors.len() + created.len()),
        ready: to_i32(survivors.iter().filter(|w| w.ready).count()),
        desired: i32::try_from(decision.desired).unwrap_or(i32::MAX),
        not_ready,
        draining: to_i32(draining),
        backlog,
        stats: view.as_ref().map(|v| v.stats.clone()).unwrap_or_default(),
        complete: mem.policy.complete,
        settling: mem.policy.idle_since.is_some() && !mem.policy.complete,
        throttled,
        problems,
    };
    let new = status::running_status(job, &status_view, &mem.counters, &now);
    if status::differs(job.status.as_ref(), &new) {
        status::write(&jobs, &name, &new)
            .await
            .map_err(|source| Error::Status {
                job: key.clone(),
                source,
            })?;
    }

    // Remember and measure.
    // A pod being deleted was counted when its deletion was seen (under its stop reason, or as
    // evicted), so it is not counted again as vanished once its kubelet removes it.
    mem.known_pods = survivors
        .iter()
        .filter(|w| !matches!(w.state, WorkerState::Draining(_)))
        .map(|w| w.name.clone())
        .chain(created)
        .collect();
    let mut gauges = JobGauges {
        backlog: backlog.map_or(0, policy::Backlog::total),
        ..JobGauges::default()
    };
    for w in &workers {
        let slot = match w.state {
            WorkerState::Starting => 0,
            WorkerState::Running => 1,
            WorkerState::Draining(_) => 2,
            WorkerState::Exited { .. } => 3,
        };
        gauges.workers[slot] += 1;
    }
    ctx.metrics.set_job(&key, Some(gauges));

    let action = if mem.policy.complete {
        Action::await_change()
    } else {
        Action::requeue(check_interval.max(MIN_REQUEUE))
    };
    Ok((action, "ok"))
}

fn redis_problem(job: &MigrateJob, e: &ObserveError) -> Problem {
    let secret = &job.spec.queue.url_secret_ref;
    let message = match e {
        ObserveError::SecretMissing { namespace, name } => format!(
            "the Redis Secret {namespace}/{name} does not exist: create it with the Redis URL under key {:?} (spec.queue.urlSecretRef); the worker count stays as it is until then",
            secret.key
        ),
        ObserveError::SecretKeyMissing {
            namespace,
            name,
            key,
        } => format!(
            "the Secret {namespace}/{name} has no key {key:?} holding the Redis URL: add it or fix spec.queue.urlSecretRef"
        ),
        ObserveError::RedisUrl(_) => format!(
            "the value of Secret key {}/{} is not a Redis URL (expected redis://[:password@]host:port[/db])",
            secret.name, secret.key
        ),
        other => format!(
            "the queue cannot be read ({}); the worker count stays as it is until Redis answers",
            error_chain(other)
        ),
    };
    Problem::new(e.reason(), message)
}

fn oom_message(job: &MigrateJob, worker: &str, usage: Option<u64>) -> String {
    let limit = migrate_crds::validate::container_memory_limit(&job.spec).map_or_else(
        || "no memory limit".to_owned(),
        |l| format!("a limit of {} MiB", l / (1024 * 1024)),
    );
    let seen = usage.map_or_else(String::new, |u| {
        format!(", last seen at {} MiB", u / (1024 * 1024))
    });
    format!(
        "worker {worker} was OOM-killed by the kernel ({limit}{seen}) before the operator could drain it: raise workers.resources.limits.memory, or lower memory.soft/memory.hard (now {}/{}) or memory.checkIntervalMs so workers are drained first",
        job.spec.memory.soft, job.spec.memory.hard
    )
}

/// `config` with the operator's [`crate::USER_AGENT`] on every request.
#[must_use]
pub fn identified(mut config: kube::Config) -> kube::Config {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(crate::USER_AGENT),
    ));
    config
}

/// Runs the controller until a signal (SIGINT, SIGTERM) arrives.
///
/// # Errors
/// [`ControllerError`] when it cannot start.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let config = kube::Config::infer()
        .await
        .map_err(ControllerError::Config)?;
    let client = Client::try_from(identified(config)).map_err(ControllerError::Client)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = (!args.no_leader_election).then(|| LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
        renew_deadline: Duration::from_secs(
            args.renew_deadline_seconds
                .clamp(1, args.lease_duration_seconds.max(2) - 1),
        ),
        retry_period: Duration::from_secs(args.retry_period_seconds.max(1)),
    });
    let config = Config {
        namespace: args.namespace.clone(),
        lease,
        listen: Some(args.listen),
        instance: identity,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ControllerError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        info!("Shutdown requested.");
    };
    run_with(client, config, Arc::new(RedisQueues::default()), shutdown).await
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "migrate-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs the controller on `client` until `shutdown` resolves: serves the metrics endpoints,
/// takes part in the election (when configured) and reconciles while leading.
///
/// # Errors
/// [`ControllerError::Metrics`] when the metrics address cannot be bound.
pub async fn run_with(
    client: Client,
    config: Config,
    queues: Arc<dyn QueueBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let server = match config.listen {
        Some(addr) => {
            let (bound, serve) = metrics::bind(addr, metrics.clone(), health.clone())
                .await
                .map_err(ControllerError::Metrics)?;
            info!(%bound, "Serving /metrics, /healthz and /readyz.");
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        queues,
        &config.instance,
    ));

    match config.lease.clone() {
        None => {
            health.set_ready(true);
            let mut stop = stop_rx.clone();
            run_controller(ctx, config.namespace.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        }
        Some(lease) => {
            let (leading_tx, mut leading) = watch::channel(false);
            let elector = LeaderElector::new(client.clone(), lease);
            let mut stop = stop_rx.clone();
            let election = tokio::spawn(elector.run(leading_tx, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            health.set_ready(client.apiserver_version().await.is_ok());
            let mut stop = stop_rx.clone();
            loop {
                tokio::select! {
                    r = leading.wait_for(|l| *l) => if r.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                }
                health.set_ready(true);
                let mut lost = leading.clone();
                let mut stop_inner = stop_rx.clone();
                run_controller(ctx.clone(), config.namespace.clone(), async move {
                    tokio::select! {
                        _ = lost.wait_for(|l| !*l) => {}
                        _ = stop_inner.wait_for(|s| *s) => {}
                    }
                })
                .await;
                if *stop.borrow() {
                    break;
                }
                info!("Not the leader any more; reconciling stopped.");
            }
            let _ = election.await;
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}

/// Runs the controller until `stop` resolves; dropping it cancels reconciliations in flight.
async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let (jobs, pods): (Api<DeserializeGuard<MigrateJob>>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let pod_watch =
        watcher::Config::default().labels(&format!("app.kubernetes.io/name={}", build::APP_NAME));
    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "Reconciling MigrateJobs."
    );
    let controller = Controller::new(jobs, watcher::Config::default().any_semantic())
        .owns(pods, pod_watch)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(job = %object.name, "Reconciled."),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => error!(error = %error_chain(&e), "Controller error."),
            }
        })
        .instrument(info_span!("controller"));
    tokio::select! {
        () = controller => {}
        () = stop => {}
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    /// Every request the operator's client sends names the operator and its version.
    #[test]
    fn the_kubernetes_client_config_carries_the_operator_user_agent() {
        let config = identified(kube::Config::new("https://127.0.0.1:6443".parse().unwrap()));
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(name, _)| name == http::header::USER_AGENT)
            .map(|(_, value)| value.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            agents,
            [concat!("migrate-operator/", env!("CARGO_PKG_VERSION"))]
        );
    }
}
