//! The pod runner on its own against the testbed's kube-apiserver, with shell and Python
//! stand-in images: binding, the environment and volumes (rewritten paths, the pod IP through
//! `$(VAR)`, ConfigMap edits reaching a running pod), the termination message, readiness from
//! an HTTP probe, OOM kills, restarts with back-off, graceful deletion, and the Node's
//! registration and removal.
//!
//! Skipped (with a message) only when the testbed has no `k8s` component.

// A test fails loudly, naming what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ContainerStateTerminated, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use migrate_e2e::env::TestEnv;
use migrate_e2e::k8s::{self, eventually};
use nix::sys::signal::Signal;
use serde_json::json;

/// How long a pod or the Node may take to reach the state a test waits for.
const LIMIT: Duration = Duration::from_secs(60);

/// The runner process, stopped with SIGTERM when dropped.
struct Runner {
    child: std::process::Child,
    log: PathBuf,
}

impl Runner {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the test's namespace when dropped, also when the test fails: the testbed has no
/// namespace controller, so its pods are deleted and the namespace finalized by hand.
struct NamespaceGuard {
    kubeconfig: PathBuf,
    ns: String,
}

async fn remove_namespace(kubeconfig: &std::path::Path, ns: &str) {
    let client = k8s::client_from(kubeconfig).await;
    k8s::remove_pods(&client, ns).await;
    k8s::remove_namespace(&client, ns).await;
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let (kubeconfig, ns) = (self.kubeconfig.clone(), self.ns.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_namespace(&kubeconfig, &ns));
            }
        })
        .join();
    }
}

fn terminated(pod: &Pod) -> Option<ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

