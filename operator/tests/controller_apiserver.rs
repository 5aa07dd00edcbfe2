//! The controller against the testbed's real kube-apiserver (`tests/testbed/up.sh k8s redis`)
//! and Redis, running under a ServiceAccount bound to exactly `deploy/rbac/role.yaml`, with a
//! token from the TokenRequest API: a permission missing from the role fails these tests.
//!
//! The testbed has no kubelet (pods never run: in-flight ids are read from Redis processing
//! lists the tests write), no garbage collector (the operator deletes children itself) and no
//! namespace controller (each test uses a fresh namespace and finalizes it at the end).

// Test helpers outside #[test] functions fail the test loudly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use migrate_crds::pipeline::{example_spec, from_yaml};
use migrate_crds::{MigrateJob, MigrateJobSpec, MigrateJobStatus, Mode};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::k8s::{self, DEADLINE, eventually};
use migrate_operator::controller::observe::RedisQueues;
use migrate_operator::controller::{self, FINALIZER};
use migrate_operator::leader::{LeaderElector, LeaseConfig};
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::{oneshot, watch};

/// One test's world: a namespace, the operator's ServiceAccount bound to the role, a Redis
/// Secret, and the controller running with the account's token.
struct Harness {
    admin: Client,
    operator: Client,
    ns: String,
    redis: redis::aio::MultiplexedConnection,
    stop: Option<oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start(prefix: &str) -> Self {
        let env = TestEnv::load();
        env.require(&[Service::Kubernetes, Service::Redis]).await;
        let config = k8s::admin_config().await;
        let admin = k8s::client(config.clone());
        k8s::install_crd(&admin).await;
        let ns = k8s::fresh_name(prefix);
        k8s::create_namespace(&admin, &ns).await;
        // The operator runs with the permissions of the shipped role only.
        let token = k8s::operator_token(&admin, &ns).await;
        let operator = k8s::client(k8s::with_token(&config, &token));

        k8s::create_redis_secret(&admin, &ns, &env.redis_url).await;
        k8s::create_example_references(&admin, &ns).await;

        let redis = redis::Client::open(env.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let mut harness = Self {
            admin,
            operator,
            ns,
            redis,
            stop: None,
            controller: None,
        };
        harness.start_controller();
        harness
    }

    fn start_controller(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let mut lease = LeaseConfig::new("migrate-operator", self.ns.clone(), "test-operator");
        lease.retry_period = Duration::from_millis(500);
        let config = controller::Config {
            namespace: Some(self.ns.clone()),
            lease: Some(lease),
            listen: None,
            instance: "test-operator".to_owned(),
        };
        let client = self.operator.clone();
        self.controller = Some(tokio::spawn(async move {
            controller::run_with(
                client,
                config,
                Arc::new(RedisQueues::default()),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("controller runs");
        }));
        self.stop = Some(stop);
    }

    fn jobs(&self) -> Api<MigrateJob> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Waits for `job`'s first memory-hard restart and checks it was `pod`'s, at `bytes`.
    async fn wait_for_memory_hard_kill(&self, job: &str, pod: &str, bytes: i64) {
        let status = self
            .wait_for_status(job, "a memory-hard restart", |s| {
                s.restarts.memory_hard == 1
            })
            .await;
        let last = status.last_restart.expect("last restart");
        assert_eq!(
            (last.worker.as_str(), last.reason.as_str()),
            (pod, "memory-hard")
        );
        assert_eq!(last.memory_bytes, Some(bytes));
    }

    /// Reports `pod` running and ready at 127.0.0.1, as a kubelet would (there is none).
    async fn mark_ready(&self, pod: &str) {
        self.pods()
            .patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "podIPs": [{"ip": "127.0.0.1"}],
                    "conditions": [{"type": "Ready", "status": "True"}]
                }})),
            )
            .await
            .expect("mark the pod ready");
    }

    async fn create_job(&self, name: &str, spec: MigrateJobSpec) -> MigrateJob {
        k8s::create_job(&self.admin, &self.ns, name, spec).await
    }

    async fn pod_names(&self, job: &str) -> BTreeSet<String> {
        let params = ListParams::default().labels(&format!("migrate-operator.io/job={job}"));
        self.pods()
            .list(&params)
            .await
            .expect("list pods")
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect()
    }

    async fn wait_for_pods(&self, job: &str, count: usize) -> BTreeSet<String> {
        eventually(DEADLINE, &format!("{count} pods of {job}"), || async move {
            let names = self.pod_names(job).await;
            (names.len() == count).then_some(names)
        })
        .await
    }

    async fn wait_for_status(
        &self,
        job: &str,
        what: &str,
        ok: impl Fn(&MigrateJobStatus) -> bool,
    ) -> MigrateJobStatus {
        let ok = &ok;
        eventually(DEADLINE, what, || async move {
            let found = self.jobs().get_opt(job).await.expect("get job")?;
            found.status.filter(|s| ok(s))
        })
        .await
    }

    async fn events_of(&self, job: &str) -> Vec<Event> {
        k8s::events_about(&self.admin, &self.ns, job).await
    }

    /// Stops the controller, removes what the test created, finalizes the namespace.
    async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        k8s::remove_job_objects(&self.admin, &self.ns).await;
        k8s::remove_operator_binding(&self.admin, &self.ns).await;
        k8s::remove_namespace(&self.admin, &self.ns).await;
    }
}

