//! Shared by the `pipeline_*` integration tests: a job on the real testbed (its own database,
//! queue key, index and keyword folder), the real worker binary as a child process, and
//! polling helpers with deadlines.
//!
//! Every test uses fresh names, so tests can run in parallel with each other (except the ones
//! that restart a service, which serialise themselves).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migrate_crds::{MigrateJobSpec, Mode};
use migrate_e2e::datagen::{self, DataSet, DataSetSpec, Expected, Generated};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::search;
use migrate_worker::queue::{self, DeadEntry, Keys};
use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

/// Memory limit given to test workers, so thresholds never depend on the host's cgroup.
const TEST_MEMORY_LIMIT: &str = "8Gi";

/// A loaded data set with its oracle.
pub struct Dataset {
    pub db_url: String,
    pub generated: Generated,
    pub expected: Expected,
}

/// Everything one test job needs.
pub struct Job {
    pub env: TestEnv,
    pub name: String,
    pub queue: String,
    pub index: String,
    pub db_url: String,
    pub generated: Generated,
    pub spec: MigrateJobSpec,
    pub dir: tempfile::TempDir,
    /// Whether the database is this job's own (dropped by [`Job::cleanup`]).
    pub own_db: bool,
}

/// The pipeline shape every test starts from: the reference job (MySQL queries, one NLP call,
/// topics + blacklist, summary) in drain mode with short timers.
pub fn base_spec(queue: &str, index: &str, nlp_url: &str) -> MigrateJobSpec {
    let mut spec = datagen::pipeline_spec(queue, index, nlp_url);
    spec.mode = Mode::Drain;
    spec.queue.max_attempts = 3;
    spec.queue.heartbeat_ttl_seconds = 6;
    spec.source.pool_max = 16;
    spec.source.query_timeout_seconds = 5;
    for endpoint in &mut spec.enrich {
        endpoint.max_concurrent = 32;
    }
    spec.sink.batch_docs = 500;
    spec.sink.flush_interval_ms = 200;
    spec.sink.retries = 3;
    spec.workers.concurrency = 128;
    spec.workers.drain_settle_seconds = 1;
    spec.workers.termination_grace_period_seconds = 20;
    spec.workers.recycle_after_tasks = None;
    spec.memory.check_interval_ms = 500;
    spec
}

fn data_spec(articles: u64) -> DataSetSpec {
    DataSetSpec {
        articles,
        keywords: 10_000,
        blacklist: 50,
        blacklist_fraction: 0.02,
        seed: 42,
    }
}

/// The URL of `mysql_url` with its database replaced by `db`.
fn with_database(mysql_url: &str, db: &str) -> String {
    let authority = mysql_url.find("://").map_or(0, |i| i + 3);
    match mysql_url[authority..].find('/') {
        Some(slash) => format!("{}/{db}", &mysql_url[..authority + slash]),
        None => format!("{mysql_url}/{db}"),
    }
}

