//! One reconciliation of a MigrateJob, as named steps: a job being deleted is cleaned up
//! ([`cleanup`](super::cleanup)); any other is validated, gets its children, then goes
//! through observe → plan (pure) → act → report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use migrate_contract::error_chain;
use migrate_crds::MigrateJob;
use tracing::{debug, instrument, warn};

use super::context::{Context, JobMemory, job_key};
use super::error::Error;
use super::{act, apply, cleanup, observe, plan, report, validate};

/// Reconciles one MigrateJob (see the [module documentation](super) for the steps).
///
/// # Errors
/// [`Error`] when the API server or (during cleanup) Redis fails; the error policy retries.
#[instrument(skip(guard, ctx), fields(namespace = guard.namespace().unwrap_or_default(), job = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<MigrateJob>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let job = match &guard.0 {
        Ok(job) => job,
        Err(invalid) => {
            let action = report::malformed(&ctx, invalid).await;
            ctx.metrics.reconciled("invalid", started.elapsed());
            return Ok(action);
        }
    };
    let key = job_key(job);
    if job.metadata.deletion_timestamp.is_some() && ctx.is_cleaned(job.metadata.uid.as_deref()) {
        debug!("Already cleaned up; waiting for the job to go.");
        return Ok(Action::await_change());
    }
    let mut mem = ctx.take_memory(&key, job);
    let outcome = if job.metadata.deletion_timestamp.is_some() {
        cleanup::cleanup(job, &ctx, &mut mem)
            .await
            .map(|(action, done)| (action, "ok", done))
    } else {
        steps(job, &ctx, &mut mem)
            .await
            .map(|(action, label)| (action, label, false))
    };
    match outcome {
        Ok((action, label, deleted)) => {
            if deleted {
                ctx.mark_cleaned(job.metadata.uid.as_deref());
                ctx.metrics.set_job(&key, None);
            } else {
                ctx.put_memory(key.clone(), mem);
            }
            ctx.succeeded(&key);
            ctx.metrics.reconciled(label, started.elapsed());
            Ok(action)
        }
        Err(e) => {
            report::failed(job, &ctx, &mut mem, &e).await;
            ctx.put_memory(key, mem);
            ctx.metrics.reconciled("error", started.elapsed());
            Err(e)
        }
    }
}

/// The round of a job that is not being deleted. Returns the next action and the result label.
async fn steps(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
) -> Result<(Action, &'static str), Error> {
    cleanup::ensure_finalizer(job, ctx).await?;
    let settings = match validate::check(job) {
        Ok(settings) => settings,
        Err(invalid) => {
            let action = report::invalid(job, ctx, mem, &invalid).await?;
            return Ok((action, "invalid"));
        }
    };
    if mem.children_generation != job.metadata.generation {
        apply::apply_children(&ctx.client, job)
            .await
            .map_err(Error::apply(job))?;
        mem.children_generation = job.metadata.generation;
    }
    let observed = observe::observe(job, ctx, mem).await?;
    let now = observed.instant.duration_since(ctx.origin);
    let plan = plan::plan(job, &settings, &observed, mem, now);
    debug!(desired = plan.desired, steps = ?plan.steps, "Planned.");
    mem.policy = plan.state.clone();
    // The budget follows the desired count (an integer minAvailable: see
    // `build::pod_disruption_budget`); an unchanged count writes nothing.
    if mem.budget_for != Some(plan.desired) {
        apply::apply_budget(&ctx.client, job, plan.desired)
            .await
            .map_err(Error::apply(job))?;
        mem.budget_for = Some(plan.desired);
    }
    let created = act::act(job, ctx, mem, &observed, &plan).await?;
    let action = report::report(job, ctx, mem, &observed, &plan, created).await?;
    Ok((action, "ok"))
}

/// Retries a failed reconciliation with an exponential backoff (1 s doubling to 60 s).
pub fn error_policy(
    guard: Arc<DeserializeGuard<MigrateJob>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = format!(
        "{}/{}",
        guard.namespace().unwrap_or_default(),
        guard.name_any()
    );
    let failures = ctx.failed(&key);
    let delay =
        Duration::from_secs(1u64 << failures.min(6).saturating_sub(1)).min(Duration::from_secs(60));
    warn!(job = %key, kind = error.metric_label(), failures, retry_in = ?delay, error = %error_chain(error), "Reconciliation failed.");
    Action::requeue(delay)
}