fn spec(queue: &str) -> MigrateJobSpec {
    let mut spec = example_spec();
    spec.mode = Mode::Continuous;
    spec.queue.key = queue.to_owned();
    spec
}

fn condition<'a>(
    status: &'a MigrateJobStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// A new job gets its pods (owned, labelled, secrets by reference), the pipeline ConfigMap, a
/// PodDisruptionBudget, a finalizer, a status with conditions, and a ScaledUp Event.
#[tokio::test]
async fn a_migrate_job_gets_pods_configmap_pdb_status_and_events() {
    let h = Harness::start("mjt-create").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.workers.min_replicas = 2;
    let job = h.create_job("articles", s.clone()).await;
    let uid = job.uid().expect("uid");

    let names = h.wait_for_pods("articles", 2).await;
    for name in &names {
        let pod = h.pods().get(name).await.expect("get pod");
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MigrateJob", uid.as_str())
        );
        assert_eq!(
            pod.labels()
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("migrate-worker")
        );
        let spec = pod.spec.expect("pod spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let env = spec.containers[0].env.clone().unwrap_or_default();
        let redis = env
            .iter()
            .find(|e| e.name == "MIGRATE_REDIS_URL")
            .expect("MIGRATE_REDIS_URL");
        assert_eq!(redis.value, None);
        assert_eq!(
            redis
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| r.name.as_str()),
            Some("migrate-redis")
        );
    }

    let cm = Api::<ConfigMap>::namespaced(h.admin.clone(), &h.ns)
        .get("articles-pipeline")
        .await
        .expect("pipeline ConfigMap");
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("pipeline.yaml"))
        .expect("pipeline.yaml");
    // The spec as stored: the API server defaults `replicas`.
    let stored = MigrateJobSpec {
        replicas: s.replicas.or(Some(migrate_crds::DEFAULT_REPLICAS)),
        ..s.clone()
    };
    assert_eq!(from_yaml("cm", yaml).expect("the pipeline parses"), stored);
    let pdb = Api::<PodDisruptionBudget>::namespaced(h.admin.clone(), &h.ns)
        .get("articles-workers")
        .await
        .expect("PDB");
    // Two workers wanted (see the status below): one may be evicted at a time.
    assert_eq!(
        pdb.spec.and_then(|s| s.min_available),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(pdb.metadata.owner_references.expect("owner")[0].uid, uid);

    let status = h
        .wait_for_status("articles", "a status with 2 replicas", |s| {
            s.replicas == 2 && s.desired_replicas == 2
        })
        .await;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/name=migrate-worker,migrate-operator.io/job=articles")
    );
    for t in ["Ready", "Progressing", "Degraded", "Complete"] {
        assert!(
            condition(&status, t).is_some(),
            "condition {t} missing: {status:?}"
        );
    }
    assert_eq!(
        condition(&status, "Ready").map(|c| c.reason.as_str()),
        Some("WorkersNotReady"),
        "no kubelet: never ready"
    );
    let fetched = h.jobs().get("articles").await.expect("job");
    assert!(fetched.finalizers().iter().any(|f| f == FINALIZER));

    let events = eventually(DEADLINE, "a ScaledUp event", || async {
        let events = h.events_of("articles").await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScaledUp"))
            .then_some(events)
    })
    .await;
    let scaled = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("ScaledUp"))
        .expect("ScaledUp");
    assert_eq!(
        scaled.reporting_controller.as_deref(),
        Some("migrate-operator")
    );
    h.finish().await;
}

