//! Report, the last step of a round: the status (server-side applied when it changed), what
//! the controller remembers for the next round, the job's gauges, and when to look again.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use migrate_contract::error_chain;
use migrate_crds::MigrateJob;
use tracing::warn;

use super::context::{Context, JobMemory, job_key, now_time};
use super::error::Error;
use super::observe::Observed;
use super::plan::Plan;
use super::status::{self, View};
use super::{events, validate};
use crate::metrics::JobGauges;
use crate::policy::{self, WorkerState};

/// Shortest time between two reconciliations of a running job.
const MIN_REQUEUE: Duration = Duration::from_millis(500);

/// Writes the status of a round, remembers its pods, sets the job's gauges. Returns the next
/// action: another round after the memory check interval, or none until a change once the job
/// is complete.
///
/// # Errors
/// [`Error::Status`] when the status cannot be written.
pub(super) async fn report(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
    observed: &Observed,
    plan: &Plan,
    created: Vec<String>,
) -> Result<Action, Error> {
    // A refusal of an older spec says nothing of this one.
    if mem
        .start_refused
        .as_ref()
        .is_some_and(|r| r.generation != job.metadata.generation)
    {
        mem.start_refused = None;
    }
    let mut problems = plan.problems.clone();
    if let Some(refused) = &mem.start_refused {
        // First: while it lasts, no worker starts.
        problems.insert(0, refused.problem(job));
    }
    let current: BTreeSet<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
    mem.reported.retain(|r| {
        current.contains(r.as_str()) || r == "Completed" || r == validate::REASON_INVALID_SPEC
    });

    let survivors: Vec<&policy::Worker> = plan
        .workers
        .iter()
        .filter(|w| {
            !plan.deleted.contains(&w.name) && !matches!(w.state, WorkerState::Exited { .. })
        })
        .collect();
    let draining = survivors
        .iter()
        .filter(|w| matches!(w.state, WorkerState::Draining(_)))
        .count();
    let not_ready: Vec<String> = survivors
        .iter()
        .filter(|w| !w.ready && !matches!(w.state, WorkerState::Draining(_)))
        .map(|w| w.name.clone())
        .chain(created.iter().cloned())
        .collect();
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let status_view = View {
        live: to_i32(survivors.len() + created.len()),
        ready: to_i32(survivors.iter().filter(|w| w.ready).count()),
        desired: i32::try_from(plan.desired).unwrap_or(i32::MAX),
        not_ready,
        draining: to_i32(draining),
        backlog: plan.backlog,
        stats: observed
            .view
            .as_ref()
            .map(|v| v.stats.clone())
            .unwrap_or_default(),
        complete: mem.policy.complete,
        settling: mem.policy.idle_since.is_some() && !mem.policy.complete,
        throttled: plan.throttled.clone(),
        problems,
        memory_source: status::memory_source(
            survivors
                .iter()
                .filter_map(|w| mem.readings.get(&w.name).map(|r| r.source)),
        ),
    };
    let new = status::running_status(job, &status_view, &mem.counters, &now_time());
    write_status(job, ctx, &new).await?;

    // A pod being deleted was counted when its deletion was seen (under its stop reason, or as
    // evicted), so it is not counted again as vanished once its kubelet removes it.
    mem.known_pods = survivors
        .iter()
        .filter(|w| !matches!(w.state, WorkerState::Draining(_)))
        .map(|w| w.name.clone())
        .chain(created)
        .collect();
    let mut gauges = JobGauges {
        backlog: plan.backlog.map_or(0, policy::Backlog::total),
        ..JobGauges::default()
    };
    for w in &plan.workers {
        let slot = match w.state {
            WorkerState::Starting => 0,
            WorkerState::Running => 1,
            WorkerState::Draining(_) => 2,
            WorkerState::Exited { .. } => 3,
        };
        gauges.workers[slot] += 1;
    }
    ctx.metrics.set_job(&job_key(job), Some(gauges));

    let check_interval = Duration::from_millis(u64::from(job.spec.memory.check_interval_ms));
    Ok(if mem.policy.complete {
        Action::await_change()
    } else {
        Action::requeue(check_interval.max(MIN_REQUEUE))
    })
}

