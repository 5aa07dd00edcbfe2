//! The problems a round reports (the Degraded condition's reasons), from the policy's reports
//! and what was observed.

use std::collections::{BTreeSet, HashMap};

use kube::ResourceExt;
use migrate_crds::{MemorySource, MigrateJob};

use crate::controller::build;
use crate::controller::observe::{self, Observed};
use crate::controller::status::Problem;
use crate::policy::{PolicyState, Report};

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
    let stale: Vec<&str> = reports
        .stale
        .iter()
        .filter(|w| !deleted.contains(*w))
        .map(String::as_str)
        .collect();
    if !stale.is_empty() || observed.pod_metrics_error.is_some() {
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
