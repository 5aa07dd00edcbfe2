//! The controller's writes to the API server: the children (pipeline ConfigMap
//! and PodDisruptionBudget, server-side applied), worker pods (created, annotated, deleted).
//!
//! Deletes treat 404 as success: what is already gone needs no cleanup. The testbed has no
//! garbage collector, and no cluster guarantees when it runs, so children are deleted
//! explicitly when a job goes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use migrate_crds::MigrateJob;
use serde_json::json;

use super::build::{self, BuildError};

/// The field manager of every write (server-side apply and creates).
pub const MANAGER: &str = "migrate-operator";

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An object could not be built.
    #[error("cannot build the objects of MigrateJob {job}")]
    Build {
        /// The job.
        job: String,
        /// The builder's error.
        #[source]
        source: BuildError,
    },
    /// An API call failed.
    #[error("cannot {verb} {kind} {namespace}/{name}")]
    Api {
        /// create, patch, delete, list.
        verb: &'static str,
        /// The object's kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name (or name prefix).
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    pub(super) fn api(
        verb: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> Self {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        move |source| Self::Api {
            verb,
            kind,
            namespace,
            name,
            source,
        }
    }
}

pub(super) fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Server-side applies the pipeline ConfigMap.
///
/// # Errors
/// [`ApplyError`].
pub async fn apply_children(client: &Client, job: &MigrateJob) -> Result<(), ApplyError> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let build_err = |source| ApplyError::Build {
        job: name.clone(),
        source,
    };
    let params = PatchParams::apply(MANAGER).force();

    let cm = build::pipeline_config_map(job).map_err(build_err)?;
    let cm_name = build::pipeline_config_map_name(&name);
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .patch(
            &cm_name,
            &params,
            &Patch::Apply(&with_type(&cm, "v1", "ConfigMap")),
        )
        .await
        .map_err(ApplyError::api("apply", "ConfigMap", &namespace, &cm_name))?;

    Ok(())
}

/// Server-side applies the PodDisruptionBudget for `desired` workers (see
/// [`build::pod_disruption_budget`]).
///
/// # Errors
/// [`ApplyError`].
pub async fn apply_budget(
    client: &Client,
    job: &MigrateJob,
    desired: u32,
) -> Result<(), ApplyError> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let pdb = build::pod_disruption_budget(job, desired).map_err(|source| ApplyError::Build {
        job: name.clone(),
        source,
    })?;
    let pdb_name = build::pdb_name(&name);
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
        .patch(
            &pdb_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&with_type(&pdb, "policy/v1", "PodDisruptionBudget")),
        )
        .await
        .map_err(ApplyError::api(
            "apply",
            "PodDisruptionBudget",
            &namespace,
            &pdb_name,
        ))?;
    Ok(())
}

/// Server-side apply needs `apiVersion` and `kind` in the body; k8s-openapi types do not
/// serialise them.
fn with_type<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_else(|_| json!({}));
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!(api_version));
        map.insert("kind".to_owned(), json!(kind));
    }
    value
}

/// Deletes the job's ConfigMap and PodDisruptionBudget (404 is success).
///
/// # Errors
/// [`ApplyError::Api`].
pub async fn delete_children(
    client: &Client,
    namespace: &str,
    job: &str,
) -> Result<(), ApplyError> {
    let cm = build::pipeline_config_map_name(job);
    match Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .delete(&cm, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(ApplyError::api("delete", "ConfigMap", namespace, &cm)(e)),
    }
    let pdb = build::pdb_name(job);
    match Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
        .delete(&pdb, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(ApplyError::api(
            "delete",
            "PodDisruptionBudget",
            namespace,
            &pdb,
        )(e)),
    }
}

/// Lists the job's worker pods (by label; ownership is checked by the caller).
///
/// # Errors
/// [`ApplyError::Api`].
pub async fn list_pods(
    pods: &Api<Pod>,
    namespace: &str,
    job: &str,
) -> Result<Vec<Pod>, ApplyError> {
    let params = kube::api::ListParams::default().labels(&build::selector(job));
    pods.list(&params)
        .await
        .map(|l| l.items)
        .map_err(ApplyError::api(
            "list",
            "Pod",
            namespace,
            &build::pod_prefix(job),
        ))
}

/// Creates one worker pod, stamped with the `secrets`' versions; returns its name.
///
/// # Errors
/// [`ApplyError`].
pub async fn create_pod(
    pods: &Api<Pod>,
    job: &MigrateJob,
    secrets: &build::SecretVersions,
) -> Result<String, ApplyError> {
    let name = job.name_any();
    let pod = build::worker_pod(job, secrets).map_err(|source| ApplyError::Build {
        job: name.clone(),
        source,
    })?;
    let created = pods
        .create(
            &PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            },
            &pod,
        )
        .await
        .map_err(ApplyError::api(
            "create",
            "Pod",
            &job.namespace().unwrap_or_default(),
            &build::pod_prefix(&name),
        ))?;
    Ok(created.name_any())
}

/// Merges annotations into a pod (404: it is gone, nothing to do).
///
/// # Errors
/// [`ApplyError::Api`].
pub async fn annotate(
    pods: &Api<Pod>,
    namespace: &str,
    pod: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), ApplyError> {
    let patch = json!({"metadata": {"annotations": annotations}});
    match pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(ApplyError::api("patch", "Pod", namespace, pod)(e)),
    }
}

/// Deletes a pod, with `grace_seconds` to finish (the pod's own grace period when `None`);
/// 404 is success.
///
/// # Errors
/// [`ApplyError::Api`].
pub async fn delete_pod(
    pods: &Api<Pod>,
    namespace: &str,
    pod: &str,
    grace_seconds: Option<u32>,
) -> Result<(), ApplyError> {
    let params = DeleteParams {
        grace_period_seconds: grace_seconds,
        ..DeleteParams::default()
    };
    match pods.delete(pod, &params).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(ApplyError::api("delete", "Pod", namespace, pod)(e)),
    }
}
