//! Events (`events.k8s.io/v1`) on a MigrateJob: one for each scale, restart and requeue, and
//! for each problem when it first appears, with a reason a person can filter on.
//!
//! The texts are built by pure functions; [`publish`] sends them and only logs a failure (an
//! Event that cannot be written never fails a reconciliation).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use crate::policy::RestartReason;

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// Short CamelCase reason.
    pub reason: String,
    /// What the operator did: `Scale`, `Restart`, `Requeue`, `Validate`, `Observe`, `Complete`.
    pub action: &'static str,
    /// The sentence shown by `kubectl describe`.
    pub message: String,
    /// The worker pod concerned, if one is (the Event's `related` object). Events of the same
    /// reason about different pods are distinct Events rather than one series.
    pub pod: Option<String>,
}

impl Note {
    fn normal(reason: impl Into<String>, action: &'static str, message: String) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            action,
            message,
            pod: None,
        }
    }

    fn warning(reason: impl Into<String>, action: &'static str, message: String) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            action,
            message,
            pod: None,
        }
    }

    fn about(mut self, pod: &str) -> Self {
        self.pod = Some(pod.to_owned());
        self
    }

    /// Adds the leaking stage, when one was named, to the message:
    /// `...; stage enrich retained +38 MiB over 2,000 tasks`.
    #[must_use]
    pub fn with_leak(mut self, leak: Option<&str>) -> Self {
        if let Some(leak) = leak {
            self.message.push_str("; ");
            self.message.push_str(leak);
        }
        self
    }
}

/// The Event reason of a restart reason: `OomKilled`, `MemorySoft`, `ScaledDown`, ...
#[must_use]
pub fn restart_event_reason(reason: RestartReason) -> &'static str {
    match reason {
        RestartReason::MemorySoft => "MemorySoft",
        RestartReason::MemoryHard => "MemoryHard",
        RestartReason::Recycled => "Recycled",
        RestartReason::OomKilled => "OomKilled",
        RestartReason::Crashed => "Crashed",
        RestartReason::Evicted => "Evicted",
        RestartReason::ScaledDown => "ScaledDown",
        RestartReason::Updated => "Updated",
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// Workers started.
#[must_use]
pub fn scaled_up(count: u32, desired: u32, why: &str) -> Note {
    Note::normal(
        "ScaledUp",
        "Scale",
        format!(
            "started {count} worker{} ({desired} wanted: {why})",
            if count == 1 { "" } else { "s" }
        ),
    )
}

/// A worker asked to stop (drained or killed) by the operator.
#[must_use]
pub fn stopping(
    worker: &str,
    reason: RestartReason,
    memory_bytes: Option<u64>,
    at_once: bool,
) -> Note {
    let how = if at_once {
        "stopped at once"
    } else {
        "draining (finishing its in-flight tasks)"
    };
    let why = match reason {
        RestartReason::ScaledDown => "fewer workers are needed".to_owned(),
        RestartReason::MemorySoft => format!(
            "its memory{} crossed memory.soft; a replacement starts first",
            memory_bytes.map_or_else(String::new, |b| format!(" ({})", mib(b)))
        ),
        RestartReason::MemoryHard => format!(
            "its memory{} crossed memory.hard; its in-flight ids are requeued",
            memory_bytes.map_or_else(String::new, |b| format!(" ({})", mib(b)))
        ),
        RestartReason::Recycled => "it finished workers.recycleAfterTasks tasks".to_owned(),
        RestartReason::Updated => {
            "it runs an older spec of the job; a replacement with the current one starts first"
                .to_owned()
        }
        other => other.as_str().to_owned(),
    };
    let note = format!("worker {worker} {how}: {why}");
    let event = if reason == RestartReason::ScaledDown {
        Note::normal("ScaledDown", "Scale", note)
    } else if reason == RestartReason::MemoryHard {
        Note::warning(restart_event_reason(reason), "Restart", note)
    } else {
        Note::normal(restart_event_reason(reason), "Restart", note)
    };
    event.about(worker)
}

/// A worker ended on its own and was counted (or finished normally).
#[must_use]
pub fn ended(worker: &str, reason: Option<RestartReason>, code: Option<i32>) -> Note {
    let code = code.map_or_else(|| "no exit code".to_owned(), |c| format!("exit code {c}"));
    let event = match reason {
        None => Note::normal(
            "WorkerFinished",
            "Restart",
            format!("worker {worker} finished ({code})"),
        ),
        Some(RestartReason::OomKilled) => Note::warning(
            "OomKilled",
            "Restart",
            format!(
                "worker {worker} was killed by the kernel's OOM killer ({code}); it is replaced. \
                 Raise workers.resources.limits.memory or lower memory.soft/memory.hard so workers drain before the kernel kills them"
            ),
        ),
        Some(r) => Note::warning(
            restart_event_reason(r),
            "Restart",
            format!(
                "worker {worker} ended ({code}, reason {}); it is replaced",
                r.as_str()
            ),
        ),
    };
    event.about(worker)
}

/// Ids moved back to the queue from a worker's processing list.
#[must_use]
pub fn requeued(worker: &str, ids: u64) -> Note {
    Note::normal(
        "Requeued",
        "Requeue",
        format!(
            "{ids} in-flight id{} of worker {worker} put back on the queue",
            if ids == 1 { "" } else { "s" }
        ),
    )
    .about(worker)
}

/// A problem appeared (Degraded).
#[must_use]
pub fn problem(reason: &str, message: &str) -> Note {
    Note::warning(reason.to_owned(), "Observe", message.to_owned())
}

/// Drain mode finished.
#[must_use]
pub fn completed() -> Note {
    Note::normal(
        "Completed",
        "Complete",
        "the queue is empty and nothing is in flight; every worker stopped".to_owned(),
    )
}

/// Publishes a note on `regarding`; a failure is logged, never returned.
pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, note: Note) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(note.message.chars().take(1000).collect()),
        action: note.action.to_owned(),
        secondary: note.pod.as_ref().map(|pod| ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(pod.clone()),
            namespace: regarding.namespace.clone(),
            ..ObjectReference::default()
        }),
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        warn!(reason = %note.reason, error = %migrate_contract::error_chain(&e), "Could not publish an Event.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_is_a_warning_that_says_what_to_change() {
        let n = ended("w-1", Some(RestartReason::OomKilled), Some(137));
        assert!(n.warning);
        assert_eq!(n.reason, "OomKilled");
        assert!(n.message.contains("limits.memory"), "{}", n.message);
    }

    #[test]
    fn a_memory_restart_names_the_leaking_stage_when_one_was_found() {
        let leak = "stage enrich retained +38 MiB over 2,000 tasks";
        let n = stopping("w-1", RestartReason::MemorySoft, Some(150 << 20), false)
            .with_leak(Some(leak));
        assert_eq!(n.reason, "MemorySoft");
        assert!(n.message.ends_with(&format!("; {leak}")), "{}", n.message);
        let plain = stopping("w-1", RestartReason::MemorySoft, Some(150 << 20), false);
        assert_eq!(plain.clone().with_leak(None), plain);
    }

    #[test]
    fn a_scale_down_is_a_normal_scale_event() {
        let n = stopping("w-2", RestartReason::ScaledDown, None, false);
        assert!(!n.warning);
        assert_eq!((n.reason.as_str(), n.action), ("ScaledDown", "Scale"));
    }

    #[test]
    fn requeue_notes_count_the_ids() {
        assert!(requeued("w", 3).message.starts_with("3 in-flight ids"));
        assert!(requeued("w", 1).message.starts_with("1 in-flight id of"));
    }
}
