//! Observe, the first step of a round: what the controller sees of a job, its pods, its Redis
//! queue, its Secrets' versions and its workers' memory, gathered into one [`Observed`].
//!
//! | module | reads |
//! |---|---|
//! | [`queue`] | the job's Redis queue: backlog, in-flight ids, holders, outcome totals (behind [`QueueBackend`], so tests use a fake) |
//! | [`secrets`] | the Redis URL and the resource versions of the Secrets the workers read |
//! | [`references`] | whether every other Secret and the keyword ConfigMap the spec names exist and hold their keys |
//! | [`scrape`] | each ready pod's `/metrics`, and the `metrics.k8s.io` API |
//! | [`pods`] | pods mapped to the policy's workers (pure) |

mod cache;

use cache::{cached_versions, job_pods, namespace_pod_metrics, read_redis_url};
mod error;
mod pods;
mod queue;
mod references;
mod scrape;
mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use migrate_contract::error_chain;
use migrate_contract::memory::FigureSource;
use migrate_crds::{MemorySource, MigrateJob};
use tracing::debug;

pub use error::ObserveError;
pub use pods::{
    already_reaped, exit_status, is_ready, pod_ip, stop_reason, to_worker, unschedulable,
};
pub use queue::{QueueBackend, QueueView, RedisQueues};
pub use references::{Kind, KnownKeys, is_missing_reference, names_object};
pub use scrape::{
    PodMemory, Scraped, parse_pod_memory, parse_scrape, pod_metrics, pod_metrics_resource, scrape,
};
pub use secrets::{RedisSecret, redis_url, secret_versions};

use super::Context;
use super::build::{self, SecretVersions};
use super::context::JobMemory;
use super::error::Error;
use super::status::Problem;

/// How long a scrape of one worker may take at most.
pub(super) const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Workers scraped at once.
const SCRAPE_CONCURRENCY: usize = 16;

/// What one round saw of a job.
#[derive(Debug)]
pub(super) struct Observed {
    /// The job's pods (owned by it), as listed.
    pub(super) pods: Vec<Pod>,
    /// The Redis URL, when its Secret could be read.
    pub(super) url: Option<String>,
    /// The queue, when Redis answered.
    pub(super) view: Option<QueueView>,
    /// Why the Secret or the queue could not be read.
    pub(super) problems: Vec<Problem>,
    /// The resource versions of the Secrets the workers read (empty when one read failed).
    pub(super) secrets: SecretVersions,
    /// The pod template's hash; empty when a Secret's version is unknown (nothing is rolled).
    pub(super) template_hash: String,
    /// Why the `metrics.k8s.io` API could not be read, when it is the memory source.
    pub(super) pod_metrics_error: Option<String>,
    /// When the round observed, on the wall clock (pod ages) and the monotonic one.
    pub(super) wall: Timestamp,
    /// See `wall`.
    pub(super) instant: Instant,
}

impl Observed {
    /// The ids `worker` holds, 0 when unknown.
    pub(super) fn in_flight_of(&self, worker: &str) -> u64 {
        self.view
            .as_ref()
            .and_then(|v| v.in_flight.get(worker).copied())
            .unwrap_or(0)
    }
}

