//! The whole mission on a Kubernetes API server: the operator (a separate process, under a
//! ServiceAccount bound to exactly `deploy/rbac/role.yaml`) reconciles a Drain-mode MigrateJob
//! of 20,000 generated articles into worker pods, which the pod runner (a separate process,
//! the testbed's stand-in kubelet) runs as real `migrate-worker` processes with a memory limit
//! it enforces. The pipeline leaks memory on purpose, a few ids are poison, and a random worker
//! is SIGKILLed every 10 s. At the end every document is indexed exactly once, the keyword
//! counts are exact, only the poison is dead-lettered, no worker was OOM-killed, the leak was
//! met by memory-soft restarts naming the leaking stage, the job is Complete and no pod is left.
//!
//! The Kubernetes twin of `operator/tests/local_supervision.rs`. When the testbed has no `k8s`
//! component it fails under CI (`CI=true`) and is otherwise skipped, recorded for the summary of
//! `scripts/test.sh` (`migrate_e2e::env::present_or_skip`); any other missing service fails it.

// A test fails loudly, naming what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use migrate_crds::{
    EnrichFailurePolicy, MigrateJob, MigrateJobSpec, MigrateJobStatus, Mode, Phase, TestOnlySpec,
};
use migrate_e2e::datagen::{self, DataSetSpec, FIRST_ID};
use migrate_e2e::env::{Service, TestEnv, repo_root, unique_name};
use migrate_e2e::k8s;
use migrate_e2e::process::Process;
use migrate_e2e::search;
use nix::sys::signal::Signal;
use serde_json::json;
use testbed_podrunner::pod::running_processes;

/// Articles in the job.
const TASKS: u64 = 20_000;
/// Workers (minimum and maximum).
const WORKERS: i32 = 3;
/// The worker container's memory limit, enforced by the pod runner.
const MEMORY_LIMIT: &str = "96Mi";
/// Bytes each task leaks. A worker starts at 25-40 MiB and grows by ~24 KiB per task; soft at
/// 70% (~67 MiB) is crossed after ~1,100-1,800 tasks (10-25 s at the rate of one worker among
/// three on two busy cores, about as often as the SIGKILLs strike), and hard at 95% (~91 MiB)
/// stays ~24 MiB (~1,000 tasks, seconds of growth) away from soft.
const LEAK_PER_TASK: u64 = 24 * 1024;
/// The stage the leak is charged to.
const LEAK_STAGE: &str = "enrich";
/// A random worker process is SIGKILLed this often.
const KILL_EVERY: Duration = Duration::from_secs(10);
/// How long the job may take to complete.
const RUN_LIMIT: Duration = Duration::from_secs(420);

/// The `migrate-operator` and `migrate-worker` binaries next to this crate's binary (same
/// profile), built with cargo when missing.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let runner = PathBuf::from(env!("CARGO_BIN_EXE_testbed-podrunner"));
    let dir = runner
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let path = dir.join(bin);
    if path.is_file() {
        return path;
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "-p", package, "--bin", bin]);
    if release {
        command.arg("--release");
    }
    let status = command
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("{} is missing and cargo cannot run: {e}", path.display()));
    assert!(
        status.success() && path.is_file(),
        "{} is missing and `cargo build -p {package}` failed",
        path.display()
    );
    path
}

/// Removes what the test created in the cluster; the namespace is finalized by hand (the
/// testbed has no namespace controller).
async fn remove_namespace(admin: &Client, ns: &str) {
    k8s::remove_jobs(admin, ns).await;
    k8s::remove_pods(admin, ns).await;
    k8s::remove_operator_binding(admin, ns).await;
    k8s::remove_namespace(admin, ns).await;
}

