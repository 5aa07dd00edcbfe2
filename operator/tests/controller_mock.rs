//! The controller's exact API calls, against a mock API server (`tower_test::mock::pair`):
//! each test is a scenario that answers the expected requests in order and fails on any other.
//! Redis is replaced by an in-memory fake of the queue.

// Test helpers outside #[test] functions fail the test loudly on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use migrate_crds::pipeline::example_spec;
use migrate_crds::{MigrateJob, MigrateJobSpec, Mode};
use migrate_operator::controller::observe::{ObserveError, QueueBackend, QueueView};
use migrate_operator::controller::{Context, FINALIZER, reconcile};
use migrate_operator::metrics::Metrics;
use migrate_operator::policy::Backlog;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "etl";
const JOBS: &str = "/apis/migrate-operator.io/v1alpha1/namespaces/etl/migratejobs";

/// An in-memory queue: fixed backlog and processing lists; requeues are recorded.
#[derive(Default)]
struct FakeQueue {
    queued: u64,
    in_flight: BTreeMap<String, u64>,
    requeued: Mutex<Vec<String>>,
}

impl QueueBackend for FakeQueue {
    fn view<'a>(
        &'a self,
        url: &'a str,
        queue: &'a str,
        workers: &'a [String],
    ) -> BoxFuture<'a, Result<QueueView, ObserveError>> {
        assert_eq!(url, "redis://redis:6379", "the URL comes from the Secret");
        assert_eq!(queue, "articles");
        let view = QueueView {
            backlog: Backlog {
                queued: self.queued,
                in_flight: self.in_flight.values().sum(),
            },
            in_flight: workers
                .iter()
                .map(|w| (w.clone(), self.in_flight.get(w).copied().unwrap_or(0)))
                .collect(),
            holders: self.in_flight.keys().cloned().collect(),
            stats: BTreeMap::from([("indexed".to_owned(), 10)]),
        };
        async move { Ok(view) }.boxed()
    }

    fn requeue<'a>(
        &'a self,
        _url: &'a str,
        _queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<u64, ObserveError>> {
        self.requeued.lock().unwrap().push(worker.to_owned());
        let ids = self.in_flight.get(worker).copied().unwrap_or(0);
        async move { Ok(ids) }.boxed()
    }
}

fn job(spec: MigrateJobSpec, finalizer: bool) -> MigrateJob {
    let mut job = MigrateJob::new("test", spec);
    job.metadata.namespace = Some(NS.to_owned());
    job.metadata.uid = Some("uid-1".to_owned());
    job.metadata.generation = Some(2);
    job.metadata.resource_version = Some("100".to_owned());
    if finalizer {
        job.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    }
    job
}

fn continuous() -> MigrateJobSpec {
    let mut spec = example_spec();
    spec.mode = Mode::Continuous;
    spec
}

fn pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {"app.kubernetes.io/name": "migrate-worker", "migrate-operator.io/job": "test"},
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true", "controller.kubernetes.io/pod-deletion-cost": "0"},
            "ownerReferences": [{"apiVersion": "migrate-operator.io/v1alpha1", "kind": "MigrateJob", "name": "test", "uid": "uid-1", "controller": true}]
        },
        "spec": {"containers": [{"name": "worker", "image": "x"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "migrate-redis", "namespace": NS},
           "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}})
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// One request the scenario expects.
struct Call {
    method: Method,
    path: String,
    query: Option<&'static str>,
}

fn call(method: Method, path: impl Into<String>) -> Call {
    Call {
        method,
        path: path.into(),
        query: None,
    }
}

impl Call {
    fn with_query(mut self, needle: &'static str) -> Self {
        self.query = Some(needle);
        self
    }
}

/// Answers the next request after checking it, returning its body.
async fn answer(
    handle: &mut Handle,
    expected: Call,
    reply: impl FnOnce(&Value) -> (StatusCode, Value),
) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no request arrived; expected {} {}",
                expected.method, expected.path
            )
        })
        .expect("the client is gone");
    let (method, uri) = (request.method().clone(), request.uri().clone());
    assert_eq!(
        (method.as_str(), uri.path()),
        (expected.method.as_str(), expected.path.as_str()),
        "unexpected request {method} {uri}"
    );
    if let Some(needle) = expected.query {
        let query = uri.query().unwrap_or_default();
        assert!(
            query.contains(needle),
            "{method} {uri}: query lacks {needle:?}"
        );
    }
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let (status, value) = reply(&body);
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap(),
    );
    body
}

