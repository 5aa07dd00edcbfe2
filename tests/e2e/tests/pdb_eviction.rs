//! The workers' PodDisruptionBudget on the testbed's real node (kubelet, controller-manager
//! with its disruption controller): an eviction through the eviction API (policy/v1 Eviction)
//! is allowed while the budget holds and refused when it would break it, for a job whose
//! `spec.replicas` is 1 under `autoscaling: Backlog` while three workers run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, PostParams, Resource};
use migrate_crds::Autoscaling;
use migrate_e2e::env::{Service, TestEnv};
use migrate_e2e::k8s;
use migrate_operator::controller::build;
use serde_json::json;

/// The static tool image; `probe pause` waits until it is stopped.
const PROBE_IMAGE: &str = "testbed.local/probe:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_allowed_while_the_budget_holds_and_refused_when_it_would_break_it() {
    let env = TestEnv::load();
    env.require(&[Service::Node]).await;
    let client = k8s::client_from(&env.node_kubeconfig.clone().unwrap()).await;
    k8s::install_crd(&client).await;
    let ns = k8s::fresh_name("pdb");
    k8s::create_namespace(&client, &ns).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    k8s::eventually(k8s::DEADLINE, "the default ServiceAccount", || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;

    let mut spec = migrate_crds::pipeline::example_spec();
    spec.autoscaling = Autoscaling::Backlog;
    spec.replicas = None;
    let job = k8s::create_job(&client, &ns, "articles", spec).await;
    assert_eq!(job.spec.replicas, Some(1), "the API server defaults it");
    let owner = job.controller_owner_ref(&()).unwrap();

    // The budget the operator applies for three desired workers.
    let pdb = build::pod_disruption_budget(&job, 3).unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 1..=3 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("articles-worker-{i}"),
                "labels": build::labels("articles"),
                "ownerReferences": [owner],
            },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "worker",
                    "image": PROBE_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["pause"],
                }],
            },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let name = build::pdb_name("articles");
    let status = k8s::eventually(
        std::time::Duration::from_secs(180),
        "the budget to count three healthy workers",
        || {
            let budgets = budgets.clone();
            let name = name.clone();
            async move {
                let s = budgets.get(&name).await.ok()?.status?;
                (s.current_healthy == 3).then_some(s)
            }
        },
    )
    .await;
    println!(
        "budget: expected {}, healthy {}, desired healthy {}, disruptions allowed {}",
        status.expected_pods,
        status.current_healthy,
        status.desired_healthy,
        status.disruptions_allowed
    );
    let first = pods
        .evict("articles-worker-1", &EvictParams::default())
        .await;
    let second = pods
        .evict("articles-worker-2", &EvictParams::default())
        .await;
    k8s::remove_namespace(&client, &ns).await;

    assert_eq!(
        (
            status.expected_pods,
            status.desired_healthy,
            status.disruptions_allowed
        ),
        (3, 2, 1),
        "the budget counts the pods that exist, not spec.replicas: {status:?}"
    );
    assert!(first.is_ok(), "one eviction fits the budget: {first:?}");
    match second {
        Err(kube::Error::Api(e)) if e.code == 429 => {}
        other => panic!("a second eviction must be refused with 429: {other:?}"),
    }
}
