//! A pod's status as the kubelet reports it, built from what the runner knows of its
//! containers. Pure: the runner keeps a [`PodView`], and [`build`] turns it into the
//! `PodStatus` written to the API server.
//!
//! - **Phase**: `Pending` while a container waits without ever having run; `Running` while one
//!   runs or will be restarted; with `restartPolicy: Never` (or `OnFailure` once every
//!   container exited 0) and every container ended, `Succeeded` when all exited 0, else
//!   `Failed`.
//! - **Conditions**: `PodScheduled`, `PodReadyToStartContainers` (volumes prepared),
//!   `Initialized`, `ContainersReady` and `Ready` (every container ready). A condition keeps
//!   its `lastTransitionTime` while its status does not change.
//! - **Containers**: `waiting` (with a reason such as `ContainerCreating`,
//!   `CreateContainerConfigError`, `ErrImagePull`, `CrashLoopBackOff`), `running`, or
//!   `terminated` with exit code, reason (`Completed`, `Error`, `OOMKilled`, `StartError`) and
//!   message; the previous termination as `lastState`; `restartCount`; `ready`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::oom::{KILLED_EXIT_CODE, OOM_REASON};

/// Most bytes of a termination message read from the container's file (the kubelet's limit).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most log lines used as the message under `FallbackToLogsOnError`.
pub const FALLBACK_LOG_LINES: usize = 80;
/// Most log bytes used as the message under `FallbackToLogsOnError`.
pub const FALLBACK_LOG_BYTES: usize = 2048;

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// A terminated container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    /// Exit code; 128 + the signal when a signal ended it.
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled` or `StartError`.
    pub reason: String,
    /// The termination message.
    pub message: Option<String>,
    /// When it started, if it did.
    pub started_at: Option<Time>,
    /// When it ended.
    pub finished_at: Time,
}

/// The terminated state of a process that ended with `exit`; `oom_killed` when the runner
/// killed it for its memory limit.
#[must_use]
pub fn terminated(
    exit: Exit,
    oom_killed: bool,
    message: Option<String>,
    started_at: Option<Time>,
    finished_at: Time,
) -> Terminated {
    let (exit_code, signal) = match exit {
        Exit::Code(c) => (c, None),
        Exit::Signal(s) => (128 + s, Some(s)),
    };
    let (exit_code, reason) = if oom_killed {
        (KILLED_EXIT_CODE, OOM_REASON)
    } else if exit_code == 0 {
        (0, "Completed")
    } else {
        (exit_code, "Error")
    };
    Terminated {
        exit_code,
        signal,
        reason: reason.to_owned(),
        message,
        started_at,
        finished_at,
    }
}

/// What one container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: being created, misconfigured, or waiting for its restart.
    Waiting {
        /// CamelCase reason.
        reason: String,
        /// What is wrong, if anything.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// Since when.
        started_at: Time,
    },
    /// Its process ended and will not be restarted (yet).
    Terminated(Terminated),
}

/// One container as the runner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// What it does now.
    pub state: State,
    /// Its previous termination, once it was restarted.
    pub last_terminated: Option<Terminated>,
    /// Whether its readiness probe (or, without one, its running) says ready.
    pub ready: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// `podrunner://<pid>` of the current or last process.
    pub container_id: Option<String>,
}

/// A pod as the runner knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The pod's loopback address.
    pub pod_ip: String,
    /// The node's address.
    pub host_ip: String,
    /// When the runner accepted the pod.
    pub start_time: Time,
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: String,
    /// Whether the pod's volumes are prepared.
    pub volumes_ready: bool,
    /// Its containers, in spec order.
    pub containers: Vec<ContainerView>,
}

