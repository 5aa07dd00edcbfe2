//! Checks of a spec beyond what the schema and its CEL rules can express at admission.
//!
//! The operator reports failures as a Degraded condition and an Event; the worker and the local
//! supervisor refuse to start. Every rule the CRD enforces is checked here too, so a pipeline
//! file that never went through the API server gets the same answers.

use std::collections::HashSet;
use std::fmt;

use crate::memory::Threshold;
use crate::quantity::{self, QuantityError};
use crate::spec::{Autoscaling, DEFAULT_REPLICAS, MemorySource, MigrateJobSpec, QueryShape};

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

/// The smallest memory limit a worker container may have: 16 MiB, less than a worker needs to
/// start.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 16 << 20;

/// The container memory limit from `workers.resources.limits.memory`, in bytes; `None` when it is
/// not set or cannot be read (see [`memory_limit`] to tell the two apart).
#[must_use]
pub fn container_memory_limit(spec: &MigrateJobSpec) -> Option<u64> {
    memory_limit(spec).ok().flatten()
}

/// The container memory limit from `workers.resources.limits.memory`: `Ok(None)` when it is not
/// set, the bytes when it is a whole number of bytes.
///
/// # Errors
/// The value and what is wrong with it when it is set but is not a quantity, a fraction of a
/// byte (`512m`), or out of range.
pub fn memory_limit(spec: &MigrateJobSpec) -> Result<Option<u64>, QuantityError> {
    spec.workers
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| quantity::whole_bytes(&q.0))
        .transpose()
}

/// Validates a spec.
///
/// # Errors
/// [`ValidationError`] listing every problem, each naming its field and value.
pub fn validate(spec: &MigrateJobSpec) -> Result<(), ValidationError> {
    validate_with_memory_limit(spec, None)
}

