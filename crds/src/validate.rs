//! Checks of a spec beyond what the schema and its CEL rules can express at admission.
//!
//! The operator reports failures as a Degraded condition and an Event; the worker and the local
//! supervisor refuse to start. Every rule the CRD enforces is checked here too, so a pipeline
//! file that never went through the API server gets the same answers.

use std::collections::HashSet;
use std::fmt;

use crate::memory::{Threshold, parse_quantity_bytes};
use crate::spec::{MigrateJobSpec, QueryShape};

/// One problem with a spec: the field, the value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the field, e.g. `source.queries[1].sql`.
    pub field: String,
    /// What is wrong, in a sentence that names the value.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MigrateJob spec: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationError(pub Vec<Invalid>);

/// The memory thresholds of a spec resolved to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedMemory {
    /// Soft limit in bytes, when it can be known.
    pub soft_bytes: Option<u64>,
    /// Hard limit in bytes, when it can be known.
    pub hard_bytes: Option<u64>,
}

/// The container memory limit from `workers.resources.limits.memory`, in bytes.
#[must_use]
pub fn container_memory_limit(spec: &MigrateJobSpec) -> Option<u64> {
    spec.workers
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .and_then(|q| parse_quantity_bytes(&q.0))
}

/// Validates a spec.
///
/// # Errors
/// [`ValidationError`] listing every problem, each naming its field and value.
pub fn validate(spec: &MigrateJobSpec) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    let mut bad = |field: String, message: String| problems.push(Invalid { field, message });

    if let Some(r) = spec.replicas
        && !(0..=1000).contains(&r)
    {
        bad("replicas".into(), format!("{r} must be between 0 and 1000"));
    }
    if spec.queue.key.trim().is_empty() {
        bad("queue.key".into(), "must not be empty".into());
    }
    if spec.queue.max_attempts == 0 {
        bad("queue.maxAttempts".into(), "0 must be at least 1".into());
    }

    // Source queries.
    if spec.source.queries.is_empty() {
        bad(
            "source.queries".into(),
            "at least one query is needed".into(),
        );
    }
    let mains = spec.source.queries.iter().filter(|q| q.main).count();
    if mains != 1 {
        bad(
            "source.queries".into(),
            format!("exactly one query must have main: true, found {mains}"),
        );
    }
    let mut names = HashSet::new();
    for (i, q) in spec.source.queries.iter().enumerate() {
        let at = format!("source.queries[{i}]");
        if !names.insert(q.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("{:?} is used by two queries", q.name),
            );
        }
        if q.sql.trim().is_empty() {
            bad(format!("{at}.sql"), "must not be empty".into());
        } else {
            let n = count_placeholders(&q.sql);
            if n != 1 {
                bad(
                    format!("{at}.sql"),
                    format!(
                        "{:?} must have exactly one `?` placeholder for the id, found {n}",
                        q.sql
                    ),
                );
            }
        }
        if q.main && q.shape != QueryShape::One {
            bad(
                format!("{at}.shape"),
                "the main query must have shape One".into(),
            );
        }
        if q.pluck.is_some() && q.shape != QueryShape::Many {
            bad(
                format!("{at}.pluck"),
                "pluck applies only to queries of shape Many".into(),
            );
        }
    }

    // Enrich endpoints.
    let mut names = HashSet::new();
    for (i, e) in spec.enrich.iter().enumerate() {
        if !names.insert(e.name.as_str()) {
            bad(
                format!("enrich[{i}].name"),
                format!("{:?} is used by two endpoints", e.name),
            );
        }
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            bad(
                format!("enrich[{i}].url"),
                format!("{:?} must start with http:// or https://", e.url),
            );
        }
        if let Some(p) = &e.response_pointer
            && !p.is_empty()
            && !p.starts_with('/')
        {
            bad(
                format!("enrich[{i}].responsePointer"),
                format!("{p:?} is not a JSON pointer (it must start with /)"),
            );
        }
    }

    // Keyword sets.
    let mut names = HashSet::new();
    for (i, set) in spec.keywords.sets.iter().enumerate() {
        if !names.insert(set.name.as_str()) {
            bad(
                format!("keywords.sets[{i}].name"),
                format!("{:?} is used by two sets", set.name),
            );
        }
        if set.fields.is_empty() {
            bad(
                format!("keywords.sets[{i}].fields"),
                "at least one field is needed".into(),
            );
        }
    }
    if !spec.keywords.sets.is_empty() && spec.keywords.config_map.is_none() {
        bad(
            "keywords.configMap".into(),
            "must name the ConfigMap holding the keyword files of keywords.sets".into(),
        );
    }

    // Sink: a linger at or above the flush interval would never be the reason a batch is sent.
    let sink = &spec.sink;
    if sink.batch_linger_ms == 0 {
        bad("sink.batchLingerMs".into(), "0 must be at least 1".into());
    } else if sink.batch_linger_ms >= sink.flush_interval_ms {
        bad(
            "sink.batchLingerMs".into(),
            format!(
                "{} must be less than sink.flushIntervalMs ({}), or it never takes effect",
                sink.batch_linger_ms, sink.flush_interval_ms
            ),
        );
    }

    // Workers.
    let w = &spec.workers;
    if w.min_replicas > w.max_replicas {
        bad(
            "workers.minReplicas".into(),
            format!(
                "{} must be less than or equal to workers.maxReplicas ({})",
                w.min_replicas, w.max_replicas
            ),
        );
    }
    if w.target_backlog_per_worker < 1 {
        bad(
            "workers.targetBacklogPerWorker".into(),
            format!("{} must be at least 1", w.target_backlog_per_worker),
        );
    }
    if w.recycle_jitter_percent > 50 {
        bad(
            "workers.recycleJitterPercent".into(),
            format!("{} must be between 0 and 50", w.recycle_jitter_percent),
        );
    }

    // Memory thresholds, resolved against the container limit where one is needed.
    if let Err(e) = resolve_memory(spec) {
        problems.extend(e.0);
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError(problems))
    }
}

