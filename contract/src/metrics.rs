//! Reading a worker's `/metrics`: the one parser of the Prometheus/OpenMetrics text both
//! supervisors (the operator and the local one) use, and the names they read.
//!
//! The worker's registry (`migrate-worker`'s `metrics` module) writes these names;
//! `docs/architecture.md` ("Metric names") lists them all.

use std::collections::{BTreeMap, HashMap};

/// `migrate_process_resident_memory_bytes`: the worker's RSS.
pub const RESIDENT_MEMORY_BYTES: &str = "migrate_process_resident_memory_bytes";
/// `migrate_cgroup_memory_bytes`: `memory.current` of the worker's cgroup.
pub const CGROUP_MEMORY_BYTES: &str = "migrate_cgroup_memory_bytes";
/// `migrate_cgroup_memory_working_set_bytes`: the cgroup's working set, as the kubelet
/// computes it.
pub const CGROUP_WORKING_SET_BYTES: &str = "migrate_cgroup_memory_working_set_bytes";
/// `migrate_memory_usage_bytes`: the one memory figure the worker compares with its thresholds
/// and its supervisor reads ([`crate::memory::read_figure`]).
pub const MEMORY_USAGE_BYTES: &str = "migrate_memory_usage_bytes";
/// `migrate_memory_usage_source{source}`: 1 for the figure `migrate_memory_usage_bytes` is
/// (`cgroupWorkingSet` or `rss`), 0 for the other.
pub const MEMORY_USAGE_SOURCE: &str = "migrate_memory_usage_source";
/// `migrate_cgroup_memory_limit_bytes`: the memory limit the worker knows (0: none).
pub const CGROUP_LIMIT_BYTES: &str = "migrate_cgroup_memory_limit_bytes";
/// `migrate_tasks_done`: tasks the worker process finished.
pub const TASKS_DONE: &str = "migrate_tasks_done";
/// `migrate_tasks_total{outcome}`: tasks by outcome.
pub const TASKS_TOTAL: &str = "migrate_tasks_total";
/// `migrate_in_flight`: tasks taken and not yet acknowledged.
pub const IN_FLIGHT: &str = "migrate_in_flight";
/// `migrate_restart_requested_timestamp_seconds`: Unix time at which a supervised worker
/// crossed its soft line and began asking for a restart; 0 while it is not asking (see
/// [`crate::restart`]).
pub const RESTART_REQUESTED: &str = "migrate_restart_requested_timestamp_seconds";
/// `migrate_stage_retained_bytes{stage}`: bytes allocated while a stage ran and not yet freed.
pub const STAGE_RETAINED_BYTES: &str = "migrate_stage_retained_bytes";

/// Reads the Prometheus/OpenMetrics text format into `name{labels}` → value, keys exactly as
/// rendered (e.g. `migrate_tasks_total{outcome="indexed"}`, `migrate_in_flight`). Comment and
/// blank lines are skipped, as are lines that do not parse; timestamps and exemplars after the
/// value are ignored.
#[must_use]
pub fn parse_text(text: &str) -> HashMap<String, f64> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let key_end = match (line.find('{'), line.find(char::is_whitespace)) {
        (Some(brace), space) if space.is_none_or(|s| brace < s) => {
            brace + labels_len(&line[brace..])?
        }
        (_, Some(space)) => space,
        (_, None) => return None,
    };
    let (key, rest) = line.split_at(key_end);
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((key.to_owned(), value))
}

/// Length of the `{...}` at the start of `text`, skipping braces inside quoted values.
fn labels_len(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The `migrate_stage_retained_bytes{stage}` samples of parsed metrics, by stage name, as
/// signed byte counts: memory allocated in one stage and freed while another ran can leave a
/// stage's counter below zero. Values that are not finite are left out; the rest are rounded
/// and saturate at the `i64` range.
#[must_use]
pub fn retained_bytes(values: &HashMap<String, f64>) -> BTreeMap<String, i64> {
    values
        .iter()
        .filter_map(|(key, &v)| {
            let stage = key
                .strip_prefix(STAGE_RETAINED_BYTES)?
                .strip_prefix("{stage=\"")?
                .strip_suffix("\"}")?;
            v.is_finite().then(|| (stage.to_owned(), saturating_i64(v)))
        })
        .collect()
}

/// Whether parsed metrics say the worker asks for a restart
/// ([`RESTART_REQUESTED`] present and above zero).
#[must_use]
pub fn restart_requested(values: &HashMap<String, f64>) -> bool {
    values.get(RESTART_REQUESTED).is_some_and(|v| *v > 0.0)
}

#[allow(clippy::cast_possible_truncation)] // finite, saturating
fn saturating_i64(v: f64) -> i64 {
    v.round().clamp(i64::MIN as f64, i64::MAX as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_skips_comments_and_handles_quoted_braces_timestamps_and_specials() {
        let text = "\
# HELP x Something.
# TYPE x gauge

x 1
y{a=\"b c\",d=\"}{\\\"\"} 2.5 1700000000
z_bucket{le=\"+Inf\"} 3 # {trace_id=\"1\"} 0.5
nan NaN
neg -Inf
broken{a=\"1\" 4
novalue
";
        let v = parse_text(text);
        assert_eq!(v.len(), 5, "{v:?}");
        assert_eq!(v["x"], 1.0);
        assert_eq!(v[r#"y{a="b c",d="}{\""}"#], 2.5);
        assert_eq!(v[r#"z_bucket{le="+Inf"}"#], 3.0);
        assert!(v["nan"].is_nan());
        assert_eq!(v["neg"], f64::NEG_INFINITY);
    }

    #[test]
    fn a_restart_is_requested_only_by_a_positive_timestamp() {
        let asks = |text: &str| restart_requested(&parse_text(text));
        assert!(asks(
            "migrate_restart_requested_timestamp_seconds 1765111111\n"
        ));
        assert!(!asks("migrate_restart_requested_timestamp_seconds 0\n"));
        assert!(!asks("migrate_restart_requested_timestamp_seconds NaN\n"));
        assert!(!asks("migrate_in_flight 3\n"));
    }

    /// Retained bytes keep their sign; odd values are left out rather than read as zero.
    #[test]
    fn retained_bytes_are_signed_per_stage() {
        let v = parse_text(
            "migrate_stage_retained_bytes{stage=\"enrich\"} 41943040\n\
             migrate_stage_retained_bytes{stage=\"queue\"} -4096\n\
             migrate_stage_retained_bytes{stage=\"sink\"} NaN\n\
             migrate_stage_seconds_count{stage=\"enrich\"} 2048\n",
        );
        assert_eq!(
            retained_bytes(&v),
            BTreeMap::from([("enrich".to_owned(), 40 << 20), ("queue".to_owned(), -4096)])
        );
    }
}
