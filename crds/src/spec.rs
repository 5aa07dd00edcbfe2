//! The `MigrateJob` spec: everything one job needs, from the Redis queue to the search index.
//!
//! The same types are the worker's pipeline file, so the custom resource and the worker can
//! never disagree about a field.

// kube's `printcolumn(...)` repeats `type_ = "integer"` across columns, which clippy mistakes
// for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::MigrateJobStatus;

/// API group of every resource this project defines.
pub const GROUP: &str = "migrate-operator.io";
/// API version of [`MigrateJob`].
pub const VERSION: &str = "v1alpha1";

/// A MigrateJob moves records named by ids in a Redis list from MySQL into a search index,
/// enriching them on the way, with a supervised, autoscaled pool of workers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "migrate-operator.io",
    version = "v1alpha1",
    kind = "MigrateJob",
    namespaced,
    shortname = "mj",
    category = "migrate",
    status = "MigrateJobStatus",
    derive = "PartialEq",
    doc = "A MigrateJob moves records named by ids in a Redis list from MySQL into a search index, enriching them on the way, with a supervised, autoscaled pool of workers.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Workers that are ready"
    ),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.backlog",
        description = "Ids waiting in the queue plus ids in flight"
    ),
    printcolumn(name = "Processed", type_ = "integer", json_path = ".status.processed"),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restarts.total",
        description = "Worker restarts of every reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.replicas) || self.replicas <= 1000"
).message("replicas must be between 0 and 1000"))]
#[serde(rename_all = "camelCase")]
pub struct MigrateJobSpec {
    /// Drain finishes the job once the queue is empty and nothing is in flight; Continuous keeps
    /// the workers waiting for new ids for as long as the job exists.
    #[serde(default)]
    pub mode: Mode,

    /// Fixed number of workers, written by `kubectl scale`, an HPA or KEDA through the scale
    /// subresource. While set it wins over the backlog-based autoscaling between
    /// `workers.minReplicas` and `workers.maxReplicas`; remove the field to hand control back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Where the ids come from: a Redis list that producers LPUSH into.
    pub queue: QueueSpec,

    /// The MySQL queries whose rows compose one document.
    pub source: SourceSpec,

    /// HTTP NLP services called for every document, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub enrich: Vec<EnrichEndpoint>,

    /// Keyword matching, black/white-list filtering and the summary.
    #[serde(default)]
    pub keywords: KeywordsSpec,

    /// The Elasticsearch-compatible index the documents are written to.
    pub sink: SinkSpec,

    /// The worker pool: image, resources, autoscaling bounds and recycling.
    pub workers: WorkersSpec,

    /// Memory supervision: when a worker is drained and replaced before the kernel kills it.
    #[serde(default)]
    pub memory: MemorySpec,

    /// Knobs that exist only to test the supervision. Never set them in production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_only: Option<TestOnlySpec>,
}

/// How a job ends.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// Finish when the queue is empty and nothing is in flight for `workers.drainSettleSeconds`.
    Drain,
    /// Never finish; keep at least `workers.minReplicas` workers waiting for ids.
    #[default]
    Continuous,
}

/// A reference to one key of a Kubernetes Secret in the job's namespace. Secret values never
/// appear in a MigrateJob; workers receive them as environment variables via `secretKeyRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Redis list the ids come from, and the keys derived from it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Secret key holding the Redis URL, e.g. `redis://:password@redis:6379/0`.
    pub url_secret_ref: SecretKeyRef,
    /// The list producers LPUSH ids into. Every other key of the job is derived from it:
    /// `{key}:processing:{worker}`, `{key}:dead`, `{key}:counts`, `{key}:stats`, ...
    #[schemars(length(min = 1, max = 200))]
    pub key: String,
    /// Deliveries of one id before it is moved to the dead-letter list `{key}:dead`.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Lifetime of a worker's heartbeat key; a worker whose heartbeat expired is dead and its
    /// processing list is requeued.
    #[serde(default = "default_heartbeat_ttl")]
    #[schemars(range(min = 2, max = 3600))]
    pub heartbeat_ttl_seconds: u32,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_heartbeat_ttl() -> u32 {
    15
}