/// The pod's phase.
#[must_use]
pub fn phase(view: &PodView) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut failed) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code != 0 {
                    failed += 1;
                }
            }
            State::Waiting { .. } if c.last_terminated.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 || view.containers.is_empty() {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    debug_assert!(stopped > 0);
    match view.restart_policy.as_str() {
        "Never" if failed > 0 => "Failed",
        "Never" => "Succeeded",
        "OnFailure" if failed > 0 => "Running",
        "OnFailure" => "Succeeded",
        _ => "Running",
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: Option<&PodStatus>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" }.to_owned();
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

fn terminated_state(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started_at.clone(),
            finished_at: Some(t.finished_at.clone()),
            container_id: None,
        }),
        ..ContainerState::default()
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at.clone()),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => terminated_state(t),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        restart_count: c.restart_count,
        started: Some(matches!(c.state, State::Running { .. })),
        state: Some(state),
        last_state: Some(
            c.last_terminated
                .as_ref()
                .map(terminated_state)
                .unwrap_or_default(),
        ),
        ..ContainerStatus::default()
    }
}

/// The `PodStatus` of `view`, keeping the transition times of `previous` where a condition did
/// not change.
#[must_use]
pub fn build(view: &PodView, previous: Option<&PodStatus>, now: &Time) -> PodStatus {
    let phase = phase(view);
    let ended = phase == "Succeeded" || phase == "Failed";
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = unready.is_empty() && !view.containers.is_empty();
    let (ready_reason, ready_message) = if all_ready {
        (None, None)
    } else if ended {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            view.volumes_ready && !ended,
            None,
            None,
            previous,
            now,
        ),
        condition("Initialized", true, None, None, previous, now),
        condition(
            "Ready",
            all_ready,
            ready_reason,
            ready_message.clone(),
            previous,
            now,
        ),
        condition(
            "ContainersReady",
            all_ready,
            ready_reason,
            ready_message,
            previous,
            now,
        ),
        condition("PodScheduled", true, None, None, previous, now),
    ];
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.clone(),
        }]),
        pod_ip: Some(view.pod_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: view.pod_ip.clone(),
        }]),
        start_time: Some(view.start_time.clone()),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