/// `kubectl scale` (the scale subresource) sets the pod count both ways on a job with
/// `autoscaling: External` (1 worker until scaled, the default count); scale-down through
/// `spec.replicas` is immediate and counted.
#[tokio::test]
async fn scaling_through_the_scale_subresource_changes_the_pod_count() {
    let h = Harness::start("mjt-scale").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.autoscaling = migrate_crds::Autoscaling::External;
    h.create_job("scaled", s).await;
    h.wait_for_pods("scaled", 1).await;

    h.jobs()
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale to 3");
    h.wait_for_pods("scaled", 3).await;
    h.jobs()
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale to 1");
    h.wait_for_pods("scaled", 1).await;
    let status = h
        .wait_for_status("scaled", "two scale-downs counted", |s| {
            s.restarts.scaled_down == 2 && s.replicas == 1
        })
        .await;
    assert_eq!(status.desired_replicas, 1);
    let scale = h.jobs().get_scale("scaled").await.expect("scale");
    assert_eq!(scale.status.map(|s| s.replicas), Some(1));
    h.finish().await;
}

/// Editing the spec rolls every worker (reason `updated`) to pods built from the new spec;
/// scaling does not restart any.
#[tokio::test]
async fn a_spec_edit_rolls_the_workers_and_scaling_does_not() {
    let h = Harness::start("mjt-roll").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(2);
    h.create_job("rolled", s).await;
    let first = h.wait_for_pods("rolled", 2).await;

    h.jobs()
        .patch_scale(
            "rolled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale to 3");
    let scaled = h.wait_for_pods("rolled", 3).await;
    assert!(scaled.is_superset(&first), "scaling kept the running pods");

    h.jobs()
        .patch(
            "rolled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workers": {"concurrency": 3}}})),
        )
        .await
        .expect("edit the spec");
    let status = h
        .wait_for_status("rolled", "three workers replaced for the edit", |s| {
            s.restarts.updated == 3 && s.replicas == 3
        })
        .await;
    assert_eq!(status.restarts.scaled_down, 0);
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), &h.ns);
    let now = h.wait_for_pods("rolled", 3).await;
    assert!(now.is_disjoint(&scaled), "every pod was replaced: {now:?}");
    let mut hashes = BTreeSet::new();
    for name in &now {
        let pod = pods.get(name).await.expect("get pod");
        let hash = pod
            .annotations()
            .get("migrate-operator.io/template-hash")
            .cloned();
        hashes.insert(hash.expect("template hash annotation"));
    }
    assert_eq!(hashes.len(), 1, "one template: {hashes:?}");
    let events = h.events_of("rolled").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Updated")),
        "an Updated event"
    );
    h.finish().await;
}

/// A worker reads its Secrets once, at start: creating a Secret that was missing, or
/// changing one (a fixed password), rolls every worker (reason `updated`) without a spec edit.
#[tokio::test]
async fn a_changed_secret_rolls_the_workers() {
    let h = Harness::start("mjt-secret").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(2);
    let mysql = s.source.url_secret_ref.clone();
    h.create_job("secrets", s).await;
    let first = h.wait_for_pods("secrets", 2).await;

    // The MySQL Secret the workers started with (the harness made it) gets another value.
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), &h.ns);
    secrets
        .patch(
            &mysql.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {(mysql.key.clone()): "mysql://app:wrong@127.0.0.1:3306/shop"}})),
        )
        .await
        .expect("change the MySQL Secret");
    h.wait_for_status("secrets", "two workers replaced for the new Secret", |s| {
        s.restarts.updated == 2 && s.replicas == 2
    })
    .await;
    let second = h.wait_for_pods("secrets", 2).await;
    assert!(
        second.is_disjoint(&first),
        "every pod was replaced: {second:?}"
    );

    secrets
        .patch(
            &mysql.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {(mysql.key.clone()): "mysql://app:fixed@127.0.0.1:3306/shop"}})),
        )
        .await
        .expect("fix the password");
    let status = h
        .wait_for_status("secrets", "two more replaced for the changed Secret", |s| {
            s.restarts.updated == 4 && s.replicas == 2
        })
        .await;
    assert_eq!(
        status.restarts.total, 4,
        "nothing else restarted: {:?}",
        status.restarts
    );
    let third = h.wait_for_pods("secrets", 2).await;
    assert!(
        third.is_disjoint(&second),
        "every pod was replaced again: {third:?}"
    );
    h.finish().await;
}

