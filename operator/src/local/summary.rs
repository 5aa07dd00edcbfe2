//! What a run of the local supervisor did: printed as a table, written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::leak::{LeakReport, format_bytes, format_thousands};
use crate::policy::RestartReason;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Drain mode: the queue was empty and nothing was in flight; every worker stopped.
    Complete,
    /// A signal stopped the supervisor; every worker was drained.
    Interrupted,
}

/// One worker restart, as decided by the supervisor or reported by the worker's exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartEvent {
    /// The worker.
    pub worker: String,
    /// Its process id.
    pub pid: u32,
    /// The restart reason (`memory-soft`, `crashed`, ...).
    pub reason: String,
    /// `drain` (SIGTERM), `kill` (SIGKILL) when the supervisor acted; `exit` when the worker
    /// ended on its own (its own memory check, a crash, the OOM killer).
    pub action: String,
    /// Milliseconds since the supervisor started.
    pub at_ms: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The memory the decision was taken on, when known.
    pub memory_bytes: Option<u64>,
    /// The worker's RSS read just before the signal was sent (supervisor actions only).
    pub rss_at_signal: Option<u64>,
    /// Tasks the worker had finished.
    pub tasks_done: u64,
    /// The stage its memory growth belongs to, for memory restarts where one stands out.
    pub leak: Option<LeakReport>,
}

/// One worker process of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// The worker id.
    pub id: String,
    /// Its process id.
    pub pid: u32,
    /// The port of its endpoints.
    pub port: u16,
    /// Its log file.
    pub log: String,
    /// Milliseconds after the supervisor's start it was started.
    pub started_ms: u64,
    /// Milliseconds after the supervisor's start it was first seen ready.
    #[serde(default)]
    pub ready_ms: Option<u64>,
    /// Milliseconds after the supervisor's start it was asked to stop (drained or killed);
    /// `None` when it ended on its own.
    #[serde(default)]
    pub stop_ms: Option<u64>,
    /// Milliseconds after the supervisor's start it was seen gone.
    pub ended_ms: Option<u64>,
    /// Tasks it finished (as last scraped).
    pub tasks_done: u64,
    /// Its largest RSS reading.
    pub peak_rss_bytes: u64,
    /// Its exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub exit_signal: Option<i32>,
    /// The restart reason its exit was counted under; `None` when it finished normally.
    pub reason: Option<String>,
    /// It ran the job's test-only leak (`testOnly.leakBytesPerTask`).
    #[serde(default)]
    pub leaky: bool,
}

/// The memory numbers the run was supervised with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimits {
    /// Per-worker limit the percentages refer to.
    pub limit_bytes: Option<u64>,
    /// Soft threshold: drain and replace.
    pub soft_bytes: Option<u64>,
    /// Hard threshold: kill at once.
    pub hard_bytes: Option<u64>,
    /// The limit the workers were told (`MIGRATE_MEMORY_LIMIT_BYTES`).
    pub worker_limit_bytes: Option<u64>,
}

/// Everything the run did. `--summary-json` writes this; the table on stdout shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How it ended.
    pub outcome: Outcome,
    /// The queue key.
    pub queue: String,
    /// The index.
    pub index: String,
    /// Documents indexed (`{q}:stats` `indexed`).
    pub indexed: u64,
    /// Documents dropped by a blacklist or whitelist (`filtered`).
    pub filtered: u64,
    /// Ids without a row, skipped (`skipped`).
    pub skipped: u64,
    /// Ids dead-lettered (`dead`).
    pub dead: u64,
    /// Deliveries retried (`retried`).
    pub retried: u64,
    /// Ids moved back to the queue from the processing lists of exited workers.
    pub requeued_ids: u64,
    /// Ids found at start in the processing lists of dead workers of an earlier run, requeued.
    pub recovered_ids: u64,
    /// Restarts by reason; every reason is present.
    pub restarts: BTreeMap<String, u64>,
    /// Every restart, in order.
    pub restart_events: Vec<RestartEvent>,
    /// The stage named by most leak reports, if any.
    pub leaking_stage: Option<String>,
    /// Tasks finished per second over the run (indexed, filtered, skipped, dead).
    pub docs_per_second: f64,
    /// Seconds from start to the end of the run.
    pub wall_seconds: f64,
    /// The memory thresholds.
    pub memory: MemoryLimits,
    /// Every worker process, in start order.
    pub workers: Vec<WorkerSummary>,
    /// Conditions reported by the policy during the run, each once.
    pub reports: Vec<String>,
}

