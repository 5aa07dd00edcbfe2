//! Nothing silent: against the testbed's real kube-apiserver (`tests/testbed/up.sh k8s redis`),
//! with the controller running under the shipped role, each way a round can be refused by the
//! API server ends in a Degraded condition carrying the API server's words, a phase, and a
//! Warning Event, and no pod starts:
//! - a worker pod the API server refuses to create (403 from an admission plugin, 422 from the
//!   pod's validation, 403 from a quota);
//! - a write of the job's other objects refused (the pipeline ConfigMap over a quota).
//!
//! Quotas are set with their status written by the test, as a kube-controller-manager would
//! (the testbed's API server has none), so quota admission answers at once.

// Test helpers outside #[test] functions fail the test loudly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use migrate_crds::pipeline::example_spec;
use migrate_crds::{MigrateJob, MigrateJobSpec, MigrateJobStatus, Mode, Phase};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::k8s::{self, DEADLINE, eventually};
use migrate_operator::controller;
use migrate_operator::controller::observe::RedisQueues;
use migrate_operator::leader::LeaseConfig;
use serde_json::json;
use tokio::sync::oneshot;

/// One test's world: a namespace, the operator's ServiceAccount bound to the shipped role, a
/// Redis Secret, and the controller running with the account's token.
struct Harness {
    admin: Client,
    ns: String,
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
        let token = k8s::operator_token(&admin, &ns).await;
        let operator = k8s::client(k8s::with_token(&config, &token));
        k8s::create_redis_secret(&admin, &ns, &env.redis_url).await;
        k8s::create_example_references(&admin, &ns).await;

        let (stop, stopped) = oneshot::channel::<()>();
        let mut lease = LeaseConfig::new("migrate-operator", ns.clone(), "test-operator");
        lease.retry_period = Duration::from_millis(500);
        let config = controller::Config {
            namespace: Some(ns.clone()),
            lease: Some(lease),
            listen: None,
            instance: "test-operator".to_owned(),
        };
        let handle = tokio::spawn(async move {
            controller::run_with(
                operator,
                config,
                Arc::new(RedisQueues::default()),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("controller runs");
        });
        Self {
            admin,
            ns,
            stop: Some(stop),
            controller: Some(handle),
        }
    }

    fn jobs(&self) -> Api<MigrateJob> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn pod_count(&self, job: &str) -> usize {
        let params = ListParams::default().labels(&format!("migrate-operator.io/job={job}"));
        Api::<Pod>::namespaced(self.admin.clone(), &self.ns)
            .list(&params)
            .await
            .expect("list pods")
            .items
            .len()
    }

    /// Waits until `job`'s Degraded condition has `reason`; returns the status.
    async fn wait_for_degraded(&self, job: &str, reason: &str) -> MigrateJobStatus {
        eventually(
            DEADLINE,
            &format!("{job} Degraded/{reason}"),
            || async move {
                let found = self.jobs().get_opt(job).await.expect("get job")?;
                found
                    .status
                    .filter(|s| degraded(s).is_some_and(|c| c.reason == reason))
            },
        )
        .await
    }

    /// Waits for a Warning Event of `reason` on `job` whose note contains `words`.
    async fn wait_for_warning(&self, job: &str, reason: &str, words: &str) {
        eventually(DEADLINE, &format!("a {reason} Event on {job}"), || async {
            k8s::events_about(&self.admin, &self.ns, job)
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.contains(words))
                })
                .then_some(())
        })
        .await;
    }

    /// A ResourceQuota of `hard` with its status as a kube-controller-manager would write it
    /// (nothing used yet), so that quota admission applies it at once.
    async fn set_quota(&self, name: &str, hard: serde_json::Value) {
        let quotas: Api<ResourceQuota> = Api::namespaced(self.admin.clone(), &self.ns);
        let quota: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"hard": hard}
        }))
        .unwrap();
        quotas
            .create(&PostParams::default(), &quota)
            .await
            .expect("create quota");
        let used: serde_json::Map<String, serde_json::Value> = hard
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), json!("0")))
            .collect();
        quotas
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"hard": hard, "used": used}})),
            )
            .await
            .expect("quota status");
    }

    async fn remove_quota(&self, name: &str) {
        Api::<ResourceQuota>::namespaced(self.admin.clone(), &self.ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete quota");
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
        let _ = Api::<ResourceQuota>::namespaced(self.admin.clone(), &self.ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        k8s::remove_operator_binding(&self.admin, &self.ns).await;
        k8s::remove_namespace(&self.admin, &self.ns).await;
    }
}

fn spec() -> MigrateJobSpec {
    let mut spec = example_spec();
    spec.mode = Mode::Continuous;
    spec.queue.key = unique_name("mjq");
    spec
}

fn degraded(status: &MigrateJobStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == "Degraded")
}

