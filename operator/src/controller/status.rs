//! The MigrateJob status: computed by pure functions, written by server-side apply.
//!
//! Four conditions, each with a reason and a message a person can act on:
//! - `Ready`: the workers wanted are ready (`WorkersReady`, `WorkersNotReady`,
//!   `NoWorkersNeeded`, `Complete`).
//! - `Progressing`: the pool is moving towards what is wanted (`ScalingUp`, `ScalingDown`,
//!   `Restarting`, `RestartsThrottled`, `Stable`, `Complete`).
//! - `Degraded`: something needs a person (`InvalidSpec`, `RedisSecretMissing`,
//!   `RedisSecretInvalid`, `RedisUnreachable`, `SecretMissing`, `SecretKeyMissing`,
//!   `ConfigMapMissing`, `KeywordFileMissing`, `ReferenceUnreadable` (an object the spec names,
//!   or a key in it: no worker starts), `WorkerConfigError`, `PodCreateRefused` (the API
//!   server's words), `ApplyFailed` or `RequeueFailed` (a round that failed, in the API
//!   server's words), `OomKilled`, `AllOverSoftLimit`, `MetricsUnavailable`, `Unschedulable`;
//!   `AsExpected` when nothing does).
//! - `Complete`: drain mode finished (`Drained`; `Running` or `ContinuousMode` until then).
//!
//! A condition's `lastTransitionTime` changes only when its status does, and the status is
//! written only when something in it changed, so a steady job costs no writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use migrate_contract::keys::stat;
use migrate_crds::{
    LastRestart, LeakReport, MemoryFigureSource, MigrateJob, MigrateJobStatus, Mode, Phase,
    RestartCounts,
};
use serde_json::json;

use super::apply::MANAGER;
use crate::policy::{Backlog, RestartReason};

/// Condition types.
pub const READY: &str = "Ready";
/// Condition type: moving towards what is wanted.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a person.
pub const DEGRADED: &str = "Degraded";
/// Condition type: drain mode finished.
pub const COMPLETE: &str = "Complete";

/// Something that makes the job Degraded: a reason and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason (CamelCase).
    pub reason: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// A problem.
    #[must_use]
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What the status is made of, besides the counters the controller keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Live (not ended) worker pods.
    pub live: i32,
    /// Ready worker pods.
    pub ready: i32,
    /// Workers wanted.
    pub desired: i32,
    /// Names of live pods that are not ready (for the message).
    pub not_ready: Vec<String>,
    /// Pods draining or being killed.
    pub draining: i32,
    /// The queue, when it could be read.
    pub backlog: Option<Backlog>,
    /// `{q}:stats`.
    pub stats: std::collections::BTreeMap<String, i64>,
    /// Drain mode finished.
    pub complete: bool,
    /// Drain mode: empty and waiting for the settle period.
    pub settling: bool,
    /// Workers over their soft limit wait for the restart budget.
    pub throttled: Vec<String>,
    /// Everything that makes the job Degraded, most important first.
    pub problems: Vec<Problem>,
    /// Which memory figure the live workers were read on; `None` when none was read.
    pub memory_source: Option<MemoryFigureSource>,
}

/// The status's name for the figures `sources` (one per live worker read): `rss` when any
/// worker is read on RSS (the weaker figure is the one to see), `None` when there is none.
#[must_use]
pub fn memory_source(
    sources: impl IntoIterator<Item = migrate_contract::memory::FigureSource>,
) -> Option<MemoryFigureSource> {
    use migrate_contract::memory::FigureSource;
    sources
        .into_iter()
        .map(|s| match s {
            FigureSource::CgroupWorkingSet => MemoryFigureSource::CgroupWorkingSet,
            FigureSource::Rss => MemoryFigureSource::Rss,
        })
        .max_by_key(|s| matches!(s, MemoryFigureSource::Rss))
}

