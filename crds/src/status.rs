//! The `MigrateJob` status: what the operator observed, in terms a person can act on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator last observed of a MigrateJob.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::join_doc_lines)]
pub struct MigrateJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary of the job's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, Progressing, Degraded and Complete, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist (read by the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Workers the operator wants now, from the backlog or the scale subresource.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Label selector of the job's worker pods, in string form (read by the scale subresource,
    /// HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ids waiting in the queue plus ids in flight.
    #[serde(default)]
    pub backlog: i64,
    /// Ids taken by a worker and not yet acknowledged.
    #[serde(default)]
    pub in_flight: i64,
    /// Documents indexed.
    #[serde(default)]
    pub processed: i64,
    /// Task attempts that failed and were retried.
    #[serde(default)]
    pub failed: i64,
    /// Ids moved to the dead-letter list.
    #[serde(default)]
    pub dead_lettered: i64,
    /// Documents dropped by a blacklist or whitelist.
    #[serde(default)]
    pub filtered: i64,
    /// Ids put back on the queue because the worker holding them died.
    #[serde(default)]
    pub requeued: i64,
    /// Worker restarts by reason.
    #[serde(default)]
    pub restarts: RestartCounts,
    /// The most recent worker restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<LastRestart>,
    /// The pipeline stage whose retained memory grows, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak: Option<LeakReport>,
    /// Which memory figure the workers' thresholds are compared with, by the workers and the
    /// operator alike: `cgroupWorkingSet` (the working set of each worker's own cgroup, as in
    /// a pod) or `rss` (a worker without a cgroup of its own). `rss` when workers differ;
    /// absent until a worker has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<MemoryFigureSource>,
}

/// A memory figure compared with a worker's thresholds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MemoryFigureSource {
    /// The working set of the worker's own memory cgroup: usage minus the inactive page
    /// cache, what the kubelet evicts on.
    CgroupWorkingSet,
    /// The worker process's resident set size.
    Rss,
}

/// One-word summary of a MigrateJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; workers are being started.
    Pending,
    /// Workers are processing ids.
    Running,
    /// Drain mode, the queue is empty, and the job waits for the settle period.
    Draining,
    /// Drain mode finished: every id was processed or dead-lettered, the workers are gone.
    Complete,
    /// The spec or an external dependency is wrong; see the Degraded condition.
    Degraded,
}

/// Worker restarts counted by reason. The reasons are the same in status, Events and metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartCounts {
    /// Every restart, whatever its reason.
    #[serde(default)]
    pub total: i64,
    /// Drained gracefully after crossing the soft memory limit.
    #[serde(default)]
    pub memory_soft: i64,
    /// Stopped at once after crossing the hard memory limit.
    #[serde(default)]
    pub memory_hard: i64,
    /// Drained after its configured number of tasks.
    #[serde(default)]
    pub recycled: i64,
    /// Killed by the kernel's OOM killer (should stay at zero; see the Degraded condition).
    #[serde(default)]
    pub oom_killed: i64,
    /// Exited with an unexpected code or signal.
    #[serde(default)]
    pub crashed: i64,
    /// Evicted by the node or the API.
    #[serde(default)]
    pub evicted: i64,
    /// Stopped because fewer workers were needed.
    #[serde(default)]
    pub scaled_down: i64,
    /// Drained and replaced because the spec changed after it started (a rolling update).
    #[serde(default)]
    pub updated: i64,
}

/// The most recent worker restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRestart {
    /// The worker (pod or process) that was restarted.
    pub worker: String,
    /// One of memory-soft, memory-hard, recycled, oom-killed, crashed, evicted, scaled-down,
    /// updated.
    pub reason: String,
    /// The worker's memory when the decision was taken, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// When the restart was decided.
    pub time: Time,
}

/// The pipeline stage whose retained memory grows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeakReport {
    /// Stage name: queue, source, enrich, keywords or sink.
    pub stage: String,
    /// Bytes the stage retained over the window.
    pub retained_bytes: i64,
    /// Tasks over which the growth was seen.
    pub over_tasks: i64,
    /// A sentence for people, e.g. "stage enrich retained +38 MiB over 2,000 tasks".
    pub message: String,
}