fn spec(queue: &str, index: &str, nlp_url: &str) -> MigrateJobSpec {
    let mut spec = datagen::pipeline_spec(queue, index, nlp_url);
    spec.mode = Mode::Drain;
    // Kills every 10 s replay tasks; only poison may reach the dead-letter list.
    spec.queue.max_attempts = 10;
    for endpoint in &mut spec.enrich {
        endpoint.on_failure = EnrichFailurePolicy::RetryTask;
    }
    let workers = &mut spec.workers;
    workers.min_replicas = WORKERS;
    workers.max_replicas = WORKERS;
    workers.recycle_after_tasks = None;
    workers.drain_settle_seconds = 2;
    workers.termination_grace_period_seconds = 15;
    workers.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(MEMORY_LIMIT.to_owned()),
        )])),
        requests: Some(BTreeMap::from([
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ("cpu".to_owned(), Quantity("100m".to_owned())),
        ])),
        ..Default::default()
    });
    spec.memory.soft = "70%".to_owned();
    spec.memory.hard = "95%".to_owned();
    spec.memory.check_interval_ms = 500;
    spec.memory.min_worker_age_seconds = 2;
    spec.test_only = Some(TestOnlySpec {
        leak_bytes_per_task: LEAK_PER_TASK,
        leak_stage: LEAK_STAGE.to_owned(),
        no_memory_restarts: false,
    });
    spec
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a Redis connection")
}

/// One test's world on the cluster: a namespace with the operator's ServiceAccount, a data set
/// in its own database, a queue, an index, the job's Secrets and keyword ConfigMap, and the
/// pod runner and the operator running as separate processes.
struct World {
    // Fields drop in declaration order: the operator, then the runner (stopping its workers),
    // then the namespace, and only then the folder the runner kept its state in.
    operator: Process,
    runner: Process,
    guard: Cleanup,
    /// Held for its `Drop`: the folder goes last.
    _dir: tempfile::TempDir,
    env: TestEnv,
    admin: Client,
    ns: String,
    db_url: String,
    data: datagen::Generated,
    queue: String,
    index: String,
    state: PathBuf,
    conn: redis::aio::MultiplexedConnection,
}

impl World {
    /// Sets everything up for `articles` articles, the runner handing out pod IPs
    /// `first_ip..=last_ip`; `None` (after recording the skip) when the testbed has no k8s
    /// component outside CI.
    async fn start(name: &str, articles: u64, first_ip: &str, last_ip: &str) -> Option<Self> {
        let env = TestEnv::load();
        let components = std::env::var("TESTBED_COMPONENTS").unwrap_or_default();
        let k8s_absent = env.kubeconfig.as_ref().is_none_or(|p| !p.exists())
            || (!components.trim().is_empty() && !components.split([' ', ',']).any(|c| c == "k8s"));
        if !migrate_e2e::env::present_or_skip(name, "k8s", !k8s_absent) {
            return None;
        }
        env.require(&[
            Service::Kubernetes,
            Service::Redis,
            Service::Mysql,
            Service::Es,
            Service::Nlp,
        ])
        .await;
        let kubeconfig = env.kubeconfig.clone().unwrap();
        let kc = k8s::read_kubeconfig(&kubeconfig);
        let admin = k8s::client_from(&kubeconfig).await;
        k8s::install_crd(&admin).await;
        let runner_bin = PathBuf::from(env!("CARGO_BIN_EXE_testbed-podrunner"));
        let operator_bin = workspace_bin("migrate-operator", "migrate-operator");
        let worker_bin = workspace_bin("migrate-worker", "migrate-worker");
        let dir = tempfile::tempdir().unwrap();
        let ns = k8s::fresh_name(name);
        let mut guard = Cleanup {
            kubeconfig: kubeconfig.clone(),
            ns: ns.clone(),
            data: None,
        };
        k8s::create_namespace(&admin, &ns).await;
        let operator_config = k8s::operator_kubeconfig(&admin, &kc, &ns).await;

        let prepare = Instant::now();
        let db_name = unique_name(&format!("migrate_{name}"));
        let queue = unique_name(name);
        let index = unique_name(name);
        guard.data = Some(DataNames {
            redis_url: env.redis_url.clone(),
            queue: queue.clone(),
            es_url: env.es_url.clone(),
            index: index.clone(),
            mysql_url: env.mysql_url.clone(),
            db_name: db_name.clone(),
        });
        let db_url = datagen::create_database(&env.mysql_url, &db_name).await;
        let data = datagen::load(
            &db_url,
            &DataSetSpec {
                articles,
                ..DataSetSpec::default()
            },
        )
        .await;
        let keyword_dir = dir.path().join("keywords");
        datagen::write_keyword_files(&keyword_dir, &data);
        search::create_index(&env.es_url, &index, json!({})).await;
        eprintln!(
            "prepared {articles} articles ({} blacklisted) in {:.1}s",
            data.blacklisted_ids.len(),
            prepare.elapsed().as_secs_f64()
        );

        // The job's Secrets and keyword ConfigMap, as a user would create them.
        for (secret, url) in [
            ("migrate-redis", env.redis_url.as_str()),
            ("migrate-mysql", db_url.as_str()),
            ("migrate-search", env.es_url.as_str()),
        ] {
            k8s::create_url_secret(&admin, &ns, secret, url).await;
        }
        k8s::create_keyword_config_map(&admin, &ns, &keyword_dir).await;

        // The pod runner (admin credentials, standing in for a kubelet's node credentials) and
        // the operator (the ServiceAccount's token only).
        let state = dir.path().join("runner");
        let mut runner_cmd = std::process::Command::new(&runner_bin);
        runner_cmd
            .arg("--namespace")
            .arg(&ns)
            .arg("--selector")
            .arg("app.kubernetes.io/name=migrate-worker")
            .arg("--image")
            .arg(format!("worker={}", worker_bin.display()))
            .arg("--state-dir")
            .arg(&state)
            .arg("--node-name")
            .arg(format!("podrunner-{ns}"))
            .arg("--first-ip")
            .arg(first_ip)
            .arg("--last-ip")
            .arg(last_ip)
            .arg("--keep-pod-dirs")
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info");
        let runner = Process::start(runner_cmd, dir.path().join("runner.log"));
        let operator_kubeconfig_path = dir.path().join("operator.kubeconfig");
        std::fs::write(&operator_kubeconfig_path, operator_config).unwrap();
        let mut operator_cmd = std::process::Command::new(&operator_bin);
        operator_cmd
            .arg("run")
            .arg("--namespace")
            .arg(&ns)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--lease-namespace")
            .arg(&ns)
            .arg("--identity")
            .arg(format!("{name}-operator"))
            .arg("--retry-period-seconds")
            .arg("1")
            .env("KUBECONFIG", &operator_kubeconfig_path)
            .env("RUST_LOG", "info");
        let operator = Process::start(operator_cmd, dir.path().join("operator.log"));
        let conn = redis(&env.redis_url).await;
        Some(Self {
            env,
            admin,
            ns,
            _dir: dir,
            db_url,
            data,
            queue,
            index,
            state,
            conn,
            operator,
            runner,
            guard,
        })
    }