/// The counters the controller keeps across reconciliations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Restarts by reason.
    pub restarts: RestartCounts,
    /// Ids put back on the queue.
    pub requeued: i64,
    /// The latest restart.
    pub last_restart: Option<LastRestart>,
    /// The latest stage named as leaking.
    pub leak: Option<LeakReport>,
}

impl Counters {
    /// Reads the counters from an existing status (after an operator restart).
    #[must_use]
    pub fn from_status(status: Option<&MigrateJobStatus>) -> Self {
        status.map_or_else(Self::default, |s| Self {
            restarts: s.restarts.clone(),
            requeued: s.requeued,
            last_restart: s.last_restart.clone(),
            leak: s.leak.clone(),
        })
    }

    /// Counts one restart.
    pub fn count(&mut self, reason: RestartReason) {
        let r = &mut self.restarts;
        r.total += 1;
        let slot = match reason {
            RestartReason::MemorySoft => &mut r.memory_soft,
            RestartReason::MemoryHard => &mut r.memory_hard,
            RestartReason::Recycled => &mut r.recycled,
            RestartReason::OomKilled => &mut r.oom_killed,
            RestartReason::Crashed => &mut r.crashed,
            RestartReason::Evicted => &mut r.evicted,
            RestartReason::ScaledDown => &mut r.scaled_down,
            RestartReason::Updated => &mut r.updated,
        };
        *slot += 1;
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn plural(n: i32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The status of a job that can run, from what was observed and counted.
#[must_use]
pub fn running_status(
    job: &MigrateJob,
    view: &View,
    counters: &Counters,
    now: &Time,
) -> MigrateJobStatus {
    let name = job.metadata.name.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let previous = job
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    let ready = if view.complete {
        condition(
            READY,
            false,
            "Complete",
            "the job is complete; no workers run".to_owned(),
            generation,
            previous,
            now,
        )
    } else if view.desired == 0 {
        condition(
            READY,
            true,
            "NoWorkersNeeded",
            "no workers are needed now (empty queue or replicas: 0)".to_owned(),
            generation,
            previous,
            now,
        )
    } else if view.ready >= view.desired {
        condition(
            READY,
            true,
            "WorkersReady",
            format!(
                "{} of {} ready",
                view.ready,
                plural(view.desired, "worker", "workers")
            ),
            generation,
            previous,
            now,
        )
    } else {
        let mut message = format!(
            "{} of {} ready",
            view.ready,
            plural(view.desired, "worker", "workers")
        );
        if !view.not_ready.is_empty() {
            let shown: Vec<&str> = view.not_ready.iter().take(5).map(String::as_str).collect();
            message.push_str(&format!(
                "; not ready: {} (see `kubectl describe pod` for why)",
                shown.join(", ")
            ));
        }
        condition(
            READY,
            false,
            "WorkersNotReady",
            message,
            generation,
            previous,
            now,
        )
    };

    let backlog_text = view.backlog.map_or_else(
        || "unknown backlog".to_owned(),
        |b| {
            format!(
                "backlog {} ({} queued, {} in flight)",
                b.total(),
                b.queued,
                b.in_flight
            )
        },
    );
    let progressing = if view.complete {
        condition(
            PROGRESSING,
            false,
            "Complete",
            "the job is complete".to_owned(),
            generation,
            previous,
            now,
        )
    } else if !view.throttled.is_empty() {
        condition(
            PROGRESSING,
            true,
            "RestartsThrottled",
            format!(
                "{} over the soft memory limit wait for memory.maxConcurrentRestarts: {}",
                plural(
                    i32::try_from(view.throttled.len()).unwrap_or(i32::MAX),
                    "worker",
                    "workers"
                ),
                view.throttled.join(", ")
            ),
            generation,
            previous,
            now,
        )
    } else if view.live - view.draining < view.desired {
        condition(
            PROGRESSING,
            true,
            "ScalingUp",
            format!(
                "{} of {} wanted exist; {backlog_text}",
                view.live - view.draining,
                view.desired
            ),
            generation,
            previous,
            now,
        )
    } else if view.draining > 0 {
        condition(
            PROGRESSING,
            true,
            "Restarting",
            format!(
                "{} finishing their in-flight tasks before they stop",
                plural(view.draining, "worker is", "workers are")
            ),
            generation,
            previous,
            now,
        )
    } else if view.live > view.desired {
        condition(
            PROGRESSING,
            true,
            "ScalingDown",
            format!(
                "{} run, {} wanted; idle workers stop after workers.scaleDownStabilizationSeconds; {backlog_text}",
                view.live, view.desired
            ),
            generation,
            previous,
            now,
        )
    } else {
        condition(
            PROGRESSING,
            false,
            "Stable",
            format!(
                "{} as wanted; {backlog_text}",
                plural(view.live, "worker", "workers")
            ),
            generation,
            previous,
            now,
        )
    };

    let degraded = match view.problems.split_first() {
        Some((first, rest)) => {
            let mut message = first.message.clone();
            if !rest.is_empty() {
                let others: Vec<&str> = rest.iter().map(|p| p.reason.as_str()).collect();
                message.push_str(&format!(" (also: {})", others.join(", ")));
            }
            condition(
                DEGRADED,
                true,
                &first.reason,
                message,
                generation,
                previous,
                now,
            )
        }
        None => condition(
            DEGRADED,
            false,
            "AsExpected",
            "nothing needs attention".to_owned(),
            generation,
            previous,
            now,
        ),
    };

    let complete = if view.complete {
        condition(
            COMPLETE,
            true,
            "Drained",
            "the queue stayed empty with nothing in flight for workers.drainSettleSeconds; every worker stopped".to_owned(),
            generation,
            previous,
            now,
        )
    } else if job.spec.mode == Mode::Continuous {
        condition(
            COMPLETE,
            false,
            "ContinuousMode",
            "a Continuous job waits for new ids for as long as it exists".to_owned(),
            generation,
            previous,
            now,
        )
    } else {
        condition(
            COMPLETE,
            false,
            "Running",
            format!("drain mode, {backlog_text}"),
            generation,
            previous,
            now,
        )
    };

    let phase = if view.complete {
        Phase::Complete
    } else if !view.problems.is_empty() && view.problems.iter().any(|p| blocks_work(&p.reason)) {
        Phase::Degraded
    } else if view.settling {
        Phase::Draining
    } else if view.desired > 0 && view.ready == 0 {
        Phase::Pending
    } else {
        Phase::Running
    };

    let previous_status = job.status.clone().unwrap_or_default();
    let stat = |k: &str| view.stats.get(k).copied().unwrap_or(0);
    let backlog = view.backlog;
    MigrateJobStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: vec![ready, progressing, degraded, complete],
        replicas: view.live,
        ready_replicas: view.ready,
        desired_replicas: view.desired,
        selector: Some(super::build::selector(&name)),
        backlog: backlog.map_or(previous_status.backlog, |b| saturating(b.total())),
        in_flight: backlog.map_or(previous_status.in_flight, |b| saturating(b.in_flight)),
        processed: if view.stats.is_empty() {
            previous_status.processed
        } else {
            stat(stat::INDEXED)
        },
        failed: if view.stats.is_empty() {
            previous_status.failed
        } else {
            stat(stat::RETRIED)
        },
        dead_lettered: if view.stats.is_empty() {
            previous_status.dead_lettered
        } else {
            stat("dead")
        },
        filtered: if view.stats.is_empty() {
            previous_status.filtered
        } else {
            stat("filtered")
        },
        requeued: counters.requeued,
        restarts: counters.restarts.clone(),
        last_restart: counters.last_restart.clone(),
        leak: counters.leak.clone(),
        memory_source: view.memory_source.or(previous_status.memory_source),
    }
}

/// Degraded reasons that stop the job from working at all (the phase becomes Degraded).
fn blocks_work(reason: &str) -> bool {
    matches!(
        reason,
        "InvalidSpec"
            | "RedisSecretMissing"
            | "RedisSecretInvalid"
            | "RedisSecretUnreadable"
            | "RedisUnreachable"
            | "WorkerConfigError"
            | "PodCreateRefused"
            | "ApplyFailed"
            | "SecretMissing"
            | "SecretKeyMissing"
            | "ConfigMapMissing"
            | "KeywordFileMissing"
            | "ReferenceUnreadable"
    )
}

/// The status of a job whose spec cannot run: the previous status with the Degraded condition
/// naming the problems.
#[must_use]
pub fn invalid_status(job: &MigrateJob, message: &str, now: &Time) -> MigrateJobStatus {
    stopped_status(
        job,
        super::validate::REASON_INVALID_SPEC,
        message,
        (
            "no workers start while the spec is invalid",
            "nothing is started or scaled while the spec is invalid",
            "the spec is invalid",
        ),
        now,
    )
}

/// The status of a job whose round failed (`reason`, `message`: what failed, in the API
/// server's words when it answered): the previous status with the Degraded condition saying
/// so, and the phase Degraded, so that a job whose first round fails does not show a blank
/// phase.
#[must_use]
pub fn failed_status(
    job: &MigrateJob,
    reason: &str,
    message: &str,
    now: &Time,
) -> MigrateJobStatus {
    stopped_status(
        job,
        reason,
        message,
        (
            "no worker is known to be ready: the last reconciliation failed",
            "nothing is started or scaled until a reconciliation succeeds",
            "the last reconciliation failed",
        ),
        now,
    )
}

/// The previous status with a Degraded condition (`reason`, `message`), Progressing false, and
/// Ready and Complete kept (or, when there were none, false with `texts`' messages).
fn stopped_status(
    job: &MigrateJob,
    reason: &str,
    message: &str,
    texts: (&str, &str, &str),
    now: &Time,
) -> MigrateJobStatus {
    let (ready_text, progressing_text, complete_text) = texts;
    let generation = job.metadata.generation;
    let mut status = job.status.clone().unwrap_or_default();
    let previous = status.conditions.clone();
    let keep = |type_: &str| previous.iter().find(|c| c.type_ == type_).cloned();
    let mut conditions = Vec::new();
    conditions.push(keep(READY).unwrap_or_else(|| {
        condition(
            READY,
            false,
            reason,
            ready_text.to_owned(),
            generation,
            &previous,
            now,
        )
    }));
    conditions.push(condition(
        PROGRESSING,
        false,
        reason,
        progressing_text.to_owned(),
        generation,
        &previous,
        now,
    ));
    conditions.push(condition(
        DEGRADED,
        true,
        reason,
        message.to_owned(),
        generation,
        &previous,
        now,
    ));
    conditions.push(keep(COMPLETE).unwrap_or_else(|| {
        condition(
            COMPLETE,
            false,
            reason,
            complete_text.to_owned(),
            generation,
            &previous,
            now,
        )
    }));
    status.conditions = conditions;
    status.observed_generation = generation;
    status.phase = Some(Phase::Degraded);
    if status.selector.is_none() {
        status.selector = job.metadata.name.as_deref().map(super::build::selector);
    }
    status
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether two statuses differ in anything but the conditions' transition times.
#[must_use]
pub fn differs(old: Option<&MigrateJobStatus>, new: &MigrateJobStatus) -> bool {
    let Some(old) = old else {
        return true;
    };
    old != new
}

/// Writes the status with server-side apply (field manager [`MANAGER`], forced).
///
/// # Errors
/// The API error.
pub async fn write(
    api: &Api<MigrateJob>,
    name: &str,
    status: &MigrateJobStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "migrate-operator.io/v1alpha1",
        "kind": "MigrateJob",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use migrate_crds::pipeline::example_spec;

    fn job() -> MigrateJob {
        let mut j = MigrateJob::new("articles", example_spec());
        j.metadata.generation = Some(3);
        j
    }

    fn find<'a>(s: &'a MigrateJobStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_healthy_pool_is_ready_stable_and_not_degraded() {
        let view = View {
            live: 2,
            ready: 2,
            desired: 2,
            backlog: Some(Backlog {
                queued: 5,
                in_flight: 3,
            }),
            ..View::default()
        };
        let now = Time(Timestamp::now());
        let s = running_status(&job(), &view, &Counters::default(), &now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(find(&s, READY).status, "True");
        assert_eq!(find(&s, PROGRESSING).reason, "Stable");
        assert_eq!(find(&s, DEGRADED).status, "False");
        assert_eq!(s.backlog, 8);
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/name=migrate-worker,migrate-operator.io/job=articles")
        );
        assert_eq!(s.phase, Some(Phase::Running));
    }

    /// The first problem is the reason; the others are named so none is hidden.
    #[test]
    fn degraded_names_the_first_problem_and_mentions_the_others() {
        let view = View {
            problems: vec![
                Problem::new("OomKilled", "raise workers.resources.limits.memory"),
                Problem::new("MetricsUnavailable", "x"),
            ],
            desired: 1,
            ..View::default()
        };
        let now = Time(Timestamp::now());
        let s = running_status(&job(), &view, &Counters::default(), &now);
        let d = find(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "OomKilled")
        );
        assert!(
            d.message.contains("limits.memory") && d.message.contains("also: MetricsUnavailable"),
            "{}",
            d.message
        );
        assert_eq!(
            s.phase,
            Some(Phase::Pending),
            "an OOM kill alone does not stop the job"
        );
    }

    /// Writing the same status twice keeps the transition times, so it compares equal.
    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let view = View {
            live: 1,
            ready: 1,
            desired: 1,
            ..View::default()
        };
        let early = Time(Timestamp::from_second(1_000_000).unwrap());
        let mut j = job();
        j.status = Some(running_status(&j, &view, &Counters::default(), &early));
        let later = Time(Timestamp::now());
        let again = running_status(&j, &view, &Counters::default(), &later);
        assert_eq!(find(&again, READY).last_transition_time, early);
        assert!(!differs(j.status.as_ref(), &again));
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_its_message() {
        let now = Time(Timestamp::now());
        let s = invalid_status(&job(), "the spec cannot run: x", &now);
        let d = find(&s, DEGRADED);
        assert_eq!(d.reason, "InvalidSpec");
        assert_eq!(d.message, "the spec cannot run: x");
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(s.observed_generation, Some(3));
    }

    /// One RSS-read worker makes the job's figure `rss`; no reading keeps the last known.
    #[test]
    fn the_memory_source_is_rss_when_any_worker_is_read_on_rss() {
        use migrate_contract::memory::FigureSource::{CgroupWorkingSet, Rss};
        assert_eq!(
            memory_source([CgroupWorkingSet, CgroupWorkingSet]),
            Some(MemoryFigureSource::CgroupWorkingSet)
        );
        assert_eq!(
            memory_source([CgroupWorkingSet, Rss, CgroupWorkingSet]),
            Some(MemoryFigureSource::Rss)
        );
        assert_eq!(memory_source([]), None);
        let mut j = job();
        let view = View {
            memory_source: Some(MemoryFigureSource::CgroupWorkingSet),
            ..View::default()
        };
        let now = Time(Timestamp::now());
        j.status = Some(running_status(&j, &view, &Counters::default(), &now));
        let unread = running_status(&j, &View::default(), &Counters::default(), &now);
        assert_eq!(
            unread.memory_source,
            Some(MemoryFigureSource::CgroupWorkingSet)
        );
    }

    #[test]
    fn restarts_are_counted_by_reason_and_in_total() {
        let mut c = Counters::default();
        c.count(RestartReason::OomKilled);
        c.count(RestartReason::ScaledDown);
        assert_eq!(
            (
                c.restarts.total,
                c.restarts.oom_killed,
                c.restarts.scaled_down
            ),
            (2, 1, 1)
        );
    }
}