/// Whether a container that ended with `exit_code` is restarted under `restart_policy`.
#[must_use]
pub fn restart_wanted(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The delay before restart number `step + 1`: `base` doubled `step` times, at most `max`
/// (the kubelet's 10 s, 20 s, 40 s ... 300 s).
#[must_use]
pub fn backoff(step: u32, base: Duration, max: Duration) -> Duration {
    base.checked_mul(1u32 << step.min(20))
        .unwrap_or(max)
        .min(max)
}

/// The termination message: the container's file when it wrote one (at most
/// [`MAX_MESSAGE_BYTES`]), else, under `FallbackToLogsOnError` and a non-zero exit, the tail of
/// its log (at most [`FALLBACK_LOG_LINES`] lines and [`FALLBACK_LOG_BYTES`] bytes).
#[must_use]
pub fn termination_message(
    file: Option<&[u8]>,
    policy: Option<&str>,
    exit_code: i32,
    log: Option<&str>,
) -> Option<String> {
    if let Some(bytes) = file.filter(|b| !b.is_empty()) {
        let cut = &bytes[..bytes.len().min(MAX_MESSAGE_BYTES)];
        return Some(String::from_utf8_lossy(cut).into_owned());
    }
    if policy != Some("FallbackToLogsOnError") || exit_code == 0 {
        return None;
    }
    let log = log?;
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
    let start = tail.len().saturating_sub(FALLBACK_LOG_BYTES);
    let start = (start..=tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    let text = tail[start..].trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn view(policy: &str, states: Vec<State>) -> PodView {
        PodView {
            pod_ip: "127.0.0.5".to_owned(),
            host_ip: "127.0.0.1".to_owned(),
            start_time: at(1_000),
            restart_policy: policy.to_owned(),
            volumes_ready: true,
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerView {
                    name: format!("c{i}"),
                    image: "img".to_owned(),
                    ready: matches!(state, State::Running { .. }),
                    state,
                    last_terminated: None,
                    restart_count: 0,
                    container_id: None,
                })
                .collect(),
        }
    }

    fn ended(code: i32) -> State {
        State::Terminated(terminated(Exit::Code(code), false, None, None, at(2_000)))
    }

    fn creating() -> State {
        State::Waiting {
            reason: "ContainerCreating".to_owned(),
            message: None,
        }
    }

    #[test]
    fn the_phase_follows_the_containers_and_the_restart_policy() {
        let running = State::Running {
            started_at: at(1_001),
        };
        assert_eq!(phase(&view("Never", vec![creating()])), "Pending");
        assert_eq!(phase(&view("Never", vec![running.clone()])), "Running");
        assert_eq!(phase(&view("Never", vec![running, ended(1)])), "Running");
        assert_eq!(phase(&view("Never", vec![ended(0), ended(0)])), "Succeeded");
        assert_eq!(phase(&view("Never", vec![ended(0), ended(10)])), "Failed");
        assert_eq!(phase(&view("OnFailure", vec![ended(0)])), "Succeeded");
        assert_eq!(phase(&view("OnFailure", vec![ended(2)])), "Running");
        assert_eq!(phase(&view("Always", vec![ended(0)])), "Running");
        let mut restarting = view("Always", vec![creating()]);
        restarting.containers[0].last_terminated =
            Some(terminated(Exit::Signal(9), false, None, None, at(1_500)));
        assert_eq!(phase(&restarting), "Running", "a restart is not Pending");
    }

    #[test]
    fn a_running_ready_pod_reports_ip_ready_conditions_and_running_state() {
        let v = view(
            "Never",
            vec![State::Running {
                started_at: at(1_001),
            }],
        );
        let s = build(&v, None, &at(1_002));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.5"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "127.0.0.5");
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let v = view("Never", vec![creating()]);
        let first = build(&v, None, &at(1_000));
        let again = build(&v, Some(&first), &at(1_100));
        assert_eq!(first, again);
        let mut now_ready = v.clone();
        now_ready.containers[0].state = State::Running {
            started_at: at(1_200),
        };
        now_ready.containers[0].ready = true;
        let changed = build(&now_ready, Some(&first), &at(1_200));
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(ready(&changed), Some(at(1_200)));
    }

    #[test]
    fn an_oom_kill_is_reported_as_the_kernel_reports_it() {
        let t = terminated(Exit::Signal(9), true, None, Some(at(1)), at(2));
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "OOMKilled"));
        let t = terminated(Exit::Signal(9), false, None, Some(at(1)), at(2));
        assert_eq!(
            (t.exit_code, t.signal, t.reason.as_str()),
            (137, Some(9), "Error")
        );
        let t = terminated(Exit::Code(0), false, None, None, at(2));
        assert_eq!(t.reason, "Completed");
        let s = build(&view("Never", vec![State::Terminated(t)]), None, &at(3));
        let ready = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn restarts_follow_the_policy_with_a_doubling_capped_backoff() {
        assert!(!restart_wanted("Never", 1));
        assert!(restart_wanted("OnFailure", 1));
        assert!(!restart_wanted("OnFailure", 0));
        assert!(restart_wanted("Always", 0));
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(300));
        let delays: Vec<u64> = (0..7).map(|n| backoff(n, base, max).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX, base, max), max);
    }

    #[test]
    fn the_message_is_the_file_else_the_log_tail_on_failure() {
        assert_eq!(
            termination_message(Some(b"memory-soft: 70 MiB"), None, 10, Some("log")).as_deref(),
            Some("memory-soft: 70 MiB")
        );
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = termination_message(None, Some("FallbackToLogsOnError"), 1, Some(&log)).unwrap();
        assert!(
            tail.starts_with("line 20") && tail.ends_with("line 99"),
            "{tail}"
        );
        assert_eq!(
            termination_message(None, Some("FallbackToLogsOnError"), 0, Some(&log)),
            None
        );
        assert_eq!(termination_message(None, Some("File"), 1, Some(&log)), None);
        let long = "é".repeat(3_000);
        let cut = termination_message(None, Some("FallbackToLogsOnError"), 1, Some(&long)).unwrap();
        assert!(cut.len() <= FALLBACK_LOG_BYTES);
    }
}