/// Resolves the soft and hard memory thresholds against the container limit.
///
/// # Errors
/// [`ValidationError`] when a threshold does not parse, a percentage has no limit to refer to,
/// or soft is not below hard.
pub fn resolve_memory(spec: &MigrateJobSpec) -> Result<ResolvedMemory, ValidationError> {
    resolve_memory_with_limit(spec, container_memory_limit(spec))
}

/// Like [`resolve_memory`], with the memory limit given (the local supervisor reads it from the
/// cgroup or a flag instead of the spec).
///
/// # Errors
/// As [`resolve_memory`].
pub fn resolve_memory_with_limit(
    spec: &MigrateJobSpec,
    limit: Option<u64>,
) -> Result<ResolvedMemory, ValidationError> {
    let mut problems = Vec::new();
    let soft = Threshold::parse("memory.soft", &spec.memory.soft);
    let hard = Threshold::parse("memory.hard", &spec.memory.hard);
    let (soft, hard) = match (soft, hard) {
        (Ok(s), Ok(h)) => (s, h),
        (s, h) => {
            for e in [s.err(), h.err()].into_iter().flatten() {
                let text = e.to_string();
                let (field, message) = text.split_once(": ").unwrap_or(("memory", text.as_str()));
                problems.push(Invalid {
                    field: field.to_owned(),
                    message: message.to_owned(),
                });
            }
            return Err(ValidationError(problems));
        }
    };
    let percent_without_limit =
        |t: Threshold| matches!(t, Threshold::Percent(_)) && limit.is_none();
    for (field, t, text) in [
        ("memory.soft", soft, &spec.memory.soft),
        ("memory.hard", hard, &spec.memory.hard),
    ] {
        if percent_without_limit(t) {
            problems.push(Invalid {
                field: field.to_owned(),
                message: format!(
                    "{text:?} is a percentage, but workers.resources.limits.memory is not set; set a memory limit or give the threshold in bytes"
                ),
            });
        }
    }
    let soft_bytes = soft.resolve(limit);
    let hard_bytes = hard.resolve(limit);
    if let (Some(s), Some(h)) = (soft_bytes, hard_bytes)
        && s >= h
    {
        problems.push(Invalid {
            field: "memory.soft".to_owned(),
            message: format!(
                "{:?} ({s} bytes) must be lower than memory.hard {:?} ({h} bytes)",
                spec.memory.soft, spec.memory.hard
            ),
        });
    }
    if let (Some(h), Some(l)) = (hard_bytes, limit)
        && h > l
    {
        problems.push(Invalid {
            field: "memory.hard".to_owned(),
            message: format!(
                "{:?} ({h} bytes) is above the container memory limit ({l} bytes); the kernel would kill the worker first",
                spec.memory.hard
            ),
        });
    }
    if problems.is_empty() {
        Ok(ResolvedMemory {
            soft_bytes,
            hard_bytes,
        })
    } else {
        Err(ValidationError(problems))
    }
}