fn echo(body: &Value) -> (StatusCode, Value) {
    (StatusCode::OK, body.clone())
}

fn ok(value: Value) -> impl FnOnce(&Value) -> (StatusCode, Value) {
    move |_| (StatusCode::OK, value)
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

async fn expect_children(handle: &mut Handle) {
    let cm = answer(
        handle,
        call(
            Method::PATCH,
            "/api/v1/namespaces/etl/configmaps/test-pipeline",
        )
        .with_query("fieldManager=migrate-operator"),
        echo,
    )
    .await;
    assert!(
        cm["data"]["pipeline.yaml"]
            .as_str()
            .unwrap()
            .contains("articles")
    );
}

/// The PodDisruptionBudget, applied once the round knows how many workers it wants:
/// `minAvailable` one below that.
async fn expect_budget(handle: &mut Handle, min_available: i32) {
    let pdb = answer(
        handle,
        call(
            Method::PATCH,
            "/apis/policy/v1/namespaces/etl/poddisruptionbudgets/test-workers",
        )
        .with_query("force=true"),
        echo,
    )
    .await;
    assert_eq!(pdb["spec"]["minAvailable"], json!(min_available));
    assert_eq!(pdb["spec"].get("maxUnavailable"), None);
}

async fn expect_pods_and_secret(handle: &mut Handle, pods: Vec<Value>) {
    answer(
        handle,
        call(Method::GET, "/api/v1/namespaces/etl/pods")
            .with_query("migrate-operator.io%2Fjob%3Dtest"),
        ok(list(pods)),
    )
    .await;
    answer(
        handle,
        call(Method::GET, "/api/v1/namespaces/etl/secrets/migrate-redis"),
        ok(secret()),
    )
    .await;
    expect_references(handle).await;
    // The Redis Secret's version came with its URL.
    expect_secret_versions(handle, &["migrate-mysql", "migrate-search"]).await;
}

/// Every Secret (but the Redis one) and the keyword ConfigMap the example names, read in full
/// before the watches' caches serve (as here), answered with the keys the spec names.
async fn expect_references(handle: &mut Handle) {
    let spec = continuous();
    let mut secrets: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for r in [
        Some(&spec.source.url_secret_ref),
        Some(&spec.sink.url_secret_ref),
        spec.sink.username_secret_ref.as_ref(),
        spec.sink.password_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        secrets
            .entry(r.name.clone())
            .or_default()
            .push(r.key.clone());
    }
    for (name, keys) in secrets {
        let data: serde_json::Map<String, Value> =
            keys.into_iter().map(|k| (k, json!("eA=="))).collect();
        answer(
            handle,
            call(
                Method::GET,
                format!("/api/v1/namespaces/etl/secrets/{name}"),
            ),
            ok(json!({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": name, "namespace": NS, "resourceVersion": "7"},
                      "data": data})),
        )
        .await;
    }
    if let Some(name) = &spec.keywords.config_map {
        let data: serde_json::Map<String, Value> = spec
            .keywords
            .sets
            .iter()
            .map(|set| (set.file.clone(), json!("")))
            .collect();
        answer(
            handle,
            call(
                Method::GET,
                format!("/api/v1/namespaces/etl/configmaps/{name}"),
            ),
            ok(json!({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": name, "namespace": NS, "resourceVersion": "8"},
                      "data": data})),
        )
        .await;
    }
}

/// The metadata of the Secrets the workers read that this round did not read already, by
/// name, for the template hash (the bodies are empty: no value is asked for).
async fn expect_secret_versions(handle: &mut Handle, names: &[&str]) {
    for &name in names {
        let body = answer(
            handle,
            call(
                Method::GET,
                format!("/api/v1/namespaces/etl/secrets/{name}"),
            ),
            ok(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": NS, "resourceVersion": "7"}
            })),
        )
        .await;
        assert_eq!(body, Value::Null, "a GET carries no body");
    }
}

async fn expect_event(handle: &mut Handle, reason: &str) -> Value {
    let body = answer(
        handle,
        call(Method::POST, "/apis/events.k8s.io/v1/namespaces/etl/events"),
        echo,
    )
    .await;
    assert_eq!(body["reason"], json!(reason), "event {body}");
    assert_eq!(body["regarding"]["name"], json!("test"));
    body
}

async fn expect_status(handle: &mut Handle, job: &MigrateJob) -> Value {
    let mut echoed = serde_json::to_value(job).unwrap();
    let body = answer(
        handle,
        call(Method::PATCH, format!("{JOBS}/test/status"))
            .with_query("fieldManager=migrate-operator"),
        |body| {
            echoed["status"] = body["status"].clone();
            (StatusCode::OK, echoed)
        },
    )
    .await;
    assert!(is_a_typed_apply_body(&body), "{body}");
    body["status"].clone()
}

