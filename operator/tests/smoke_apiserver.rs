//! Smoke tests of the MigrateJob API on a real kube-apiserver (the testbed's, or any cluster
//! named by `KUBECONFIG`): the generated CRD is accepted, objects round-trip, the status and
//! scale subresources work, and the CEL rules reject invalid specs with their messages.

// Test helpers outside `#[test]` functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use migrate_crds::pipeline::example_spec;
use migrate_crds::{MigrateJob, MigrateJobSpec};
use migrate_e2e::k8s::{admin_client, fresh_name, install_crd};
use serde_json::json;

const MANAGER: &str = "migrate-operator-smoke";

fn job(name: &str, spec: MigrateJobSpec) -> MigrateJob {
    let mut job = MigrateJob::new(name, spec);
    job.metadata.namespace = Some("default".to_owned());
    job
}

/// `spec` as the API server stores it: with the schema's defaults, `replicas` among them.
fn stored(mut spec: MigrateJobSpec) -> MigrateJobSpec {
    spec.replicas = spec.replicas.or(Some(migrate_crds::DEFAULT_REPLICAS));
    spec
}

/// The generated CRD installs, and a MigrateJob round-trips with its defaults applied.
#[tokio::test]
async fn a_migrate_job_round_trips_through_the_api_server() {
    let client = admin_client().await;
    install_crd(&client).await;
    let api: Api<MigrateJob> = Api::namespaced(client, "default");
    let name = fresh_name("smoke-roundtrip");
    let created = api
        .create(&PostParams::default(), &job(&name, example_spec()))
        .await
        .expect("create");
    assert_eq!(created.spec, stored(example_spec()));
    let fetched = api.get(&name).await.expect("get");
    assert_eq!(fetched.spec.queue.key, "articles");
    assert_eq!(fetched.spec.memory.soft, "80%");
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// The status subresource takes a server-side-applied status without touching the spec.
#[tokio::test]
async fn status_is_written_through_the_status_subresource() {
    let client = admin_client().await;
    install_crd(&client).await;
    let api: Api<MigrateJob> = Api::namespaced(client, "default");
    let name = fresh_name("smoke-status");
    api.create(&PostParams::default(), &job(&name, example_spec()))
        .await
        .expect("create");
    let patch = json!({
        "apiVersion": "migrate-operator.io/v1alpha1",
        "kind": "MigrateJob",
        "status": {
            "observedGeneration": 1,
            "phase": "Running",
            "replicas": 2,
            "readyReplicas": 1,
            "backlog": 1234,
            "processed": 99,
            "restarts": {"total": 1, "memorySoft": 1},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "WorkersReady",
                "message": "1 of 2 workers ready", "lastTransitionTime": "2026-11-26T00:00:00Z"
            }]
        }
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .expect("status patch");
    let got = api.get_status(&name).await.expect("get status");
    let status = got.status.expect("status set");
    assert_eq!(status.backlog, 1234);
    assert_eq!(status.restarts.memory_soft, 1);
    assert_eq!(status.conditions[0].reason, "WorkersReady");
    assert_eq!(got.spec, stored(example_spec()), "the spec is untouched");
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// `kubectl scale mj/x --replicas=N` goes through the scale subresource into `spec.replicas`,
/// and the status side reads `status.replicas` and `status.selector`.
#[tokio::test]
async fn the_scale_subresource_sets_spec_replicas() {
    let client = admin_client().await;
    install_crd(&client).await;
    let api: Api<MigrateJob> = Api::namespaced(client, "default");
    let name = fresh_name("smoke-scale");
    let mut spec = example_spec();
    spec.autoscaling = migrate_crds::Autoscaling::External;
    api.create(&PostParams::default(), &job(&name, spec))
        .await
        .expect("create");
    api.patch_scale(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .expect("scale");
    let scaled = api.get(&name).await.expect("get");
    assert_eq!(scaled.spec.replicas, Some(3));
    let status = json!({
        "apiVersion": "migrate-operator.io/v1alpha1", "kind": "MigrateJob",
        "status": {"replicas": 2, "selector": "migrate-operator.io/job=x"}
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("status patch");
    let scale = api.get_scale(&name).await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let scale_status = scale.status.expect("scale status");
    assert_eq!(scale_status.replicas, 2);
    assert_eq!(
        scale_status.selector.as_deref(),
        Some("migrate-operator.io/job=x")
    );
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// Invalid specs are rejected at admission with the CEL rule's message, naming the field.
#[tokio::test]
async fn invalid_jobs_are_rejected_with_a_message_a_person_understands() {
    let client = admin_client().await;
    install_crd(&client).await;
    let api: Api<MigrateJob> = Api::namespaced(client, "default");
    let mut cases: Vec<(MigrateJobSpec, &str)> = Vec::new();

    let mut spec = example_spec();
    spec.workers.min_replicas = 5;
    spec.workers.max_replicas = 2;
    cases.push((
        spec,
        "workers.minReplicas 5 must be less than or equal to workers.maxReplicas 2",
    ));

    let mut spec = example_spec();
    spec.memory.soft = "95%".to_owned();
    spec.memory.hard = "90%".to_owned();
    cases.push((spec, "memory.soft 95% must be lower than memory.hard 90%"));

    let mut spec = example_spec();
    spec.memory.soft = "2Gi".to_owned();
    spec.memory.hard = "1Gi".to_owned();
    cases.push((spec, "memory.soft 2Gi must be lower than memory.hard 1Gi"));

    let mut spec = example_spec();
    spec.memory.hard = "150%".to_owned();
    cases.push((
        spec,
        "memory.hard 150% is not a whole percentage between 1% and 100%",
    ));

    let mut spec = example_spec();
    spec.memory.source = migrate_crds::MemorySource::PodMetrics;
    spec.memory.stale_after_seconds = 10;
    cases.push((
        spec,
        "memory.staleAfterSeconds 10 must be at least 30 with memory.source PodMetrics",
    ));

    let mut spec = example_spec();
    spec.queue.max_give_backs = 0;
    cases.push((spec, "queue.maxGiveBacks 0 must be between 1 and 1000"));

    let mut spec = example_spec();
    spec.source.queries[1].sql = "   ".to_owned();
    cases.push((spec, "sql is blank"));

    let mut spec = example_spec();
    spec.source.queries[1].main = true;
    cases.push((spec, "exactly one query must have main: true"));

    let mut spec = example_spec();
    spec.source.queries.clear();
    cases.push((spec, "spec.source.queries"));

    for (spec, message) in cases {
        let name = fresh_name("smoke-invalid");
        let err = api
            .create(&PostParams::default(), &job(&name, spec))
            .await
            .expect_err(&format!("a spec violating {message:?} must be rejected"));
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains(message),
                    "expected {message:?} in {:?}",
                    status.message
                );
            }
            other => panic!("expected an API rejection for {message:?}, got {other}"),
        }
    }
}