/// The MySQL side: a connection and the queries that compose a document.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "self.queries.filter(q, has(q.main) && q.main).size() == 1"
).message("exactly one query must have main: true; its row is the document's top level"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.queries.all(q, !has(q.main) || !q.main || !has(q.shape) || q.shape == 'One')"
).message("the main query must have shape One"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.queries.all(q, self.queries.exists_one(r, r.name == q.name))"
).message("query names must be unique"))]
pub struct SourceSpec {
    /// Secret key holding the MySQL URL, e.g. `mysql://user:password@mysql:3306/db`.
    pub url_secret_ref: SecretKeyRef,
    /// The queries run for every id. Each takes the id as its one bound parameter (`?`); the
    /// id is never spliced into SQL text.
    #[schemars(length(min = 1, max = 16))]
    pub queries: Vec<SourceQuery>,
    /// What to do with an id whose main query returns no row.
    #[serde(default)]
    pub on_missing_row: MissingRowPolicy,
    /// Most connections one worker opens to MySQL.
    #[serde(default = "default_pool_max")]
    #[schemars(range(min = 1, max = 256))]
    pub pool_max: u32,
    /// Most seconds one query may take before the task is retried.
    #[serde(default = "default_query_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub query_timeout_seconds: u32,
}

fn default_pool_max() -> u32 {
    8
}
fn default_query_timeout() -> u32 {
    30
}

/// One named, parameterised query.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.sql.trim() != ''")
    .message("sql must not be empty"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.pluck) || !has(self.shape) || self.shape == 'Many'")
    .message("pluck applies only to queries of shape Many"))]
pub struct SourceQuery {
    /// Field of the document the result is stored under (ignored for the main query, whose
    /// columns become the document's top-level fields).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// SQL text with exactly one `?` placeholder for the id.
    #[schemars(length(min = 1, max = 8192))]
    pub sql: String,
    /// One: the first row as an object (null when there is none). Many: every row, as an array.
    #[serde(default)]
    pub shape: QueryShape,
    /// The main query: its row is the document's top level, and no row means the id is missing.
    #[serde(default)]
    pub main: bool,
    /// For shape Many: keep only this column, giving an array of values instead of objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub pluck: Option<String>,
}

/// How rows become JSON.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum QueryShape {
    /// The first row as an object, or null.
    #[default]
    One,
    /// Every row, as an array.
    Many,
}

/// What to do with an id whose main row does not exist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MissingRowPolicy {
    /// Acknowledge the id and count it as skipped.
    Skip,
    /// Move the id to the dead-letter list with the reason.
    #[default]
    DeadLetter,
}

/// One HTTP NLP service. The worker POSTs `{"text": <input field>}` and stores the JSON reply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichEndpoint {
    /// Name used in metrics, logs and dead-letter reasons.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// URL to POST to.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Dotted path of the document field sent as `text`, e.g. `body`.
    #[schemars(length(min = 1, max = 255))]
    pub input_field: String,
    /// Dotted path of the document field the reply is stored in, e.g. `nlp.segments`.
    #[schemars(length(min = 1, max = 255))]
    pub output_field: String,
    /// JSON pointer into the reply selecting the part to store (the whole reply when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub response_pointer: Option<String>,
    /// Most milliseconds one call may take.
    #[serde(default = "default_enrich_timeout")]
    #[schemars(range(min = 10, max = 600_000))]
    pub timeout_ms: u32,
    /// Retries after a timeout, a connection error or a 5xx/429 reply (4xx are not retried).
    #[serde(default = "default_enrich_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: u32,
    /// Most calls to this endpoint in flight from one worker at once.
    #[serde(default = "default_enrich_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent: u32,
    /// What to do when the call still fails after its retries.
    #[serde(default)]
    pub on_failure: EnrichFailurePolicy,
}

fn default_enrich_timeout() -> u32 {
    2_000
}
fn default_enrich_retries() -> u32 {
    2
}
fn default_enrich_concurrency() -> u32 {
    8
}

