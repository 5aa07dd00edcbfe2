//! A job being deleted: its pods are deleted, then (once they are gone) every processing list
//! is requeued, its ConfigMap and PodDisruptionBudget deleted, and the
//! [`FINALIZER`] removed. 404 counts as success everywhere.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use migrate_contract::error_chain;
use migrate_crds::MigrateJob;
use serde_json::json;
use tracing::{debug, info, warn};

use super::context::{Context, JobMemory, job_key};
use super::error::Error;
use super::observe::{self, ObserveError};
use super::{act, apply, build, events};

/// The finalizer that requeues in-flight work and deletes the pods before a job goes.
pub const FINALIZER: &str = "migrate-operator.io/cleanup";

/// How often a deleted job checks whether its pods are gone.
const REQUEUE_WAIT: Duration = Duration::from_secs(2);

/// Whether the job carries [`FINALIZER`].
pub(super) fn has_finalizer(job: &MigrateJob) -> bool {
    job.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the cleanup finalizer. The merge patch carries the `resourceVersion` read, so a
/// concurrent change of the finalizer list is a conflict (retried) rather than lost.
///
/// # Errors
/// [`apply::ApplyError::Api`].
async fn add_finalizer(api: &Api<MigrateJob>, job: &MigrateJob) -> Result<(), apply::ApplyError> {
    let mut finalizers = job.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    patch_finalizers(api, job, finalizers).await
}

/// Adds [`FINALIZER`] to a job that lacks it, before anything is created for it.
///
/// # Errors
/// [`Error::Apply`].
pub(super) async fn ensure_finalizer(job: &MigrateJob, ctx: &Context) -> Result<(), Error> {
    if has_finalizer(job) {
        return Ok(());
    }
    let jobs: Api<MigrateJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    add_finalizer(&jobs, job).await.map_err(Error::apply(job))
}

/// Removes the cleanup finalizer (404: the job is already gone).
///
/// # Errors
/// [`apply::ApplyError::Api`].
async fn remove_finalizer(
    api: &Api<MigrateJob>,
    job: &MigrateJob,
) -> Result<(), apply::ApplyError> {
    let finalizers: Vec<String> = job
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(api, job, finalizers).await
}

async fn patch_finalizers(
    api: &Api<MigrateJob>,
    job: &MigrateJob,
    finalizers: Vec<String>,
) -> Result<(), apply::ApplyError> {
    let name = job.name_any();
    let patch = json!({
        "metadata": {
            "resourceVersion": job.resource_version(),
            "finalizers": finalizers,
        }
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if apply::not_found(&e) => Ok(()),
        Err(e) => Err(apply::ApplyError::api(
            "patch",
            "MigrateJob",
            &job.namespace().unwrap_or_default(),
            &name,
        )(e)),
    }
}

/// Deletes the pods, requeues their ids, deletes the children and lets the job go. Returns the
/// next action and whether the job is finished with.
pub(super) async fn cleanup(
    job: &MigrateJob,
    ctx: &Context,
    mem: &mut JobMemory,
) -> Result<(Action, bool), Error> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let key = job_key(job);
    if !has_finalizer(job) {
        return Ok((Action::await_change(), true));
    }
    let apply_err = |source| Error::Apply {
        job: key.clone(),
        source,
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Vec<Pod> = apply::list_pods(&pods_api, &namespace, &name)
        .await
        .map_err(apply_err)?
        .into_iter()
        .filter(|p| build::owned_by(p, job))
        .collect();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_none() {
            let grace = observe::exit_status(pod).map(|_| 0);
            apply::delete_pod(&pods_api, &namespace, &pod_name, grace)
                .await
                .map_err(apply_err)?;
        }
        names.insert(pod_name);
    }
    if !pods.is_empty() {
        let remaining = apply::list_pods(&pods_api, &namespace, &name)
            .await
            .map_err(apply_err)?
            .into_iter()
            .filter(|p| build::owned_by(p, job))
            .count();
        if remaining > 0 {
            debug!(
                remaining,
                "Waiting for the job's pods to finish before requeueing their ids."
            );
            return Ok((Action::requeue(REQUEUE_WAIT), false));
        }
    }

    let regarding = job.object_ref(&());
    match observe::redis_url(&ctx.client, &namespace, &job.spec.queue.url_secret_ref).await {
        Ok(observe::RedisSecret { url, .. }) => {
            let queue = job.spec.queue.key.as_str();
            // Pods that vanished before this round are found in `{q}:workers`.
            match ctx.queues.view(&url, queue, &[]).await {
                Ok(view) => {
                    let prefix = build::pod_prefix(&name);
                    names.extend(view.holders.into_iter().filter(|h| h.starts_with(&prefix)));
                }
                Err(source) => return Err(Error::Requeue { job: key, source }),
            }
            for worker in &names {
                let ids = ctx
                    .queues
                    .requeue(&url, queue, worker)
                    .await
                    .map_err(|source| Error::Requeue {
                        job: key.clone(),
                        source,
                    })?;
                if ids > 0 {
                    act::record_requeue(ctx, mem, &regarding, worker, ids).await;
                }
            }
        }
        Err(
            e @ (ObserveError::SecretMissing { .. }
            | ObserveError::SecretKeyMissing { .. }
            | ObserveError::RedisUrl(_)),
        ) => {
            // Without a Redis URL nothing can be requeued, now or later: say so and let go.
            warn!(error = %error_chain(&e), "Cannot requeue in-flight ids on deletion.");
            events::publish(
                &ctx.recorder,
                &regarding,
                events::problem(e.reason(), &format!("in-flight ids were not requeued: {e}")),
            )
            .await;
        }
        Err(source) => return Err(Error::Requeue { job: key, source }),
    }

    apply::delete_children(&ctx.client, &namespace, &name)
        .await
        .map_err(apply_err)?;
    let jobs: Api<MigrateJob> = Api::namespaced(ctx.client.clone(), &namespace);
    remove_finalizer(&jobs, job).await.map_err(apply_err)?;
    info!(requeued = mem.counters.requeued, "MigrateJob cleaned up.");
    Ok((Action::await_change(), true))
}
