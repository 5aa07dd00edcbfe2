//! Tests of the pure builders: every field a worker pod, the pipeline ConfigMap and the
//! PodDisruptionBudget must carry.

use super::*;
use k8s_openapi::api::core::v1::ResourceRequirements;
use migrate_crds::pipeline::{example_spec, from_yaml};

fn job() -> MigrateJob {
    let mut spec = example_spec();
    spec.sink.username_secret_ref = Some(SecretKeyRef {
        name: "es".to_owned(),
        key: "user".to_owned(),
    });
    spec.sink.password_secret_ref = Some(SecretKeyRef {
        name: "es".to_owned(),
        key: "password".to_owned(),
    });
    spec.workers.termination_grace_period_seconds = 45;
    spec.workers.metrics_port = 9100;
    let mut job = MigrateJob::new("articles", spec);
    job.metadata.namespace = Some("etl".to_owned());
    job.metadata.uid = Some("uid-1".to_owned());
    job.metadata.generation = Some(4);
    job
}

/// Scaling (by hand, by an autoscaler or by the backlog settings) keeps the template hash, so
/// it never restarts a worker; an edit a worker depends on changes it.
#[test]
fn the_template_hash_ignores_scaling_fields_and_follows_everything_else() {
    let base = template_hash(&job(), &SecretVersions::new()).unwrap();
    assert_eq!(base.len(), 16);
    let mut scaled = job();
    scaled.spec.replicas = Some(7);
    scaled.spec.autoscaling = migrate_crds::Autoscaling::External;
    scaled.spec.workers.min_replicas = 2;
    scaled.spec.workers.max_replicas = 9;
    scaled.spec.workers.target_backlog_per_worker = 5;
    scaled.spec.workers.scale_down_stabilization_seconds = 1;
    scaled.spec.workers.drain_settle_seconds = 1;
    assert_eq!(
        template_hash(&scaled, &SecretVersions::new()).unwrap(),
        base
    );
    let mut edited = job();
    edited.spec.workers.concurrency += 1;
    assert_ne!(
        template_hash(&edited, &SecretVersions::new()).unwrap(),
        base
    );
    let mut edited = job();
    edited.spec.workers.image.push_str("-next");
    assert_ne!(
        template_hash(&edited, &SecretVersions::new()).unwrap(),
        base
    );
}

/// The Secrets a worker reads are every Secret its environment names, once each; a new
/// version of any of them (or one created where it was missing) changes the template hash,
/// the same versions keep it.
#[test]
fn the_template_hash_follows_the_versions_of_the_referenced_secrets() {
    let mut j = job();
    j.spec.sink.username_secret_ref = Some(SecretKeyRef {
        name: "search-auth".into(),
        key: "username".into(),
    });
    j.spec.sink.password_secret_ref = Some(SecretKeyRef {
        name: "search-auth".into(),
        key: "password".into(),
    });
    let names = referenced_secrets(&j.spec);
    let mut want: BTreeSet<String> = [
        &j.spec.queue.url_secret_ref.name,
        &j.spec.source.url_secret_ref.name,
        &j.spec.sink.url_secret_ref.name,
    ]
    .into_iter()
    .cloned()
    .collect();
    want.insert("search-auth".into());
    assert_eq!(names, want);

    let versions = |v: &str| -> SecretVersions {
        names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    if n == "search-auth" {
                        v.to_owned()
                    } else {
                        "1".to_owned()
                    },
                )
            })
            .collect()
    };
    let base = template_hash(&j, &versions("10")).unwrap();
    assert_eq!(template_hash(&j, &versions("10")).unwrap(), base);
    assert_ne!(
        template_hash(&j, &versions("11")).unwrap(),
        base,
        "a new version rolls"
    );
    assert_ne!(
        template_hash(&j, &versions("")).unwrap(),
        base,
        "a missing Secret differs"
    );
    let pod = worker_pod(&j, &versions("11")).unwrap();
    assert_eq!(
        pod.annotations().get(TEMPLATE_HASH),
        Some(&template_hash(&j, &versions("11")).unwrap())
    );
}

