//! Shared by the local supervisor's tests and its reaction benchmark: a fresh data set on the
//! testbed, a job file for it, the supervisor binary run on it, and checks of the result.

#![allow(dead_code)]
// each user takes what it needs
// A test kit fails the calling test loudly, naming what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use migrate_crds::{MigrateJobSpec, Mode};
use migrate_e2e::datagen::{self, DataSetSpec, Expected, Generated};
use migrate_e2e::env::{Service, TestEnv, unique_name};
use migrate_e2e::search;
use migrate_operator::local::Summary;

/// The `migrate-operator` binary under test.
pub fn operator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_migrate-operator"))
}

/// The `migrate-worker` binary next to the operator binary (same profile), built with
/// `cargo build -p migrate-worker` when it is missing.
pub fn worker_bin() -> PathBuf {
    let operator = operator_bin();
    let dir = operator
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let bin = dir.join("migrate-worker");
    if bin.is_file() {
        return bin;
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "-p", "migrate-worker", "--bin", "migrate-worker"]);
    if release {
        command.arg("--release");
    }
    let status = command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{} is missing and cargo could not be run to build it: {e}",
                bin.display()
            )
        });
    assert!(
        status.success() && bin.is_file(),
        "{} is missing and `cargo build -p migrate-worker` failed: build it first",
        bin.display()
    );
    bin
}

/// A fresh job on the testbed: its own database, data set, keyword files, queue and index.
pub struct Scenario {
    /// Testbed addresses.
    pub env: TestEnv,
    /// Holds the job file, the keyword files, the logs and the summary.
    pub dir: tempfile::TempDir,
    /// URL of the scenario's database.
    pub db_url: String,
    /// The queue key.
    pub queue: String,
    /// The index.
    pub index: String,
    /// What was loaded.
    pub data: Generated,
    /// The job; change it, then [`Scenario::write_job`].
    pub spec: MigrateJobSpec,
}

impl Scenario {
    /// Loads `articles` articles into a fresh database, writes the keyword files, enqueues
    /// every id, and starts from [`datagen::pipeline_spec`] in Drain mode.
    pub async fn prepare(name: &str, articles: u64) -> Self {
        let env = TestEnv::load();
        env.require(&[Service::Redis, Service::Mysql, Service::Es, Service::Nlp])
            .await;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db_url =
            datagen::create_database(&env.mysql_url, &unique_name(&format!("migrate_{name}")))
                .await;
        let data = datagen::load(
            &db_url,
            &DataSetSpec {
                articles,
                ..DataSetSpec::default()
            },
        )
        .await;
        datagen::write_keyword_files(dir.path().join("keywords"), &data);
        let queue = unique_name(name);
        let index = unique_name(name);
        search::create_index(&env.es_url, &index, serde_json::json!({})).await;
        datagen::enqueue(&env.redis_url, &queue, &data.ids).await;
        let mut spec = datagen::pipeline_spec(&queue, &index, &env.nlp_url);
        spec.mode = Mode::Drain;
        spec.workers.recycle_after_tasks = None;
        spec.workers.drain_settle_seconds = 2;
        Self {
            env,
            dir,
            db_url,
            queue,
            index,
            data,
            spec,
        }
    }

    /// Where the job file is written.
    pub fn job_path(&self) -> PathBuf {
        self.dir.path().join("job.yaml")
    }

    /// Writes the spec as the job file.
    pub fn write_job(&self) {
        let yaml = migrate_crds::pipeline::to_yaml(&self.spec).expect("the spec as YAML");
        std::fs::write(self.job_path(), yaml).expect("the job file is written");
    }

    /// What the workers must produce, recomputed from the database.
    pub async fn expected(&self) -> Expected {
        datagen::expected(&self.db_url, &self.data, &["title", "body"]).await
    }

    /// Starts `migrate-operator local` on the job (written first) with `extra` flags.
    pub fn supervise(&self, extra: &[&str]) -> Supervised {
        self.write_job();
        let output = self.dir.path().join("supervisor.out");
        let summary = self.dir.path().join("summary.json");
        let log_dir = self.dir.path().join("logs");
        let out = std::fs::File::create(&output).expect("the supervisor's output file");
        let err = out.try_clone().expect("a second handle on the output file");
        let child = tokio::process::Command::new(operator_bin())
            .arg("local")
            .arg("--job")
            .arg(self.job_path())
            .arg("--workers-bin")
            .arg(worker_bin())
            .arg("--keywords-dir")
            .arg(self.dir.path().join("keywords"))
            .arg("--log-dir")
            .arg(&log_dir)
            .arg("--summary-json")
            .arg(&summary)
            .arg("--no-progress")
            .args(extra)
            .env("MIGRATE_REDIS_URL", &self.env.redis_url)
            .env("MIGRATE_MYSQL_URL", &self.db_url)
            .env("MIGRATE_SEARCH_URL", &self.env.es_url)
            .env_remove("MIGRATE_KEYWORDS_DIR")
            .env_remove("MIGRATE_MEMORY_LIMIT_BYTES")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("migrate-operator starts");
        let pid = child.id().expect("the supervisor's pid");
        Supervised {
            child,
            pid,
            output,
            summary,
            log_dir,
        }
    }

