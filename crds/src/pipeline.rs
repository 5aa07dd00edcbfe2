//! The worker's pipeline file: a `MigrateJob` manifest or its bare spec, as YAML.

use std::path::Path;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::spec::{
    Autoscaling, EnrichEndpoint, EnrichFailurePolicy, KeywordRole, KeywordSet, KeywordsSpec,
    MemorySpec, MigrateJob, MigrateJobSpec, MissingRowPolicy, Mode, QueryShape, QueueSpec,
    SecretKeyRef, SinkSpec, SourceQuery, SourceSpec, SummarySpec, WorkersSpec,
};

/// Why a pipeline file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read.
    #[error("cannot read pipeline file {path}")]
    Read {
        /// The path tried.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is neither a MigrateJob nor a MigrateJob spec.
    #[error("pipeline file {path} is neither a MigrateJob nor a MigrateJob spec: {message}")]
    Parse {
        /// The path read.
        path: String,
        /// What the parser said (field and line).
        message: String,
    },
    /// The spec could not be written as YAML.
    #[error("cannot write the pipeline as YAML")]
    Write(#[source] serde_saphyr::ser_error::Error),
}

/// Reads a pipeline from YAML text: a whole `MigrateJob` manifest (as applied to a cluster) or
/// only its `spec`. `origin` names the text in errors.
///
/// # Errors
/// [`PipelineError::Parse`] naming the field that failed.
pub fn from_yaml(origin: &str, text: &str) -> Result<MigrateJobSpec, PipelineError> {
    let looks_like_manifest = text
        .lines()
        .any(|l| l.starts_with("kind:") || l.starts_with("spec:"));
    let parsed = if looks_like_manifest {
        serde_saphyr::from_str::<MigrateJob>(text).map(|job| job.spec)
    } else {
        serde_saphyr::from_str::<MigrateJobSpec>(text)
    };
    parsed.map_err(|e| PipelineError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Reads a pipeline file.
///
/// # Errors
/// [`PipelineError`] when the file cannot be read or parsed.
pub fn load(path: &Path) -> Result<MigrateJobSpec, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_yaml(&path.display().to_string(), &text)
}

/// Writes a spec as the YAML the worker reads (the operator puts it in a ConfigMap).
///
/// # Errors
/// [`PipelineError::Write`] if serialisation fails.
pub fn to_yaml(spec: &MigrateJobSpec) -> Result<String, PipelineError> {
    serde_saphyr::to_string(spec).map_err(PipelineError::Write)
}

/// A complete, valid spec shaped like the reference job: articles with tags and an author,
/// one NLP call, a counted keyword set and a blacklist. Used by examples and tests.
#[must_use]
pub fn example_spec() -> MigrateJobSpec {
    let secret = |name: &str, key: &str| SecretKeyRef {
        name: name.to_owned(),
        key: key.to_owned(),
    };
    MigrateJobSpec {
        mode: Mode::Drain,
        autoscaling: Autoscaling::Backlog,
        replicas: None,
        queue: QueueSpec {
            url_secret_ref: secret("migrate-redis", "url"),
            key: "articles".to_owned(),
            max_attempts: 3,
            max_give_backs: 10,
            heartbeat_ttl_seconds: 15,
        },
        source: SourceSpec {
            url_secret_ref: secret("migrate-mysql", "url"),
            queries: vec![
                SourceQuery {
                    name: "article".to_owned(),
                    sql: "SELECT id, title, body, author_id, published_at FROM article WHERE id = ?".to_owned(),
                    shape: QueryShape::One,
                    main: true,
                    pluck: None,
                },
                SourceQuery {
                    name: "tags".to_owned(),
                    sql: "SELECT tag FROM article_tag WHERE article_id = ? ORDER BY tag".to_owned(),
                    shape: QueryShape::Many,
                    main: false,
                    pluck: Some("tag".to_owned()),
                },
                SourceQuery {
                    name: "author".to_owned(),
                    sql: "SELECT au.id, au.name FROM author au JOIN article a ON a.author_id = au.id WHERE a.id = ?".to_owned(),
                    shape: QueryShape::One,
                    main: false,
                    pluck: None,
                },
            ],
            on_missing_row: MissingRowPolicy::DeadLetter,
            pool_max: 8,
            query_timeout_seconds: 30,
        },
        enrich: vec![EnrichEndpoint {
            name: "segment".to_owned(),
            url: "http://127.0.0.1:8090/segment".to_owned(),
            input_field: "title".to_owned(),
            output_field: "nlp.title_tokens".to_owned(),
            response_pointer: Some("/tokens".to_owned()),
            timeout_ms: 2_000,
            retries: 2,
            max_concurrent: 8,
            on_failure: EnrichFailurePolicy::DeadLetter,
        }],
        keywords: KeywordsSpec {
            config_map: Some("migrate-keywords".to_owned()),
            sets: vec![
                KeywordSet {
                    name: "topics".to_owned(),
                    file: "topics.txt".to_owned(),
                    role: KeywordRole::Count,
                    fields: vec!["title".to_owned(), "body".to_owned()],
                    case_insensitive: false,
                    whole_words: false,
                    count: true,
                },
                KeywordSet {
                    name: "blocked".to_owned(),
                    file: "blacklist.txt".to_owned(),
                    role: KeywordRole::Blacklist,
                    fields: vec!["title".to_owned(), "body".to_owned()],
                    case_insensitive: false,
                    whole_words: false,
                    count: false,
                },
            ],
            summary: Some(SummarySpec {
                input_field: "body".to_owned(),
                output_field: "summary".to_owned(),
                max_chars: 120,
            }),
        },
        sink: SinkSpec {
            url_secret_ref: secret("migrate-search", "url"),
            username_secret_ref: None,
            password_secret_ref: None,
            index: "articles".to_owned(),
            batch_docs: 500,
            batch_bytes: 5 * 1024 * 1024,
            flush_interval_ms: 5_000,
            batch_linger_ms: 100,
            retries: 5,
            create_index: None,
        },
        workers: WorkersSpec {
            image: "ghcr.io/migrate-operator/worker:0.1.0".to_owned(),
            image_pull_policy: None,
            resources: Some(ResourceRequirements {
                limits: Some([("memory".to_owned(), Quantity("1Gi".to_owned()))].into()),
                requests: Some(
                    [
                        ("memory".to_owned(), Quantity("512Mi".to_owned())),
                        ("cpu".to_owned(), Quantity("500m".to_owned())),
                    ]
                    .into(),
                ),
                ..ResourceRequirements::default()
            }),
            priority_class_name: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            topology_spread_constraints: None,
            min_replicas: 1,
            max_replicas: 4,
            target_backlog_per_worker: 1_000,
            scale_down_stabilization_seconds: 60,
            concurrency: 16,
            recycle_after_tasks: Some(50_000),
            recycle_jitter_percent: 10,
            termination_grace_period_seconds: 30,
            drain_settle_seconds: 5,
            metrics_port: 9000,
        },
        memory: MemorySpec::default(),
        test_only: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_through_yaml() {
        let spec = example_spec();
        let yaml = to_yaml(&spec).unwrap();
        assert_eq!(from_yaml("test", &yaml).unwrap(), spec);
    }

    #[test]
    fn a_whole_manifest_is_read_as_its_spec() {
        let spec = example_spec();
        let body = to_yaml(&spec).unwrap();
        let indented: String = body.lines().map(|l| format!("  {l}\n")).collect();
        let manifest = format!(
            "apiVersion: migrate-operator.io/v1alpha1\nkind: MigrateJob\nmetadata:\n  name: x\nspec:\n{indented}"
        );
        assert_eq!(from_yaml("test", &manifest).unwrap(), spec);
    }

    #[test]
    fn defaults_fill_what_a_short_file_leaves_out() {
        let yaml = r#"
queue: {urlSecretRef: {name: r, key: url}, key: q}
source:
  urlSecretRef: {name: m, key: url}
  queries: [{name: a, sql: "SELECT * FROM a WHERE id = ?", main: true}]
sink: {urlSecretRef: {name: s, key: url}, index: docs}
workers: {image: worker}
"#;
        let spec = from_yaml("short", yaml).unwrap();
        assert_eq!(spec.mode, Mode::Continuous);
        assert_eq!(spec.queue.max_attempts, 3);
        assert_eq!(spec.sink.batch_docs, 500);
        assert_eq!(spec.workers.max_replicas, 4);
        assert_eq!(spec.memory.soft, "80%");
    }

    #[test]
    fn a_wrong_field_is_named_in_the_error() {
        let yaml = "queue: {urlSecretRef: {name: r, key: url}, key: q, maxAttempts: lots}\n";
        let err = from_yaml("bad.yaml", yaml).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(
            err.contains("lots") || err.contains("maxAttempts") || err.contains("invalid"),
            "{err}"
        );
    }
}