fn container(pod: &Pod) -> &Container {
    &pod.spec.as_ref().unwrap().containers[0]
}

/// Security settings the restricted Pod Security Standard asks for, on pod and container.
#[test]
fn the_worker_pod_runs_non_root_read_only_without_privileges() {
    let pod = worker_pod(&job(), &SecretVersions::new()).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.termination_grace_period_seconds, Some(45));
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65_532));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let sc = container(&pod).security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65_532));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
}

/// Connection strings reach the worker only by `secretKeyRef`: no env var carries a literal
/// value except the listen address and keyword folder, and the whole pod holds no secret text.
#[test]
fn secrets_reach_the_pod_only_by_secret_key_ref() {
    let j = job();
    let pod = worker_pod(&j, &SecretVersions::new()).unwrap();
    let env = container(&pod).env.as_ref().unwrap();
    let by_name = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    for (var, secret, key) in [
        (
            "MIGRATE_REDIS_URL",
            &j.spec.queue.url_secret_ref.name,
            &j.spec.queue.url_secret_ref.key,
        ),
        (
            "MIGRATE_MYSQL_URL",
            &j.spec.source.url_secret_ref.name,
            &j.spec.source.url_secret_ref.key,
        ),
        (
            "MIGRATE_SEARCH_URL",
            &j.spec.sink.url_secret_ref.name,
            &j.spec.sink.url_secret_ref.key,
        ),
        (
            "MIGRATE_SEARCH_USERNAME",
            &"es".to_owned(),
            &"user".to_owned(),
        ),
        (
            "MIGRATE_SEARCH_PASSWORD",
            &"es".to_owned(),
            &"password".to_owned(),
        ),
    ] {
        let e = by_name(var);
        assert_eq!(e.value, None, "{var} must not carry a value");
        let r = e
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((&r.name, &r.key), (secret, key), "{var}");
    }
    let id = by_name("MIGRATE_WORKER_ID")
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(id.field_path, "metadata.name");
    for e in env {
        if e.value.is_some() {
            assert!(
                [
                    "MIGRATE_LISTEN",
                    "MIGRATE_KEYWORDS_DIR",
                    "MIGRATE_TERMINATION_LOG",
                    "MIGRATE_LOG_FORMAT",
                    "MIGRATE_SUPERVISED"
                ]
                .contains(&e.name.as_str()),
                "{} carries a literal value",
                e.name
            );
        }
    }
    assert_eq!(
        by_name("MIGRATE_LOG_FORMAT").value.as_deref(),
        Some("json"),
        "pods log JSON lines for the collector"
    );
    assert_eq!(
        by_name("MIGRATE_TERMINATION_LOG").value.as_deref(),
        container(&pod).termination_message_path.as_deref(),
        "the worker writes its exit reason where the kubelet reads it"
    );
    assert_eq!(
        by_name("MIGRATE_SUPERVISED").value.as_deref(),
        Some("1"),
        "the worker asks the operator for its soft-line restart instead of draining itself"
    );
    let text = serde_json::to_string(&pod).unwrap();
    for needle in ["redis://", "mysql://", "password@", "http://", "https://"] {
        assert!(!text.contains(needle), "the pod contains {needle:?}");
    }
}

#[test]
fn probes_point_at_the_workers_metrics_port() {
    let pod = worker_pod(&job(), &SecretVersions::new()).unwrap();
    let c = container(&pod);
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (ready.path.as_deref(), &ready.port),
        (Some("/readyz"), &IntOrString::Int(9100))
    );
    assert_eq!(
        (live.path.as_deref(), &live.port),
        (Some("/healthz"), &IntOrString::Int(9100))
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9100);
    let listen = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "MIGRATE_LISTEN")
        .unwrap();
    assert_eq!(listen.value.as_deref(), Some("0.0.0.0:9100"));
}

