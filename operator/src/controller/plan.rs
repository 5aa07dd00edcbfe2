//! Plan, the pure step of a round: from what was observed and what is remembered, the steps to
//! carry out, in order, and what the status will say. No client, no clock: every decision of a
//! round can be tested as a table.
//!
//! The order of [`Step`]s is the order of the writes: ends nobody asked for are recorded first
//! (so a later round does not count them again), ended pods are reaped, new pods start *before*
//! any is drained, then drained and killed pods stop, a finished drain deletes what is left,
//! problems are announced, and the busyness annotations are brought up to date.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use migrate_crds::MigrateJob;

mod problems;

pub(super) use problems::{REASON_POD_REFUSED, StartRefusal, refusal};
use problems::{Reports, oom_message, problems};

use super::build;
use super::context::JobMemory;
use super::observe::{self, Observed};
use super::status::Problem;
use crate::policy::{
    self, Action as PolicyAction, Backlog, Observations, PolicyState, RestartReason, Settings,
    Worker,
};

/// How long an OOM kill keeps the job Degraded.
const OOM_DEGRADED_FOR: Duration = Duration::from_secs(600);

/// How an ended pod's end is recorded (once: a pod already marked reaped has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct End {
    /// The restart reason counted; `None` when the operator asked for the end (counted then)
    /// or the pod finished normally.
    pub(super) counted: Option<RestartReason>,
    /// The `reaped` annotation's value: the reason, or `finished`.
    pub(super) label: &'static str,
    /// The container's exit code.
    pub(super) code: Option<i32>,
    /// Whether an Event says so (not for a pod the operator stopped: that had its Event).
    pub(super) announce: bool,
    /// The last memory usage seen, for an OOM kill.
    pub(super) usage: Option<u64>,
    /// The Degraded message of an OOM kill.
    pub(super) oom: Option<String>,
}

/// One write of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// A pod someone else deletes (eviction API, node drain, kubectl): recorded and counted
    /// once as evicted.
    MarkEvicted {
        /// The pod.
        pod: String,
    },
    /// A pod that vanished since the last round without the operator deleting it.
    CountVanished {
        /// The pod.
        pod: String,
    },
    /// Ids still held by a worker whose pod is gone.
    RequeueVanished {
        /// The worker.
        worker: String,
    },
    /// An ended pod: its ids requeued, its end recorded, the pod deleted.
    Reap {
        /// The pod.
        worker: String,
        /// How its end is recorded; `None` when it already was.
        end: Option<End>,
    },
    /// New worker pods.
    Start {
        /// How many.
        count: u32,
        /// Why, for the Event.
        why: String,
    },
    /// A pod drained (its grace period) or killed (at once).
    Stop {
        /// The pod.
        worker: String,
        /// Why.
        reason: RestartReason,
        /// Its memory when decided.
        memory_bytes: Option<u64>,
        /// Killed rather than drained.
        at_once: bool,
    },
    /// A pod left when a drain finished: recorded as finished, then deleted.
    Finish {
        /// The pod.
        pod: String,
    },
    /// The drain finished.
    Completed,
    /// A problem, published as an Event the first time it is seen.
    Announce(Problem),
    /// A live pod's busyness annotations, which differ from what it carries.
    Annotate {
        /// The pod.
        pod: String,
        /// The annotations wanted.
        annotations: BTreeMap<String, String>,
    },
}

/// What a round will do and report.
#[derive(Debug)]
pub(super) struct Plan {
    /// The writes, in order.
    pub(super) steps: Vec<Step>,
    /// The policy's view of every pod.
    pub(super) workers: Vec<Worker>,
    /// Workers wanted now.
    pub(super) desired: u32,
    /// The policy's state for the next round.
    pub(super) state: PolicyState,
    /// The backlog, when Redis answered.
    pub(super) backlog: Option<Backlog>,
    /// Pods this round deletes.
    pub(super) deleted: BTreeSet<String>,
    /// Workers waiting for a restart slot.
    pub(super) throttled: Vec<String>,
    /// Why the job is Degraded.
    pub(super) problems: Vec<Problem>,
}