/// What happens to a task whose NLP call failed for good.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EnrichFailurePolicy {
    /// Put the id back for another delivery (counts towards `queue.maxAttempts`).
    #[default]
    RetryTask,
    /// Index the document without this field.
    SkipField,
    /// Move the id to the dead-letter list at once.
    DeadLetter,
}

/// Keyword sets, filters and the summary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeywordsSpec {
    /// ConfigMap holding the keyword files, one keyword per line (mounted into the workers;
    /// edits are picked up without a restart). In local mode, a folder with the same files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    /// The keyword sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub sets: Vec<KeywordSet>,
    /// A summary cut at a sentence end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummarySpec>,
}

/// One keyword set, built once into an automaton.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeywordSet {
    /// Name of the set; hits are stored under `keywords.<name>` in the document.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Key in the ConfigMap (file name in local mode) holding one keyword per line.
    #[schemars(length(min = 1, max = 253))]
    pub file: String,
    /// Count: record hits and counts. Blacklist: drop a document with any hit. Whitelist: keep
    /// only documents with at least one hit.
    #[serde(default)]
    pub role: KeywordRole,
    /// Dotted paths of the text fields matched, e.g. `title`, `body`.
    #[serde(default = "default_keyword_fields")]
    #[schemars(length(min = 1, max = 16))]
    pub fields: Vec<String>,
    /// Match ASCII letters without regard to case (non-ASCII text is matched exactly).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Only count a match not adjoined by an ASCII letter or digit on either side.
    #[serde(default)]
    pub whole_words: bool,
    /// Accumulate per-keyword counts into the Redis hash `{queue.key}:counts`, exactly once per
    /// task even when a task is replayed.
    #[serde(default = "default_true")]
    pub count: bool,
}

fn default_keyword_fields() -> Vec<String> {
    vec!["title".to_owned(), "body".to_owned()]
}
fn default_true() -> bool {
    true
}

/// What a keyword set is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeywordRole {
    /// Record hits in the document and count them.
    #[default]
    Count,
    /// Drop any document with a hit (counted as blacklisted, acknowledged, not indexed).
    Blacklist,
    /// Drop any document without a hit.
    Whitelist,
}

/// A summary of one text field, cut at a sentence end within a character limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummarySpec {
    /// Dotted path of the text to summarise.
    #[serde(default = "default_summary_input")]
    #[schemars(length(min = 1, max = 255))]
    pub input_field: String,
    /// Dotted path the summary is stored in.
    #[serde(default = "default_summary_output")]
    #[schemars(length(min = 1, max = 255))]
    pub output_field: String,
    /// Most characters (Unicode scalar values) of the summary.
    #[serde(default = "default_summary_chars")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_chars: u32,
}

fn default_summary_input() -> String {
    "body".to_owned()
}
fn default_summary_output() -> String {
    "summary".to_owned()
}
fn default_summary_chars() -> u32 {
    200
}

/// The search index.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.usernameSecretRef) == has(self.passwordSecretRef)"
).message("usernameSecretRef and passwordSecretRef must be set together"))]
pub struct SinkSpec {
    /// Secret key holding the Elasticsearch/OpenSearch URL, e.g. `https://es:9200`.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the basic-auth user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Index the documents are written to; the document `_id` is the task id, so a replay
    /// overwrites instead of duplicating.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9][a-z0-9._-]*$"))]
    pub index: String,
    /// Most documents in one bulk request.
    #[serde(default = "default_batch_docs")]
    #[schemars(range(min = 1, max = 10_000))]
    pub batch_docs: u32,
    /// Most bytes of one bulk request body.
    #[serde(default = "default_batch_bytes")]
    #[schemars(range(min = 1024, max = 104_857_600))]
    pub batch_bytes: u64,
    /// Most milliseconds a document waits in a partial batch before it is sent.
    #[serde(default = "default_flush_interval")]
    #[schemars(range(min = 1, max = 60_000))]
    pub flush_interval_ms: u32,
    /// Retries of a bulk request or item that failed with 429, 5xx or a connection error.
    #[serde(default = "default_sink_retries")]
    #[schemars(range(min = 0, max = 20))]
    pub retries: u32,
}