/// A pod that ends OOM-killed is counted (status and Degraded with a suggestion), its
/// processing list goes back on the queue, and it is replaced by a new pod.
#[tokio::test]
async fn an_oom_killed_pod_is_counted_requeued_and_replaced() {
    let mut h = Harness::start("mjt-oom").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(1);
    h.create_job("oom", s).await;
    let first = h
        .wait_for_pods("oom", 1)
        .await
        .into_iter()
        .next()
        .expect("one pod");

    let processing = format!("{queue}:processing:{first}");
    let _: () = h
        .redis
        .sadd(format!("{queue}:workers"), &first)
        .await
        .expect("SADD");
    let _: () = h
        .redis
        .rpush(&processing, &["11", "12"])
        .await
        .expect("RPUSH");
    h.pods()
        .patch_status(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Failed",
                "containerStatuses": [{
                    "name": "worker", "image": "ghcr.io/migrate-operator/worker:0.1.0", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z"}}
                }]
            }})),
        )
        .await
        .expect("mark the pod OOM-killed");

    let status = h
        .wait_for_status("oom", "the OOM kill counted", |s| {
            s.restarts.oom_killed == 1
        })
        .await;
    let degraded = condition(&status, "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "OomKilled")
    );
    assert!(
        degraded.message.contains("workers.resources.limits.memory"),
        "{}",
        degraded.message
    );
    assert_eq!(status.requeued, 2);
    assert_eq!(
        status.last_restart.as_ref().map(|l| l.reason.as_str()),
        Some("oom-killed")
    );

    let replaced = eventually(DEADLINE, "a replacement pod", || async {
        let names = h.pod_names("oom").await;
        (names.len() == 1 && !names.contains(&first)).then_some(names)
    })
    .await;
    assert!(!replaced.contains(&first));
    let queued: Vec<String> = h.redis.lrange(&queue, 0, -1).await.expect("LRANGE");
    assert_eq!(
        queued.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"11".to_owned(), &"12".to_owned()])
    );
    let left: u64 = h.redis.exists(&processing).await.expect("EXISTS");
    assert_eq!(left, 0, "the processing list is gone");
    let events = h.events_of("oom").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("OomKilled")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Requeued")),
        "{events:?}"
    );

    // Still counted once after an operator restart (a new leader reads the pods again).
    h.stop.take().map(|s| s.send(()));
    if let Some(c) = h.controller.take() {
        let _ = c.await;
    }
    h.start_controller();
    h.jobs()
        .patch_scale(
            "oom",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale to 2");
    let again = h
        .wait_for_status("oom", "the restarted operator reconciling", |s| {
            s.replicas == 2 && s.observed_generation == Some(2)
        })
        .await;
    assert_eq!(again.restarts.oom_killed, 1, "counted exactly once");
    assert_eq!(again.requeued, 2, "counters survive an operator restart");
    let _: () = h
        .redis
        .del(&[queue.clone(), format!("{queue}:workers")])
        .await
        .expect("DEL");
    h.finish().await;
}