/// Like [`validate`], with the memory limit the thresholds refer to given from outside the
/// spec (a worker's `MIGRATE_MEMORY_LIMIT_BYTES` or cgroup); `None` takes the spec's own
/// `workers.resources.limits.memory`.
///
/// # Errors
/// As [`validate`].
pub fn validate_with_memory_limit(
    spec: &MigrateJobSpec,
    limit_outside_spec: Option<u64>,
) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    let mut bad = |field: String, message: String| problems.push(Invalid { field, message });

    if let Some(r) = spec.replicas
        && !(0..=1000).contains(&r)
    {
        bad("replicas".into(), format!("{r} must be between 0 and 1000"));
    }
    if let Some(r) = spec.replicas
        && r != DEFAULT_REPLICAS
        && spec.autoscaling == Autoscaling::Backlog
    {
        bad(
            "replicas".into(),
            format!(
                "spec.replicas {r} is used only with spec.autoscaling: External, where kubectl scale, an HPA or KEDA set it; this job has autoscaling Backlog, so its workers follow the backlog between workers.minReplicas and workers.maxReplicas (set autoscaling: External to set the count)"
            ),
        );
    }
    if spec.queue.key.trim().is_empty() {
        bad("queue.key".into(), "must not be empty".into());
    }
    if spec.queue.max_attempts == 0 {
        bad("queue.maxAttempts".into(), "0 must be at least 1".into());
    }
    if !(1..=1000).contains(&spec.queue.max_give_backs) {
        bad(
            "queue.maxGiveBacks".into(),
            format!("{} must be between 1 and 1000", spec.queue.max_give_backs),
        );
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
            bad(
                format!("{at}.sql"),
                "is blank; give a query with one ? placeholder for the id".into(),
            );
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
                format!(
                    "the main query {:?} has shape Many; the main query must have shape One",
                    q.name
                ),
            );
        }
        if let Some(pluck) = &q.pluck
            && q.shape != QueryShape::Many
        {
            bad(
                format!("{at}.pluck"),
                format!(
                    "pluck {pluck:?} applies only to queries of shape Many; query {:?} has shape One",
                    q.name
                ),
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
        if let Err(message) = check_url(&e.url) {
            bad(format!("enrich[{i}].url"), message);
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
        if let Err(message) = check_keyword_file(&set.file) {
            bad(format!("keywords.sets[{i}].file"), message);
        }
        if set.fields.is_empty() {
            bad(
                format!("keywords.sets[{i}].fields"),
                "at least one field is needed".into(),
            );
        }
    }
    if !spec.keywords.sets.is_empty() && spec.keywords.config_map.is_none() {
        let files: Vec<&str> = spec.keywords.sets.iter().map(|s| s.file.as_str()).collect();
        bad(
            "keywords.configMap".into(),
            format!(
                "keywords.sets names the keyword files {files:?}, but keywords.configMap, the ConfigMap holding them, is not set"
            ),
        );
    }

    // Sink credentials come in pairs.
    match (
        &spec.sink.username_secret_ref,
        &spec.sink.password_secret_ref,
    ) {
        (Some(user), None) => bad(
            "sink.passwordSecretRef".into(),
            format!(
                "sink.usernameSecretRef (Secret {}) is set without sink.passwordSecretRef; set both or neither",
                user.name
            ),
        ),
        (None, Some(password)) => bad(
            "sink.usernameSecretRef".into(),
            format!(
                "sink.passwordSecretRef (Secret {}) is set without sink.usernameSecretRef; set both or neither",
                password.name
            ),
        ),
        _ => {}
    }

    // Sink: a linger at or above the flush interval would never be the reason a batch is sent.
    let sink = &spec.sink;
    if let Some(body) = &sink.create_index {
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => bad(
                "sink.createIndex".into(),
                "must be a JSON object such as {\"mappings\": {\"properties\": {...}}}".into(),
            ),
            Err(e) => bad(
                "sink.createIndex".into(),
                format!("is not JSON ({e}); give the index creation body as JSON text"),
            ),
        }
    }
    if sink.batch_linger_ms == 0 {
        bad("sink.batchLingerMs".into(), "0 must be at least 1".into());
    } else if sink.batch_linger_ms >= sink.flush_interval_ms {
        bad(
            "sink.batchLingerMs".into(),
            format!(
                "{} is not below sink.flushIntervalMs ({}), so it would never send a batch; set it below the flush interval",
                sink.batch_linger_ms, sink.flush_interval_ms
            ),
        );
    }

    // Workers.
    let w = &spec.workers;
    if w.image.chars().any(char::is_whitespace) {
        bad(
            "workers.image".into(),
            format!(
                "{:?} contains white space, which no image reference has",
                w.image
            ),
        );
    }
    if let Some(policy) = &w.image_pull_policy
        && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
    {
        bad(
            "workers.imagePullPolicy".into(),
            format!("{policy:?} is not one of Always, IfNotPresent, Never"),
        );
    }
    match memory_limit(spec) {
        Ok(Some(bytes)) if bytes < MIN_MEMORY_LIMIT_BYTES => bad(
            "workers.resources.limits.memory".into(),
            format!(
                "{:?} is below 16Mi, too little for a worker to start",
                limit_text(spec)
            ),
        ),
        Ok(_) => {}
        Err(e) => bad("workers.resources.limits.memory".into(), e.to_string()),
    }
    if let Some(resources) = &w.resources
        && let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits)
    {
        for (name, request) in requests {
            let Some(limit) = limits.get(name) else {
                continue;
            };
            if let (Ok(r), Ok(l)) = (
                quantity::parse_nanos(&request.0),
                quantity::parse_nanos(&limit.0),
            ) && r > l
            {
                bad(
                    format!("workers.resources.requests.{name}"),
                    format!(
                        "requests.{name} {} is above limits.{name} {}; Kubernetes refuses a pod whose request exceeds its limit",
                        request.0, limit.0
                    ),
                );
            }
        }
    }
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

    // Memory readings.
    let m = &spec.memory;
    if u64::from(m.check_interval_ms) > u64::from(m.stale_after_seconds) * 1000 {
        bad(
            "memory.checkIntervalMs".into(),
            format!(
                "{} is longer than memory.staleAfterSeconds ({} s): every reading would be stale before the next one is taken",
                m.check_interval_ms, m.stale_after_seconds
            ),
        );
    }
    if m.source == MemorySource::PodMetrics && m.stale_after_seconds < 30 {
        bad(
            "memory.staleAfterSeconds".into(),
            format!(
                "{} must be at least 30 with memory.source PodMetrics: metrics-server refreshes a pod's usage every 15 to 60 seconds",
                m.stale_after_seconds
            ),
        );
    }

    // Memory thresholds, resolved against the container limit where one is needed.
    let resolved = match limit_outside_spec {
        Some(limit) => resolve_memory_with_limit(spec, Some(limit)),
        None => resolve_memory(spec),
    };
    if let Err(e) = resolved {
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
    match memory_limit(spec) {
        Ok(limit) => resolve_memory_with_limit(spec, limit),
        // The limit's own problem is reported by `validate`; here, only what it does to the
        // thresholds, without calling a limit that is set "not set".
        Err(e) => resolve_with_limit(
            spec,
            None,
            &format!("workers.resources.limits.memory cannot be used ({e})"),
        ),
    }
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
    resolve_with_limit(spec, limit, "workers.resources.limits.memory is not set")
}

