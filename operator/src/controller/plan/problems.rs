//! The problems a round reports (the Degraded condition's reasons), from the policy's reports
//! and what was observed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use migrate_crds::{MemorySource, MigrateJob};

use crate::controller::build;
use crate::controller::observe::{self, Observed};
use crate::controller::status::Problem;
use crate::policy::{PolicyState, Report};

/// The Degraded reason of a worker pod the API server refused to create.
pub(in crate::controller) const REASON_POD_REFUSED: &str = "PodCreateRefused";
/// The first wait before a refused pod create is tried again; it doubles up to
/// [`REFUSED_RETRY_MAX`], and an edit of the spec tries again at once.
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two tries of a refused pod create.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(120);

/// A worker pod the API server refused to create (a 4xx other than a conflict or throttling:
/// an invalid field, a quota, an admission policy, a missing PriorityClass): its words, and
/// when to try again. Until then the rounds go on (supervising the pods that run) but create
/// no pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::controller) struct StartRefusal {
    /// What the API server said, with its code and reason.
    pub(in crate::controller) message: String,
    /// Refusals in a row.
    pub(in crate::controller) failures: u32,
    /// No pod create before this.
    pub(in crate::controller) retry_at: Instant,
    /// The job's generation when refused: an edit tries again at once.
    pub(in crate::controller) generation: Option<i64>,
}

impl StartRefusal {
    /// The refusal after `previous` (the wait doubles), at `now`.
    pub(in crate::controller) fn after(
        previous: Option<&StartRefusal>,
        message: String,
        generation: Option<i64>,
        now: Instant,
    ) -> Self {
        let failures = previous
            .filter(|p| p.generation == generation)
            .map_or(1, |p| p.failures.saturating_add(1));
        Self {
            message,
            failures,
            retry_at: now + Self::wait(failures),
            generation,
        }
    }

    /// The wait after `failures` refusals in a row: 2 s, 4 s, 8 s … at most 120 s.
    pub(in crate::controller) fn wait(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        REFUSED_RETRY_FIRST
            .saturating_mul(1 << doublings)
            .min(REFUSED_RETRY_MAX)
    }

    /// Whether a pod create waits at `now` for a job at `generation`.
    pub(in crate::controller) fn waiting(&self, generation: Option<i64>, now: Instant) -> bool {
        self.generation == generation && now < self.retry_at
    }

    /// The Degraded problem: the API server's words and what to do.
    pub(in crate::controller) fn problem(&self, job: &MigrateJob) -> Problem {
        Problem::new(
            REASON_POD_REFUSED,
            format!(
                "the API server refused to create a worker pod: {}. Fix the spec (`kubectl edit migratejob {}`) or what the namespace enforces (quota, admission policy, PriorityClass); no worker starts until then, and the create is tried again with a backoff of up to {} s, at once after an edit",
                self.message,
                job.name_any(),
                REFUSED_RETRY_MAX.as_secs()
            ),
        )
    }
}

/// The API server's words when it refused a write for good (a 4xx other than 404, a conflict
/// or throttling), `None` for an error worth retrying as it is.
pub(in crate::controller) fn refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && ![404, 409, 429].contains(&status.code) =>
        {
            Some(format!(
                "{} ({} {})",
                status.message.trim_end_matches('.'),
                status.code,
                status.reason
            ))
        }
        _ => None,
    }
}

/// The policy's reports, sorted by what each is used for.
#[derive(Debug, Default)]
pub(super) struct Reports {
    pub(super) oom_usage: HashMap<String, Option<u64>>,
    pub(super) throttled: Vec<String>,
    pub(super) stale: Vec<String>,
    pub(super) all_over_soft: Vec<usize>,
}

impl Reports {
    pub(super) fn add(&mut self, report: &Report) {
        match report {
            Report::OomKilled {
                worker,
                last_usage_bytes,
            } => {
                self.oom_usage.insert(worker.clone(), *last_usage_bytes);
            }
            Report::RestartsThrottled { waiting } => self.throttled.clone_from(waiting),
            Report::StaleReading { worker, .. } | Report::MissingReading { worker } => {
                self.stale.push(worker.clone());
            }
            Report::AllOverSoftLimit { workers } => self.all_over_soft.push(*workers),
            _ => {}
        }
    }
}

/// Why the job is Degraded this round, in the order the conditions list them.
pub(super) fn problems(
    job: &MigrateJob,
    observed: &Observed,
    state: &PolicyState,
    last_oom: Option<String>,
    reports: &Reports,
    deleted: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut problems = observed.problems.clone();
    if state.config_error {
        problems.push(Problem::new(
            "WorkerConfigError",
            format!(
                "a worker exited with the configuration error code 78: read its log (`kubectl logs -n {} -l {}`) and fix the spec; no worker starts until the spec changes",
                job.namespace().unwrap_or_default(),
                build::selector(&job.name_any())
            ),
        ));
    }
    if let Some(message) = last_oom {
        problems.push(Problem::new("OomKilled", message));
    }
    if let Some(message) = observed.pods.iter().find_map(observe::unschedulable) {
        problems.push(Problem::new(
            "Unschedulable",
            format!(
                "a worker pod fits no node: {message} It stays Pending for a cluster autoscaler to add a node (it sees the pod's requests); else lower workers.resources.requests or widen workers.nodeSelector, tolerations or affinity"
            ),
        ));
    }
    for workers in &reports.all_over_soft {
        problems.push(Problem::new(
            "AllOverSoftLimit",
            format!(
                "all {workers} workers are above memory.soft at once: the limit is probably too low for the workload rather than a leak; raise workers.resources.limits.memory (restarts go on at memory.maxConcurrentRestarts at a time)"
            ),
        ));
    }
    // Only a Ready worker is expected to answer: one that is Pending or still starting has no
    // reading yet, and Pending pods have their own condition (Unschedulable).
    let ready: BTreeSet<String> = observed
        .pods
        .iter()
        .filter(|p| observe::is_ready(p) && observe::exit_status(p).is_none())
        .map(ResourceExt::name_any)
        .collect();
    let stale: Vec<&str> = reports
        .stale
        .iter()
        .filter(|w| !deleted.contains(*w) && ready.contains(*w))
        .map(String::as_str)
        .collect();
    if !stale.is_empty() || (observed.pod_metrics_error.is_some() && !ready.is_empty()) {
        let from = match job.spec.memory.source {
            MemorySource::Worker => format!(
                "check that the pods are ready and answer /metrics on port {}",
                job.spec.workers.metrics_port
            ),
            MemorySource::PodMetrics => format!(
                "memory.source is PodMetrics: check that metrics-server runs (kubectl top pod -n {}) and refreshes more often than memory.staleAfterSeconds{}",
                job.namespace().unwrap_or_default(),
                observed
                    .pod_metrics_error
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
    problems
}

pub(super) fn oom_message(job: &MigrateJob, worker: &str, usage: Option<u64>) -> String {
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