/// Deleting a job deletes its pods and children, requeues what they held, and removes the
/// finalizer so the job goes.
#[tokio::test]
async fn deleting_the_job_requeues_in_flight_ids_and_cleans_up() {
    let mut h = Harness::start("mjt-delete").await;
    let queue = unique_name("mjq");
    let mut s = spec(&queue);
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(2);
    h.create_job("doomed", s).await;
    let pods: Vec<String> = h.wait_for_pods("doomed", 2).await.into_iter().collect();
    let _: () = h
        .redis
        .sadd(format!("{queue}:workers"), &pods)
        .await
        .expect("SADD");
    let _: () = h
        .redis
        .rpush(format!("{queue}:processing:{}", pods[0]), &["1", "2"])
        .await
        .expect("RPUSH");
    let _: () = h
        .redis
        .rpush(format!("{queue}:processing:{}", pods[1]), &["3"])
        .await
        .expect("RPUSH");
    h.wait_for_status("doomed", "in-flight ids seen", |s| s.in_flight == 3)
        .await;

    h.jobs()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete job");
    eventually(DEADLINE, "the job gone", || async {
        h.jobs()
            .get_opt("doomed")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(h.pod_names("doomed").await.is_empty(), "pods deleted");
    assert!(
        Api::<ConfigMap>::namespaced(h.admin.clone(), &h.ns)
            .get_opt("doomed-pipeline")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(h.admin.clone(), &h.ns)
            .get_opt("doomed-workers")
            .await
            .expect("get")
            .is_none()
    );
    let queued: Vec<String> = h.redis.lrange(&queue, 0, -1).await.expect("LRANGE");
    assert_eq!(
        queued.into_iter().collect::<BTreeSet<_>>(),
        ["1", "2", "3"].map(String::from).into_iter().collect()
    );
    let workers: Vec<String> = h
        .redis
        .smembers(format!("{queue}:workers"))
        .await
        .expect("SMEMBERS");
    assert!(workers.is_empty(), "{workers:?}");
    let _: () = h.redis.del(&queue).await.expect("DEL");
    h.finish().await;
}

/// A spec the schema accepts but cannot run is Degraded with an Event, and starts no pod.
#[tokio::test]
async fn an_invalid_spec_is_degraded_with_an_event_and_no_pods() {
    let h = Harness::start("mjt-invalid").await;
    let mut s = spec(&unique_name("mjq"));
    // Two placeholders: admission sees a `?` and lets it through; only the operator counts them.
    s.source.queries[1].sql = "SELECT name FROM tags WHERE a = ? OR b = ?".to_owned();
    h.create_job("broken", s).await;
    let status = h
        .wait_for_status("broken", "Degraded InvalidSpec", |s| {
            condition(s, "Degraded").is_some_and(|c| c.reason == "InvalidSpec")
        })
        .await;
    assert!(
        condition(&status, "Degraded")
            .expect("Degraded")
            .message
            .contains("source.queries[1].sql")
    );
    eventually(DEADLINE, "an InvalidSpec event", || async {
        h.events_of("broken")
            .await
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    assert!(h.pod_names("broken").await.is_empty());
    h.finish().await;
}

/// Two candidates on one Lease: exactly one leads; when it shuts down (releasing the lease)
/// the other takes over within a few retry periods.
#[tokio::test]
async fn only_one_of_two_candidates_leads_and_the_other_takes_over() {
    let h = Harness::start("mjt-lease").await;
    let candidate = |id: &str| {
        let mut config = LeaseConfig::new("election", h.ns.clone(), id);
        config.lease_duration = Duration::from_secs(4);
        config.renew_deadline = Duration::from_secs(3);
        config.retry_period = Duration::from_millis(300);
        let (tx, rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(LeaderElector::new(h.operator.clone(), config).run(
            tx,
            async move {
                let _ = stopped.await;
            },
        ));
        (rx, stop, task)
    };
    let (a, stop_a, task_a) = candidate("a");
    let (b, stop_b, task_b) = candidate("b");
    let leader = eventually(DEADLINE, "a leader", || async {
        match (*a.borrow(), *b.borrow()) {
            (true, false) => Some('a'),
            (false, true) => Some('b'),
            (true, true) => panic!("two leaders at once"),
            _ => None,
        }
    })
    .await;
    for _ in 0..10 {
        assert!(!(*a.borrow() && *b.borrow()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop_leader, leader_task, follower, stop_follower, follower_task) = if leader == 'a' {
        (stop_a, task_a, b, stop_b, task_b)
    } else {
        (stop_b, task_b, a, stop_a, task_a)
    };
    let _ = stop_leader.send(());
    leader_task.await.expect("leader stopped");
    eventually(DEADLINE, "the other candidate leads", || async {
        (*follower.borrow()).then_some(())
    })
    .await;
    let _ = stop_follower.send(());
    follower_task.await.expect("follower stopped");
    h.finish().await;
}

/// A ready worker's `/metrics` is scraped at its pod IP and port; a reading above the hard
/// memory limit kills the pod at once (counted as memory-hard with the usage seen) and a
/// replacement starts.
#[tokio::test]
async fn a_worker_above_its_hard_memory_limit_is_killed_and_replaced() {
    let h = Harness::start("mjt-memory").await;
    // A stand-in for the worker's /metrics: 1000 MiB used of a 1 GiB limit (hard is 92%).
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "migrate_process_resident_memory_bytes 1048576000\nmigrate_cgroup_memory_limit_bytes 1073741824\nmigrate_tasks_done 7\n"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut s = spec(&unique_name("mjq"));
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(1);
    s.workers.metrics_port = port;
    h.create_job("hungry", s).await;
    let first = h
        .wait_for_pods("hungry", 1)
        .await
        .into_iter()
        .next()
        .expect("one pod");
    // No kubelet: report the pod running and ready at the stand-in's address.
    h.mark_ready(&first).await;

    h.wait_for_memory_hard_kill("hungry", &first, 1_048_576_000)
        .await;
    eventually(DEADLINE, "a replacement pod", || async {
        let names = h.pod_names("hungry").await;
        (names.len() == 1 && !names.contains(&first)).then_some(())
    })
    .await;
    server.abort();
    h.finish().await;
}

/// With `memory.source: PodMetrics` the memory comes from the `metrics.k8s.io` API, not from
/// the worker (whose `/metrics` is unreachable here, as where the operator cannot reach pod
/// IPs): an old PodMetrics entry is stale (reported as `MetricsUnavailable` naming
/// metrics-server, never acted on); a fresh one above the hard limit kills the pod at once.
/// The API is served by a stand-in CRD of the same group and plural (no kubelet, so no
/// metrics-server here).
#[tokio::test]
async fn pod_metrics_drive_memory_supervision_when_chosen() {
    let h = Harness::start("mjt-podmetrics").await;
    k8s::install_pod_metrics_api(&h.admin).await;
    let mut s = spec(&unique_name("mjq"));
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(1);
    s.memory.source = migrate_crds::MemorySource::PodMetrics;
    s.memory.stale_after_seconds = 30;
    // Nothing listens there: the worker's own reading is never available.
    s.workers.metrics_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    h.create_job("topped", s).await;
    let first = h
        .wait_for_pods("topped", 1)
        .await
        .into_iter()
        .next()
        .expect("one pod");
    h.mark_ready(&first).await;

    let metrics: Api<DynamicObject> = Api::namespaced_with(
        h.admin.clone(),
        &h.ns,
        &ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        },
    );
    // As metrics-server reports it: the pod's labels, the end of the window, the working set.
    let pod_metrics = |at: Timestamp, memory: &str| {
        json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {"name": first, "labels": {"migrate-operator.io/job": "topped"}},
            "timestamp": at.to_string(),
            "window": "15s",
            "containers": [{"name": "worker", "usage": {"cpu": "10m", "memory": memory}}]
        })
    };
    let five_minutes_ago = Timestamp::now() - SignedDuration::from_secs(300);
    metrics
        .patch(
            &first,
            &PatchParams::apply("test-metrics-server").force(),
            &Patch::Apply(pod_metrics(five_minutes_ago, "1024000Ki")),
        )
        .await
        .expect("an old PodMetrics entry");
    let status = h
        .wait_for_status("topped", "a stale PodMetrics reading reported", |s| {
            condition(s, "Degraded").is_some_and(|c| {
                c.reason == "MetricsUnavailable" && c.message.contains("metrics-server")
            })
        })
        .await;
    assert_eq!(
        status.restarts.total, 0,
        "a stale reading is never acted on: {:?}",
        status.restarts
    );

    metrics
        .patch(
            &first,
            &PatchParams::apply("test-metrics-server").force(),
            &Patch::Apply(pod_metrics(Timestamp::now(), "1024000Ki")),
        )
        .await
        .expect("a fresh PodMetrics entry");
    h.wait_for_memory_hard_kill("topped", &first, 1_024_000 * 1024)
        .await;
    h.finish().await;
}