fn default_batch_docs() -> u32 {
    500
}
fn default_batch_bytes() -> u64 {
    5 * 1024 * 1024
}
fn default_flush_interval() -> u32 {
    1_000
}
fn default_sink_retries() -> u32 {
    5
}

/// The worker pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas")
    .message("workers.minReplicas must be less than or equal to workers.maxReplicas"))]
pub struct WorkersSpec {
    /// Container image of the worker.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits of the worker container. Set `limits.memory`: the
    /// memory thresholds given in percent are relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass of the worker pods (`priorityClassName`), e.g. a low one that a cluster
    /// autoscaler's overprovisioning pods or more urgent work may preempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Labels a node must carry to run a worker pod (`nodeSelector`), e.g. a node group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the worker pods tolerate, e.g. those of a dedicated or spot node group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod affinity and anti-affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the worker pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Fewest workers while the job runs (also while the queue is empty in Continuous mode).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most workers the backlog may ask for.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Backlog (queued plus in-flight ids) one worker is expected to handle; desired workers
    /// = clamp(ceil(backlog / targetBacklogPerWorker), minReplicas, maxReplicas).
    #[serde(default = "default_target_backlog")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_worker: i64,
    /// Seconds the backlog must ask for fewer workers before any is stopped.
    #[serde(default = "default_scale_down_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: u32,
    /// Tasks one worker has in flight at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 4096))]
    pub concurrency: u32,
    /// Recycle a worker (drain and replace it) after this many tasks; unset means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub recycle_after_tasks: Option<u64>,
    /// Random spread, in percent, of each worker's recycle count, so workers don't recycle
    /// together.
    #[serde(default = "default_recycle_jitter")]
    #[schemars(range(min = 0, max = 50))]
    pub recycle_jitter_percent: u32,
    /// Seconds a worker gets to finish and acknowledge its in-flight tasks after SIGTERM.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: i64,
    /// Drain mode: seconds the queue must stay empty with nothing in flight before the job is
    /// Complete.
    #[serde(default = "default_drain_settle")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_settle_seconds: u32,
    /// Port of the worker's `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics_port: u16,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_target_backlog() -> i64 {
    1_000
}
fn default_scale_down_window() -> u32 {
    60
}
fn default_concurrency() -> u32 {
    16
}
fn default_recycle_jitter() -> u32 {
    10
}
fn default_grace() -> i64 {
    30
}
fn default_drain_settle() -> u32 {
    5
}
fn default_metrics_port() -> u16 {
    9000
}