fn is_a_typed_apply_body(body: &Value) -> bool {
    body["apiVersion"] == json!("migrate-operator.io/v1alpha1")
        && body["kind"] == json!("MigrateJob")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == json!(type_))
        .unwrap()
}

fn context(queue: FakeQueue) -> (Arc<Context>, Handle, Arc<FakeQueue>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let queue = Arc::new(queue);
    let ctx = Context::new(
        client,
        Arc::new(Metrics::new()),
        queue.clone(),
        "test-instance",
    );
    (Arc::new(ctx), handle, queue)
}

/// Runs one reconciliation while `scenario` answers its requests; checks nothing else was
/// asked for.
async fn run<F>(
    job: MigrateJob,
    ctx: Arc<Context>,
    mut handle: Handle,
    scenario: impl FnOnce(Handle) -> F,
) -> Action
where
    F: Future<Output = Handle> + Send + 'static,
{
    let task = tokio::spawn(reconcile(Arc::new(DeserializeGuard(Ok(job))), ctx));
    let scenario = tokio::spawn(scenario(handle));
    handle = tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("scenario finished")
        .expect("scenario ran");
    let action = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reconcile finished")
        .expect("reconcile did not panic")
        .expect("reconcile succeeded");
    if let Some(Some((request, _))) = handle.next_request().now_or_never() {
        panic!(
            "an unexpected extra request was made: {} {}",
            request.method(),
            request.uri()
        );
    }
    action
}

/// A new job gets its finalizer, ConfigMap and PDB, then as many pods as the backlog asks for
/// (2,500 ids at 1,000 per worker: 3), an Event, and its status.
#[tokio::test]
async fn a_new_job_gets_its_finalizer_children_and_pods_for_the_backlog() {
    let (ctx, handle, _) = context(FakeQueue {
        queued: 2_500,
        ..FakeQueue::default()
    });
    let j = job(continuous(), false);
    let j2 = j.clone();
    let action = run(j.clone(), ctx, handle, |mut h| async move {
        let patch = answer(
            &mut h,
            call(Method::PATCH, format!("{JOBS}/test")),
            ok(serde_json::to_value(&j2).unwrap()),
        )
        .await;
        assert_eq!(patch["metadata"]["finalizers"], json!([FINALIZER]));
        assert_eq!(
            patch["metadata"]["resourceVersion"],
            json!("100"),
            "optimistic concurrency"
        );
        expect_children(&mut h).await;
        expect_pods_and_secret(&mut h, vec![]).await;
        expect_budget(&mut h, 2).await;
        for i in 0..3 {
            let body = answer(
                &mut h,
                call(Method::POST, "/api/v1/namespaces/etl/pods"),
                |b| {
                    let mut p = b.clone();
                    p["metadata"]["name"] = json!(format!("test-worker-{i}"));
                    (StatusCode::CREATED, p)
                },
            )
            .await;
            assert_eq!(body["metadata"]["generateName"], json!("test-worker-"));
            assert_eq!(body["spec"]["restartPolicy"], json!("Never"));
            assert_eq!(
                body["metadata"]["ownerReferences"][0]["uid"],
                json!("uid-1")
            );
        }
        let event = expect_event(&mut h, "ScaledUp").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("started 3 workers"),
            "{event}"
        );
        let status = expect_status(&mut h, &j2).await;
        assert_eq!(status["desiredReplicas"], json!(3));
        assert_eq!(status["replicas"], json!(3));
        assert_eq!(status["backlog"], json!(2500));
        assert_eq!(status["observedGeneration"], json!(2));
        assert_eq!(condition(&status, "Progressing")["status"], json!("False"));
        assert_eq!(
            condition(&status, "Ready")["reason"],
            json!("WorkersNotReady")
        );
        h
    })
    .await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(1)),
        "memory is checked every second"
    );
}

