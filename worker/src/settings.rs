//! The settings a worker runs with, each with where it came from, and the combinations that
//! cannot take effect as written (what `migrate-worker check` prints and `run` logs).
//!
//! A setting comes from the spec when the pipeline file names it, else from its default; the
//! memory limit the percentage thresholds refer to comes from the environment
//! (`MIGRATE_MEMORY_LIMIT_BYTES` or `--memory-limit`), else the cgroup's `memory.max`, else
//! the spec's `workers.resources.limits.memory`.

use std::fmt;

use migrate_crds::MigrateJobSpec;
use migrate_crds::validate::container_memory_limit;

use crate::memory::{LimitSource, MemoryError, MemoryLimits};

/// Where a resolved setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Named in the pipeline file.
    Spec,
    /// Not named: the field's default.
    Default,
    /// The environment or a flag of the worker.
    Environment,
    /// The cgroup of the worker process.
    Cgroup,
    /// Known from nowhere.
    Unknown,
}

impl Source {
    /// The source's name as printed: `spec`, `default`, `environment`, `cgroup` or `none`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Spec => "spec",
            Source::Default => "default",
            Source::Environment => "environment",
            Source::Cgroup => "cgroup",
            Source::Unknown => "none",
        }
    }
}

/// One resolved setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The field's path in the spec (or a name for the memory limit).
    pub name: String,
    /// The value in effect, in its unit.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Every setting that bounds the worker's memory, concurrency, batches and waits, and the