/// The pod is owned by its job, selectable by label, and starts out idle for the autoscaler.
#[test]
fn the_pod_is_owned_labelled_and_annotated() {
    let j = job();
    let pod = worker_pod(&j, &SecretVersions::new()).unwrap();
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("MigrateJob", "articles", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("migrate-worker")
    );
    assert_eq!(
        labels.get("migrate-operator.io/job").map(String::as_str),
        Some("articles")
    );
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get(SAFE_TO_EVICT).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get(DELETION_COST).map(String::as_str),
        Some("0")
    );
    assert_eq!(annotations.get(GENERATION).map(String::as_str), Some("4"));
    assert_eq!(
        annotations.get(TEMPLATE_HASH),
        Some(&template_hash(&job(), &SecretVersions::new()).unwrap())
    );
    assert_eq!(
        pod.metadata.generate_name.as_deref(),
        Some("articles-worker-")
    );
    assert_eq!(pod.metadata.namespace.as_deref(), Some("etl"));
    let mut p2 = pod.clone();
    p2.metadata.name = Some("articles-worker-x".to_owned());
    assert!(owned_by(&p2, &j));
}

#[test]
fn busy_workers_are_not_safe_to_evict_and_cost_more_to_delete() {
    let busy = busyness_annotations(7);
    assert_eq!(busy.get(SAFE_TO_EVICT).map(String::as_str), Some("false"));
    assert_eq!(busy.get(DELETION_COST).map(String::as_str), Some("7"));
    assert_eq!(
        busyness_annotations(0)
            .get(SAFE_TO_EVICT)
            .map(String::as_str),
        Some("true")
    );
}

/// Resources come from the spec, and the memory limit is passed down to the worker.
#[test]
fn resources_come_from_the_spec() {
    let j = job();
    let pod = worker_pod(&j, &SecretVersions::new()).unwrap();
    let c = container(&pod);
    assert_eq!(c.resources, j.spec.workers.resources);
    let limit_env = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "MIGRATE_MEMORY_LIMIT_BYTES")
        .unwrap();
    let field = limit_env
        .value_from
        .as_ref()
        .unwrap()
        .resource_field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.resource, "limits.memory");
    let mut no_limits = job();
    no_limits.spec.workers.resources = Some(ResourceRequirements::default());
    let pod = worker_pod(&no_limits, &SecretVersions::new()).unwrap();
    assert!(
        container(&pod)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.name != "MIGRATE_MEMORY_LIMIT_BYTES")
    );
}

/// The pipeline and keyword ConfigMaps are mounted where the worker reads them.
#[test]
fn the_pipeline_and_keywords_are_mounted() {
    let j = job();
    let pod = worker_pod(&j, &SecretVersions::new()).unwrap();
    let c = container(&pod);
    assert_eq!(
        c.args.as_ref().unwrap(),
        &vec![
            "run".to_owned(),
            "--pipeline".to_owned(),
            PIPELINE_PATH.to_owned()
        ]
    );
    let mounts = c.volume_mounts.as_ref().unwrap();
    let pipeline = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/migrate/pipeline.yaml")
        .unwrap();
    assert_eq!(pipeline.sub_path.as_deref(), Some("pipeline.yaml"));
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let cm = |v: &str| {
        volumes
            .iter()
            .find(|x| x.name == v)
            .unwrap()
            .config_map
            .as_ref()
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(cm(&pipeline.name), "articles-pipeline");
    let keywords = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/migrate/keywords")
        .unwrap();
    assert_eq!(Some(cm(&keywords.name)), j.spec.keywords.config_map);
    assert!(
        mounts.iter().any(|m| m.mount_path == "/tmp"),
        "a writable /tmp on a read-only root"
    );
}

/// The ConfigMap holds the spec as the worker reads it.
#[test]
fn the_pipeline_config_map_round_trips_the_spec() {
    let j = job();
    let cm = pipeline_config_map(&j).unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("articles-pipeline"));
    assert_eq!(
        cm.metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-1"
    );
    let yaml = cm.data.as_ref().unwrap().get(PIPELINE_KEY).unwrap();
    assert_eq!(from_yaml("cm", yaml).unwrap(), j.spec);
}