/// `spec.replicas: 1` with two pods: the idle one is annotated with its reason and deleted, the
/// busy one stays and is marked not safe to evict.
#[tokio::test]
async fn scaling_down_deletes_the_idle_pod_and_keeps_the_busy_one() {
    let queue = FakeQueue {
        queued: 0,
        in_flight: BTreeMap::from([("test-worker-busy".to_owned(), 5)]),
        ..FakeQueue::default()
    };
    let (ctx, handle, _) = context(queue);
    let mut spec = continuous();
    spec.autoscaling = migrate_crds::Autoscaling::External;
    spec.replicas = Some(1);
    let j = job(spec, true);
    let j2 = j.clone();
    run(j, ctx, handle, |mut h| async move {
        expect_children(&mut h).await;
        expect_pods_and_secret(
            &mut h,
            vec![pod("test-worker-busy", true), pod("test-worker-idle", true)],
        )
        .await;
        expect_budget(&mut h, 0).await;
        let patch = answer(
            &mut h,
            call(
                Method::PATCH,
                "/api/v1/namespaces/etl/pods/test-worker-idle",
            ),
            ok(pod("test-worker-idle", true)),
        )
        .await;
        assert_eq!(
            patch["metadata"]["annotations"]["migrate-operator.io/stop-reason"],
            json!("scaled-down")
        );
        answer(
            &mut h,
            call(
                Method::DELETE,
                "/api/v1/namespaces/etl/pods/test-worker-idle",
            ),
            ok(pod("test-worker-idle", true)),
        )
        .await;
        expect_event(&mut h, "ScaledDown").await;
        let busy = answer(
            &mut h,
            call(
                Method::PATCH,
                "/api/v1/namespaces/etl/pods/test-worker-busy",
            ),
            ok(pod("test-worker-busy", true)),
        )
        .await;
        assert_eq!(
            busy["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            json!("false")
        );
        assert_eq!(
            busy["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
            json!("5")
        );
        let status = expect_status(&mut h, &j2).await;
        assert_eq!(status["replicas"], json!(1));
        assert_eq!(status["restarts"]["scaledDown"], json!(1));
        assert_eq!(status["restarts"]["total"], json!(1));
        assert_eq!(status["lastRestart"]["worker"], json!("test-worker-idle"));
        assert_eq!(status["inFlight"], json!(5));
        h
    })
    .await;
}

/// The status is server-side applied with every condition, the selector and the counters.
#[tokio::test]
async fn the_status_is_applied_with_conditions_selector_and_counters() {
    let (ctx, handle, _) = context(FakeQueue::default());
    let mut spec = continuous();
    spec.autoscaling = migrate_crds::Autoscaling::External;
    spec.replicas = Some(0);
    let j = job(spec, true);
    let j2 = j.clone();
    run(j, ctx, handle, |mut h| async move {
        expect_children(&mut h).await;
        expect_pods_and_secret(&mut h, vec![]).await;
        expect_budget(&mut h, 0).await;
        let status = expect_status(&mut h, &j2).await;
        assert_eq!(
            status["selector"],
            json!("app.kubernetes.io/name=migrate-worker,migrate-operator.io/job=test")
        );
        assert_eq!(status["processed"], json!(10));
        assert_eq!(status["phase"], json!("Running"));
        assert_eq!(
            condition(&status, "Ready")["reason"],
            json!("NoWorkersNeeded")
        );
        assert_eq!(condition(&status, "Degraded")["status"], json!("False"));
        assert_eq!(
            condition(&status, "Complete")["reason"],
            json!("ContinuousMode")
        );
        for c in status["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], json!(2));
            assert!(!c["message"].as_str().unwrap().is_empty());
        }
        h
    })
    .await;
}

/// A missing Redis Secret is a Degraded condition with what to do, and an Event; not an error.
#[tokio::test]
async fn a_missing_redis_secret_is_a_degraded_condition_not_a_crash() {
    let (ctx, handle, _) = context(FakeQueue::default());
    let j = job(continuous(), true);
    let j2 = j.clone();
    run(j, ctx, handle, |mut h| async move {
        expect_children(&mut h).await;
        answer(
            &mut h,
            call(Method::GET, "/api/v1/namespaces/etl/pods"),
            ok(list(vec![])),
        )
        .await;
        answer(
            &mut h,
            call(Method::GET, "/api/v1/namespaces/etl/secrets/migrate-redis"),
            |_| not_found(),
        )
        .await;
        expect_references(&mut h).await;
        // The Redis Secret was not found: its version is asked for with the others.
        expect_secret_versions(
            &mut h,
            &["migrate-mysql", "migrate-redis", "migrate-search"],
        )
        .await;
        expect_budget(&mut h, 0).await;
        let event = expect_event(&mut h, "RedisSecretMissing").await;
        assert_eq!(event["type"], json!("Warning"));
        let status = expect_status(&mut h, &j2).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["status"], json!("True"));
        assert_eq!(degraded["reason"], json!("RedisSecretMissing"));
        assert!(
            degraded["message"].as_str().unwrap().contains("create it"),
            "{degraded}"
        );
        assert_eq!(status["phase"], json!("Degraded"));
        h
    })
    .await;
}

/// A spec the schema accepted but the worker would refuse: Degraded, a Warning, and a wait for
/// the next edit (no requeue).
#[tokio::test]
async fn an_invalid_spec_waits_for_a_change_with_a_degraded_condition() {
    let (ctx, handle, _) = context(FakeQueue::default());
    let mut spec = continuous();
    spec.source.queries[1].sql = "SELECT 1".to_owned();
    let j = job(spec, true);
    let j2 = j.clone();
    let action = run(j, ctx, handle, |mut h| async move {
        expect_event(&mut h, "InvalidSpec").await;
        let status = expect_status(&mut h, &j2).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded["reason"], json!("InvalidSpec"));
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .contains("source.queries[1].sql"),
            "{degraded}"
        );
        h
    })
    .await;
    assert_eq!(action, Action::await_change());
}

