//! What the reconcilers share ([`Context`]) and what the controller remembers of each job
//! between two reconciliations ([`JobMemory`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use migrate_crds::{MigrateJob, Phase};

use super::apply::MANAGER;
use super::observe::{MAX_SCRAPE_TIMEOUT, QueueBackend, Scraped};
use super::status::{self, Counters};
use crate::leak::RetainedSample;
use crate::metrics::Metrics;
use crate::policy::PolicyState;

/// What the controller remembers of one job between reconciliations.
#[derive(Debug, Default)]
pub(super) struct JobMemory {
    pub(super) uid: Option<String>,
    pub(super) generation: Option<i64>,
    pub(super) policy: PolicyState,
    pub(super) counters: Counters,
    pub(super) children_generation: Option<i64>,
    pub(super) known_pods: BTreeSet<String>,
    pub(super) readings: HashMap<String, Scraped>,
    /// Each live pod's first per-stage retained reading: the baseline its growth is measured
    /// from when it is restarted for memory. One entry per live pod.
    pub(super) first_retained: HashMap<String, RetainedSample>,
    pub(super) last_oom: Option<(Instant, String)>,
    /// Problems (Degraded reasons) and one-off notes already published as Events.
    pub(super) reported: BTreeSet<String>,
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
    pub(super) client: Client,
    pub(super) recorder: Recorder,
    pub(super) metrics: Arc<Metrics>,
    pub(super) queues: Arc<dyn QueueBackend>,
    pub(super) http: reqwest::Client,
    pub(super) origin: Instant,
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
