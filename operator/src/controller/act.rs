//! Act, the third step of a round: carries out a [`Plan`]'s steps in order, one loop, and
//! remembers what each did (counters, the leak named, the last OOM kill, the Events sent).
//!
//! Every end is recorded on its pod (`stop-reason` or `reaped`) *before* the pod is deleted, so
//! a later round never counts it again; a requeue is idempotent, so one that fails is retried
//! by a later round.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::Api;
use kube::{Resource, ResourceExt};
use migrate_contract::error_chain;
use migrate_crds::{LastRestart, MigrateJob};
use tracing::{info, warn};

use super::context::{Context, JobMemory, now_time};
use super::error::Error;
use super::observe::Observed;
use super::plan::{End, Plan, REASON_POD_REFUSED, StartRefusal, Step, refusal};
use super::{apply, build, events};
use crate::leak::{LeakThreshold, attribute};
use crate::policy::RestartReason;

/// Carries out `plan`'s steps for `job`. Returns the names of the pods created.
///
/// # Errors
/// [`Error::Apply`] when a write fails; the steps before it stay done (each is safe to repeat
/// or is recorded so that it is not).
pub(super) async fn act(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
    observed: &Observed,
    plan: &Plan,
) -> Result<Vec<String>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply_err = Error::apply(job);
    let regarding = job.object_ref(&());
    let queue = job.spec.queue.key.as_str();
    let mut created = Vec::new();
    mem.pods_written = plan.steps.iter().any(|step| {
        !matches!(
            step,
            Step::CountVanished { .. }
                | Step::RequeueVanished { .. }
                | Step::Completed
                | Step::Announce(_)
                // A start writes only when it tries a create (not while a refusal waits).
                | Step::Start { .. }
        )
    });
    for step in &plan.steps {
        match step {
            Step::MarkEvicted { pod } => {
                let reason = RestartReason::Evicted;
                let annotations =
                    BTreeMap::from([(build::STOP_REASON.to_owned(), reason.as_str().to_owned())]);
                apply::annotate(&pods, &namespace, pod, &annotations)
                    .await
                    .map_err(&apply_err)?;
                count_restart(ctx, mem, pod, reason, None);
                let note = events::ended(pod, Some(reason), None);
                events::publish(&ctx.recorder, &regarding, note).await;
            }
            Step::CountVanished { pod } => {
                count_restart(ctx, mem, pod, RestartReason::Evicted, None);
                let note = events::ended(pod, Some(RestartReason::Evicted), None);
                events::publish(&ctx.recorder, &regarding, note).await;
            }
            Step::RequeueVanished { worker } => {
                let Some(url) = &observed.url else { continue };
                match ctx.queues.requeue(url, queue, worker).await {
                    Ok(0) => {}
                    Ok(ids) => record_requeue(ctx, mem, &regarding, worker, ids).await,
                    Err(e) => {
                        warn!(worker = %worker, error = %error_chain(&e), "Could not requeue a vanished worker's ids; retrying next round.")
                    }
                }
            }
            Step::Reap { worker, end } => {
                if let Some(url) = &observed.url {
                    match ctx.queues.requeue(url, queue, worker).await {
                        Ok(0) => {}
                        Ok(ids) => record_requeue(ctx, mem, &regarding, worker, ids).await,
                        Err(e) => {
                            warn!(worker = %worker, error = %error_chain(&e), "Could not requeue an ended worker's ids; retrying once Redis answers.")
                        }
                    }
                }
                if let Some(end) = end {
                    let annotations =
                        BTreeMap::from([(build::REAPED.to_owned(), end.label.to_owned())]);
                    apply::annotate(&pods, &namespace, worker, &annotations)
                        .await
                        .map_err(&apply_err)?;
                    record_end(ctx, mem, &regarding, worker, end).await;
                }
                apply::delete_pod(&pods, &namespace, worker, Some(0))
                    .await
                    .map_err(&apply_err)?;
            }
            Step::Start { count, why } => {
                let started = start(job, ctx, mem, &pods, &observed.secrets, *count).await?;
                created.extend(started.iter().cloned());
                if !started.is_empty() {
                    let count = u32::try_from(started.len()).unwrap_or(u32::MAX);
                    info!(count, desired = plan.desired, "Started worker pods.");
                    let note = events::scaled_up(count, plan.desired, why);
                    events::publish(&ctx.recorder, &regarding, note).await;
                }
            }
            Step::Stop {
                worker,
                reason,
                memory_bytes,
                at_once,
            } => {
                let annotations =
                    BTreeMap::from([(build::STOP_REASON.to_owned(), reason.as_str().to_owned())]);
                apply::annotate(&pods, &namespace, worker, &annotations)
                    .await
                    .map_err(&apply_err)?;
                apply::delete_pod(&pods, &namespace, worker, at_once.then_some(0))
                    .await
                    .map_err(&apply_err)?;
                count_restart(ctx, mem, worker, *reason, *memory_bytes);
                let leak = name_leak(ctx, mem, worker, *reason);
                info!(pod = %worker, reason = reason.as_str(), memory_bytes, at_once, "Stopping a worker pod.");
                let note = events::stopping(worker, *reason, *memory_bytes, *at_once)
                    .with_leak(leak.as_deref());
                events::publish(&ctx.recorder, &regarding, note).await;
            }
            Step::Finish { pod } => {
                // Recorded as finished (no restart) first, so that its deletion is not taken
                // for an eviction by a later round.
                let finished = BTreeMap::from([(build::REAPED.to_owned(), "finished".to_owned())]);
                apply::annotate(&pods, &namespace, pod, &finished)
                    .await
                    .map_err(&apply_err)?;
                apply::delete_pod(&pods, &namespace, pod, None)
                    .await
                    .map_err(&apply_err)?;
            }
            Step::Completed => {
                if mem.reported.insert("Completed".to_owned()) {
                    info!("Drain finished; the job is complete.");
                    events::publish(&ctx.recorder, &regarding, events::completed()).await;
                }
            }
            Step::Announce(problem) => {
                if mem.reported.insert(problem.reason.clone()) {
                    warn!(reason = %problem.reason, message = %problem.message, "MigrateJob degraded.");
                    let note = events::problem(&problem.reason, &problem.message);
                    events::publish(&ctx.recorder, &regarding, note).await;
                }
            }
            Step::Annotate { pod, annotations } => {
                apply::annotate(&pods, &namespace, pod, annotations)
                    .await
                    .map_err(&apply_err)?;
            }
        }
    }
    Ok(created)
}