impl Summary {
    /// Restarts counted under `reason`.
    #[must_use]
    pub fn restarts_of(&self, reason: RestartReason) -> u64 {
        self.restarts.get(reason.as_str()).copied().unwrap_or(0)
    }

    /// The summary as a table for people.
    #[must_use]
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let outcome = match self.outcome {
            Outcome::Complete => "complete",
            Outcome::Interrupted => "interrupted (workers drained)",
        };
        row("outcome", outcome.to_owned());
        row("queue / index", format!("{} / {}", self.queue, self.index));
        row("documents indexed", format_thousands(self.indexed));
        row("filtered (blacklisted)", format_thousands(self.filtered));
        row("skipped (no row)", format_thousands(self.skipped));
        row("dead-lettered", format_thousands(self.dead));
        row("retried deliveries", format_thousands(self.retried));
        row("requeued ids", format_thousands(self.requeued_ids));
        if self.recovered_ids > 0 {
            row("recovered at start", format_thousands(self.recovered_ids));
        }
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .filter(|&(_, &n)| n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        row(
            "restarts",
            if restarts.is_empty() {
                "none".to_owned()
            } else {
                restarts.join(", ")
            },
        );
        row(
            "leaking stage",
            match (
                &self.leaking_stage,
                self.restart_events.iter().find_map(|e| e.leak.as_ref()),
            ) {
                (Some(stage), Some(example)) => format!("{stage} (e.g. {})", example.message),
                (Some(stage), None) => stage.clone(),
                (None, _) => "none named".to_owned(),
            },
        );
        row("throughput", format!("{:.1} docs/s", self.docs_per_second));
        row("wall time", format!("{:.1} s", self.wall_seconds));
        if let Some(soft) = self.memory.soft_bytes {
            let hard = self
                .memory
                .hard_bytes
                .map_or_else(|| "-".to_owned(), format_bytes);
            row(
                "memory soft / hard",
                format!("{} / {hard}", format_bytes(soft)),
            );
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        if !self.workers.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<10} {:>8} {:>10} {:>10}  ended",
                "worker", "pid", "tasks", "peak RSS"
            );
            for w in &self.workers {
                let leak = if w.leaky { "leak " } else { "" };
                let ended = match (&w.reason, w.exit_code, w.exit_signal) {
                    (Some(reason), _, _) => reason.clone(),
                    (None, Some(code), _) => format!("exit {code}"),
                    (None, None, Some(signal)) => format!("signal {signal}"),
                    (None, None, None) => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {:<10} {:>8} {:>10} {:>10}  {leak}{ended}",
                    w.id,
                    w.pid,
                    format_thousands(w.tasks_done),
                    format_bytes(w.peak_rss_bytes)
                );
            }
        }
        for e in self
            .restart_events
            .iter()
            .filter(|e| e.leak.is_some())
            .take(5)
        {
            if let Some(leak) = &e.leak {
                let _ = writeln!(
                    out,
                    "  {} {} ({}) at {:.1} s: {}",
                    e.worker,
                    e.reason,
                    e.action,
                    ms_to_s(e.at_ms),
                    leak.message
                );
            }
        }
        if !self.reports.is_empty() {
            let _ = writeln!(out, "\n  reported:");
            for r in &self.reports {
                let _ = writeln!(out, "  - {r}");
            }
        }
        out
    }
}

#[allow(clippy::cast_precision_loss)] // display only
fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Every reason with its count, zeros included, keyed by name.
#[must_use]
pub fn restart_counts(counts: &BTreeMap<RestartReason, u64>) -> BTreeMap<String, u64> {
    RestartReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), counts.get(r).copied().unwrap_or(0)))
        .collect()
}