/// A worker pod the API server refuses, by an admission plugin (a PriorityClass that does not
/// exist: 403) or by the pod's own validation (a nodeSelector key that is no label key: 422),
/// is reported within one round by the Degraded condition `PodCreateRefused` carrying the API
/// server's words, the phase Degraded and a Warning Event; no pod exists. Fixing the spec
/// starts the worker at once, without waiting for the backoff, and clears the condition.
#[tokio::test]
async fn a_refused_pod_create_is_reported_in_the_api_servers_words() {
    let h = Harness::start("mjt-refused").await;
    let mut no_class = spec();
    no_class.workers.priority_class_name = Some("no-such-class".to_owned());
    let mut bad_selector = spec();
    bad_selector.workers.node_selector = Some(
        [("bad key!".to_owned(), "x".to_owned())]
            .into_iter()
            .collect(),
    );

    let started = Instant::now();
    h.jobs()
        .create(
            &PostParams::default(),
            &MigrateJob::new("no-class", no_class.clone()),
        )
        .await
        .expect("create job");
    h.jobs()
        .create(
            &PostParams::default(),
            &MigrateJob::new("bad-selector", bad_selector),
        )
        .await
        .expect("create job");

    let status = h.wait_for_degraded("no-class", "PodCreateRefused").await;
    println!(
        "no-class: Degraded/PodCreateRefused {:?} after the create",
        started.elapsed()
    );
    let message = &degraded(&status).unwrap().message;
    assert!(
        message.contains("no PriorityClass with name no-such-class was found")
            && message.contains("403 Forbidden"),
        "{message}"
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
    h.wait_for_warning("no-class", "PodCreateRefused", "no-such-class")
        .await;

    let status = h
        .wait_for_degraded("bad-selector", "PodCreateRefused")
        .await;
    let message = &degraded(&status).unwrap().message;
    assert!(
        message.contains("spec.nodeSelector") && message.contains("bad key!"),
        "{message}"
    );
    assert!(message.contains("422 Invalid"), "{message}");
    assert_eq!(status.phase, Some(Phase::Degraded));
    h.wait_for_warning("bad-selector", "PodCreateRefused", "bad key!")
        .await;
    assert_eq!(h.pod_count("no-class").await, 0);
    assert_eq!(h.pod_count("bad-selector").await, 0);

    // The fix: the next round creates the pod though the backoff has not ended.
    h.jobs()
        .patch(
            "no-class",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workers": {"priorityClassName": null}}})),
        )
        .await
        .expect("fix the job");
    let fixed = Instant::now();
    eventually(DEADLINE, "the pod of the fixed job", || async {
        (h.pod_count("no-class").await == 1).then_some(())
    })
    .await;
    println!("no-class: pod created {:?} after the fix", fixed.elapsed());
    let status = eventually(DEADLINE, "the refusal cleared", || async {
        let job = h.jobs().get("no-class").await.expect("get job");
        job.status
            .filter(|s| degraded(s).is_some_and(|c| c.reason != "PodCreateRefused"))
    })
    .await;
    assert_ne!(status.phase, Some(Phase::Degraded), "{status:?}");
    h.finish().await;
}

/// A quota that allows no pod refuses every worker pod (403, exceeded quota): the job is
/// Degraded/PodCreateRefused naming the quota, with an Event and no pod; once the quota is
/// lifted the worker starts after the backoff, with no edit of the job.
#[tokio::test]
async fn a_quota_refusing_the_pods_is_reported_and_lifting_it_starts_them() {
    let h = Harness::start("mjt-podquota").await;
    h.set_quota("no-pods", json!({"pods": "0"})).await;
    let started = Instant::now();
    k8s::create_job(&h.admin, &h.ns, "quota", spec()).await;
    let status = h.wait_for_degraded("quota", "PodCreateRefused").await;
    println!(
        "quota: Degraded/PodCreateRefused {:?} after the create",
        started.elapsed()
    );
    let message = &degraded(&status).unwrap().message;
    assert!(
        message.contains("exceeded quota: no-pods") && message.contains("403 Forbidden"),
        "{message}"
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
    h.wait_for_warning("quota", "PodCreateRefused", "exceeded quota")
        .await;
    assert_eq!(h.pod_count("quota").await, 0);

    h.remove_quota("no-pods").await;
    let lifted = Instant::now();
    eventually(
        Duration::from_secs(150),
        "the pod once the quota is lifted",
        || async { (h.pod_count("quota").await == 1).then_some(()) },
    )
    .await;
    println!(
        "quota: pod created {:?} after the quota went",
        lifted.elapsed()
    );
    h.finish().await;
}

/// A round that fails before any pod (the pipeline ConfigMap refused by a quota) is reported
/// by the Degraded condition `ApplyFailed` carrying the API server's words, the phase Degraded
/// (never blank) and a Warning Event; no pod starts.
#[tokio::test]
async fn a_refused_write_of_the_jobs_objects_is_reported_in_the_api_servers_words() {
    let h = Harness::start("mjt-cmquota").await;
    h.set_quota("no-configmaps", json!({"configmaps": "0"}))
        .await;
    let started = Instant::now();
    k8s::create_job(&h.admin, &h.ns, "blocked", spec()).await;
    let status = h.wait_for_degraded("blocked", "ApplyFailed").await;
    println!(
        "blocked: Degraded/ApplyFailed {:?} after the create",
        started.elapsed()
    );
    let message = &degraded(&status).unwrap().message;
    assert!(
        message.contains("blocked-pipeline") && message.contains("exceeded quota: no-configmaps"),
        "{message}"
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
    h.wait_for_warning("blocked", "ApplyFailed", "exceeded quota")
        .await;
    assert_eq!(h.pod_count("blocked").await, 0);
    h.finish().await;
}

/// Waits for `what` to hold, at most `limit`: how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let started = Instant::now();
    eventually(limit, what, probe).await;
    started.elapsed()
}

/// A job created before the objects it names waits for them: each missing Secret, key,
/// ConfigMap and keyword file is a Degraded condition naming the object, the key and the field
/// (with an Event), and no pod is created. Each object that appears starts the job's next
/// round at once (a watch, not the requeue: the job's check interval is a minute), and the
/// worker starts as soon as the last one is there.
#[tokio::test]
async fn a_job_waits_for_the_objects_it_names_and_starts_when_they_appear() {
    let h = Harness::start("mjt-refs").await;
    let mut s = spec();
    s.source.url_secret_ref.name = "late-mysql".to_owned();
    s.keywords.config_map = Some("late-words".to_owned());
    // Rounds a minute apart: only a watch can start one sooner.
    s.memory.check_interval_ms = 60_000;
    s.memory.stale_after_seconds = 120;
    k8s::create_job(&h.admin, &h.ns, "waits", s).await;

    let status = h.wait_for_degraded("waits", "SecretMissing").await;
    let message = &degraded(&status).unwrap().message;
    assert!(
        message.contains(&format!(
            "the Secret {}/late-mysql named by source.urlSecretRef.name does not exist",
            h.ns
        )) && message.contains("\"url\""),
        "{message}"
    );
    assert!(message.contains("ConfigMapMissing"), "{message}");
    assert_eq!(status.phase, Some(Phase::Degraded));
    h.wait_for_warning("waits", "SecretMissing", "late-mysql")
        .await;
    h.wait_for_warning("waits", "ConfigMapMissing", "late-words")
        .await;
    assert_eq!(h.pod_count("waits").await, 0);

    // The Secret appears, without the key the spec names.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.admin.clone(), &h.ns);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-mysql"},
        "stringData": {"uri": "mysql://user:pass@mysql:3306/db"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
    let took = within(Duration::from_secs(20), "SecretKeyMissing", || async {
        let status = h.jobs().get("waits").await.ok()?.status?;
        let c = degraded(&status)?;
        (c.reason == "SecretKeyMissing"
            && c.message
                .contains("no key \"url\", named by source.urlSecretRef.key"))
        .then_some(())
    })
    .await;
    println!("waits: SecretKeyMissing {took:?} after the Secret appeared");
    assert_eq!(h.pod_count("waits").await, 0);

    secrets
        .patch(
            "late-mysql",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"url": "mysql://user:pass@mysql:3306/db"}})),
        )
        .await
        .expect("add the key");
    let took = within(
        Duration::from_secs(20),
        "ConfigMapMissing first",
        || async {
            let status = h.jobs().get("waits").await.ok()?.status?;
            (degraded(&status)?.reason == "ConfigMapMissing").then_some(())
        },
    )
    .await;
    println!("waits: the Secret's key seen {took:?} after it was added");
    assert_eq!(h.pod_count("waits").await, 0);

    // The ConfigMap appears with one of the two keyword files.
    let config_maps: Api<ConfigMap> = Api::namespaced(h.admin.clone(), &h.ns);
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "late-words"},
        "data": {"topics.txt": "rust\n"}
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .expect("create ConfigMap");
    let took = within(Duration::from_secs(20), "KeywordFileMissing", || async {
        let status = h.jobs().get("waits").await.ok()?.status?;
        let c = degraded(&status)?;
        (c.reason == "KeywordFileMissing"
            && c.message
                .contains("no key \"blacklist.txt\", named by keywords.sets[1].file"))
        .then_some(())
    })
    .await;
    println!("waits: KeywordFileMissing {took:?} after the ConfigMap appeared");
    h.wait_for_warning("waits", "KeywordFileMissing", "blacklist.txt")
        .await;
    assert_eq!(h.pod_count("waits").await, 0);

    config_maps
        .patch(
            "late-words",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"blacklist.txt": "spam\n"}})),
        )
        .await
        .expect("add the file");
    let took = within(DEADLINE, "the worker pod", || async {
        (h.pod_count("waits").await == 1).then_some(())
    })
    .await;
    println!("waits: pod created {took:?} after the last file was added");
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: started by the minute's requeue, not by the watch"
    );
    h.finish().await;
}

