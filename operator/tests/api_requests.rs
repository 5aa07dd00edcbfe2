//! What the controller asks the testbed's real kube-apiserver, counted on its own client (a
//! layer on the operator's ServiceAccount client records every request's verb, path and
//! status): how many requests idle jobs cost, and that deleting jobs with live pods ends
//! without an ERROR line and without a storm of 404s.
//!
//! One test in this binary: it installs the global log subscriber whose lines it reads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::api::{Api, DeleteParams};
use kube::client::ClientBuilder;
use migrate_crds::pipeline::example_spec;
use migrate_crds::{Autoscaling, Mode};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::k8s::{self, DEADLINE, eventually};
use migrate_operator::controller::{self, observe::RedisQueues};
use tokio::sync::oneshot;

/// Every request the operator's client sent: method, path (without the query), status.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<(String, String, u16)>>>);

impl Requests {
    fn take(&self) -> Vec<(String, String, u16)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The counting service around the client's stack.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    seen: Requests,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counting<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let verb = request.method().to_string();
        let watch = request.uri().query().unwrap_or_default().contains("watch=");
        let path = request.uri().path().to_owned();
        let verb = if watch { "WATCH".to_owned() } else { verb };
        let seen = self.seen.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            if let Ok(r) = &response {
                seen.0
                    .lock()
                    .unwrap()
                    .push((verb, path, r.status().as_u16()));
            }
            response
        })
    }
}

/// Log lines, as the global subscriber writes them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// `verb resource` for a request path, e.g. `GET pods`, `PATCH migratejobs/status`.
fn kind(verb: &str, path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource = parts
        .iter()
        .position(|p| *p == "namespaces")
        .and_then(|i| {
            let rest = &parts[i + 2..];
            match rest {
                [resource] | [resource, _] => Some((*resource).to_owned()),
                [resource, _, sub] => Some(format!("{resource}/{sub}")),
                _ => None,
            }
        })
        .unwrap_or_else(|| path.to_owned());
    format!("{verb} {resource}")
}

fn tally(requests: &[(String, String, u16)]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (verb, path, _) in requests {
        *by.entry(kind(verb, path)).or_insert(0) += 1;
    }
    by
}