/// A read-only data set of `articles` articles shared by every test that only reads it: loaded
/// into a database named after its spec the first time, and its oracle cached as JSON beside
/// the test binaries. Both are checked against a fingerprint of the generator (the first
/// article's title), so a change of the generator reloads them.
pub async fn shared_dataset(articles: u64) -> Arc<Dataset> {
    static LOADED: tokio::sync::Mutex<Vec<(u64, Arc<Dataset>)>> =
        tokio::sync::Mutex::const_new(Vec::new());
    let mut loaded = LOADED.lock().await;
    if let Some((_, d)) = loaded.iter().find(|(n, _)| *n == articles) {
        return Arc::clone(d);
    }
    let env = TestEnv::load();
    env.require(&[Service::Mysql]).await;
    let started = Instant::now();
    let spec = data_spec(articles);
    let data = DataSet::new(&spec);
    let fingerprint = data.article(0).title;
    let name = format!("migrate_pipeline_{articles}_s{}_v1", spec.seed);
    let db_url = with_database(&env.mysql_url, &name);
    let oracle_file =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.oracle.json"));

    let ready = async {
        let opts = mysql_async::Opts::from_url(&db_url).ok()?;
        let mut conn = mysql_async::Conn::new(opts).await.ok()?;
        use mysql_async::prelude::Queryable;
        let marker: Option<String> = conn
            .query_first("SELECT fingerprint FROM pipeline_ready")
            .await
            .ok()?;
        let _ = conn.disconnect().await;
        marker
    }
    .await;
    if ready.as_deref() != Some(fingerprint.as_str()) {
        let url = datagen::create_database(&env.mysql_url, &name).await;
        assert_eq!(url, db_url);
        datagen::load(&db_url, &spec).await;
        let opts = mysql_async::Opts::from_url(&db_url).unwrap();
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        use mysql_async::prelude::Queryable;
        conn.query_drop("CREATE TABLE pipeline_ready (fingerprint VARCHAR(400))")
            .await
            .unwrap();
        conn.exec_drop("INSERT INTO pipeline_ready VALUES (?)", (&fingerprint,))
            .await
            .unwrap();
        let _ = conn.disconnect().await;
        let _ = std::fs::remove_file(&oracle_file);
        eprintln!("{name}: loaded in {:?}", started.elapsed());
    }

    let cached: Option<serde_json::Value> = std::fs::read(&oracle_file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let expected = match cached.filter(|v| v["fingerprint"] == serde_json::json!(fingerprint)) {
        Some(v) => Expected {
            counts: serde_json::from_value(v["counts"].clone()).unwrap(),
            indexed_ids: serde_json::from_value(v["indexed_ids"].clone()).unwrap(),
            blacklisted_ids: serde_json::from_value(v["blacklisted_ids"].clone()).unwrap(),
        },
        None => {
            let generated = generated_of(&data, HashSet::new());
            let expected = datagen::expected(&db_url, &generated, &["title", "body"]).await;
            let json = serde_json::json!({
                "fingerprint": fingerprint,
                "counts": expected.counts,
                "indexed_ids": expected.indexed_ids,
                "blacklisted_ids": expected.blacklisted_ids,
            });
            std::fs::write(&oracle_file, serde_json::to_vec(&json).unwrap()).unwrap();
            eprintln!("{name}: oracle computed in {:?}", started.elapsed());
            expected
        }
    };
    let generated = generated_of(&data, expected.blacklisted_ids.clone());
    let dataset = Arc::new(Dataset {
        db_url,
        generated,
        expected,
    });
    loaded.push((articles, Arc::clone(&dataset)));
    dataset
}

fn generated_of(data: &DataSet, blacklisted_ids: HashSet<u64>) -> Generated {
    Generated {
        ids: data.ids().collect(),
        keywords: data.keywords().to_vec(),
        blacklist: data.blacklist().to_vec(),
        blacklisted_ids,
        spec: data.spec().clone(),
    }
}

impl Job {
    /// Requires the services, creates a database of its own with `articles` generated
    /// articles (for tests that change rows), the keyword files, and fresh names for the queue
    /// and the index.
    pub async fn prepare(prefix: &str, articles: u64) -> Self {
        let env = TestEnv::load();
        env.require(&[Service::Redis, Service::Mysql, Service::Es, Service::Nlp])
            .await;
        let started = Instant::now();
        let name = unique_name(&format!("migrate_{prefix}"));
        let db_url = datagen::create_database(&env.mysql_url, &name).await;
        let generated = datagen::load(&db_url, &data_spec(articles)).await;
        let mut job = Self::with_data(env, name, db_url, generated).await;
        job.own_db = true;
        eprintln!(
            "{prefix}: {articles} articles loaded in {:?}",
            started.elapsed()
        );
        job
    }

    /// A job over the shared read-only data set of `articles` articles, with fresh names for
    /// the queue and the index. Returns the oracle too.
    pub async fn on_shared(prefix: &str, articles: u64) -> (Self, Expected) {
        let env = TestEnv::load();
        env.require(&[Service::Redis, Service::Mysql, Service::Es, Service::Nlp])
            .await;
        let dataset = shared_dataset(articles).await;
        let name = unique_name(&format!("migrate_{prefix}"));
        let job =
            Self::with_data(env, name, dataset.db_url.clone(), dataset.generated.clone()).await;
        (job, dataset.expected.clone())
    }

    async fn with_data(env: TestEnv, name: String, db_url: String, generated: Generated) -> Self {
        let dir = tempfile::tempdir().unwrap();
        datagen::write_keyword_files(dir.path().join("keywords"), &generated);
        let queue = format!("test:{name}");
        let index = name.replace('_', "-");
        let spec = base_spec(&queue, &index, &env.nlp_url);
        let job = Self {
            env,
            name,
            queue,
            index,
            db_url,
            generated,
            spec,
            dir,
            own_db: false,
        };
        job.create_index(serde_json::json!({})).await;
        job
    }

    /// Creates the index for a fast bulk load with `extra` mapped properties
    /// ([`search::bulk_load_index`]).
    pub async fn create_index(&self, extra: serde_json::Value) {
        search::create_index(
            &self.env.es_url,
            &self.index,
            search::bulk_load_index(&extra),
        )
        .await;
    }

    /// The oracle for the data as it is now in the database.
    pub async fn expected(&self) -> Expected {
        let started = Instant::now();
        let expected = datagen::expected(&self.db_url, &self.generated, &["title", "body"]).await;
        eprintln!("{}: oracle computed in {:?}", self.name, started.elapsed());
        expected
    }

    /// Pushes every generated id onto the queue.
    pub async fn enqueue_all(&self) {
        datagen::enqueue(&self.env.redis_url, &self.queue, &self.generated.ids).await;
    }

    /// Pushes raw entries (poison included) onto the queue.
    pub async fn enqueue_raw(&self, entries: &[&str]) {
        let mut conn = self.redis().await;
        let _: () = redis::cmd("LPUSH")
            .arg(&self.queue)
            .arg(entries)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    pub fn pipeline_path(&self) -> PathBuf {
        self.dir.path().join("pipeline.yaml")
    }

    /// Starts the worker binary with `worker_id`, writing the current spec first.
    pub fn spawn(&self, worker_id: &str) -> WorkerProcess {
        self.spawn_with_search(worker_id, &self.env.es_url)
    }

    /// Like [`Job::spawn`], with the search server at `search_url` (a [`Gate`] in front of the
    /// real one, for outages).
    pub fn spawn_with_search(&self, worker_id: &str, search_url: &str) -> WorkerProcess {
        self.spawn_with(worker_id, search_url, &[])
    }

    /// Like [`Job::spawn`], with a supervisor's `MIGRATE_SUPERVISED=1`: at the soft line the
    /// worker asks for a restart instead of draining itself.
    pub fn spawn_supervised(&self, worker_id: &str) -> WorkerProcess {
        self.spawn_with(worker_id, &self.env.es_url, &[("MIGRATE_SUPERVISED", "1")])
    }

    fn spawn_with(
        &self,
        worker_id: &str,
        search_url: &str,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        std::fs::write(
            self.pipeline_path(),
            migrate_crds::pipeline::to_yaml(&self.spec).unwrap(),
        )
        .unwrap();
        let port = free_port();
        let log = self
            .dir
            .path()
            .join(format!("{worker_id}.{}.log", unique_name("run")));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_migrate-worker"))
            .arg("run")
            .arg("--pipeline")
            .arg(self.pipeline_path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,migrate_worker=info")
            .env("MIGRATE_REDIS_URL", &self.env.redis_url)
            .env("MIGRATE_MYSQL_URL", &self.db_url)
            .env("MIGRATE_SEARCH_URL", search_url)
            .env("MIGRATE_WORKER_ID", worker_id)
            .env("MIGRATE_KEYWORDS_DIR", self.dir.path().join("keywords"))
            .env("MIGRATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("MIGRATE_MEMORY_LIMIT_BYTES", TEST_MEMORY_LIMIT)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WorkerProcess {
            child,
            port,
            log,
            started: Instant::now(),
        }
    }

    pub async fn redis(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.env.redis_url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    pub fn keys(&self, worker: &str) -> Keys {
        Keys::new(&self.queue, worker)
    }

    pub async fn hash(&self, key: &str) -> HashMap<String, u64> {
        let mut conn = self.redis().await;
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> Stats {
        Stats(self.hash(&format!("{}:stats", self.queue)).await)
    }

    pub async fn counts(&self) -> HashMap<String, u64> {
        self.hash(&format!("{}:counts", self.queue)).await
    }

    pub async fn dead(&self) -> Vec<DeadEntry> {
        let mut conn = self.redis().await;
        queue::dead_letters(&mut conn, &self.queue, 10_000)
            .await
            .unwrap()
    }

    pub async fn llen(&self, key: &str) -> u64 {
        let mut conn = self.redis().await;
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Deletes the index, the job's Redis keys and its own database.
    pub async fn cleanup(&self) {
        if self.own_db {
            use mysql_async::prelude::Queryable;
            let opts = mysql_async::Opts::from_url(&self.db_url).unwrap();
            let mut conn = mysql_async::Conn::new(opts).await.unwrap();
            conn.query_drop(format!("DROP DATABASE `{}`", self.name))
                .await
                .unwrap();
            let _ = conn.disconnect().await;
        }
        search::delete_index(&self.env.es_url, &self.index).await;
        let mut conn = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.queue))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// Asserts that the index holds exactly the expected documents, the keyword counts are
    /// exact and the stats add up (nothing lost, nothing counted twice).
    pub async fn assert_exact(&self, expected: &Expected) {
        self.assert_index_holds(&expected.indexed_ids).await;
        let counts = self.counts().await;
        expected.assert_counts(&counts);
        let stats = self.stats().await;
        assert_eq!(
            stats.get("indexed"),
            expected.indexed_ids.len() as u64,
            "stats: {stats:?}"
        );
        assert_eq!(
            stats.get("filtered"),
            expected.blacklisted_ids.len() as u64,
            "stats: {stats:?}"
        );
        assert_eq!(
            stats.finished(),
            self.generated.ids.len() as u64,
            "stats: {stats:?}"
        );
    }

    /// Asserts that the index holds exactly `want`, naming a few differences and the
    /// dead-letter entries when it does not.
    pub async fn assert_index_holds(&self, want: &HashSet<u64>) {
        let indexed = search::ids(&self.env.es_url, &self.index).await;
        let missing: Vec<_> = want.difference(&indexed).take(10).collect();
        let extra: Vec<_> = indexed.difference(want).take(10).collect();
        if !missing.is_empty() || !extra.is_empty() {
            let dead: Vec<String> = self
                .dead()
                .await
                .into_iter()
                .take(10)
                .map(|d| format!("{} at {}: {}", d.id, d.stage, d.reason))
                .collect();
            panic!(
                "index differs: {} indexed, {} expected; missing e.g. {missing:?}, unexpected e.g. {extra:?}; stats {:?}; dead letters e.g. {dead:#?}",
                indexed.len(),
                want.len(),
                self.stats().await
            );
        }
    }

    /// Checks a few documents field by field against MySQL and the pipeline, the keyword hits
    /// against the oracle's matcher.
    pub async fn assert_documents_shaped_right(&self, expected: &Expected, sample: usize) {
        let topics = datagen::NaiveMatcher::new(&self.generated.keywords);
        let opts = mysql_async::Opts::from_url(&self.db_url).unwrap();
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let mut ids: Vec<u64> = expected.indexed_ids.iter().copied().collect();
        ids.sort_unstable();
        let step = (ids.len() / sample.max(1)).max(1);
        for &id in ids.iter().step_by(step).take(sample) {
            use mysql_async::prelude::Queryable;
            let (title, body, author_id): (String, String, i64) = conn
                .exec_first(
                    "SELECT title, body, author_id FROM article WHERE id = ?",
                    (id,),
                )
                .await
                .unwrap()
                .unwrap();
            let mut tags: Vec<String> = conn
                .exec("SELECT tag FROM article_tag WHERE article_id = ?", (id,))
                .await
                .unwrap();
            tags.sort();
            let author: Option<String> = conn
                .exec_first("SELECT name FROM author WHERE id = ?", (author_id,))
                .await
                .unwrap();
            let doc = search::get_source(&self.env.es_url, &self.index, &id.to_string())
                .await
                .unwrap_or_else(|| panic!("document {id} is not in the index"));
            assert_eq!(doc["title"], serde_json::json!(title), "title of {id}");
            assert_eq!(doc["body"], serde_json::json!(body), "body of {id}");
            assert_eq!(doc["tags"], serde_json::json!(tags), "tags of {id}");
            assert_eq!(
                doc["author"]["name"],
                serde_json::json!(author),
                "author of {id}"
            );
            let tokens = doc.pointer("/nlp/title_tokens").and_then(|v| v.as_array());
            assert!(
                tokens.is_some_and(|t| !t.is_empty()),
                "nlp.title_tokens of {id}: {doc}"
            );
            let summary = doc["summary"].as_str().unwrap_or_default();
            assert!(
                !summary.is_empty()
                    && summary.chars().count() <= 120
                    && body.trim_start().starts_with(summary),
                "summary of {id}: {summary:?}"
            );
            assert_eq!(
                doc.pointer("/keywords/topics"),
                datagen::expected_hits(&topics, &[&title, &body]).as_ref(),
                "keywords.topics of {id}"
            );
        }
        let _ = conn.disconnect().await;
    }
}

/// The `{q}:stats` hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats(pub HashMap<String, u64>);

impl Stats {
    pub fn get(&self, field: &str) -> u64 {
        self.0.get(field).copied().unwrap_or(0)
    }

    /// Tasks that reached an end: indexed, filtered, skipped or dead.
    pub fn finished(&self) -> u64 {
        self.get("indexed") + self.get("filtered") + self.get("skipped") + self.get("dead")
    }
}

/// The worker binary running as a child process.
pub struct WorkerProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub started: Instant,
}

impl WorkerProcess {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("the worker is still running")).unwrap()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the exit code, failing with the log tail after `within`.
    pub async fn exit_code(&mut self, within: Duration) -> i32 {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap().code().unwrap_or(-1),
            Err(_) => panic!(
                "worker did not exit within {within:?}; log tail:\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// Whether the process has exited (reaping it).
    pub fn has_exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `GET /readyz` status, `None` when the endpoint does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        client
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `GET /metrics` parsed.
    pub async fn metrics(&self) -> Option<HashMap<String, f64>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        Some(migrate_worker::metrics::parse_text(&text))
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A TCP forwarder on a loopback port to a real server, which can be shut (the port refuses
/// connections and the connections open through it are cut) and opened again: an outage of
/// that one server as its clients see it, without stopping a server other tests share.
pub struct Gate {
    port: u16,
    upstream: String,
    open: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// A gate to `upstream_url`'s host and port, shut.
    pub fn shut(upstream_url: &str) -> Self {
        let url = reqwest::Url::parse(upstream_url).unwrap();
        let upstream = format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        );
        Self {
            port: free_port(),
            upstream,
            open: None,
        }
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts forwarding.
    pub async fn open(&mut self) {
        assert!(self.open.is_none(), "the gate is open already");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let upstream = self.upstream.clone();
        self.open = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops forwarding: the port refuses, and open connections are cut (dropping the task
    /// drops the listener and, with the `JoinSet`, every connection task).
    pub async fn shut_now(&mut self) {
        if let Some(task) = self.open.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Brings a testbed component back up when dropped, so a test that fails while the component
/// is down does not leave the shared testbed broken.
pub struct ComponentUpOnDrop(pub &'static str);

impl Drop for ComponentUpOnDrop {
    fn drop(&mut self) {
        let script = migrate_e2e::env::repo_root()
            .join("tests/testbed/components")
            .join(format!("{}.sh", self.0));
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("up")
            .output();
    }
}

/// Runs a testbed component script (`redis.sh down`, `mariadb.sh up`...).
pub async fn testbed(component: &str, action: &str) {
    let script = migrate_e2e::env::repo_root()
        .join("tests/testbed/components")
        .join(format!("{component}.sh"));
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .arg(action)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{component}.sh {action} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{component}.sh {action}: {:?}", started.elapsed());
}

/// Prints a throughput line (numbers are reported, never asserted).
pub fn report(what: &str, tasks: usize, elapsed: Duration) {
    #[allow(clippy::cast_precision_loss)]
    let rate = tasks as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{what}: {tasks} tasks in {:.1} s = {rate:.0} docs/s",
        elapsed.as_secs_f64()
    );
}