/// A file of `tests/e2e/corpus/reported/`: a MigrateJob admission accepts but that cannot run,
/// the Degraded reason it must get (`# reported: <Reason>`) and the texts its message and its
/// Event must contain (`# names: <text>`).
struct Reported {
    file: String,
    job: MigrateJob,
    reason: String,
    names: Vec<String>,
}

fn reported_corpus() -> Vec<Reported> {
    let dir = migrate_e2e::env::repo_root().join("tests/e2e/corpus/reported");
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let header = |key: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(&format!("# {key}: ")))
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            let mut job: MigrateJob = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not a MigrateJob: {e}"));
            // A queue of its own, so that no other run's backlog shows.
            job.spec.queue.key = unique_name("mjq");
            Reported {
                reason: header("reported")
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| panic!("{file} has no `# reported: <Reason>` line")),
                names: header("names"),
                file,
                job,
            }
        })
        .collect()
}

/// Each MigrateJob of `corpus/reported/`, which admission accepts but which cannot run, is
/// reported with the operator running: a Degraded condition of the reason its header
/// announces, whose message and Warning Event name what its header says (the field, the
/// value, the API server's words), and no pod.
#[tokio::test]
async fn every_job_of_the_reported_corpus_gets_its_condition_and_event_and_no_pod() {
    let cases = reported_corpus();
    assert!(cases.len() >= 8, "only {} reported cases", cases.len());
    let h = Harness::start("mjt-corpus").await;
    for case in &cases {
        assert!(
            !case.names.is_empty(),
            "{} has no `# names:` line",
            case.file
        );
        h.jobs()
            .create(&PostParams::default(), &case.job)
            .await
            .unwrap_or_else(|e| panic!("{}: refused at admission: {e}", case.file));
    }
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.job.metadata.name.clone().unwrap();
        let reason = case.reason.as_str();
        let status = h.wait_for_degraded(&name, reason).await;
        let message = &degraded(&status).unwrap().message;
        for text in &case.names {
            if !message.contains(text.as_str()) {
                failures.push(format!(
                    "{}: the message lacks {text:?}: {message}",
                    case.file
                ));
            }
        }
        if status.phase != Some(Phase::Degraded) {
            failures.push(format!("{}: phase {:?}", case.file, status.phase));
        }
        h.wait_for_warning(&name, reason, &case.names[0]).await;
        if h.pod_count(&name).await != 0 {
            failures.push(format!("{}: a pod was created", case.file));
        }
    }
    h.finish().await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