/// The stage most leak reports name (ties: the larger total growth, then the name).
#[must_use]
pub fn leaking_stage(events: &[RestartEvent]) -> Option<String> {
    let mut by_stage: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for leak in events.iter().filter_map(|e| e.leak.as_ref()) {
        let entry = by_stage.entry(leak.stage.as_str()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(leak.retained_bytes);
    }
    by_stage
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(stage, _)| stage.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(worker: &str, reason: &str, leak: Option<(&str, u64)>) -> RestartEvent {
        RestartEvent {
            worker: worker.into(),
            pid: 1,
            reason: reason.into(),
            action: "drain".into(),
            at_ms: 1_500,
            unix_ms: 0,
            memory_bytes: Some(100 << 20),
            rss_at_signal: Some(101 << 20),
            tasks_done: 600,
            leak: leak.map(|(stage, bytes)| LeakReport {
                stage: stage.into(),
                retained_bytes: bytes,
                over_tasks: 600,
                message: format!(
                    "stage {stage} retained +{} over 600 tasks",
                    format_bytes(bytes)
                ),
            }),
        }
    }

    fn summary() -> Summary {
        let mut counts = BTreeMap::new();
        counts.insert(RestartReason::MemorySoft, 2);
        Summary {
            outcome: Outcome::Complete,
            queue: "q".into(),
            index: "i".into(),
            indexed: 2_940,
            filtered: 60,
            skipped: 0,
            dead: 0,
            retried: 3,
            requeued_ids: 5,
            recovered_ids: 0,
            restarts: restart_counts(&counts),
            restart_events: vec![
                event("local-1", "memory-soft", Some(("enrich", 38 << 20))),
                event("local-2", "memory-soft", Some(("enrich", 36 << 20))),
            ],
            leaking_stage: Some("enrich".into()),
            docs_per_second: 250.0,
            wall_seconds: 12.0,
            memory: MemoryLimits {
                limit_bytes: Some(128 << 20),
                soft_bytes: Some(102 << 20),
                hard_bytes: Some(117 << 20),
                worker_limit_bytes: Some(128 << 20),
            },
            workers: vec![WorkerSummary {
                id: "local-1".into(),
                pid: 42,
                port: 9100,
                log: "logs/local-1.log".into(),
                started_ms: 0,
                ready_ms: Some(800),
                stop_ms: Some(8_500),
                ended_ms: Some(9_000),
                tasks_done: 1_200,
                peak_rss_bytes: 103 << 20,
                exit_code: Some(0),
                exit_signal: None,
                reason: Some("memory-soft".into()),
                leaky: true,
            }],
            reports: vec![],
        }
    }

    #[test]
    fn every_reason_is_counted_even_at_zero() {
        let s = summary();
        assert_eq!(s.restarts.len(), RestartReason::ALL.len());
        assert_eq!(s.restarts_of(RestartReason::MemorySoft), 2);
        assert_eq!(s.restarts_of(RestartReason::Crashed), 0);
    }

    #[test]
    fn the_table_names_counts_restarts_and_the_leaking_stage() {
        let table = summary().table();
        for expected in [
            "documents indexed       2,940",
            "filtered (blacklisted)  60",
            "requeued ids            5",
            "restarts                memory-soft 2",
            "leaking stage           enrich (e.g. stage enrich retained +38 MiB over 600 tasks)",
            "250.0 docs/s",
            "local-1          42      1,200    103 MiB  leak memory-soft",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from\n{table}"
            );
        }
    }

    #[test]
    fn the_summary_round_trips_through_json() {
        let s = summary();
        let json = serde_json::to_string_pretty(&s).unwrap();
        assert!(json.contains("\"outcome\": \"complete\""), "{json}");
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }

    #[test]
    fn the_leaking_stage_is_the_one_most_reports_name() {
        let events = [
            event("a", "memory-soft", Some(("sink", 90 << 20))),
            event("b", "memory-soft", Some(("enrich", 10 << 20))),
            event("c", "memory-soft", Some(("enrich", 10 << 20))),
            event("d", "crashed", None),
        ];
        assert_eq!(leaking_stage(&events).as_deref(), Some("enrich"));
        assert_eq!(leaking_stage(&events[3..]), None);
    }
}