/// Plans one round of `job` from `observed` and what `mem` remembers; `now` is the time since
/// the controller started (the policy's clock).
pub(super) fn plan(
    job: &MigrateJob,
    settings: &Settings,
    observed: &Observed,
    mem: &JobMemory,
    now: Duration,
) -> Plan {
    let mut steps = Vec::new();
    let pods = &observed.pods;
    let present: BTreeSet<String> = pods.iter().map(ResourceExt::name_any).collect();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some()
            && observe::stop_reason(pod).is_none()
            && !observe::already_reaped(pod)
            && observe::exit_status(pod).is_none()
        {
            steps.push(Step::MarkEvicted {
                pod: pod.name_any(),
            });
        }
    }
    for pod in mem.known_pods.iter().filter(|p| !present.contains(*p)) {
        steps.push(Step::CountVanished { pod: pod.clone() });
    }
    if let (Some(_), Some(view)) = (&observed.url, &observed.view) {
        let prefix = build::pod_prefix(&job.name_any());
        for holder in view
            .holders
            .iter()
            .filter(|h| h.starts_with(&prefix) && !present.contains(*h))
        {
            steps.push(Step::RequeueVanished {
                worker: holder.clone(),
            });
        }
    }

    let workers: Vec<Worker> = pods
        .iter()
        .map(|p| {
            let n = p.name_any();
            observe::to_worker(
                p,
                &observed.template_hash,
                observed.in_flight_of(&n),
                mem.readings.get(&n),
                observed.wall,
                observed.instant,
            )
        })
        .collect();
    let backlog = observed.view.as_ref().map(|v| v.backlog);
    let observations = Observations {
        workers: workers.clone(),
        backlog,
        now,
    };
    let decision = policy::decide(settings, &observations, &mem.policy);

    let by_name: HashMap<&str, &Pod> = pods
        .iter()
        .map(|p| (p.metadata.name.as_deref().unwrap_or_default(), p))
        .collect();
    let mut reports = Reports::default();
    for action in &decision.actions {
        if let PolicyAction::Report(report) = action {
            reports.add(report);
        }
    }
    let mut deleted = BTreeSet::new();
    let mut new_oom = None;
    for action in &decision.actions {
        let PolicyAction::Reap { worker, reason } = action else {
            continue;
        };
        let Some(pod) = by_name.get(worker.as_str()) else {
            continue;
        };
        let end = (!observe::already_reaped(pod)).then(|| {
            let asked = observe::stop_reason(pod).is_some();
            // A pod the operator stopped was counted when it was asked to stop.
            let counted = if asked { None } else { *reason };
            let usage = reports.oom_usage.get(worker.as_str()).copied().flatten();
            let oom = (counted == Some(RestartReason::OomKilled))
                .then(|| oom_message(job, worker, usage));
            if oom.is_some() {
                new_oom.clone_from(&oom);
            }
            End {
                counted,
                label: reason.map_or("finished", RestartReason::as_str),
                code: observe::exit_status(pod).and_then(|s| s.code),
                announce: !asked,
                usage,
                oom,
            }
        });
        steps.push(Step::Reap {
            worker: worker.clone(),
            end,
        });
        deleted.insert(worker.clone());
    }
    // No worker starts while an object the spec names (or a key in it) is missing.
    let blocked = observed
        .problems
        .iter()
        .any(|p| observe::is_missing_reference(&p.reason));
    for action in &decision.actions {
        if let PolicyAction::Start { count } = action
            && !blocked
        {
            steps.push(Step::Start {
                count: *count,
                why: scale_reason(settings, backlog),
            });
        }
    }
    for action in &decision.actions {
        let (worker, reason, memory_bytes, at_once) = match action {
            PolicyAction::Drain {
                worker,
                reason,
                memory_bytes,
            } => (worker, *reason, *memory_bytes, false),
            PolicyAction::Kill {
                worker,
                reason,
                memory_bytes,
            } => (worker, *reason, *memory_bytes, true),
            _ => continue,
        };
        steps.push(Step::Stop {
            worker: worker.clone(),
            reason,
            memory_bytes,
            at_once,
        });
        deleted.insert(worker.clone());
    }
    if decision.actions.contains(&PolicyAction::Complete) {
        for pod in pods {
            let pod_name = pod.name_any();
            if !deleted.contains(&pod_name) && pod.metadata.deletion_timestamp.is_none() {
                steps.push(Step::Finish {
                    pod: pod_name.clone(),
                });
                deleted.insert(pod_name);
            }
        }
        steps.push(Step::Completed);
    }

    let last_oom = new_oom.or_else(|| {
        mem.last_oom
            .as_ref()
            .filter(|(at, _)| observed.instant.saturating_duration_since(*at) < OOM_DEGRADED_FOR)
            .map(|(_, message)| message.clone())
    });
    let problems = problems(job, observed, &decision.state, last_oom, &reports, &deleted);
    steps.extend(problems.iter().cloned().map(Step::Announce));

    // Busyness annotations for the cluster autoscaler and scale-down order.
    for pod in pods {
        let pod_name = pod.name_any();
        if deleted.contains(&pod_name)
            || pod.metadata.deletion_timestamp.is_some()
            || observe::exit_status(pod).is_some()
        {
            continue;
        }
        let wanted = build::busyness_annotations(observed.in_flight_of(&pod_name));
        let have = pod.annotations();
        if wanted.iter().any(|(k, v)| have.get(k) != Some(v)) {
            steps.push(Step::Annotate {
                pod: pod_name,
                annotations: wanted,
            });
        }
    }

    Plan {
        steps,
        workers,
        desired: decision.desired,
        state: decision.state,
        backlog,
        deleted,
        throttled: reports.throttled,
        problems,
    }
}

