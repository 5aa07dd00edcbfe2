//! Pure builders of the objects a MigrateJob owns: worker pods, the pipeline ConfigMap and the
//! PodDisruptionBudget. No client here: every field is tested without a server.
//!
//! Secrets never pass through the operator: the pod names them by `secretKeyRef` and the
//! kubelet fills the environment, so no builder takes a secret value as input.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec,
    Probe, ResourceFieldSelector, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use migrate_contract::env as worker_env;
use migrate_crds::pipeline::{PipelineError, to_yaml};
use migrate_crds::{MigrateJob, MigrateJobSpec, SecretKeyRef};

/// `app.kubernetes.io/name` of every worker pod.
pub const APP_NAME: &str = "migrate-worker";
/// Label naming the MigrateJob a pod belongs to.
pub const JOB_LABEL: &str = "migrate-operator.io/job";
/// Cluster autoscaler: may this pod be evicted to remove its node?
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Which pod a ReplicaSet-like scaler removes first (lower goes first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Why the operator stopped a pod (a restart reason); written before the pod is deleted so the
/// restart is counted once.
pub const STOP_REASON: &str = "migrate-operator.io/stop-reason";
/// The restart reason an ended pod was counted under (`finished` when it was no restart);
/// written before the pod is deleted so the exit is counted once.
pub const REAPED: &str = "migrate-operator.io/reaped";
/// The spec generation a pod was built from.
pub const GENERATION: &str = "migrate-operator.io/generation";
/// The [`template_hash`] of the spec (and the Secrets' versions) a pod was built from: a pod
/// whose hash differs from the job's current one is replaced (restart reason `updated`).
pub const TEMPLATE_HASH: &str = "migrate-operator.io/template-hash";

/// The container's `terminationMessagePath`, also given to the worker as
/// `MIGRATE_TERMINATION_LOG` so it writes its exit reason there.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Where the pipeline file is mounted.
pub const PIPELINE_PATH: &str = "/etc/migrate/pipeline.yaml";
/// The key of the pipeline in its ConfigMap.
pub const PIPELINE_KEY: &str = "pipeline.yaml";
/// Where the keyword ConfigMap is mounted.
pub const KEYWORDS_DIR: &str = "/etc/migrate/keywords";
/// The worker container's name.
pub const CONTAINER: &str = "worker";
/// The user (and group) workers run as: the distroless `nonroot` user.
pub const RUN_AS_USER: i64 = 65_532;

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The job has no name, namespace or uid (it was not read from the API server).
    #[error("MigrateJob has no {0}; it must come from the API server")]
    Incomplete(&'static str),
    /// The pipeline could not be written as YAML.
    #[error("cannot render the pipeline of MigrateJob {job}")]
    Pipeline {
        /// The job.
        job: String,
        /// The serialiser's error.
        #[source]
        source: PipelineError,
    },
    /// The spec could not be written as JSON for its digest.
    #[error("cannot write the spec as JSON for its template hash")]
    Serialize(#[source] serde_json::Error),
}

/// The labels every worker pod of `job` carries.
#[must_use]
pub fn labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), job.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "migrate-operator".to_owned(),
        ),
        (JOB_LABEL.to_owned(), job.to_owned()),
    ])
}

/// The label selector of `job`'s worker pods, in string form (the scale subresource's
/// `status.selector`, and the LIST filter).
#[must_use]
pub fn selector(job: &str) -> String {
    format!("app.kubernetes.io/name={APP_NAME},{JOB_LABEL}={job}")
}

/// The `generateName` of `job`'s worker pods; also the prefix that tells this job's worker ids
/// apart in Redis.
#[must_use]
pub fn pod_prefix(job: &str) -> String {
    // The API server appends 5 characters; keep pod names within a 63-character host name.
    let base: String = job.chars().take(50).collect();
    format!("{}-worker-", base.trim_end_matches('-'))
}

/// Name of the ConfigMap holding `job`'s pipeline.
#[must_use]
pub fn pipeline_config_map_name(job: &str) -> String {
    format!("{job}-pipeline")
}

/// Name of `job`'s PodDisruptionBudget.
#[must_use]
pub fn pdb_name(job: &str) -> String {
    format!("{job}-workers")
}

struct Identity<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
}

fn identity(job: &MigrateJob) -> Result<Identity<'_>, BuildError> {
    let name = job
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::Incomplete("name"))?;
    let namespace = job
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::Incomplete("namespace"))?;
    let owner = job
        .controller_owner_ref(&())
        .ok_or(BuildError::Incomplete("uid"))?;
    Ok(Identity {
        name,
        namespace,
        owner,
    })
}