async fn pod_where(pods: &Api<Pod>, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
    let ok = &ok;
    eventually(LIMIT, what, || async move {
        pods.get_opt(name).await.ok().flatten().filter(|p| ok(p))
    })
    .await
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

/// Pods of every kind go through their lives as a kubelet would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_run_reported_limited_restarted_and_deleted_like_a_kubelet_does() {
    let env = TestEnv::load();
    let kubeconfig = env.kubeconfig.clone().filter(|p| p.exists());
    if !migrate_e2e::env::present_or_skip(
        "pods_are_bound_run_reported_limited_restarted_and_deleted_like_a_kubelet_does",
        "k8s",
        kubeconfig.is_some(),
    ) {
        return;
    }
    let Some(kubeconfig) = kubeconfig else { return };
    env.require(&[migrate_e2e::env::Service::Kubernetes]).await;
    let client = k8s::client_from(&kubeconfig).await;
    let ns = k8s::fresh_name("podrunner");
    k8s::create_namespace(&client, &ns).await;
    let guard = NamespaceGuard {
        kubeconfig: kubeconfig.clone(),
        ns: ns.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let node = format!("podrunner-{ns}");
    let log = dir.path().join("runner.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_testbed-podrunner"))
        .args(["--namespace", &ns, "--node-name", &node])
        .args(["--first-ip", "127.0.0.200", "--last-ip", "127.0.0.250"])
        .args([
            "--image",
            "shell=/bin/sh",
            "--image",
            "python=/usr/bin/python3",
        ])
        .args(["--backoff-base-seconds", "1", "--keep-pod-dirs"])
        .arg("--state-dir")
        .arg(&state)
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut runner = Runner { child, log };

    let nodes: Api<Node> = Api::all(client.clone());
    let registered = eventually(LIMIT, "the runner's Node", || async {
        nodes.get_opt(&node).await.ok().flatten()
    })
    .await;
    let ready = registered
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready.status, "True");

    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cfg"},
                "data": {"greeting": "hello", "file.txt": "from a configmap\n"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let create = |p: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &p).await.unwrap() }
    };

    // Environment, volumes, rewritten paths, termination message, exit code.
    create(pod(json!({
        "metadata": {"name": "env"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "registry.example/shell:1.0",
            "args": ["-c", "echo \"$GREETING $TOKEN $POD_IP $MEM $NAME\" > \"$OUT\"; cat \"$CFG\" >> \"$OUT\"; printf 'it is done' > \"$MSG\"; exit 3"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                {"name": "OUT", "value": "/work/out.txt"},
                {"name": "CFG", "value": "/etc/cfg/file.txt"},
                {"name": "MSG", "value": "/dev/termination-log"}
            ],
            "resources": {"limits": {"memory": "64Mi"}},
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "work", "mountPath": "/work"}]
        }], "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "work", "emptyDir": {}}]}
    })))
    .await;
    // Readiness from an HTTP probe at the pod IP, which reaches the process through $(VAR).
    create(pod(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{
            "name": "main", "image": "python",
            "command": ["python3", "-m", "http.server", "8000", "--bind", "$(POD_IP)"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1}
        }]}
    })))
    .await;
    // Above its memory limit: killed and reported as the kernel's OOM killer is.
    create(pod(json!({
        "metadata": {"name": "hog"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "shell",
            "args": ["-c", "x=a; while true; do x=$x$x; sleep 0.05; done"],
            "resources": {"limits": {"memory": "32Mi"}}
        }]}
    })))
    .await;
    // A failing container is restarted with back-off.
    create(pod(json!({
        "metadata": {"name": "crash"},
        "spec": {"restartPolicy": "Always", "containers": [{
            "name": "main", "image": "shell", "terminationMessagePolicy": "FallbackToLogsOnError",
            "args": ["-c", "echo about to fail; exit 1"]
        }]}
    })))
    .await;
    // A container that drains on SIGTERM.
    create(pod(json!({
        "metadata": {"name": "sleeper"},
        "spec": {"terminationGracePeriodSeconds": 20, "containers": [{
            "name": "main", "image": "shell",
            "args": ["-c", "trap 'echo got SIGTERM; exit 0' TERM; while true; do sleep 0.1; done"]
        }]}
    })))
    .await;

    let env_pod = pod_where(&pods, "env", "the env pod to fail", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let t = terminated(&env_pod).expect("a terminated container");
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), t.message.as_deref()),
        (3, Some("Error"), Some("it is done"))
    );
    let status = env_pod.status.clone().unwrap();
    let ip: Ipv4Addr = status.pod_ip.clone().unwrap().parse().unwrap();
    assert!(
        (Ipv4Addr::new(127, 0, 0, 200)..=Ipv4Addr::new(127, 0, 0, 250)).contains(&ip),
        "{ip}"
    );
    assert_eq!(
        env_pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    let folder = state.join("pods").join(format!("{ns}_env"));
    let written = std::fs::read_to_string(folder.join("volumes/work/out.txt")).unwrap();
    assert_eq!(
        written,
        format!("hello abc {ip} 67108864 env\nfrom a configmap\n")
    );

    // An edited ConfigMap reaches the pod's volume.
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            "cfg",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"file.txt": "edited\n"}})),
        )
        .await
        .unwrap();
    let mounted = folder.join("volumes/cfg/file.txt");
    eventually(LIMIT, "the edit in the mounted file", || async {
        (std::fs::read_to_string(&mounted).ok()? == "edited\n").then_some(())
    })
    .await;

    let web = pod_where(&pods, "web", "the web pod to be ready", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    let web_ip = web.status.unwrap().pod_ip.unwrap();
    assert_ne!(web_ip, ip.to_string(), "each pod has its own IP");

    let hog = pod_where(&pods, "hog", "the hog to be OOM-killed", |p| {
        terminated(p).is_some()
    })
    .await;
    let t = terminated(&hog).unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    assert_eq!(hog.status.unwrap().phase.as_deref(), Some("Failed"));

    let crash = pod_where(&pods, "crash", "a restart of the crashing container", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs[0].restart_count >= 1)
    })
    .await;
    let cs = &crash
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(
        (last.exit_code, last.message.as_deref()),
        (1, Some("about to fail"))
    );
    assert_eq!(
        crash.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );

    pod_where(&pods, "sleeper", "the sleeper to run", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let asked = Instant::now();
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LIMIT, "the sleeper to be removed", || async {
        pods.get_opt("sleeper").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "a drained container ends long before its grace period"
    );
    let sleeper_log =
        std::fs::read_to_string(state.join("pods").join(format!("{ns}_sleeper/main.log"))).unwrap();
    assert_eq!(sleeper_log, "got SIGTERM\n");

    // Stopping the runner stops its containers and removes its Node.
    let stopped = runner.stop().expect("the runner exits");
    assert!(stopped.success(), "{stopped}\n{}", runner.log());
    assert!(
        nodes.get_opt(&node).await.unwrap().is_none(),
        "the Node is removed"
    );
    assert!(
        testbed_podrunner::pod::running_processes(&state).is_empty(),
        "no container left running"
    );

    drop(guard);
}