/// Creates up to `count` worker pods. A create the API server refuses for good (see
/// [`refusal`]) stops the others and is remembered in `mem.start_refused`, announced by an
/// Event and reported by the status; no pod is created again before its backoff ends or the
/// spec is edited. Returns the pods created.
///
/// # Errors
/// [`Error::Apply`] when a create fails in a way worth retrying (the API server unreachable, a
/// conflict, throttling).
async fn start(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
    pods: &Api<Pod>,
    secrets: &build::SecretVersions,
    count: u32,
) -> Result<Vec<String>, Error> {
    let generation = job.metadata.generation;
    if mem
        .start_refused
        .as_ref()
        .is_some_and(|r| r.waiting(generation, Instant::now()))
    {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for _ in 0..count {
        mem.pods_written = true;
        let error = match apply::create_pod(pods, job, secrets).await {
            Ok(pod) => {
                created.push(pod);
                mem.start_refused = None;
                continue;
            }
            Err(e) => e,
        };
        let refused = match &error {
            apply::ApplyError::Api { source, .. } => refusal(source),
            apply::ApplyError::Build { .. } => Some(error_chain(&error)),
        };
        let Some(message) = refused else {
            return Err(Error::apply(job)(error));
        };
        let refusal = StartRefusal::after(
            mem.start_refused.as_ref(),
            message,
            generation,
            Instant::now(),
        );
        warn!(failures = refusal.failures, retry_in = ?StartRefusal::wait(refusal.failures), error = %refusal.message, "The API server refused a worker pod.");
        let problem = refusal.problem(job);
        let announced = mem.start_refused.as_ref().map(|r| r.message.as_str());
        if announced != Some(refusal.message.as_str()) {
            mem.reported.insert(REASON_POD_REFUSED.to_owned());
            let note = events::problem(&problem.reason, &problem.message);
            events::publish(&ctx.recorder, &job.object_ref(&()), note).await;
        }
        mem.start_refused = Some(refusal);
        break;
    }
    Ok(created)
}

/// Counts an ended pod's restart (once), names its leak, remembers an OOM kill, and says so.
async fn record_end(
    ctx: &Context,
    mem: &mut JobMemory,
    regarding: &ObjectReference,
    worker: &str,
    end: &End,
) {
    let mut leak = None;
    if let Some(reason) = end.counted {
        count_restart(ctx, mem, worker, reason, end.usage);
        leak = name_leak(ctx, mem, worker, reason);
    }
    if let Some(message) = &end.oom {
        mem.last_oom = Some((Instant::now(), message.clone()));
    }
    if end.announce {
        let note = events::ended(worker, end.counted, end.code).with_leak(leak.as_deref());
        events::publish(&ctx.recorder, regarding, note).await;
    }
    info!(pod = %worker, reason = end.label, exit_code = ?end.code, "Worker pod ended; reaped.");
}

/// Counts and announces ids put back on the queue for `worker`.
pub(super) async fn record_requeue(
    ctx: &Context,
    mem: &mut JobMemory,
    regarding: &ObjectReference,
    worker: &str,
    ids: u64,
) {
    info!(worker, ids, "Requeued a worker's in-flight ids.");
    mem.counters.requeued = mem
        .counters
        .requeued
        .saturating_add(i64::try_from(ids).unwrap_or(i64::MAX));
    ctx.metrics.requeued(ids);
    events::publish(&ctx.recorder, regarding, events::requeued(worker, ids)).await;
}

/// Counts a worker's restart under `reason` and remembers it as the last one.
fn count_restart(
    ctx: &Context,
    mem: &mut JobMemory,
    worker: &str,
    reason: RestartReason,
    memory_bytes: Option<u64>,
) {
    mem.counters.count(reason);
    mem.counters.last_restart = Some(LastRestart {
        worker: worker.to_owned(),
        reason: reason.as_str().to_owned(),
        memory_bytes: memory_bytes.and_then(|b| i64::try_from(b).ok()),
        time: now_time(),
    });
    ctx.metrics.restarted(reason);
}

/// For a restart for memory: names the stage whose retained bytes grew over the worker's life
/// (from its first reading to its latest), remembers it for the status, and sets the metric.
/// Returns the sentence for the Event.
fn name_leak(
    ctx: &Context,
    mem: &mut JobMemory,
    worker: &str,
    reason: RestartReason,
) -> Option<String> {
    if !matches!(
        reason,
        RestartReason::MemorySoft | RestartReason::MemoryHard | RestartReason::OomKilled
    ) {
        return None;
    }
    let first = mem.first_retained.get(worker)?;
    let latest = mem.readings.get(worker)?.retained_sample();
    let report = attribute(first, &latest, &LeakThreshold::default())?;
    info!(pod = %worker, stage = %report.stage, retained_bytes = report.retained_bytes, over_tasks = report.over_tasks, "Leak attributed to a stage.");
    ctx.metrics.leak(&report.stage, report.retained_bytes);
    mem.counters.leak = Some(migrate_crds::LeakReport {
        stage: report.stage.clone(),
        retained_bytes: i64::try_from(report.retained_bytes).unwrap_or(i64::MAX),
        over_tasks: i64::try_from(report.over_tasks).unwrap_or(i64::MAX),
        message: report.message.clone(),
    });
    Some(report.message)
}