fn meta(id: &Identity<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(id.namespace.to_owned()),
        labels: Some(labels(id.name)),
        owner_references: Some(vec![id.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap holding the pipeline file the workers read.
///
/// # Errors
/// [`BuildError`] when the job is incomplete or its spec cannot be rendered.
pub fn pipeline_config_map(job: &MigrateJob) -> Result<ConfigMap, BuildError> {
    let id = identity(job)?;
    let yaml = to_yaml(&job.spec).map_err(|source| BuildError::Pipeline {
        job: id.name.to_owned(),
        source,
    })?;
    Ok(ConfigMap {
        metadata: meta(&id, pipeline_config_map_name(id.name)),
        data: Some(BTreeMap::from([(PIPELINE_KEY.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}

/// The PodDisruptionBudget of the job's workers: at most one evicted at a time while
/// `desired` workers are wanted, as `minAvailable: desired - 1`.
///
/// Not `maxUnavailable: 1`: with a percentage or `maxUnavailable`, the disruption controller
/// takes the expected pod count from the owner's scale subresource, and `spec.replicas` is 1
/// under `autoscaling: Backlog` whatever the pool's size: expected 1, desired healthy 0, and
/// every worker could be evicted at once. An integer `minAvailable` is counted against the
/// pods that exist, so the operator re-applies it when the desired count changes. With one worker wanted, `minAvailable` is 0: a node drain is
/// never blocked for good by a single worker.
///
/// # Errors
/// [`BuildError::Incomplete`] when the job did not come from the API server.
pub fn pod_disruption_budget(
    job: &MigrateJob,
    desired: u32,
) -> Result<PodDisruptionBudget, BuildError> {
    let id = identity(job)?;
    let match_labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (JOB_LABEL.to_owned(), id.name.to_owned()),
    ]);
    let min_available = i32::try_from(desired.saturating_sub(1)).unwrap_or(i32::MAX);
    Ok(PodDisruptionBudget {
        metadata: meta(&id, pdb_name(id.name)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(LabelSelector {
                match_labels: Some(match_labels),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The cluster-autoscaler and deletion-cost annotations for a worker holding `in_flight` ids:
/// a busy worker is not safe to evict and costs more to delete.
#[must_use]
pub fn busyness_annotations(in_flight: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SAFE_TO_EVICT.to_owned(), (in_flight == 0).to_string()),
        (
            DELETION_COST.to_owned(),
            in_flight.min(i32::MAX as u64).to_string(),
        ),
    ])
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    }
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The resource version of each Secret a worker reads ([`referenced_secrets`]) by name; an
/// empty version for a Secret that does not exist.
pub type SecretVersions = BTreeMap<String, String>;

/// The names of the Secrets a worker reads through its environment: the Redis, MySQL and
/// search URLs and the search credentials.
#[must_use]
pub fn referenced_secrets(spec: &MigrateJobSpec) -> BTreeSet<String> {
    [
        Some(&spec.queue.url_secret_ref),
        Some(&spec.source.url_secret_ref),
        Some(&spec.sink.url_secret_ref),
        spec.sink.username_secret_ref.as_ref(),
        spec.sink.password_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.name.clone())
    .collect()
}

/// A digest of everything in the spec that a running worker depends on: the spec without the
/// fields only the operator reads to size the pool (`replicas`, `autoscaling`, `workers.minReplicas`,
/// `workers.maxReplicas`, `workers.targetBacklogPerWorker`,
/// `workers.scaleDownStabilizationSeconds`, `workers.drainSettleSeconds`). Scaling, by hand
/// or by an autoscaler, therefore never restarts a worker; any other edit rolls them. The
/// `secrets`' versions are part of it too: a worker reads its Secrets once, at start, so a
/// fixed password or a moved server rolls the workers the same way. 16 hex digits of SHA-256
/// over the spec's JSON and the versions.
///
/// # Errors
/// [`BuildError::Serialize`] if the spec cannot be written as JSON.
pub fn template_hash(job: &MigrateJob, secrets: &SecretVersions) -> Result<String, BuildError> {
    use sha2::{Digest, Sha256};
    let mut spec = job.spec.clone();
    spec.replicas = None;
    spec.autoscaling = Default::default();
    spec.workers.min_replicas = 0;
    spec.workers.max_replicas = 0;
    spec.workers.target_backlog_per_worker = 0;
    spec.workers.scale_down_stabilization_seconds = 0;
    spec.workers.drain_settle_seconds = 0;
    let json = serde_json::to_vec(&spec).map_err(BuildError::Serialize)?;
    let mut hasher = Sha256::new();
    hasher.update(&json);
    for (name, version) in secrets {
        hasher.update([0]);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(version.as_bytes());
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// A worker pod of the job (named by the API server from [`pod_prefix`]), stamped with the
/// [`template_hash`] of the job and the `secrets`' versions.
///
/// # Errors
/// [`BuildError::Incomplete`] when the job did not come from the API server.
pub fn worker_pod(job: &MigrateJob, secrets: &SecretVersions) -> Result<Pod, BuildError> {
    let id = identity(job)?;
    let spec = &job.spec;
    let workers = &spec.workers;
    let port = workers.metrics_port;

    let mut env = vec![
        secret_env(worker_env::REDIS_URL, &spec.queue.url_secret_ref),
        secret_env(worker_env::MYSQL_URL, &spec.source.url_secret_ref),
        secret_env(worker_env::SEARCH_URL, &spec.sink.url_secret_ref),
    ];
    if let Some(user) = &spec.sink.username_secret_ref {
        env.push(secret_env(worker_env::SEARCH_USERNAME, user));
    }
    if let Some(password) = &spec.sink.password_secret_ref {
        env.push(secret_env(worker_env::SEARCH_PASSWORD, password));
    }
    env.push(EnvVar {
        name: worker_env::WORKER_ID.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    });
    // The worker listens on loopback by default; in a pod the probes and the scrape come
    // from outside.
    env.push(plain_env(worker_env::LISTEN, format!("0.0.0.0:{port}")));
    env.push(plain_env(worker_env::LOG_FORMAT, "json".to_owned()));
    env.push(plain_env(worker_env::KEYWORDS_DIR, KEYWORDS_DIR.to_owned()));
    env.push(plain_env(
        worker_env::TERMINATION_LOG,
        TERMINATION_MESSAGE_PATH.to_owned(),
    ));
    // The operator grants soft-line restarts (surge first, within the budget): the worker asks.
    env.push(plain_env(
        worker_env::SUPERVISED,
        migrate_contract::restart::SUPERVISED_VALUE.to_owned(),
    ));
    let has_memory_limit = workers
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key("memory"));
    if has_memory_limit {
        env.push(EnvVar {
            name: worker_env::MEMORY_LIMIT_BYTES.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(CONTAINER.to_owned()),
                    resource: "limits.memory".to_owned(),
                    divisor: None,
                }),
                ..EnvVarSource::default()
            }),
        });
    }

    let mut volumes = vec![
        Volume {
            name: "pipeline".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: pipeline_config_map_name(id.name),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "pipeline".to_owned(),
            mount_path: PIPELINE_PATH.to_owned(),
            sub_path: Some(PIPELINE_KEY.to_owned()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    if let Some(keywords) = &spec.keywords.config_map {
        volumes.push(Volume {
            name: "keywords".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: keywords.clone(),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        // Mounted as a folder (no subPath) so that edits reach running workers.
        mounts.push(VolumeMount {
            name: "keywords".to_owned(),
            mount_path: KEYWORDS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(workers.image.clone()),
        image_pull_policy: workers.image_pull_policy.clone(),
        args: Some(vec![
            "run".to_owned(),
            "--pipeline".to_owned(),
            PIPELINE_PATH.to_owned(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: i32::from(port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: workers.resources.clone(),
        readiness_probe: Some(http_probe("/readyz", port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", port, 10, 6)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };

    let mut annotations = busyness_annotations(0);
    if let Some(generation) = job.metadata.generation {
        annotations.insert(GENERATION.to_owned(), generation.to_string());
    }
    annotations.insert(TEMPLATE_HASH.to_owned(), template_hash(job, secrets)?);
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(pod_prefix(id.name)),
            namespace: Some(id.namespace.to_owned()),
            labels: Some(labels(id.name)),
            annotations: Some(annotations),
            owner_references: Some(vec![id.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            // One pod, one process lifetime: the operator replaces exited pods itself.
            restart_policy: Some("Never".to_owned()),
            // Scheduling is the user's: a cluster autoscaler sees these and the requests.
            priority_class_name: workers.priority_class_name.clone(),
            node_selector: workers.node_selector.clone(),
            tolerations: workers.tolerations.clone(),
            affinity: workers.affinity.clone(),
            topology_spread_constraints: workers.topology_spread_constraints.clone(),
            termination_grace_period_seconds: Some(workers.termination_grace_period_seconds),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(runtime_default()),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    })
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// Whether `pod` belongs to `job` (owned by this very object, not an earlier one of the same
/// name).
#[must_use]
pub fn owned_by(pod: &Pod, job: &MigrateJob) -> bool {
    let uid = job.uid();
    pod.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && Some(&o.uid) == uid.as_ref()
            && o.kind == MigrateJob::kind(&())
    })
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