/// Observes `job`: lists its pods, reads its Redis Secret and queue, scrapes its workers
/// (remembering their readings in `mem`) and reads the Secrets' versions for the template hash.
/// A Secret or queue that cannot be read is a problem to report, not an error.
///
/// # Errors
/// [`Error::Apply`] when the pods cannot be listed.
pub(super) async fn observe(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
) -> Result<Observed, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let caches = ctx.caches();
    let pods = job_pods(job, ctx, mem, caches.as_ref()).await?;
    let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    let mut problems: Vec<Problem> = Vec::new();
    let mut url = None;
    let mut view: Option<QueueView> = None;
    // Secret versions read this round, for the template hash.
    let mut known_versions = SecretVersions::new();
    match read_redis_url(job, ctx, caches.as_ref()).await {
        Ok(RedisSecret { url: u, version }) => {
            known_versions.insert(job.spec.queue.url_secret_ref.name.clone(), version);
            match ctx.queues.view(&u, &job.spec.queue.key, &names).await {
                Ok(v) => view = Some(v),
                Err(e) => problems.push(redis_problem(job, &e)),
            }
            url = Some(u);
        }
        Err(e) => problems.push(redis_problem(job, &e)),
    }
    // Checked against the watches' caches; before they serve (the operator's first seconds)
    // each named object is read from the API server instead, so that no worker starts on a
    // missing object or key then either.
    match references::check(
        &ctx.client,
        caches.as_ref(),
        &namespace,
        &job.spec,
        &mut mem.reference_keys,
    )
    .await
    {
        Ok(missing) => problems.extend(missing),
        Err(e) => problems.push(Problem::new(
            e.reason(),
            format!(
                "{}; no worker starts until every object the spec names can be read",
                error_chain(&e)
            ),
        )),
    }
    let check_interval = Duration::from_millis(u64::from(job.spec.memory.check_interval_ms));
    let pod_metrics_error =
        scrape_pods(ctx, job, &pods, check_interval.min(MAX_SCRAPE_TIMEOUT), mem).await;

    // The Secrets' versions are part of the template: a changed Secret rolls the workers.
    // Unknown versions (a read failed) roll nothing: the hash is then empty.
    let referenced = build::referenced_secrets(&job.spec);
    let secrets = match &caches {
        Some(c) => Ok(cached_versions(c, &namespace, &referenced, known_versions)),
        None => secret_versions(&ctx.client, &namespace, &referenced, known_versions).await,
    };
    if let Err(e) = &secrets {
        tracing::warn!(error = %error_chain(e), "Cannot read the workers' Secrets' versions; no worker is rolled for them this round.");
    }
    let template_hash = match &secrets {
        Ok(versions) => build::template_hash(job, versions).unwrap_or_default(),
        Err(_) => String::new(),
    };
    Ok(Observed {
        pods,
        url,
        view,
        problems,
        secrets: secrets.unwrap_or_default(),
        template_hash,
        pod_metrics_error,
        wall: Timestamp::now(),
        instant: Instant::now(),
    })
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
        .filter(|p| exit_status(p).is_none() && is_ready(p))
        .filter_map(|p| pod_ip(p).map(|ip| (p.name_any(), ip.to_owned())))
        .collect();
    let http = &ctx.http;
    let results: Vec<(String, Result<Scraped, ObserveError>)> = futures::stream::iter(targets)
        .map(|(name, ip)| async move {
            let result = match tokio::time::timeout(timeout, scrape(http, &ip, port)).await {
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
            .or_insert_with(|| reading.retained_sample());
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
        .filter(|p| exit_status(p).is_none())
        .map(ResourceExt::name_any)
        .collect();
    let interval = Duration::from_millis(u64::from(job.spec.memory.check_interval_ms));
    let found =
        match namespace_pod_metrics(ctx, &job.namespace().unwrap_or_default(), interval).await {
            Ok(found) => found,
            Err(e) => {
                debug!(error = %error_chain(&e), "PodMetrics unavailable; memory readings age.");
                return Some(error_chain(&e));
            }
        };
    let (wall, now) = (Timestamp::now(), Instant::now());
    for (name, memory) in found.iter().filter(|(n, _)| live.contains(*n)) {
        let (name, memory) = (name.clone(), *memory);
        let age = Duration::try_from(wall.duration_since(memory.timestamp)).unwrap_or_default();
        let at = now.checked_sub(age).unwrap_or(now);
        let reading = mem.readings.entry(name).or_insert_with(|| Scraped {
            usage_bytes: 0,
            source: FigureSource::CgroupWorkingSet,
            limit_bytes: None,
            tasks_done: 0,
            in_flight: 0,
            restart_requested: false,
            retained: BTreeMap::new(),
            at,
        });
        reading.usage_bytes = memory.usage_bytes;
        // metrics-server's figure is the container cgroup's working set.
        reading.source = FigureSource::CgroupWorkingSet;
        reading.at = at;
    }
    None
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