/// Memory supervision. A threshold is a percentage of the container's memory limit (`80%`) or
/// an absolute size in bytes with an optional Kubernetes suffix (`1536Mi`, `2G`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!self.soft.endsWith('%') || (int(self.soft.replace('%', '')) >= 1 && int(self.soft.replace('%', '')) <= 100)"
).message("memory.soft in percent must be between 1% and 100%"))]
#[x_kube(validation = kube::core::Rule::new(
    "!self.hard.endsWith('%') || (int(self.hard.replace('%', '')) >= 1 && int(self.hard.replace('%', '')) <= 100)"
).message("memory.hard in percent must be between 1% and 100%"))]
#[x_kube(validation = kube::core::Rule::new(
    "!(self.soft.endsWith('%') && self.hard.endsWith('%')) || int(self.soft.replace('%', '')) < int(self.hard.replace('%', ''))"
).message("memory.soft must be lower than memory.hard"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.soft.endsWith('%') || self.hard.endsWith('%') || quantity(self.soft).isLessThan(quantity(self.hard))"
).message("memory.soft must be lower than memory.hard"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.source) || self.source != 'PodMetrics' || !has(self.staleAfterSeconds) || self.staleAfterSeconds >= 30"
).message("memory.staleAfterSeconds must be at least 30 with memory.source PodMetrics: metrics-server refreshes a pod's usage every 15 to 60 seconds"))]
pub struct MemorySpec {
    /// Above this a worker is drained gracefully and replaced (a replacement starts first
    /// while below `workers.maxReplicas`). Percent of the memory limit, or bytes.
    #[serde(default = "default_soft")]
    #[schemars(
        length(min = 1, max = 24),
        regex(pattern = r"^[0-9]+(%|Ki|Mi|Gi|Ti|k|M|G|T)?$")
    )]
    pub soft: String,
    /// Above this a worker is stopped at once and its in-flight ids are requeued. Percent of the
    /// memory limit, or bytes.
    #[serde(default = "default_hard")]
    #[schemars(
        length(min = 1, max = 24),
        regex(pattern = r"^[0-9]+(%|Ki|Mi|Gi|Ti|k|M|G|T)?$")
    )]
    pub hard: String,
    /// Milliseconds between two memory readings of each worker.
    #[serde(default = "default_check_interval")]
    #[schemars(range(min = 100, max = 600_000))]
    pub check_interval_ms: u32,
    /// Most memory restarts in progress at once; when every worker is over the line at the
    /// same time the rest wait (and a condition says so) instead of a restart storm.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrent_restarts: u32,
    /// A worker younger than this is not restarted for memory below the hard limit.
    #[serde(default = "default_min_age")]
    #[schemars(range(min = 0, max = 86_400))]
    pub min_worker_age_seconds: u32,
    /// A reading older than this is stale: reported, never acted on.
    #[serde(default = "default_stale_after")]
    #[schemars(range(min = 1, max = 3600))]
    pub stale_after_seconds: u32,
    /// Where the operator reads each worker's memory from: `Worker` (the default: the worker's
    /// own `/metrics` at its pod IP every `checkIntervalMs`, fresh to the second) or
    /// `PodMetrics` (the `metrics.k8s.io` API served by metrics-server: refreshed every 15 to 60
    /// seconds, so a leak is seen later; for clusters where the operator cannot reach pod IPs;
    /// needs `staleAfterSeconds` of at least 30). Local mode always reads `/proc`.
    #[serde(default)]
    pub source: MemorySource,
}

/// Where the operator reads a worker's memory from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MemorySource {
    /// The worker's own `/metrics` at its pod IP, every `checkIntervalMs`: the larger of its
    /// RSS and its cgroup's usage, fresh to the second. The default.
    #[default]
    Worker,
    /// The `metrics.k8s.io` API (metrics-server): the container's working set, refreshed every
    /// 15 to 60 seconds, so a leak is seen later; for clusters where the operator cannot reach
    /// pod IPs. Needs `staleAfterSeconds` of at least 30. The workers' `/metrics` is still read
    /// when reachable, for the task counts and the leaking stage.
    PodMetrics,
}

impl Default for MemorySpec {
    fn default() -> Self {
        Self {
            soft: default_soft(),
            hard: default_hard(),
            check_interval_ms: default_check_interval(),
            max_concurrent_restarts: default_max_restarts(),
            min_worker_age_seconds: default_min_age(),
            stale_after_seconds: default_stale_after(),
            source: MemorySource::default(),
        }
    }
}

fn default_soft() -> String {
    "80%".to_owned()
}
fn default_hard() -> String {
    "92%".to_owned()
}
fn default_check_interval() -> u32 {
    1_000
}
fn default_max_restarts() -> u32 {
    1
}
fn default_min_age() -> u32 {
    10
}
fn default_stale_after() -> u32 {
    10
}

/// Knobs for tests of the supervision. They make a worker misbehave on purpose.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestOnlySpec {
    /// TEST ONLY: bytes each task leaks on purpose (never freed).
    #[serde(default)]
    pub leak_bytes_per_task: u64,
    /// TEST ONLY: the stage the leak is charged to (queue, source, enrich, keywords, sink).
    #[serde(default = "default_leak_stage")]
    #[schemars(length(min = 1, max = 32))]
    pub leak_stage: String,
    /// TEST ONLY: no restart for memory: neither the operator nor the worker drains or stops a
    /// worker at memory.soft or memory.hard (readings are still taken and reported), so a leak
    /// runs into the kernel's OOM killer. The control run that shows what supervision prevents.
    #[serde(default)]
    pub no_memory_restarts: bool,
}

fn default_leak_stage() -> String {
    "enrich".to_owned()
}
