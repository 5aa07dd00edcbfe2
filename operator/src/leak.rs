//! Leak attribution: which pipeline stage's retained memory grows.
//!
//! A worker exposes `migrate_stage_retained_bytes{stage}`: bytes allocated while a stage ran
//! and not freed since. A supervisor keeps two samples of a worker (the first one after it
//! started and the latest one) and, when the worker is restarted for memory, asks
//! [`attribute`] which stage the growth between them belongs to. A stage is named only when it
//! grew by more than [`LeakThreshold::min_growth_bytes`] and accounts for more than
//! [`LeakThreshold::min_share_percent`] of the total growth of the stages that grew; otherwise
//! the growth is spread out (or small) and naming one stage would mislead.
//!
//! ```
//! use migrate_operator::leak::{LeakThreshold, RetainedSample, attribute};
//!
//! let first = RetainedSample::new(120, [("enrich", 1 << 20), ("sink", 2 << 20)]);
//! let latest = RetainedSample::new(2_120, [("enrich", 39 << 20), ("sink", 3 << 20)]);
//! let report = attribute(&first, &latest, &LeakThreshold::default()).unwrap();
//! assert_eq!(report.stage, "enrich");
//! assert_eq!(report.message, "stage enrich retained +38 MiB over 2,000 tasks");
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One reading of a worker's per-stage retained bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedSample {
    /// Tasks the worker had finished when the sample was taken.
    pub tasks_done: u64,
    /// Retained bytes per stage name. Signed: memory allocated in one stage and freed while
    /// another ran can leave a stage's counter below zero.
    pub retained: BTreeMap<String, i64>,
}

impl RetainedSample {
    /// A sample from `(stage, bytes)` pairs.
    #[must_use]
    pub fn new<'a>(tasks_done: u64, retained: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        Self {
            tasks_done,
            retained: retained
                .into_iter()
                .map(|(s, b)| (s.to_owned(), b))
                .collect(),
        }
    }
}

/// When growth is worth naming a stage for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakThreshold {
    /// The stage must have grown by more than this many bytes.
    pub min_growth_bytes: u64,
    /// ... and by more than this share (percent) of the growth of every stage that grew.
    pub min_share_percent: u8,
}

impl Default for LeakThreshold {
    /// More than 4 MiB and more than half of the growth.
    fn default() -> Self {
        Self {
            min_growth_bytes: 4 << 20,
            min_share_percent: 50,
        }
    }
}

/// The stage a worker's memory growth belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakReport {
    /// The stage, e.g. `enrich`.
    pub stage: String,
    /// Bytes the stage's retained memory grew by between the two samples.
    pub retained_bytes: u64,
    /// Tasks the worker finished between the two samples.
    pub over_tasks: u64,
    /// One line for people: `stage enrich retained +38 MiB over 2,000 tasks`.
    pub message: String,
}

/// Names the stage whose retained bytes grew the most between `first` and `latest`, when it
/// grew by more than the threshold's bytes and share; `None` otherwise. Pure.
#[must_use]
pub fn attribute(
    first: &RetainedSample,
    latest: &RetainedSample,
    threshold: &LeakThreshold,
) -> Option<LeakReport> {
    let growth: Vec<(&str, u64)> = latest
        .retained
        .iter()
        .filter_map(|(stage, &now)| {
            let before = first.retained.get(stage).copied().unwrap_or(0);
            let delta = now.saturating_sub(before);
            u64::try_from(delta)
                .ok()
                .filter(|&d| d > 0)
                .map(|d| (stage.as_str(), d))
        })
        .collect();
    let total: u128 = growth.iter().map(|&(_, d)| u128::from(d)).sum();
    // Largest growth first; ties by stage name so the answer is stable.
    let &(stage, grown) = growth
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))?;
    let share_ok = u128::from(grown) * 100 > total * u128::from(threshold.min_share_percent);
    if grown <= threshold.min_growth_bytes || !share_ok {
        return None;
    }
    let over_tasks = latest.tasks_done.saturating_sub(first.tasks_done);
    Some(LeakReport {
        stage: stage.to_owned(),
        retained_bytes: grown,
        over_tasks,
        message: format!(
            "stage {stage} retained +{} over {} tasks",
            format_bytes(grown),
            format_thousands(over_tasks)
        ),
    })
}

