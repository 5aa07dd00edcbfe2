//! What the reconcilers share ([`Context`]) and what the controller remembers of each job
//! between two reconciliations ([`JobMemory`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use migrate_crds::{MigrateJob, Phase};

use super::apply::MANAGER;
use super::observe::{MAX_SCRAPE_TIMEOUT, PodMemory, QueueBackend, Scraped};
use super::status::{self, Counters};
use crate::leak::RetainedSample;
use crate::metrics::Metrics;
use crate::policy::PolicyState;

/// How long a cleaned-up job's uid is remembered.
const CLEANED_FOR: Duration = Duration::from_secs(600);

/// What the controller remembers of one job between reconciliations.
#[derive(Debug, Default)]
pub(super) struct JobMemory {
    pub(super) uid: Option<String>,
    pub(super) generation: Option<i64>,
    pub(super) policy: PolicyState,
    pub(super) counters: Counters,
    pub(super) children_generation: Option<i64>,
    /// The desired worker count the PodDisruptionBudget was last applied for.
    pub(super) budget_for: Option<u32>,
    pub(super) known_pods: BTreeSet<String>,
    pub(super) readings: HashMap<String, Scraped>,
    /// Each live pod's first per-stage retained reading: the baseline its growth is measured
    /// from when it is restarted for memory. One entry per live pod.
    pub(super) first_retained: HashMap<String, RetainedSample>,
    pub(super) last_oom: Option<(Instant, String)>,
    /// Problems (Degraded reasons) and one-off notes already published as Events.
    pub(super) reported: BTreeSet<String>,
    /// Whether the last round wrote to a pod: the next one then lists the pods from the API
    /// server rather than the cache, which may not have seen the write yet.
    pub(super) pods_written: bool,
    /// The last worker pod create the API server refused, while no create has succeeded since.
    pub(super) start_refused: Option<super::plan::StartRefusal>,
    /// The key names of the Secrets and the ConfigMap the spec names, at the resource version
    /// they were read at (never a value).
    pub(super) reference_keys: super::observe::KnownKeys,
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

/// What the controller's watches keep, so that a round reads it without asking the API server.
#[derive(Clone)]
pub(super) struct Caches {
    /// Every worker pod (label `app.kubernetes.io/name=migrate-worker`).
    pub(super) pods: Store<Pod>,
    /// The metadata of every Secret: its resource version says whether a value changed.
    pub(super) secrets: Store<PartialObjectMeta<Secret>>,
    /// The metadata of every ConfigMap: whether a job's keyword ConfigMap exists, and when it
    /// changed.
    pub(super) config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub(super) client: Client,
    pub(super) recorder: Recorder,
    pub(super) metrics: Arc<Metrics>,
    pub(super) queues: Arc<dyn QueueBackend>,
    pub(super) http: reqwest::Client,
    pub(super) origin: Instant,
    jobs: Mutex<HashMap<String, JobMemory>>,
    failures: Mutex<HashMap<String, u32>>,
    /// The watches' caches, once their first lists are complete; `None` before (and in tests
    /// without watches): the rounds then ask the API server.
    caches: RwLock<Option<Caches>>,
    /// Redis URLs by `namespace/secret`, with the resource version they were read at.
    redis_urls: Mutex<HashMap<String, (String, String)>>,
    /// The uids of jobs cleaned up, and when: a round for such a job (a cached copy that still
    /// shows the finalizer, woken by its pods going away) has nothing left to do.
    cleaned: Mutex<HashMap<String, Instant>>,
    /// The last PodMetrics list of each namespace and when it was taken (an async lock: the
    /// jobs of a namespace wait for one list instead of sending their own).
    pub(super) pod_metrics: tokio::sync::Mutex<HashMap<String, PodMetricsList>>,
}

/// One namespace's PodMetrics, by pod name, and when they were listed.
pub(super) type PodMetricsList = (Instant, Arc<HashMap<String, PodMemory>>);

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
            caches: RwLock::new(None),
            redis_urls: Mutex::new(HashMap::new()),
            cleaned: Mutex::new(HashMap::new()),
            pod_metrics: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The metrics this context records.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(super) fn set_caches(&self, caches: Option<Caches>) {
        if let Ok(mut slot) = self.caches.write() {
            *slot = caches;
        }
    }

    pub(super) fn caches(&self) -> Option<Caches> {
        self.caches.read().ok().and_then(|c| c.clone())
    }

    /// The Redis URL read from `key` (`namespace/secret`) at resource version `version`.
    pub(super) fn redis_url_at(&self, key: &str, version: &str) -> Option<String> {
        let urls = self.redis_urls.lock().ok()?;
        urls.get(key)
            .filter(|(at, _)| at == version)
            .map(|(_, url)| url.clone())
    }

    pub(super) fn remember_redis_url(&self, key: String, version: String, url: String) {
        if let Ok(mut urls) = self.redis_urls.lock() {
            urls.insert(key, (version, url));
        }
    }

    /// Records that the job with `uid` is cleaned up and its finalizer removed.
    pub(super) fn mark_cleaned(&self, uid: Option<&str>) {
        let (Some(uid), Ok(mut cleaned)) = (uid, self.cleaned.lock()) else {
            return;
        };
        // A cached copy outlives its object by a watch event or two; ten minutes is plenty.
        cleaned.retain(|_, at| at.elapsed() < CLEANED_FOR);
        cleaned.insert(uid.to_owned(), Instant::now());
    }

    /// Whether the job with `uid` was cleaned up already.
    pub(super) fn is_cleaned(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|uid| {
            self.cleaned
                .lock()
                .is_ok_and(|cleaned| cleaned.contains_key(uid))
        })
    }

    pub(super) fn take_memory(&self, key: &str, job: &MigrateJob) -> JobMemory {
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

    pub(super) fn put_memory(&self, key: String, mem: JobMemory) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(key, mem);
        }
    }

    pub(super) fn failed(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_owned()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1)
    }

    pub(super) fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

/// The current time in whole seconds: what the API server stores, so a status read back
/// compares equal.
pub(super) fn now_time() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// `namespace/name`: the key of a job's memory, failures and gauges.
pub(super) fn job_key(job: &MigrateJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}