    fn jobs(&self) -> Api<MigrateJob> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn create_job(&self, name: &str, spec: MigrateJobSpec) {
        k8s::create_job(&self.admin, &self.ns, name, spec).await;
    }

    async fn events_of(&self, job: &str) -> Vec<Event> {
        k8s::events_about(&self.admin, &self.ns, job).await
    }

    /// The operator's and the runner's last log lines, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- operator (last lines)\n{}\n--- runner (last lines)\n{}",
            self.operator.tail(40),
            self.runner.tail(40)
        )
    }

    /// Stops the processes and removes the namespace, the queue keys, the index and the
    /// database.
    async fn finish(mut self) {
        self.operator.stop(Duration::from_secs(10));
        self.runner.stop(Duration::from_secs(15));
        self.guard.run().await;
    }
}

/// One supervised run at a time: each starts several workers, and two at once on a small
/// machine would only measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A MigrateJob on the cluster, run by the operator and the pod runner as separate processes,
/// survives a leak, poison ids and a worker SIGKILLed every 10 s, and still does every task
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_job_with_poison_and_killed_workers_completes_exactly_once_on_kubernetes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut w) = World::start("mission", TASKS, "127.0.0.2", "127.0.0.99").await else {
        return;
    };
    let env = w.env.clone();
    let (queue, index, state) = (w.queue.clone(), w.index.clone(), w.state.clone());
    datagen::enqueue(&env.redis_url, &queue, &w.data.ids).await;
    let poison: BTreeSet<String> = [
        "not-a-number".to_owned(),
        (FIRST_ID + 1).to_string(),
        (FIRST_ID + 4).to_string(),
    ]
    .into();
    let () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(poison.iter().collect::<Vec<_>>())
        .query_async(&mut w.conn)
        .await
        .unwrap();
    let expected = datagen::expected(&w.db_url, &w.data, &["title", "body"]).await;
    let jobs = w.jobs();
    let started = Instant::now();
    w.create_job("mission", spec(&queue, &index, &env.nlp_url))
        .await;

    // A random worker process is SIGKILLed every 10 s until the job completes.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let mut killed: Vec<(String, u32)> = Vec::new();
            loop {
                tokio::time::sleep(KILL_EVERY).await;
                if done.load(Ordering::SeqCst) {
                    return killed;
                }
                let candidates: Vec<_> = running_processes(&state)
                    .into_iter()
                    .filter(|p| p.container == "worker")
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let pick = {
                    use rand::Rng as _;
                    rand::rng().random_range(0..candidates.len())
                };
                let victim = &candidates[pick];
                let pid = nix::unistd::Pid::from_raw(i32::try_from(victim.pid).unwrap());
                if nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok() {
                    eprintln!(
                        "[{:>5.1}s] SIGKILL {} (pid {})",
                        started.elapsed().as_secs_f64(),
                        victim.pod,
                        victim.pid
                    );
                    killed.push((victim.pod.clone(), victim.pid));
                }
            }
        })
    };

    // Wait for Complete, reporting progress.
    let mut last_report = Instant::now();
    let status: MigrateJobStatus = loop {
        let current = jobs.get("mission").await.expect("get the job");
        let s = current.status.clone().unwrap_or_default();
        if s.phase == Some(Phase::Complete) {
            break s;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "[{:>5.1}s] phase {:?}, {} ready, backlog {}, processed {}, restarts {:?}",
                started.elapsed().as_secs_f64(),
                s.phase,
                s.ready_replicas,
                s.backlog,
                s.processed,
                s.restarts
            );
        }
        if started.elapsed() > RUN_LIMIT {
            done.store(true, Ordering::SeqCst);
            panic!(
                "the job did not complete within {RUN_LIMIT:?}: {s:?}\n{}",
                w.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wall = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let pods = w.pods();
    k8s::eventually(
        Duration::from_secs(90),
        "every worker pod to be gone",
        || {
            let pods = pods.clone();
            async move {
                let left = pods.list(&ListParams::default()).await.ok()?.items;
                left.is_empty().then_some(())
            }
        },
    )
    .await;
    let killed = killer.await.unwrap();

    // The index holds exactly the expected documents, each once.
    search::refresh(&env.es_url, &index).await;
    let indexed = search::ids(&env.es_url, &index).await;
    let missing: Vec<_> = expected.indexed_ids.difference(&indexed).take(5).collect();
    let extra: Vec<_> = indexed.difference(&expected.indexed_ids).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "index differs: missing e.g. {missing:?}, unexpected e.g. {extra:?} ({} indexed, {} expected)",
        indexed.len(),
        expected.indexed_ids.len()
    );
    assert_eq!(
        search::count(&env.es_url, &index).await,
        u64::try_from(expected.indexed_ids.len()).unwrap(),
        "each document once"
    );

    // Keyword counts are exact.
    let counts: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(format!("{queue}:counts"))
        .query_async(&mut w.conn)
        .await
        .unwrap();
    expected.assert_counts(&counts);

    // Exactly the poison is dead-lettered, each once with a reason.
    let dead: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{queue}:dead"))
        .arg(0)
        .arg(-1)
        .query_async(&mut w.conn)
        .await
        .unwrap();
    let dead: Vec<serde_json::Value> = dead
        .iter()
        .map(|d| serde_json::from_str(d).expect("a dead-letter entry is JSON"))
        .collect();
    let dead_ids: Vec<String> = dead
        .iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        dead_ids.iter().cloned().collect::<BTreeSet<_>>(),
        poison,
        "dead letters: {dead:?}"
    );
    assert_eq!(
        dead_ids.len(),
        poison.len(),
        "each poison id once: {dead:?}"
    );
    for d in &dead {
        assert!(
            d["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a dead letter without a reason: {d}"
        );
    }

    // Nothing is left in Redis.
    let queued: u64 = redis::cmd("LLEN")
        .arg(&queue)
        .query_async(&mut w.conn)
        .await
        .unwrap();
    let holders: HashSet<String> = redis::cmd("SMEMBERS")
        .arg(format!("{queue}:workers"))
        .query_async(&mut w.conn)
        .await
        .unwrap();
    let mut in_flight = 0u64;
    for h in &holders {
        let n: u64 = redis::cmd("LLEN")
            .arg(format!("{queue}:processing:{h}"))
            .query_async(&mut w.conn)
            .await
            .unwrap();
        in_flight += n;
    }
    assert_eq!((queued, in_flight), (0, 0), "nothing queued or in flight");

    // Restarts: no OOM kill, memory-soft restarts, the leak named.
    let events = w.events_of("mission").await;
    let reasons: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.reason.clone().unwrap_or_default()).or_insert(0) += 1;
        m
    });
    let r = &status.restarts;
    let runner_log = w.runner.log_text();
    assert_eq!(
        r.oom_killed,
        0,
        "no worker may be OOM-killed: {r:?}\n{}",
        w.logs()
    );
    assert!(
        !runner_log.contains("killed as OOMKilled"),
        "the runner killed a container for its memory:\n{}",
        runner_log
            .lines()
            .filter(|l| l.contains("OOMKilled"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!reasons.contains_key("OomKilled"), "{reasons:?}");
    assert!(r.memory_soft >= 1, "a memory-soft restart expected: {r:?}");
    assert!(reasons.contains_key("MemorySoft"), "{reasons:?}");
    assert!(
        r.crashed >= 1 && !killed.is_empty(),
        "the SIGKILLed workers are counted as crashed: {r:?}, {} kills",
        killed.len()
    );
    assert_eq!(
        r.evicted, 0,
        "no pod was evicted; a pod the operator stopped must not be counted again when it goes: {r:?}"
    );
    let leak = status.leak.as_ref();
    assert_eq!(
        leak.map(|l| l.stage.as_str()),
        Some(LEAK_STAGE),
        "status.leak names the leaking stage: {leak:?}"
    );
    assert!(
        events.iter().any(|e| {
            matches!(e.reason.as_deref(), Some("MemorySoft" | "MemoryHard"))
                && e.note.as_deref().is_some_and(|n| n.contains(LEAK_STAGE))
        }),
        "a restart Event names the leaking stage: {:?}",
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("MemorySoft"))
            .map(|e| e.note.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    );

    // Figures.
    let secs = wall.as_secs_f64();
    eprintln!(
        "mission: {TASKS} tasks in {secs:.1}s = {:.0} tasks/s with {WORKERS} workers; \
         restarts {} (memory-soft {}, memory-hard {}, crashed {}, oom-killed {}, evicted {}, scaled-down {}); \
         requeued {} ids; {} SIGKILLs; dead-lettered {}; events {reasons:?}",
        TASKS as f64 / secs,
        r.total,
        r.memory_soft,
        r.memory_hard,
        r.crashed,
        r.oom_killed,
        r.evicted,
        r.scaled_down,
        status.requeued,
        killed.len(),
        dead.len(),
    );

    w.finish().await;
}

/// A busy worker pod the operator stops for a scale-down is deleted with its grace period: the
/// runner sends SIGTERM, the worker finishes its tasks in flight and exits 0, the runner
/// removes the pod, and the stop is counted once, as scaled-down (never again as evicted once
/// the pod is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_down_worker_is_stopped_gracefully_and_counted_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(w) = World::start("scaledown", 3_000, "127.0.0.100", "127.0.0.199").await else {
        return;
    };
    let mut s = spec(&w.queue, &w.index, &w.env.nlp_url);
    s.mode = Mode::Continuous;
    s.test_only = None;
    s.autoscaling = migrate_crds::Autoscaling::External;
    s.replicas = Some(2);
    w.create_job("scaled", s).await;
    let jobs = w.jobs();
    let status_where = |what: &'static str, ok: fn(&MigrateJobStatus) -> bool| {
        let jobs = jobs.clone();
        k8s::eventually(Duration::from_secs(120), what, move || {
            let jobs = jobs.clone();
            async move {
                let s = jobs.get("scaled").await.ok()?.status?;
                ok(&s).then_some(s)
            }
        })
    };
    status_where("two ready workers", |s| s.ready_replicas == 2).await;
    let names =
        |pods: Vec<Pod>| -> BTreeSet<String> { pods.iter().map(ResourceExt::name_any).collect() };
    let before = names(w.pods().list(&ListParams::default()).await.unwrap().items);
    assert_eq!(before.len(), 2, "{before:?}");
    // Busy workers: the one stopped has tasks in flight to finish before it exits.
    datagen::enqueue(&w.env.redis_url, &w.queue, &w.data.ids).await;
    status_where("work under way", |s| s.processed >= 300).await;

    jobs.patch_scale(
        "scaled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale to 1");
    let pods = w.pods();
    let after = k8s::eventually(Duration::from_secs(60), "one pod left", || {
        let pods = pods.clone();
        async move {
            let left = names(pods.list(&ListParams::default()).await.ok()?.items);
            (left.len() == 1).then_some(left)
        }
    })
    .await;
    let stopped = before
        .difference(&after)
        .next()
        .expect("a stopped pod")
        .clone();
    let status = status_where("the scale-down counted", |s| {
        s.restarts.scaled_down == 1 && s.replicas == 1
    })
    .await;
    assert_eq!(status.restarts.total, 1, "{:?}", status.restarts);
    // The operator reconciles every 500 ms: over the next seconds the pod that went must not
    // be counted a second time.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let s = jobs.get("scaled").await.unwrap().status.unwrap_or_default();
        assert_eq!(
            (s.restarts.total, s.restarts.evicted),
            (1, 0),
            "the stopped pod {stopped} was counted again: {:?}\n{}",
            s.restarts,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ended: Vec<String> = w
        .runner
        .log_text()
        .lines()
        .filter(|l| l.contains("Container ended.") && l.contains(stopped.as_str()))
        .map(str::to_owned)
        .collect();
    assert!(
        ended.len() == 1 && ended[0].contains("exit_code=0"),
        "the stopped worker drains and exits 0 on SIGTERM: {ended:?}"
    );
    // Its termination message went to the file its pod names (rewritten per pod).
    let message = std::fs::read_to_string(
        w.state
            .join("pods")
            .join(format!("{}_{stopped}", w.ns))
            .join("worker.termination-log"),
    )
    .unwrap_or_default();
    assert!(message.starts_with("drained"), "{message:?}");
    let events = w.events_of("scaled").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScaledDown")),
        "{events:?}"
    );
    w.finish().await;
}

