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
use kube::core::{Message, Reason, Rule};
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
#[x_kube(validation = rule(
    "!has(self.replicas) || (has(self.autoscaling) && self.autoscaling == 'External') || self.replicas == 1",
    "'spec.replicas %d is used only with spec.autoscaling: External, where kubectl scale, an HPA or KEDA set it; this job has autoscaling Backlog, so its workers follow the backlog between workers.minReplicas and workers.maxReplicas (set autoscaling: External to set the count)'.format([self.replicas])",
    Reason::FieldValueForbidden,
).field_path(".replicas"))]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::join_doc_lines)]
pub struct MigrateJobSpec {
    /// Drain finishes the job once the queue is empty and nothing is in flight; Continuous keeps
    /// the workers waiting for new ids for as long as the job exists.
    #[serde(default)]
    pub mode: Mode,

    /// Who sets the number of workers. `Backlog` (the default): the operator, from the backlog,
    /// between `workers.minReplicas` and `workers.maxReplicas`; `replicas` stays 1 and is not
    /// used. `External`: `replicas` is the number of workers, set by hand or by `kubectl scale`,
    /// a HorizontalPodAutoscaler or KEDA through the scale subresource.
    #[serde(default)]
    pub autoscaling: Autoscaling,

    /// The number of workers with `autoscaling: External`, read and written through the scale
    /// subresource (`kubectl scale`, an HPA, KEDA). The API server sets it to 1 when it is not
    /// given, so the scale subresource answers from the job's first second. With
    /// `autoscaling: Backlog` it must stay 1: a count that would be ignored is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000), extend("default" = DEFAULT_REPLICAS))]
    pub replicas: Option<i32>,

    /// Where the ids come from: a Redis list that producers LPUSH into.
    pub queue: QueueSpec,

    /// The MySQL queries whose rows compose one document.
    pub source: SourceSpec,

    /// HTTP NLP services called for every document, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".to_owned()]))]
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

/// `spec.replicas` when it is not given: what the API server stores, and what a pipeline file
/// without it means.
pub const DEFAULT_REPLICAS: i32 = 1;

impl MigrateJobSpec {
    /// The number of workers fixed from outside (`autoscaling: External`: `replicas`, or
    /// [`DEFAULT_REPLICAS`] when not given); `None` when the backlog decides.
    #[must_use]
    pub fn fixed_replicas(&self) -> Option<i32> {
        match self.autoscaling {
            Autoscaling::External => Some(self.replicas.unwrap_or(DEFAULT_REPLICAS)),
            Autoscaling::Backlog => None,
        }
    }
}

/// Who sets the number of workers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Autoscaling {
    /// The operator, from the backlog: ceil(backlog / `workers.targetBacklogPerWorker`), between
    /// `workers.minReplicas` and `workers.maxReplicas`.
    #[default]
    Backlog,
    /// Whoever writes `spec.replicas`: a person, `kubectl scale`, a HorizontalPodAutoscaler or
    /// KEDA (through the scale subresource).
    External,
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
    /// Graceful give-backs of one id before it is moved to the dead-letter list `{key}:dead`.
    /// A worker stopped gracefully (drained, recycled, scaled down) puts the ids it still holds
    /// back without using up an attempt, and counts the give-back in `{key}:givebacks`; the
    /// next take of an id given back more often than this dead-letters it with the count, so a
    /// task that always outlasts `workers.terminationGracePeriodSeconds` does not circulate
    /// forever.
    #[serde(default = "default_max_give_backs")]
    #[x_kube(validation = rule(
        "self >= 1 && self <= 1000",
        "'queue.maxGiveBacks %d must be between 1 and 1000'.format([self])",
        Reason::FieldValueInvalid,
    ))]
    pub max_give_backs: u32,
    /// Lifetime of a worker's heartbeat key; a worker whose heartbeat expired is dead and its
    /// processing list is requeued.
    #[serde(default = "default_heartbeat_ttl")]
    #[schemars(range(min = 2, max = 3600))]
    pub heartbeat_ttl_seconds: u32,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_max_give_backs() -> u32 {
    10
}
fn default_heartbeat_ttl() -> u32 {
    15
}

