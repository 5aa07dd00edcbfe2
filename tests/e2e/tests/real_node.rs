//! Pods on the testbed's real node (`tests/testbed/up.sh node`): a kubelet, containerd and runc
//! run them in kernel cgroups, so a memory limit ends in a real OOM kill and a securityContext
//! is really applied by the runtime. These tests fail, never skip, when the node is down.
//!
//! The node has one kubelet, shared by every test: each test works in a namespace of its own
//! and deletes it at the end. The images are the ones `tests/testbed/images/build.sh` makes and
//! the node component imports (there is no registry: pods use `imagePullPolicy: Never`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Namespace, Pod, ServiceAccount,
};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use migrate_e2e::k8s;
use serde_json::json;

/// The static tool image: `probe pause | eat MiB | copy DEST | inspect [--exec CMD...]`.
const PROBE_IMAGE: &str = "testbed.local/probe:1";

/// The worker image, made from `target/release/migrate-worker`.
const WORKER_IMAGE: &str = "testbed.local/migrate-worker:dev";

/// The operator image, made from `target/release/migrate-operator`.
const OPERATOR_IMAGE: &str = "testbed.local/migrate-operator:dev";

/// The non-root user the images name.
const NONROOT_UID: &str = "65532";

/// How long a pod may take from creation to its end on a loaded two-core machine (it takes
/// 1-2 s when idle).
const POD_DEADLINE: Duration = Duration::from_secs(120);

/// A fresh namespace whose `default` ServiceAccount exists (the controller-manager creates it
/// a moment after the namespace; until then the API refuses pods).
async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let ns = k8s::fresh_name(prefix);
    k8s::create_namespace(client, &ns).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    k8s::eventually(k8s::DEADLINE, "the default ServiceAccount", || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;
    ns
}

/// Deletes namespace `ns` the way a real cluster does (the namespace controller removes its
/// pods and the kubelet kills their containers). Errors are ignored.
async fn remove_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// Creates `pod` in `ns` and waits until `done` accepts its status; returns the pod and how
/// long that took.
#[allow(clippy::unwrap_used)] // a test helper: a failure fails the test
async fn run_pod(
    client: &Client,
    ns: &str,
    pod: serde_json::Value,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> (Pod, Duration) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let start = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = k8s::eventually(POD_DEADLINE, what, || {
        let pods = pods.clone();
        let name = name.clone();
        let done = &done;
        async move { pods.get(&name).await.ok().filter(|p| done(p)) }
    })
    .await;
    (pod, start.elapsed())
}

/// The pod has ended: phase Succeeded or Failed (every container terminated for good; the
/// phase follows the containers' states by a moment).
fn ended(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// The status of container `name` (init or regular) of `pod`.
fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|s| s.name == name)
}

/// How container `name` ended: its current state, else its last one (after a kill, the
/// kubelet may already have moved the termination to `lastState`).
fn terminated<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStateTerminated> {
    let status = container_status(pod, name)?;
    let from = |s: Option<&'a ContainerState>| s.and_then(|s| s.terminated.as_ref());
    from(status.state.as_ref()).or_else(|| from(status.last_state.as_ref()))
}

/// The hardened container securityContext the operator's pods use.
fn restricted_security_context() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// A container that allocates past its 64 MiB limit is killed by the kernel's memory cgroup:
/// the kubelet reports OOMKilled with exit code 137 (SIGKILL), not an exit of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_past_its_memory_limit_is_oom_killed_by_the_kernel() {
    let client = k8s::node_client().await;
    let ns = fresh_namespace(&client, "oom").await;
    let pod = json!({
        "metadata": {"name": "eater"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "eater",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                // Up to 512 MiB, 1 MiB at a time, every page touched; exits 3 if never killed.
                "args": ["eat", "512"],
                "resources": {"limits": {"memory": "64Mi"}},
                "securityContext": restricted_security_context(),
            }],
        },
    });
    let (pod, took) = run_pod(&client, &ns, pod, "the eater's pod to end", ended).await;
    let end = terminated(&pod, "eater").cloned().unwrap();
    println!(
        "eater ended after {took:?}: reason {:?}, exit code {}",
        end.reason, end.exit_code
    );
    remove_namespace(&client, &ns).await;

    assert_eq!(
        end.reason.as_deref(),
        Some("OOMKilled"),
        "the container must be killed by the memory cgroup: {end:?}"
    );
    assert_eq!(end.exit_code, 137, "128 + SIGKILL: {end:?}");
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Failed"),
        "restartPolicy Never: the pod ends Failed"
    );
}