/// Removes what a test created when it ends, also when it fails (best effort, from `Drop`):
/// the namespace, and the queue keys, index and database once they exist.
struct Cleanup {
    kubeconfig: PathBuf,
    ns: String,
    data: Option<DataNames>,
}

/// Where a test's data lives.
#[derive(Clone)]
struct DataNames {
    redis_url: String,
    queue: String,
    es_url: String,
    index: String,
    mysql_url: String,
    db_name: String,
}

async fn remove_all(kubeconfig: &Path, ns: &str, data: Option<&DataNames>) {
    let admin = k8s::client_from(kubeconfig).await;
    remove_namespace(&admin, ns).await;
    let Some(d) = data else {
        return;
    };
    let mut conn = redis(&d.redis_url).await;
    let q = &d.queue;
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(q)
        .arg(format!("{q}:counts"))
        .arg(format!("{q}:stats"))
        .arg(format!("{q}:dead"))
        .arg(format!("{q}:attempts"))
        .arg(format!("{q}:workers"))
        .query_async(&mut conn)
        .await;
    search::delete_index(&d.es_url, &d.index).await;
    datagen::drop_database(&d.mysql_url, &d.db_name).await;
}

impl Cleanup {
    async fn run(mut self) {
        let data = self.data.take();
        remove_all(&self.kubeconfig, &self.ns, data.as_ref()).await;
        self.ns.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.ns.is_empty() {
            return;
        }
        let (kubeconfig, ns, data) = (self.kubeconfig.clone(), self.ns.clone(), self.data.take());
        // A failing test: clean up on a thread and runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_all(&kubeconfig, &ns, data.as_ref()));
            }
        })
        .join();
    }
}