/// A spec the schema could not reject: a Degraded condition and a Warning Event (once), then
/// no round until the spec is edited.
///
/// # Errors
/// [`Error::Status`] when the status cannot be written.
pub(super) async fn invalid(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
    invalid: &validate::InvalidJob,
) -> Result<Action, Error> {
    let message = invalid.message();
    warn!(problems = invalid.problems.len(), %message, "MigrateJob is invalid; waiting for an edit.");
    if mem
        .reported
        .insert(validate::REASON_INVALID_SPEC.to_owned())
    {
        events::publish(
            &ctx.recorder,
            &job.object_ref(&()),
            events::problem(validate::REASON_INVALID_SPEC, &message),
        )
        .await;
    }
    let new = status::invalid_status(job, &message, &now_time());
    write_status(job, ctx, &new).await?;
    Ok(Action::await_change())
}

/// A round that failed: a Degraded condition carrying the error's words (the API server's,
/// when it answered) and a Warning Event (once while the failure lasts), so that the failure is
/// seen without the operator's log. The error policy then retries with backoff. A failure to
/// write the status can only be announced by the Event.
pub(super) async fn failed(job: &MigrateJob, ctx: &Context, mem: &mut JobMemory, error: &Error) {
    let reason = failure_reason(error);
    let message = format!(
        "the last reconciliation failed and is retried with backoff (1 s doubling to 60 s): {}",
        error_chain(error)
    );
    if mem.reported.insert(reason.to_owned()) {
        events::publish(
            &ctx.recorder,
            &job.object_ref(&()),
            events::problem(reason, &message),
        )
        .await;
    }
    if matches!(error, Error::Status { .. }) {
        return;
    }
    let new = status::failed_status(job, reason, &message, &now_time());
    if let Err(e) = write_status(job, ctx, &new).await {
        warn!(error = %error_chain(&e), "Cannot write the status of a failed reconciliation.");
    }
}

/// The Degraded reason (and Event reason) of a failed round.
fn failure_reason(error: &Error) -> &'static str {
    match error {
        Error::Apply { .. } => "ApplyFailed",
        Error::Status { .. } => "StatusWriteFailed",
        Error::Requeue { .. } => "RequeueFailed",
    }
}

/// An object that does not deserialize as a MigrateJob: a Warning Event, then no round until
/// it is edited.
pub(super) async fn malformed(
    ctx: &Context,
    invalid: &kube::core::error_boundary::InvalidObject,
) -> Action {
    warn!(error = %invalid.error, "MigrateJob does not deserialize; waiting for an edit.");
    let regarding = ObjectReference {
        api_version: Some(MigrateJob::api_version(&()).into_owned()),
        kind: Some(MigrateJob::kind(&()).into_owned()),
        name: invalid.metadata.name.clone(),
        namespace: invalid.metadata.namespace.clone(),
        uid: invalid.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    let note = events::problem(
        "Malformed",
        &format!(
            "the object does not match the MigrateJob schema: {}",
            invalid.error
        ),
    );
    events::publish(&ctx.recorder, &regarding, note).await;
    Action::await_change()
}

/// Writes `new` as the job's status when it differs from what the job carries.
async fn write_status(
    job: &MigrateJob,
    ctx: &Context,
    new: &migrate_crds::MigrateJobStatus,
) -> Result<(), Error> {
    if !status::differs(job.status.as_ref(), new) {
        return Ok(());
    }
    let jobs: Api<MigrateJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    match status::write(&jobs, &job.name_any(), new).await {
        // Deleted while this round ran: there is no status left to write.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        result => result.map_err(Error::status(job)),
    }
}
