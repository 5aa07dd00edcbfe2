//! Pods mapped to the policy's [`Worker`]s by pure functions: an ended pod's terminated
//! container state (exit code, `OOMKilled`) and the pod's `Evicted` reason become its
//! [`ExitStatus`].

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::Scraped;
use crate::controller::build::{self, REAPED, STOP_REASON};
use crate::policy::{ExitStatus, MemoryReading, RestartReason, Worker, WorkerState};

/// Whether the pod's Ready condition is True.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP, when it has one.
#[must_use]
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The reason the operator stopped this pod for, if it did.
#[must_use]
pub fn stop_reason(pod: &Pod) -> Option<RestartReason> {
    annotation(pod, STOP_REASON).and_then(RestartReason::from_name)
}

/// Whether this pod's end was already counted (its reap was recorded on it).
#[must_use]
pub fn already_reaped(pod: &Pod) -> bool {
    annotation(pod, REAPED).is_some()
}

/// How an ended pod ended, or `None` while it runs (phase other than Succeeded/Failed).
#[must_use]
pub fn exit_status(pod: &Pod) -> Option<ExitStatus> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Succeeded" && phase != "Failed" {
        return None;
    }
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.name == build::CONTAINER)
                .or_else(|| cs.first())
        })
        .and_then(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
    let evicted = status.reason.as_deref() == Some("Evicted");
    Some(match terminated {
        Some(t) => ExitStatus {
            code: Some(t.exit_code),
            signal: t.signal,
            oom_killed: t.reason.as_deref() == Some("OOMKilled"),
            evicted,
        },
        None => ExitStatus {
            // A pod that succeeded without a container status still ended normally.
            code: (phase == "Succeeded").then_some(0),
            signal: None,
            oom_killed: false,
            evicted,
        },
    })
}

/// The policy's view of one pod; `template_hash` is the job's current
/// [`build::template_hash`](build::template_hash) (empty: unknown, nothing is outdated).
#[must_use]
pub fn to_worker(
    pod: &Pod,
    template_hash: &str,
    in_flight: u64,
    reading: Option<&Scraped>,
    wall_now: Timestamp,
    now: Instant,
) -> Worker {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let asked = stop_reason(pod);
    let state = if let Some(status) = exit_status(pod) {
        WorkerState::Exited { status, asked }
    } else if pod.metadata.deletion_timestamp.is_some() {
        WorkerState::Draining(asked.unwrap_or(RestartReason::Evicted))
    } else if is_ready(pod) {
        WorkerState::Running
    } else {
        WorkerState::Starting
    };
    let age = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(wall_now.duration_since(t.0)).ok())
        .unwrap_or_default();
    Worker {
        name,
        state,
        age,
        ready: is_ready(pod),
        in_flight,
        tasks_done: reading.map_or(0, |r| r.tasks_done),
        memory: reading.map(|r| MemoryReading {
            usage_bytes: r.usage_bytes,
            limit_bytes: r.limit_bytes,
            age: now.saturating_duration_since(r.at),
        }),
        outdated: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(build::TEMPLATE_HASH))
            .is_some_and(|h| !template_hash.is_empty() && h != template_hash),
        asks_restart: reading.is_some_and(|r| r.restart_requested),
    }
}

/// The scheduler's message when `pod` cannot be placed on any node (its `PodScheduled`
/// condition is False with reason `Unschedulable`), e.g. `0/1 nodes are available: 1
/// Insufficient memory.`
#[must_use]
pub fn unschedulable(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_oom_killed_container_is_read_from_its_terminated_state() {
        let p = pod(json!({
            "metadata": {"name": "w-1"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        }));
        let status = exit_status(&p).unwrap();
        assert!(status.oom_killed);
        assert_eq!(status.code, Some(137));
        assert_eq!(
            crate::policy::classify_exit(&status, None),
            Some(RestartReason::OomKilled)
        );
    }

    #[test]
    fn an_evicted_pod_without_a_container_state_is_evicted() {
        let p = pod(
            json!({"metadata": {"name": "w"}, "status": {"phase": "Failed", "reason": "Evicted"}}),
        );
        let status = exit_status(&p).unwrap();
        assert!(status.evicted);
        assert_eq!(
            crate::policy::classify_exit(&status, None),
            Some(RestartReason::Evicted)
        );
    }

    #[test]
    fn a_running_pod_has_no_exit_status_and_a_deleted_one_drains_for_its_recorded_reason() {
        let running = pod(json!({"metadata": {"name": "w"}, "status": {"phase": "Running"}}));
        assert_eq!(exit_status(&running), None);
        let deleting = pod(json!({"metadata": {
            "name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {STOP_REASON: "scaled-down"}
        }}));
        let w = to_worker(&deleting, "", 2, None, Timestamp::now(), Instant::now());
        assert_eq!(w.state, WorkerState::Draining(RestartReason::ScaledDown));
        assert_eq!(w.in_flight, 2);
    }

    /// The scheduler's message is taken from PodScheduled=False/Unschedulable only: a pod merely
    /// not yet scheduled, or scheduled, is no problem.
    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_message() {
        let with = |status: &str, reason: &str| {
            pod(json!({
                "metadata": {"name": "w-1"},
                "status": {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": status, "reason": reason,
                    "message": "0/1 nodes are available: 1 Insufficient memory."
                }]}
            }))
        };
        assert_eq!(
            unschedulable(&with("False", "Unschedulable")).as_deref(),
            Some("0/1 nodes are available: 1 Insufficient memory.")
        );
        assert_eq!(unschedulable(&with("False", "SchedulingGated")), None);
        assert_eq!(unschedulable(&with("True", "")), None);
        assert_eq!(
            unschedulable(&pod(json!({"metadata": {"name": "w-2"}}))),
            None
        );
    }
}