/// Counts `?` placeholders outside quoted strings, identifiers and comments.
fn count_placeholders(sql: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == '\\' && q != '`' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '?' => count += 1,
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '#' => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                _ => {}
            },
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::example_spec;

    fn problems(spec: &MigrateJobSpec) -> Vec<String> {
        match validate(spec) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_example_spec_is_valid() {
        assert_eq!(problems(&example_spec()), Vec::<String>::new());
    }

    #[test]
    fn placeholders_inside_strings_and_comments_do_not_count() {
        assert_eq!(count_placeholders("SELECT * FROM a WHERE id = ?"), 1);
        assert_eq!(
            count_placeholders("SELECT '?' AS q, `a?` FROM a WHERE id = ? -- why?\n"),
            1
        );
        assert_eq!(
            count_placeholders("SELECT 'it\\'s ?' FROM a WHERE id = ? # x?"),
            1
        );
        assert_eq!(count_placeholders("SELECT 1"), 0);
        assert_eq!(count_placeholders("SELECT ? + ?"), 2);
    }

    #[test]
    fn each_problem_names_its_field_and_value() {
        let mut spec = example_spec();
        spec.workers.min_replicas = 5;
        spec.workers.max_replicas = 2;
        spec.source.queries[1].sql = "SELECT name FROM tags".into();
        spec.source.queries[0].main = false;
        let found = problems(&spec);
        assert!(
            found.contains(
                &"workers.minReplicas: 5 must be less than or equal to workers.maxReplicas (2)"
                    .to_owned()
            ),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("source.queries[1].sql: \"SELECT name FROM tags\"")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("exactly one query must have main: true, found 0"))
        );
    }

    /// A linger that the flush interval always beats is refused, naming both values.
    #[test]
    fn a_linger_at_or_above_the_flush_interval_is_refused() {
        let mut spec = example_spec();
        spec.sink.flush_interval_ms = 200;
        spec.sink.batch_linger_ms = 199;
        assert_eq!(problems(&spec), Vec::<String>::new());
        spec.sink.batch_linger_ms = 200;
        assert_eq!(
            problems(&spec),
            [
                "sink.batchLingerMs: 200 must be less than sink.flushIntervalMs (200), or it never takes effect"
            ]
        );
        spec.sink.batch_linger_ms = 0;
        assert_eq!(
            problems(&spec),
            ["sink.batchLingerMs: 0 must be at least 1"]
        );
    }

    #[test]
    fn soft_must_be_below_hard_once_resolved() {
        let mut spec = example_spec();
        spec.memory.soft = "900Mi".into();
        spec.memory.hard = "50%".into(); // of the example's 1Gi limit = 512Mi
        let found = problems(&spec);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("memory.soft: \"900Mi\"")),
            "{found:?}"
        );
    }

    #[test]
    fn percentages_need_a_memory_limit() {
        let mut spec = example_spec();
        spec.workers.resources = None;
        let found = problems(&spec);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("memory.soft: \"80%\" is a percentage")),
            "{found:?}"
        );
        assert_eq!(
            resolve_memory_with_limit(&spec, Some(1000)),
            Ok(ResolvedMemory {
                soft_bytes: Some(800),
                hard_bytes: Some(920)
            })
        );
    }

    #[test]
    fn hard_above_the_limit_is_refused() {
        let mut spec = example_spec();
        spec.memory.soft = "512Mi".into();
        spec.memory.hard = "2Gi".into();
        let found = problems(&spec);
        assert!(
            found.iter().any(|p| p.starts_with("memory.hard: \"2Gi\"")),
            "{found:?}"
        );
    }
}