    /// Checks that every task was done exactly once: the index holds exactly the expected ids,
    /// the keyword counts are exact, the stats and the summary agree, and nothing is left in
    /// Redis.
    pub async fn assert_exactly_once(&self, summary: &Summary, expected: &Expected) {
        let ids = search::ids(&self.env.es_url, &self.index).await;
        let missing: Vec<_> = expected.indexed_ids.difference(&ids).collect();
        let extra: Vec<_> = ids.difference(&expected.indexed_ids).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "index differs: {} of {} expected ids missing (e.g. {:?}), {} unexpected (e.g. {:?}); summary: indexed {}, filtered {}, dead {}, requeued {}",
            missing.len(),
            expected.indexed_ids.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)],
            summary.indexed,
            summary.filtered,
            summary.dead,
            summary.requeued_ids,
        );
        let counts = self.hash(&format!("{}:counts", self.queue)).await;
        expected.assert_counts(&counts);
        let indexed = u64::try_from(expected.indexed_ids.len()).unwrap_or(u64::MAX);
        let filtered = u64::try_from(expected.blacklisted_ids.len()).unwrap_or(u64::MAX);
        assert_eq!(
            (summary.indexed, summary.filtered, summary.dead),
            (indexed, filtered, 0),
            "summary stats"
        );
        let mut conn = self.redis().await;
        let backlog = migrate_contract::queue::backlog(&mut conn, &self.queue)
            .await
            .expect("the backlog");
        assert_eq!(
            backlog.total(),
            0,
            "nothing may be left queued or in flight"
        );
    }

    /// A Redis connection.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.env.redis_url.as_str())
            .expect("the redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("a redis connection")
    }

    /// A Redis hash of counters.
    pub async fn hash(&self, key: &str) -> HashMap<String, u64> {
        let mut conn = self.redis().await;
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("HGETALL")
    }

    /// Tasks finished so far (indexed, filtered, skipped, dead).
    pub async fn done(&self) -> u64 {
        let stats = self.hash(&format!("{}:stats", self.queue)).await;
        ["indexed", "filtered", "skipped", "dead"]
            .iter()
            .map(|k| stats.get(*k).copied().unwrap_or(0))
            .sum()
    }

    /// Length of a worker's processing list.
    pub async fn held_by(&self, worker: &str) -> u64 {
        let mut conn = self.redis().await;
        redis::cmd("LLEN")
            .arg(format!("{}:processing:{worker}", self.queue))
            .query_async(&mut conn)
            .await
            .expect("LLEN")
    }
}

/// A running `migrate-operator local`.
pub struct Supervised {
    child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    output: PathBuf,
    summary: PathBuf,
    /// The workers' log folder.
    pub log_dir: PathBuf,
}

/// A worker process of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPid {
    /// Process id.
    pub pid: u32,
    /// `MIGRATE_WORKER_ID`.
    pub id: String,
}

impl Supervised {
    /// The supervisor's output so far (its log lines and the summary table).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The live worker processes (children of the supervisor), by reading `/proc`.
    pub fn workers(&self) -> Vec<WorkerPid> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name, which is in parentheses and may hold spaces.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(self.pid) || state == Some("Z") {
                continue;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let id = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(b"MIGRATE_WORKER_ID="))
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if let Some(id) = id {
                out.push(WorkerPid { pid, id });
            }
        }
        out.sort_by_key(|w| w.pid);
        out
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the supervisor");
    }

    /// Waits for the supervisor to exit successfully within `limit` and reads its summary.
    /// On failure or timeout, fails with its output and the tail of every worker log.
    pub async fn finish(mut self, limit: Duration) -> Summary {
        let started = Instant::now();
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        if status.is_err() {
            // Kill the workers too: once the supervisor is gone nobody would.
            let workers = self.workers();
            let _ = self.child.start_kill();
            for w in workers {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(w.pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let report = |what: String| -> ! {
            let mut logs = String::new();
            if let Ok(entries) = std::fs::read_dir(&self.log_dir) {
                let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for path in paths {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    logs.push_str(&format!("\n--- {} (last lines)\n", path.display()));
                    for line in tail.into_iter().rev() {
                        logs.push_str(line);
                        logs.push('\n');
                    }
                }
            }
            panic!("{what}\n--- supervisor output\n{}{logs}", self.output());
        };
        match status {
            Err(_) => report(format!("the supervisor did not finish within {limit:?}")),
            Ok(Err(e)) => report(format!("cannot wait for the supervisor: {e}")),
            Ok(Ok(s)) if !s.success() => report(format!(
                "the supervisor failed ({s}) after {:?}",
                started.elapsed()
            )),
            Ok(Ok(_)) => {}
        }
        let text = std::fs::read_to_string(&self.summary)
            .unwrap_or_else(|e| report(format!("no summary at {}: {e}", self.summary.display())));
        let summary: Summary = serde_json::from_str(&text)
            .unwrap_or_else(|e| report(format!("the summary is not a Summary: {e}\n{text}")));
        eprintln!("{}", summary.table());
        summary
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