/// warnings about combinations that cannot take effect as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The settings, in the order printed.
    pub settings: Vec<Setting>,
    /// One sentence per combination that cannot take effect, naming both fields.
    pub warnings: Vec<String>,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .settings
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.settings {
            writeln!(
                f,
                "  {:width$}  {}  ({})",
                s.name,
                s.value,
                s.source.as_str()
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// The spec as its file gives it (a manifest's `spec`, or the bare spec), as JSON, to tell a
/// field the file names from a default. `Null` when the text does not parse (the typed load
/// reports that).
#[must_use]
pub fn given_fields(text: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap_or_default();
    match value.get("spec") {
        Some(spec) if value.get("kind").is_some() || value.get("apiVersion").is_some() => {
            spec.clone()
        }
        _ => value,
    }
}

/// The JSON pointer of a spec field named as settings are (`sink.batchDocs`,
/// `enrich[0].timeoutMs`): `/sink/batchDocs`, `/enrich/0/timeoutMs`.
fn pointer(name: &str) -> String {
    format!(
        "/{}",
        name.replace('[', ".").replace(']', "").replace('.', "/")
    )
}

/// Resolves the settings of `spec`, whose file named the fields in `given` (see
/// [`given_fields`]), against the memory limit override and the cgroup's `memory.max`.
///
/// # Errors
/// [`MemoryError::Thresholds`] when the memory thresholds do not resolve against the limit.
pub fn resolve(
    spec: &MigrateJobSpec,
    given: &serde_json::Value,
    override_limit: Option<u64>,
    cgroup_max: Option<u64>,
) -> Result<Resolved, MemoryError> {
    let limits = MemoryLimits::resolve(spec, override_limit, cgroup_max)?;
    let from = |pointer: &str| {
        if given.pointer(pointer).is_some() {
            Source::Spec
        } else {
            Source::Default
        }
    };
    let mut settings = Vec::new();
    let mut add = |name: &str, value: String, source: Source| {
        settings.push(Setting {
            name: name.to_owned(),
            value,
            source,
        });
    };
    let bytes = |b: Option<u64>| b.map_or_else(|| "none".to_owned(), |b| format!("{b} bytes"));
    let limit_source = match limits.source {
        LimitSource::Override => Source::Environment,
        LimitSource::Cgroup => Source::Cgroup,
        LimitSource::Spec => Source::Spec,
        LimitSource::Unknown => Source::Unknown,
    };
    add("memory limit", bytes(limits.limit), limit_source);
    // Every other setting is a spec field, given in the file or defaulted.
    let mut field = |name: &str, value: String| add(name, value, from(&pointer(name)));
    field(
        "memory.soft",
        format!("{} ({})", bytes(limits.soft), spec.memory.soft),
    );
    field(
        "memory.hard",
        format!("{} ({})", bytes(limits.hard), spec.memory.hard),
    );
    field(
        "memory.checkIntervalMs",
        format!("{} ms", spec.memory.check_interval_ms),
    );
    let w = &spec.workers;
    field("workers.concurrency", w.concurrency.to_string());
    field(
        "workers.terminationGracePeriodSeconds",
        format!("{} s", w.termination_grace_period_seconds),
    );
    let s = &spec.sink;
    field("sink.batchDocs", format!("{} documents", s.batch_docs));
    field("sink.batchBytes", format!("{} bytes", s.batch_bytes));
    field("sink.batchLingerMs", format!("{} ms", s.batch_linger_ms));
    field(
        "sink.flushIntervalMs",
        format!("{} ms", s.flush_interval_ms),
    );
    field("sink.retries", s.retries.to_string());
    field(
        "source.queryTimeoutSeconds",
        format!("{} s", spec.source.query_timeout_seconds),
    );
    field(
        "source.poolMax",
        format!("{} connections", spec.source.pool_max),
    );
    field("queue.maxAttempts", spec.queue.max_attempts.to_string());
    field(
        "queue.heartbeatTtlSeconds",
        format!("{} s", spec.queue.heartbeat_ttl_seconds),
    );
    for (i, e) in spec.enrich.iter().enumerate() {
        field(
            &format!("enrich[{i}].timeoutMs"),
            format!("{} ms", e.timeout_ms),
        );
        field(
            &format!("enrich[{i}].maxConcurrent"),
            e.max_concurrent.to_string(),
        );
    }
    Ok(Resolved {
        settings,
        warnings: warnings(spec, &limits),
    })
}

/// Combinations that cannot take effect as written, one sentence each naming both fields.
fn warnings(spec: &MigrateJobSpec, limits: &MemoryLimits) -> Vec<String> {
    let mut found = Vec::new();
    if let (LimitSource::Override | LimitSource::Cgroup, Some(limit), Some(own)) =
        (limits.source, limits.limit, container_memory_limit(spec))
        && limit != own
    {
        let by = if limits.source == LimitSource::Override {
            "MIGRATE_MEMORY_LIMIT_BYTES (--memory-limit)"
        } else {
            "the cgroup's memory.max"
        };
        found.push(format!(
            "workers.resources.limits.memory ({own} bytes) is not the limit here: {by} ({limit} bytes) is, and memory.soft and memory.hard refer to it"
        ));
    }
    for (i, e) in spec.enrich.iter().enumerate() {
        if e.max_concurrent > spec.workers.concurrency {
            found.push(format!(
                "enrich[{i}].maxConcurrent {} cannot take effect: a worker calls {:?} at most workers.concurrency ({}) times at once",
                e.max_concurrent, e.name, spec.workers.concurrency
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MigrateJobSpec {
        migrate_crds::pipeline::example_spec()
    }

    fn find<'a>(resolved: &'a Resolved, name: &str) -> &'a Setting {
        resolved
            .settings
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {resolved}"))
    }

    /// A field the file names is `spec`, one it leaves out is `default`, and the limit given in
    /// the environment wins over the spec's own and is what the percentages refer to.
    #[test]
    fn each_setting_says_where_it_came_from() {
        let given = given_fields(
            "apiVersion: migrate.example.com/v1alpha1\nkind: MigrateJob\nspec:\n  sink:\n    batchDocs: 700\n  memory:\n    soft: \"80%\"\n",
        );
        let mut spec = spec();
        spec.workers.resources = None;
        spec.memory.soft = "80%".into();
        spec.memory.hard = "90%".into();
        let resolved = resolve(&spec, &given, Some(1 << 30), Some(1 << 32)).unwrap();
        let limit = find(&resolved, "memory limit");
        assert_eq!(
            (limit.value.as_str(), limit.source),
            ("1073741824 bytes", Source::Environment)
        );
        let soft = find(&resolved, "memory.soft");
        assert_eq!(soft.source, Source::Spec);
        assert!(soft.value.starts_with("858993459 bytes"), "{soft:?}");
        assert_eq!(find(&resolved, "memory.hard").source, Source::Default);
        assert_eq!(find(&resolved, "sink.batchDocs").source, Source::Spec);
        assert_eq!(find(&resolved, "sink.batchBytes").source, Source::Default);
        assert!(resolved.warnings.is_empty(), "{:?}", resolved.warnings);

        let from_cgroup = resolve(&spec, &given, None, Some(1 << 30)).unwrap();
        assert_eq!(find(&from_cgroup, "memory limit").source, Source::Cgroup);
    }

    /// A setting's source is read at the JSON pointer its name spells, list indexes included.
    #[test]
    fn setting_names_spell_their_json_pointers() {
        assert_eq!(pointer("sink.batchDocs"), "/sink/batchDocs");
        assert_eq!(pointer("enrich[0].timeoutMs"), "/enrich/0/timeoutMs");
        assert_eq!(
            pointer("enrich[12].maxConcurrent"),
            "/enrich/12/maxConcurrent"
        );
    }

    /// A limit given beside the spec's own, and an enrich bound above the worker's
    /// concurrency, are warnings naming both fields.
    #[test]
    fn settings_that_cannot_take_effect_are_named_with_both_fields() {
        let mut spec = spec();
        spec.workers.concurrency = 4;
        if let Some(e) = spec.enrich.first_mut() {
            e.max_concurrent = 32;
        }
        let resolved = resolve(&spec, &serde_json::Value::Null, Some(2 << 30), None).unwrap();
        let text = resolved.warnings.join("\n");
        assert!(
            text.contains("workers.resources.limits.memory")
                && text.contains("MIGRATE_MEMORY_LIMIT_BYTES"),
            "{text}"
        );
        if !spec.enrich.is_empty() {
            assert!(
                text.contains("enrich[0].maxConcurrent 32")
                    && text.contains("workers.concurrency (4)"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bare_spec_and_a_manifest_give_the_same_fields() {
        let bare = given_fields("sink:\n  batchDocs: 5\n");
        let manifest = given_fields("kind: MigrateJob\nspec:\n  sink:\n    batchDocs: 5\n");
        assert_eq!(bare, manifest);
        assert!(bare.pointer("/sink/batchDocs").is_some());
    }
}