/// The MySQL side: a connection and the queries that compose a document.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Secret key holding the MySQL URL, e.g. `mysql://user:password@mysql:3306/db`.
    pub url_secret_ref: SecretKeyRef,
    /// The queries run for every id. Each takes the id as its one bound parameter (`?`); the
    /// id is never spliced into SQL text.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = rule(
        "self.filter(q, has(q.main) && q.main).size() == 1",
        "'exactly one query must have main: true (its row is the document\\'s top level); found %d: %s'.format([self.filter(q, has(q.main) && q.main).size(), self.filter(q, has(q.main) && q.main).map(q, q.name)])",
        Reason::FieldValueInvalid,
    ))]
    #[x_kube(validation = rule(
        "self.all(q, !has(q.main) || !q.main || !has(q.shape) || q.shape == 'One')",
        "'the main query %s has shape Many; the main query must have shape One'.format([self.filter(q, has(q.main) && q.main && has(q.shape) && q.shape != 'One')[0].name])",
        Reason::FieldValueInvalid,
    ))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".to_owned()]))]
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
#[x_kube(validation = rule(
    "!has(self.pluck) || (has(self.shape) && self.shape == 'Many')",
    "'pluck ' + self.pluck + ' applies only to queries of shape Many; query ' + self.name + ' has shape One'",
    Reason::FieldValueInvalid,
).field_path(".pluck"))]
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
    #[x_kube(validation = rule(
        "self.trim() != ''",
        "'sql is blank; give a query with one ? placeholder for the id'",
        Reason::FieldValueRequired,
    ))]
    #[x_kube(validation = rule(
        "self.trim() == '' || self.contains('?')",
        "'sql ' + (self.size() > 80 ? self.substring(0, 80) + '...' : self) + ' has no ? placeholder for the id'",
        Reason::FieldValueInvalid,
    ))]
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrichEndpoint {
    /// Name used in metrics, logs and dead-letter reasons.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// URL to POST to, `http://` or `https://`. It must not carry credentials (`user:password@`):
    /// the spec is copied into the job's pipeline ConfigMap, and credentials live in Secrets only.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = rule(
        CREDENTIALS_IN_URL_IS_ABSENT,
        &format!("'URL ' + {MASKED_URL} + ' carries credentials (user:password@): the spec is copied into the job\\'s pipeline ConfigMap, and credentials belong in Secrets only'"),
        Reason::FieldValueForbidden,
    ))]
    #[x_kube(validation = rule(
        "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        &format!("'URL ' + {MASKED_URL} + ' is not an http:// or https:// URL with a host'"),
        Reason::FieldValueInvalid,
    ))]
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "!has(self.sets) || self.sets.size() == 0 || has(self.configMap)",
    "'keywords.sets names the keyword files %s, but keywords.configMap, the ConfigMap holding them, is not set'.format([self.sets.map(s, s.file)])",
    Reason::FieldValueRequired,
).field_path(".configMap"))]
pub struct KeywordsSpec {
    /// ConfigMap holding the keyword files, one keyword per line (mounted into the workers;
    /// edits are picked up without a restart). In local mode, a folder with the same files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    /// The keyword sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".to_owned()]))]
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
    /// Key in the ConfigMap (file name in local mode) holding one keyword per line: a plain file
    /// name such as `topics.txt`, made of letters, digits, `-`, `_` and `.`, never a path.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rule(
        "!self.startsWith('/')",
        "'file ' + self + ' is an absolute path; name a key of keywords.configMap, a plain file name such as topics.txt'",
        Reason::FieldValueForbidden,
    ))]
    #[x_kube(validation = rule(
        "!self.matches('(^|/)[.][.](/|$)')",
        "'file ' + self + ' climbs out of the keyword folder with ..; name a key of keywords.configMap, a plain file name such as topics.txt'",
        Reason::FieldValueForbidden,
    ))]
    #[x_kube(validation = rule(
        "self.startsWith('/') || self.matches('(^|/)[.][.](/|$)') || (self != '.' && self.matches('^[-._a-zA-Z0-9]+$'))",
        "'file ' + self + ' is not a ConfigMap key; use letters, digits, -, _ and . only (no /)'",
        Reason::FieldValueInvalid,
    ))]
    pub file: String,
    /// Count: record hits and counts. Blacklist: drop a document with any hit. Whitelist: keep
    /// only documents with at least one hit.
    #[serde(default)]
    pub role: KeywordRole,
    /// Dotted paths of the text fields matched, e.g. `title`, `body`.
    #[serde(default = "default_keyword_fields")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 255)))]
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
#[x_kube(validation = rule(
    "!has(self.usernameSecretRef) || has(self.passwordSecretRef)",
    "'sink.usernameSecretRef (Secret ' + self.usernameSecretRef.name + ') is set without sink.passwordSecretRef; set both or neither'",
    Reason::FieldValueRequired,
).field_path(".passwordSecretRef"))]
#[x_kube(validation = rule(
    "!has(self.passwordSecretRef) || has(self.usernameSecretRef)",
    "'sink.passwordSecretRef (Secret ' + self.passwordSecretRef.name + ') is set without sink.usernameSecretRef; set both or neither'",
    Reason::FieldValueRequired,
).field_path(".usernameSecretRef"))]
#[x_kube(validation = rule(
    "self.batchLingerMs < self.flushIntervalMs",
    "'sink.batchLingerMs %d is not below sink.flushIntervalMs %d, so it would never send a batch; set it below the flush interval'.format([self.batchLingerMs, self.flushIntervalMs])",
    Reason::FieldValueInvalid,
).field_path(".batchLingerMs"))]
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
    /// Most milliseconds a document waits in a partial batch before it is sent. It bounds the
    /// wait of a document when documents trickle in (closer together than `batchLingerMs`,
    /// yet too few to fill a batch): a batch of `batchDocs` fills only when the worker
    /// produces at least `batchDocs` documents in this time (100 documents per second for the
    /// defaults).
    #[serde(default = "default_flush_interval")]
    #[schemars(range(min = 1, max = 60_000))]
    pub flush_interval_ms: u32,
    /// Milliseconds a partial batch waits for its next document: when none arrives in that
    /// time (the flow paused), the batch is sent without waiting for `flushIntervalMs`.
    /// A finished document waits in the batch without holding a `workers.concurrency` slot,
    /// so batches fill to `batchDocs` or `batchBytes` whatever the concurrency, as long as
    /// documents keep coming faster than this. It is also sent at once when the queue is
    /// empty and no task is in progress. Must be less than `flushIntervalMs`.
    #[serde(default = "default_batch_linger")]
    #[schemars(range(min = 1, max = 59_999))]
    pub batch_linger_ms: u32,
    /// Retries of a bulk request or item that failed with 429, 5xx or a connection error.
    #[serde(default = "default_sink_retries")]
    #[schemars(range(min = 0, max = 20))]
    pub retries: u32,
    /// The body of the index creation request, as JSON text (`{"settings": {...},
    /// "mappings": {...}}`): each worker creates `index` with it when it starts and the index
    /// does not exist (of workers starting together, one creates it and the others find it
    /// there). When unset, the index must exist or the server creates it with dynamic mappings
    /// on the first document. An existing index is never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1_048_576))]
    pub create_index: Option<String>,
}