/// Bytes for people, in binary units rounded to a whole number: `512 B`, `38 MiB`, `2 GiB`
/// (one decimal below 10 of a unit: `1.5 GiB`).
#[must_use]
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value < 10.0 && (value - value.round()).abs() >= 0.05 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// A count with thousands separators: `2,000`.
#[must_use]
pub fn format_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1 << 20;

    fn sample(tasks: u64, stages: &[(&str, i64)]) -> RetainedSample {
        RetainedSample::new(tasks, stages.iter().copied())
    }

    #[test]
    fn the_stage_that_grew_most_is_named_with_its_growth_and_tasks() {
        let first = sample(
            100,
            &[
                ("queue", MIB),
                ("source", 3 * MIB),
                ("enrich", 2 * MIB),
                ("sink", 4 * MIB),
            ],
        );
        let latest = sample(
            2_100,
            &[
                ("queue", MIB),
                ("source", 5 * MIB),
                ("enrich", 40 * MIB),
                ("sink", 4 * MIB),
            ],
        );
        let report = attribute(&first, &latest, &LeakThreshold::default()).unwrap();
        assert_eq!(
            report,
            LeakReport {
                stage: "enrich".into(),
                retained_bytes: 38 << 20,
                over_tasks: 2_000,
                message: "stage enrich retained +38 MiB over 2,000 tasks".into(),
            }
        );
    }

    #[test]
    fn growth_at_or_below_the_byte_threshold_names_no_stage() {
        let first = sample(0, &[("enrich", 0)]);
        assert_eq!(
            attribute(
                &first,
                &sample(500, &[("enrich", 4 * MIB)]),
                &LeakThreshold::default()
            ),
            None
        );
        assert!(
            attribute(
                &first,
                &sample(500, &[("enrich", 4 * MIB + 1)]),
                &LeakThreshold::default()
            )
            .is_some()
        );
    }

    #[test]
    fn growth_spread_over_stages_names_no_stage() {
        let first = sample(0, &[("source", 0), ("enrich", 0), ("sink", 0)]);
        // enrich grew most but only half of the total: not more than 50%.
        let latest = sample(
            900,
            &[("source", 5 * MIB), ("enrich", 10 * MIB), ("sink", 5 * MIB)],
        );
        assert_eq!(attribute(&first, &latest, &LeakThreshold::default()), None);
        let strict = LeakThreshold {
            min_growth_bytes: MIB as u64,
            min_share_percent: 40,
        };
        assert_eq!(
            attribute(&first, &latest, &strict).map(|r| r.stage),
            Some("enrich".into())
        );
    }

    #[test]
    fn shrinking_stages_do_not_count_towards_the_total_growth() {
        let first = sample(10, &[("source", 50 * MIB), ("keywords", 0)]);
        let latest = sample(20, &[("source", 0), ("keywords", 6 * MIB)]);
        let report = attribute(&first, &latest, &LeakThreshold::default()).unwrap();
        assert_eq!((report.stage.as_str(), report.over_tasks), ("keywords", 10));
    }

    #[test]
    fn a_stage_first_seen_in_the_latest_sample_grew_from_zero() {
        let first = sample(0, &[]);
        let latest = sample(300, &[("sink", 9 * MIB), ("queue", -2 * MIB)]);
        assert_eq!(
            attribute(&first, &latest, &LeakThreshold::default()).map(|r| r.stage),
            Some("sink".into())
        );
    }

    #[test]
    fn no_growth_at_all_names_no_stage() {
        let s = sample(5, &[("enrich", 7 * MIB)]);
        assert_eq!(attribute(&s, &s, &LeakThreshold::default()), None);
        assert_eq!(
            attribute(
                &RetainedSample::default(),
                &RetainedSample::default(),
                &LeakThreshold::default()
            ),
            None
        );
    }

    #[test]
    fn bytes_and_counts_read_well() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (38 << 20, "38 MiB"),
            ((3 << 30) / 2, "1.5 GiB"),
            (100 << 30, "100 GiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format_bytes(bytes), text, "{bytes}");
        }
        assert_eq!(format_thousands(0), "0");
        assert_eq!(format_thousands(999), "999");
        assert_eq!(format_thousands(2_000), "2,000");
        assert_eq!(format_thousands(1_234_567), "1,234,567");
    }
}