/// An integer minAvailable one below the desired count, never maxUnavailable (which the
/// disruption controller would read against `spec.replicas`, 1 under Backlog autoscaling).
#[test]
fn the_disruption_budget_allows_one_worker_down_at_a_time() {
    let pdb = pod_disruption_budget(&job(), 3).unwrap();
    assert_eq!(pdb.metadata.name.as_deref(), Some("articles-workers"));
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.min_available, Some(IntOrString::Int(2)));
    assert_eq!(spec.max_unavailable, None);
    let alone = pod_disruption_budget(&job(), 1).unwrap().spec.unwrap();
    assert_eq!(alone.min_available, Some(IntOrString::Int(0)));
    let none = pod_disruption_budget(&job(), 0).unwrap().spec.unwrap();
    assert_eq!(none.min_available, Some(IntOrString::Int(0)));
    let labels = spec.selector.unwrap().match_labels.unwrap();
    assert_eq!(
        labels.get("migrate-operator.io/job").map(String::as_str),
        Some("articles")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("migrate-worker")
    );
}

#[test]
fn a_job_not_read_from_the_api_server_cannot_be_built() {
    let mut j = job();
    j.metadata.uid = None;
    assert!(matches!(
        worker_pod(&j, &SecretVersions::new()),
        Err(BuildError::Incomplete("uid"))
    ));
}

#[test]
fn long_job_names_keep_pod_names_within_a_host_name() {
    let name = "a".repeat(63);
    assert!(pod_prefix(&name).len() + 5 <= 63);
    assert_eq!(
        selector("x"),
        "app.kubernetes.io/name=migrate-worker,migrate-operator.io/job=x"
    );
}

/// The scheduling fields of `workers` reach the pod as given (a cluster autoscaler sees them),
/// and a job without them leaves the pod's fields unset.
#[test]
fn worker_pods_carry_the_jobs_scheduling_fields() {
    let plain = worker_pod(&job(), &SecretVersions::new()).unwrap();
    let spec = plain.spec.unwrap();
    assert_eq!(
        (
            spec.priority_class_name,
            spec.node_selector,
            spec.tolerations,
            spec.affinity,
            spec.topology_spread_constraints
        ),
        (None, None, None, None, None)
    );
    let mut scheduled = job();
    let workers = &mut scheduled.spec.workers;
    workers.priority_class_name = Some("batch-low".to_owned());
    workers.node_selector = Some(BTreeMap::from([(
        "node-group".to_owned(),
        "etl".to_owned(),
    )]));
    workers.tolerations = Some(vec![
        serde_json::from_value(serde_json::json!({
            "key": "spot", "operator": "Exists", "effect": "NoSchedule"
        }))
        .unwrap(),
    ]);
    workers.affinity = Some(
        serde_json::from_value(serde_json::json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "migrate-worker"}}
            }}]
        }}))
        .unwrap(),
    );
    workers.topology_spread_constraints = Some(vec![
        serde_json::from_value(serde_json::json!({
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway"
        }))
        .unwrap(),
    ]);
    let expected = scheduled.spec.workers.clone();
    let spec = worker_pod(&scheduled, &SecretVersions::new())
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.priority_class_name, expected.priority_class_name);
    assert_eq!(spec.node_selector, expected.node_selector);
    assert_eq!(spec.tolerations, expected.tolerations);
    assert_eq!(spec.affinity, expected.affinity);
    assert_eq!(
        spec.topology_spread_constraints,
        expected.topology_spread_constraints
    );
}