/// The worker image runs under the hardened securityContext, and the runtime really applies
/// it: inside the worker's container (the probe reports, then execs `migrate-worker --help` in
/// the same process) the user is 65532, no capability is left in any set, no_new_privs is on,
/// seccomp filters, and `/` cannot be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_image_runs_non_root_read_only_without_capabilities() {
    let client = k8s::node_client().await;
    let ns = fresh_namespace(&client, "hardened").await;
    let pod = json!({
        "metadata": {"name": "worker"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "tools", "emptyDir": {"sizeLimit": "16Mi"}}],
            // The worker image holds the worker and its libraries only: the probe is copied in.
            "initContainers": [{
                "name": "tools",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["copy", "/tools/probe"],
                "volumeMounts": [{"name": "tools", "mountPath": "/tools"}],
                "securityContext": restricted_security_context(),
            }],
            "containers": [{
                "name": "worker",
                "image": WORKER_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/tools/probe", "inspect", "--exec", "/usr/local/bin/migrate-worker", "--help"],
                "volumeMounts": [{"name": "tools", "mountPath": "/tools", "readOnly": true}],
                "resources": {"limits": {"memory": "64Mi"}},
                "securityContext": restricted_security_context(),
            }],
        },
    });
    let (pod, took) = run_pod(&client, &ns, pod, "the worker's pod to end", ended).await;
    let end = terminated(&pod, "worker").cloned().unwrap();
    let phase = pod.status.and_then(|s| s.phase);
    println!(
        "worker ended after {took:?}: exit code {}, report:\n{}",
        end.exit_code,
        end.message.as_deref().unwrap_or("(none)")
    );
    remove_namespace(&client, &ns).await;

    assert_eq!(
        end.exit_code, 0,
        "migrate-worker --help must succeed: {end:?}"
    );
    assert_eq!(phase.as_deref(), Some("Succeeded"));
    let report: HashMap<&str, &str> = end
        .message
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(report.get("uid"), Some(&NONROOT_UID), "{report:?}");
    assert_eq!(report.get("gid"), Some(&NONROOT_UID), "{report:?}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            report.get(set),
            Some(&"0000000000000000"),
            "{set}: drop ALL leaves no capability: {report:?}"
        );
    }
    assert_eq!(report.get("NoNewPrivs"), Some(&"1"), "{report:?}");
    assert_eq!(
        report.get("Seccomp"),
        Some(&"2"),
        "2 = filter mode: {report:?}"
    );
    assert!(
        report
            .get("rootfs_write")
            .is_some_and(|e| e.contains("read-only file system")),
        "writing to / must fail with EROFS: {report:?}"
    );
}

/// The operator image starts by its own entrypoint (only the arguments are given) under the
/// hardened securityContext without naming a user: the kubelet accepts the image's user as
/// non-root, and `migrate-operator crd` prints the CRD and exits 0 on a read-only root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_image_runs_by_its_entrypoint_as_non_root() {
    let client = k8s::node_client().await;
    let ns = fresh_namespace(&client, "operator-image").await;
    let pod = json!({
        "metadata": {"name": "operator"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "operator",
                "image": OPERATOR_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["crd"],
                "resources": {"limits": {"memory": "64Mi"}},
                "securityContext": restricted_security_context(),
            }],
        },
    });
    let (pod, took) = run_pod(&client, &ns, pod, "the operator's pod to end", ended).await;
    let end = terminated(&pod, "operator").cloned().unwrap();
    let phase = pod.status.and_then(|s| s.phase);
    println!("operator image ended after {took:?}: {end:?}");
    remove_namespace(&client, &ns).await;

    assert_eq!(
        end.exit_code, 0,
        "migrate-operator crd must succeed: {end:?}"
    );
    assert_eq!(phase.as_deref(), Some("Succeeded"));
}

/// runAsNonRoot is checked by the kubelet, not only declared: a container asking for uid 0
/// never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_user_is_refused_under_run_as_non_root() {
    let client = k8s::node_client().await;
    let ns = fresh_namespace(&client, "nonroot").await;
    let pod = json!({
        "metadata": {"name": "root"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "root",
                "image": WORKER_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["--help"],
                "securityContext": {"runAsNonRoot": true, "runAsUser": 0},
            }],
        },
    });
    let (pod, _) = run_pod(
        &client,
        &ns,
        pod,
        "the kubelet to refuse the container",
        |p| {
            container_status(p, "root")
                .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "CreateContainerConfigError")
        },
    )
    .await;
    let waiting = container_status(&pod, "root")
        .and_then(|s| s.state.as_ref()?.waiting.clone())
        .unwrap();
    println!("root container: {waiting:?}");
    remove_namespace(&client, &ns).await;

    assert!(
        waiting
            .message
            .as_deref()
            .is_some_and(|m| m.contains("non-root")),
        "{waiting:?}"
    );
}