fn scale_reason(settings: &policy::Settings, backlog: Option<policy::Backlog>) -> String {
    match (settings.replicas_override, backlog) {
        (Some(n), _) => format!("spec.replicas is {n} (autoscaling: External)"),
        (None, Some(b)) => format!(
            "backlog {} at {} per worker, between {} and {}",
            b.total(),
            settings.target_backlog_per_worker,
            settings.min_replicas,
            settings.max_replicas
        ),
        (None, None) => "replacing stopped workers".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use k8s_openapi::jiff::Timestamp;
    use migrate_crds::pipeline::example_spec;
    use serde_json::json;

    use super::*;
    use crate::controller::observe::QueueView;

    fn job(replicas: Option<i32>) -> MigrateJob {
        let mut spec = example_spec();
        spec.replicas = replicas;
        if replicas.is_some() {
            spec.autoscaling = migrate_crds::Autoscaling::External;
        }
        let mut job = MigrateJob::new("test", spec);
        job.metadata.namespace = Some("etl".to_owned());
        job.metadata.uid = Some("uid-1".to_owned());
        job
    }

    fn pod(name: &str, deleting: bool) -> Pod {
        let mut metadata = json!({
            "name": name,
            "namespace": "etl",
            "ownerReferences": [{
                "apiVersion": "migrate-operator.io/v1alpha1", "kind": "MigrateJob",
                "name": "test", "uid": "uid-1", "controller": true
            }]
        });
        if deleting {
            metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({"metadata": metadata, "status": {"phase": "Pending"}}))
            .unwrap()
    }

    fn observed(pods: Vec<Pod>, view: QueueView) -> Observed {
        Observed {
            pods,
            url: Some("redis://127.0.0.1:6390".to_owned()),
            view: Some(view),
            problems: Vec::new(),
            secrets: build::SecretVersions::new(),
            template_hash: String::new(),
            pod_metrics_error: None,
            wall: Timestamp::now(),
            instant: Instant::now(),
        }
    }

    /// Ends nobody asked for are recorded before anything the policy decides: a pod someone
    /// else deletes, a pod gone since the last round, and the ids its worker still holds (a
    /// holder of another job's prefix is left alone).
    #[test]
    fn ends_nobody_asked_for_are_recorded_first() {
        let job = job(Some(1));
        let settings = Settings::from_spec(&job.spec).unwrap();
        let view = QueueView {
            holders: vec!["test-worker-gone".to_owned(), "other-worker-x".to_owned()],
            ..QueueView::default()
        };
        let mut mem = JobMemory::default();
        mem.known_pods.insert("test-worker-gone".to_owned());
        let seen = observed(vec![pod("test-worker-a", true)], view);
        let plan = plan(&job, &settings, &seen, &mem, Duration::from_secs(60));
        assert_eq!(
            plan.steps[..3],
            [
                Step::MarkEvicted {
                    pod: "test-worker-a".to_owned()
                },
                Step::CountVanished {
                    pod: "test-worker-gone".to_owned()
                },
                Step::RequeueVanished {
                    worker: "test-worker-gone".to_owned()
                },
            ]
        );
        assert!(
            !plan.steps.iter().any(
                |s| matches!(s, Step::RequeueVanished { worker } if worker == "other-worker-x")
            )
        );
    }

    /// A pod of `job` created an hour ago (past any start-up grace), Pending or Ready.
    fn old_pod(name: &str, ready: bool) -> Pod {
        let status = if ready {
            json!({"phase": "Running", "podIP": "10.0.0.9",
                   "conditions": [{"type": "Ready", "status": "True"}]})
        } else {
            json!({"phase": "Pending",
                   "conditions": [{"type": "PodScheduled", "status": "False",
                                   "reason": "Unschedulable", "message": "0/1 nodes are available"}]})
        };
        let created = Timestamp::now() - Duration::from_secs(3600);
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "etl",
                "creationTimestamp": created.to_string(),
                "ownerReferences": [{
                    "apiVersion": "migrate-operator.io/v1alpha1", "kind": "MigrateJob",
                    "name": "test", "uid": "uid-1", "controller": true
                }]
            },
            "status": status
        }))
        .unwrap()
    }

    fn reasons(plan: &Plan) -> Vec<&str> {
        plan.problems.iter().map(|p| p.reason.as_str()).collect()
    }

    /// No memory reading is expected from a worker that is not Ready: a Pending pod, however
    /// old, gives no MetricsUnavailable (it has its own Unschedulable), nor does a PodMetrics
    /// API that cannot be read while no worker is Ready; a Ready worker without a reading does.
    #[test]
    fn missing_metrics_are_reported_only_for_ready_workers() {
        let mut job = job(Some(1));
        job.spec.memory.source = migrate_crds::MemorySource::PodMetrics;
        let settings = Settings::from_spec(&job.spec).unwrap();
        let mut seen = observed(vec![old_pod("test-worker-a", false)], QueueView::default());
        seen.pod_metrics_error = Some("cannot list PodMetrics".to_owned());
        let pending = plan(
            &job,
            &settings,
            &seen,
            &JobMemory::default(),
            Duration::from_secs(3600),
        );
        assert_eq!(reasons(&pending), ["Unschedulable"]);

        let seen = observed(vec![old_pod("test-worker-a", true)], QueueView::default());
        let ready = plan(
            &job,
            &settings,
            &seen,
            &JobMemory::default(),
            Duration::from_secs(3600),
        );
        assert_eq!(reasons(&ready), ["MetricsUnavailable"]);
        assert!(
            ready.problems[0].message.contains("test-worker-a"),
            "{:?}",
            ready.problems
        );
    }

    /// A refused pod create waits 2 s, then twice as long after each refusal in a row, at most
    /// 120 s; an edit of the spec (a new generation) starts again from 2 s.
    #[test]
    fn a_refused_pod_create_backs_off_and_an_edit_retries_at_once() {
        let now = Instant::now();
        let first = StartRefusal::after(None, "no".to_owned(), Some(1), now);
        assert_eq!(first.retry_at - now, Duration::from_secs(2));
        assert!(first.waiting(Some(1), now));
        assert!(!first.waiting(Some(2), now), "an edit retries at once");
        assert!(!first.waiting(Some(1), now + Duration::from_secs(2)));
        let mut last = first;
        for _ in 0..10 {
            last = StartRefusal::after(Some(&last), "no".to_owned(), Some(1), now);
        }
        assert_eq!(last.failures, 11);
        assert_eq!(last.retry_at - now, Duration::from_secs(120));
        let edited = StartRefusal::after(Some(&last), "no".to_owned(), Some(2), now);
        assert_eq!(edited.failures, 1);
    }

    /// A refusal for good is told from an error worth retrying as it is, and keeps the API
    /// server's words.
    #[test]
    fn only_a_final_answer_of_the_api_server_is_a_refusal() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.to_owned(),
                message: format!("pods \"x\" is forbidden: answer {code}."),
                ..kube::core::Status::default()
            }))
        };
        assert_eq!(
            refusal(&status(403, "Forbidden")).as_deref(),
            Some("pods \"x\" is forbidden: answer 403 (403 Forbidden)")
        );
        assert!(refusal(&status(422, "Invalid")).is_some());
        for transient in [404, 409, 429, 500, 503] {
            assert_eq!(refusal(&status(transient, "x")), None, "{transient}");
        }
    }

    /// A scale-up starts its pods before it stops any, and deletes nothing it starts.
    #[test]
    fn new_pods_start_before_any_stops() {
        let job = job(Some(3));
        let settings = Settings::from_spec(&job.spec).unwrap();
        let seen = observed(vec![pod("test-worker-a", false)], QueueView::default());
        let plan = plan(
            &job,
            &settings,
            &seen,
            &JobMemory::default(),
            Duration::from_secs(60),
        );
        assert_eq!(plan.desired, 3);
        let start = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Start { count: 2, .. }))
            .unwrap_or_else(|| panic!("no start of 2 in {:?}", plan.steps));
        assert!(
            plan.steps[..start]
                .iter()
                .all(|s| !matches!(s, Step::Stop { .. } | Step::Finish { .. })),
            "{:?}",
            plan.steps
        );
        assert!(plan.deleted.is_empty());
    }
}
