//! A real HorizontalPodAutoscaler (`autoscaling/v2`) on a MigrateJob, on the testbed's node
//! cluster (`tests/testbed/up.sh node`), whose kube-controller-manager runs the HPA controller:
//! the HPA reads the job's scale subresource and writes `spec.replicas` through it, as it
//! would for a Deployment. Fails, never skips, when the node is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, PostParams};
use migrate_crds::pipeline::example_spec;
use migrate_crds::{Autoscaling, MigrateJob};
use migrate_e2e::k8s;
use serde_json::json;

/// The HPA controller syncs every 15 s; a loaded two-core machine may miss one or two.
const HPA_DEADLINE: Duration = Duration::from_secs(120);

/// An HPA whose `minReplicas` (2) is above the job's `spec.replicas` (1, `autoscaling:
/// External`) raises it through the scale subresource, and reports the count it set; the
/// scale subresource then answers 2.
#[tokio::test]
async fn a_horizontal_pod_autoscaler_sets_the_replicas_of_a_migrate_job() {
    let client = k8s::node_client().await;
    k8s::install_crd(&client).await;
    let ns = k8s::fresh_name("hpa");
    k8s::create_namespace(&client, &ns).await;

    let mut spec = example_spec();
    spec.autoscaling = Autoscaling::External;
    spec.replicas = Some(1);
    k8s::create_job(&client, &ns, "scaled", spec).await;

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "migrate-operator.io/v1alpha1",
                "kind": "MigrateJob",
                "name": "scaled"
            },
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}
            }]
        }
    }))
    .unwrap();
    let started = Instant::now();
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("create the HPA");

    let jobs: Api<MigrateJob> = Api::namespaced(client.clone(), &ns);
    let replicas = k8s::eventually(HPA_DEADLINE, "the HPA's write of spec.replicas", || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("scaled").await.ok()?;
            job.spec.replicas.filter(|r| *r != 1)
        }
    })
    .await;
    println!(
        "HPA set spec.replicas to {replicas} {:?} after it was created",
        started.elapsed()
    );
    assert_eq!(replicas, 2, "minReplicas");

    let desired = k8s::eventually(HPA_DEADLINE, "the HPA's status", || {
        let hpas = hpas.clone();
        async move {
            let hpa = hpas.get("scaled").await.ok()?;
            hpa.status.map(|s| s.desired_replicas).filter(|d| *d != 0)
        }
    })
    .await;
    assert_eq!(desired, 2);
    let scale: Scale = jobs.get_scale("scaled").await.expect("GET /scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));

    let _ = hpas.delete("scaled", &DeleteParams::default()).await;
    let _ = jobs.delete("scaled", &DeleteParams::default()).await;
    k8s::remove_namespace(&client, &ns).await;
}