/// [`resolve_memory_with_limit`], saying `no_limit` when a percentage has no limit to refer to.
fn resolve_with_limit(
    spec: &MigrateJobSpec,
    limit: Option<u64>,
    no_limit: &str,
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
                    "{text:?} is a percentage, but {no_limit}; set a memory limit or give the threshold as a size such as 1536Mi"
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

/// The text of `workers.resources.limits.memory`, for messages.
fn limit_text(spec: &MigrateJobSpec) -> String {
    spec.workers
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

/// An enrich URL: `http://` or `https://`, a host, and no `user:password@` (the spec is copied
/// into a ConfigMap; credentials live in Secrets). The message shows the URL with any user
/// information replaced by `***`, as the CRD's CEL rule does.
fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some(at) = authority.find('@') {
        let masked = format!("{scheme}://***@{}", &rest[at + 1..]);
        return Err(format!(
            "URL {masked} carries credentials (user:password@): the spec is copied into the job's pipeline ConfigMap, and credentials belong in Secrets only"
        ));
    }
    let host = authority
        .strip_prefix('[')
        .and_then(|v6| v6.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| authority.split(':').next().unwrap_or_default());
    if !matches!(scheme, "http" | "https")
        || host.is_empty()
        || url.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "URL {url} is not an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

/// A keyword file: a ConfigMap key (letters, digits, `-`, `_`, `.`), never a path. The worker
/// refuses anything else too, but only once its pod runs.
fn check_keyword_file(file: &str) -> Result<(), String> {
    let hint = "name a key of keywords.configMap, a plain file name such as topics.txt";
    if file.starts_with('/') {
        return Err(format!("file {file} is an absolute path; {hint}"));
    }
    if file.split('/').any(|part| part == "..") {
        return Err(format!(
            "file {file} climbs out of the keyword folder with ..; {hint}"
        ));
    }
    let key = file != "."
        && !file.is_empty()
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !key {
        return Err(format!(
            "file {file} is not a ConfigMap key; use letters, digits, -, _ and . only (no /)"
        ));
    }
    Ok(())
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

    /// A give-back bound outside 1..=1000 is refused locally as the CRD's CEL rule refuses it.
    #[test]
    fn max_give_backs_outside_its_range_is_refused_naming_the_value() {
        for bad in [0, 1001] {
            let mut spec = example_spec();
            spec.queue.max_give_backs = bad;
            assert_eq!(
                problems(&spec),
                vec![format!(
                    "queue.maxGiveBacks: {bad} must be between 1 and 1000"
                )]
            );
        }
        let mut spec = example_spec();
        spec.queue.max_give_backs = 1000;
        assert_eq!(problems(&spec), Vec::<String>::new());
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
                "sink.batchLingerMs: 200 is not below sink.flushIntervalMs (200), so it would never send a batch; set it below the flush interval"
            ]
        );
        spec.sink.batch_linger_ms = 0;
        assert_eq!(
            problems(&spec),
            ["sink.batchLingerMs: 0 must be at least 1"]
        );
    }

    /// An index creation body that is not a JSON object is refused, naming the field.
    #[test]
    fn a_create_index_body_must_be_a_json_object() {
        let mut spec = example_spec();
        spec.sink.create_index = Some(r#"{"mappings": {"properties": {}}}"#.into());
        assert!(problems(&spec).is_empty(), "{:?}", problems(&spec));
        for bad in ["mappings: {}", "[1]"] {
            spec.sink.create_index = Some(bad.into());
            let found = problems(&spec);
            assert!(
                found.len() == 1 && found[0].starts_with("sink.createIndex: "),
                "{bad}: {found:?}"
            );
        }
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

    fn with_memory_limit(limit: &str) -> MigrateJobSpec {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut spec = example_spec();
        if let Some(r) = spec.workers.resources.as_mut() {
            r.limits = Some([("memory".to_owned(), Quantity(limit.to_owned()))].into());
        }
        spec
    }

    /// A limit that is set but cannot be read is reported as such, never as "not set"; one that
    /// is not set is reported as not set.
    #[test]
    fn an_unreadable_limit_is_not_reported_as_unset() {
        let found = problems(&with_memory_limit("one gig"));
        assert!(
            found.contains(&"workers.resources.limits.memory: \"one gig\" is not a Kubernetes quantity such as 500m or 1536Mi".to_owned()),
            "{found:?}"
        );
        assert!(found.iter().all(|p| !p.contains("not set")), "{found:?}");
        assert!(
            found.iter().any(|p| p.starts_with("memory.soft: \"80%\" is a percentage, but workers.resources.limits.memory cannot be used")),
            "{found:?}"
        );

        let mut unset = example_spec();
        unset.workers.resources = None;
        let found = problems(&unset);
        assert!(
            found
                .iter()
                .any(|p| p.contains("workers.resources.limits.memory is not set")),
            "{found:?}"
        );
    }

    /// Limits are read as Kubernetes reads them; fractions of a byte and tiny limits are refused.
    #[test]
    fn memory_limits_are_quantities_of_whole_bytes() {
        for (limit, bytes) in [
            ("1.5Gi", 1_610_612_736),
            ("1536Mi", 1_610_612_736),
            ("2e9", 2_000_000_000),
            ("2G", 2_000_000_000),
        ] {
            let spec = with_memory_limit(limit);
            assert_eq!(memory_limit(&spec), Ok(Some(bytes)), "{limit}");
            assert_eq!(problems(&spec), Vec::<String>::new(), "{limit}");
        }
        let found = problems(&with_memory_limit("512m"));
        assert!(found.iter().any(|p| p.starts_with("workers.resources.limits.memory: \"512m\" is not a whole number of bytes (the m suffix")), "{found:?}");
        let found = problems(&with_memory_limit("1Mi"));
        assert!(found.contains(&"workers.resources.limits.memory: \"1Mi\" is below 16Mi, too little for a worker to start".to_owned()), "{found:?}");
    }

    /// File names, URLs, image references and the sink's credentials get the admission rules.
    #[test]
    fn what_admission_refuses_validate_refuses_with_the_same_words() {
        let mut spec = example_spec();
        spec.keywords.sets[0].file = "/etc/passwd".into();
        spec.keywords.sets[1].file = "../x".into();
        spec.enrich[0].url = "https://svc:s3cret@nlp/segment".into();
        spec.workers.image = "a b".into();
        spec.workers.image_pull_policy = Some("Sometimes".into());
        spec.sink.username_secret_ref =
            spec.sink
                .password_secret_ref
                .take()
                .or(Some(crate::spec::SecretKeyRef {
                    name: "u".into(),
                    key: "k".into(),
                }));
        spec.memory.check_interval_ms = 20_000;
        let found = problems(&spec);
        for expected in [
            "keywords.sets[0].file: file /etc/passwd is an absolute path",
            "keywords.sets[1].file: file ../x climbs out of the keyword folder",
            "enrich[0].url: URL https://***@nlp/segment carries credentials",
            "workers.image: \"a b\" contains white space",
            "workers.imagePullPolicy: \"Sometimes\" is not one of Always, IfNotPresent, Never",
            "sink.passwordSecretRef: sink.usernameSecretRef (Secret u) is set without",
            "memory.checkIntervalMs: 20000 is longer than memory.staleAfterSeconds (10 s)",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected:?} not in {found:?}"
            );
        }
        assert!(found.iter().all(|p| !p.contains("s3cret")), "{found:?}");
        assert_eq!(check_url("http://[::1]:8090/x"), Ok(()));
        assert!(check_url("http:///x").is_err());
        assert!(check_url("ftp://host/x").is_err());
        assert_eq!(check_keyword_file("black_list-v2.txt"), Ok(()));
        assert!(check_keyword_file("lists/topics.txt").is_err());
        assert!(check_keyword_file(".").is_err());
    }

    /// The worker count is fixed only with `autoscaling: External` (1 when not given); with
    /// Backlog a count other than the default is refused instead of ignored.
    #[test]
    fn replicas_count_only_with_external_autoscaling() {
        use crate::spec::Autoscaling;
        let mut spec = example_spec();
        assert_eq!(spec.fixed_replicas(), None);
        spec.replicas = Some(3);
        let found = problems(&spec);
        assert!(
            found.iter().any(|p| p.starts_with(
                "replicas: spec.replicas 3 is used only with spec.autoscaling: External"
            )),
            "{found:?}"
        );
        spec.autoscaling = Autoscaling::External;
        assert_eq!(problems(&spec), Vec::<String>::new());
        assert_eq!(spec.fixed_replicas(), Some(3));
        spec.replicas = None;
        assert_eq!(spec.fixed_replicas(), Some(1));
    }
}