fn default_batch_docs() -> u32 {
    500
}
fn default_batch_bytes() -> u64 {
    5 * 1024 * 1024
}
fn default_flush_interval() -> u32 {
    // Measured: a worker does about 300 documents per second at the default concurrency on
    // a 2-core machine, so 500 documents take 1.7 s; with 1 s, bulks were cut at 60% of
    // `batchDocs`, and small bulks cost the search server twice the CPU per document.
    5_000
}
fn default_batch_linger() -> u32 {
    DEFAULT_BATCH_LINGER_MS
}

/// Default of `sink.batchLingerMs`. Measured with `pipeline-bench` on a 2-core machine under
/// load 13: stages A–D of a task took 29 ms in all (queue 11.7, source 11.8, enrich 5.1,
/// keywords 0.4), so even one task at a time gives the batch a document every 30 ms or so,
/// and a steady flow is never cut by 100 ms; a batch left when the flow stops waits no more
/// than that.
pub const DEFAULT_BATCH_LINGER_MS: u32 = 100;
fn default_sink_retries() -> u32 {
    5
}

/// The worker pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "self.minReplicas <= self.maxReplicas",
    "'workers.minReplicas %d must be less than or equal to workers.maxReplicas %d'.format([self.minReplicas, self.maxReplicas])",
    Reason::FieldValueInvalid,
).field_path(".minReplicas"))]
pub struct WorkersSpec {
    /// Container image of the worker, e.g. `ghcr.io/migrate-operator/worker:0.1.0`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = rule(
        "!self.matches('\\\\s')",
        "'image ' + self + ' contains white space, which no image reference has'",
        Reason::FieldValueInvalid,
    ))]
    pub image: String,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rule(
        "self in ['Always', 'IfNotPresent', 'Never']",
        "'imagePullPolicy ' + self + ' is not one of Always, IfNotPresent, Never'",
        Reason::FieldValueInvalid,
    ))]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits of the worker container, e.g. `limits: {memory: 1Gi}`.
    /// Set `limits.memory`: the memory thresholds given in percent are relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
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
#[x_kube(validation = rule(
    "!(self.soft.matches('^[0-9]{1,3}%$') && self.hard.matches('^[0-9]{1,3}%$')) || int(self.soft.replace('%', '')) < int(self.hard.replace('%', ''))",
    "'memory.soft ' + self.soft + ' must be lower than memory.hard ' + self.hard",
    Reason::FieldValueInvalid,
).field_path(".soft"))]
#[x_kube(validation = rule(
    "!(isQuantity(self.soft) && isQuantity(self.hard)) || quantity(self.soft).isLessThan(quantity(self.hard))",
    "'memory.soft ' + self.soft + ' must be lower than memory.hard ' + self.hard",
    Reason::FieldValueInvalid,
).field_path(".soft"))]
#[x_kube(validation = rule(
    "!has(self.source) || self.source != 'PodMetrics' || !has(self.staleAfterSeconds) || self.staleAfterSeconds >= 30",
    "'memory.staleAfterSeconds %d must be at least 30 with memory.source PodMetrics: metrics-server refreshes a pod\\'s usage every 15 to 60 seconds'.format([self.staleAfterSeconds])",
    Reason::FieldValueInvalid,
).field_path(".staleAfterSeconds"))]
#[x_kube(validation = rule(
    "self.checkIntervalMs <= self.staleAfterSeconds * 1000",
    "'memory.checkIntervalMs %d is longer than memory.staleAfterSeconds (%d s): every reading would be stale before the next one is taken'.format([self.checkIntervalMs, self.staleAfterSeconds])",
    Reason::FieldValueInvalid,
).field_path(".checkIntervalMs"))]
pub struct MemorySpec {
    /// Above this a worker is drained gracefully and replaced (a replacement starts first while
    /// below `workers.maxReplicas`). A percentage of `workers.resources.limits.memory` such as
    /// `80%`, or a Kubernetes quantity with a unit such as `1536Mi`, `1.5Gi`, `2G` or `1e9`
    /// (a bare number such as `800` is refused: it would mean 800 bytes); at least `1Mi`.
    #[serde(default = "default_soft")]
    #[schemars(length(min = 1, max = 24))]
    #[x_kube(validation = threshold_syntax("soft"))]
    #[x_kube(validation = threshold_percent_range("soft"))]
    #[x_kube(validation = threshold_has_a_unit("soft"))]
    #[x_kube(validation = threshold_whole_bytes("soft"))]
    #[x_kube(validation = threshold_minimum("soft"))]
    pub soft: String,
    /// Above this a worker is stopped at once and its in-flight ids are requeued. A percentage
    /// of `workers.resources.limits.memory` such as `92%`, or a Kubernetes quantity with a unit
    /// such as `1792Mi`, `1.75Gi` or `2G`; at least `1Mi`.
    #[serde(default = "default_hard")]
    #[schemars(length(min = 1, max = 24))]
    #[x_kube(validation = threshold_syntax("hard"))]
    #[x_kube(validation = threshold_percent_range("hard"))]
    #[x_kube(validation = threshold_has_a_unit("hard"))]
    #[x_kube(validation = threshold_whole_bytes("hard"))]
    #[x_kube(validation = threshold_minimum("hard"))]
    pub hard: String,
    /// Milliseconds between two memory readings of each worker; at most
    /// `staleAfterSeconds` × 1000, or every reading would be stale before the next.
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

// --- CEL rules shared by several fields --------------------------------------------------------
//
// Each rule sits on the field it checks, so the API server's error names that field
// (`spec.memory.soft: Invalid value: ...`), and its `messageExpression` shows the offending value:
// the API server itself only prints the value's type (`"string"`) for a failed CEL rule.

/// A CEL rule whose failure message is computed from the value (`messageExpression`).
fn rule(expression: &str, message: &str, reason: Reason) -> Rule {
    Rule::new(expression)
        .message(Message::Expression(message.to_owned()))
        .reason(reason)
}

/// A memory threshold that is a bare number (`800`, `1.5`): a quantity without a unit.
const BARE_NUMBER: &str = "'^[+-]?[0-9.]+$'";

/// A rule on a memory threshold (`memory.soft` or `memory.hard`); `BARE` in `expression` stands
/// for [`BARE_NUMBER`], and the message names the field, shows the value and says `why`.
fn threshold_rule(field: &str, expression: &str, why: &str) -> Rule {
    rule(
        &expression.replace("BARE", BARE_NUMBER),
        &format!("'memory.{field} ' + self + '{why}"),
        Reason::FieldValueInvalid,
    )
}

/// A percentage or a Kubernetes quantity.
fn threshold_syntax(field: &str) -> Rule {
    threshold_rule(
        field,
        "self.endsWith('%') || isQuantity(self)",
        " is neither a percentage of the memory limit such as 80% nor a quantity such as 1536Mi'",
    )
}

/// A percentage is a whole number from 1 to 100. The pattern is checked before `int()`, so a
/// value such as `1.5%` gets this message rather than a CEL type conversion error.
fn threshold_percent_range(field: &str) -> Rule {
    threshold_rule(
        field,
        "!self.endsWith('%') || (self.matches('^[0-9]{1,3}%$') && int(self.replace('%', '')) >= 1 && int(self.replace('%', '')) <= 100)",
        " is not a whole percentage between 1% and 100%'",
    )
}

/// A size has a unit: a bare `800` would silently mean 800 bytes.
fn threshold_has_a_unit(field: &str) -> Rule {
    threshold_rule(
        field,
        "!self.matches(BARE)",
        " has no unit, so it would mean ' + self + ' bytes; write a quantity with a unit such as ' + self + 'Mi, or a percentage of the memory limit such as 80%'",
    )
}

/// A size is a whole number of bytes (`100m` is a tenth of a byte, not 100 megabytes). Read
/// from the suffix (`m`, `u`, `n`, a negative exponent): the CEL quantity library's
/// `isInteger()` is false for `1.5Gi`, a whole number of bytes. A rarer fraction such as
/// `1.0001k` is left to `validate`, which the operator runs before any pod starts.
fn threshold_whole_bytes(field: &str) -> Rule {
    threshold_rule(
        field,
        "self.endsWith('%') || !isQuantity(self) || self.matches(BARE) || !(self.matches('[mun]$') || self.matches('[eE]-'))",
        " is not a whole number of bytes' + (self.endsWith('m') ? ' (the m suffix means thousandths of a byte; write ' + self.replace('m', 'M') + ' or ' + self.replace('m', 'Mi') + ')' : '')",
    )
}

/// A size of at least 1Mi: a worker uses more than that before its first task.
fn threshold_minimum(field: &str) -> Rule {
    threshold_rule(
        field,
        "self.endsWith('%') || !isQuantity(self) || self.matches(BARE) || quantity(self).compareTo(quantity('1Mi')) >= 0",
        " is below 1Mi, less than a worker uses before its first task'",
    )
}

/// On an URL field: no `user:password@` before the host.
const CREDENTIALS_IN_URL_IS_ABSENT: &str = "!self.matches('^[a-zA-Z][-a-zA-Z0-9+.]*://[^/?#]*@')";
/// The URL with its user information, when it has any, replaced by `***` (a CEL expression).
const MASKED_URL: &str = "(self.matches('^[a-zA-Z][-a-zA-Z0-9+.]*://[^/?#]*@') ? self.substring(0, self.indexOf('://') + 3) + '***@' + self.substring(self.indexOf('@') + 1) : self)";

/// The schema of `workers.resources`: the `requests` and `limits` of Kubernetes'
/// `ResourceRequirements`, written here instead of embedded so that every value is checked as a
/// quantity at admission (the embedded schema takes any string, and the pod create fails later)
/// and bounded in length (CEL refuses rules whose cost it cannot bound), with short descriptions
/// instead of the long ones of the Kubernetes type. `claims` is left out: workers use none.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = |what: &str| {
        serde_json::json!({
            "description": format!("{what}, by resource name (`cpu`, `memory`, `ephemeral-storage`, ...)."),
            "type": "object",
            "maxProperties": 16,
            "additionalProperties": {
                "description": "A Kubernetes quantity such as `500m` (CPU) or `1536Mi`, `1.5Gi`, `2G` (memory).",
                "x-kubernetes-int-or-string": true,
                "maxLength": 64,
                "x-kubernetes-validations": [{
                    "rule": "type(self) == int || isQuantity(self)",
                    "messageExpression": "'%s is not a Kubernetes quantity such as 500m or 1536Mi'.format([self])",
                    "reason": "FieldValueInvalid"
                }]
            }
        })
    };
    // Map values are read by index (`self.limits['memory']`): CEL bounds the cost of that, not
    // of `self.limits.memory`.
    let limit = "self.limits['memory']";
    let limit_is_size = format!(
        "!has(self.limits) || !('memory' in self.limits) || type({limit}) == int || !isQuantity({limit})"
    );
    let over_limit = "self.requests.filter(k, k in self.limits && type(self.requests[k]) == string && type(self.limits[k]) == string && isQuantity(self.requests[k]) && isQuantity(self.limits[k]) && quantity(self.requests[k]).compareTo(quantity(self.limits[k])) > 0)";
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "limits": quantities("Most of each resource the worker container may use"),
            "requests": quantities("Resources reserved for the worker container when it is scheduled")
        },
        "x-kubernetes-validations": [
            {
                "rule": format!("{limit_is_size} || !({limit}.matches('[mun]$') || {limit}.matches('[eE]-'))"),
                "messageExpression": format!("'%s is not a whole number of bytes%s'.format([{limit}, {limit}.endsWith('m') ? ' (the m suffix means thousandths of a byte; write ' + {limit}.replace('m', 'M') + ' or ' + {limit}.replace('m', 'Mi') + ')' : ''])"),
                "fieldPath": ".limits['memory']",
                "reason": "FieldValueInvalid"
            },
            {
                "rule": format!("{limit_is_size} || quantity({limit}).compareTo(quantity('16Mi')) >= 0"),
                "messageExpression": format!("'%s is below 16Mi, too little for a worker to start'.format([{limit}])"),
                "fieldPath": ".limits['memory']",
                "reason": "FieldValueInvalid"
            },
            {
                "rule": format!("!has(self.requests) || !has(self.limits) || {over_limit}.size() == 0"),
                "messageExpression": format!("{over_limit}.map(k, 'requests.%s %s is above limits.%s %s; Kubernetes refuses a pod whose request exceeds its limit'.format([k, self.requests[k], k, self.limits[k]]))[0]"),
                "fieldPath": ".requests",
                "reason": "FieldValueInvalid"
            }
        ]
    })
}