/// Jobs with live pods and nothing to do cost at most one request per job per minute; deleting them, pods and
/// all, logs no ERROR line and draws no storm of 404s.
#[tokio::test]
async fn idle_jobs_cost_few_requests_and_deletes_end_cleanly() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info,migrate_operator=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let env = TestEnv::load();
    env.require(&[Service::Kubernetes, Service::Redis]).await;
    let config = k8s::admin_config().await;
    let admin = k8s::client(config.clone());
    k8s::install_crd(&admin).await;
    let ns = k8s::fresh_name("mjt-requests");
    k8s::create_namespace(&admin, &ns).await;
    let token = k8s::operator_token(&admin, &ns).await;
    let requests = Requests::default();
    let seen = requests.clone();
    let layer = tower::layer::layer_fn(move |inner| Counting {
        inner,
        seen: seen.clone(),
    });
    let operator =
        ClientBuilder::try_from(controller::identified(k8s::with_token(&config, &token)))
            .unwrap()
            .with_layer(&layer)
            .build();
    k8s::create_redis_secret(&admin, &ns, &env.redis_url).await;
    k8s::create_example_references(&admin, &ns).await;

    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run_with(
        operator,
        controller::Config {
            namespace: Some(ns.clone()),
            lease: None,
            listen: None,
            instance: "test-operator".to_owned(),
        },
        Arc::new(RedisQueues::default()),
        async move {
            let _ = stopped.await;
        },
    ));

    const JOBS: usize = 3;
    const PODS: usize = 2;
    let names: Vec<String> = (0..JOBS).map(|i| format!("idle-{i}")).collect();
    let mut queues = Vec::new();
    for name in &names {
        let mut spec = example_spec();
        spec.mode = Mode::Continuous;
        spec.queue.key = unique_name("mjq");
        spec.autoscaling = Autoscaling::External;
        spec.replicas = Some(i32::try_from(PODS).unwrap());
        queues.push(spec.queue.key.clone());
        k8s::create_job(&admin, &ns, name, spec).await;
    }
    let jobs: Api<migrate_crds::MigrateJob> = Api::namespaced(admin.clone(), &ns);
    for name in &names {
        eventually(
            DEADLINE,
            &format!("{name} has its pods in its status"),
            || async {
                let job = jobs.get(name).await.ok()?;
                job.status
                    .filter(|s| s.replicas == i32::try_from(PODS).unwrap())
                    .map(|_| ())
            },
        )
        .await;
    }

    // Settled: the pods never become ready (no kubelet), and a Pending pod gives no
    // MetricsUnavailable (nor any other problem), so once the first rounds have written what
    // they saw, nothing changes: the statuses stay as they are for three check intervals.
    let quiet = Duration::from_secs(3);
    let mut last: (Vec<Option<String>>, Instant) = (Vec::new(), Instant::now());
    let settling = Instant::now();
    loop {
        let mut versions = Vec::new();
        for name in &names {
            versions.push(jobs.get(name).await.unwrap().metadata.resource_version);
        }
        if versions != last.0 {
            last = (versions, Instant::now());
        } else if last.1.elapsed() >= quiet {
            break;
        }
        assert!(
            settling.elapsed() < DEADLINE,
            "the jobs' statuses never stayed the same for {quiet:?}"
        );
        tokio::time::sleep(k8s::POLL_EVERY).await;
    }

    // Idle: pods Pending, nothing queued. The rate is measured over a window, so this waits
    // on the clock by design.
    requests.take();
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let idle = requests.take();
    // The pods are now older than memory.staleAfterSeconds (10 s) and still Pending: no
    // memory reading is expected of them, so still no Degraded condition.
    for name in &names {
        let degraded = jobs.get(name).await.unwrap().status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded")
                .map(|c| c.reason)
        });
        assert_eq!(
            degraded.as_deref(),
            Some("AsExpected"),
            "{name}: Pending pods cried wolf"
        );
    }
    let per_job_minute = idle.len() as f64 * 60.0 / window.as_secs_f64() / JOBS as f64;
    println!(
        "idle: {} requests in {window:?} for {JOBS} jobs with {PODS} pods each = {per_job_minute:.1} per job per minute; by verb and resource: {:?}",
        idle.len(),
        tally(&idle)
    );

    // Only what the deletes log counts: a watch may fail once at the start, before the
    // operator's RoleBinding is in force.
    let logged_before_delete = lines.text().len();
    for name in &names {
        jobs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in &names {
        eventually(DEADLINE, &format!("{name} gone"), || async {
            jobs.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    // A round scheduled before the delete fires within one check interval (1 s): wait for
    // it to have had its chance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deleting = requests.take();
    let not_found: Vec<_> = deleting.iter().filter(|(_, _, s)| *s == 404).collect();
    println!(
        "delete: {} requests, {} of them 404; by verb and resource: {:?}",
        deleting.len(),
        not_found.len(),
        tally(&deleting)
    );

    let on_delete = lines.text()[logged_before_delete..].to_owned();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    k8s::remove_jobs(&admin, &ns).await;
    k8s::remove_pods(&admin, &ns).await;
    k8s::remove_operator_binding(&admin, &ns).await;
    k8s::remove_namespace(&admin, &ns).await;
    let mut redis = migrate_e2e::redis::connect().await;
    for q in &queues {
        let _: () = redis::cmd("DEL")
            .arg(q)
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    let errors: Vec<&str> = on_delete.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines on delete: {errors:#?}");
    assert!(
        not_found.len() <= JOBS,
        "a 404 storm on delete: {not_found:#?}"
    );
    assert!(
        per_job_minute <= 1.0,
        "idle jobs cost {per_job_minute:.1} requests per job per minute: {:?}",
        tally(&idle)
    );
}