/// Deleting a job: pods deleted, every processing list of this job requeued (also one whose
/// pod vanished earlier, found in `{q}:workers`; never another job's), children deleted,
/// finalizer removed.
#[tokio::test]
async fn the_finalizer_deletes_pods_requeues_their_ids_and_lets_go() {
    let queue = FakeQueue {
        queued: 0,
        in_flight: BTreeMap::from([
            ("test-worker-a".to_owned(), 2),
            ("test-worker-gone".to_owned(), 1),
            ("other-worker-x".to_owned(), 4),
        ]),
        ..FakeQueue::default()
    };
    let (ctx, handle, queue) = context(queue);
    let mut j = job(continuous(), true);
    j.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let action = run(j, ctx, handle, |mut h| async move {
        answer(
            &mut h,
            call(Method::GET, "/api/v1/namespaces/etl/pods"),
            ok(list(vec![pod("test-worker-a", true)])),
        )
        .await;
        answer(
            &mut h,
            call(Method::DELETE, "/api/v1/namespaces/etl/pods/test-worker-a"),
            ok(pod("test-worker-a", true)),
        )
        .await;
        answer(
            &mut h,
            call(Method::GET, "/api/v1/namespaces/etl/pods"),
            ok(list(vec![])),
        )
        .await;
        answer(
            &mut h,
            call(Method::GET, "/api/v1/namespaces/etl/secrets/migrate-redis"),
            ok(secret()),
        )
        .await;
        let first = expect_event(&mut h, "Requeued").await;
        assert!(
            first["note"]
                .as_str()
                .unwrap()
                .starts_with("2 in-flight ids of worker test-worker-a"),
            "{first}"
        );
        expect_event(&mut h, "Requeued").await;
        answer(
            &mut h,
            call(
                Method::DELETE,
                "/api/v1/namespaces/etl/configmaps/test-pipeline",
            ),
            |_| not_found(),
        )
        .await;
        answer(
            &mut h,
            call(
                Method::DELETE,
                "/apis/policy/v1/namespaces/etl/poddisruptionbudgets/test-workers",
            ),
            |_| not_found(),
        )
        .await;
        let patch = answer(&mut h, call(Method::PATCH, format!("{JOBS}/test")), |_| {
            not_found()
        })
        .await;
        assert_eq!(patch["metadata"]["finalizers"], json!([]));
        h
    })
    .await;
    assert_eq!(action, Action::await_change());
    let requeued: BTreeSet<String> = queue.requeued.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        requeued,
        BTreeSet::from(["test-worker-a".to_owned(), "test-worker-gone".to_owned()])
    );
}

/// An object that does not deserialize (DeserializeGuard) gets a Warning Event and waits for
/// an edit; the controller goes on with the others.
#[tokio::test]
async fn a_malformed_object_gets_an_event_and_waits_for_a_change() {
    let (ctx, mut handle, _) = context(FakeQueue::default());
    let malformed: DeserializeGuard<MigrateJob> = serde_json::from_value(json!({
        "apiVersion": "migrate-operator.io/v1alpha1", "kind": "MigrateJob",
        "metadata": {"name": "test", "namespace": NS, "uid": "uid-1"},
        "spec": {"queue": "not an object"}
    }))
    .unwrap();
    assert!(malformed.0.is_err(), "the fixture must not deserialize");
    let task = tokio::spawn(reconcile(Arc::new(malformed), ctx));
    let event = expect_event(&mut handle, "Malformed").await;
    assert_eq!(event["type"], json!("Warning"));
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
}
